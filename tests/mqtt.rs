//! `drsn-serve bridge mqtt` end to end with a real broker (Debian `mosquitto`) and a real server process: raw
//! messages of two sensors (f32 and 16-bit codes) in, every window's result out once per index, in order, equal to
//! a direct gRPC stream of the same samples; the last condition retained; a malformed payload named on the error
//! topic; and a broker restarted mid-stream, after which the bridge reconnects and resubscribes and, at QoS 1,
//! no window is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ServerProcess;
use drsn_client::sensor::{self, Adc};
use drsn_client::{Event, Sensor, Targets};
use drsn_serve::bridge::mqtt::payload::{Raw, Samples, encode};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use serde_json::Value;

const RATE_HZ: f64 = 12_000.0;
const CHUNK: usize = 4096;
const WINDOWS: usize = 40;
/// A full scale for the 16-bit sensor, in the model's input unit.
const FULL_SCALE: f32 = 8.0;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker on `port`, persisting its sessions in `dir` (a restart keeps queued QoS 1 messages).
struct Broker {
    child: Child,
}

impl Broker {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        // Started as root, mosquitto drops to its own user: it must be able to write its sessions here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {0}/\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (Debian package `mosquitto`; README prerequisites)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }

    /// SIGTERM: mosquitto saves its sessions and exits.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bridge process; its log lines kept.
struct Bridge {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Bridge {
    fn start(server: &str, port: u16, client_id: &str) -> Self {
        Self::start_with(server, port, client_id, &[])
    }

    fn start_with(server: &str, port: u16, client_id: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_drsn-serve"))
            .args(["bridge", "mqtt", "--log-format", "json", "--addr", server])
            .args(["--mqtt-url", &format!("mqtt://127.0.0.1:{port}")])
            .args(["--mqtt-client-id", client_id])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        let bridge = Self { child, log };
        bridge.wait_for("connected to the broker", 1);
        bridge
    }

