//! Soak: the server binary under a mix of clients for `DRSN_SOAK_SECONDS` (default 120; `make soak` runs 30
//! minutes): real-time sensors, clients sending bad input, clients that never read, clients that vanish
//! mid-stream, streams that go quiet, and unary calls with good and flat windows. The server's RSS and open file
//! descriptors are sampled throughout. It passes when every real-time window is answered (and 98% right), nothing is
//! counted as a server fault, memory stops growing, and file descriptors come back once the clients are gone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drsn_serve::api::grpc::proto::{
    DiagnoseRequest, FloatSamples, StreamDiagnoseRequest, Window, window,
};
use drsn_serve::bench::memory::rss_kib;
use drsn_serve::client::replay::{self, StreamPlan};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_clients_for_a_while_leak_nothing() {
    let seconds: f64 = std::env::var("DRSN_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120.0);
    let server = common::ServerProcess::spawn(&["--idle-timeout", "3s", "--open-timeout", "2s"]);
    let (addr, pid, metrics) = (server.addr.clone(), server.child.id(), server.metrics);
    let recs = common::recordings();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let wrong = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    // Eight real-time sensors, each replaying its recording in a loop with continuing sample indices.
    for i in 0..8 {
        let (label, samples) = recs[i % recs.len()].clone();
        let (addr, wrong, answered) = (addr.clone(), wrong.clone(), answered.clone());
        let n = samples.len() as u64;
        tasks.push(tokio::spawn(async move {
            let client = replay::connect(&addr).await.unwrap();
            let mut plan = StreamPlan::new(12_000.0, u64::MAX);
            plan.realtime = true;
            plan.until = Some(deadline);
            plan.keep_windows = false;
            let out = replay::stream_samples(client, samples, plan, move |w| {
                answered.fetch_add(1, Ordering::Relaxed);
                // A window across the seam where the recording starts again holds a jump; judge the others.
                let seam = w.first_sample_index / n != w.last_sample_index / n;
                if !seam && w.label != label {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await
            .unwrap();
            assert!(
                out.status.is_none(),
                "a real-time sensor's stream failed: {:?}",
                out.status
            );
            out.window_count
        }));
    }

    // The rest come and go in rounds until the deadline.
    let churn = {
        let (addr, stop) = (addr.clone(), stop.clone());
        let real = recs[3].1.clone();
        let w = common::window();
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let mut client = replay::connect(&addr).await.unwrap();
                // Bad input: a NaN, then two channels.
                for bad in [
                    vec![
                        common::open(12_000.0, 1, 0),
                        common::chunk(0, vec![0.0, f32::NAN]),
                    ],
                    vec![common::open(12_000.0, 2, 0)],
                ] {
                    let (tx, rx) = mpsc::channel(4);
                    for m in bad {
                        tx.send(m).await.unwrap();
                    }
                    if let Ok(r) = client.stream_diagnose(ReceiverStream::new(rx)).await {
                        let mut s = r.into_inner();
                        while let Ok(Some(_)) = s.message().await {}
                    }
                }
                // A client that sends fast and never reads, and one that goes quiet; both left to the server.
                let deaf = {
                    let (tx, rx) = mpsc::channel::<StreamDiagnoseRequest>(64);
                    let mut c = client.clone();
                    let real = real.clone();
                    tokio::spawn(async move {
                        tx.send(common::open(12_000.0, 1, 0)).await.ok();
                        let _held = c.stream_diagnose(ReceiverStream::new(rx)).await;
                        let mut at = 0u64;
                        for _ in 0..200 {
                            let chunk = real[..4096].to_vec();
                            if tx.send(common::chunk_bytes(at, &chunk)).await.is_err() {
                                break;
                            }
                            at += 4096;
                        }
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    })
                };
                let quiet = {
                    let (tx, rx) = mpsc::channel::<StreamDiagnoseRequest>(4);
                    let mut c = client.clone();
                    tokio::spawn(async move {
                        tx.send(common::open(12_000.0, 1, 0)).await.ok();
                        if let Ok(r) = c.stream_diagnose(ReceiverStream::new(rx)).await {
                            let mut s = r.into_inner();
                            while let Ok(Some(_)) = s.message().await {}
                        }
                        drop(tx);
                    })
                };
                // A gateway that vanishes mid-stream: its task is killed, the connection with it.
                let vanishing = {
                    let addr = addr.clone();
                    let samples = real.clone();
                    tokio::spawn(async move {
                        let c = replay::connect(&addr).await.unwrap();
                        let mut plan = StreamPlan::new(12_000.0, 1 << 20);
                        plan.keep_windows = false;
                        let _ = replay::stream_samples(c, samples, plan, |_| {}).await;
                    })
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
                vanishing.abort();
                // Unary calls, good and flat windows together.
                let win = |values: Vec<f32>| Window {
                    samples: Some(window::Samples::Values(FloatSamples { values })),
                };
                let _ = client
                    .diagnose(DiagnoseRequest {
                        windows: vec![win(real[..w].to_vec()), win(vec![0.0; w])],
                        detail: 0,
                        ..Default::default()
                    })
                    .await;
                let _ = deaf.await;
                let _ = quiet.await;
            }
            round
        })
    };

    // Sample the server while it works.
    let mut samples = Vec::new();
    let started = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5).min(deadline - Instant::now())).await;
        let (rss, fd) = (rss_kib(pid), fds(pid));
        let streams = common::metric(&common::scrape_at(metrics).await, "drsn_active_streams");
        eprintln!(
            "soak t={:>5.0}s  rss {:>7} KiB  fds {:>4}  open streams {:?}",
            started.elapsed().as_secs_f64(),
            rss,
            fd,
            streams
        );
        samples.push((rss, fd));
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.await.unwrap();
    let mut windows = 0;
    for t in tasks {
        windows += t.await.unwrap();
    }
    // Clients gone: give the server a moment to notice, then look again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_end, fds_end) = (rss_kib(pid), fds(pid));
    let scrape = common::scrape_at(metrics).await;
    eprintln!(
        "soak end: {rounds} churn rounds, {windows} real-time windows, rss {rss_end} KiB, fds {fds_end}"
    );

    // The model is not perfect on every window offset (ball faults at 0.007 and 0.021 in are close): the
    // service must not make it worse.
    let wrong = wrong.load(Ordering::Relaxed);
    assert!(
        wrong * 100 <= windows * 2,
        "{wrong} of {windows} real-time windows misclassified"
    );
    assert_eq!(answered.load(Ordering::Relaxed), windows);
    let expected = (seconds * 8.0 * 12_000.0 / common::hop() as f64) as u64;
    assert!(
        windows * 10 >= expected * 8,
        "{windows} real-time windows, about {expected} due"
    );
    assert!(rounds >= 2, "the churn ran");
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("drsn_errors_total{") && l.contains("INTERNAL"))
    {
        assert!(line.ends_with(" 0"), "a server fault: {line}");
    }
    assert_eq!(common::metric(&scrape, "drsn_active_streams"), Some(0.0));
    // File descriptors come back to where they were early on; memory does not keep growing.
    let (rss_early, fds_early) = samples[samples.len().min(2) - 1];
    assert!(
        fds_end <= fds_early + 8,
        "file descriptors: {fds_early} early, {fds_end} at the end"
    );
    let late = samples[samples.len() / 2..]
        .iter()
        .map(|s| s.0)
        .max()
        .unwrap();
    let mid = samples[..=samples.len() / 2]
        .iter()
        .map(|s| s.0)
        .max()
        .unwrap();
    assert!(
        late <= mid + mid / 4 + 16 * 1024,
        "RSS still growing: {mid} KiB by half-time, {late} KiB after (early {rss_early} KiB)"
    );
    assert!(rss_end < 1024 * 1024, "RSS {rss_end} KiB");
    drop(server);
}
