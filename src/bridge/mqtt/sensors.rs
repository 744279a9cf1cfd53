//! One resuming drsn-client stream per sensor the bridge hears from: its messages in order (a redelivered
//! overlap dropped, a gap or a new shape starts a new stream), its results and condition changes published.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use drsn_client::sensor::{self, Adc, Results, SampleSender, Tail, TailSamples};
use drsn_client::{Event, Options, Sensor, Targets};
use metrics::{counter, gauge};

use crate::telemetry::metrics as m;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::payload::{self, Raw, Samples};

/// What every sensor's task shares.
pub(crate) struct Shared {
    pub(crate) targets: Targets,
    pub(crate) mqtt: AsyncClient,
    pub(crate) prefix: String,
    pub(crate) options: Options,
    /// The model and version every stream names (empty: the server's default, its serving version).
    pub(crate) model: (String, String),
    /// A sensor silent this long has its stream finished (its results flushed) and its task ended.
    pub(crate) idle: Duration,
    /// The bridge is closing: each sensor hands its tail to the next bridge.
    pub(crate) closing: AtomicBool,
}

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The sensor's queue is full: its stream is not keeping up (the server is slow or away).
    Backlog,
    /// The bridge already streams its most sensors.
    TooManySensors,
}

impl Refused {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Backlog => "backlog",
            Self::TooManySensors => "sensor_limit",
        }
    }
}

/// The sensors' queues, keyed by machine and sensor.
pub(crate) struct Feeds {
    shared: Arc<Shared>,
    queues: HashMap<(String, String), mpsc::Sender<Raw>>,
    tasks: tokio::task::JoinSet<()>,
    max_sensors: usize,
    queue: usize,
    /// Payload bytes in every sensor's queue together, and their ceiling.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

impl Feeds {
    pub(crate) fn new(
        shared: Arc<Shared>,
        max_sensors: usize,
        queue: usize,
        max_queued: usize,
    ) -> Self {
        Self {
            shared,
            queues: HashMap::new(),
            tasks: tokio::task::JoinSet::new(),
            max_sensors: max_sensors.max(1),
            queue: queue.max(1),
            queued: Arc::default(),
            max_queued,
        }
    }

