//! `drsn-serve bench --memory N`: what streams cost the server in memory. Starts the server binary as a child
//! process (so its resident set is its own), then reads its RSS with no stream, with N idle streams at the model's
//! rate, with N idle resampled (48 kHz) streams, and while N real-time streams run.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::RECORDING_RATE_HZ;
use crate::api::grpc::proto::stream_diagnose_request::Message;
use crate::api::grpc::proto::{SampleChunk, StreamDiagnoseRequest, StreamOpen, sample_chunk};
use crate::client::replay::{self, StreamPlan};

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryReport {
    pub streams: usize,
    pub base_kib: u64,
    pub idle_per_stream_kib: f64,
    pub idle_resampled_per_stream_kib: f64,
    pub realtime_rss_kib: u64,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process's resident set size, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `drsn-serve serve` with `flags`; returns it and its gRPC address.
fn spawn(flags: &[String]) -> anyhow::Result<(Server, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--log-format", "json"])
        .args(flags)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let server = Server(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the server exited before SERVING"))??;
        if line.contains("SERVING") {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            break format!(
                "http://{}",
                v["fields"]["grpc_addr"].as_str().unwrap_or_default()
            );
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((server, addr))
}

/// An open stream: its request sender and its response, held until dropped.
type Held = (
    mpsc::Sender<StreamDiagnoseRequest>,
    tonic::Response<tonic::Streaming<crate::api::grpc::proto::StreamDiagnoseResponse>>,
);

/// Opens `n` streams at `rate` that each send one short chunk and then stay open.
async fn idle_streams(addr: &str, n: usize, rate: f64) -> anyhow::Result<Vec<Held>> {
    let client = replay::connect(addr).await?;
    let mut held = Vec::new();
    for i in 0..n {
        let (tx, rx) = mpsc::channel(2);
        tx.send(StreamDiagnoseRequest {
            message: Some(Message::Open(StreamOpen {
                machine_id: "memory".into(),
                sensor_id: format!("{i}"),
                sample_rate_hz: rate,
                channels: 1,
                hop: 0,
                detail: 0,
                ..Default::default()
            })),
        })
        .await?;
        tx.send(StreamDiagnoseRequest {
            message: Some(Message::Chunk(SampleChunk {
                first_sample_index: 0,
                samples: Some(sample_chunk::Samples::F32le(vec![0; 4 * 1000].into())),
            })),
        })
        .await?;
        let call = client
            .clone()
            .stream_diagnose(ReceiverStream::new(rx))
            .await?;
        held.push((tx, call));
    }
    Ok(held)
}

pub async fn run(
    serve_flags: Vec<String>,
    samples: Arc<Vec<f32>>,
    n: usize,
    seconds: f64,
) -> anyhow::Result<MemoryReport> {
    let mut flags = serve_flags;
    flags.extend(["--max-streams".into(), (2 * n + 16).to_string()]);
    flags.extend(["--max-streams-per-connection".into(), (n + 16).to_string()]);
    let (server, addr) = spawn(&flags)?;
    let pid = server.0.id();
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;
    let base = rss_kib(pid);
    eprintln!("memory: {n} idle streams at 12 kHz ...");
    let plain = idle_streams(&addr, n, RECORDING_RATE_HZ).await?;
    settle().await;
    let with_plain = rss_kib(pid);
    drop(plain);
    settle().await;
    let base2 = rss_kib(pid);
    eprintln!("memory: {n} idle streams at 48 kHz (resampled) ...");
    let resampled = idle_streams(&addr, n, 48_000.0).await?;
    settle().await;
    let with_resampled = rss_kib(pid);
    drop(resampled);
    eprintln!("memory: {n} real-time streams for {seconds} s ...");
    let client = replay::connect(&addr).await?;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut plan = StreamPlan::new(RECORDING_RATE_HZ, u64::MAX);
            plan.realtime = true;
            plan.until = Some(until);
            plan.keep_windows = false;
            plan.start_delay = Duration::from_millis((i % 341) as u64);
            tokio::spawn(replay::stream_samples(
                client.clone(),
                samples.clone(),
                plan,
                |_| {},
            ))
        })
        .collect();
    tokio::time::sleep_until((until - Duration::from_secs_f64(seconds / 3.0)).into()).await;
    let realtime = rss_kib(pid);
    for t in tasks {
        let _ = t.await;
    }
    Ok(MemoryReport {
        streams: n,
        base_kib: base,
        idle_per_stream_kib: with_plain.saturating_sub(base) as f64 / n as f64,
        idle_resampled_per_stream_kib: with_resampled.saturating_sub(base2) as f64 / n as f64,
        realtime_rss_kib: realtime,
    })
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "server RSS with no stream:            {:>8} KiB",
            self.base_kib
        )?;
        writeln!(
            f,
            "per idle 12 kHz stream:               {:>8.1} KiB",
            self.idle_per_stream_kib
        )?;
        writeln!(
            f,
            "per idle 48 kHz (resampled) stream:   {:>8.1} KiB",
            self.idle_resampled_per_stream_kib
        )?;
        write!(
            f,
            "server RSS with {} real-time streams: {:>8} KiB",
            self.streams, self.realtime_rss_kib
        )
    }
}
