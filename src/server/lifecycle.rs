//! The process's life after start-up, owned by one type: the drain signals, the tasks that serve, and the order in
//! which things stop (listener, readers, deliveries, batcher, inference threads, metrics).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Drain;
use crate::pipeline::batch::Batcher;
use crate::server::models::ServedModels;

/// Longest the inference threads get to finish the batch they hold once the drain is over.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// After the drain deadline, how long abandoned streams get for their final statuses to be written.
const FINAL_WRITE: Duration = Duration::from_secs(1);

pub(crate) struct Lifecycle {
    pub drain: Drain,
    pub stop_batcher: CancellationToken,
    pub stop_metrics: CancellationToken,
    drain_timeout: Duration,
    task: Option<JoinHandle<()>>,
}

impl Lifecycle {
    pub(crate) fn new(drain_timeout: Duration) -> Self {
        Self {
            drain: Drain::default(),
            stop_batcher: CancellationToken::new(),
            stop_metrics: CancellationToken::new(),
            drain_timeout,
            task: None,
        }
    }

    /// SIGTERM: stop taking work; open streams get their queued windows, then a status with a resume point.
    pub(crate) fn begin_drain(&self) {
        // Logged here, not by a task woken by the cancellation: a drain with nothing to wait for can end the
        // process before such a task runs.
        if !self.drain.shutdown.is_cancelled() {
            let drain_timeout = self.drain_timeout;
            tracing::info!(?drain_timeout, "draining: NOT_SERVING, no new streams");
        }
        self.drain.shutdown.cancel();
    }

    /// Runs the gRPC server to the end of the drain, then stops the batcher, the inference threads and metrics.
    pub(crate) fn run(
        &mut self,
        serve: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
        models: Arc<ServedModels>,
    ) {
        let drain = self.drain.clone();
        let (stop_batcher, stop_metrics) = (self.stop_batcher.clone(), self.stop_metrics.clone());
        let drain_timeout = self.drain_timeout;
        self.task = Some(tokio::spawn(async move {
            tokio::pin!(serve);
            let deadline = async {
                drain.shutdown.cancelled().await;
                tokio::time::sleep(drain_timeout).await;
            };
            // The server returns once every connection has closed: every stream delivered and ended.
            tokio::select! {
                result = &mut serve => report(result),
                _ = deadline => {
                    tracing::warn!("drain timeout passed; ending the streams still open");
                    drain.expired.cancel();
                    if tokio::time::timeout(FINAL_WRITE, &mut serve).await.is_err() {
                        tracing::warn!("abandoning connections still open");
                    }
                }
            }
            drain.tasks.close();
            let _ = tokio::time::timeout(FINAL_WRITE, drain.tasks.wait()).await;
            // Nothing can submit any more: let the batchers finish what is queued, then stop them.
            let batchers = models.close_all();
            stop_batcher.cancel();
            let joined =
                tokio::task::spawn_blocking(move || batchers.into_iter().for_each(Batcher::join));
            if tokio::time::timeout(JOIN_TIMEOUT, joined).await.is_err() {
                tracing::warn!("an inference thread is still busy; not waiting for it");
            }
            stop_metrics.cancel();
            tracing::info!("stopped");
        }));
    }

    /// Waits until everything has stopped (after [`Lifecycle::begin_drain`]).
    pub(crate) async fn stopped(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn report(result: Result<(), tonic::transport::Error>) {
    if let Err(err) = result {
        tracing::error!(error = %err, "gRPC server failed");
    }
}
