//! `drsn-serve bench`: raw ONNX Runtime throughput in-process and the service's end-to-end throughput over
//! loopback gRPC, measured one after the other in one run on the same settings, with their ratio; real-time
//! latency at 64 sensors (phases spread and in phase); and the capacity a user plans with ([`capacity`]). With
//! `--fairness`, real-time latency beside floods ([`fairness`]); with `--shadow`, what a shadow candidate costs the
//! serving answers ([`shadow`]). The client runs on its own threads so the
//! server's CPU time per window can be told from the client's ([`cpu`]).

pub(crate) mod capacity;
pub(crate) mod cpu;
pub(crate) mod fairness;
pub mod memory;
pub(crate) mod shadow;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::recording::{ReadOptions, read_recording};
use crate::client::replay::{self, StreamPlan, percentile};
use crate::engine::open::Engine;
use crate::model::card::LoadedModel;
use crate::server;
use crate::server::config::ServeConfig;
use drsn_client::samples::{Wire, WireChoice};

/// The rate of the CWRU recordings every benchmark streams (the server resamples them if its model's differs).
pub const RECORDING_RATE_HZ: f64 = 12_000.0;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub serve: ServeConfig,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Concurrent gRPC streams.
    #[arg(long, default_value_t = 64)]
    pub streams: usize,
    /// Keep the benchmark's client on the last N CPUs and the server (and raw ONNX Runtime) on the others, as if the
    /// client ran on other machines (Linux). Without it, client and server share every CPU.
    #[arg(long)]
    pub client_cpus: Option<usize>,
    /// Samples per chunk the service measurement's streams send (1024 = 85 ms at 12 kHz, as a real-time gateway).
    #[arg(long, default_value_t = 1024)]
    pub chunk: usize,
    /// Measure fairness instead: a real-time sensor's latency alone, beside floods, and after one.
    #[arg(long)]
    pub fairness: bool,
    /// Measure shadow scoring instead: the serving version's real-time latency and saturated throughput without
    /// and with a candidate version shadowing it (the model served from a repository as two versions).
    #[arg(long)]
    pub shadow: bool,
    /// Measure memory instead: the server's RSS per idle stream (plain and resampled) and with this many
    /// real-time streams (the server runs as a child process).
    #[arg(long)]
    pub memory: Option<usize>,
    /// Skip the capacity search (the largest number of real-time sensors within --latency-budget).
    #[arg(long)]
    pub skip_capacity: bool,
    /// Real-time sensors the capacity search starts from.
    #[arg(long, default_value_t = 32)]
    pub capacity_start: usize,
    /// Most real-time sensors the capacity search tries (the bench's server admits this many streams).
    #[arg(long, default_value_t = 16_384)]
    pub capacity_max: usize,
    /// Folder of CWRU .mat recordings to stream (default: the test fixtures in the repository).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models/training/tests/fixtures/cwru_mini/0HP"))]
    pub recordings: PathBuf,
}

/// The measured figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub device: String,
    pub workers: usize,
    pub intra_threads: usize,
    pub max_batch: usize,
    pub raw_windows_per_s: f64,
    pub service_windows_per_s: f64,
    pub ratio: f64,
    /// CPU time per window (us): raw ONNX Runtime, and the service's split into inference workers, the rest of
    /// the server, and the benchmark's client; `None` where per-thread times cannot be read.
    pub raw_cpu_us: Option<f64>,
    pub service_cpu_us: Option<ServiceCpu>,
    /// The same load with the samples sent as 16-bit codes (i16le) instead of f32le.
    pub service_i16_windows_per_s: f64,
    pub service_i16_cpu_us: Option<ServiceCpu>,
    pub saturated_p50_ms: f64,
    pub saturated_p99_ms: f64,
    /// 64 real-time sensors, phases spread and in phase.
    pub realtime_spread: capacity::Trial,
    pub realtime_in_phase: capacity::Trial,
    pub capacity: Vec<capacity::Capacity>,
    /// CPUs the server (and raw ONNX Runtime) ran on.
    pub cores: usize,
    /// CPUs set apart for the benchmark's client (`None`: it shared the server's).
    pub client_cpus: Option<usize>,
    pub window: usize,
    pub hop: usize,
}

