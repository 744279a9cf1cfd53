//! Starting the pipeline from its settings: the fair queue, the batcher with one inference thread per engine
//! session (batches sized by the costs the engine measured), and the [`Pipeline`] facade the APIs call.

use std::sync::Arc;
use std::time::Duration;

use metrics::gauge;
use tokio_util::sync::CancellationToken;

use crate::engine::open::Engine;
use crate::model::card::LoadedModel;
use crate::pipeline::batch::{self, Batcher};
use crate::pipeline::cost::CostModel;
use crate::pipeline::diagnosis::Reading;
use crate::pipeline::schedule::{BatchPolicy, ScheduleConfig, Scheduler};
use crate::pipeline::shadow;
use crate::pipeline::spec::Limits;
use crate::pipeline::{Gate, Pipeline};
use crate::telemetry::metrics as m;

/// The pipeline's settings.
#[derive(Debug, Clone, Copy)]
pub struct PipelineSettings {
    pub schedule: ScheduleConfig,
    /// How long the oldest window may wait for its batch to fill.
    pub max_queue_delay: Duration,
    /// Queue wait plus inference a window should stay within.
    pub latency_budget: Duration,
    pub limits: Limits,
}

/// A running pipeline: the facade (which closes its queue), and the batcher that the server joins when the version
/// is unloaded or the server stops.
pub(crate) struct Started {
    pub pipeline: Arc<Pipeline>,
    pub batcher: Batcher,
}

/// Starts the batcher on the engine's sessions; the pipeline admits through `gate` (shared by every model of the
/// replica, whose drain it obeys), the batcher stops on `stop_batcher`.
pub(crate) fn start(
    model: Arc<LoadedModel>,
    engine: Engine,
    settings: PipelineSettings,
    gate: Arc<Gate>,
    stop_batcher: CancellationToken,
) -> Started {
    let cost = Arc::new(CostModel::new(engine.max_batch, &engine.costs));
    tracing::info!(placement = %engine.placement, workers = engine.workers(), max_batch = engine.max_batch,
        efficient_batch = cost.efficient_batch(), max_queue_delay = ?settings.max_queue_delay,
        "inference sessions warmed up");
    gauge!(m::MODEL_INFO, "name" => model.card.name.clone(), "version" => model.card.version.clone(),
        "device" => engine.placement.to_string()).set(1.0);
    gauge!(m::MODEL_STREAMS, "model" => model.card.name.clone(), "version" => model.card.version.clone()).set(0.0);
    let scheduler = Scheduler::new(settings.schedule);
    let batch = cost.efficient_batch().min(engine.max_batch);
    let reading = Reading {
        temperature: model.temperature(),
        uncertain_below: model.uncertain_below(),
        uncertain_above: model.uncertain_above(),
    };
    let (recipe, lane_model) = (engine.recipe.clone(), model.clone());
    let lane = shadow::Lane::spawn(
        move || recipe.open(&lane_model).map_err(|e| e.to_string()),
        reading,
        batch,
    );
    let batcher = batch::spawn(
        scheduler.clone(),
        BatchPolicy {
            max_batch: engine.max_batch,
            max_delay: settings.max_queue_delay,
            budget: settings.latency_budget,
            cost,
        },
        reading,
        batch::Meters::new(&model.card.name, &model.card.version),
        engine.sessions,
        stop_batcher,
    );
    let pipeline = Arc::new(Pipeline::new(
        model,
        scheduler,
        settings.limits,
        gate,
        batch,
        lane,
    ));
    Started { pipeline, batcher }
}
