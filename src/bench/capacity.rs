//! Sizing: the largest number of real-time 12 kHz sensors one server holds with the p99 window latency within the
//! budget and no sensor falling behind, with the sensors' phases spread (as independent gateways are) and, as the
//! worst case, all in phase. Each trial runs N paced streams for a while; the search doubles N until a trial
//! fails (or the server's --max-streams is reached), then bisects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RECORDING_RATE_HZ;
use crate::client::replay::{self, StreamPlan, percentile};

/// One trial's outcome.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Trial {
    pub streams: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub windows_per_s: f64,
    /// Windows received against those the streams' samples hold.
    pub delivered: f64,
    pub passed: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Capacity {
    pub spread: bool,
    pub budget_ms: f64,
    /// The largest passing trial (None if even the smallest failed).
    pub held: Option<Trial>,
    /// The search reached the server's --max-streams without failing: the server holds at least `held`.
    pub capped: bool,
    pub trials: Vec<Trial>,
}

/// What a trial sends: the model's window and hop, the recordings, how long.
#[derive(Clone)]
pub(crate) struct Load {
    pub addr: String,
    pub recordings: Vec<Arc<Vec<f32>>>,
    pub window: usize,
    pub hop: usize,
    pub seconds: f64,
    pub budget: Duration,
    /// The server's --max-streams: the search stops there.
    pub max_streams: usize,
}

impl Load {
    /// The load for the model's window and hop, with the bench's duration and search limit and the server's budget.
    pub(crate) fn new(
        addr: &str,
        recordings: &[Arc<Vec<f32>>],
        model: &crate::model::card::LoadedModel,
        args: &super::BenchArgs,
        config: &crate::server::config::ServeConfig,
    ) -> Self {
        Self {
            addr: addr.to_owned(),
            recordings: recordings.to_vec(),
            window: model.window(),
            hop: model.card.default_hop,
            seconds: args.seconds,
            budget: config.batching.latency_budget,
            max_streams: args.capacity_max,
        }
    }
}

/// Sensors per connection, as a gateway multiplexes its sensors' streams on one connection.
pub(crate) const STREAMS_PER_GATEWAY: usize = 64;

/// Runs `n` real-time streams from gateways of [`STREAMS_PER_GATEWAY`] sensors each (one connection per
/// gateway); phases spread over one hop period, or all together.
pub(crate) async fn trial(load: &Load, n: usize, spread: bool) -> anyhow::Result<Trial> {
    let mut gateways = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_GATEWAY) {
        gateways.push(replay::connect(&load.addr).await?);
    }
    let hop_period = Duration::from_secs_f64(load.hop as f64 / RECORDING_RATE_HZ);
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut plan =
                StreamPlan::new(RECORDING_RATE_HZ, (load.seconds * RECORDING_RATE_HZ) as u64);
            plan.sensor_id = format!("capacity-{i}");
            plan.realtime = true;
            plan.keep_windows = false;
            if spread {
                plan.start_delay = hop_period.mul_f64(i as f64 / n as f64);
            }
            tokio::spawn(replay::stream_samples(
                gateways[i / STREAMS_PER_GATEWAY].clone(),
                load.recordings[i % load.recordings.len()].clone(),
                plan,
                |_| {},
            ))
        })
        .collect();
    let (windows, latencies) = super::gather(tasks).await?;
    let frames = (load.seconds * RECORDING_RATE_HZ) as usize;
    let due = n * (frames.saturating_sub(load.window) / load.hop + 1);
    let delivered = windows as f64 / due.max(1) as f64;
    let p99_ms = percentile(&latencies, 99.0) as f64 / 1e3;
    Ok(Trial {
        streams: n,
        p50_ms: percentile(&latencies, 50.0) as f64 / 1e3,
        p99_ms,
        windows_per_s: windows as f64 / started.elapsed().as_secs_f64(),
        delivered,
        passed: p99_ms <= load.budget.as_secs_f64() * 1e3 && delivered >= 0.99,
    })
}

/// Doubles the number of streams from `start` until a trial fails, then bisects to within 10%.
pub(crate) async fn search(load: &Load, spread: bool, start: usize) -> anyhow::Result<Capacity> {
    let mut trials = Vec::new();
    let run = |n: usize| {
        let load = load.clone();
        async move {
            eprintln!(
                "capacity ({}): {n} real-time streams for {} s ...",
                if spread { "phases spread" } else { "in phase" },
                load.seconds
            );
            trial(&load, n, spread).await
        }
    };
    let (mut good, mut bad): (Option<Trial>, Option<usize>) = (None, None);
    let mut n = start.clamp(1, load.max_streams.max(1));
    loop {
        let t = run(n).await?;
        trials.push(t);
        if !t.passed {
            bad = Some(n);
            break;
        }
        good = Some(t);
        if n >= load.max_streams {
            break;
        }
        n = (n * 2).min(load.max_streams);
    }
    if let Some(mut hi) = bad {
        let mut lo = good.map_or(0, |t| t.streams);
        while hi - lo > (hi / 10).max(1) {
            let mid = (lo + hi) / 2;
            let t = run(mid).await?;
            trials.push(t);
            if t.passed {
                good = Some(t);
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    Ok(Capacity {
        spread,
        budget_ms: load.budget.as_secs_f64() * 1e3,
        capped: bad.is_none(),
        held: good,
        trials,
    })
}
