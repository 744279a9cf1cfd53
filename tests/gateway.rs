//! Exactly once, as a gateway using the Rust client's live sensor stream sees it, with real server processes: a
//! replica drained (SIGTERM) or killed (SIGKILL) mid-stream, connections rotated by `--max-connection-age`, the
//! server restarted on the same address. For each, every window index arrives once, in order, with the result of
//! an uninterrupted run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ServerProcess;
use drsn_client::sensor::{self, Stats};
use drsn_client::{Event, Options, Sensor, Targets};

const RATE_HZ: f64 = 12_000.0;
const CHUNK: usize = 4096;
/// A chunk every 20 ms: about 1.5 s of streaming, so that each interruption lands mid-stream.
const PACE: Duration = Duration::from_millis(20);
/// Windows delivered before the interruption.
const INTERRUPT_AT: usize = 15;
/// Windows in the test stream.
const WINDOWS: usize = 72;

/// What the gateway compares: window index, first sample, class, status, confidence, model version.
type Seen = (u64, u64, String, i32, f32, String);

/// Runs on its own thread once [`INTERRUPT_AT`] windows have arrived; may hand back a server to keep running.
type Interrupt = Box<dyn FnOnce() -> Option<ServerProcess> + Send>;

/// The recordings one after another (again from the first if need be), cut to [`WINDOWS`] windows: classes change
/// along the way.
fn recording() -> Arc<Vec<f32>> {
    let all: Vec<f32> = common::recordings()
        .into_iter()
        .flat_map(|(_, s)| s.to_vec())
        .collect();
    let n = common::window() + (WINDOWS - 1) * common::hop();
    Arc::new(all.iter().copied().cycle().take(n).collect())
}

fn replica(extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--workers", "1"];
    args.extend_from_slice(extra);
    ServerProcess::spawn(&args)
}

/// Streams `samples` paced, as a sensor would, through the live API; calls `interrupt` mid-stream.
async fn stream(
    addrs: &[&str],
    samples: Arc<Vec<f32>>,
    interrupt: Option<Interrupt>,
) -> (Vec<Seen>, Stats) {
    let options = Options {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        ..Options::default()
    };
    let targets = Targets::plain(addrs.iter().copied()).unwrap();
    let (tx, mut results) = sensor::open(
        targets,
        Sensor::new("pump-7", "drive-end", RATE_HZ),
        options,
    )
    .unwrap();
    let feeder = tokio::spawn(async move {
        for block in samples.chunks(CHUNK) {
            tx.send(block).await.unwrap();
            tokio::time::sleep(PACE).await;
        }
        tx.finish();
    });
    let mut interrupt = interrupt;
    let mut interrupted = None;
    let mut seen = Vec::new();
    while let Some(event) = results.next().await {
        if let Event::Window { index, result } = event.unwrap() {
            seen.push((
                index,
                result.first_sample_index,
                result.label,
                result.status,
                result.confidence.unwrap_or(f32::NAN),
                result.model_version,
            ));
            if seen.len() == INTERRUPT_AT
                && let Some(f) = interrupt.take()
            {
                interrupted = Some(std::thread::spawn(f));
            }
        }
    }
    feeder.await.unwrap();
    // A panic in the interruption (a replica that did not drain cleanly) fails the test.
    if let Some(thread) = interrupted {
        drop(thread.join().unwrap());
    }
    (seen, results.stats())
}

/// Every window once, in order, with the class, status and (to float precision: batches may differ) confidence of
/// an uninterrupted run.
fn assert_same(got: &[Seen], want: &[Seen]) {
    assert_eq!(want.len(), WINDOWS);
    let key = |s: &[Seen]| -> Vec<(u64, u64, String, i32, String)> {
        s.iter()
            .map(|w| (w.0, w.1, w.2.clone(), w.3, w.5.clone()))
            .collect()
    };
    assert_eq!(key(got), key(want));
    let indices: Vec<u64> = got.iter().map(|w| w.0).collect();
    assert_eq!(indices, (0..WINDOWS as u64).collect::<Vec<_>>());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g.4 - w.4).abs() <= 1e-4,
            "window {}: {} vs {}",
            g.0,
            g.4,
            w.4
        );
    }
}

