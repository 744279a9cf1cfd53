//! Accepting connections with limits: a cap on open connections (refuse the newcomer, or evict the oldest), connections
//! closed when they go quiet, TCP_NODELAY, and an accept loop that backs off instead of spinning when the process runs
//! out of file descriptors.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::api::connection::{self, Activity, ConnInfo};
use crate::telemetry::metrics as m;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// The `listener` label of the connection metrics: "grpc" or "metrics".
    pub listener: &'static str,
    pub max_connections: usize,
    /// Close a connection that has sent nothing for this long while it has no open stream.
    pub idle: Duration,
    /// Streams on a connection older than this end (gRPC only).
    pub max_age: Option<Duration>,
    /// What a new connection meets when `max_connections` are open.
    pub at_capacity: AtCapacity,
}

/// The policy at the connection cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtCapacity {
    /// Close the newcomer (`reason="max_connections"`): what the API listeners do, so that held connections keep
    /// their work.
    Refuse,
    /// Close the oldest connection to admit the newcomer (`reason="evicted"`): the probe and scrape listener, where
    /// whoever can reach the port could otherwise lock the kubelet's liveness probe out with idle connections.
    EvictOldest,
}

/// Connections that may be evicted, oldest first, each with the slot it holds.
type Evictable = Arc<Mutex<VecDeque<(u64, CancellationToken, OwnedSemaphorePermit)>>>;

/// How a connection holds its slot under the cap.
enum Slot {
    Held {
        _permit: OwnedSemaphorePermit,
    },
    /// In the eviction queue, by connection id; an evicted connection has given its slot to the newcomer already.
    Queued(u64, Evictable),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Slot::Queued(id, queue) = self {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.retain(|(other, ..)| other != id);
        }
    }
}

/// Fires when the connection is evicted.
struct Eviction {
    token: CancellationToken,
    fired: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Eviction {
    /// `Ready` (with the error the connection ends on) once evicted; else registers the waker.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.token.is_cancelled() || self.fired.as_mut().poll(cx).is_ready() {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted: the listener was full and this was its oldest connection",
            ));
        }
        Poll::Pending
    }
}
/// An accepted TCP connection: counted while open, closed when idle, carrying its [`ConnInfo`].
pub(crate) struct ConnIo {
    inner: TcpStream,
    info: ConnInfo,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    listener: &'static str,
    eviction: Option<Eviction>,
    _slot: Slot,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        gauge!(m::CONNECTIONS, "listener" => self.listener).decrement(1.0);
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(Poll::Ready(err)) = self.eviction.as_mut().map(|e| e.poll(cx)) {
            return Poll::Ready(Err(err));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let at = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(at);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                if self.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if self.info.activity.busy() {
                    // Streams are open: their own idle timeout watches them. Look again later.
                    let at = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(at);
                    continue;
                }
                counter!(m::CONNECTIONS_CLOSED, "listener" => self.listener, "reason" => "idle")
                    .increment(1);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle: closed by the server",
                )));
            },
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(Poll::Ready(err)) = self.eviction.as_mut().map(|e| e.poll(cx)) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl ConnIo {
    /// The connection's facts, as requests on it carry them.
    pub(crate) fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for ConnIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepts connections on `listener` until `stop` fires, handing them out through the returned channel.
pub(crate) fn accept(
    listener: TcpListener,
    limits: ConnLimits,
    stop: CancellationToken,
) -> mpsc::Receiver<io::Result<ConnIo>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let evictable = Evictable::default();
    tokio::spawn(async move {
        let mut last_error_log: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors (or another transient failure): back off instead of spinning.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %err, "cannot accept a connection; backing off");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let permit = match slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) if limits.at_capacity == AtCapacity::EvictOldest => {
                    let oldest = evictable
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front();
                    let Some((_, token, permit)) = oldest else {
                        // Every slot is held by a connection not yet queued: cannot happen; refuse.
                        drop(stream);
                        continue;
                    };
                    // The evicted connection fails its next read or write and ends; its slot is the newcomer's now.
                    token.cancel();
                    counter!(m::CONNECTIONS_CLOSED, "listener" => limits.listener, "reason" => "evicted")
                        .increment(1);
                    permit
                }
                Err(_) => {
                    counter!(m::CONNECTIONS_CLOSED, "listener" => limits.listener, "reason" => "max_connections")
                        .increment(1);
                    drop(stream);
                    continue;
                }
            };
            let id = connection::next_id();
            let (slot, eviction) = match limits.at_capacity {
                AtCapacity::Refuse => (Slot::Held { _permit: permit }, None),
                AtCapacity::EvictOldest => {
                    let token = CancellationToken::new();
                    evictable
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_back((id, token.clone(), permit));
                    let fired = Box::pin(token.clone().cancelled_owned());
                    (
                        Slot::Queued(id, evictable.clone()),
                        Some(Eviction { token, fired }),
                    )
                }
            };
            if tx
                .send(Ok(wrap(stream, remote, id, slot, eviction, limits)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

fn wrap(
    stream: TcpStream,
    remote: SocketAddr,
    id: u64,
    slot: Slot,
    eviction: Option<Eviction>,
    limits: ConnLimits,
) -> ConnIo {
    // Small replies on many streams: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms per reply.
    let _ = stream.set_nodelay(true);
    gauge!(m::CONNECTIONS, "listener" => limits.listener).increment(1.0);
    let now = Instant::now();
    ConnIo {
        inner: stream,
        info: ConnInfo {
            id,
            remote: Some(remote),
            max_age_at: limits.max_age.map(|age| now + age),
            activity: Arc::<Activity>::default(),
        },
        idle: limits.idle,
        deadline: Box::pin(tokio::time::sleep_until(now + limits.idle)),
        listener: limits.listener,
        eviction,
        _slot: slot,
    }
}
