//! Whether this replica serves: one state, changed in one place, that gRPC health, `/readyz` and `drsn_serving` all
//! follow (and anything else may watch).

use std::sync::Arc;

use metrics::gauge;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::grpc::proto::diagnosis_server::DiagnosisServer;
use crate::api::grpc::service::DiagnosisService;
use crate::telemetry::metrics as m;

/// Where the replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Models loading, listeners not yet serving.
    Starting,
    Serving,
    /// Every inference worker stopped (a lost device): nothing left to serve with.
    WorkersGone,
    /// SIGTERM or SIGINT: finishing what it holds, taking nothing new. Final.
    Draining,
}

/// The replica's serving state; clones share it.
#[derive(Clone)]
pub struct Health {
    tx: Arc<watch::Sender<Serving>>,
    reporter: HealthReporter,
}

impl Health {
    /// Starting: NOT_SERVING to gRPC health, 0 in `drsn_serving`, not ready.
    pub async fn new(reporter: HealthReporter) -> Self {
        let health = Self {
            tx: Arc::new(watch::Sender::new(Serving::Starting)),
            reporter,
        };
        health.publish(Serving::Starting).await;
        health
    }

    /// Moves to `next` and says so to every view, unless the replica already drains (a drain is never undone, and
    /// its workers stopping is expected then).
    pub async fn set(&self, next: Serving) {
        let changed = self.tx.send_if_modified(|now| {
            if *now == next || *now == Serving::Draining {
                return false;
            }
            *now = next;
            true
        });
        if changed {
            self.publish(next).await;
        }
    }

    async fn publish(&self, state: Serving) {
        let serving = state == Serving::Serving;
        gauge!(m::SERVING).set(if serving { 1.0 } else { 0.0 });
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let service = <DiagnosisServer<DiagnosisService> as tonic::server::NamedService>::NAME;
        self.reporter.set_service_status(service, status).await;
        self.reporter.set_service_status("", status).await;
    }

    /// The state as it changes.
    pub fn watch(&self) -> watch::Receiver<Serving> {
        self.tx.subscribe()
    }

    pub fn now(&self) -> Serving {
        *self.tx.borrow()
    }

    pub fn is_serving(&self) -> bool {
        self.now() == Serving::Serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_is_final_and_workers_stopping_during_it_change_nothing() {
        let (reporter, _) = tonic_health::server::health_reporter();
        let health = Health::new(reporter).await;
        let mut watch = health.watch();
        assert_eq!(health.now(), Serving::Starting);
        health.set(Serving::Serving).await;
        assert!(health.is_serving() && watch.has_changed().unwrap());
        watch.mark_unchanged();
        health.set(Serving::WorkersGone).await;
        assert_eq!(health.now(), Serving::WorkersGone);
        health.set(Serving::Draining).await;
        health.set(Serving::WorkersGone).await;
        health.set(Serving::Serving).await;
        assert_eq!(*watch.borrow_and_update(), Serving::Draining);
    }
}