    /// Hands `raw` to its sensor's stream, starting one for a sensor not heard from (or gone idle).
    pub(crate) fn offer(&mut self, machine: &str, sensor: &str, raw: Raw) -> Result<(), Refused> {
        let key = (machine.to_owned(), sensor.to_owned());
        let bytes = raw.bytes();
        if self.queued.load(Ordering::Relaxed) + bytes > self.max_queued {
            return Err(Refused::Backlog);
        }
        let raw = match self.queues.get(&key) {
            Some(queue) => match queue.try_send(raw) {
                Ok(()) => {
                    self.queued.fetch_add(bytes, Ordering::Relaxed);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Err(Refused::Backlog),
                // The sensor's task ended (idle): a new one takes over.
                Err(mpsc::error::TrySendError::Closed(raw)) => raw,
            },
            None => raw,
        };
        self.queues.retain(|_, q| !q.is_closed());
        while self.tasks.try_join_next().is_some() {}
        if self.queues.len() >= self.max_sensors {
            return Err(Refused::TooManySensors);
        }
        let (tx, rx) = mpsc::channel(self.queue);
        // A new queue has room for its first message.
        let _ = tx.try_send(raw);
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        self.queues.insert(key.clone(), tx);
        gauge!(m::BRIDGE_SENSORS).set(self.queues.len() as f64);
        let queued = self.queued.clone();
        self.tasks
            .spawn(run(self.shared.clone(), key.0, key.1, rx, queued));
        Ok(())
    }

    /// Takes no more messages and waits until every sensor's results are published.
    pub(crate) async fn finish(mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.queues.clear();
        while self.tasks.join_next().await.is_some() {}
        gauge!(m::BRIDGE_SENSORS).set(0.0);
    }
}

/// A sensor's open stream.
struct Current {
    shape: (u64, u16, Option<(u32, u32)>),
    /// The frame index the next message should start at.
    next: u64,
    samples: SampleSender,
    publisher: JoinHandle<(u64, Option<Tail>)>,
    /// The rate, channels and codes' scale and offset of its messages: what its tail is published with.
    rate: f64,
    channels: u16,
    adc: Option<(f32, f32)>,
}

/// Messages that came ahead of one still missing (a QoS 1 retransmission after a reconnect can reorder them) are
/// held this long, or this many, for the missing one before the bridge calls it a gap.
const REORDER_WAIT: Duration = Duration::from_secs(2);
const REORDER_HOLD: usize = 16;
/// How many messages back a redelivery may reach; further back, the sensor is counting again.
const REDELIVERY_HORIZON: u64 = 256;

/// One sensor's task: its messages into streams, until its queue closes or it goes idle.
async fn run(
    shared: Arc<Shared>,
    machine: String,
    sensor: String,
    mut queue: mpsc::Receiver<Raw>,
    queued: Arc<AtomicUsize>,
) {
    let mut task = SensorTask {
        shared,
        machine,
        sensor,
        current: None,
        published: 0,
    };
    let mut early: std::collections::BTreeMap<u64, Raw> = Default::default();
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        let wait = since.map_or(task.shared.idle, |t| {
            (t + REORDER_WAIT).saturating_duration_since(tokio::time::Instant::now())
        });
        let raw = match tokio::time::timeout(wait, queue.recv()).await {
            Ok(Some(raw)) => {
                queued.fetch_sub(raw.bytes(), Ordering::Relaxed);
                Some(raw)
            }
            Ok(None) => break,
            // Waited long enough for the missing message: a gap.
            Err(_) if !early.is_empty() => None,
            Err(_) => break,
        };
        match raw {
            Some(raw) if task.is_ahead(&raw) => {
                since.get_or_insert_with(tokio::time::Instant::now);
                early.insert(raw.first_sample_index, raw);
                if early.len() > REORDER_HOLD
                    && let Some((_, raw)) = early.pop_first()
                {
                    task.step(raw).await;
                }
            }
            Some(raw) => task.step(raw).await,
            None => {
                if let Some((_, raw)) = early.pop_first() {
                    task.step(raw).await;
                }
            }
        }
        // The held messages that now follow on.
        while let Some(entry) = early.first_entry() {
            if task.is_ahead(entry.get()) {
                break;
            }
            task.step(entry.remove()).await;
        }
        if early.is_empty() {
            since = None;
        }
    }
    // Gone idle: what was offered meanwhile is streamed before the end (a message after this starts a new task).
    queue.close();
    while let Ok(raw) = queue.try_recv() {
        queued.fetch_sub(raw.bytes(), Ordering::Relaxed);
        if task.is_ahead(&raw) {
            early.insert(raw.first_sample_index, raw);
        } else {
            task.step(raw).await;
        }
    }
    for (_, raw) in std::mem::take(&mut early) {
        task.step(raw).await;
    }
    if let Some(old) = task.current.take() {
        let (rate, channels, adc) = (old.rate, old.channels, old.adc);
        let (_, tail) = finish(old).await;
        if task.shared.closing.load(Ordering::Relaxed) {
            hand_over(&task, tail, rate, channels, adc).await;
        }
    }
}

/// A sensor's streams, one after another.
struct SensorTask {
    shared: Arc<Shared>,
    machine: String,
    sensor: String,
    current: Option<Current>,
    /// Windows published on earlier streams: `window_index` goes on counting across them.
    published: u64,
}

impl SensorTask {
    /// Starts after samples not yet here, on the same stream.
    fn is_ahead(&self, raw: &Raw) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| raw.shape() == c.shape && raw.first_sample_index > c.next)
    }

    /// Streams one message: a redelivered overlap dropped, a gap or a new shape ending the stream for a new one.
    async fn step(&mut self, mut raw: Raw) {
        let (shared, machine, sensor) = (&self.shared, &self.machine, &self.sensor);
        if let Some(c) = &self.current {
            let (first, end) = (
                raw.first_sample_index,
                raw.first_sample_index + raw.frames(),
            );
            // Far behind what was sent (more than a queue and a reorder hold of such messages): a sensor that
            // counts again from a lower index, not a redelivery.
            let horizon = raw.frames().max(1).saturating_mul(REDELIVERY_HORIZON);
            let recounted = c.next.saturating_sub(first) > horizon;
            let restart = raw.shape() != c.shape || first > c.next || recounted;
            if !restart && end <= c.next {
                // A redelivery (QoS 1 after a reconnect): sent already.
                counter!(m::BRIDGE_MESSAGES, "outcome" => "duplicate").increment(1);
                return;
            }
            if restart {
                let why = if raw.shape() != c.shape {
                    "the rate, channels or encoding changed".to_owned()
                } else if recounted {
                    format!("the sensor counts again from {first} (after {})", c.next)
                } else {
                    format!("samples {}..{first} never arrived", c.next)
                };
                tracing::warn!(%machine, %sensor, "a new stream: {why}");
                counter!(m::BRIDGE_RESTARTS).increment(1);
                let note = format!("a new stream from sample {first}: {why}");
                notify(shared, machine, sensor, &note).await;
                if let Some(old) = self.current.take() {
                    self.published += finish(old).await.0;
                }
            } else if first < c.next {
                raw = raw.skip(c.next - first);
            }
        }
        if self.current.is_none() {
            match open(shared, machine, sensor, &raw, self.published) {
                Ok(c) => self.current = Some(c),
                Err(err) => {
                    notify(shared, machine, sensor, &err.to_string()).await;
                    return;
                }
            }
        }
        let Some(c) = self.current.as_mut() else {
            return;
        };
        c.next = raw.first_sample_index + raw.frames();
        let sent = match &raw.samples {
            Samples::F32(values) => c.samples.send(values).await,
            Samples::I16 { codes, .. } => c.samples.send_codes(codes).await,
        };
        match sent {
            Ok(()) => {}
            // More frames at once than the stream holds: refused by name, the stream goes on after a gap.
            Err(err @ drsn_client::Error::Config(_)) => {
                notify(shared, machine, sensor, &err.to_string()).await
            }
            // The stream ended for a reason resending cannot fix; its publisher said why. The next message opens
            // a new one.
            Err(_) => {
                if let Some(old) = self.current.take() {
                    self.published += finish(old).await.0;
                }
            }
        }
    }
}