async fn reference(samples: &Arc<Vec<f32>>) -> Vec<Seen> {
    let lone = replica(&[]);
    let (seen, stats) = stream(&[&lone.addr], samples.clone(), None).await;
    assert_eq!(stats.resumes, 0, "{stats:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_drained_mid_stream_hands_over_to_the_other() {
    let samples = recording();
    let want = reference(&samples).await;
    let (mut a, b) = (replica(&[]), replica(&[]));
    let addrs = [a.addr.clone(), b.addr.clone()];
    let drain: Interrupt = Box::new(move || {
        let status = a.terminate();
        assert!(status.success(), "the drained replica exited with {status}");
        None
    });
    let (got, stats) = stream(&[&addrs[0], &addrs[1]], samples, Some(drain)).await;
    assert_same(&got, &want);
    assert!(stats.resumes >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_its_unanswered_windows_are_recomputed_elsewhere() {
    let samples = recording();
    let want = reference(&samples).await;
    let (a, b) = (replica(&[]), replica(&[]));
    let addrs = [a.addr.clone(), b.addr.clone()];
    // Dropping the process kills it: no drain, no status, no resume point.
    let kill: Interrupt = Box::new(move || {
        drop(a);
        None
    });
    let (got, stats) = stream(&[&addrs[0], &addrs[1]], samples, Some(kill)).await;
    assert_same(&got, &want);
    assert!(stats.resumes >= 1 && stats.samples_resent > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_rotated_by_age_lose_and_repeat_nothing() {
    let samples = recording();
    let want = reference(&samples).await;
    let a = replica(&["--max-connection-age", "400ms"]);
    let (got, stats) = stream(&[&a.addr], samples, None).await;
    assert_same(&got, &want);
    assert!(stats.resumes >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_restarted_on_the_same_address_is_found_again() {
    let samples = recording();
    let want = reference(&samples).await;
    let mut a = replica(&[]);
    let addr = a.addr.clone();
    let listen = addr.trim_start_matches("http://").to_owned();
    let restart: Interrupt = Box::new(move || {
        assert!(a.terminate().success());
        Some(ServerProcess::spawn_at(&listen, &["--workers", "1"]))
    });
    let (got, stats) = stream(&[&addr], samples, Some(restart)).await;
    assert_same(&got, &want);
    assert!(stats.resumes >= 1, "{stats:?}");
}

/// Runs a Rust gateway example (built beside the binary by `cargo test`/`make test`); its stdout lines.
fn example(name: &str, args: &[&str]) -> Vec<String> {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_drsn-serve"))
        .with_file_name("examples")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing: `cargo build --release --workspace --examples` (make test builds it)",
        bin.display()
    );
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn labels(lines: &[String], prefix: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit_once(": ").unwrap().1.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daq_gateway_example_streams_a_csv_and_a_16_bit_wav() {
    let samples = Arc::new(recording()[..60_000].to_vec());
    let server = replica(&[]);
    let direct: Vec<String> = stream(&[&server.addr], samples.clone(), None)
        .await
        .0
        .into_iter()
        .map(|w| w.2)
        .collect();
    assert_eq!(
        direct.len(),
        common::windows_in(60_000, common::window(), common::hop())
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pump.csv");
    let text: String = samples.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&csv, text).unwrap();
    let csv = csv.to_str().unwrap();
    let args = ["--rate", "12000", "--addr", &server.addr, "--speed", "50"];
    let lines = example("daq_gateway", &[&[csv][..], &args].concat());
    assert_eq!(labels(&lines, "window "), direct);
    assert!(lines.last().unwrap().starts_with("done: resumed 0"));

    // A 16-bit WAV goes as converter codes: the same windows, the classes of the signal quantised to 16 bits.
    let full_scale = samples.iter().fold(0f32, |m, v| m.max(v.abs())) * 1.1;
    let wav = dir.path().join("pump.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 12_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&wav, spec).unwrap();
    for v in samples.iter() {
        writer
            .write_sample((v / full_scale * 32767.0).round() as i16)
            .unwrap();
    }
    writer.finalize().unwrap();
    let scale = full_scale.to_string();
    let args = ["--scale", &scale, "--addr", &server.addr, "--speed", "50"];
    let lines = example(
        "daq_gateway",
        &[&[wav.to_str().unwrap()][..], &args].concat(),
    );
    let got = labels(&lines, "window ");
    assert_eq!(got.len(), direct.len());
    let same = got.iter().zip(&direct).filter(|(a, b)| a == b).count();
    assert!(same + 1 >= direct.len(), "{got:?} vs {direct:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_sensor_gateway_example_streams_every_sensor_of_every_machine() {
    let samples = recording();
    let server = replica(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    let mut counts = Vec::new();
    for (n, (ids, len)) in [
        ("pump-7:drive-end", 30_000),
        ("pump-7:fan-end", 40_000),
        ("fan-2:bearing", 50_000),
    ]
    .into_iter()
    .enumerate()
    {
        let csv = dir.path().join(format!("{n}.csv"));
        let part = &samples[n * 20_000..n * 20_000 + len];
        std::fs::write(
            &csv,
            part.iter().map(|v| format!("{v}\n")).collect::<String>(),
        )
        .unwrap();
        args.push(format!("{ids}={}", csv.display()));
        counts.push((
            ids.replace(':', "/"),
            common::windows_in(len, common::window(), common::hop()),
        ));
    }
    args.extend(["--rate", "12000", "--addr", &server.addr, "--speed", "50"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = example("multi_sensor_gateway", &args);
    for (sensor, count) in counts {
        let prefix = format!("{sensor} window ");
        let indices: Vec<usize> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|l| l.split(':').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(indices, (0..count).collect::<Vec<_>>(), "{sensor}");
        assert!(
            lines.contains(&format!("{sensor} done: 0 resume(s)")),
            "{sensor}"
        );
    }
}
