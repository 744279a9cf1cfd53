//! End to end over loopback gRPC with real CWRU recordings: every window once, in order, with the right sample
//! ranges and the right class; many concurrent streams kept apart; gaps reported; bad input refused per stream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::Duration;

use drsn_serve::api::grpc::proto::diagnosis_client::DiagnosisClient;
use drsn_serve::api::grpc::proto::stream_diagnose_response::Event;
use drsn_serve::api::grpc::proto::{FloatSamples, StreamDiagnoseRequest};
use drsn_serve::client::replay::{self, StreamPlan};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use common::{chunk, open};

/// Sends `messages` on a stream kept open, and returns the status the server ends it with.
async fn status_of(addr: String, messages: Vec<StreamDiagnoseRequest>) -> tonic::Status {
    let (tx, rx) = mpsc::channel(16);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let result = match common::call(addr, rx).await {
        Err(status) => status,
        Ok(mut inbound) => loop {
            match tokio::time::timeout(Duration::from_secs(20), inbound.message())
                .await
                .expect("server answers")
            {
                Ok(Some(_)) => continue,
                Ok(None) => break tonic::Status::ok("stream ended without an error"),
                Err(status) => break status,
            }
        },
    };
    drop(tx);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_recordings_get_every_window_once_in_order_and_right() {
    let running = common::start(&[]).await;
    let channel = replay::connect(&common::addr(&running)).await.unwrap();
    let w = common::window();
    for (label, samples) in common::recordings() {
        let mut plan = StreamPlan::new(12_000.0, samples.len() as u64);
        // Back-to-back windows, as the model card's accuracy was measured; odd chunk sizes straddle windows.
        plan.hop = w as u32;
        plan.chunk_frames = 1000;
        let out = replay::stream_samples(channel.clone(), samples.clone(), plan, |_| {})
            .await
            .unwrap();
        assert!(out.status.is_none(), "{label}: {:?}", out.status);
        let expected = common::windows_in(samples.len(), w, w);
        assert_eq!(
            out.windows.len(),
            expected,
            "{label}: every window exactly once"
        );
        for (k, w) in out.windows.iter().enumerate() {
            assert_eq!(w.window_index, k as u64, "{label}: in order");
            let at = (k * common::window()) as u64;
            assert_eq!(
                (w.first_sample_index, w.last_sample_index),
                (at, at + common::window() as u64 - 1)
            );
            assert_eq!(w.model_name, "drsn-cw-cwru");
        }
        let right = out.windows.iter().filter(|w| w.label == label).count();
        // The card's clean accuracy is 100%.
        assert_eq!(
            right, expected,
            "{label}: {right}/{expected} windows classified right"
        );
        assert_eq!(out.opened.as_ref().map(|o| o.hop), Some(w as u32));
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streams_never_see_each_others_results() {
    let running = common::start(&[]).await;
    let channel = replay::connect(&common::addr(&running)).await.unwrap();
    let recs = common::recordings();
    let (w, h) = (common::window(), common::hop());
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (label, samples) = recs[i % recs.len()].clone();
            // Cap each stream at 30 windows; stream i starts its indices at i * 1e9, so a foreign result shows.
            let frames = (samples.len() as u64).min((w + 29 * h) as u64);
            let samples = Arc::new(samples[..frames as usize].to_vec());
            let channel = channel.clone();
            tokio::spawn(async move {
                let plan = StreamPlan::new(12_000.0, frames);
                let base = i as u64 * 1_000_000_000;
                // Shift indices by re-basing: send with an offset through a gap-free stream starting at `base`.
                let out = stream_from(channel, samples, plan, base).await;
                (label, frames, base, out)
            })
        })
        .collect();
    for t in tasks {
        let (label, frames, base, windows) = t.await.unwrap();
        let expected = common::windows_in(frames as usize, w, h);
        assert_eq!(windows.len(), expected);
        for (k, r) in windows.iter().enumerate() {
            assert_eq!(r.window_index, k as u64);
            assert_eq!(
                r.first_sample_index,
                base + (k * h) as u64,
                "a result from another stream"
            );
        }
        let right = windows.iter().filter(|w| w.label == label).count();
        assert!(right * 10 >= expected * 9, "{label}: {right}/{expected}");
    }
    running.stop().await;
}

/// Streams `samples` with sample indices starting at `base`; returns the window results.
async fn stream_from(
    client: drsn_serve::client::connect::Client,
    samples: Arc<Vec<f32>>,
    plan: StreamPlan,
    base: u64,
) -> Vec<drsn_serve::api::grpc::proto::WindowResult> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(open(plan.sample_rate_hz, 1, 0)).await.unwrap();
    let sender = tokio::spawn(async move {
        for (k, c) in samples.chunks(plan.chunk_frames).enumerate() {
            if tx
                .send(chunk(base + (k * plan.chunk_frames) as u64, c.to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut client = client;
    let mut inbound = client
        .stream_diagnose(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut windows = Vec::new();
    while let Some(m) = inbound.message().await.unwrap() {
        if let Some(Event::Window(w)) = m.event {
            windows.push(w);
        }
    }
    sender.await.unwrap();
    windows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_reported_and_windowing_restarts() {
    let running = common::start(&[]).await;
    let (_, samples) = common::recordings().remove(3);
    let (w, h) = (common::window(), common::hop());
    let (a, g) = (w + h / 2, (w + h / 2 + 2000) as u64);
    let o = g + 1000;
    let (tx, rx) = mpsc::channel(8);
    tx.send(open(12_000.0, 1, 0)).await.unwrap();
    tx.send(chunk(0, samples[..a].to_vec())).await.unwrap(); // window 0 only
    tx.send(chunk(g, samples[..w].to_vec())).await.unwrap(); // gap: restart at g
    tx.send(chunk(o, samples[..100].to_vec())).await.unwrap(); // overlap (expected g + w): restart at o
    tx.send(chunk(o + 100, samples[..w - 100].to_vec()))
        .await
        .unwrap();
    drop(tx);
    let mut inbound = common::call(common::addr(&running), rx).await.unwrap();
    let mut events = Vec::new();
    while let Some(m) = inbound.message().await.unwrap() {
        match m.event.unwrap() {
            Event::Window(r) => events.push(format!(
                "w{} {}..{}",
                r.window_index, r.first_sample_index, r.last_sample_index
            )),
            Event::Discontinuity(d) => events.push(format!(
                "gap {}->{} -{}",
                d.expected, d.received, d.samples_discarded
            )),
            Event::Opened(_) | Event::Condition(_) => {}
        }
    }
    let w = w as u64;
    assert_eq!(
        events,
        [
            format!("w0 0..{}", w - 1),
            // Samples after the next window's start (h) were owed to a window that never completed.
            format!("gap {a}->{g} -{}", a as u64 - h as u64),
            format!("w1 {g}..{}", g + w - 1),
            format!("gap {}->{o} -{}", g + w, w - h as u64),
            format!("w2 {o}..{}", o + w - 1),
        ],
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_48khz_stream_is_resampled_and_classified() {
    let running = common::start(&[]).await;
    let (label, samples) = common::recordings().remove(0);
    // Upsample the 12 kHz recording 4x by linear interpolation: the server must bring it back to 12 kHz.
    let up: Vec<f32> = samples
        .windows(2)
        .flat_map(|p| (0..4).map(move |k| p[0] + (p[1] - p[0]) * k as f32 / 4.0))
        .collect();
    let (w, h) = (common::window(), common::hop());
    let frames = up.len().min(4 * (w + 9 * h) + 4 * h);
    let channel = replay::connect(&common::addr(&running)).await.unwrap();
    let plan = StreamPlan::new(48_000.0, frames as u64);
    let out = replay::stream_samples(channel, Arc::new(up[..frames].to_vec()), plan, |_| {})
        .await
        .unwrap();
    assert!(out.opened.as_ref().unwrap().resampled);
    // Every window the model-rate signal holds (10 with the full recording, fewer with the committed excerpt).
    let model_rate = frames / 4;
    assert_eq!(out.windows.len(), common::windows_in(model_rate, w, h));
    for (k, r) in out.windows.iter().enumerate() {
        assert_eq!(
            r.first_sample_index,
            (4 * k * h) as u64,
            "window {k} maps back to 48 kHz indices"
        );
    }
    let right = out.windows.iter().filter(|w| w.label == label).count();
    assert!(
        right * 10 >= out.windows.len() * 9,
        "{label}: {right}/{}",
        out.windows.len()
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_only_its_own_stream() {
    let running = common::start(&["--max-chunk-frames", "4096"]).await;
    let addr = common::addr(&running);
    // A good stream runs the whole time.
    let recs = common::recordings();
    let good_samples = recs[5].1.clone();
    let good = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let channel = replay::connect(&addr).await.unwrap();
            let mut plan = StreamPlan::new(12_000.0, good_samples.len() as u64);
            plan.realtime = false;
            replay::stream_samples(channel, good_samples, plan, |_| {})
                .await
                .unwrap()
        })
    };
    let good_chunk = || chunk(0, vec![0.1; 512]);
    let cases: Vec<(&str, Vec<StreamDiagnoseRequest>, &str)> = vec![
        (
            "no open",
            vec![good_chunk()],
            "first message of a stream must be `open`",
        ),
        (
            "channels",
            vec![open(12_000.0, 2, 0), good_chunk()],
            "channels = 2",
        ),
        (
            "non-finite",
            vec![
                open(12_000.0, 1, 0),
                chunk(0, vec![0.0, 1.0, f32::INFINITY]),
            ],
            "must be finite",
        ),
        ("rate zero", vec![open(0.0, 1, 0)], "sample_rate_hz = 0"),
        ("rate negative", vec![open(-12_000.0, 1, 0)], "above 0"),
        (
            "rate unservable",
            vec![open(1_000.0, 1, 0)],
            "lacks the band",
        ),
        (
            "chunk too large",
            // Just over: a message much larger is refused from its header, as over the size limit.
            vec![open(12_000.0, 1, 0), chunk(0, vec![0.0; 4097])],
            "over the limit of 4096",
        ),
        ("unknown enum", vec![open(12_000.0, 1, 99)], "detail = 99"),
        (
            "open twice",
            vec![open(12_000.0, 1, 0), open(12_000.0, 1, 0)],
            "`open` was sent twice",
        ),
    ];
    let checks: Vec<_> = cases
        .into_iter()
        .map(|(name, msgs, text)| {
            let addr = addr.clone();
            tokio::spawn(async move { (name, text, status_of(addr, msgs).await) })
        })
        .collect();
    for c in checks {
        let (name, text, status) = c.await.unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(text),
            "{name}: message `{}` does not say `{text}`",
            status.message()
        );
    }
    let good = good.await.unwrap();
    assert!(
        good.status.is_none(),
        "the good stream was harmed: {:?}",
        good.status
    );
    assert_eq!(
        good.window_count as usize,
        common::windows_in(recs[5].1.len(), common::window(), common::hop())
    );
    let scrape = common::scrape(&running).await;
    assert!(
        common::metric(
            &scrape,
            r#"drsn_errors_total{reason="non_finite",code="INVALID_ARGUMENT"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "errors are counted by reason and code"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_refuses_bad_windows_and_a_full_queue() {
    // One worker taking one window at a time, and a small queue, so a streaming client can fill it.
    let running = common::start(&[
        "--workers",
        "1",
        "--max-batch",
        "1",
        "--queue-capacity",
        "8",
        "--max-unary-windows",
        "8",
    ])
    .await;
    let mut client = DiagnosisClient::connect(common::addr(&running))
        .await
        .unwrap();
    // Real samples: a constant window would be flagged flat and never reach the queue.
    let real = common::recordings().remove(4).1;
    let win = |n: usize| drsn_serve::api::grpc::proto::Window {
        samples: Some(drsn_serve::api::grpc::proto::window::Samples::Values(
            FloatSamples {
                values: real[..n].to_vec(),
            },
        )),
    };
    let req = |windows| drsn_serve::api::grpc::proto::DiagnoseRequest {
        windows,
        ..Default::default()
    };
    let w = common::window();
    let e = client
        .diagnose(req(vec![win(w), win(100)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("window 1 has 100 samples"),
        "{}",
        e.message()
    );
    let e = client.diagnose(req(vec![])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client
        .diagnose(req((0..9).map(|_| win(w)).collect()))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "over --max-unary-windows: {e:?}"
    );

    // A stream floods the queue; unary calls meanwhile get RESOURCE_EXHAUSTED rather than waiting.
    let (_, samples) = common::recordings().remove(1);
    let flood = {
        let channel = replay::connect(&common::addr(&running)).await.unwrap();
        let mut plan = StreamPlan::new(12_000.0, (w + 400 * 128) as u64);
        plan.hop = 128;
        plan.keep_windows = false;
        tokio::spawn(replay::stream_samples(channel, samples, plan, |_| {}))
    };
    let mut exhausted = None;
    for _ in 0..500 {
        match client.diagnose(req((0..4).map(|_| win(w)).collect())).await {
            Err(e) if e.code() == Code::ResourceExhausted => {
                exhausted = Some(e);
                break;
            }
            Err(e) => panic!("unexpected {e:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let e = exhausted.expect("the full queue was never reported");
    assert!(
        e.message()
            .contains("no room for 4 window(s) (8 windows at most)"),
        "{}",
        e.message()
    );
    let flood = flood.await.unwrap().unwrap();
    assert!(flood.status.is_none());
    assert_eq!(flood.window_count, 401, "the streaming client lost nothing");
    let ok = client
        .diagnose(req((0..3).map(|_| win(w)).collect()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results.len(), 3);
    let info = client
        .get_model(drsn_serve::api::grpc::proto::GetModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            info.name.as_str(),
            info.window,
            info.classes.len(),
            info.device.as_str()
        ),
        ("drsn-cw-cwru", w as u32, 10, "cpu")
    );
    running.stop().await;
}
