//! The replay client: streams recordings to a server as a sensor gateway would (one stream per recording copy),
//! prints each window's diagnosis and a summary; with `--streams N` and no pacing it is also a load generator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::grpc::proto::stream_diagnose_request::Message;
use crate::api::grpc::proto::stream_diagnose_response::Event;
use crate::api::grpc::proto::{
    Condition, ConditionCarry, Discontinuity, InvalidReason, ResultDetail, SampleChunk,
    SensorCondition, StreamDiagnoseRequest, StreamOpen, StreamOpened, VibrationZone, WindowResult,
    WindowStatus,
};
use crate::api::grpc::service::{CONDITION_TRAILER, RESUME_TRAILER};
use crate::client::connect::{Client, ConnectArgs};
use crate::client::recording::{ReadOptions, read_recording};
use crate::client::samples::{Wire, WireChoice};

pub use crate::client::connect::connect;

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
    let mut client = client.max_decoding_message_size(64 << 20);
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
                if let Some(carry) = status
                    .metadata()
                    .get_bin(CONDITION_TRAILER)
                    .and_then(|v| v.to_bytes().ok())
                    .and_then(|b| <ConditionCarry as prost::Message>::decode(b).ok())
                {
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

/// Where a stream that ended with UNAVAILABLE (a draining or aged-out server) should go on: `Some(Some(n))` from
/// sample n, `Some(None)` from where it started (the server received none of it); `None` for any other ending.
pub fn resume_point(status: &Status) -> Option<Option<u64>> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    if let Some(at) = status
        .metadata()
        .get(RESUME_TRAILER)
        .and_then(|v| v.to_str().ok())
    {
        return match at {
            "start" => Some(None),
            n => n.parse().ok().map(Some),
        };
    }
    // A server from before the trailer: the message says it.
    let text = status.message();
    let Some(at) = text.find("resume from sample ") else {
        return text.contains("send the stream again").then_some(None);
    };
    let digits = &text[at + "resume from sample ".len()..];
    Some(
        digits
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok(),
    )
}

/// Client samples from one window's start to the next: the model-rate hop at the stream's rate.
fn client_hop(opened: &StreamOpened, sample_rate_hz: f64) -> u64 {
    let ratio = sample_rate_hz / opened.model_sample_rate_hz.max(f64::MIN_POSITIVE);
    ((f64::from(opened.hop) * ratio).round() as u64).max(1)
}

/// Where to go on after `status`: the point the server named; after a broken connection or a failed replica
/// (UNAVAILABLE, INTERNAL or UNKNOWN without one), the window after the last one delivered, so that the windows
/// the replica never answered are computed again elsewhere; `None` for an ending that resending cannot fix.
fn next_start(status: &Status, plan: &StreamPlan, out: &StreamOutcome) -> Option<u64> {
    if let Some(named) = resume_point(status) {
        return Some(named.unwrap_or(plan.start));
    }
    if !matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Internal | tonic::Code::Unknown
    ) {
        return None;
    }
    let after_last = out
        .opened
        .as_ref()
        .zip(out.last_window_start)
        .map(|(o, first)| first + client_hop(o, plan.sample_rate_hz));
    Some(after_last.unwrap_or(plan.start).max(plan.start))
}

/// Jittered exponential backoff before attempt `n` (from 1): a delay drawn from [0, min(5 s, 50 ms x 2^n)].
fn backoff(n: usize) -> Duration {
    let ceiling = Duration::from_millis(50)
        .saturating_mul(1 << n.min(7))
        .min(Duration::from_secs(5));
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    ceiling.mul_f64(f64::from(jitter % 1000) / 1000.0)
}

