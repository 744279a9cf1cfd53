//! The machines of this replica: each sensor's latest condition, a machine's condition as its worst sensor's (named),
//! a revision that counts every change, and watchers that get a snapshot and then every change, resumable from a
//! revision. Sensors whose data stopped stay UNKNOWN for the retention time, then leave.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::sync::broadcast;

use crate::condition::debounce::{Condition, Snapshot};
use crate::pipeline::severity::Zone;
use crate::telemetry::metrics as m;

/// A sensor as the registry shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorView {
    pub sensor_id: String,
    pub snapshot: Snapshot,
    /// The classes of the model its stream is served by, which `snapshot`'s class indices and shares refer to.
    pub classes: Arc<Vec<String>>,
    /// Its stream is open on this replica; `false`: its data stopped (it is UNKNOWN) at `snapshot.since_unix_ms`.
    pub streaming: bool,
}

/// A machine: its worst sensor's condition, and every sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineView {
    pub machine_id: String,
    pub condition: Condition,
    /// The sensor that sets the condition.
    pub sensor_id: String,
    pub fault_class: Option<String>,
    /// The worst sustained zone of any sensor, and the highest sustained velocity.
    pub zone: Option<Zone>,
    pub velocity_mm_s: Option<f32>,
    pub since_unix_ms: i64,
    pub sensors: Vec<SensorView>,
}

impl MachineView {
    /// The worst sensor (condition, then zone): the one a machine's condition names.
    fn of(machine_id: &str, sensors: &BTreeMap<String, Entry>) -> Option<Self> {
        let worst = worst(sensors)?;
        let (s, classes) = (&worst.1.view.snapshot, &worst.1.view.classes);
        Some(Self {
            machine_id: machine_id.to_owned(),
            condition: s.condition,
            sensor_id: worst.0.clone(),
            fault_class: s.fault_class.and_then(|c| classes.get(c).cloned()),
            zone: sensors
                .values()
                .filter_map(|e| e.view.snapshot.worst_zone)
                .max(),
            velocity_mm_s: sensors
                .values()
                .filter_map(|e| e.view.snapshot.velocity_mm_s)
                .reduce(f32::max),
            since_unix_ms: s.since_unix_ms,
            sensors: sensors.values().map(|e| e.view.clone()).collect(),
        })
    }
}

/// What a watcher is told about: condition, the sensor naming it, class and zone (not every share's drift). Cheap:
/// taken on every window, while the whole view is built only when it changes.
type Headline = (Condition, String, Option<usize>, Option<Zone>);

fn headline(sensors: &BTreeMap<String, Entry>) -> Option<Headline> {
    let worst = worst(sensors)?;
    let s = &worst.1.view.snapshot;
    let zone = sensors
        .values()
        .filter_map(|e| e.view.snapshot.worst_zone)
        .max();
    Some((s.condition, worst.0.clone(), s.fault_class, zone))
}

/// The sensor that sets a machine's condition: the worst condition, then the worst zone (ties: the first id).
fn worst(sensors: &BTreeMap<String, Entry>) -> Option<(&String, &Entry)> {
    let rank = |e: &Entry| (e.view.snapshot.condition, e.view.snapshot.worst_zone);
    // The map iterates in id order, so keeping the first of equals is the tie rule, with no id compared (this runs
    // twice for every window a machine's sensors deliver).
    sensors.iter().fold(None, |best, (id, e)| match best {
        Some((_, b)) if rank(e) <= rank(b) => best,
        _ => Some((id, e)),
    })
}

/// One change, numbered.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub revision: u64,
    pub change: MachineChange,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MachineChange {
    Changed(MachineView),
    /// The machine has no sensor on this replica any more.
    Removed(String),
}

/// How a watch starts.
pub enum WatchStart {
    /// Every machine now, as of `revision`.
    Snapshot {
        revision: u64,
        machines: Vec<MachineView>,
    },
    /// The changes after the revision the watcher asked for.
    Changes(Vec<Arc<Revision>>),
}

