//! Runs the model in ONNX Runtime: finds the library, opens a session on the chosen device, runs batches.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::value::TensorRef;

use crate::engine::device::{Device, Placement};
use crate::engine::{BatchOutput, InferError, Runner};
use crate::error::StartupError;
use crate::model::card::{LoadedModel, Normalization};

/// The ONNX Runtime release the project installs and is tested with: pinned in deploy/ort/onnxruntime-cpu.txt.
pub const ORT_VERSION: &str = env!("DRSN_ORT_VERSION");

/// The folders searched for the project's ONNX Runtime, in order: the working directory, the folders above the
/// executable (so `target/release/drsn-serve` finds the checkout's), and the checkout this was built from.
fn search_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots
}

/// Finds libonnxruntime: `explicit` (--ort-lib / ORT_DYLIB_PATH) if given, else the project's `.ort/` install
/// (the GPU build first for CUDA devices).
pub fn locate_library(explicit: Option<&Path>, device: Device) -> Result<PathBuf, StartupError> {
    let file = format!("libonnxruntime.so.{ORT_VERSION}");
    let mut tried = Vec::new();
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        tried.push(path.to_path_buf());
    } else {
        let flavours: &[&str] = match device {
            Device::Cpu => &["cpu"],
            Device::Cuda(_) | Device::Auto => &["gpu", "cpu"],
        };
        for root in search_roots() {
            for flavour in flavours {
                let candidate = root.join(".ort").join(flavour).join(&file);
                if candidate.is_file() {
                    return Ok(candidate);
                }
                tried.push(candidate);
            }
        }
    }
    let tried = tried
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n");
    Err(StartupError::OrtMissing { tried })
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` once per process and returns its environment.
pub fn environment(library: &Path) -> Result<Environment, StartupError> {
    ENVIRONMENT
        .get_or_init(|| {
            ort::init_from(library)
                .map_err(|e| e.to_string())?
                .with_name("drsn-serve")
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| StartupError::OrtLoad {
            path: library.to_path_buf(),
            reason,
        })
}

/// One ONNX Runtime session and the buffers it runs on. `run` needs `&mut self`: one per inference worker.
pub struct OnnxSession {
    session: Session,
    logits: String,
    shrinkage: Option<String>,
    ood_score: Option<String>,
    window: usize,
    channels: usize,
    classes: usize,
    normalization: Normalization,
    input: Vec<f32>,
}

impl OnnxSession {
    /// Opens a session. `Device::Auto` returns `Placement::Cpu` when CUDA does not register (the caller warns).
    pub fn open(
        env: &Environment,
        model: &LoadedModel,
        device: Device,
        intra_threads: usize,
    ) -> Result<(Self, Placement), StartupError> {
        let (session, placement) = match device {
            Device::Cpu => (
                build_session(env, model, intra_threads, None)?,
                Placement::Cpu,
            ),
            Device::Cuda(n) => (
                build_session(env, model, intra_threads, Some(n))?,
                Placement::Cuda(n),
            ),
            Device::Auto => match build_session(env, model, intra_threads, Some(0)) {
                Ok(session) => (session, Placement::Cuda(0)),
                Err(StartupError::Cuda { reason, .. }) => {
                    tracing::warn!(%reason, "--device auto: CUDA is not available, running on CPU");
                    (
                        build_session(env, model, intra_threads, None)?,
                        Placement::Cpu,
                    )
                }
                Err(other) => return Err(other),
            },
        };
        let card = &model.card;
        let this = Self {
            logits: card.outputs.logits.clone(),
            shrinkage: card.outputs.shrinkage.clone(),
            ood_score: card.outputs.ood_score.clone(),
            window: card.input.window,
            channels: card.input.channels,
            classes: card.classes.len(),
            normalization: model.normalization,
            input: Vec::new(),
            session,
        };
        this.check_signature(model)?;
        Ok((this, placement))
    }

    fn check_signature(&self, model: &LoadedModel) -> Result<(), StartupError> {
        let inputs: Vec<&str> = self.session.inputs().iter().map(|o| o.name()).collect();
        if inputs != [model.card.input.name.as_str()] {
            return Err(StartupError::ModelMismatch {
                what: "input",
                reason: format!(
                    "the graph's inputs are {inputs:?}, the card names `{}`",
                    model.card.input.name
                ),
            });
        }
        let outputs: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        let named = std::iter::once(&self.logits)
            .chain(self.shrinkage.as_ref())
            .chain(self.ood_score.as_ref());
        for name in named {
            if !outputs.contains(&name.as_str()) {
                return Err(StartupError::ModelMismatch {
                    what: "outputs",
                    reason: format!("the graph's outputs are {outputs:?}; the card names `{name}`"),
                });
            }
        }
        Ok(())
    }

    /// Runs `windows` (each `window x channels` samples, interleaved) as one batch.
    pub fn run<'a>(
        &mut self,
        windows: impl ExactSizeIterator<Item = &'a [f32]>,
    ) -> Result<BatchOutput, InferError> {
        let rows = windows.len();
        let per = self.window * self.channels;
        self.input.clear();
        for w in windows {
            if w.len() != per {
                return Err(InferError::Batch(format!(
                    "a window of {} samples reached the model, which takes {per}",
                    w.len()
                )));
            }
            let start = self.input.len();
            self.input.extend_from_slice(w);
            self.normalization
                .apply(&mut self.input[start..], self.channels);
            // The graph takes channels-first (N x C x L); the wire carries interleaved frames.
            if self.channels > 1 {
                let frame: Vec<f32> = self.input[start..].to_vec();
                for c in 0..self.channels {
                    for t in 0..self.window {
                        self.input[start + c * self.window + t] = frame[t * self.channels + c];
                    }
                }
            }
        }
        let shape = [rows, self.channels, self.window];
        let batch = |e: ort::Error| InferError::Batch(e.to_string());
        let tensor = TensorRef::from_array_view((shape, self.input.as_slice())).map_err(batch)?;
        // A failing run is the device's fault: the input was checked above.
        let outputs = self
            .session
            .run(ort::inputs![tensor])
            .map_err(|e| InferError::Device(e.to_string()))?;
        let (lshape, logits) = outputs[self.logits.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(batch)?;
        if lshape.len() != 2 || lshape[0] as usize != rows || lshape[1] as usize != self.classes {
            return Err(InferError::Batch(format!(
                "logits came out as {lshape:?}, expected [{rows}, {}]",
                self.classes
            )));
        }
        let logits = logits.to_vec();
        let shrinkage = match &self.shrinkage {
            Some(name) => {
                let (shape, values) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(batch)?;
                if shape.len() != 2 || shape[0] as usize != rows {
                    return Err(InferError::Batch(format!(
                        "shrinkage came out as {shape:?}, expected [{rows}, units]"
                    )));
                }
                Some((shape[1] as usize, values.to_vec()))
            }
            None => None,
        };
        let ood = match &self.ood_score {
            Some(name) => {
                let (shape, values) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(batch)?;
                // One score per row: [rows], or [rows, 1] as exporters often leave it.
                let per_row = match &**shape {
                    [n] | [n, 1] => *n as usize == rows,
                    _ => false,
                };
                if !per_row {
                    return Err(InferError::Batch(format!(
                        "ood_score came out as {shape:?}, expected [{rows}] or [{rows}, 1]"
                    )));
                }
                Some(values.to_vec())
            }
            None => None,
        };
        Ok(BatchOutput {
            classes: self.classes,
            logits,
            shrinkage,
            ood,
        })
    }
}

impl Runner for OnnxSession {
    fn run(&mut self, windows: &[&[f32]]) -> Result<BatchOutput, InferError> {
        OnnxSession::run(self, windows.iter().copied())
    }
}

fn build_session(
    env: &Environment,
    model: &LoadedModel,
    intra_threads: usize,
    cuda: Option<i32>,
) -> Result<Session, StartupError> {
    let err = |e: ort::Error<_>| StartupError::Session(e.to_string());
    let mut builder = Session::builder(env)
        .map_err(|e| StartupError::Session(e.to_string()))?
        .with_intra_threads(intra_threads)
        .map_err(err)?
        .with_inter_threads(1)
        .map_err(err)?;
    if let Some(device) = cuda {
        builder = builder
            .with_execution_providers([ep::CUDA::default()
                .with_device_id(device)
                .build()
                .error_on_failure()])
            .map_err(|e| StartupError::Cuda {
                device,
                reason: e.to_string(),
            })?;
    }
    builder
        .commit_from_memory(&model.onnx)
        .map_err(|e| StartupError::Session(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_the_paths_and_the_fix() {
        let err = locate_library(
            Some(Path::new("/nonexistent/libonnxruntime.so")),
            Device::Cpu,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/libonnxruntime.so") && text.contains("make ort"),
            "{text}"
        );
    }
}
