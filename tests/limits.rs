//! The limits a shared service needs, each seen from a client: a quiet stream is closed with a resume point, a
//! connection may hold only so many streams and the server only so many connections, silent connections (and half
//! a /metrics request) are closed, ids are bounded and printable, a stream whose resampler would need too much
//! memory is refused, and a client resetting streams in a loop is disconnected. Tests that read process-wide
//! metrics run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use drsn_serve::api::grpc::proto::stream_diagnose_request::Message;
use drsn_serve::api::grpc::proto::{StreamDiagnoseRequest, StreamOpen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Code;

/// Opens a stream that sends `open` (and `chunks`), then keeps it open; returns the call and its request sender.
async fn hold_stream(
    client: &mut drsn_serve::client::connect::Client,
    open: StreamDiagnoseRequest,
    chunks: Vec<StreamDiagnoseRequest>,
) -> (
    Result<tonic::Streaming<drsn_serve::api::grpc::proto::StreamDiagnoseResponse>, tonic::Status>,
    mpsc::Sender<StreamDiagnoseRequest>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(open).await.unwrap();
    for c in chunks {
        tx.send(c).await.unwrap();
    }
    let call = client
        .stream_diagnose(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (call, tx)
}

/// The status a stream ends with (skipping its results).
async fn end_of(
    mut s: tonic::Streaming<drsn_serve::api::grpc::proto::StreamDiagnoseResponse>,
) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => {}
            Ok(None) => return tonic::Status::ok("ended OK"),
            Err(status) => return status,
        }
    }
}