/// The service's CPU time per window, by role (us).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ServiceCpu {
    pub inference: f64,
    pub server: f64,
    pub client: f64,
}

impl ServiceCpu {
    fn per_window(spent: cpu::CpuTimes, windows: u64) -> Self {
        let us = |ns: u64| ns as f64 / 1e3 / windows.max(1) as f64;
        Self {
            inference: us(spent.inference),
            server: us(spent.server),
            client: us(spent.client),
        }
    }
}

/// The benchmark's client on a runtime of its own (threads named [`cpu::CLIENT_THREAD`]).
struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl ClientRuntime {
    /// On CPUs of its own when `cpus` is given.
    fn new(cpus: Option<&[usize]>) -> anyhow::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.thread_name(cpu::CLIENT_THREAD).enable_all();
        if let Some(cpus) = cpus {
            let pinned = cpus.to_vec();
            builder
                .worker_threads(cpus.len().max(1))
                .on_thread_start(move || cpu::pin_this_thread(&pinned));
        }
        Ok(Self(Some(builder.build()?)))
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        let runtime = self
            .0
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the client runtime is gone"))?;
        runtime.spawn(work).await?
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        // Dropped inside the server's runtime, where a blocking shutdown is not allowed.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn load_recordings(dir: &std::path::Path) -> anyhow::Result<Vec<Arc<Vec<f32>>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mat"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .mat recordings in {}", dir.display());
    files
        .iter()
        .map(|f| {
            Ok(Arc::new(
                read_recording(f, &ReadOptions::default())?.samples,
            ))
        })
        .collect()
}

/// What the raw measurement found.
struct Raw {
    windows_per_s: f64,
    /// CPU time per window (us), `None` where it cannot be read.
    cpu_us: Option<f64>,
    device: String,
    workers: usize,
    max_batch: usize,
}

/// Runs `workers` sessions flat out on batches of `max_batch` real windows.
async fn raw_throughput(
    config: &ServeConfig,
    recordings: &[Arc<Vec<f32>>],
    seconds: f64,
) -> anyhow::Result<Raw> {
    let model = Arc::new(LoadedModel::load(&config.model)?);
    let engine = Engine::open(config.engine_settings(), model.clone()).await?;
    let (placement, max_batch) = (engine.placement, engine.max_batch);
    let models = engine.sessions;
    let window = model.window_values();
    let batch: Vec<Vec<f32>> = recordings
        .iter()
        .flat_map(|r| {
            r.chunks_exact(window)
                .map(<[f32]>::to_vec)
                .collect::<Vec<_>>()
        })
        .cycle()
        .take(max_batch)
        .collect();
    let batch = Arc::new(batch);
    let cpu_before = cpu::CpuTimes::now();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers = models.len();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // Each thread (and its session's own threads) stays alive until the CPU time has been read: a thread that
    // has ended is no longer in /proc.
    let release = Arc::new(std::sync::Barrier::new(workers + 1));
    let threads: Vec<_> = models
        .into_iter()
        .map(|mut m| {
            let (batch, done_tx, release) = (batch.clone(), done_tx.clone(), release.clone());
            std::thread::spawn(move || {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if m.run(batch.iter().map(Vec::as_slice)).is_err() {
                        break;
                    }
                    done += batch.len() as u64;
                }
                let _ = done_tx.send(done);
                release.wait();
            })
        })
        .collect();
    let mut total = 0;
    let patience = Duration::from_secs_f64(seconds) + Duration::from_secs(60);
    for _ in 0..workers {
        total += done_rx
            .recv_timeout(patience)
            .map_err(|_| anyhow::anyhow!("a benchmark thread did not finish"))?;
    }
    let elapsed = started.elapsed();
    // The whole process: ONNX Runtime's own pool threads (with --intra-threads above 1) count too.
    let cpu_ns = cpu_before
        .zip(cpu::CpuTimes::now())
        .map(|(before, after)| after.since(before).total());
    release.wait();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?;
    }
    Ok(Raw {
        windows_per_s: total as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu_ns.map(|ns| ns as f64 / 1e3 / total.max(1) as f64),
        device: placement.to_string(),
        workers,
        max_batch,
    })
}