    /// Waits until `n` log lines contain `text`.
    fn wait_for(&self, text: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log.lock().unwrap();
            if log.iter().filter(|l| l.contains(text)).count() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge never logged {text:?} x{n}:\n{}",
                log.join("\n")
            );
            drop(log);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Bridge {
    /// SIGTERM, as Kubernetes stops a pod; the bridge's exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plant's side: one MQTT client that publishes raw messages and reads results, conditions and errors.
struct Plant {
    client: AsyncClient,
    messages: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Plant {
    async fn connect(port: u16, id: &str) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        // A persistent session: what is published to it while the broker restarts waits for it.
        options
            .set_clean_session(false)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 1024);
        for kind in ["result", "condition", "error"] {
            let topic = format!("drsn/{kind}/+/+");
            client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        }
        let messages: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let kept = messages.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice(&p.payload) {
                            kept.lock().unwrap().push((p.topic.clone(), v));
                        }
                    }
                    Ok(_) => {}
                    // The broker is away: rumqttc dials again on the next poll.
                    Err(err) => {
                        eprintln!("plant: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Self { client, messages }
    }

    async fn publish(&self, machine: &str, sensor: &str, raw: &Raw) {
        let topic = format!("drsn/raw/{machine}/{sensor}");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, encode(raw))
            .await
            .unwrap();
    }

    fn on(&self, topic: &str) -> Vec<Value> {
        let messages = self.messages.lock().unwrap();
        messages
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The window results on `topic` once `n` distinct window indices have arrived.
    async fn windows(&self, topic: &str, n: usize, bridge: &Bridge) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.on(topic);
            let distinct: std::collections::BTreeSet<u64> = got
                .iter()
                .map(|v| v["window_index"].as_u64().unwrap())
                .collect();
            if distinct.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: {} of {n} windows; the bridge logged:\n{}",
                distinct.len(),
                bridge.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The samples of [`WINDOWS`] windows from the recordings, starting `skip` samples in.
fn signal(skip: usize) -> Vec<f32> {
    let all: Vec<f32> = common::recordings()
        .into_iter()
        .flat_map(|(_, s)| s.to_vec())
        .collect();
    let n = common::window() + (WINDOWS - 1) * common::hop();
    all.iter().copied().cycle().skip(skip).take(n).collect()
}

fn codes(values: &[f32]) -> Vec<i16> {
    values
        .iter()
        .map(|v| (v / FULL_SCALE * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

fn adc() -> Adc {
    Adc {
        scale: FULL_SCALE / 32768.0,
        offset: 0.0,
        bits: 16,
    }
}

/// The labels a direct gRPC stream of the same samples gives, by window.
async fn direct(server: &str, values: &[f32], as_codes: bool) -> Vec<String> {
    let targets = Targets::plain([server]).unwrap();
    let mut sensor = Sensor::new("direct", "direct", RATE_HZ);
    if as_codes {
        sensor.adc = Some(adc());
    }
    let (tx, mut results) = sensor::open(targets, sensor, Default::default()).unwrap();
    if as_codes {
        tx.send_codes(&codes(values)).await.unwrap();
    } else {
        tx.send(values).await.unwrap();
    }
    tx.finish();
    let mut labels = Vec::new();
    while let Some(event) = results.next().await {
        if let Event::Window { result, .. } = event.unwrap() {
            labels.push(result.label);
        }
    }
    labels
}

fn raw(first: usize, values: &[f32], as_codes: bool) -> Raw {
    let samples = if as_codes {
        Samples::I16 {
            codes: codes(values),
            scale: FULL_SCALE / 32768.0,
            offset: 0.0,
        }
    } else {
        Samples::F32(values.to_vec())
    };
    Raw {
        channels: 1,
        first_sample_index: first as u64,
        sample_rate_hz: RATE_HZ,
        samples,
    }
}

/// Every window index once (a QoS 1 redelivery may repeat a message: the same result), first arrivals in order,
/// with the direct stream's classes.
fn assert_every_window_once(got: &[Value], want: &[String]) {
    let mut first: BTreeMap<u64, &Value> = BTreeMap::new();
    let mut order = Vec::new();
    for v in got {
        let index = v["window_index"].as_u64().unwrap();
        match first.get(&index) {
            Some(seen) => assert_eq!(*seen, v, "window {index} published twice, differently"),
            None => {
                first.insert(index, v);
                order.push(index);
            }
        }
    }
    assert_eq!(order, (0..want.len() as u64).collect::<Vec<_>>());
    let labels: Vec<String> = first
        .values()
        .map(|v| v["label"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(labels, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_topics_in_results_and_retained_conditions_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(port, dir.path());
    let server = ServerProcess::spawn(&["--workers", "1"]);
    let bridge = Bridge::start(&server.addr, port, "bridge-a");
    let plant = Plant::connect(port, "plant-a").await;
    let (floats, ints) = (signal(0), signal(150_000));
    let want_floats = direct(&server.addr, &floats, false).await;
    let want_ints = direct(&server.addr, &ints, true).await;
    assert_eq!(want_floats.len(), WINDOWS);
    // A malformed message first: named on the sensor's error topic, harming nothing.
    plant
        .client
        .publish(
            "drsn/raw/pump-7/de",
            QoS::AtLeastOnce,
            false,
            b"hello".to_vec(),
        )
        .await
        .unwrap();
    for at in (0..floats.len()).step_by(CHUNK) {
        let end = (at + CHUNK).min(floats.len());
        plant
            .publish("pump-7", "de", &raw(at, &floats[at..end], false))
            .await;
        plant
            .publish("fan-2", "accel", &raw(at, &ints[at..end], true))
            .await;
        // A QoS 1 redelivery of the previous message: dropped as sent already.
        if at == 8 * CHUNK {
            plant
                .publish("pump-7", "de", &raw(at, &floats[at..end], false))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = plant
        .windows("drsn/result/pump-7/de", WINDOWS, &bridge)
        .await;
    assert_every_window_once(&got, &want_floats);
    let got = plant
        .windows("drsn/result/fan-2/accel", WINDOWS, &bridge)
        .await;
    assert_every_window_once(&got, &want_ints);
    let errors = plant.on("drsn/error/pump-7/de");
    assert!(
        errors[0]["error"].as_str().unwrap().contains("header"),
        "{errors:?}"
    );
    // The last condition is retained: a subscriber that comes later still reads it.
    let conditions = plant.on("drsn/condition/pump-7/de");
    assert!(!conditions.is_empty(), "no condition change published");
    let late = Plant::connect(port, "plant-late").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while late.on("drsn/condition/pump-7/de").is_empty() {
        assert!(Instant::now() < deadline, "no retained condition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        late.on("drsn/condition/pump-7/de")[0],
        *conditions.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_mid_stream_loses_no_window_at_qos_1() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(port, dir.path());
    let server = ServerProcess::spawn(&["--workers", "1"]);
    let bridge = Bridge::start(&server.addr, port, "bridge-b");
    let plant = Plant::connect(port, "plant-b").await;
    let values = signal(50_000);
    let want = direct(&server.addr, &values, false).await;
    let chunks: Vec<usize> = (0..values.len()).step_by(CHUNK).collect();
    for (n, &at) in chunks.iter().enumerate() {
        if n == chunks.len() / 2 {
            // Mid-stream: the broker goes away and comes back on the same port, its sessions saved.
            broker.stop();
            tokio::time::sleep(Duration::from_millis(300)).await;
            broker = Broker::start(port, dir.path());
        }
        let end = (at + CHUNK).min(values.len());
        plant
            .publish("pump-7", "de", &raw(at, &values[at..end], false))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = plant
        .windows("drsn/result/pump-7/de", WINDOWS, &bridge)
        .await;
    assert_every_window_once(&got, &want);
    // It came back by itself and subscribed again.
    bridge.wait_for("connected to the broker", 2);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_restarted_mid_stream_hands_its_sensors_over_without_losing_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(port, dir.path());
    let server = ServerProcess::spawn(&["--workers", "1"]);
    let mut first = Bridge::start(&server.addr, port, "bridge-d");
    let plant = Plant::connect(port, "plant-d").await;
    let (floats, ints) = (signal(20_000), signal(90_000));
    let want_floats = direct(&server.addr, &floats, false).await;
    let want_ints = direct(&server.addr, &ints, true).await;
    let chunks: Vec<usize> = (0..floats.len()).step_by(CHUNK / 2).collect();
    let mut second = None;
    for (n, &at) in chunks.iter().enumerate() {
        if n == chunks.len() / 3 {
            // A rolling update: the bridge drains and exits; messages published meanwhile wait at the broker for
            // its session; the next bridge (the same client id) goes on from the tails the first one left.
            assert!(
                first.terminate().success(),
                "the bridge did not close cleanly"
            );
        }
        if n == chunks.len() / 2 {
            second = Some(Bridge::start(&server.addr, port, "bridge-d"));
        }
        let end = (at + CHUNK / 2).min(floats.len());
        plant
            .publish("pump-7", "de", &raw(at, &floats[at..end], false))
            .await;
        plant
            .publish("fan-2", "accel", &raw(at, &ints[at..end], true))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = second.unwrap();
    for (sensor, want) in [("pump-7/de", &want_floats), ("fan-2/accel", &want_ints)] {
        let topic = format!("drsn/result/{sensor}");
        let deadline = Instant::now() + Duration::from_secs(60);
        // By first sample: `window_index` starts again with the second bridge.
        let mut by_first: BTreeMap<u64, String> = BTreeMap::new();
        while by_first.len() < want.len() {
            assert!(
                Instant::now() < deadline,
                "{topic}: {} of {} windows; the first bridge logged:\n{}\nthe second bridge logged:\n{}",
                by_first.len(),
                want.len(),
                first.log.lock().unwrap().join("\n"),
                second.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            for v in plant.on(&topic) {
                let label = v["label"].as_str().unwrap_or("").to_owned();
                let at = v["first_sample_index"].as_u64().unwrap();
                if let Some(seen) = by_first.insert(at, label.clone()) {
                    assert_eq!(seen, label, "window at {at} published twice, differently");
                }
            }
        }
        let hop = common::hop() as u64;
        let firsts: Vec<u64> = by_first.keys().copied().collect();
        assert_eq!(
            firsts,
            (0..want.len() as u64).map(|k| k * hop).collect::<Vec<_>>(),
            "{sensor}"
        );
        assert_eq!(
            by_first.into_values().collect::<Vec<_>>(),
            *want,
            "{sensor}"
        );
    }
    second.wait_for("going on from the previous bridge's tail", 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_streams_on_the_model_it_names_and_names_one_not_served_on_the_error_topic() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(port, dir.path());
    let server = ServerProcess::spawn(&["--workers", "1"]);
    let version = common::model_version();
    let named = [
        "--model",
        "drsn-cw-cwru",
        "--model-version",
        version.as_str(),
    ];
    let bridge = Bridge::start_with(&server.addr, port, "bridge-m", &named);
    let plant = Plant::connect(port, "plant-m").await;
    let values = signal(0);
    let want = common::windows_in(values.len(), common::window(), common::hop());
    for at in (0..values.len()).step_by(CHUNK) {
        let end = (at + CHUNK).min(values.len());
        plant
            .publish("pump-7", "de", &raw(at, &values[at..end], false))
            .await;
    }
    let got = plant.windows("drsn/result/pump-7/de", want, &bridge).await;
    assert!(
        got.iter()
            .all(|v| v["model_name"] == "drsn-cw-cwru" && v["model_version"] == version.as_str()),
        "{got:?}"
    );
    drop(bridge);
    // A model the server does not serve: the sensor's error topic says so, by name.
    let _other = Bridge::start_with(
        &server.addr,
        port,
        "bridge-n",
        &["--model", "no-such-model"],
    );
    plant
        .publish("fan-2", "accel", &raw(0, &values[..CHUNK * 3], false))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let errors = plant.on("drsn/error/fan-2/accel");
        if errors.iter().any(|e| {
            e["error"]
                .as_str()
                .is_some_and(|t| t.contains("no-such-model"))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error naming the model: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
