//! The Open Inference Protocol (KServe V2), a second front door to the same pipeline: gRPC
//! `inference.GRPCInferenceService` on the drsn.v1 port ([`grpc`]) and REST on `--http-listen` ([`rest`]), with the
//! binary tensor extension tritonclient uses. Both call [`V2`], which knows the model's tensors; V2 requests share
//! the batch queue with streams, so they are batched together.
//!
//! Input: `vibration`, FP32, `[N, channels, window]` raw samples at the model's rate. Outputs per window: `logits`
//! and `probabilities` (FP32 `[N, classes]`), `shrinkage` (FP32 `[N, units]`), `noise_score` (FP32 `[N]`),
//! `ood_score` (FP32 `[N]`, only when the model has that output), `label` (BYTES `[N]`), and `status` (BYTES `[N]`:
//! `ok`, `uncertain`, `invalid_signal:<reason>`, `shed`). A window without a class has an empty label and zeros in
//! its numeric rows: read `status` before them.

pub(crate) mod grpc;
pub mod proto;
pub mod repository;
pub(crate) mod rest;
pub(crate) mod tensor;

use std::sync::Arc;

use crate::error::{ErrorKind, ServeError, quote};
use crate::model::card::LoadedModel;
use crate::pipeline::Pipeline;
use crate::pipeline::diagnosis::{Verdict, WindowDiagnosis};
use crate::pipeline::models::{Models, Role, Roles};
use crate::pipeline::quality::Flag;
use crate::telemetry::metrics;

pub use tensor::{Data, Tensor};

/// The server name V2 clients see.
pub const SERVER_NAME: &str = "drsn-serve";
/// The protocol extensions served.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];
/// The `api` label of V2 windows in the metrics.
pub const API: &str = "v2";

/// Why a V2 request failed.
#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    #[error("{0}")]
    Tensor(String),
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A repository load or unload asked of a server whose model control is off.
    #[error(
        "model control is off on this server: start it with --model-control explicit (and --model-repository) \
         to load and unload models"
    )]
    ControlOff,
    /// A repository load or unload that changed nothing, and why.
    #[error("{0}")]
    Control(String),
}

impl V2Error {
    /// The label for `drsn_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Tensor(_) => "tensor",
            Self::Serve(e) => e.reason(),
            Self::ControlOff => "model_control_off",
            Self::Control(_) => "model_control",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Tensor(_) | Self::Control(_) => ErrorKind::InvalidInput,
            Self::Serve(e) => e.kind(),
            Self::ControlOff => ErrorKind::Disabled,
        }
    }

    /// Counts the error under the status `code` the adapter answers with.
    pub fn record(&self, code: &'static str) {
        metrics::record_error(self.reason(), code);
    }
}

/// Tensor metadata: name, datatype, shape (-1 for the batch).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// Whether the replica takes work: the server's one health state (starting, serving, workers gone, draining).
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// The V2 view of every model version served, shared by both front doors: a request's model name (and version)
/// finds its [`V2`]. Versions may be loaded and unloaded while the server runs (`control`).
pub struct V2Models {
    models: Arc<Models>,
    ready: Ready,
    /// Loading and unloading versions; `None` when model control is off.
    control: Option<Arc<dyn ModelControl>>,
}

impl V2Models {
    pub fn new(models: Arc<Models>, ready: Ready, control: Option<Arc<dyn ModelControl>>) -> Self {
        Self {
            models,
            ready,
            control,
        }
    }