/// Streams recordings on `streams` concurrent streams for `seconds`; returns (windows, windows/s, sorted latencies
/// in us).
async fn service_throughput(
    addr: String,
    recordings: Vec<Arc<Vec<f32>>>,
    streams: usize,
    chunk: usize,
    seconds: f64,
    wire: WireChoice,
) -> anyhow::Result<(u64, f64, Vec<u64>)> {
    let channel = replay::connect(&addr).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let mut plan = StreamPlan::new(RECORDING_RATE_HZ, u64::MAX);
            plan.sensor_id = format!("bench-{i}");
            plan.chunk_frames = chunk.max(1);
            plan.until = Some(until);
            plan.keep_windows = false;
            let samples = recordings[i % recordings.len()].clone();
            plan.wire = Wire::choose(wire, &samples, None);
            tokio::spawn(replay::stream_samples(
                channel.clone(),
                samples,
                plan,
                |_| {},
            ))
        })
        .collect();
    let (windows, latencies) = gather(tasks).await?;
    Ok((
        windows,
        windows as f64 / started.elapsed().as_secs_f64(),
        latencies,
    ))
}

/// Runs the fairness measurement on a server started for it.
pub async fn run_fairness(args: BenchArgs) -> anyhow::Result<fairness::FairnessReport> {
    let split = args.client_cpus.map(cpu::split).transpose()?;
    let recordings = load_recordings(&args.recordings)?;
    let running = server::start(local(&args.serve)?).await?;
    let addr = format!("http://{}", running.grpc_addr);
    let client = ClientRuntime::new(split.as_ref().map(|s| s.client.as_slice()))?;
    let (recording, seconds) = (recordings[0].clone(), args.seconds);
    let report = client
        .run(async move { fairness::run(&addr, recording, seconds).await })
        .await;
    drop(client);
    running.shutdown();
    running.stopped().await;
    report
}

/// Runs the shadow-scoring comparison on a server started for it.
pub async fn run_shadow(args: BenchArgs) -> anyhow::Result<shadow::ShadowReport> {
    shadow::run(args).await
}

/// Runs the memory measurement on a server binary started for it (flags passed through: `--model`, `--workers`).
pub async fn run_memory(args: BenchArgs, streams: usize) -> anyhow::Result<memory::MemoryReport> {
    let recordings = load_recordings(&args.recordings)?;
    let flags = vec![
        "--model".to_owned(),
        args.serve.model.to_string_lossy().into_owned(),
    ];
    memory::run(flags, recordings[0].clone(), streams, args.seconds).await
}

/// Waits for every benchmark stream: windows received in all, and every window's latency (us), sorted. A stream
/// that ended with an error fails the measurement.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Result<replay::StreamOutcome, tonic::Status>>>,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let mut windows = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let out = t.await??;
        if let Some(status) = out.status {
            anyhow::bail!("a benchmark stream failed: {status}");
        }
        windows += out.window_count;
        latencies.extend(out.latencies_us);
    }
    latencies.sort_unstable();
    Ok((windows, latencies))
}

