//! Shared test set-up: a real server on loopback, the shipped model, real CWRU recordings.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drsn_serve::api::grpc::proto::diagnosis_client::DiagnosisClient;
use drsn_serve::api::grpc::proto::stream_diagnose_request::Message;
use drsn_serve::api::grpc::proto::{
    FloatSamples, SampleChunk, StreamDiagnoseRequest, StreamDiagnoseResponse, StreamOpen,
    sample_chunk,
};
use drsn_serve::client::recording::{ReadOptions, read_recording};
use drsn_serve::pipeline::resample::StreamResampler;
use drsn_serve::server::config::ServeConfig;
use drsn_serve::server::{self, Running};

pub(crate) const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Metrics are process-wide: a test that asserts on gauges or exact counts holds this, so that in-process servers
/// of other tests in the same binary do not move them meanwhile.
pub(crate) async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

pub(crate) fn model_card() -> PathBuf {
    Path::new(ROOT).join("models/drsn_cw_cwru.json")
}

fn card() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(model_card()).expect("the card"))
        .expect("card JSON")
}

/// The shipped model's window, in samples at its rate.
pub(crate) fn window() -> usize {
    card()["input"]["window"].as_u64().expect("input.window") as usize
}

/// The shipped model's default hop.
pub(crate) fn hop() -> usize {
    card()["default_hop"].as_u64().expect("default_hop") as usize
}

/// The shipped model's version.
pub(crate) fn model_version() -> String {
    card()["version"].as_str().expect("version").to_owned()
}

/// The shipped model's shrinkage units (the width of its `shrinkage` output).
pub(crate) fn units() -> usize {
    card()["shrinkage_units"].as_u64().expect("shrinkage_units") as usize
}

/// Windows a stream of `n` samples holds at window `w` and hop `h`.
pub(crate) fn windows_in(n: usize, w: usize, h: usize) -> usize {
    if n < w { 0 } else { (n - w) / h + 1 }
}

/// Server settings for tests: loopback, ephemeral ports, the shipped model on CPU. `extra` are CLI flags, and
/// override these defaults.
pub(crate) fn config(extra: &[&str]) -> ServeConfig {
    let card = model_card();
    let mut args = vec![
        "serve".to_owned(),
        "--model".into(),
        card.to_string_lossy().into_owned(),
        "--grpc-addr".into(),
        "127.0.0.1:0".into(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--workers".into(),
        "2".into(),
        "--device".into(),
        "cpu".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    <ServeConfig as clap::Parser>::try_parse_from(args).expect("test flags parse")
}

pub(crate) async fn start(extra: &[&str]) -> TestServer {
    TestServer(Some(
        server::start(config(extra)).await.expect("server starts"),
    ))
}

/// A server started in-process for one test. `stop` drains it and waits until it has stopped; dropped without
/// that (a test that failed), it still begins the drain, so nothing outlives the test's runtime by intent.
pub(crate) struct TestServer(Option<Running>);

impl TestServer {
    pub(crate) async fn stop(mut self) {
        if let Some(running) = self.0.take() {
            running.shutdown();
            running.stopped().await;
        }
    }
}

impl std::ops::Deref for TestServer {
    type Target = Running;
    fn deref(&self) -> &Running {
        self.0.as_ref().expect("a server not yet stopped")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = &self.0 {
            running.shutdown();
        }
    }
}

pub(crate) fn addr(running: &Running) -> String {
    format!("http://{}", running.grpc_addr)
}

/// The CWRU data: `DRSN_CWRU_DIR`, else `../shared/data/cwru`; `None` when neither exists.
pub(crate) fn cwru_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("DRSN_CWRU_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("../shared/data/cwru"));
    dir.join("0HP").is_dir().then_some(dir)
}

/// One 0 hp recording per class at the model's 12 kHz: (class label, samples). The whole file's test segment (its
/// last 20%, which the model never trained on) from the CWRU data when present, else the committed 16,384-sample
/// excerpts. The healthy baseline was recorded at 48 kHz: it is brought to 12 kHz by the server's own resampler.
pub(crate) fn recordings() -> Vec<(String, Arc<Vec<f32>>)> {
    let (dir, test_segment) = match cwru_dir() {
        Some(d) => (d.join("0HP"), true),
        None => {
            eprintln!("CWRU data not found (set DRSN_CWRU_DIR); using the committed excerpts");
            (
                Path::new(ROOT).join("models/training/tests/fixtures/cwru_mini/0HP"),
                false,
            )
        }
    };
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "mat"))
    {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let label = label_of(&name);
        let mut samples = read_recording(f, &ReadOptions::default())
            .expect("recording")
            .samples;
        if test_segment {
            let n = samples.len();
            samples = samples[n - n / 5..].to_vec();
        }
        if let Some(rate) = source_rate_hz(&name).filter(|&r| r != MODEL_RATE_HZ) {
            samples = to_model_rate(&samples, rate);
        }
        out.push((label, Arc::new(samples)));
    }
    assert_eq!(
        out.len(),
        10,
        "one recording per class in {}",
        dir.display()
    );
    out
}

const MODEL_RATE_HZ: usize = 12_000;

/// The rate a CWRU file was recorded at: 48 kHz for a healthy baseline (`normal_*`), else the 12 kHz of the fault
/// files (the data folder's README).
pub(crate) fn source_rate_hz(name: &str) -> Option<usize> {
    name.ends_with(".mat")
        .then_some(if name.starts_with("normal") {
            48_000
        } else {
            MODEL_RATE_HZ
        })
}