fn open(
    shared: &Arc<Shared>,
    machine: &str,
    sensor_id: &str,
    raw: &Raw,
    published: u64,
) -> Result<Current, drsn_client::Error> {
    let mut sensor = Sensor::new(machine, sensor_id, raw.sample_rate_hz);
    sensor.channels = u32::from(raw.channels);
    sensor.first_sample_index = raw.first_sample_index;
    (sensor.model, sensor.model_version) = shared.model.clone();
    if let Samples::I16 { scale, offset, .. } = raw.samples {
        sensor.adc = Some(Adc {
            scale,
            offset,
            bits: 16,
        });
    }
    let (samples, results) = sensor::open(shared.targets.clone(), sensor, shared.options.clone())?;
    tracing::info!(%machine, sensor = %sensor_id, first_sample_index = raw.first_sample_index, "a new stream");
    let publisher = tokio::spawn(publish(
        shared.clone(),
        machine.to_owned(),
        sensor_id.to_owned(),
        results,
        published,
    ));
    Ok(Current {
        shape: raw.shape(),
        next: raw.first_sample_index,
        rate: raw.sample_rate_hz,
        channels: raw.channels,
        adc: match raw.samples {
            Samples::I16 { scale, offset, .. } => Some((scale, offset)),
            Samples::F32(_) => None,
        },
        samples,
        publisher,
    })
}

/// Ends a stream once its samples are answered; the windows it published.
async fn finish(current: Current) -> (u64, Option<Tail>) {
    current.samples.finish();
    current.publisher.await.unwrap_or((0, None))
}

/// Publishes a closing bridge's tail of a sensor (retained, QoS 1): the samples no window covers, from where the
/// next window starts. The next bridge starts the sensor's stream with them, so that the windows across the
/// handover are computed; no tail clears an older one.
async fn hand_over(
    task: &SensorTask,
    tail: Option<Tail>,
    rate: f64,
    channels: u16,
    adc: Option<(f32, f32)>,
) {
    let topic = payload::tail_topic(&task.shared.prefix, &task.machine, &task.sensor);
    let body = match tail {
        None => Vec::new(),
        Some(tail) => payload::encode(&Raw {
            channels,
            first_sample_index: tail.first_sample_index,
            sample_rate_hz: rate,
            samples: match (tail.samples, adc) {
                (TailSamples::I16(codes), Some((scale, offset))) => Samples::I16 {
                    codes,
                    scale,
                    offset,
                },
                (TailSamples::F32(values), _) => Samples::F32(values),
                (TailSamples::I16(_), None) => return,
            },
        }),
    };
    tracing::info!(machine = %task.machine, sensor = %task.sensor, bytes = body.len(), "handing the sensor's tail to the next bridge");
    let _ = task
        .shared
        .mqtt
        .publish(topic, QoS::AtLeastOnce, true, body)
        .await;
}

/// Publishes a stream's results (QoS 1) and condition changes (QoS 1, retained); the windows it published.
async fn publish(
    shared: Arc<Shared>,
    machine: String,
    sensor: String,
    mut results: Results,
    base: u64,
) -> (u64, Option<Tail>) {
    let windows = payload::result_topic(&shared.prefix, &machine, &sensor);
    let conditions = payload::condition_topic(&shared.prefix, &machine, &sensor);
    let mut count = 0;
    while let Some(event) = results.next().await {
        let (topic, retain, body) = match event {
            Ok(Event::Window { index, result }) => {
                count += 1;
                counter!(m::BRIDGE_WINDOWS).increment(1);
                (
                    &windows,
                    false,
                    payload::window_json(&machine, &sensor, base + index, &result),
                )
            }
            Ok(Event::Condition(c)) => {
                counter!(m::BRIDGE_CONDITIONS).increment(1);
                (&conditions, true, payload::condition_json(&c))
            }
            Ok(Event::Gap(_)) => continue,
            Err(err) => {
                tracing::warn!(%machine, %sensor, "stream ended: {err}");
                notify(&shared, &machine, &sensor, &err.to_string()).await;
                break;
            }
        };
        if shared
            .mqtt
            .publish(topic.as_str(), QoS::AtLeastOnce, retain, body.to_string())
            .await
            .is_err()
        {
            break; // the bridge is closing
        }
    }
    let stats = results.stats();
    counter!(m::BRIDGE_RESUMES).increment(stats.resumes);
    (count, results.tail())
}

/// Says on the sensor's error topic why its samples were not (all) diagnosed.
pub(crate) async fn notify(shared: &Shared, machine: &str, sensor: &str, message: &str) {
    let topic = payload::error_topic(&shared.prefix, machine, sensor);
    let body = serde_json::json!({"machine_id": machine, "sensor_id": sensor, "error": message});
    let _ = shared
        .mqtt
        .publish(topic, QoS::AtLeastOnce, false, body.to_string())
        .await;
}