/// Streams like [`stream_samples`], and goes on when the stream ends early as a gateway should: when the server
/// ends it with a resume point (a drain, a connection at its maximum age), when the connection breaks or a replica
/// dies (from the window after the last one delivered), and when a replica cannot be reached. Each attempt takes the
/// next of `targets` (round-robin: a new connection, which may reach another replica) after a jittered backoff. At
/// most `retries` attempts after the first.
pub async fn stream_resuming(
    targets: &[ConnectArgs],
    samples: Arc<Vec<f32>>,
    mut plan: StreamPlan,
    retries: usize,
    on_window: impl Fn(&WindowResult) + Send + Sync,
) -> Result<StreamOutcome, Status> {
    let mut total = StreamOutcome::default();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let target = &targets[attempt % targets.len().max(1)];
        let client = match crate::client::connect::connect_with(target).await {
            Ok(client) => client,
            Err(e) if attempt < retries => {
                tracing::warn!(addr = %target.addr, error = %format!("{e:#}"), "cannot reach the server; trying the next");
                continue;
            }
            Err(e) => return Err(Status::unavailable(format!("{e:#}"))),
        };
        let out = stream_samples(client, samples.clone(), plan.clone(), &on_window).await?;
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

/// `drsn-serve replay` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Recordings: CWRU .mat (drive-end variable), .csv, .npy or .wav.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Other replicas to resume on when a stream ends early (a drain or connection age with a resume point, a
    /// broken connection, a replica that died or cannot be reached); repeatable. Without it, the stream resumes on
    /// a new connection to --addr.
    #[arg(long = "fallback-addr")]
    pub fallback_addrs: Vec<String>,
    /// How many times one stream may go on after ending early, each after a jittered backoff (0: never).
    #[arg(long, default_value_t = 3)]
    pub resume: usize,
    /// Sample rate of the recordings (default: the .wav header, else 12000).
    #[arg(long)]
    pub sample_rate: Option<f64>,
    /// Window hop in model-rate samples (default: the model's).
    #[arg(long, default_value_t = 0)]
    pub hop: u32,
    /// Frames per chunk.
    #[arg(long, default_value_t = 1024)]
    pub chunk: usize,
    /// Send at real-time speed (the recording's sample rate); default: as fast as the server takes it.
    #[arg(long)]
    pub realtime: bool,
    /// Concurrent copies of each recording (a load generator when large).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Machine id of every stream (default: each recording's file stem, so each is a machine of its own).
    #[arg(long)]
    pub machine_id: Option<String>,
    /// Sensor id of every stream (default: the recording's file name, with #copy for --streams copies).
    #[arg(long)]
    pub sensor_id: Option<String>,
    /// .mat variable to read (default: the one ending in _DE_time).
    #[arg(long)]
    pub variable: Option<String>,
    /// .csv/.npy column or .wav channel (default 0).
    #[arg(long)]
    pub column: Option<usize>,
    /// How samples go on the wire: auto sends integer WAV files as their own codes (i16le up to 16 bits, i32le
    /// above: half the bytes, clipping known exactly) and other recordings as f32le; i16/i32 quantise a float
    /// recording with 6 dB of headroom.
    #[arg(long, value_enum, default_value_t = WireChoice::Auto)]
    pub wire: WireChoice,
}

/// Percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn window_line(sensor: &str, w: &WindowResult, json: bool) -> String {
    let status = WindowStatus::try_from(w.status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("WINDOW_STATUS_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    if json {
        serde_json::json!({
            "stream": sensor, "window": w.window_index, "first_sample": w.first_sample_index,
            "last_sample": w.last_sample_index, "status": status, "label": w.label, "confidence": w.confidence,
            "noise_score": w.noise_score, "ood_score": w.ood_score,
            "out_of_distribution": w.out_of_distribution, "detail": w.status_detail,
            "velocity_rms_mm_s": w.velocity_rms_mm_s, "zone": zone_name(w.zone),
            "queue_us": w.queue_us, "inference_us": w.inference_us, "total_us": w.total_us,
        })
        .to_string()
    } else if let Some(confidence) = w.confidence {
        format!(
            "{sensor} window {:>5} samples {:>8}..{:<8} {:<15} {:>6.2}%  noise {:.3}  {:>6} us{}",
            w.window_index,
            w.first_sample_index,
            w.last_sample_index,
            w.label,
            100.0 * confidence,
            w.noise_score.unwrap_or(f32::NAN),
            w.total_us,
            if w.out_of_distribution {
                "  (uncertain: out of distribution)"
            } else if status == "uncertain" {
                "  (uncertain)"
            } else {
                ""
            }
        )
    } else {
        format!(
            "{sensor} window {:>5} samples {:>8}..{:<8} {}: {}",
            w.window_index,
            w.first_sample_index,
            w.last_sample_index,
            outcome(w),
            w.status_detail
        )
    }
}

