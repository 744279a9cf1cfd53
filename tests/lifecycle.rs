//! Stream and process lifecycle: a client that disconnects frees its stream; a real scrape passes
//! `promtool check metrics`; SIGTERM drains the binary: queued windows delivered, streams end with a status, the
//! process exits in time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drsn_serve::api::grpc::proto::StreamDiagnoseRequest;
use drsn_serve::api::grpc::proto::diagnosis_client::DiagnosisClient;
use drsn_serve::api::grpc::proto::stream_diagnose_response::Event;
use drsn_serve::client::replay::{self, StreamPlan};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn open() -> StreamDiagnoseRequest {
    common::open(12_000.0, 1, 0)
}

fn chunk(first: u64, samples: &[f32]) -> StreamDiagnoseRequest {
    common::chunk_bytes(first, samples)
}

async fn wait_for_gauge(running: &drsn_serve::server::Running, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = common::metric(&common::scrape(running).await, "drsn_active_streams")
            .unwrap_or(f64::NAN);
        if v == want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_frees_the_stream_and_metrics_pass_promtool() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let (_, samples) = common::recordings().remove(2);

    // Traffic first, so every metric family has samples.
    let channel = replay::connect(&common::addr(&running)).await.unwrap();
    let out = replay::stream_samples(
        channel,
        samples.clone(),
        StreamPlan::new(12_000.0, 20_000),
        |_| {},
    )
    .await
    .unwrap();
    assert!(out.window_count > 0);

    // A client that opens a stream, gets a result, then vanishes without closing: its own runtime (and with it
    // the TCP connection) is torn down mid-stream, as when a gateway dies.
    let addr = common::addr(&running);
    let (got_window_tx, got_window_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = std::sync::mpsc::channel::<()>();
    let first = samples[..common::window() + common::hop()].to_vec();
    let client_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (tx, rx) = mpsc::channel(8);
            tx.send(open()).await.unwrap();
            tx.send(chunk(0, &first)).await.unwrap();
            let mut client = DiagnosisClient::connect(addr).await.unwrap();
            let mut inbound = client
                .stream_diagnose(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            while let Some(m) = inbound.message().await.unwrap() {
                if matches!(m.event, Some(Event::Window(_))) {
                    got_window_tx.send(()).unwrap();
                    break;
                }
            }
            // Hold the stream open until told to die, then drop the runtime with everything in it.
            tokio::task::spawn_blocking(move || die_rx.recv())
                .await
                .unwrap()
                .unwrap();
            std::mem::forget(tx);
        });
        drop(rt);
    });
    got_window_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the client got a window");
    assert_eq!(
        wait_for_gauge(&running, 1.0).await,
        1.0,
        "the open stream is counted"
    );
    die_tx.send(()).unwrap();
    client_thread.join().unwrap();
    assert_eq!(
        wait_for_gauge(&running, 0.0).await,
        0.0,
        "the stream was not freed"
    );

    let exposition = common::scrape(&running).await;
    for family in [
        "drsn_samples_received_total",
        "drsn_windows_diagnosed_total",
        "drsn_predictions_total",
        "drsn_batch_size_bucket",
        "drsn_queue_wait_seconds_bucket",
        "drsn_inference_seconds_bucket",
        "drsn_window_latency_seconds_bucket",
        "drsn_queue_depth",
        "drsn_model_info",
    ] {
        assert!(
            exposition.contains(family),
            "{family} missing from the scrape"
        );
    }
    // Each model's classes and batch costs under its own name (and version): several models may serve at once.
    let (name, version) = ("drsn-cw-cwru", common::model_version());
    for series in [
        format!("drsn_predictions_total{{model=\"{name}\",class=\"normal\"}}"),
        format!("drsn_inference_seconds_count{{model=\"{name}\",version=\"{version}\"}}"),
        format!("drsn_batch_size_count{{model=\"{name}\",version=\"{version}\"}}"),
    ] {
        assert!(
            common::metric(&exposition, &series).is_some(),
            "{series} missing from the scrape"
        );
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool (Debian package `prometheus`) must be installed: apt-get install prometheus",
        );
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let result = promtool.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&result.stdout).to_string()
        + &String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_queued_windows_and_exits_in_time() {
    // A slow server: one worker, batch 1, a long queue, so windows are still queued when SIGTERM comes.
    let mut server = common::ServerProcess::spawn(&[
        "--workers",
        "1",
        "--max-batch",
        "1",
        "--drain-timeout",
        "20s",
    ]);

    let (_, samples) = common::recordings().remove(4);
    // 200 windows; the committed excerpts are shorter, so repeat the recording (the classes do not matter here).
    let (w, h) = (common::window(), common::hop());
    let samples: Vec<f32> = samples.iter().copied().cycle().take(w + 199 * h).collect();
    let samples = Arc::new(samples);
    let windows = common::windows_in(samples.len(), w, h);
    let (tx, rx) = mpsc::channel(1024);
    tx.send(open()).await.unwrap();
    for (k, c) in samples.chunks(4096).enumerate() {
        tx.send(chunk(k as u64 * 4096, c)).await.unwrap();
    }
    let mut inbound = common::call(server.addr.clone(), rx).await.unwrap();
    // Wait for the first result: by then the reader has queued the windows of the chunks sent.
    loop {
        if let Some(Event::Window(_)) = inbound.message().await.unwrap().unwrap().event {
            break;
        }
    }
    let sigterm = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut received = 1;
    let mut last_index = 0;
    let status = loop {
        match inbound.message().await {
            Ok(Some(m)) => {
                if let Some(Event::Window(w)) = m.event {
                    assert_eq!(w.window_index, last_index + 1, "in order, none lost");
                    last_index = w.window_index;
                    received += 1;
                }
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("resume from sample"),
        "{}",
        status.message()
    );
    assert!(
        received > 1 && received <= windows,
        "{received} of {windows} windows delivered"
    );
    // Every window cut before SIGTERM was delivered: the status says where the client should resume.
    let resume: u64 = status
        .message()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        resume,
        (received * h) as u64,
        "windows up to the resume point were all delivered"
    );
    drop(tx);
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sigterm.elapsed() < Duration::from_secs(25),
            "the process did not exit within the drain timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_do_not_hold_up_shutdown() {
    let _serial = common::serial().await;
    let running = common::start(&["--drain-timeout", "1s"]).await;
    let addr = common::addr(&running);
    // A stream that never sends `open`.
    let (silent_tx, silent_rx) = mpsc::channel::<StreamDiagnoseRequest>(1);
    let mut c1 = DiagnosisClient::connect(addr.clone()).await.unwrap();
    let silent =
        tokio::spawn(async move { c1.stream_diagnose(ReceiverStream::new(silent_rx)).await });
    // A stream that sends a lot and never reads its results.
    let (_, samples) = common::recordings().remove(0);
    let (tx, rx) = mpsc::channel(64);
    tx.send(open()).await.unwrap();
    let mut c2 = DiagnosisClient::connect(addr).await.unwrap();
    let _deaf = c2.stream_diagnose(ReceiverStream::new(rx)).await.unwrap();
    let feeder = tokio::spawn(async move {
        let mut at = 0u64;
        loop {
            let c = &samples[..4096.min(samples.len())];
            if tx.send(chunk(at, c)).await.is_err() {
                break;
            }
            at += c.len() as u64;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(Duration::from_secs(8), running.stop())
        .await
        .expect("the server stopped despite stalled clients");
    let status = tokio::time::timeout(Duration::from_secs(5), silent)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    drop(silent_tx);
    feeder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aged_connection_ends_its_streams_with_a_resume_point_and_the_client_carries_on() {
    // An age of two windows' duration, so that every connection delivers windows before it ages out.
    let age_ms = (2 * common::window() as u64 * 1000 / 12_000).max(1000);
    let running = common::start(&["--max-connection-age", &format!("{age_ms}ms")]).await;
    let addr = common::addr(&running);
    let (_, samples) = common::recordings().remove(6);
    // Three ages of signal at real-time pace: the connection reaches its age mid-stream.
    let frames = 3 * age_ms * 12;
    let targets = drsn_client::Targets::plain([addr]).unwrap();
    let mut plan = StreamPlan::new(12_000.0, frames);
    plan.realtime = true;
    let out = replay::stream_resuming(&targets, samples, plan, 10, |_| {})
        .await
        .unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert!(out.resumed >= 1, "the stream was never aged out");
    // Every window exactly once, across the reconnections: contiguous starts, one hop apart.
    let (w, h) = (common::window() as u64, common::hop() as u64);
    let starts: Vec<u64> = out.windows.iter().map(|r| r.first_sample_index).collect();
    let expected: Vec<u64> = (0..=(frames - w) / h).map(|k| k * h).collect();
    assert_eq!(starts, expected);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_hands_over_and_its_unanswered_windows_are_computed_again() {
    let a = common::ServerProcess::spawn(&["--workers", "1"]);
    let b = common::ServerProcess::spawn(&["--workers", "1"]);
    let (_, samples) = common::recordings().remove(6);
    let (w, h) = (common::window() as u64, common::hop() as u64);
    // Seven windows at real-time pace (about 2.7 s): the kill lands mid-stream.
    let frames = w + 6 * h;
    let target = |addrs: &[&String]| drsn_client::Targets::plain(addrs.to_vec()).unwrap();
    let reference = replay::stream_resuming(
        &target(&[&b.addr]),
        samples.clone(),
        StreamPlan::new(12_000.0, frames),
        0,
        |_| {},
    )
    .await
    .unwrap();
    let mut plan = StreamPlan::new(12_000.0, frames);
    plan.realtime = true;
    let targets = target(&[&a.addr, &b.addr]);
    let victim = std::sync::Mutex::new(Some(a));
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let out = replay::stream_resuming(&targets, samples, plan, 5, |_| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            // SIGKILL (dropping the process kills it): no drain, no status, no resume point.
            drop(victim.lock().unwrap().take());
        }
    })
    .await
    .unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert!(out.resumed >= 1, "the stream never moved");
    let key = |o: &replay::StreamOutcome| -> Vec<(u64, String)> {
        o.windows
            .iter()
            .map(|r| (r.first_sample_index, r.label.clone()))
            .collect()
    };
    // Every window once, in order, with the class an uninterrupted run gives it.
    assert_eq!(key(&out), key(&reference));
    assert_eq!(out.windows.len() as u64, (frames - w) / h + 1);
}
