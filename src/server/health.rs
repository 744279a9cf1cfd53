//! Whether this replica serves: one state, changed in one place, that gRPC health, `/readyz` and `drsn_serving` all
//! follow (and anything else may watch).

use std::sync::Arc;

use metrics::gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::api::grpc::proto::diagnosis_server::DiagnosisServer;
use crate::api::grpc::service::DiagnosisService;
use crate::api::kserve::Ready;
use crate::telemetry::metrics as m;

/// Where the replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
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
pub(crate) struct Health {
    tx: Arc<watch::Sender<State>>,
    reporter: HealthReporter,
}

impl Health {
    /// Starting: NOT_SERVING to gRPC health, 0 in `drsn_serving`, not ready.
    pub(crate) async fn starting() -> Self {
        let health = Self {
            tx: Arc::new(watch::Sender::new(State::Starting)),
            reporter: HealthReporter::new(),
        };
        health.publish(State::Starting).await;
        health
    }

    /// The gRPC health service (grpc.health.v1), answering from this state.
    pub(crate) fn grpc_service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Follows the replica's life: every inference worker stopping (a lost device) leaves nothing to serve with;
    /// the drain is final.
    pub(crate) fn follow(&self, draining: CancellationToken, workers_gone: CancellationToken) {
        let health = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = draining.cancelled() => {}
                () = workers_gone.cancelled() => {
                    if !draining.is_cancelled() {
                        tracing::error!("every inference worker has stopped: NOT_SERVING");
                        health.set(State::WorkersGone).await;
                    }
                    draining.cancelled().await;
                }
            }
            health.set(State::Draining).await;
        });
    }

    /// Readiness for the APIs that answer it themselves (KServe V2's server and model ready).
    pub(crate) fn ready(&self) -> Ready {
        let tx = self.tx.clone();
        Arc::new(move || *tx.borrow() == State::Serving)
    }

    /// `/healthz` (the process answers) and `/readyz` (SERVING: not draining, inference workers alive), for
    /// probes that cannot speak gRPC over TLS.
    pub(crate) fn probes(&self) -> axum::Router {
        use axum::http::StatusCode;
        let health = self.clone();
        axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let ready = health.is_serving();
                    async move {
                        if ready {
                            (StatusCode::OK, "ready\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                        }
                    }
                }),
            )
    }

    /// Moves to `next` and says so to every view, unless the replica already drains (a drain is never undone, and
    /// its workers stopping is expected then).
    pub(crate) async fn set(&self, next: State) {
        let changed = self.tx.send_if_modified(|now| {
            if *now == next || *now == State::Draining {
                return false;
            }
            *now = next;
            true
        });
        if changed {
            self.publish(next).await;
        }
    }

    async fn publish(&self, state: State) {
        let serving = state == State::Serving;
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
    #[cfg(test)]
    pub(crate) fn watch(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }

    pub(crate) fn now(&self) -> State {
        *self.tx.borrow()
    }

    pub(crate) fn is_serving(&self) -> bool {
        self.now() == State::Serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tonic::codegen::Service;

    async fn get(router: &mut axum::Router, path: &str) -> u16 {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let _ = std::future::poll_fn(|cx| {
            <axum::Router as Service<Request<Body>>>::poll_ready(router, cx)
        })
        .await;
        router.call(request).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn probes_and_v2_readiness_say_ready_only_while_serving_and_alive_throughout() {
        let health = Health::starting().await;
        let mut router = health.probes();
        let v2_ready = health.ready();
        assert_eq!(get(&mut router, "/healthz").await, 200);
        assert_eq!(
            get(&mut router, "/readyz").await,
            503,
            "starting is not ready"
        );
        assert!(!v2_ready());
        health.set(State::Serving).await;
        assert_eq!(get(&mut router, "/readyz").await, 200);
        assert!(v2_ready());
        health.set(State::WorkersGone).await;
        assert_eq!(
            get(&mut router, "/readyz").await,
            503,
            "no workers is not ready"
        );
        assert!(!v2_ready());
        health.set(State::Draining).await;
        assert_eq!(
            get(&mut router, "/readyz").await,
            503,
            "draining is not ready"
        );
        assert!(!v2_ready());
        assert_eq!(get(&mut router, "/healthz").await, 200, "but alive");
    }

    #[tokio::test(start_paused = true)]
    async fn following_the_replica_workers_gone_then_the_drain() {
        let health = Health::starting().await;
        health.set(State::Serving).await;
        let (draining, gone) = (CancellationToken::new(), CancellationToken::new());
        health.follow(draining.clone(), gone.clone());
        let mut watch = health.watch();
        gone.cancel();
        watch.changed().await.unwrap();
        assert_eq!(*watch.borrow_and_update(), State::WorkersGone);
        draining.cancel();
        watch.changed().await.unwrap();
        assert_eq!(*watch.borrow_and_update(), State::Draining);
    }

    #[tokio::test]
    async fn a_drain_is_final_and_workers_stopping_during_it_change_nothing() {
        let health = Health::starting().await;
        let mut watch = health.watch();
        assert_eq!(health.now(), State::Starting);
        health.set(State::Serving).await;
        assert!(health.is_serving() && watch.has_changed().unwrap());
        watch.mark_unchanged();
        health.set(State::WorkersGone).await;
        assert_eq!(health.now(), State::WorkersGone);
        health.set(State::Draining).await;
        health.set(State::WorkersGone).await;
        health.set(State::Serving).await;
        assert_eq!(*watch.borrow_and_update(), State::Draining);
    }
}
