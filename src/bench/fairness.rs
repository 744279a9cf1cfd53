//! `drsn-serve bench --fairness`: one real-time sensor's window latency alone, beside a client flooding on 16
//! and on 128 streams, and just after such a flood stops (its clients half-close and wait for their backlog),
//! measured side by side in one run on one server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RECORDING_RATE_HZ;
use crate::client::replay::{self, StreamPlan, percentile};

/// A real-time sensor's window latency in one situation (ms): client-side p50 and p99, and the p99 of the two
/// server-side parts, waiting in the queue and the inference of the window's batch.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub queue_p99: f64,
    pub inference_p99: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FairnessReport {
    pub alone: Latency,
    pub beside_16: Latency,
    pub beside_128: Latency,
    /// A new stream opened as a 128-stream flood stops.
    pub after_flood: Latency,
    /// Windows/s the flood got while the sensor ran beside it (16 and 128 streams).
    pub flood_windows_per_s: (f64, f64),
}

/// One real-time sensor for `seconds`.
async fn sensor(addr: &str, samples: Arc<Vec<f32>>, seconds: f64) -> anyhow::Result<Latency> {
    let client = replay::connect(addr).await?;
    let mut plan = StreamPlan::new(RECORDING_RATE_HZ, u64::MAX);
    plan.sensor_id = "real-time".into();
    plan.realtime = true;
    plan.until = Some(Instant::now() + Duration::from_secs_f64(seconds));
    plan.keep_windows = false;
    let parts = std::sync::Mutex::new((Vec::new(), Vec::new()));
    let out = replay::stream_samples(client, samples, plan, |w| {
        if let Ok(mut p) = parts.lock() {
            p.0.push(w.queue_us);
            p.1.push(w.inference_us);
        }
    })
    .await?;
    if let Some(status) = out.status {
        anyhow::bail!("the real-time stream failed: {status}");
    }
    let (mut queue, mut inference) = parts.into_inner().unwrap_or_default();
    let mut l = out.latencies_us;
    for v in [&mut l, &mut queue, &mut inference] {
        v.sort_unstable();
    }
    let ms = |v: &[u64], p| percentile(v, p) as f64 / 1e3;
    Ok(Latency {
        p50: ms(&l, 50.0),
        p99: ms(&l, 99.0),
        queue_p99: ms(&queue, 99.0),
        inference_p99: ms(&inference, 99.0),
    })
}

/// `streams` streams on one connection sending as fast as the server takes them until `until`, then half-closing
/// and reading what is left; returns the windows they got.
fn flood(
    addr: String,
    samples: Arc<Vec<f32>>,
    streams: usize,
    until: Instant,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let client = replay::connect(&addr).await?;
        let tasks: Vec<_> = (0..streams)
            .map(|i| {
                let mut plan = StreamPlan::new(RECORDING_RATE_HZ, u64::MAX);
                plan.sensor_id = format!("flood-{i}");
                plan.until = Some(until);
                plan.keep_windows = false;
                tokio::spawn(replay::stream_samples(
                    client.clone(),
                    samples.clone(),
                    plan,
                    |_| {},
                ))
            })
            .collect();
        let mut windows = 0;
        for t in tasks {
            windows += t.await??.window_count;
        }
        Ok(windows)
    })
}

pub(crate) async fn run(
    addr: &str,
    samples: Arc<Vec<f32>>,
    seconds: f64,
) -> anyhow::Result<FairnessReport> {
    eprintln!("fairness: a real-time sensor alone for {seconds} s ...");
    let alone = sensor(addr, samples.clone(), seconds).await?;
    let mut beside = Vec::new();
    let mut flood_rates = Vec::new();
    for streams in [16, 128] {
        eprintln!("fairness: beside a client flooding on {streams} streams for {seconds} s ...");
        let until = Instant::now() + Duration::from_secs_f64(seconds + 1.0);
        let started = Instant::now();
        let f = flood(addr.to_owned(), samples.clone(), streams, until);
        // Let the flood fill the queue first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let latency = sensor(addr, samples.clone(), seconds).await?;
        let windows = f.await??;
        flood_rates.push(windows as f64 / started.elapsed().as_secs_f64());
        beside.push(latency);
    }
    eprintln!("fairness: a new sensor as a 128-stream flood stops ...");
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let f = flood(addr.to_owned(), samples.clone(), 128, until);
    tokio::time::sleep_until(until.into()).await;
    let after = sensor(addr, samples.clone(), seconds.min(5.0)).await?;
    f.await??;
    Ok(FairnessReport {
        alone,
        beside_16: beside[0],
        beside_128: beside[1],
        after_flood: after,
        flood_windows_per_s: (flood_rates[0], flood_rates[1]),
    })
}

impl std::fmt::Display for FairnessReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |name: &str, l: Latency| {
            format!(
                "{name:<44} p50 {:>6.1} ms  p99 {:>6.1} ms  ({:.1}x alone)  server p99: queue {:>5.1} ms, batch inference {:>5.1} ms",
                l.p50,
                l.p99,
                l.p99 / self.alone.p99.max(1e-9),
                l.queue_p99,
                l.inference_p99
            )
        };
        writeln!(f, "{}", row("real-time sensor alone:", self.alone))?;
        writeln!(
            f,
            "{}  flood {:.0} windows/s",
            row("beside one client flooding on 16 streams:", self.beside_16),
            self.flood_windows_per_s.0
        )?;
        writeln!(
            f,
            "{}  flood {:.0} windows/s",
            row(
                "beside one client flooding on 128 streams:",
                self.beside_128
            ),
            self.flood_windows_per_s.1
        )?;
        write!(
            f,
            "{}",
            row(
                "new sensor as the 128-stream flood stops:",
                self.after_flood
            )
        )
    }
}