    /// The model `name` at `version` (empty: its newest), or NOT_FOUND naming what is served.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<V2>, V2Error> {
        let pipeline = self.models.get(name, version)?;
        Ok(Arc::new(V2::new(pipeline, self.ready.clone())))
    }

    /// Every version of the model `name`, oldest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.models
            .all()
            .iter()
            .map(|p| &p.model().card)
            .filter(|c| c.name == name)
            .map(|c| c.version.clone())
            .collect()
    }

    /// Every model version served, by name then version, with what it is to its model: the repository index.
    pub fn all(&self) -> Vec<(V2, Role)> {
        self.models
            .all()
            .into_iter()
            .map(|p| {
                let role = self.models.role(&p);
                (V2::new(p, self.ready.clone()), role)
            })
            .collect()
    }

    /// Ready to serve: the replica's health says so, and every model takes work.
    pub fn ready(&self) -> bool {
        (self.ready)() && self.models.ready()
    }

    /// The request memory budget a request reserves its bytes from before reading them.
    pub fn request_budget(&self) -> &crate::pipeline::budget::RequestBudget {
        self.models.gate().request_budget()
    }

    /// The most outputs any model may have: what a request may ask for, checked on the wire before it is decoded
    /// (a loaded version with more is refused).
    pub fn max_outputs(&self) -> usize {
        MAX_OUTPUTS
    }

    pub fn control(&self) -> Option<&Arc<dyn ModelControl>> {
        self.control.as_ref()
    }
}

/// Most outputs a model has: logits, probabilities, shrinkage, noise_score, ood_score, label, status.
pub const MAX_OUTPUTS: usize = 7;

/// Loading and unloading model versions while the server runs (the repository extension's load and unload);
/// implemented by the server, which owns the engines.
#[tonic::async_trait]
pub trait ModelControl: Send + Sync {
    /// Loads the versions of `name` found in the repository that are not served yet, and unloads those whose folder
    /// is gone; then sets which version serves and which shadows it, as `roles` asks. Returns what changed, or why
    /// nothing did.
    async fn load(&self, name: &str, roles: Roles) -> Result<String, String>;
    /// Unloads every version of `name`: their streams end with a resume point, as in a drain.
    async fn unload(&self, name: &str) -> Result<String, String>;
}

/// The V2 view of one served model version.
pub struct V2 {
    pipeline: Arc<Pipeline>,
    ready: Ready,
}

impl V2 {
    pub fn new(pipeline: Arc<Pipeline>, ready: Ready) -> Self {
        Self { pipeline, ready }
    }

    pub fn model(&self) -> &LoadedModel {
        self.pipeline.model()
    }

    /// Ready to serve: the replica's health says so, and the pipeline takes work.
    pub fn ready(&self) -> bool {
        (self.ready)() && self.pipeline.ready()
    }

    pub fn inputs(&self) -> Vec<TensorMeta> {
        let m = self.model();
        vec![TensorMeta {
            name: "vibration",
            datatype: "FP32",
            shape: vec![-1, m.channels() as i64, m.window() as i64],
        }]
    }

    pub fn outputs(&self) -> Vec<TensorMeta> {
        let card = &self.model().card;
        let classes = card.classes.len() as i64;
        let mut out = vec![
            TensorMeta {
                name: "logits",
                datatype: "FP32",
                shape: vec![-1, classes],
            },
            TensorMeta {
                name: "probabilities",
                datatype: "FP32",
                shape: vec![-1, classes],
            },
        ];
        if let Some(units) = self.units() {
            out.push(TensorMeta {
                name: "shrinkage",
                datatype: "FP32",
                shape: vec![-1, units as i64],
            });
            out.push(TensorMeta {
                name: "noise_score",
                datatype: "FP32",
                shape: vec![-1],
            });
        }
        if card.outputs.ood_score.is_some() {
            out.push(TensorMeta {
                name: "ood_score",
                datatype: "FP32",
                shape: vec![-1],
            });
        }
        out.push(TensorMeta {
            name: "label",
            datatype: "BYTES",
            shape: vec![-1],
        });
        out.push(TensorMeta {
            name: "status",
            datatype: "BYTES",
            shape: vec![-1],
        });
        out
    }

    fn units(&self) -> Option<usize> {
        let card = &self.model().card;
        card.outputs.shrinkage.as_ref()?;
        card.shrinkage_units.filter(|u| *u > 0)
    }

