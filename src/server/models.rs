//! The models served and their lifetimes: the one `--model` card, or every version in `--model-repository` (each
//! card checked against the folders it sits in), each within `--max-stream-memory`, each with its own engine
//! sessions, measured batch costs and pipeline, all admitted through one gate. With `--model-control`, versions are
//! loaded beside the serving ones and unloaded while the server runs ([`ModelControl`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use metrics::gauge;
use tokio_util::sync::CancellationToken;

use crate::api::grpc::frames::MessageLimits;
use crate::api::grpc::status;
use crate::api::kserve::ModelControl;
use crate::engine::device::Placement;
use crate::engine::open::Engine;
use crate::error::{ErrorKind, StartupError};
use crate::model::card::LoadedModel;
use crate::model::repository;
use crate::pipeline::batch::Batcher;
use crate::pipeline::models::{Models, Roles};
use crate::pipeline::start;
use crate::pipeline::{Gate, Pipeline};
use crate::server::config::{ModelControlMode, Resolved, ServeConfig};
use crate::server::lifecycle::Lifecycle;
use crate::telemetry::metrics as m;

/// (model, version).
type Key = (String, String);

/// The served models, what runs them, and how to load more.
pub(crate) struct ServedModels {
    pub models: Arc<Models>,
    pub placement: Placement,
    pub settings: Resolved,
    config: ServeConfig,
    gate: Arc<Gate>,
    stop_batcher: CancellationToken,
    /// Each version's batcher, joined when it is unloaded or the server stops.
    batchers: Mutex<BTreeMap<Key, Batcher>>,
    /// Fires when any version's inference workers have all stopped.
    workers_gone: CancellationToken,
    /// The message limits the listeners were built with (from the models at start-up): a version loaded later
    /// must fit them.
    limits: Mutex<Option<MessageLimits>>,
    /// One load or unload at a time.
    busy: tokio::sync::Mutex<()>,
}

/// Loads every model version, opens its engine and starts its pipeline.
pub(crate) async fn load(
    config: &ServeConfig,
    lifecycle: &Lifecycle,
) -> Result<Arc<ServedModels>, StartupError> {
    let gate = Arc::new(Gate::new(config.admission(), lifecycle.drain.clone()));
    let (mut pipelines, mut batchers) = (Vec::new(), BTreeMap::new());
    let mut resolved: Option<(Placement, Resolved)> = None;
    let workers_gone = CancellationToken::new();
    for card in cards(config)? {
        let model = load_model(config, &card, true)?;
        let engine = Engine::open(config.engine_settings(), model.clone()).await?;
        let (placement, settings) =
            *resolved.get_or_insert((engine.placement, config.resolve(&engine)));
        let started = start::start(
            model,
            engine,
            config.pipeline_settings(settings),
            gate.clone(),
            lifecycle.stop_batcher.clone(),
        );
        tracing::debug!(%placement, "model version started");
        follow(&started, &workers_gone);
        pipelines.push(started.pipeline.clone());
        batchers.insert(key(&started.pipeline), started.batcher);
    }
    let (placement, settings) =
        resolved.ok_or_else(|| StartupError::Config("no model to serve".into()))?;
    let models = Models::new(pipelines, config.default_model.as_deref(), gate.clone())
        .map_err(StartupError::Config)?;
    if config.model_repository.is_some() {
        let served: Vec<String> = models.all().iter().map(|p| label(&key(p))).collect();
        tracing::info!(models = ?served, default = models.default_name(), "model repository loaded");
    }
    Ok(Arc::new(ServedModels {
        models: Arc::new(models),
        placement,
        settings,
        config: config.clone(),
        gate,
        stop_batcher: lifecycle.stop_batcher.clone(),
        batchers: Mutex::new(batchers),
        workers_gone,
        limits: Mutex::new(None),
        busy: tokio::sync::Mutex::new(()),
    }))
}

impl ServedModels {
    /// Cancelled when any model version's inference workers have all stopped: the replica cannot serve what it
    /// says it serves.
    pub(crate) fn workers_gone(&self) -> CancellationToken {
        self.workers_gone.clone()
    }

