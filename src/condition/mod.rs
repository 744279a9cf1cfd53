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

/// The condition stage of a server: its settings and the registry of its machines.
pub struct Conditions {
    registry: Arc<Registry>,
    settings: Settings,
    /// The class meaning healthy (named `normal` or `healthy` in the card).
    normal: Option<usize>,
    classes: usize,
}

impl Conditions {
    /// `max_stopped`: the most sensors kept after their stream ended (UNKNOWN, until `retention` passes).
    pub fn new(
        classes: Arc<Vec<String>>,
        settings: Settings,
        retention: Duration,
        max_stopped: usize,
    ) -> Self {
        let normal = debounce::healthy_class(&classes);
        Self {
            normal,
            classes: classes.len(),
            registry: Arc::new(Registry::new(classes, retention, max_stopped)),
            settings,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Checks a condition state a resumed stream sent back, before its stream is opened.
    pub fn check(&self, state: &State) -> Result<(), ServeError> {
        state
            .check(self.classes)
            .map_err(ServeError::ConditionCarry)
    }

    /// Tracks the condition of a newly opened stream, going on from `carry` when a resumed stream sent one back;
    /// returns the stream with its condition events and the condition it starts in.
    pub fn track(
        &self,
        spec: &StreamSpec,
        carry: Option<State>,
        events: EventStream,
    ) -> Result<(TrackedStream, Snapshot), ServeError> {
        let state = match carry {
            Some(state) => {
                self.check(&state)?;
                state
            }
            None => State::new(self.classes, track::now_unix_ms()),
        };
        let debouncer = Debouncer::new(
            self.settings,
            self.normal,
            spec.sample_rate_hz,
            spec.zones,
            state,
        );
        let start = debouncer.snapshot();
        // A stream without a machine id has a condition of its own but is no machine of the fleet.
        let handle = (!spec.machine_id.is_empty()).then(|| {
            self.registry
                .attach(&spec.machine_id, &spec.sensor_id, start.clone())
        });
        let tracker = Tracker {
            debouncer,
            registry: self.registry.clone(),
            handle,
        };
        Ok((track::track(events, tracker), start))
    }
}
