//! The replay command: streams recordings to a server as a sensor gateway would (one stream per recording copy,
//! with drsn-client's resuming stream), prints each window's diagnosis and a summary; with `--streams N` and no
//! pacing it is also a load generator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use drsn_client::proto::{Condition, SensorCondition, VibrationZone, WindowResult, WindowStatus};
use drsn_client::samples::{Wire, WireChoice};

use crate::client::connect::ConnectArgs;
use crate::client::recording::{ReadOptions, read_recording};

pub use crate::client::connect::connect;
// The streaming itself is the client crate's, shared with gateways.
pub use drsn_client::replay::{
    StreamOutcome, StreamPlan, outcome, percentile, stream_resuming, stream_samples,
};

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
    /// The model to stream to, of those the server serves (default: its default model).
    #[arg(long = "model")]
    pub model: Option<String>,
    /// The model's version (default: the newest the server has).
    #[arg(long)]
    pub model_version: Option<String>,
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
    let targets = args.connect.targets(&args.fallback_addrs)?;
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
            plan.model = args.model.clone().unwrap_or_default();
            plan.model_version = args.model_version.clone().unwrap_or_default();
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