    /// Model control, when `--model-control` asks for it; with `poll`, the repository is read again every
    /// `--repository-poll-interval` until the drain.
    pub(crate) fn control(
        self: &Arc<Self>,
        limits: MessageLimits,
    ) -> Option<Arc<dyn ModelControl>> {
        *self.lock_limits() = Some(limits);
        match self.config.model_control {
            ModelControlMode::None => None,
            ModelControlMode::Explicit => Some(self.clone()),
            ModelControlMode::Poll => {
                let (served, every) = (self.clone(), self.config.repository_poll_interval);
                let shutdown = self.gate.drain().shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(every) => {}
                        }
                        if let Err(why) = served.sync(None).await {
                            tracing::warn!(error = %why, "repository poll");
                        }
                    }
                });
                Some(self.clone())
            }
        }
    }

    fn lock_limits(&self) -> std::sync::MutexGuard<'_, Option<MessageLimits>> {
        self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_batchers(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Batcher>> {
        self.batchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At shutdown, after the drain: closes every version's queue so its batcher answers what is queued and stops.
    pub(crate) fn close_all(&self) -> Vec<Batcher> {
        for p in self.models.all() {
            p.close_queue();
        }
        std::mem::take(&mut *self.lock_batchers())
            .into_values()
            .collect()
    }

    /// Brings `only` (every model when `None`) in line with the repository: versions whose folders are new are
    /// loaded and checked, then serve; versions whose folders are gone are unloaded. A version that fails to load
    /// changes nothing and is named in the error.
    async fn sync(&self, only: Option<&str>) -> Result<String, String> {
        let _one = self.busy.lock().await;
        self.sync_locked(only).await.map(|(what, _)| what)
    }

    /// [`ServedModels::sync`] with the load lock held; also returns the versions it loaded.
    async fn sync_locked(&self, only: Option<&str>) -> Result<(String, Vec<Key>), String> {
        let dir = self
            .config
            .model_repository
            .clone()
            .ok_or("no --model-repository to load from")?;
        let on_disk: Vec<repository::Entry> = repository::scan(&dir)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|e| only.is_none_or(|name| e.model == name))
            .collect();
        if let Some(name) = only
            && on_disk.is_empty()
        {
            return Err(format!(
                "model {} has no version folder in {}",
                crate::error::quote(name),
                dir.display()
            ));
        }
        let served: Vec<Key> = self
            .models
            .all()
            .iter()
            .map(key)
            .filter(|(name, _)| only.is_none_or(|n| n == name))
            .collect();
        let (mut changes, mut loaded) = (Vec::new(), Vec::<Key>::new());
        for entry in &on_disk {
            let k = (entry.model.clone(), entry.version.clone());
            if served.contains(&k) {
                continue;
            }
            let card = Card {
                path: entry.card.clone(),
                folders: Some(k.clone()),
            };
            if let Err(e) = self.load_version(&card).await {
                for k in &loaded {
                    let _ = self.unload_version(&k.0, &k.1).await;
                }
                return Err(format!(
                    "{} was not loaded, nothing changed: {e}",
                    label(&k)
                ));
            }
            changes.push(format!("loaded {}", label(&k)));
            loaded.push(k);
        }
        for k in served {
            if !on_disk.iter().any(|e| e.model == k.0 && e.version == k.1) {
                self.unload_version(&k.0, &k.1).await?;
                changes.push(format!("unloaded {}", label(&k)));
            }
        }
        if changes.is_empty() {
            changes.push("nothing to change: every version in the repository is served".into());
        }
        tracing::info!(changes = ?changes, "model repository synced");
        Ok((changes.join("; "), loaded))
    }

    /// Loads `name`'s new versions as [`ServedModels::sync`] does, then gives its versions `roles`. While new
    /// versions load, the version serving now keeps serving when roles are asked for (so a candidate loaded to
    /// shadow never serves a stream meanwhile); if anything fails, the versions just loaded are unloaded and the
    /// roles are as they were.
    async fn load_with_roles(&self, name: &str, roles: Roles) -> Result<String, String> {
        let _one = self.busy.lock().await;
        if roles.serve.is_none() && roles.shadow.is_none() {
            return self.sync_locked(Some(name)).await.map(|(what, _)| what);
        }
        let before = self.models.roles(name);
        let serving_now = self
            .models
            .get(name, "")
            .ok()
            .map(|p| p.model().card.version.clone());
        if let Some(v) = &serving_now {
            let hold = Roles {
                serve: Some(Some(v.clone())),
                shadow: None,
            };
            self.models.set_roles(name, &hold)?;
        }
        let (what, loaded) = match self.sync_locked(Some(name)).await {
            Ok(done) => done,
            Err(why) => {
                let _ = self.models.set_roles(name, &before);
                return Err(why);
            }
        };
        // A shadow asked for without a serving version: the one serving before the load goes on serving.
        let serve = match (&roles.serve, &roles.shadow) {
            (Some(serve), _) => Some(serve.clone()),
            (None, Some(Some(_))) if before.serve == Some(None) => Some(serving_now),
            (None, _) => before.serve.clone(),
        };
        let wanted = Roles {
            serve,
            shadow: roles.shadow.clone().or(before.shadow.clone()),
        };
        match self.models.set_roles(name, &wanted) {
            Ok(now) => {
                tracing::info!(model = %name, roles = %now, "model roles set");
                Ok(format!("{what}; {now}"))
            }
            Err(why) => {
                let _ = self.models.set_roles(name, &before);
                for k in &loaded {
                    let _ = self.unload_version(&k.0, &k.1).await;
                }
                Err(format!("{why}; nothing changed"))
            }
        }
    }

    /// Loads one version beside the serving ones: card and checksum, the listeners' message limits, the engine's
    /// sessions (each warmed up, batch costs measured); then it serves.
    async fn load_version(&self, card: &Card) -> Result<(), String> {
        let model = load_model(&self.config, card, false).map_err(|e| e.to_string())?;
        if let Some(limits) = *self.lock_limits() {
            let stream = self.config.limits().stream_message(&model);
            if model.window_values() > limits.max_window_values || stream > limits.stream {
                return Err(format!(
                    "its windows ({} values) or chunks need larger messages than this server's listeners were \
                     started with (windows up to {} values): restart the server with it in the repository",
                    model.window_values(),
                    limits.max_window_values
                ));
            }
        }
        let engine = Engine::open(self.config.engine_settings(), model.clone())
            .await
            .map_err(|e| e.to_string())?;
        let started = start::start(
            model,
            engine,
            self.config.pipeline_settings(self.settings),
            self.gate.clone(),
            self.stop_batcher.clone(),
        );
        follow(&started, &self.workers_gone);
        let k = key(&started.pipeline);
        if let Err(why) = self.models.insert(started.pipeline.clone()) {
            started.pipeline.close_queue();
            let batcher = started.batcher;
            let _ = tokio::task::spawn_blocking(move || batcher.join()).await;
            return Err(why);
        }
        self.lock_batchers().insert(k, started.batcher);
        Ok(())
    }

    /// Unloads one version (every version of the model when `version` is empty): no new stream or request reaches
    /// it; its streams end with a resume point within --drain-timeout; its queue is answered; its threads stop.
    async fn unload_version(&self, name: &str, version: &str) -> Result<(), String> {
        let gone = self.models.remove(name, version)?;
        for p in gone {
            let k = key(&p);
            p.retire(self.config.drain_timeout).await;
            let batcher = self.lock_batchers().remove(&k);
            if let Some(batcher) = batcher {
                let _ = tokio::task::spawn_blocking(move || batcher.join()).await;
            }
            gauge!(m::MODEL_INFO, "name" => k.0.clone(), "version" => k.1.clone(),
                "device" => self.placement.to_string())
            .set(0.0);
            tracing::info!(model = %k.0, version = %k.1, "model version unloaded");
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ModelControl for ServedModels {
    async fn load(&self, name: &str, roles: Roles) -> Result<String, String> {
        self.load_with_roles(name, roles).await
    }

    async fn unload(&self, name: &str) -> Result<String, String> {
        let _one = self.busy.lock().await;
        self.unload_version(name, "").await?;
        Ok(format!("unloaded every version of {name}"))
    }
}

/// Cancels `any` when this version's inference workers are all gone, unless it is being unloaded (its workers
/// then stop because they were told to).
fn follow(started: &start::Started, any: &CancellationToken) {
    let gone = started.batcher.workers_gone.clone();
    let retiring = started.pipeline.retiring().clone();
    let any = any.clone();
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = retiring.cancelled() => {}
            _ = gone.cancelled() => any.cancel(),
        }
    });
}

fn key(p: &Arc<Pipeline>) -> Key {
    let card = &p.model().card;
    (card.name.clone(), card.version.clone())
}

fn label((name, version): &Key) -> String {
    format!("{name} {version}")
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
    folders: Option<Key>,
}

/// Loads a card and its ONNX file (checksum verified), refuses a model whose stream would not fit
/// --max-stream-memory, and shows its series at zero so that dashboards see every class from the first scrape
/// (at start-up every series; later only its classes, so that no running counter is reset).
fn load_model(
    config: &ServeConfig,
    card: &Card,
    startup: bool,
) -> Result<Arc<LoadedModel>, StartupError> {
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
    if startup {
        let endings: Vec<&'static str> = std::iter::once("ok")
            .chain(ErrorKind::ALL.iter().map(|k| k.label()))
            .collect();
        m::zero_series(&c.name, &c.classes, &status::error_series(), &endings);
    } else {
        m::show_classes(&c.name, &c.classes);
    }
    Ok(model)
}