/// A stream's place in the registry.
#[derive(Debug)]
pub struct SensorHandle {
    machine_id: String,
    sensor_id: String,
    stream: u64,
}

/// How a sensor's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The server sent it to resume elsewhere (drain, connection age): its condition travels with it.
    Moved,
    /// The client stopped, went away or failed: the data stopped, the sensor is UNKNOWN until retention ends.
    Stopped,
}

struct Entry {
    view: SensorView,
    /// Which stream owns the sensor: a resumed stream may open before the old one has ended.
    stream: u64,
    stopped_at: Option<tokio::time::Instant>,
}

#[derive(Default)]
struct Inner {
    machines: BTreeMap<String, BTreeMap<String, Entry>>,
    revision: u64,
    recent: VecDeque<Arc<Revision>>,
    /// Sensor views held by `recent`.
    recent_sensors: usize,
    next_stream: u64,
    counts: [i64; 4],
    /// Sensors whose data stopped, oldest first: (when, machine, sensor, stream).
    stopped: VecDeque<(tokio::time::Instant, String, String, u64)>,
}

/// Changes kept for watchers resuming from a revision, and the sensors their views may hold in all (a machine id
/// shared by many sensors makes each change large); older changes get a snapshot instead.
const RECENT: usize = 4096;
const RECENT_SENSORS: usize = 16_384;

fn weight(r: &Revision) -> usize {
    match &r.change {
        MachineChange::Changed(v) => v.sensors.len().max(1),
        MachineChange::Removed(_) => 1,
    }
}

pub struct Registry {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Revision>>,
    retention: Duration,
    /// Most stopped sensors kept: a client opening and dropping streams under new ids cannot grow the registry
    /// past this within the retention time (the oldest leave first).
    max_stopped: usize,
}

