//! Streaming samples held in memory (a recording, a load): one stream, or one that goes on after ending early as
//! a gateway's should. The engine of `drsn-serve replay` and of its benchmark; the resume rules are [`crate::resume`]'s,
//! as for a live [`crate::sensor`] stream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::connect::{Client, Targets};
use crate::proto::stream_diagnose_request::Message;
use crate::proto::stream_diagnose_response::Event;
use crate::proto::{
    ConditionCarry, Discontinuity, InvalidReason, ResultDetail, SampleChunk, SensorCondition,
    StreamDiagnoseRequest, StreamOpen, StreamOpened, WindowResult, WindowStatus,
};
use crate::resume::{self, Backoff, Named};
use crate::samples::Wire;

/// How to stream one recording.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub machine_id: String,
    pub sensor_id: String,
    pub sample_rate_hz: f64,
    /// 0: the model's default hop.
    pub hop: u32,
    pub chunk_frames: usize,
    /// Send at the recording's sample rate instead of as fast as the server takes it.
    pub realtime: bool,
    pub detail: ResultDetail,
    /// Frames to send; past the recording's end it is replayed again with continuing indices.
    pub frames: u64,
    /// Client sample index to start from (a stream resumed after UNAVAILABLE).
    pub start: u64,
    /// Wait this long before the first chunk (real-time sensors whose phases are spread).
    pub start_delay: Duration,
    /// Stop sending at this instant (load generation).
    pub until: Option<Instant>,
    /// Keep every `WindowResult` in the outcome (off for long load runs).
    pub keep_windows: bool,
    /// The condition state to go on from (a resumed stream).
    pub resume_condition: Option<ConditionCarry>,
    /// How the samples go on the wire.
    pub wire: Wire,
    /// The model and version to stream to; empty: the server's default model, its newest version.
    pub model: String,
    pub model_version: String,
}

impl StreamPlan {
    pub fn new(sample_rate_hz: f64, frames: u64) -> Self {
        Self {
            machine_id: "replay".into(),
            sensor_id: "0".into(),
            sample_rate_hz,
            hop: 0,
            chunk_frames: 1024,
            realtime: false,
            detail: ResultDetail::Compact,
            frames,
            start: 0,
            start_delay: Duration::ZERO,
            until: None,
            keep_windows: true,
            resume_condition: None,
            wire: Wire::F32,
            model: String::new(),
            model_version: String::new(),
        }
    }
}

/// What one stream got back.
#[derive(Debug, Default)]
pub struct StreamOutcome {
    pub opened: Option<StreamOpened>,
    pub windows: Vec<WindowResult>,
    pub window_count: u64,
    pub class_counts: BTreeMap<String, u64>,
    /// Windows out of distribution (counted among the uncertain in `class_counts` too).
    pub out_of_distribution: u64,
    pub discontinuities: Vec<Discontinuity>,
    /// Client-side latency per window: from sending the chunk that completed it to receiving its result.
    pub latencies_us: Vec<u64>,
    /// How the stream ended: `Ok` when the server closed it normally.
    pub status: Option<Status>,
    /// How many times the stream was resumed on a new stream after UNAVAILABLE.
    pub resumed: u64,
    /// The sensor's condition changes, in order.
    pub conditions: Vec<SensorCondition>,
    /// Its condition now: the last change, or the one the stream opened in.
    pub condition: Option<SensorCondition>,
    /// The latest condition state the server gave (a change's carry, or the ending status's trailer).
    pub carry: Option<ConditionCarry>,
    /// The first sample index of the last window delivered: a stream broken without a resume point goes on after it.
    pub last_window_start: Option<u64>,
}

