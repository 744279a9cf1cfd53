//! Opening the engine: ONNX Runtime loaded, one session per worker on the device the settings ask for, each warmed
//! up, the card's golden file reproduced, and the inference time per batch size measured (the batcher's cost
//! model starts from it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use metrics::counter;

use crate::engine::device::{Device, Placement};
use crate::engine::golden;
use crate::engine::onnx::{self, OnnxSession};
use crate::error::StartupError;
use crate::model::card::LoadedModel;
use crate::telemetry::metrics as m;

/// What the engine is opened with; `None` takes the device's default ([`Placement::defaults`]).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub device: Device,
    pub ort_lib: Option<PathBuf>,
    pub intra_threads: usize,
    pub workers: Option<usize>,
    pub max_batch: Option<usize>,
}

/// How an engine's sessions are opened, to open one more later on the same device (a shadow lane's).
#[derive(Clone)]
pub struct Recipe {
    env: ort::environment::Environment,
    device: Device,
    intra_threads: usize,
}

impl Recipe {
    /// Opens a session of `model` as the engine's were opened (blocking: call it off the async threads).
    pub fn open(&self, model: &LoadedModel) -> Result<OnnxSession, StartupError> {
        OnnxSession::open(&self.env, model, self.device, self.intra_threads).map(|(s, _)| s)
    }
}

/// Sessions ready to serve: one per worker, where they run, and the inference time (s) per batch size measured
/// while warming up.
pub struct Engine {
    pub sessions: Vec<OnnxSession>,
    pub recipe: Recipe,
    pub placement: Placement,
    pub max_batch: usize,
    pub costs: Vec<(usize, f64)>,
}

impl Engine {
    /// Opens the sessions on a blocking thread (the first decides the placement for `Device::Auto`), warms each up
    /// at batch 1 and the largest batch, and times the first at batch sizes 1, 2, 4, ... up to the largest.
    pub async fn open(
        settings: EngineSettings,
        model: Arc<LoadedModel>,
    ) -> Result<Self, StartupError> {
        let library = onnx::locate_library(settings.ort_lib.as_deref(), settings.device)?;
        tokio::task::spawn_blocking(move || open_blocking(&settings, &library, &model))
            .await
            .map_err(|e| StartupError::Session(format!("the start-up thread failed: {e}")))?
    }

    pub fn workers(&self) -> usize {
        self.sessions.len()
    }
}

fn open_blocking(
    settings: &EngineSettings,
    library: &std::path::Path,
    model: &LoadedModel,
) -> Result<Engine, StartupError> {
    let env = onnx::environment(library)?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    let (first, placement) =
        OnnxSession::open(&env, model, settings.device, settings.intra_threads)?;
    if settings.device == Device::Auto && placement == Placement::Cpu {
        counter!(m::DEVICE_FALLBACKS).increment(1);
    }
    let defaults = placement.defaults();
    let workers = settings.workers.unwrap_or(defaults.workers);
    let max_batch = settings.max_batch.unwrap_or(defaults.max_batch);
    let fixed = match placement {
        Placement::Cpu => Device::Cpu,
        Placement::Cuda(n) => Device::Cuda(n),
    };
    let mut sessions = vec![first];
    for _ in 1..workers {
        sessions.push(OnnxSession::open(&env, model, fixed, settings.intra_threads)?.0);
    }
    // Warm up every session at batch 1 and at the largest batch, so the first requests pay no set-up cost.
    let zeros = vec![0.0f32; model.window_values()];
    let run = |session: &mut OnnxSession, rows: usize| {
        let started = Instant::now();
        session
            .run(std::iter::repeat_n(zeros.as_slice(), rows))
            .map(|_| started.elapsed().as_secs_f64())
            .map_err(|e| StartupError::Warmup(e.to_string()))
    };
    for session in &mut sessions {
        for rows in [1, max_batch] {
            run(session, rows)?;
        }
    }
    if let Some(path) = &model.golden {
        let checked = golden::check(&mut sessions[0], model, path, max_batch)?;
        tracing::info!(golden = %path.display(), windows = checked.windows, max_logit_diff = checked.max_diff,
            "the model reproduces its golden file");
    }
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
        .take_while(|b| *b < max_batch)
        .collect();
    sizes.push(max_batch);
    let mut costs = Vec::new();
    for rows in sizes {
        // The median of three: one slow run (a page fault, another process) does not set the cost.
        let mut t = [0.0; 3];
        for x in &mut t {
            *x = run(&mut sessions[0], rows)?;
        }
        t.sort_by(f64::total_cmp);
        costs.push((rows, t[1]));
    }
    Ok(Engine {
        sessions,
        recipe: Recipe {
            env,
            device: fixed,
            intra_threads: settings.intra_threads,
        },
        placement,
        max_batch,
        costs,
    })
}