    /// Diagnoses the `vibration` tensor; returns the requested outputs (all when `wanted` is empty), in the order
    /// asked, each once.
    pub async fn infer(&self, input: Tensor, wanted: &[String]) -> Result<Vec<Tensor>, V2Error> {
        // Checked before any work: a response holds each output at most once.
        let names = self.output_names(wanted)?;
        let windows = tensor::windows(input, &self.inputs()[0], self.model().channels())?;
        let diagnoses = self.pipeline.diagnose(API, windows).await?;
        Ok(names
            .into_iter()
            .map(|name| self.output(name, &diagnoses))
            .collect())
    }

    /// The outputs to answer with: all when none is asked for; an unknown or repeated name is an error.
    fn output_names(&self, wanted: &[String]) -> Result<Vec<&'static str>, V2Error> {
        let all = self.outputs();
        if wanted.is_empty() {
            return Ok(all.iter().map(|m| m.name).collect());
        }
        let mut names = Vec::with_capacity(all.len());
        for w in wanted {
            let Some(meta) = all.iter().find(|m| m.name == w) else {
                return Err(V2Error::Tensor(format!(
                    "output {} is not one of: {}",
                    quote(w),
                    all.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
                )));
            };
            if names.contains(&meta.name) {
                return Err(V2Error::Tensor(format!(
                    "output {} is asked for more than once; ask for each output once",
                    quote(w)
                )));
            }
            names.push(meta.name);
        }
        Ok(names)
    }

    fn output(&self, name: &str, rows: &[WindowDiagnosis]) -> Tensor {
        let n = rows.len() as i64;
        let classes = self.model().card.classes.len();
        let classified = |w: &WindowDiagnosis| match &w.verdict {
            Verdict::Classified(c) => Some(c.clone()),
            Verdict::Flagged(_) => None,
        };
        let floats =
            |width: usize, f: &dyn Fn(&crate::pipeline::diagnosis::Classified) -> Vec<f32>| {
                rows.iter()
                    .flat_map(|w| classified(w).map_or_else(|| vec![0.0; width], |c| f(&c)))
                    .collect::<Vec<f32>>()
            };
        let (data, shape) = match name {
            "logits" => (
                Data::F32(floats(classes, &|c| c.logits.clone())),
                vec![n, classes as i64],
            ),
            "probabilities" => (
                Data::F32(floats(classes, &|c| c.probabilities.clone())),
                vec![n, classes as i64],
            ),
            "shrinkage" => {
                let units = self.units().unwrap_or(0);
                (
                    Data::F32(floats(units, &|c| {
                        let mut s = c.shrinkage.clone().unwrap_or_default();
                        s.resize(units, 0.0);
                        s
                    })),
                    vec![n, units as i64],
                )
            }
            "noise_score" => (
                Data::F32(floats(1, &|c| vec![c.noise_score().unwrap_or(0.0)])),
                vec![n],
            ),
            "ood_score" => (
                Data::F32(floats(1, &|c| vec![c.ood_score.unwrap_or(0.0)])),
                vec![n],
            ),
            "label" => (
                Data::Bytes(
                    rows.iter()
                        .map(|w| {
                            classified(w)
                                .and_then(|c| self.model().card.classes.get(c.class_index).cloned())
                                .unwrap_or_default()
                                .into_bytes()
                        })
                        .collect(),
                ),
                vec![n],
            ),
            _ => (
                Data::Bytes(rows.iter().map(|w| status(w).into_bytes()).collect()),
                vec![n],
            ),
        };
        let datatype = match data {
            Data::F32(_) => "FP32",
            Data::Bytes(_) => "BYTES",
        };
        Tensor {
            name: name.to_owned(),
            datatype: datatype.to_owned(),
            shape,
            data,
        }
    }
}

/// A window's status as text: `ok`, `uncertain`, `invalid_signal:<reason>` or `shed`.
fn status(w: &WindowDiagnosis) -> String {
    match &w.verdict {
        Verdict::Classified(c) if c.uncertain => "uncertain".into(),
        Verdict::Classified(_) => "ok".into(),
        Verdict::Flagged(f) if f.flag == Flag::Shed => "shed".into(),
        Verdict::Flagged(f) => format!("invalid_signal:{}", f.flag.reason()),
    }
}