/// samples at `rate` Hz brought to the model's 12 kHz by the server's stream resampler.
pub(crate) fn to_model_rate(samples: &[f32], rate: usize) -> Vec<f32> {
    let mut rs = StreamResampler::new(rate, MODEL_RATE_HZ, 1).expect("a supported ratio");
    let mut out = Vec::with_capacity(samples.len() * MODEL_RATE_HZ / rate + 64);
    rs.push(samples, &mut out).expect("resample");
    rs.finish(&mut out).expect("resample tail");
    out
}

/// The class label a CWRU file name stands for.
pub(crate) fn label_of(name: &str) -> String {
    if name.starts_with("normal") {
        return "normal".into();
    }
    let code = name.split('_').nth(3).expect("12k_Drive_End_<code>_...");
    let (kind, size) = code.split_at(code.find(|c: char| c.is_ascii_digit()).expect("size"));
    let kind = match kind {
        "IR" => "inner_race",
        "B" => "ball",
        "OR" => "outer_race",
        other => panic!("unknown fault code {other}"),
    };
    format!("{kind}_{}", &size[..3])
}

/// A field of /proc/<pid>/status in KiB (`VmRSS:`, `VmHWM:`: memory now, and at its peak).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Fetches the Prometheus exposition from a running server.
pub(crate) async fn scrape(running: &Running) -> String {
    scrape_at(running.metrics_addr).await
}

/// Fetches the Prometheus exposition from a metrics address.
pub(crate) async fn scrape_at(metrics: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(metrics)
        .await
        .expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let (head, body) = body.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// Value of the sample `name` (with exactly these labels, e.g. `{api="stream"}` or empty) in an exposition.
pub(crate) fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// One HTTP/1.1 request (`body` sent as JSON when not empty): the status and the JSON body.
pub(crate) async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("writes");
    s.write_all(body.as_bytes()).await.expect("writes");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("reads");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// An `open` message for a mono stream.
pub(crate) fn open(rate: f64, channels: u32, detail: i32) -> StreamDiagnoseRequest {
    StreamDiagnoseRequest {
        message: Some(Message::Open(StreamOpen {
            machine_id: "m".into(),
            sensor_id: "s".into(),
            sample_rate_hz: rate,
            channels,
            hop: 0,
            detail,
            ..Default::default()
        })),
    }
}

/// A chunk carried as packed floats.
pub(crate) fn chunk(first: u64, values: Vec<f32>) -> StreamDiagnoseRequest {
    let samples = sample_chunk::Samples::Values(FloatSamples { values });
    StreamDiagnoseRequest {
        message: Some(Message::Chunk(SampleChunk {
            first_sample_index: first,
            samples: Some(samples),
        })),
    }
}

/// A chunk carried as little-endian f32 bytes.
pub(crate) fn chunk_bytes(first: u64, values: &[f32]) -> StreamDiagnoseRequest {
    let samples =
        sample_chunk::Samples::F32le(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    StreamDiagnoseRequest {
        message: Some(Message::Chunk(SampleChunk {
            first_sample_index: first,
            samples: Some(samples),
        })),
    }
}

/// Starts a StreamDiagnose call whose requests come from `rx`.
pub(crate) async fn call(
    addr: String,
    rx: tokio::sync::mpsc::Receiver<StreamDiagnoseRequest>,
) -> Result<tonic::Streaming<StreamDiagnoseResponse>, tonic::Status> {
    let mut client = DiagnosisClient::connect(addr).await.expect("connects");
    Ok(client
        .stream_diagnose(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner())
}

/// The `drsn-serve serve` binary running in its own process on ephemeral ports; killed and reaped on drop.
pub(crate) struct ServerProcess {
    pub child: std::process::Child,
    /// `http://host:port` of its gRPC listener.
    pub addr: String,
    /// Its `/metrics` listener.
    pub metrics: std::net::SocketAddr,
    /// Its KServe V2 REST listener.
    pub http: std::net::SocketAddr,
    /// Bytes it has logged since SERVING.
    pub log_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Its last log lines (JSON), at most [`KEPT_LOG_LINES`].
    pub log: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// Log lines a [`ServerProcess`] keeps for tests to read.
pub(crate) const KEPT_LOG_LINES: usize = 1000;

impl ServerProcess {
    /// Starts the binary with `extra` flags and waits until it logs SERVING.
    pub(crate) fn spawn(extra: &[&str]) -> Self {
        Self::spawn_at("127.0.0.1:0", extra)
    }

    /// As [`spawn`](Self::spawn), its gRPC listener on `grpc_addr` (a server restarted on the same address).
    pub(crate) fn spawn_at(grpc_addr: &str, extra: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drsn-serve"))
            .args([
                "serve",
                "--grpc-addr",
                grpc_addr,
                "--metrics-addr",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .arg("--model")
            .arg(model_card())
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the drsn-serve binary starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let (addr, metrics, http) = loop {
            let line = lines
                .next()
                .expect("the server logs SERVING")
                .expect("log line");
            if line.contains("SERVING") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log");
                let field = |k: &str| v["fields"][k].as_str().expect("address").to_owned();
                break (
                    format!("http://{}", field("grpc_addr")),
                    field("metrics_addr").parse().expect("metrics address"),
                    field("http_addr").parse().expect("HTTP address"),
                );
            }
        };
        // Keep draining the log so the server never blocks on a full pipe, counting what it writes.
        let log_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = log_bytes.clone();
        let log: Arc<std::sync::Mutex<std::collections::VecDeque<String>>> = Arc::default();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                counted.fetch_add(line.len() + 1, std::sync::atomic::Ordering::Relaxed);
                let mut kept = kept.lock().expect("log lock");
                if kept.len() == KEPT_LOG_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Self {
            child,
            addr,
            metrics,
            http,
            log_bytes,
            log,
        }
    }
}

impl ServerProcess {
    /// SIGTERM, as Kubernetes stops a pod: the server drains and exits; its exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM was not delivered");
        self.child.wait().expect("the server exits")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
