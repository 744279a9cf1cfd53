//! The gRPC front door's limits, each seen from a client and measured where it is about memory: a message is refused
//! from its 5-byte header when it is over its method's limit (streams) or over the request memory budget (unary
//! calls), a V2 request that could never be served is refused before it is decoded, a response holds each output
//! once, V2 health is open to probes when tokens are required, and errors quote client text briefly. Memory figures
//! are the server process's VmRSS / VmHWM from /proc.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use drsn_serve::api::kserve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use drsn_serve::api::kserve::proto::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use drsn_serve::api::kserve::proto::{self as pb};
use prost::Message;
use tonic::Code;
use tonic::codegen::Bytes;

const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const DIAGNOSE: &str = "/drsn.v1.Diagnosis/Diagnose";
const STREAM: &str = "/drsn.v1.Diagnosis/StreamDiagnose";
const TOKEN: &str = "0123456789abcdef0123";

fn model_name() -> String {
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::model_card()).unwrap()).unwrap();
    card["name"].as_str().unwrap().to_owned()
}

/// A ModelInfer request of one window of a sine wave, asking for `outputs` (all when empty).
fn infer_request(model: &str, outputs: &[&str]) -> pb::ModelInferRequest {
    let window = common::window();
    let raw: Vec<u8> = (0..window)
        .flat_map(|i| ((i as f32 * 0.05).sin()).to_le_bytes())
        .collect();
    pb::ModelInferRequest {
        model_name: model.into(),
        model_version: String::new(),
        id: String::new(),
        parameters: Default::default(),
        inputs: vec![InferInputTensor {
            name: "vibration".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1, window as i64],
            parameters: Default::default(),
            contents: None,
        }],
        outputs: outputs
            .iter()
            .map(|o| InferRequestedOutputTensor {
                name: (*o).into(),
                parameters: Default::default(),
            })
            .collect(),
        raw_input_contents: vec![raw.into()],
    }
}

fn socket(addr: &str) -> SocketAddr {
    addr.trim_start_matches("http://").parse().unwrap()
}

/// An HTTP/2 connection on which the test writes gRPC bodies byte by byte.
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    h2
}

/// Starts a call on `path`; the body stays open until the returned stream ends it.
async fn raw_call(
    h2: &mut h2::client::SendRequest<Bytes>,
    path: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let ready = h2.clone().ready().await.unwrap();
    *h2 = ready;
    let request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    h2.send_request(request, false).unwrap()
}

/// The 5-byte gRPC message header: not compressed, `len` bytes follow.
fn header(len: u32) -> Vec<u8> {
    let mut h = vec![0u8];
    h.extend_from_slice(&len.to_be_bytes());
    h
}

fn framed(message: &[u8]) -> Bytes {
    let mut out = header(message.len() as u32);
    out.extend_from_slice(message);
    out.into()
}