impl Registry {
    pub fn new(retention: Duration, max_stopped: usize) -> Self {
        Self {
            // Revisions start at this process's start time (ms x 1000), so that a watcher resuming from a revision
            // of an earlier process of this replica gets a snapshot, never the changes after a number that meant
            // something else.
            inner: Mutex::new(Inner {
                revision: crate::condition::track::now_unix_ms().max(0) as u64 * 1000,
                ..Inner::default()
            }),
            tx: broadcast::channel(1024).0,
            retention,
            max_stopped,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream takes over (machine, sensor) with its first condition, in the classes of its model.
    pub fn attach(
        &self,
        machine_id: &str,
        sensor_id: &str,
        classes: Arc<Vec<String>>,
        snapshot: Snapshot,
    ) -> SensorHandle {
        let mut inner = self.lock();
        inner.next_stream += 1;
        let stream = inner.next_stream;
        let entry = Entry {
            view: SensorView {
                sensor_id: sensor_id.to_owned(),
                snapshot,
                classes,
                streaming: true,
            },
            stream,
            stopped_at: None,
        };
        self.apply(&mut inner, machine_id, |sensors| {
            sensors.insert(sensor_id.to_owned(), entry);
        });
        SensorHandle {
            machine_id: machine_id.to_owned(),
            sensor_id: sensor_id.to_owned(),
            stream,
        }
    }

    /// The sensor's latest condition (every window: the shares and velocity the metrics show move).
    pub fn update(&self, handle: &SensorHandle, snapshot: Snapshot) {
        let mut inner = self.lock();
        self.expire(&mut inner);
        self.apply(&mut inner, &handle.machine_id, |sensors| {
            if let Some(e) = sensors
                .get_mut(&handle.sensor_id)
                .filter(|e| e.stream == handle.stream)
            {
                e.view.snapshot = snapshot;
            }
        });
    }

    /// The sensor's stream ended.
    pub fn detach(&self, handle: &SensorHandle, how: Departure, now_unix_ms: i64) {
        let mut inner = self.lock();
        let mut marked = false;
        self.apply(&mut inner, &handle.machine_id, |sensors| {
            let Some(e) = sensors
                .get_mut(&handle.sensor_id)
                .filter(|e| e.stream == handle.stream)
            else {
                return;
            };
            match how {
                Departure::Moved => {
                    sensors.remove(&handle.sensor_id);
                }
                Departure::Stopped => {
                    // What the sensor said is no longer true: no class, share, velocity or zone of a dead stream.
                    let s = &mut e.view.snapshot;
                    s.condition = Condition::Unknown;
                    s.fault_class = None;
                    s.since_unix_ms = now_unix_ms;
                    s.worst_zone = None;
                    s.zone = None;
                    s.velocity_mm_s = None;
                    s.shares.iter_mut().for_each(|x| *x = 0.0);
                    e.view.streaming = false;
                    e.stopped_at = Some(tokio::time::Instant::now());
                    marked = true;
                }
            }
        });
        if marked {
            let at = tokio::time::Instant::now();
            let (m, s) = (handle.machine_id.clone(), handle.sensor_id.clone());
            inner.stopped.push_back((at, m, s, handle.stream));
            self.expire(&mut inner);
        }
    }

    /// Every machine now, and the revision they are as of.
    pub fn list(&self) -> (u64, Vec<MachineView>) {
        let mut inner = self.lock();
        self.expire(&mut inner);
        (inner.revision, self.views(&inner))
    }

    /// Starts a watch: the changes after `from` when they are all still kept, else a snapshot; then every change
    /// from the receiver (a watcher that falls more than its buffer behind is told to start again).
    pub fn watch(&self, from: Option<u64>) -> (WatchStart, broadcast::Receiver<Arc<Revision>>) {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let rx = self.tx.subscribe();
        let oldest = inner
            .recent
            .front()
            .map_or(inner.revision + 1, |r| r.revision);
        if let Some(from) = from.filter(|f| *f <= inner.revision && *f + 1 >= oldest) {
            let changes = inner
                .recent
                .iter()
                .filter(|r| r.revision > from)
                .cloned()
                .collect();
            return (WatchStart::Changes(changes), rx);
        }
        // Taken under the same lock as the subscription: every change after the snapshot reaches the receiver,
        // and none before it (the watcher skips revisions at or below the snapshot's).
        let machines = self.views(&inner);
        let revision = inner.revision;
        (WatchStart::Snapshot { revision, machines }, rx)
    }

    fn views(&self, inner: &Inner) -> Vec<MachineView> {
        inner
            .machines
            .iter()
            .filter_map(|(id, sensors)| MachineView::of(id, sensors))
            .collect()
    }

    /// Waits until the revision passes `after` or `wait` passes, whichever is first (HTTP long polling).
    pub async fn changed_after(&self, after: u64, wait: Duration) {
        let mut rx = self.tx.subscribe();
        if self.lock().revision > after {
            return;
        }
        let _ = tokio::time::timeout(wait, async {
            loop {
                match rx.recv().await {
                    Ok(r) if r.revision > after => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .await;
    }

    /// Sensors stopped longer ago than the retention leave, and the oldest beyond the most kept.
    fn expire(&self, inner: &mut Inner) {
        let now = tokio::time::Instant::now();
        while let Some((at, ..)) = inner.stopped.front() {
            let over = inner.stopped.len() > self.max_stopped;
            if !over && now.duration_since(*at) < self.retention {
                break;
            }
            let Some((_, machine, sensor, stream)) = inner.stopped.pop_front() else {
                break;
            };
            // Still the stream that stopped (a new stream of the sensor since has taken it over).
            self.apply(inner, &machine, |sensors| {
                if sensors
                    .get(&sensor)
                    .is_some_and(|e| e.stream == stream && e.stopped_at.is_some())
                {
                    sensors.remove(&sensor);
                }
            });
        }
    }

    /// Applies `edit` to a machine's sensors; publishes the machine's change when its headline moved.
    fn apply(
        &self,
        inner: &mut Inner,
        machine_id: &str,
        edit: impl FnOnce(&mut BTreeMap<String, Entry>),
    ) {
        // Looked up before inserting: the id is copied only for a machine not yet known, not on every window.
        if !inner.machines.contains_key(machine_id) {
            inner
                .machines
                .insert(machine_id.to_owned(), BTreeMap::new());
        }
        let Some(sensors) = inner.machines.get_mut(machine_id) else {
            return;
        };
        let before = headline(sensors);
        edit(sensors);
        let after = headline(sensors);
        if before == after {
            if after.is_none() {
                inner.machines.remove(machine_id);
            }
            return;
        }
        let change = match MachineView::of(machine_id, sensors) {
            Some(view) => MachineChange::Changed(view),
            None => {
                inner.machines.remove(machine_id);
                MachineChange::Removed(machine_id.to_owned())
            }
        };
        if let Some(b) = &before {
            inner.counts[index(b.0)] -= 1;
        }
        if let MachineChange::Changed(a) = &change {
            inner.counts[index(a.condition)] += 1;
            if before.as_ref().is_none_or(|b| b.0 != a.condition) {
                counter!(m::CONDITION_CHANGES, "to" => a.condition.label()).increment(1);
            }
        }
        for c in Condition::ALL {
            gauge!(m::MACHINES, "condition" => c.label()).set(inner.counts[index(c)] as f64);
        }
        inner.revision += 1;
        let revision = Arc::new(Revision {
            revision: inner.revision,
            change,
        });
        inner.recent_sensors += weight(&revision);
        inner.recent.push_back(revision.clone());
        while inner.recent.len() > RECENT || inner.recent_sensors > RECENT_SENSORS {
            let Some(old) = inner.recent.pop_front() else {
                break;
            };
            inner.recent_sensors -= weight(&old);
        }
        // No receiver is not an error: nobody watches.
        let _ = self.tx.send(revision);
    }
}

fn index(c: Condition) -> usize {
    match c {
        Condition::Normal => 0,
        Condition::Fault => 1,
        Condition::SensorFault => 2,
        Condition::Unknown => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(condition: Condition, fault_class: Option<usize>, zone: Option<Zone>) -> Snapshot {
        Snapshot {
            condition,
            fault_class,
            shares: vec![0.0; 3],
            evidence_s: 3.0,
            windows: 9,
            since_sample: 0,
            since_unix_ms: 1,
            velocity_mm_s: Some(1.0),
            zone,
            worst_zone: zone,
        }
    }

    fn registry() -> Registry {
        Registry::new(Duration::from_secs(60), 2)
    }

    fn classes() -> Arc<Vec<String>> {
        Arc::new(vec!["normal".into(), "inner".into(), "outer".into()])
    }

    #[tokio::test]
    async fn a_machine_is_its_worst_sensor_named() {
        let r = registry();
        let de = r.attach(
            "pump-1",
            "DE",
            classes(),
            snapshot(Condition::Normal, None, Some(Zone::A)),
        );
        let _fe = r.attach(
            "pump-1",
            "FE",
            classes(),
            snapshot(Condition::Unknown, None, None),
        );
        let (_, machines) = r.list();
        assert_eq!(
            (machines[0].condition, machines[0].sensor_id.as_str()),
            (Condition::Unknown, "FE")
        );
        r.update(&de, snapshot(Condition::Fault, Some(2), Some(Zone::C)));
        let (_, machines) = r.list();
        let m = &machines[0];
        assert_eq!(
            (m.condition, m.sensor_id.as_str()),
            (Condition::Fault, "DE")
        );
        assert_eq!(
            (m.fault_class.as_deref(), m.zone),
            (Some("outer"), Some(Zone::C))
        );
        assert_eq!(m.sensors.len(), 2);
    }

    #[tokio::test]
    async fn sensors_equally_bad_name_the_machine_by_the_first_id() {
        let r = registry();
        let mut handles = Vec::new();
        for id in ["c", "a", "b"] {
            handles.push(r.attach(
                "fan-2",
                id,
                classes(),
                snapshot(Condition::Fault, Some(1), Some(Zone::B)),
            ));
        }
        let (_, machines) = r.list();
        assert_eq!(
            machines[0].sensor_id, "a",
            "attached c, a, b: a comes first"
        );
        // A worse zone outranks the order of ids.
        r.update(
            &handles[0],
            snapshot(Condition::Fault, Some(1), Some(Zone::C)),
        );
        assert_eq!(r.list().1[0].sensor_id, "c");
    }

    #[tokio::test]
    async fn watchers_get_a_snapshot_then_changes_and_resume_from_a_revision() {
        let r = registry();
        let a = r.attach(
            "m1",
            "s",
            classes(),
            snapshot(Condition::Normal, None, None),
        );
        let (start, mut rx) = r.watch(None);
        let WatchStart::Snapshot { revision, machines } = start else {
            panic!("a new watcher starts from a snapshot")
        };
        assert_eq!(machines.len(), 1);
        r.update(&a, snapshot(Condition::Normal, None, None));
        assert!(rx.try_recv().is_err(), "nothing a watcher acts on changed");
        r.update(&a, snapshot(Condition::Fault, Some(1), Some(Zone::B)));
        let got = rx.try_recv().unwrap();
        assert_eq!(got.revision, revision + 1);
        r.detach(&a, Departure::Moved, 5);
        assert_eq!(
            rx.try_recv().unwrap().change,
            MachineChange::Removed("m1".into())
        );
        let (WatchStart::Changes(missed), _) = r.watch(Some(revision)) else {
            panic!("the changes after a kept revision are replayed")
        };
        assert_eq!(
            missed.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [revision + 1, revision + 2]
        );
        assert!(matches!(
            r.watch(Some(revision + 99)).0,
            WatchStart::Snapshot { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_returns_at_the_next_change_or_its_wait() {
        let r = Arc::new(registry());
        let (now, _) = r.list();
        let waited = tokio::time::Instant::now();
        r.changed_after(now, Duration::from_secs(30)).await;
        assert_eq!(
            waited.elapsed(),
            Duration::from_secs(30),
            "nothing changed: the whole wait"
        );
        let poll = tokio::spawn({
            let r = r.clone();
            async move { r.changed_after(now, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = tokio::time::Instant::now();
        let _h = r.attach(
            "m1",
            "s",
            classes(),
            snapshot(Condition::Normal, None, None),
        );
        poll.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered at the change"
        );
        let later = tokio::time::Instant::now();
        r.changed_after(now, Duration::from_secs(30)).await;
        assert_eq!(later.elapsed(), Duration::ZERO, "already past: at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_sensor_is_unknown_until_retention_ends_and_an_old_stream_cannot_clobber_a_new_one()
     {
        let r = registry();
        let old = r.attach(
            "m1",
            "s",
            classes(),
            snapshot(Condition::Fault, Some(1), None),
        );
        let new = r.attach(
            "m1",
            "s",
            classes(),
            snapshot(Condition::Fault, Some(1), None),
        );
        r.detach(&old, Departure::Stopped, 7);
        assert_eq!(
            r.list().1[0].condition,
            Condition::Fault,
            "the resumed stream owns the sensor"
        );
        r.detach(&new, Departure::Stopped, 8);
        let (_, machines) = r.list();
        assert_eq!(machines[0].condition, Condition::Unknown);
        assert!(!machines[0].sensors[0].streaming);
        assert_eq!(machines[0].since_unix_ms, 8);
        assert_eq!(
            machines[0].velocity_mm_s, None,
            "a dead stream's velocity is not shown as today's"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(r.list().1.is_empty());
        // Streams opened and dropped under new ids: only the newest two stopped sensors are kept.
        for i in 0..5 {
            let h = r.attach(
                &format!("churn-{i}"),
                "s",
                classes(),
                snapshot(Condition::Normal, None, None),
            );
            r.detach(&h, Departure::Stopped, 9);
        }
        let kept: Vec<_> = r.list().1.into_iter().map(|m| m.machine_id).collect();
        assert_eq!(kept, ["churn-3", "churn-4"]);
    }
}
