//! Dynamic batching with Triton's semantics: windows from every stream wait in one bounded queue; a batch leaves
//! when it reaches `max_batch` or its oldest window has waited `max_delay`, and runs on a dedicated inference thread.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use metrics::{gauge, histogram};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::onnx::{BatchOutput, Model};
use crate::error::ServeError;
use crate::telemetry::metrics as m;

/// The model's answer for one window.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    pub class_index: usize,
    pub probabilities: Vec<f32>,
    pub shrinkage: Option<Vec<f32>>,
    pub queue_wait: Duration,
    pub inference: Duration,
    pub batch_size: usize,
}

pub type Reply = oneshot::Receiver<Result<Diagnosis, ServeError>>;

struct Job {
    samples: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Diagnosis, ServeError>>,
}

/// What runs a batch: an ONNX Runtime session in the server.
pub trait Runner: Send + 'static {
    fn run(&mut self, windows: &[&[f32]]) -> Result<BatchOutput, String>;
}

impl Runner for Model {
    fn run(&mut self, windows: &[&[f32]]) -> Result<BatchOutput, String> {
        Model::run(self, windows.iter().copied())
    }
}

/// The sending side of the batch queue; cheap to clone, one per stream.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Job>,
}

/// The receiving side, handed to [`spawn`].
pub struct QueueReceiver(mpsc::Receiver<Job>);

pub fn queue(capacity: usize) -> (Queue, QueueReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    gauge!(m::QUEUE_CAPACITY).set(capacity.max(1) as f64);
    (Queue { tx }, QueueReceiver(rx))
}

impl Queue {
    /// Enqueues a window, waiting while the queue is full: the caller stops reading its client meanwhile, so
    /// HTTP/2 flow control slows the client instead of memory growing.
    pub async fn submit(&self, samples: Vec<f32>) -> Result<Reply, ServeError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            samples,
            enqueued: Instant::now(),
            reply,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| ServeError::WorkersGone)?;
        self.record_depth();
        Ok(rx)
    }

    /// Enqueues a window only if there is room now.
    pub fn try_submit(&self, samples: Vec<f32>) -> Result<Reply, ServeError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            samples,
            enqueued: Instant::now(),
            reply,
        };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServeError::QueueFull {
                capacity: self.tx.max_capacity(),
            },
            mpsc::error::TrySendError::Closed(_) => ServeError::WorkersGone,
        })?;
        self.record_depth();
        Ok(rx)
    }

    /// Free places in the queue.
    pub fn room(&self) -> usize {
        self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    fn record_depth(&self) {
        gauge!(m::QUEUE_DEPTH).set((self.tx.max_capacity() - self.tx.capacity()) as f64);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_delay: Duration,
}

/// The running batcher and its inference threads.
pub struct Batcher {
    workers: Vec<JoinHandle<()>>,
}

impl Batcher {
    /// Waits for the inference threads to finish what they hold (call after dropping every `Queue`).
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

struct Batch {
    jobs: Vec<Job>,
    // Returned to the batcher when the batch is done: one permit per idle worker.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Starts one inference thread per runner and the batching task on the current tokio runtime. The batcher stops
/// when every [`Queue`] is dropped and the queue is empty, or at once when `stop` fires.
pub fn spawn<R: Runner>(
    rx: QueueReceiver,
    config: BatchConfig,
    runners: Vec<R>,
    stop: CancellationToken,
) -> Batcher {
    let idle = Arc::new(Semaphore::new(runners.len()));
    let (batch_tx, batch_rx) = crossbeam_channel::bounded::<Batch>(runners.len().max(1));
    let workers = runners
        .into_iter()
        .enumerate()
        .map(|(i, mut runner)| {
            let batch_rx = batch_rx.clone();
            std::thread::Builder::new()
                .name(format!("drsn-infer-{i}"))
                .spawn(move || {
                    while let Ok(batch) = batch_rx.recv() {
                        run_batch(&mut runner, batch);
                    }
                })
                .map_err(|e| tracing::error!(error = %e, "cannot start an inference thread"))
        })
        .filter_map(Result::ok)
        .collect();
    tokio::spawn(async move {
        tokio::select! {
            _ = form_batches(rx.0, config, idle, batch_tx) => {}
            _ = stop.cancelled() => {}
        }
    });
    Batcher { workers }
}

async fn form_batches(
    mut rx: mpsc::Receiver<Job>,
    config: BatchConfig,
    idle: Arc<Semaphore>,
    batch_tx: crossbeam_channel::Sender<Batch>,
) {
    let max_batch = config.max_batch.max(1);
    loop {
        // Form a batch only when a worker is free: under load windows keep arriving meanwhile, so batches grow.
        let Ok(permit) = idle.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let deadline = tokio::time::Instant::from_std(first.enqueued + config.max_delay);
        let mut jobs = Vec::with_capacity(max_batch);
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(job)) => jobs.push(job),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        gauge!(m::QUEUE_DEPTH).set(rx.len() as f64);
        // Windows whose stream has gone are not worth a model run.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        // Never blocks: the channel holds as many batches as there are permits.
        if batch_tx
            .try_send(Batch {
                jobs,
                _permit: permit,
            })
            .is_err()
        {
            tracing::error!("inference threads are gone");
            return;
        }
    }
}

fn run_batch<R: Runner>(runner: &mut R, batch: Batch) {
    let started = Instant::now();
    let windows: Vec<&[f32]> = batch.jobs.iter().map(|j| j.samples.as_slice()).collect();
    let result = runner.run(&windows);
    let inference = started.elapsed();
    let size = batch.jobs.len();
    histogram!(m::BATCH_SIZE).record(size as f64);
    histogram!(m::INFERENCE).record(inference.as_secs_f64());
    match result {
        Ok(out) => {
            for (row, job) in batch.jobs.into_iter().enumerate() {
                let queue_wait = started.saturating_duration_since(job.enqueued);
                histogram!(m::QUEUE_WAIT).record(queue_wait.as_secs_f64());
                let diagnosis = diagnosis(&out, row, queue_wait, inference, size);
                // A closed receiver means the stream ended meanwhile; nothing is left to tell.
                let _ = job.reply.send(Ok(diagnosis));
            }
        }
        Err(reason) => {
            tracing::error!(%reason, batch = size, "inference failed");
            for job in batch.jobs {
                let _ = job.reply.send(Err(ServeError::Inference(reason.clone())));
            }
        }
    }
}

fn diagnosis(
    out: &BatchOutput,
    row: usize,
    queue_wait: Duration,
    inference: Duration,
    size: usize,
) -> Diagnosis {
    let probabilities = out.probabilities[row * out.classes..(row + 1) * out.classes].to_vec();
    let class_index = probabilities
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
            if p > best.1 { (i, p) } else { best }
        })
        .0;
    let shrinkage = out
        .shrinkage
        .as_ref()
        .map(|(units, values)| values[row * units..(row + 1) * units].to_vec());
    Diagnosis {
        class_index,
        probabilities,
        shrinkage,
        queue_wait,
        inference,
        batch_size: size,
    }
}