/// The grpc-status and grpc-message a raw call ended with (trailers-only, or after its messages).
async fn outcome(response: h2::client::ResponseFuture) -> (i32, String) {
    let response = response.await.unwrap();
    let pick = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|s| {
            let code = s.to_str().unwrap().parse().unwrap();
            let message = h
                .get("grpc-message")
                .map(|m| m.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (code, message)
        })
    };
    if let Some(done) = pick(response.headers()) {
        return done;
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    pick(&trailers).unwrap_or((-1, "no grpc-status".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_asked_for_twice_is_refused_and_named() {
    let running = common::start(&[]).await;
    let mut v2 = GrpcInferenceServiceClient::connect(common::addr(&running))
        .await
        .unwrap();
    let model = model_name();
    let ok = v2
        .model_infer(infer_request(&model, &["label", "status"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.outputs.len(), 2);
    let err = v2
        .model_infer(infer_request(&model, &["label", "logits", "label"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("\"label\"") && err.message().contains("more than once"),
        "{}",
        err.message()
    );
    let long = "y".repeat(100_000);
    let err = v2
        .model_infer(infer_request(&model, &[&long]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 300, "{}", err.message());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_stream_messages_over_the_chunk_limit_are_refused_from_their_header() {
    let server = common::ServerProcess::spawn(&[]);
    let pid = server.child.id();
    let addr = socket(&server.addr);
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(h2_connect(addr).await);
    }
    let open = framed(&common::open(12_000.0, 1, 0).encode_to_vec());
    let before = common::proc_status_kib(pid, "VmRSS:");
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..256 {
        let (response, mut body) = raw_call(&mut conns[i % 8], STREAM).await;
        body.send_data(open.clone(), false).unwrap();
        // A 16 MiB message declared, 8 KiB of it sent; the body stays open.
        let mut partial = header(16 << 20);
        partial.extend_from_slice(&[0u8; 8 << 10]);
        body.send_data(partial.into(), false).unwrap();
        calls.push((response, body));
    }
    let mut ends = Vec::new();
    for (response, body) in calls {
        let end = tokio::time::timeout(Duration::from_secs(10), outcome(response))
            .await
            .expect("the stream ends without waiting for the rest of the message");
        ends.push((end, body));
    }
    let elapsed = started.elapsed();
    let during = common::proc_status_kib(pid, "VmRSS:");
    let peak = common::proc_status_kib(pid, "VmHWM:");
    for ((code, message), _) in &ends {
        assert_eq!(*code, 3, "INVALID_ARGUMENT: {message}");
        assert!(message.contains("size%20limit"), "{message}");
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "256 streams x 16 MiB declared: VmRSS {before} -> {during} KiB, VmHWM {peak} KiB (+{grew} KiB), {elapsed:?}"
    );
    assert!(
        grew < 64 << 10,
        "peak RSS grew {grew} KiB (bound: 64 MiB) for 256 half-sent 16 MiB messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_requests_reserve_the_request_budget_from_their_header() {
    let server = common::ServerProcess::spawn(&["--max-request-memory", "1000000"]);
    let mut h2 = h2_connect(socket(&server.addr)).await;
    // Holds 3 x 300,000 bytes of the 1,000,000 budget while its body is awaited.
    let (held, mut held_body) = raw_call(&mut h2, INFER).await;
    let mut partial = header(300_000);
    partial.extend_from_slice(&[0u8; 1024]);
    held_body.send_data(partial.into(), false).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another does not fit now: retry later.
    let (busy, mut busy_body) = raw_call(&mut h2, INFER).await;
    busy_body.send_data(header(100_000).into(), false).unwrap();
    let (code, message) = tokio::time::timeout(Duration::from_secs(5), outcome(busy))
        .await
        .expect("answered from the header alone");
    assert_eq!(code, 8, "RESOURCE_EXHAUSTED: {message}");
    assert!(message.contains("retry"), "{message}");
    // One that could never fit is a client error, on either service.
    for path in [INFER, DIAGNOSE] {
        let (big, mut big_body) = raw_call(&mut h2, path).await;
        big_body.send_data(header(400_000).into(), false).unwrap();
        let (code, message) = tokio::time::timeout(Duration::from_secs(5), outcome(big))
            .await
            .expect("answered from the header alone");
        assert_eq!(code, 3, "INVALID_ARGUMENT: {message}");
        assert!(message.contains("split"), "{message}");
    }
    // The held request goes away: its bytes are given back and a real request is served.
    held_body.send_reset(h2::Reason::CANCEL);
    drop(held);
    let mut v2 = GrpcInferenceServiceClient::connect(server.addr.clone())
        .await
        .unwrap();
    let mut served = false;
    for _ in 0..20 {
        match v2.model_infer(infer_request(&model_name(), &[])).await {
            Ok(_) => {
                served = true;
                break;
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    assert!(served, "the budget was given back");
    let scrape = common::scrape_at(server.metrics).await;
    assert_eq!(
        common::metric(
            &scrape,
            r#"drsn_errors_total{reason="request_memory",code="RESOURCE_EXHAUSTED"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        common::metric(
            &scrape,
            r#"drsn_errors_total{reason="request_too_large",code="INVALID_ARGUMENT"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        common::metric(&scrape, "drsn_request_memory_bytes"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_millions_of_empty_inputs_is_refused_before_it_is_decoded() {
    let server = common::ServerProcess::spawn(&[]);
    let pid = server.child.id();
    let mut h2 = h2_connect(socket(&server.addr)).await;
    // 16,000,000 bytes: eight million empty `inputs` (field 5, length 0).
    let message: Vec<u8> = [0x2au8, 0x00].repeat(8_000_000);
    let before = common::proc_status_kib(pid, "VmRSS:");
    let hwm_before = common::proc_status_kib(pid, "VmHWM:");
    let started = Instant::now();
    let (response, mut body) = raw_call(&mut h2, INFER).await;
    body.send_data(framed(&message), true).unwrap();
    let (code, text) = tokio::time::timeout(Duration::from_secs(20), outcome(response))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let peak = common::proc_status_kib(pid, "VmHWM:");
    let grew = peak.saturating_sub(before);
    eprintln!(
        "16 MB of empty inputs: {elapsed:?}, VmRSS before {before} KiB, VmHWM {hwm_before} -> {peak} KiB (+{grew} KiB over the RSS before)"
    );
    assert_eq!(code, 3, "INVALID_ARGUMENT: {text}");
    assert!(text.contains("input"), "{text}");
    assert!(
        grew < 160 << 10,
        "peak RSS grew {grew} KiB (bound: 160 MiB) for a 16 MB request"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "answered in {elapsed:?} (bound: 2 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_health_is_open_and_the_rest_needs_the_token() {
    let running = common::start(&["--auth-tokens", TOKEN]).await;
    let mut v2 = GrpcInferenceServiceClient::connect(common::addr(&running))
        .await
        .unwrap();
    assert!(
        v2.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        v2.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let model = model_name();
    let err = v2
        .model_metadata(pb::ModelMetadataRequest {
            name: model.clone(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = v2
        .model_infer(infer_request(&model, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = v2
        .model_ready(pb::ModelReadyRequest {
            name: model.clone(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // With the token, the rest is served.
    let channel = tonic::transport::Channel::from_shared(common::addr(&running))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    let mut authed =
        GrpcInferenceServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    authed
        .model_metadata(pb::ModelMetadataRequest {
            name: model.clone(),
            version: String::new(),
        })
        .await
        .unwrap();
    authed
        .model_infer(infer_request(&model, &["label"]))
        .await
        .unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_model_name_gets_a_short_not_found() {
    let running = common::start(&[]).await;
    let mut v2 = GrpcInferenceServiceClient::connect(common::addr(&running))
        .await
        .unwrap();
    let name = "m".repeat(1 << 20);
    let err = v2.model_infer(infer_request(&name, &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().len() < 300,
        "{} bytes: {}",
        err.message().len(),
        &err.message()[..err.message().len().min(200)]
    );
    let err = v2
        .model_metadata(pb::ModelMetadataRequest {
            name: model_name(),
            version: "v".repeat(30_000),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().len() < 300, "{} bytes", err.message().len());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_unary_body_gives_its_reservation_back_at_the_read_timeout() {
    let server = common::ServerProcess::spawn(&[
        "--max-request-memory",
        "1000000",
        "--request-read-timeout",
        "1s",
    ]);
    let mut h2 = h2_connect(socket(&server.addr)).await;
    // Declares 300,000 bytes, sends 1 KiB, then nothing: without a deadline it would hold 900,000 of the budget
    // for as long as the connection lives.
    let started = Instant::now();
    let (stalled, mut body) = raw_call(&mut h2, DIAGNOSE).await;
    let mut partial = header(300_000);
    partial.extend_from_slice(&[0u8; 1024]);
    body.send_data(partial.into(), false).unwrap();
    let (code, message) = tokio::time::timeout(Duration::from_secs(5), outcome(stalled))
        .await
        .expect("answered at the read timeout");
    assert_eq!(code, 4, "DEADLINE_EXCEEDED: {message}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let scrape = common::scrape_at(server.metrics).await;
    assert_eq!(
        common::metric(&scrape, "drsn_request_memory_bytes"),
        Some(0.0)
    );
    assert_eq!(
        common::metric(
            &scrape,
            r#"drsn_errors_total{reason="request_read_timeout",code="DEADLINE_EXCEEDED"}"#
        ),
        Some(1.0)
    );
}