/// What a window's result amounts to, for counting: its class, or why it has none.
pub fn outcome(w: &WindowResult) -> String {
    match WindowStatus::try_from(w.status) {
        Ok(WindowStatus::Ok) => w.label.clone(),
        Ok(WindowStatus::Uncertain) => format!("{} (uncertain)", w.label),
        Ok(WindowStatus::Shed) => "(shed: server overloaded)".into(),
        Ok(WindowStatus::InvalidSignal) => {
            let reason = InvalidReason::try_from(w.invalid_reason)
                .map(|r| {
                    r.as_str_name()
                        .trim_start_matches("INVALID_REASON_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| "unknown".into());
            format!("(invalid signal: {reason})")
        }
        _ => "(no status)".into(),
    }
}

/// Streams `samples` (mono) by `plan`; calls `on_window` for each result as it arrives.
pub async fn stream_samples(
    client: Client,
    samples: Arc<Vec<f32>>,
    plan: StreamPlan,
    on_window: impl Fn(&WindowResult) + Send,
) -> Result<StreamOutcome, Status> {
    if samples.is_empty() {
        return Err(Status::invalid_argument(
            "nothing to replay: the recording is empty",
        ));
    }
    let (tx, rx) = mpsc::channel(8);
    let open = StreamOpen {
        machine_id: plan.machine_id.clone(),
        sensor_id: plan.sensor_id.clone(),
        sample_rate_hz: plan.sample_rate_hz,
        channels: 1,
        hop: plan.hop,
        detail: plan.detail as i32,
        resume_condition: plan.resume_condition.clone(),
        model: plan.model.clone(),
        model_version: plan.model_version.clone(),
        ..Default::default()
    };
    tx.send(StreamDiagnoseRequest {
        message: Some(Message::Open(open)),
    })
    .await
    .map_err(|_| Status::internal("request channel closed"))?;
    // Send time of each chunk, by chunk number, to time each window from its last sample.
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let sender = tokio::spawn(send_chunks(tx, samples, plan.clone(), sent.clone()));
    let mut client = client;
    let mut inbound = client
        .stream_diagnose(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = StreamOutcome::default();
    loop {
        match inbound.message().await {
            Ok(Some(resp)) => match resp.event {
                Some(Event::Opened(o)) => {
                    out.condition = o.condition.clone();
                    out.opened = Some(o);
                }
                Some(Event::Condition(c)) => {
                    out.carry = c.carry.clone().or(out.carry.take());
                    out.condition = Some(c.clone());
                    out.conditions.push(c);
                }
                Some(Event::Discontinuity(d)) => out.discontinuities.push(d),
                Some(Event::Window(w)) => {
                    let chunk = (w.last_sample_index.saturating_sub(plan.start)
                        / plan.chunk_frames as u64) as usize;
                    let sent_at = sent.lock().ok().and_then(|s| s.get(chunk).copied());
                    if let Some(t) = sent_at {
                        out.latencies_us.push(t.elapsed().as_micros() as u64);
                    }
                    on_window(&w);
                    out.last_window_start = Some(w.first_sample_index);
                    out.window_count += 1;
                    *out.class_counts.entry(outcome(&w)).or_default() += 1;
                    out.out_of_distribution += u64::from(w.out_of_distribution);
                    if plan.keep_windows {
                        out.windows.push(w);
                    }
                }
                None => {}
            },
            Ok(None) => break,
            Err(status) => {
                if let Some(carry) = resume::carry(&status) {
                    out.carry = Some(carry);
                }
                out.status = Some(status);
                break;
            }
        }
    }
    sender.abort();
    Ok(out)
}

async fn send_chunks(
    tx: mpsc::Sender<StreamDiagnoseRequest>,
    samples: Arc<Vec<f32>>,
    plan: StreamPlan,
    sent: Arc<Mutex<Vec<Instant>>>,
) {
    tokio::time::sleep(plan.start_delay).await;
    let start = Instant::now();
    let mut at: u64 = plan.start;
    while at < plan.frames {
        if plan.until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let end = (at + plan.chunk_frames as u64).min(plan.frames);
        let encoded = plan.wire.encode(&samples, at, end);
        if plan.realtime {
            let due =
                start + Duration::from_secs_f64((end - plan.start) as f64 / plan.sample_rate_hz);
            tokio::time::sleep_until(due.into()).await;
        }
        let chunk = SampleChunk {
            first_sample_index: at,
            samples: Some(encoded),
        };
        if let Ok(mut s) = sent.lock() {
            s.push(Instant::now());
        }
        if tx
            .send(StreamDiagnoseRequest {
                message: Some(Message::Chunk(chunk)),
            })
            .await
            .is_err()
        {
            return;
        }
        at = end;
    }
}

/// Where to go on after `status`: the point the server named; after a broken connection or a failed replica
/// (UNAVAILABLE, INTERNAL or UNKNOWN without one), the window after the last one delivered, so that the windows
/// the replica never answered are computed again elsewhere; `None` for an ending that resending cannot fix.
fn next_start(status: &Status, plan: &StreamPlan, out: &StreamOutcome) -> Option<u64> {
    match resume::named(status) {
        Some(Named::At(n)) => return Some(n),
        Some(Named::Start) => return Some(plan.start),
        None => {}
    }
    if !resume::retire(status.code()) {
        return None;
    }
    let after_last = out
        .opened
        .as_ref()
        .zip(out.last_window_start)
        .map(|(o, first)| {
            first + resume::client_hop(o.hop, o.model_sample_rate_hz, plan.sample_rate_hz)
        });
    Some(after_last.unwrap_or(plan.start).max(plan.start))
}

/// Streams like [`stream_samples`], and goes on when the stream ends early as a gateway should: when the server
/// ends it with a resume point (a drain, a connection at its maximum age), when the connection breaks or a replica
/// dies (from the window after the last one delivered), and when a replica cannot be reached. Each attempt takes the
/// next of `targets` (round-robin: a new connection, which may reach another replica) after a jittered backoff. At
/// most `retries` attempts after the first.
pub async fn stream_resuming(
    targets: &Targets,
    samples: Arc<Vec<f32>>,
    mut plan: StreamPlan,
    retries: usize,
    on_window: impl Fn(&WindowResult) + Send + Sync,
) -> Result<StreamOutcome, Status> {
    let mut total = StreamOutcome::default();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(backoff.next_delay()).await;
        }
        let target = targets.next().await;
        let client = match targets.connect(&target).await {
            Ok(client) => client,
            Err(e) if attempt < retries => {
                tracing::warn!(addr = %target.addr, error = %e, "cannot reach the server; trying the next");
                continue;
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        let out = stream_samples(client, samples.clone(), plan.clone(), &on_window).await?;
        if out
            .status
            .as_ref()
            .is_some_and(|s| resume::retire(s.code()))
        {
            targets.retire(&target);
        }
        if out.window_count > 0 {
            backoff.reset();
        }
        let next = out.status.as_ref().and_then(|s| next_start(s, &plan, &out));
        total.opened = total.opened.or(out.opened);
        total.windows.extend(out.windows);
        total.window_count += out.window_count;
        for (k, v) in out.class_counts {
            *total.class_counts.entry(k).or_default() += v;
        }
        total.out_of_distribution += out.out_of_distribution;
        total.discontinuities.extend(out.discontinuities);
        total.latencies_us.extend(out.latencies_us);
        total.resumed += out.resumed;
        total.conditions.extend(out.conditions);
        total.condition = out.condition.or(total.condition.take());
        total.carry = out.carry.or(total.carry.take());
        total.last_window_start = out.last_window_start.or(total.last_window_start);
        match next {
            Some(from) if attempt < retries && from < plan.frames => {
                tracing::warn!(
                    from,
                    "the stream ended early; resuming on the next connection"
                );
                plan.start = from;
                // The sensor's condition goes on where the last stream left it: no new alarm, none cleared.
                plan.resume_condition = total.carry.clone();
                total.resumed += 1;
            }
            _ => {
                total.status = out.status;
                return Ok(total);
            }
        }
    }
    Ok(total)
}

/// Percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
