//! Loading what is served: the one `--model` card, or every version in `--model-repository` (each card checked
//! against the folders it sits in), each within `--max-stream-memory`, each with its own engine sessions, measured
//! batch costs and pipeline, all admitted through one gate.

use std::path::PathBuf;
use std::sync::Arc;

use crate::api::grpc::status;
use crate::engine::device::Placement;
use crate::engine::open::Engine;
use crate::error::{ErrorKind, StartupError};
use crate::model::card::LoadedModel;
use crate::model::repository;
use crate::pipeline::Gate;
use crate::pipeline::models::Models;
use crate::pipeline::start::{self, Started};
use crate::server::config::{Resolved, ServeConfig};
use crate::server::lifecycle::Lifecycle;
use crate::telemetry::metrics as m;

/// The served models, and what the lifecycle stops in order.
pub(crate) struct Loaded {
    pub models: Arc<Models>,
    pub started: Vec<Started>,
    pub placement: Placement,
    pub settings: Resolved,
}

impl Loaded {
    /// Cancelled when any model version's inference workers have all stopped: the replica cannot serve what it
    /// says it serves.
    pub(crate) fn workers_gone(&self) -> tokio_util::sync::CancellationToken {
        let any = tokio_util::sync::CancellationToken::new();
        for s in &self.started {
            let (gone, any) = (s.batcher.workers_gone.clone(), any.clone());
            tokio::spawn(async move {
                gone.cancelled().await;
                any.cancel();
            });
        }
        any
    }
}

/// Loads every model version, opens its engine and starts its pipeline.
pub(crate) async fn load(
    config: &ServeConfig,
    lifecycle: &Lifecycle,
) -> Result<Loaded, StartupError> {
    let cards = cards(config)?;
    let gate = Arc::new(Gate::new(config.admission(), lifecycle.drain.clone()));
    let mut started = Vec::with_capacity(cards.len());
    let mut resolved: Option<(Placement, Resolved)> = None;
    for card in cards {
        let model = load_model(config, &card)?;
        let engine = Engine::open(config.engine_settings(), model.clone()).await?;
        let (placement, settings) =
            *resolved.get_or_insert((engine.placement, config.resolve(&engine)));
        started.push(start::start(
            model,
            engine,
            config.pipeline_settings(settings),
            gate.clone(),
            lifecycle.stop_batcher.clone(),
        ));
        tracing::debug!(%placement, "model version started");
    }
    let (placement, settings) =
        resolved.ok_or_else(|| StartupError::Config("no model to serve".into()))?;
    let pipelines = started.iter().map(|s| s.pipeline.clone()).collect();
    let models = Models::new(pipelines, config.default_model.as_deref(), gate)
        .map_err(StartupError::Config)?;
    if config.model_repository.is_some() {
        let served: Vec<String> = models
            .all()
            .map(|p| format!("{} {}", p.model().card.name, p.model().card.version))
            .collect();
        tracing::info!(models = ?served, default = models.default_name(), "model repository loaded");
    }
    Ok(Loaded {
        models: Arc::new(models),
        started,
        placement,
        settings,
    })
}

/// The cards to load: `--model`, or each version of the repository with the names its folders give it.
fn cards(config: &ServeConfig) -> Result<Vec<Card>, StartupError> {
    let Some(dir) = &config.model_repository else {
        return Ok(vec![Card {
            path: config.model.clone(),
            folders: None,
        }]);
    };
    Ok(repository::scan(dir)?
        .into_iter()
        .map(|e| Card {
            path: e.card,
            folders: Some((e.model, e.version)),
        })
        .collect())
}

struct Card {
    path: PathBuf,
    /// The model and version folders the card sits in, which its name and version must match.
    folders: Option<(String, String)>,
}

/// Loads a card and its ONNX file (checksum verified), refuses a model whose stream would not fit
/// --max-stream-memory, and zeroes its series so that dashboards see every class from the first scrape.
fn load_model(config: &ServeConfig, card: &Card) -> Result<Arc<LoadedModel>, StartupError> {
    let model = Arc::new(LoadedModel::load(&card.path)?);
    let c = &model.card;
    if let Some((name, version)) = &card.folders
        && (c.name != *name || c.version != *version)
    {
        return Err(StartupError::CardInvalid {
            path: card.path.clone(),
            reason: format!(
                "it says model {} version {}, but it sits in {name}/{version}/: a repository's folders name the \
                 model and version its card serves (move it, or correct the card's name and version)",
                c.name, c.version
            ),
        });
    }
    tracing::info!(model = %c.name, version = %c.version, sha256 = %c.sha256,
        "model card loaded and checksum verified");
    let limits = config.limits();
    let (plain_need, what) = limits.stream_memory(&model, 0);
    if plain_need > limits.max_stream_memory {
        return Err(StartupError::Config(format!(
            "a stream of model {} needs about {} KiB ({what}), over --max-stream-memory ({} KiB): lower \
             --max-chunk-frames or --stream-buffer, or raise the limit",
            c.name,
            plain_need / 1024,
            limits.max_stream_memory / 1024
        )));
    }
    if c.input_range.is_none() {
        tracing::warn!(model = %c.name, version = %c.version,
            "the model card states no input_range: only flat windows and non-finite outputs are flagged");
    }
    let endings: Vec<&'static str> = std::iter::once("ok")
        .chain(ErrorKind::ALL.iter().map(|k| k.label()))
        .collect();
    m::zero_series(&c.classes, &status::error_series(), &endings);
    Ok(model)
}
