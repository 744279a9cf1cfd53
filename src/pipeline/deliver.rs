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
use crate::pipeline::severity::Severity;
use crate::pipeline::shadow;
use crate::telemetry::metrics::WindowMeters;

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
pub(crate) enum Pending {
    Ready(Answer),
    Waiting(Reply),
}

/// What a stream's reader hands to its deliverer, in the order the client must see it.
pub(crate) enum Outgoing {
    Discontinuity(Discontinuity),
    Window {
        place: WindowPlace,
        /// When the window's last sample arrived.
        arrived: Instant,
        answer: Pending,
        severity: Option<Severity>,
        /// The same window offered to a shadow candidate, scored once the serving answer is out.
        shadow: Option<shadow::Pending>,
    },
    /// The stream must end with this error, after everything before it.
    End(ServeError),
    /// The client half-closed and everything is delivered: the stream ends OK.
    Finished,
}

/// What a stream holds until it is dropped (its slot, its queue flow), told how the stream ended: "ok", an error
/// kind's label, or (never told) the client went away.
pub(crate) trait Ending: Send + Sync {
    fn ended(&mut self, how: &'static str);
}

impl Ending for () {
    fn ended(&mut self, _: &'static str) {}
}

pub(crate) type EventStream =
    Pin<Box<dyn Stream<Item = Result<StreamEvent, ServeError>> + Send + 'static>>;

struct Deliverer {
    rx: mpsc::Receiver<Outgoing>,
    /// The stream's model's per-window series.
    meters: Arc<WindowMeters>,
    /// The model's classes (a shadow candidate's answers are compared by name).
    classes: Arc<Vec<String>>,
    drain_expired: CancellationToken,
    /// The client sample from which a reconnecting client would get the first window not yet cut.
    progress: Arc<AtomicU64>,
    done: bool,
    /// Held until the stream is dropped, however it ends (the active-streams gauge, the stream's slot).
    guard: Box<dyn Ending>,
}

/// The events of one stream: items in the reader's order, each window once its answer is ready. Ends after
/// `Finished`, or with the reader's error, with `DrainTimeout` if the drain deadline passes first, or with
/// `ReaderFailed` if the reader stopped without saying why (a bug), never with a silent OK.
pub(crate) fn ordered(
    rx: mpsc::Receiver<Outgoing>,
    meters: Arc<WindowMeters>,
    classes: Arc<Vec<String>>,
    drain_expired: CancellationToken,
    progress: Arc<AtomicU64>,
    guard: Box<dyn Ending>,
) -> EventStream {
    let state = Deliverer {
        rx,
        meters,
        classes,
        drain_expired,
        progress,
        done: false,
        guard,
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
            Outgoing::Finished => {
                st.guard.ended("ok");
                return None;
            }
            Outgoing::Discontinuity(d) => Ok(StreamEvent::Discontinuity(d)),
            Outgoing::End(err) => Err(err),
            Outgoing::Window {
                place,
                arrived,
                answer,
                severity,
                shadow,
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
                if let (Ok(a), Some(s)) = (&answer, shadow) {
                    s.score(a, &st.classes);
                }
                answer
                    .map(|a| {
                        StreamEvent::Window(WindowDiagnosis::deliver(
                            &st.meters,
                            place,
                            a,
                            severity,
                            arrived.elapsed(),
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
        if let Err(e) = &out {
            st.guard.ended(e.kind().label());
            st.done = true;
        }
        Some((out, st))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::diagnosis::{Classified, Timing, Verdict};
    use futures_util::StreamExt;

    fn window(index: u64, class_index: usize) -> Outgoing {
        Outgoing::Window {
            place: WindowPlace {
                index,
                first_sample: index * 1024,
                last_sample: index * 1024 + 2047,
            },
            arrived: Instant::now(),
            answer: Pending::Ready(Answer {
                verdict: Verdict::Classified(Classified {
                    class_index,
                    logits: vec![0.0, 5.0],
                    probabilities: vec![0.0, 1.0],
                    shrinkage: None,
                    ood_score: None,
                    out_of_distribution: false,
                    uncertain: false,
                }),
                timing: Timing::default(),
            }),
            severity: None,
            shadow: None,
        }
    }

    fn events(rx: mpsc::Receiver<Outgoing>, progress: u64) -> EventStream {
        let classes = vec!["a".to_owned(), "b".to_owned()];
        ordered(
            rx,
            Arc::new(WindowMeters::new("stream", "m", &classes)),
            Arc::new(classes),
            CancellationToken::new(),
            Arc::new(AtomicU64::new(progress)),
            Box::new(()),
        )
    }

    #[tokio::test]
    async fn a_reader_that_stops_without_a_word_ends_the_stream_internal_never_ok() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(window(0, 1)).await.unwrap();
        drop(tx); // as a panicking reader would: no Finished, no End
        let got: Vec<_> = events(rx, 3072).collect().await;
        assert!(
            matches!(got[0], Ok(StreamEvent::Window(_))),
            "what was handed over is delivered"
        );
        match &got[1] {
            Err(ServeError::ReaderFailed { resume_from: 3072 }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn finished_ends_ok_and_errors_end_after_what_came_before() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(window(0, 1)).await.unwrap();
        tx.send(Outgoing::Finished).await.unwrap();
        let got: Vec<_> = events(rx, 0).collect().await;
        assert_eq!(got.len(), 1);
        let (tx, rx) = mpsc::channel(4);
        tx.send(window(0, 1)).await.unwrap();
        tx.send(Outgoing::End(ServeError::OpenedTwice))
            .await
            .unwrap();
        tx.send(window(1, 1)).await.unwrap();
        let got: Vec<_> = events(rx, 0).collect().await;
        assert_eq!(got.len(), 2, "nothing after the error");
        assert!(matches!(got[1], Err(ServeError::OpenedTwice)));
    }

    #[tokio::test]
    async fn a_failed_batch_says_where_this_stream_resumes() {
        let (tx, rx) = mpsc::channel(4);
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        tx.send(Outgoing::Window {
            place: WindowPlace {
                index: 5,
                first_sample: 5120,
                last_sample: 7167,
            },
            arrived: Instant::now(),
            answer: Pending::Waiting(reply_rx),
            severity: None,
            shadow: None,
        })
        .await
        .unwrap();
        reply_tx
            .send(Err(ServeError::Inference {
                reason: "boom".into(),
                resume_from: 0,
            }))
            .unwrap();
        let got: Vec<_> = events(rx, 0).collect().await;
        match &got[0] {
            Err(ServeError::Inference {
                resume_from: 5120, ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