fn open_with(sensor: &str, rate: f64) -> StreamDiagnoseRequest {
    StreamDiagnoseRequest {
        message: Some(Message::Open(StreamOpen {
            machine_id: "press-7".into(),
            sensor_id: sensor.into(),
            sample_rate_hz: rate,
            channels: 1,
            hop: 0,
            detail: 0,
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_is_closed_with_a_resume_point() {
    let _serial = common::serial().await;
    let running = common::start(&["--idle-timeout", "300ms"]).await;
    let mut client = drsn_serve::client::connect::connect(&common::addr(&running))
        .await
        .unwrap();
    let (_, samples) = common::recordings().remove(1);
    // One window and a bit: the next window starts a hop in.
    let (w, h) = (common::window(), common::hop());
    let (call, _tx) = hold_stream(
        &mut client,
        common::open(12_000.0, 1, 0),
        vec![common::chunk(0, samples[..w + h / 2].to_vec())],
    )
    .await;
    let started = Instant::now();
    let status = end_of(call.unwrap()).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Window 0 was cut; the next starts at the hop.
    assert!(
        status
            .message()
            .contains(&format!("resume from sample {h}")),
        "{}",
        status.message()
    );
    // And the trailer says it for programs.
    assert_eq!(
        status
            .metadata()
            .get("drsn-resume-from")
            .unwrap()
            .to_str()
            .unwrap(),
        h.to_string()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let scrape = common::scrape(&running).await;
    assert_eq!(
        common::metric(
            &scrape,
            r#"drsn_errors_total{reason="idle_timeout",code="DEADLINE_EXCEEDED"}"#
        ),
        Some(1.0)
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_and_connections_are_capped() {
    let _serial = common::serial().await;
    let running = common::start(&[
        "--max-streams-per-connection",
        "2",
        "--max-connections",
        "2",
    ])
    .await;
    let addr = common::addr(&running);
    let mut first = drsn_serve::client::connect::connect(&addr).await.unwrap();
    let (a, _ta) = hold_stream(&mut first, common::open(12_000.0, 1, 0), vec![]).await;
    let (b, _tb) = hold_stream(&mut first, common::open(12_000.0, 1, 0), vec![]).await;
    assert!(a.is_ok() && b.is_ok());
    let (c, _tc) = hold_stream(&mut first, common::open(12_000.0, 1, 0), vec![]).await;
    let status = match c {
        Err(s) => s,
        Ok(s) => end_of(s).await,
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("this connection already has 2 open streams")
    );

    // A second connection is still welcome; a third is closed as it arrives.
    let mut second = drsn_serve::client::connect::connect(&addr).await.unwrap();
    let (d, _td) = hold_stream(&mut second, common::open(12_000.0, 1, 0), vec![]).await;
    assert!(d.is_ok(), "another connection gets its own streams");
    let third = drsn_serve::client::connect::connect(&addr).await;
    let refused = match third {
        Err(_) => true,
        Ok(mut c) => c
            .get_model(drsn_serve::api::grpc::proto::GetModelRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a connection over --max-connections was served");
    let scrape = common::scrape(&running).await;
    assert!(
        common::metric(
            &scrape,
            r#"drsn_connections_closed_total{listener="grpc",reason="max_connections"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        common::metric(&scrape, r#"drsn_connections{listener="grpc"}"#),
        Some(2.0)
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_half_requests_are_closed() {
    let _serial = common::serial().await;
    let running = common::start(&["--connection-idle-timeout", "300ms"]).await;
    // A TCP connection that never says a word to the gRPC port.
    let mut silent = tokio::net::TcpStream::connect(running.grpc_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    // The server may say goodbye (an HTTP/2 frame) before it closes; read until the end.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(silent.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await;
    assert!(closed.is_ok(), "the server closes a silent connection");
    // Half a /metrics request.
    let mut half = tokio::net::TcpStream::connect(running.metrics_addr)
        .await
        .unwrap();
    half.write_all(b"GET /metr").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut rest))
        .await
        .expect("the server closes a half-sent request")
        .ok();
    let scrape = common::scrape(&running).await;
    for listener in ["grpc", "metrics"] {
        let series =
            format!(r#"drsn_connections_closed_total{{listener="{listener}",reason="idle"}}"#);
        assert!(
            common::metric(&scrape, &series).unwrap_or(0.0) >= 1.0,
            "{series}"
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_bounded_and_printable() {
    let running = common::start(&["--max-id-bytes", "32"]).await;
    let mut client = drsn_serve::client::connect::connect(&common::addr(&running))
        .await
        .unwrap();
    for (sensor, text) in [
        ("a\nforged log line", "control character"),
        ("\u{1b}[31mred", "control character"),
        (&"x".repeat(33) as &str, "at most 32"),
    ] {
        let (call, _tx) = hold_stream(&mut client, open_with(sensor, 12_000.0), vec![]).await;
        let status = match call {
            Err(s) => s,
            Ok(s) => end_of(s).await,
        };
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{sensor:?}: {status:?}"
        );
        assert!(status.message().contains(text), "{}", status.message());
    }
    let (ok, _tx) = hold_stream(&mut client, open_with("Lager Süd / DE-3", 12_000.0), vec![]).await;
    assert!(ok.is_ok());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_resampler_needs_too_much_memory_is_refused() {
    let _serial = common::serial().await;
    // Room for a plain stream and a 48 kHz one, not for 11,997 Hz (reduced ratio 3999:4000: large FFTs); four
    // windows in flight, so the budget does not depend on the model's window length much.
    let running = common::start(&["--max-stream-memory", "1400000", "--stream-buffer", "4"]).await;
    let mut client = drsn_serve::client::connect::connect(&common::addr(&running))
        .await
        .unwrap();
    let mut open = Vec::new();
    for rate in [12_000.0, 48_000.0] {
        let (call, tx) = hold_stream(&mut client, open_with("s", rate), vec![]).await;
        assert!(call.is_ok(), "{rate} Hz");
        open.push((call, tx));
    }
    let (call, _tx) = hold_stream(&mut client, open_with("s", 11_997.0), vec![]).await;
    let status = match call {
        Err(s) => s,
        Ok(s) => end_of(s).await,
    };
    // It could never fit under this limit: the request is wrong here, not the server busy (no "retry later").
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("resampler") && status.message().contains("never"),
        "{}",
        status.message()
    );
    let scrape = common::scrape(&running).await;
    // The two open streams are budgeted (over 1 MiB each).
    assert!(common::metric(&scrape, "drsn_stream_memory_bytes").unwrap() > 2.0 * 1024.0 * 1024.0);
    drop(open);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_streams_in_a_loop_is_disconnected() {
    let running = common::start(&["--http2-max-pending-resets", "20"]).await;
    let tcp = tokio::net::TcpStream::connect(running.grpc_addr)
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut refused = false;
    for _ in 0..5000 {
        let request = http::Request::post("http://localhost/drsn.v1.Diagnosis/StreamDiagnose")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let ready = match tokio::time::timeout(Duration::from_secs(5), h2.clone().ready()).await {
            Ok(Ok(r)) => r,
            _ => {
                refused = true;
                break;
            }
        };
        h2 = ready;
        match h2.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        refused || closed.is_ok(),
        "the connection survived 5000 rapid resets"
    );
    // The server itself is fine.
    let mut client = drsn_serve::client::connect::connect(&common::addr(&running))
        .await
        .unwrap();
    client
        .get_model(drsn_serve::api::grpc::proto::GetModelRequest::default())
        .await
        .unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_stream_cannot_hold_its_slot() {
    let _serial = common::serial().await;
    // A sample every 200 ms never fills a window: the stream is closed although it never goes quiet. The allowance
    // is --idle-timeout, or twice a window and a hop of signal (about 2 s for the shipped model) if longer.
    let running = common::start(&["--idle-timeout", "1s"]).await;
    let mut client = drsn_serve::client::connect::connect(&common::addr(&running))
        .await
        .unwrap();
    let (call, tx) = hold_stream(&mut client, open_with("trickle", 12_000.0), vec![]).await;
    let mut call = call.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for i in 0..40u64 {
            if tx
                .send(common::chunk(i, vec![0.01 * i as f32]))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(6), call.message()).await {
            Err(_) => panic!(
                "the trickling stream still holds its slot after {:?}",
                started.elapsed()
            ),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("the stream ended OK"),
            Ok(Err(status)) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no window completed"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("resume from sample 0"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    trickle.abort();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_and_resetting_streams_in_a_loop_cannot_flood_the_log() {
    // The real binary at its default log level: one client opens 2,000 streams with 128-byte ids and resets each
    // once it is answered. Every opened stream used to write its line (about 1.25 MB/s from one client).
    let server = common::ServerProcess::spawn(&[]);
    let client = drsn_serve::client::connect::connect(&server.addr)
        .await
        .unwrap();
    let id = "x".repeat(128);
    let started = Instant::now();
    let opens = 2_000;
    for batch in 0..opens / 100 {
        let mut calls = Vec::new();
        for k in 0..100 {
            let mut client = client.clone();
            let open = StreamDiagnoseRequest {
                message: Some(Message::Open(StreamOpen {
                    machine_id: id.clone(),
                    sensor_id: format!("{id:.120}{batch:04}{k:03}"),
                    sample_rate_hz: 12_000.0,
                    channels: 1,
                    hop: 0,
                    detail: 0,
                    ..Default::default()
                })),
            };
            calls.push(tokio::spawn(async move {
                let (call, tx) = hold_stream(&mut client, open, vec![]).await;
                let mut call = call.unwrap();
                call.message().await.unwrap().expect("the opened message");
                drop(tx);
                drop(call); // reset
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
    }
    let elapsed = started.elapsed();
    // Let the server finish writing what it will.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged = server.log_bytes.load(std::sync::atomic::Ordering::Relaxed);
    // The budget: a burst of 100 lines, then 20 a second, of about 450 bytes each, and a summary now and then.
    let bound = 100 * 600 + (elapsed.as_secs_f64().ceil() as usize + 1) * 20 * 600;
    assert!(
        logged <= bound,
        "{opens} stream opens in {elapsed:?} logged {logged} bytes; the bound is {bound}"
    );
    let scrape = common::scrape_at(server.metrics).await;
    let suppressed = common::metric(
        &scrape,
        r#"drsn_log_lines_suppressed_total{site="stream_opened"}"#,
    )
    .unwrap();
    assert!(suppressed >= 1000.0, "{suppressed} lines held back");
}