/// The settings on loopback, ephemeral ports.
fn local(serve: &ServeConfig) -> anyhow::Result<ServeConfig> {
    let mut config = serve.clone();
    config.network.listen = "127.0.0.1:0".parse()?;
    config.network.metrics_listen = "127.0.0.1:0".parse()?;
    config.network.http_listen = "127.0.0.1:0".parse()?;
    Ok(config)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    // Before anything starts a thread: the server's threads (and their count by default) follow the split.
    let split = args.client_cpus.map(cpu::split).transpose()?;
    let recordings = load_recordings(&args.recordings)?;
    let mut config = local(&args.serve)?;
    // The capacity search measures the machine, not the default stream cap (with room for the service
    // measurement's streams and the 64 real-time sensors whatever --capacity-max is).
    config.streams.max_streams = args.capacity_max.max(args.streams).max(64);
    let model = LoadedModel::load(&config.model)?;

    eprintln!("measuring raw ONNX Runtime for {} s ...", args.seconds);
    let raw = raw_throughput(&config, &recordings, args.seconds).await?;

    let running = server::start(config.clone()).await?;
    let addr = format!("http://{}", running.grpc_addr);
    let client = ClientRuntime::new(split.as_ref().map(|s| s.client.as_slice()))?;
    // The same load on the float wire and on 16-bit codes, one after the other.
    let mut wires = Vec::new();
    for (wire, name) in [(WireChoice::F32, "f32"), (WireChoice::I16, "16-bit")] {
        eprintln!(
            "measuring the service with {} streams on the {name} wire for {} s ...",
            args.streams, args.seconds
        );
        let cpu_before = cpu::CpuTimes::now();
        let (windows, rate, saturated) = client
            .run(service_throughput(
                addr.clone(),
                recordings.clone(),
                args.streams,
                args.chunk,
                args.seconds,
                wire,
            ))
            .await?;
        let cpu = cpu_before
            .zip(cpu::CpuTimes::now())
            .map(|(before, after)| ServiceCpu::per_window(after.since(before), windows));
        wires.push((rate, cpu, saturated));
    }
    let (service, service_cpu, saturated) = wires.remove(0);
    let (service_i16, service_i16_cpu, _) = wires.remove(0);
    let load = capacity::Load::new(&addr, &recordings, &model, &args, &config);
    eprintln!(
        "measuring 64 real-time sensors, phases spread and in phase, {} s each ...",
        args.seconds
    );
    let trial = |spread| {
        let load = load.clone();
        client.run(async move { capacity::trial(&load, 64, spread).await })
    };
    let realtime_spread = trial(true).await?;
    let realtime_in_phase = trial(false).await?;
    let mut capacity = Vec::new();
    if !args.skip_capacity {
        for spread in [true, false] {
            let (load, start) = (load.clone(), args.capacity_start);
            capacity.push(
                client
                    .run(async move { capacity::search(&load, spread, start).await })
                    .await?,
            );
        }
    }
    drop(client);
    running.shutdown();
    running.stopped().await;

    let ms = |v: &[u64], p| percentile(v, p) as f64 / 1e3;
    Ok(BenchReport {
        device: raw.device,
        workers: raw.workers,
        intra_threads: config.engine.intra_threads,
        max_batch: raw.max_batch,
        raw_windows_per_s: raw.windows_per_s,
        service_windows_per_s: service,
        ratio: service / raw.windows_per_s,
        raw_cpu_us: raw.cpu_us,
        service_cpu_us: service_cpu,
        service_i16_windows_per_s: service_i16,
        service_i16_cpu_us: service_i16_cpu,
        saturated_p50_ms: ms(&saturated, 50.0),
        saturated_p99_ms: ms(&saturated, 99.0),
        realtime_spread,
        realtime_in_phase,
        capacity,
        cores: split.as_ref().map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |s| s.server.len(),
        ),
        client_cpus: split.as_ref().map(|s| s.client.len()),
        window: model.window(),
        hop: model.card.default_hop,
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client = match self.client_cpus {
            Some(n) => format!(" (client on {n} other CPU(s))"),
            None => " shared with the client".to_owned(),
        };
        writeln!(
            f,
            "device {}, {} worker(s) x {} intra-op thread(s), max batch {}, {} cores{client}; window {} / hop {} at \
             12 kHz",
            self.device,
            self.workers,
            self.intra_threads,
            self.max_batch,
            self.cores,
            self.window,
            self.hop
        )?;
        writeln!(
            f,
            "raw ONNX Runtime, in-process:        {:>9.0} windows/s",
            self.raw_windows_per_s
        )?;
        writeln!(
            f,
            "service over loopback gRPC, f32:     {:>9.0} windows/s",
            self.service_windows_per_s
        )?;
        writeln!(
            f,
            "service over loopback gRPC, 16-bit:  {:>9.0} windows/s",
            self.service_i16_windows_per_s
        )?;
        writeln!(
            f,
            "ratio service / raw:                 {:>9.2} (f32), {:.2} (16-bit)",
            self.ratio,
            self.service_i16_windows_per_s / self.raw_windows_per_s
        )?;
        if let Some(raw) = self.raw_cpu_us {
            writeln!(f, "CPU per window, raw:                 {raw:>9.1} us")?;
            for (name, cpu) in [
                ("f32", self.service_cpu_us),
                ("16-bit", self.service_i16_cpu_us),
            ] {
                let Some(s) = cpu else { continue };
                if self.intra_threads == 1 {
                    writeln!(
                        f,
                        "CPU per window, service, {name:<6}:     {:>9.1} us inference + {:.1} us rest of server (+ \
                         {:.1} us this bench's client)",
                        s.inference, s.server, s.client
                    )?;
                } else {
                    // ONNX Runtime's intra-op threads carry the name of the thread that made the session.
                    writeln!(
                        f,
                        "CPU per window, service, {name:<6}:     {:>9.1} us server, inference included (+ {:.1} us \
                         this bench's client)",
                        s.inference + s.server,
                        s.client
                    )?;
                }
                writeln!(
                    f,
                    "ratio by server CPU, {name:<6} (raw / service): {:>5.2}  (throughput ratio with the client on \
                     other machines)",
                    raw / (s.inference + s.server)
                )?;
            }
        }
        writeln!(
            f,
            "window latency, saturated:           p50 {:.1} ms, p99 {:.1} ms",
            self.saturated_p50_ms, self.saturated_p99_ms
        )?;
        for (name, t) in [
            ("phases spread", &self.realtime_spread),
            ("in phase", &self.realtime_in_phase),
        ] {
            writeln!(
                f,
                "64 real-time sensors, {name:<13}  p50 {:.1} ms, p99 {:.1} ms ({:.0} windows/s)",
                t.p50_ms, t.p99_ms, t.windows_per_s
            )?;
        }
        if let Some(c) = self.capacity.first() {
            writeln!(f)?;
            writeln!(
                f,
                "capacity plan: real-time 12 kHz sensors one server holds with p99 within {:.0} ms and none behind",
                c.budget_ms
            )?;
            writeln!(
                f,
                "| sensors' phases | sensors held | windows/s | windows/s per core | p50 ms | p99 ms |"
            )?;
            writeln!(f, "|---|---|---|---|---|---|")?;
            for c in &self.capacity {
                let phases = if c.spread { "spread" } else { "in phase" };
                let at_least = if c.capped { "at least " } else { "" };
                match c.held {
                    Some(t) => writeln!(
                        f,
                        "| {phases} | {at_least}{} | {:.0} | {:.0} | {:.1} | {:.1} |",
                        t.streams,
                        t.windows_per_s,
                        t.windows_per_s / self.cores as f64,
                        t.p50_ms,
                        t.p99_ms
                    )?,
                    None => writeln!(f, "| {phases} | none of the trials passed | | | | |")?,
                }
            }
            writeln!(f)?;
            write!(f, "trials (streams: p99 ms, delivered):")?;
            for c in &self.capacity {
                for t in &c.trials {
                    write!(
                        f,
                        " {}{}: {:.1}, {:.0}%",
                        if c.spread { "" } else { "in-phase " },
                        t.streams,
                        t.p99_ms,
                        100.0 * t.delivered
                    )?;
                    write!(f, ";")?;
                }
            }
        }
        Ok(())
    }
}
