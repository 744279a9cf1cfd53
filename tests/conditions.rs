//! Machine conditions end to end on the real server: a faulty recording raises FAULT with its class on the stream,
//! the watch, the list, the HTTP JSON and the per-machine metrics; a sine of known velocity comes back with its
//! velocity and zone; a stream moved to another server goes on in FAULT without a new onset; a forged carry is
//! refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::Duration;

use drsn_serve::api::grpc::proto::diagnosis_client::DiagnosisClient;
use drsn_serve::api::grpc::proto::machine_event::Event as Machine;
use drsn_serve::api::grpc::proto::stream_diagnose_request::Message;
use drsn_serve::api::grpc::proto::stream_diagnose_response::Event;
use drsn_serve::api::grpc::proto::{
    Condition, ConditionCarry, ConditionReason, ListMachinesRequest, SensorCondition,
    StreamDiagnoseRequest, StreamDiagnoseResponse, StreamOpen, VibrationZone, WatchMachinesRequest,
};
use drsn_serve::api::grpc::service::CONDITION_TRAILER;
use tokio::sync::mpsc;

const RATE: f64 = 12_000.0;
const CHUNK: usize = 4096;

fn open(machine: &str, carry: Option<ConditionCarry>) -> StreamDiagnoseRequest {
    StreamDiagnoseRequest {
        message: Some(Message::Open(StreamOpen {
            machine_id: machine.into(),
            sensor_id: "DE".into(),
            sample_rate_hz: RATE,
            channels: 1,
            resume_condition: carry,
            ..Default::default()
        })),
    }
}

/// The recording of `label` (looped as long as asked: the committed excerpts are short).
fn recording(label: &str) -> Arc<Vec<f32>> {
    common::recordings()
        .into_iter()
        .find(|(l, _)| l == label)
        .map(|(_, s)| s)
        .expect("a recording of the class")
}

/// Samples `from..to` of `samples` repeated end to end.
fn looped(samples: &[f32], from: usize, to: usize) -> Vec<f32> {
    (from..to).map(|i| samples[i % samples.len()]).collect()
}

/// A stream whose chunks the test sends itself, so that it stays open while the test looks around.
struct Sensor {
    tx: mpsc::Sender<StreamDiagnoseRequest>,
    rx: tonic::Streaming<StreamDiagnoseResponse>,
    sent: usize,
}

impl Sensor {
    async fn open(
        addr: String,
        machine: &str,
        carry: Option<ConditionCarry>,
        start: usize,
    ) -> (Self, SensorCondition) {
        let (tx, rx) = mpsc::channel(64);
        tx.send(open(machine, carry)).await.unwrap();
        let mut rx = common::call(addr, rx).await.unwrap();
        let Some(Event::Opened(o)) = rx.message().await.unwrap().unwrap().event else {
            panic!("opened first")
        };
        let condition = o.condition.expect("the condition a stream opens in");
        (
            Self {
                tx,
                rx,
                sent: start,
            },
            condition,
        )
    }

    /// Sends `seconds` more of `samples` and reads what comes back until the windows of them are in; returns the
    /// condition events.
    async fn send(&mut self, samples: &[f32], seconds: f64) -> Vec<SensorCondition> {
        let end = self.sent + (seconds * RATE) as usize;
        let mut conditions = Vec::new();
        let last_window_end = end - (end - common::window()) % common::hop() - 1;
        while self.sent < end {
            let to = (self.sent + CHUNK).min(end);
            self.tx
                .send(common::chunk_bytes(
                    self.sent as u64,
                    &looped(samples, self.sent, to),
                ))
                .await
                .unwrap();
            self.sent = to;
        }
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), self.rx.message())
                .await
                .expect("results within 30 s")
                .unwrap()
                .expect("the stream goes on")
                .event;
            match event {
                Some(Event::Condition(c)) => conditions.push(c),
                Some(Event::Window(w)) if w.last_sample_index as usize >= last_window_end => {
                    return conditions;
                }
                _ => {}
            }
        }
    }
}

/// The watch's next change of a machine to `condition`, within 10 s.
async fn next_change(
    watch: &mut tonic::Streaming<drsn_serve::api::grpc::proto::MachineEvent>,
    condition: Condition,
) -> drsn_serve::api::grpc::proto::MachineCondition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, watch.message())
            .await
            .unwrap_or_else(|_| panic!("no change to {condition:?} within 10 s"))
            .unwrap()
            .unwrap();
        if let Some(Machine::Changed(m)) = event.event
            && m.condition == condition as i32
        {
            return m;
        }
    }
}

