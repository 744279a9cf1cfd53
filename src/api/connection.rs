//! What a request knows of the connection it came on: an id (the client, for fairness and per-connection
//! limits) and when the connection must be given up (its maximum age). The server's accept loop attaches it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tonic::transport::server::TlsConnectInfo;

/// Connection facts carried in each request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub id: u64,
    pub remote: Option<SocketAddr>,
    /// When streams on this connection end with UNAVAILABLE so that clients reconnect (and rebalance).
    pub max_age_at: Option<tokio::time::Instant>,
    /// Open streams on the connection: while there are any, a quiet connection is not idle.
    pub activity: Arc<Activity>,
}

#[derive(Debug, Default)]
pub(crate) struct Activity(AtomicUsize);

impl Activity {
    pub(crate) fn hold(self: &Arc<Self>) -> ActivityGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        ActivityGuard(self.clone())
    }

    pub(crate) fn busy(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// Counts one open stream while it lives.
pub(crate) struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnInfo {
    pub(crate) fn aged(&self) -> Option<tokio::time::Instant> {
        self.max_age_at
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The connection a request came on (through TLS or not). A request without one (an in-process call) gets an id
/// of its own, so it is still a client apart.
pub(crate) fn of<T>(request: &tonic::Request<T>) -> ConnInfo {
    let ext = request.extensions();
    ext.get::<ConnInfo>()
        .or_else(|| ext.get::<TlsConnectInfo<ConnInfo>>().map(|t| t.get_ref()))
        .cloned()
        .unwrap_or_else(|| ConnInfo {
            id: next_id(),
            remote: None,
            max_age_at: None,
            activity: Arc::default(),
        })
}

/// The time by which a request must have arrived in full, headers and body: a request extension the HTTP listener attaches
/// for handlers that read a body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadDeadline {
    pub at: tokio::time::Instant,
    /// The read timeout it was set from.
    pub timeout: std::time::Duration,
    /// The listener, for the metrics.
    pub listener: &'static str,
}
