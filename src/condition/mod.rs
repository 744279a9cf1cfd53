//! State across windows, protocol-neutral: a sensor's debounced condition in its own sample time ([`debounce`]),
//! the machines of this replica and their watchers ([`machines`]), the condition riding along a stream's events
//! ([`track`]) and the per-machine Prometheus series ([`export`]). Fed by ordered delivery, read by every API.

pub mod debounce;
pub(crate) mod export;
pub mod machines;
pub(crate) mod track;

use std::sync::Arc;
use std::time::Duration;

use crate::condition::debounce::{Debouncer, Settings, Snapshot, State};
use crate::condition::machines::Registry;
use crate::condition::track::{TrackedStream, Tracker};
use crate::error::ServeError;
use crate::pipeline::deliver::EventStream;
use crate::pipeline::spec::StreamSpec;

/// The condition stage of a server: its settings and the registry of its machines. Each stream's condition is
/// in the classes of the model serving it.
pub struct Conditions {
    registry: Arc<Registry>,
    settings: Settings,
}

impl Conditions {
    /// `max_stopped`: the most sensors kept after their stream ended (UNKNOWN, until `retention` passes).
    pub fn new(settings: Settings, retention: Duration, max_stopped: usize) -> Self {
        Self {
            registry: Arc::new(Registry::new(retention, max_stopped)),
            settings,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Checks a condition state a resumed stream sent back against the classes of the model it opens on.
    pub fn check(&self, state: &State, classes: &[String]) -> Result<(), ServeError> {
        state
            .check(classes.len())
            .map_err(ServeError::ConditionCarry)
    }

    /// Tracks the condition of a newly opened stream, going on from `carry` when a resumed stream sent one back;
    /// returns the stream with its condition events and the condition it starts in.
    /// `classes`: those of the model serving the stream (the class named `normal` or `healthy` means healthy).
    pub fn track(
        &self,
        spec: &StreamSpec,
        classes: &Arc<Vec<String>>,
        carry: Option<State>,
        events: EventStream,
    ) -> Result<(TrackedStream, Snapshot), ServeError> {
        let state = match carry {
            Some(state) => {
                self.check(&state, classes)?;
                state
            }
            None => State::new(classes.len(), track::now_unix_ms()),
        };
        let debouncer = Debouncer::new(
            self.settings,
            debounce::healthy_class(classes),
            spec.sample_rate_hz,
            spec.zones,
            state,
        );
        let start = debouncer.snapshot();
        // A stream without a machine id has a condition of its own but is no machine of the fleet.
        let handle = (!spec.machine_id.is_empty()).then(|| {
            self.registry.attach(
                &spec.machine_id,
                &spec.sensor_id,
                classes.clone(),
                start.clone(),
            )
        });
        let tracker = Tracker {
            debouncer,
            registry: self.registry.clone(),
            handle,
        };
        Ok((track::track(events, tracker), start))
    }
}