async fn http_get(addr: std::net::SocketAddr, path: impl AsRef<str>) -> (u16, serde_json::Value) {
    common::http(addr, "GET", path.as_ref(), "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_machine_is_seen_faulty_on_the_stream_the_watch_the_list_json_and_metrics() {
    let _serial = common::serial().await;
    let running = common::start(&["--machine-metrics"]).await;
    let addr = common::addr(&running);
    let mut client = DiagnosisClient::connect(addr.clone()).await.unwrap();
    let mut watch = client
        .watch_machines(WatchMachinesRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let Some(Machine::Snapshot(first)) = watch.message().await.unwrap().unwrap().event else {
        panic!("a watch starts with a snapshot")
    };
    assert!(first.machines.is_empty());
    // An HTTP client watches by long polling: the list once something changed after the revision it has.
    let poll = tokio::spawn(http_get(
        running.http_addr,
        format!("/v1/machines?after_revision={}&wait_s=30", first.revision),
    ));

    let faulty = recording("inner_race_007");
    let (mut sensor, start) = Sensor::open(addr.clone(), "pump-7", None, 0).await;
    assert_eq!(start.condition, Condition::Unknown as i32);
    let changes = sensor.send(&faulty, 8.0).await;
    let onset = changes
        .iter()
        .find(|c| c.condition == Condition::Fault as i32)
        .unwrap_or_else(|| panic!("no FAULT in 8 s of an inner-race fault: {changes:?}"));
    assert_eq!(onset.fault_class, "inner_race_007", "{onset:?}");
    assert_eq!(onset.reason, ConditionReason::Condition as i32);
    assert!(
        onset
            .summary
            .starts_with("faulty, most likely inner_race_007"),
        "{}",
        onset.summary
    );
    assert!(onset.carry.is_some() && onset.velocity_rms_mm_s.is_some());
    // Debounced in signal time: not before a second of evidence and the on-delay.
    assert!(onset.since_sample as f64 / RATE >= 0.5, "{onset:?}");

    // The watch saw the machine become faulty.
    let seen = next_change(&mut watch, Condition::Fault).await;
    assert_eq!(
        (seen.machine_id.as_str(), seen.sensor_id.as_str()),
        ("pump-7", "DE")
    );
    assert_eq!(seen.fault_class, "inner_race_007");

    let list = client
        .list_machines(ListMachinesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.machines.len(), 1);
    assert_eq!(list.machines[0].condition, Condition::Fault as i32);
    assert!(list.machines[0].sensors[0].streaming);

    let (code, polled) = poll.await.unwrap();
    assert_eq!(code, 200, "{polled}");
    assert!(polled["revision"].as_u64().unwrap() > first.revision);
    assert_eq!(polled["machines"][0]["machine_id"], "pump-7");
    let (code, _) = http_get(running.http_addr, "/v1/machines?after_revision=soon").await;
    assert_eq!(code, 400);

    let (code, json) = http_get(running.http_addr, "/v1/machines/pump-7").await;
    assert_eq!(code, 200, "{json}");
    assert_eq!(json["machine"]["condition"], "fault");
    assert_eq!(json["machine"]["fault_class"], "inner_race_007");
    let share = json["machine"]["sensors"][0]["shares"]["inner_race_007"]
        .as_f64()
        .unwrap();
    assert!(share > 0.5, "{json}");
    let (code, _) = http_get(running.http_addr, "/v1/machines/no-such-machine").await;
    assert_eq!(code, 404);

    let metrics = common::scrape(&running).await;
    let value = |series: &str| common::metric(&metrics, series);
    assert_eq!(
        value(r#"drsn_machines{condition="fault"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(r#"drsn_machine_condition{machine_id="pump-7",condition="fault"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"drsn_machine_condition{machine_id="pump-7",condition="normal"}"#),
        Some(0.0)
    );
    assert!(
        value(r#"drsn_machine_class_share{machine_id="pump-7",class="inner_race_007"}"#).unwrap()
            > 0.5
    );
    assert!(
        value(r#"drsn_machine_velocity_rms_mm_per_second{machine_id="pump-7"}"#).unwrap() > 0.0
    );
    assert!(
        metrics.lines().any(|l| l.starts_with(r#"drsn_machine_info{machine_id="pump-7",condition="fault",sensor_id="DE",class="inner_race_007",zone=""#)),
        "{metrics}"
    );

    // The sensor's data stops: the machine is UNKNOWN (not dropped, not NORMAL) while retention lasts.
    drop(sensor);
    let stopped = next_change(&mut watch, Condition::Unknown).await;
    assert!(!stopped.sensors[0].streaming);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sine_of_known_velocity_comes_back_with_its_velocity_and_zone() {
    // Machines set the process-wide drsn_machines gauge: one server with machines at a time.
    let _serial = common::serial().await;
    let running = common::start(&["--iso-group", "medium", "--iso-foundation", "rigid"]).await;
    // 3.5 mm/s RMS at 119.7 Hz, as acceleration in g (the card's unit): zone C for a medium machine on a rigid
    // foundation (2.8 < v <= 4.5). Not a divisor of the rate: a sine whose peaks repeat exactly reads as clipped.
    let (v, f) = (3.5f64, 119.7f64);
    let a_peak = v * 2f64.sqrt() / 1000.0 * 2.0 * std::f64::consts::PI * f / 9.806_65;
    let sine: Vec<f32> = (0..60_000)
        .map(|n| (a_peak * (2.0 * std::f64::consts::PI * f * n as f64 / RATE).sin()) as f32)
        .collect();
    let client = drsn_serve::client::replay::connect(&common::addr(&running))
        .await
        .unwrap();
    let plan = drsn_serve::client::replay::StreamPlan::new(RATE, sine.len() as u64);
    let out = drsn_serve::client::replay::stream_samples(client, Arc::new(sine), plan, |_| {})
        .await
        .unwrap();
    assert!(out.window_count >= 10);
    for w in &out.windows {
        let got = f64::from(
            w.velocity_rms_mm_s
                .unwrap_or_else(|| panic!("no velocity: {w:?}")),
        );
        assert!(
            (got / v - 1.0).abs() < 0.02,
            "window {}: {got} mm/s, sent {v}",
            w.window_index
        );
        assert_eq!(w.zone, VibrationZone::C as i32);
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_moved_to_another_server_goes_on_in_fault_without_a_new_onset() {
    // Machines set the process-wide drsn_machines gauge: one server with machines at a time.
    let _serial = common::serial().await;
    let a = common::start(&[]).await;
    let b = common::start(&[]).await;
    let faulty = recording("outer_race_014");
    let (mut sensor, _) = Sensor::open(common::addr(&a), "fan-3", None, 0).await;
    let changes = sensor.send(&faulty, 8.0).await;
    assert!(
        changes
            .iter()
            .any(|c| c.condition == Condition::Fault as i32),
        "{changes:?}"
    );

    // Server A drains: the stream ends UNAVAILABLE, its condition in the trailer.
    a.shutdown();
    let status = loop {
        match sensor.rx.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a drained stream ends with a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let carry = status
        .metadata()
        .get_bin(CONDITION_TRAILER)
        .map(|v| <ConditionCarry as prost::Message>::decode(v.to_bytes().unwrap()).unwrap())
        .expect("the ending status carries the condition");
    assert_eq!(carry.condition, Condition::Fault as i32);
    let Some(drsn_client::resume::Named::At(resume_from)) = drsn_client::resume::named(&status)
    else {
        panic!("a drained stream names where to go on: {status:?}");
    };
    let resume_from = resume_from as usize;

    // On server B the sensor opens in FAULT and stays there: no onset, no clear.
    let (mut moved, start) =
        Sensor::open(common::addr(&b), "fan-3", Some(carry), resume_from).await;
    assert_eq!(start.condition, Condition::Fault as i32);
    assert_eq!(start.fault_class, "outer_race_014");
    let mut client = DiagnosisClient::connect(common::addr(&b)).await.unwrap();
    let list = client
        .list_machines(ListMachinesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.machines[0].condition,
        Condition::Fault as i32,
        "B knows the fault from the first moment"
    );
    let later = moved.send(&faulty, 6.0).await;
    assert!(
        later
            .iter()
            .all(|c| c.reason != ConditionReason::Condition as i32),
        "a moved stream raised or cleared a condition: {later:?}"
    );
    drop(moved);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sensor_is_a_sensor_fault_never_normal() {
    // Machines set the process-wide drsn_machines gauge: one server with machines at a time.
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let healthy = recording("normal");
    let (mut sensor, _) = Sensor::open(common::addr(&running), "mill-2", None, 0).await;
    sensor.send(&healthy, 6.0).await;
    // The sensor's cable comes loose: a constant value, every window flagged FLAT.
    let changes = sensor.send(&[0.013; 4096], 8.0).await;
    let last = changes
        .last()
        .unwrap_or_else(|| panic!("no condition change for a dead sensor"));
    assert_eq!(last.condition, Condition::SensorFault as i32, "{changes:?}");
    assert!(
        last.summary.contains("check the sensor"),
        "{}",
        last.summary
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carry_that_does_not_fit_the_model_is_refused_by_name() {
    let running = common::start(&[]).await;
    let (tx, rx) = mpsc::channel(4);
    let forged = ConditionCarry {
        condition: Condition::Fault as i32,
        fault_class: Some(1),
        evidence: vec![1.0; 3],
        ..Default::default()
    };
    tx.send(open("m", Some(forged))).await.unwrap();
    let status = common::call(common::addr(&running), rx).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("resume_condition") && status.message().contains("3 classes"),
        "{status:?}"
    );
    running.stop().await;
}
