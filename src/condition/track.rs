//! A stream's events with its condition: every delivered window feeds the sensor's debouncer and the registry, a
//! `Condition` event follows the window that changed it, and the stream's end carries the state to resume with.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use crate::condition::debounce::{Change, Debouncer, Observation, State, Vote};
use crate::condition::machines::{Departure, Registry, SensorHandle};
use crate::error::ServeError;
use crate::pipeline::deliver::{EventStream, StreamEvent};
use crate::pipeline::diagnosis::{Verdict, WindowDiagnosis};
use crate::pipeline::quality::Flag;

/// What a stream with a condition delivers, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Stream(StreamEvent),
    /// The sensor's condition changed; `carry` is the state a resumed stream may send back.
    Condition {
        change: Change,
        carry: State,
    },
}

/// How a stream ended: the error, and the condition state to resume with.
#[derive(Debug)]
pub struct Ending {
    pub error: ServeError,
    pub carry: State,
}

pub(crate) type TrackedStream = Pin<Box<dyn Stream<Item = Result<Event, Ending>> + Send + 'static>>;

/// One stream's condition and its place in the registry (none for a stream without a machine id).
pub(crate) struct Tracker {
    pub(crate) debouncer: Debouncer,
    pub(crate) registry: Arc<Registry>,
    pub(crate) handle: Option<SensorHandle>,
}

impl Tracker {
    fn depart(&mut self, how: Departure) {
        if let Some(handle) = self.handle.take() {
            self.registry.detach(&handle, how, now_unix_ms());
        }
    }

    fn observe(&mut self, w: &WindowDiagnosis) -> Option<Change> {
        let vote = match &w.verdict {
            Verdict::Classified(c) => Vote::Class {
                index: c.class_index,
                uncertain: c.uncertain,
            },
            Verdict::Flagged(f) if f.flag == Flag::Shed => Vote::Shed,
            Verdict::Flagged(_) => Vote::Invalid,
        };
        let obs = Observation {
            first_sample: w.place.first_sample,
            end_sample: w.place.last_sample,
            vote,
            velocity_mm_s: w.severity.map(|s| s.velocity_mm_s),
        };
        let change = self.debouncer.observe(obs, now_unix_ms());
        if let Some(handle) = &self.handle {
            self.registry.update(handle, self.debouncer.snapshot());
        }
        change
    }
}

/// A stream that the client stops reading still leaves the registry: its data stopped.
impl Drop for Tracker {
    fn drop(&mut self) {
        self.depart(Departure::Stopped);
    }
}

/// The pipeline's events of one stream with its condition events.
pub(crate) fn track(events: EventStream, tracker: Tracker) -> TrackedStream {
    let state = (events, tracker, VecDeque::<Event>::new(), false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut events, mut tracker, mut queued, done)| async move {
            if let Some(next) = queued.pop_front() {
                return Some((Ok(next), (events, tracker, queued, done)));
            }
            if done {
                return None;
            }
            match events.next().await {
                Some(Ok(event)) => {
                    if let StreamEvent::Window(w) = &event
                        && let Some(change) = tracker.observe(w)
                    {
                        let carry = tracker.debouncer.state().clone();
                        queued.push_back(Event::Condition { change, carry });
                    }
                    Some((Ok(Event::Stream(event)), (events, tracker, queued, false)))
                }
                Some(Err(error)) => {
                    // Sent to resume elsewhere, the sensor's condition goes with it; anything else stops its data.
                    let how = match error {
                        ServeError::ShuttingDown { .. }
                        | ServeError::ConnectionAged { .. }
                        | ServeError::DrainTimeout { .. }
                        | ServeError::WorkersGone => Departure::Moved,
                        _ => Departure::Stopped,
                    };
                    tracker.depart(how);
                    let carry = tracker.debouncer.state().clone();
                    Some((
                        Err(Ending { error, carry }),
                        (events, tracker, queued, true),
                    ))
                }
                None => {
                    tracker.depart(Departure::Stopped);
                    None
                }
            }
        },
    ))
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
