//! Dynamic batching on dedicated inference threads: a batch leaves the queue as [`BatchPolicy`] says (Triton's max size
//! and max delay, the efficient batch size and the latency budget), and is formed only when a thread is free, so
//! batches grow under load. Each batch's time updates the cost model. Inference never runs on the async runtime.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use metrics::{Histogram, histogram};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::{InferError, Runner};
use crate::error::ServeError;
use crate::pipeline::cost::CostModel;
use crate::pipeline::diagnosis::{Reading, Timing};
use crate::pipeline::schedule::{BatchPolicy, Job, Scheduler};
use crate::telemetry::metrics as m;

/// Name prefix of the inference worker threads (as the OS, `top -H` and profilers show them).
pub const INFER_THREAD: &str = "drsn-infer";

/// The running batcher and its inference threads.
pub struct Batcher {
    workers: Vec<JoinHandle<()>>,
    /// Fires when every inference thread has stopped (a lost device): the server is then not ready.
    pub workers_gone: CancellationToken,
}

impl Batcher {
    /// Waits for the inference threads to finish the batches they hold (call after closing the queue or stopping).
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// The batching histograms of one model version (`model`, `version` labels: what each version's batches cost),
/// registered once.
#[derive(Clone)]
pub struct Meters {
    batch_size: Histogram,
    inference: Histogram,
    queue_wait: Histogram,
}

impl Meters {
    pub fn new(model: &str, version: &str) -> Self {
        let labels = [("model", model.to_owned()), ("version", version.to_owned())];
        Self {
            batch_size: histogram!(m::BATCH_SIZE, &labels),
            inference: histogram!(m::INFERENCE, &labels),
            queue_wait: histogram!(m::QUEUE_WAIT, &labels),
        }
    }
}

struct Batch {
    jobs: Vec<Job>,
    /// When the batch left the queue (on the runtime's clock, which tests pause).
    formed: tokio::time::Instant,
    // Returned to the batcher when the batch is done: one permit per idle worker.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Starts one inference thread per runner and the batching task on the current tokio runtime. The batcher ends
/// when the queue is closed and empty, or at once when `stop` fires.
pub fn spawn<R: Runner>(
    scheduler: Arc<Scheduler>,
    cut: BatchPolicy,
    reading: Reading,
    meters: Meters,
    runners: Vec<R>,
    stop: CancellationToken,
) -> Batcher {
    let idle = Arc::new(Semaphore::new(runners.len()));
    let (batch_tx, batch_rx) = crossbeam_channel::bounded::<Batch>(runners.len().max(1));
    let workers_gone = CancellationToken::new();
    let alive = Arc::new(std::sync::atomic::AtomicUsize::new(runners.len()));
    let workers = runners
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut runner)| {
            let batch_rx = batch_rx.clone();
            let (alive, gone, scheduler) = (alive.clone(), workers_gone.clone(), scheduler.clone());
            let (cost, meters) = (cut.cost.clone(), meters.clone());
            std::thread::Builder::new()
                .name(format!("{INFER_THREAD}-{i}"))
                .spawn(move || {
                    while let Ok(batch) = batch_rx.recv() {
                        if !run_batch(&mut runner, batch, reading, &cost, &meters) {
                            tracing::error!(
                                worker = i,
                                "inference device failed; this worker stops"
                            );
                            break;
                        }
                    }
                    if alive.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                        scheduler.close();
                        gone.cancel();
                    }
                })
                .map_err(|e| tracing::error!(error = %e, "cannot start an inference thread"))
                .ok()
        })
        .collect();
    tokio::spawn(async move {
        tokio::select! {
            _ = form_batches(&scheduler, &cut, idle, batch_tx) => {}
            _ = stop.cancelled() => {}
        }
    });
    Batcher {
        workers,
        workers_gone,
    }
}

async fn form_batches(
    scheduler: &Scheduler,
    cut: &BatchPolicy,
    idle: Arc<Semaphore>,
    batch_tx: crossbeam_channel::Sender<Batch>,
) {
    loop {
        // Form a batch only when a worker is free: under load windows keep arriving meanwhile, so batches grow.
        let Ok(permit) = idle.clone().acquire_owned().await else {
            return;
        };
        let Some(jobs) = scheduler.next_batch(cut).await else {
            return;
        };
        // Never blocks: the channel holds as many batches as there are permits.
        if let Err(err) = batch_tx.try_send(Batch {
            jobs,
            formed: tokio::time::Instant::now(),
            _permit: permit,
        }) {
            tracing::error!("inference threads are gone");
            fail(err.into_inner().jobs, &ServeError::WorkersGone);
            return;
        }
    }
}

/// Runs one batch and answers each window; false when the device failed and the worker must stop.
fn run_batch<R: Runner>(
    runner: &mut R,
    batch: Batch,
    reading: Reading,
    cost: &CostModel,
    meters: &Meters,
) -> bool {
    let started = Instant::now();
    let windows: Vec<&[f32]> = batch.jobs.iter().map(|j| j.samples.as_slice()).collect();
    let result = runner.run(&windows);
    let inference = started.elapsed();
    let size = batch.jobs.len();
    meters.batch_size.record(size as f64);
    meters.inference.record(inference.as_secs_f64());
    match result {
        Ok(out) => {
            cost.observe(size, inference);
            let formed = batch.formed;
            for (row, job) in batch.jobs.into_iter().enumerate() {
                let queue_wait = formed.saturating_duration_since(job.enqueued);
                meters.queue_wait.record(queue_wait.as_secs_f64());
                let timing = Timing {
                    queue_wait,
                    inference,
                    batch_size: size,
                };
                // A closed receiver means the stream ended meanwhile; nothing is left to tell.
                let _ = job.reply.send(Ok(reading.answer(&out, row, timing)));
            }
            true
        }
        Err(err) => {
            tracing::error!(error = %err, batch = size, "inference failed");
            let device_lost = matches!(err, InferError::Device(_));
            fail(
                batch.jobs,
                &ServeError::Inference {
                    reason: err.to_string(),
                    resume_from: 0,
                },
            );
            !device_lost
        }
    }
}

/// Answers every job of a batch with the same error (each stream fills in its own resume point).
fn fail(jobs: Vec<Job>, err: &ServeError) {
    for job in jobs {
        let e = match err {
            ServeError::Inference { reason, .. } => ServeError::Inference {
                reason: reason.clone(),
                resume_from: 0,
            },
            _ => ServeError::WorkersGone,
        };
        let _ = job.reply.send(Err(e));
    }
}