/// Runs `drsn-serve replay`; returns the process exit code.
pub async fn run(args: ReplayArgs) -> anyhow::Result<i32> {
    let opts = ReadOptions {
        variable: args.variable.clone(),
        column: args.column,
    };
    let mut recordings = Vec::new();
    for path in &args.files {
        recordings.push(read_recording(path, &opts)?);
    }
    // Fail early, with the reason, when the first server cannot be reached.
    crate::client::connect::connect_with(&args.connect).await?;
    let mut targets = vec![args.connect.clone()];
    for addr in &args.fallback_addrs {
        let mut other = args.connect.clone();
        other.addr = addr.clone();
        targets.push(other);
    }
    let targets = Arc::new(targets);
    let total_frames: u64 = recordings
        .iter()
        .map(|r| r.samples.len() as u64)
        .sum::<u64>()
        * args.streams as u64;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {pos} windows ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    // Long replays get a progress bar instead of a scroll of lines.
    let bar = !(args.quiet || args.json) && total_frames > 10 * 120_000;
    progress.set_draw_target(if bar {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    let streams = recordings.len() * args.streams;
    for rec in recordings {
        let rate = args.sample_rate.or(rec.sample_rate_hz).unwrap_or(12_000.0);
        let wire = Wire::choose(args.wire, &rec.samples, rec.adc_bits);
        let samples = Arc::new(rec.samples);
        let name = rec
            .path
            .file_name()
            .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());
        let stem = rec
            .path
            .file_stem()
            .map_or_else(|| "replay".into(), |n| n.to_string_lossy().into_owned());
        for copy in 0..args.streams {
            let mut plan = StreamPlan::new(rate, samples.len() as u64);
            let sensor = args.sensor_id.clone().unwrap_or_else(|| name.clone());
            plan.sensor_id = if args.streams > 1 {
                format!("{sensor}#{copy}")
            } else {
                sensor
            };
            plan.machine_id = args.machine_id.clone().unwrap_or_else(|| stem.clone());
            plan.hop = args.hop;
            plan.chunk_frames = args.chunk.max(1);
            plan.realtime = args.realtime;
            plan.keep_windows = false;
            plan.wire = wire;
            let (json, quiet, label) = (args.json, args.quiet || bar, plan.sensor_id.clone());
            let progress = progress.clone();
            let targets = targets.clone();
            let samples = samples.clone();
            let retries = args.resume;
            tasks.push(tokio::spawn(async move {
                stream_resuming(&targets, samples, plan, retries, move |w| {
                    progress.inc(1);
                    if !quiet {
                        println!("{}", window_line(&label, w, json));
                    }
                })
                .await
            }));
        }
    }
    let mut windows = 0u64;
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut out_of_distribution = 0u64;
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut resumed = 0;
    let mut sensors = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(out) => {
                sensors.push(sensor_summary(&out));
                windows += out.window_count;
                resumed += out.resumed;
                for (k, v) in out.class_counts {
                    *classes.entry(k).or_default() += v;
                }
                out_of_distribution += out.out_of_distribution;
                latencies.extend(out.latencies_us);
                if let Some(status) = out.status {
                    failures += 1;
                    eprintln!(
                        "stream ended with {:?}: {}",
                        status.code(),
                        status.message()
                    );
                }
            }
            Err(status) => {
                failures += 1;
                eprintln!("stream failed: {:?}: {}", status.code(), status.message());
            }
        }
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ms = |p| percentile(&latencies, p) as f64 / 1e3;
    let (p50, p90, p99, max) = (ms(50.0), ms(90.0), ms(99.0), ms(100.0));
    let rate = windows as f64 / elapsed.max(1e-9);
    let summary = serde_json::json!({
        "summary": {
            "streams": streams,
            "windows": windows,
            "classes": classes,
            "out_of_distribution": out_of_distribution,
            "latency_ms": { "p50": p50, "p90": p90, "p99": p99, "max": max },
            "seconds": elapsed,
            "windows_per_s": rate,
            "failed_streams": failures,
            "resumed": resumed,
            "conditions": sensors,
        }
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "\n{} windows from {} stream(s) in {:.2} s ({:.0} windows/s); failed streams: {}; resumed: {}",
            windows, streams, elapsed, rate, failures, resumed
        );
        for (class, n) in &classes {
            println!(
                "  {class:<15} {n:>7}  ({:.1}%)",
                100.0 * *n as f64 / windows.max(1) as f64
            );
        }
        // Only a model with an OOD score has any: the line would be noise for one without.
        if out_of_distribution > 0 {
            println!(
                "  of the uncertain, out of distribution: {out_of_distribution} ({:.1}%)",
                100.0 * out_of_distribution as f64 / windows.max(1) as f64
            );
        }
        println!("  latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  max {max:.2}");
        println!("conditions:");
        for s in &sensors {
            println!(
                "  {}",
                s["machine_id"].as_str().unwrap_or("?").to_owned()
                    + " / "
                    + s["sensor_id"].as_str().unwrap_or("?")
            );
            if let Some(changes) = s["changes"].as_array() {
                for c in changes {
                    println!(
                        "    from sample {:>9}: {}",
                        c["since_sample"],
                        c["text"].as_str().unwrap_or("")
                    );
                }
            }
            println!(
                "    now: {}",
                s["final"]["text"].as_str().unwrap_or("(no condition)")
            );
        }
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

fn condition_name(value: i32) -> String {
    Condition::try_from(value)
        .map(|c| c.as_str_name().trim_start_matches("CONDITION_").to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn zone_name(value: i32) -> &'static str {
    match VibrationZone::try_from(value) {
        Ok(VibrationZone::A) => "A",
        Ok(VibrationZone::B) => "B",
        Ok(VibrationZone::C) => "C",
        Ok(VibrationZone::D) => "D",
        _ => "",
    }
}

fn condition_json(c: &SensorCondition) -> serde_json::Value {
    let velocity = c.velocity_rms_mm_s.map_or(String::new(), |v| {
        format!(", {v:.2} mm/s zone {}", zone_name(c.worst_zone))
    });
    serde_json::json!({
        "condition": condition_name(c.condition),
        "fault_class": c.fault_class,
        "since_sample": c.since_sample,
        "since_unix_ms": c.since_unix_ms,
        "velocity_rms_mm_s": c.velocity_rms_mm_s,
        "worst_zone": zone_name(c.worst_zone),
        "summary": c.summary,
        "text": format!("{}: {}{velocity}", condition_name(c.condition), c.summary),
    })
}

/// A stream's conditions for the summary: every change and the last.
fn sensor_summary(out: &StreamOutcome) -> serde_json::Value {
    let (machine, sensor) = out
        .condition
        .as_ref()
        .map_or((String::new(), String::new()), |c| {
            (c.machine_id.clone(), c.sensor_id.clone())
        });
    serde_json::json!({
        "machine_id": machine,
        "sensor_id": sensor,
        "changes": out.conditions.iter().map(condition_json).collect::<Vec<_>>(),
        "final": out.condition.as_ref().map(condition_json),
    })
}
