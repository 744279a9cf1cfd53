//! In-order delivery: a stream's results come out in window order, whatever order the inference threads finish
//! in, each window exactly once, and the stream ends with a status saying from which sample to resume when it
//! cannot finish.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::ServeError;
use crate::pipeline::diagnosis::{Answer, WindowDiagnosis, WindowPlace};
use crate::pipeline::schedule::Reply;

/// A gap or overlap in a stream's sample indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discontinuity {
    pub expected: u64,
    pub received: u64,
    /// Partial-window samples discarded by the restart.
    pub samples_discarded: u64,
}

/// What a stream delivers to its client, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Window(WindowDiagnosis),
    Discontinuity(Discontinuity),
}

/// A window's answer: known already (a flagged window never reaches the model) or on its way.
pub enum Pending {
    Ready(Answer),
    Waiting(Reply),
}

/// What a stream's reader hands to its deliverer, in the order the client must see it.
pub enum Outgoing {
    Discontinuity(Discontinuity),
    Window {
        place: WindowPlace,
        /// When the window's last sample arrived.
        arrived: Instant,
        answer: Pending,
    },
    /// The stream must end with this error, after everything before it.
    End(ServeError),
    /// The client half-closed and everything is delivered: the stream ends OK.
    Finished,
}

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<StreamEvent, ServeError>> + Send + 'static>>;

struct Deliverer {
    rx: mpsc::Receiver<Outgoing>,
    classes: Arc<Vec<String>>,
    drain_expired: CancellationToken,
    /// The client sample from which a reconnecting client would get the first window not yet cut.
    progress: Arc<AtomicU64>,
    done: bool,
    /// Held until the stream is dropped, however it ends (the active-streams gauge, the stream's slot).
    _guard: Box<dyn Send + Sync>,
}

/// The events of one stream: items in the reader's order, each window once its answer is ready. Ends after
/// `Finished`, or with the reader's error, with `DrainTimeout` if the drain deadline passes first, or with
/// `ReaderFailed` if the reader stopped without saying why (a bug), never with a silent OK.
pub fn ordered(
    rx: mpsc::Receiver<Outgoing>,
    classes: Arc<Vec<String>>,
    drain_expired: CancellationToken,
    progress: Arc<AtomicU64>,
    guard: Box<dyn Send + Sync>,
) -> EventStream {
    let state = Deliverer {
        rx,
        classes,
        drain_expired,
        progress,
        done: false,
        _guard: guard,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let item = match st.rx.recv().await {
            Some(item) => item,
            None => Outgoing::End(ServeError::ReaderFailed {
                resume_from: st.progress.load(Ordering::SeqCst),
            }),
        };
        let out = match item {
            Outgoing::Finished => return None,
            Outgoing::Discontinuity(d) => Ok(StreamEvent::Discontinuity(d)),
            Outgoing::End(err) => Err(err),
            Outgoing::Window {
                place,
                arrived,
                answer,
            } => {
                let answer = match answer {
                    Pending::Ready(a) => Ok(a),
                    Pending::Waiting(reply) => tokio::select! {
                        biased;
                        r = reply => r.unwrap_or(Err(ServeError::WorkersGone)),
                        _ = st.drain_expired.cancelled() => {
                            Err(ServeError::DrainTimeout { resume_from: place.first_sample })
                        }
                    },
                };
                answer
                    .map(|a| {
                        StreamEvent::Window(WindowDiagnosis::deliver(
                            "stream",
                            place,
                            a,
                            arrived.elapsed(),
                            &st.classes,
                        ))
                    })
                    .map_err(|e| match e {
                        // The batch does not know which stream a window came from: say where this one resumes.
                        ServeError::Inference { reason, .. } => ServeError::Inference {
                            reason,
                            resume_from: place.first_sample,
                        },
                        other => other,
                    })
            }
        };
        st.done = out.is_err();
        Some((out, st))
    }))
}
