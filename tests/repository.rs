//! A model repository served from a fresh clone: two models and two versions of one at once, each stream and
//! request on the model and version it names (or the default, newest), the card deciding classes and hop per
//! model; drsn.v1 ListModels/GetModel, the KServe V2 repository index and per-model routes; a repository laid out
//! wrong is refused at start-up by what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::path::Path;

use drsn_serve::api::grpc::proto::diagnosis_client::DiagnosisClient;
use drsn_serve::api::grpc::proto::stream_diagnose_request::Message;
use drsn_serve::api::grpc::proto::stream_diagnose_response::Event;
use drsn_serve::api::grpc::proto::{
    self, DiagnoseRequest, GetModelRequest, ListMachinesRequest, ListModelsRequest,
    StreamDiagnoseRequest, StreamOpen,
};
use drsn_serve::server;
use tokio::sync::mpsc;

const SHIPPED: &str = "drsn-cw-cwru";
const PUMP: &str = "pump-de";

/// Writes the shipped card, changed by `edit`, as `dir/<model>/<version>/card.json`, naming the shipped ONNX file.
fn version(dir: &Path, model: &str, version: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let shipped = common::model_card();
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
    card["name"] = model.into();
    card["version"] = version.into();
    for file in ["onnx", "golden"] {
        card[file] = shipped
            .with_file_name(card[file].as_str().unwrap())
            .to_str()
            .unwrap()
            .into();
    }
    edit(&mut card);
    let folder = dir.join(model).join(version);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("card.json"), card.to_string()).unwrap();
}

/// The shipped model as its own version and 2.2.0, and as a second model `pump-de` with its own class names and
/// half the hop (the same network: what differs is what each card decides).
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped_version = common::model_version();
    version(dir.path(), SHIPPED, &shipped_version, |_| {});
    version(dir.path(), SHIPPED, "2.2.0", |_| {});
    version(dir.path(), PUMP, "1", |card| {
        let classes: Vec<String> = card["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("pump_{}", c.as_str().unwrap()))
            .collect();
        card["classes"] = classes.into();
        card["default_hop"] = (common::hop() / 2).into();
    });
    dir
}

fn flags(dir: &Path) -> Vec<String> {
    vec![
        "--model-repository".into(),
        dir.to_str().unwrap().into(),
        "--default-model".into(),
        SHIPPED.into(),
        "--workers".into(),
        "1".into(),
    ]
}

/// A mono signal with some energy everywhere (a tone and a deterministic hiss), within the card's input range.
fn signal(n: usize) -> Vec<f32> {
    let mut x = 12345u32;
    (0..n)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let hiss = (x >> 16) as f32 / 65536.0 - 0.5;
            0.3 * (i as f32 * 0.07).sin() + 0.2 * hiss
        })
        .collect()
}

/// Streams `samples` on (model, version) as machine `pump-7`, sensor `sensor`; returns the `opened` event and
/// every window result.
async fn stream(
    addr: &str,
    model: &str,
    version: &str,
    sensor: &str,
    samples: &[f32],
) -> Result<(proto::StreamOpened, Vec<proto::WindowResult>), tonic::Status> {
    // Room for every message: they are all queued before the call starts.
    let (tx, rx) = mpsc::channel(samples.len() / 4096 + 2);
    let open = StreamOpen {
        machine_id: "pump-7".into(),
        sensor_id: sensor.into(),
        sample_rate_hz: 12_000.0,
        channels: 1,
        model: model.into(),
        model_version: version.into(),
        ..Default::default()
    };
    tx.send(StreamDiagnoseRequest {
        message: Some(Message::Open(open)),
    })
    .await
    .unwrap();
    for (i, part) in samples.chunks(4096).enumerate() {
        tx.send(common::chunk((i * 4096) as u64, part.to_vec()))
            .await
            .unwrap();
    }
    drop(tx);
    let mut events = common::call(addr.to_owned(), rx).await?;
    let mut opened = None;
    let mut windows = Vec::new();
    while let Some(event) = events.message().await? {
        match event.event {
            Some(Event::Opened(o)) => opened = Some(o),
            Some(Event::Window(w)) => windows.push(w),
            _ => {}
        }
    }
    Ok((opened.expect("an opened event"), windows))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_and_two_versions_of_one_serve_at_once() {
    let dir = repository();
    let running = common::start(
        &flags(dir.path())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    let addr = common::addr(&running);
    let shipped_version = common::model_version();
    let mut client = DiagnosisClient::connect(addr.clone()).await.unwrap();

    let list = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let served: Vec<(&str, &str)> = list
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.version.as_str()))
        .collect();
    assert_eq!(
        served,
        [
            (SHIPPED, shipped_version.as_str()),
            (SHIPPED, "2.2.0"),
            (PUMP, "1")
        ]
    );
    assert_eq!(list.default_model, SHIPPED);
    let pump = client
        .get_model(GetModelRequest {
            model: PUMP.into(),
            model_version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pump.default_hop as usize, common::hop() / 2);
    assert!(pump.classes.iter().all(|c| c.starts_with("pump_")));

    // Three streams at once: the default (newest version), the older version by name, the other model.
    let (w, hop) = (common::window(), common::hop());
    let samples = signal(w + 3 * hop);
    let (default, older, other) = tokio::join!(
        stream(&addr, "", "", "a", &samples),
        stream(&addr, SHIPPED, &shipped_version, "b", &samples),
        stream(&addr, PUMP, "", "c", &samples),
    );
    let cases = [
        (default.unwrap(), SHIPPED, "2.2.0", hop),
        (older.unwrap(), SHIPPED, shipped_version.as_str(), hop),
        (other.unwrap(), PUMP, "1", hop / 2),
    ];
    for ((opened, windows), name, version, hop) in &cases {
        assert_eq!(
            (opened.model_name.as_str(), opened.model_version.as_str()),
            (*name, *version)
        );
        assert_eq!(opened.hop as usize, *hop);
        assert_eq!(windows.len(), common::windows_in(samples.len(), w, *hop));
        for (i, r) in windows.iter().enumerate() {
            assert_eq!(r.window_index, i as u64);
            assert_eq!(
                (r.model_name.as_str(), r.model_version.as_str()),
                (*name, *version)
            );
            if !r.label.is_empty() {
                assert!(opened.classes.contains(&r.label), "{r:?}");
                assert_eq!(r.label.starts_with("pump_"), *name == PUMP);
            }
        }
    }
    // The same network under three cards: the same answers for the same window, under each card's class names.
    let first = |i: usize| &cases[i].0.1[0];
    assert_eq!(first(0).class_index, first(2).class_index);
    assert_eq!(first(0).class_index, first(1).class_index);

    // A machine's sensors on different models: each sensor's shares in its own model's classes.
    let machines = client
        .list_machines(ListMachinesRequest {})
        .await
        .unwrap()
        .into_inner();
    let machine = machines
        .machines
        .iter()
        .find(|m| m.machine_id == "pump-7")
        .expect("pump-7 listed");
    for s in &machine.sensors {
        let pump_classes = s.shares.iter().all(|c| c.label.starts_with("pump_"));
        assert_eq!(pump_classes, s.sensor_id == "c", "{s:?}");
    }

    // Unary calls name a model too; one not served is NOT_FOUND, naming what is.
    let window = proto::Window {
        samples: Some(proto::window::Samples::F32le(
            samples[..w].iter().flat_map(|v| v.to_le_bytes()).collect(),
        )),
    };
    let unary = client
        .diagnose(DiagnoseRequest {
            windows: vec![window.clone()],
            model: PUMP.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unary.results[0].model_name, PUMP);
    let missing = client
        .diagnose(DiagnoseRequest {
            windows: vec![window],
            model: SHIPPED.into(),
            model_version: "9.9.9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(
        missing.message().contains("version \"9.9.9\"") && missing.message().contains(PUMP),
        "{missing:?}"
    );
    let refused = stream(&addr, "fan-end", "", "d", &samples)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");

    // KServe V2: the repository index, a model's versions, and inference routed by name and version.
    let (code, index) = common::http(running.http_addr, "POST", "/v2/repository/index", "{}").await;
    assert_eq!(code, 200, "{index}");
    let listed: Vec<(String, String, String)> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_owned();
            (s("name"), s("version"), s("state"))
        })
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(
        listed.iter().all(|(_, _, state)| state == "READY"),
        "{index}"
    );
    let (code, meta) = common::http(
        running.http_addr,
        "GET",
        &format!("/v2/models/{SHIPPED}"),
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        meta["versions"],
        serde_json::json!([shipped_version, "2.2.0"])
    );
    let body =
        serde_json::json!({"inputs": [{"name": "vibration", "datatype": "FP32", "shape": [1, 1, w],
        "data": samples[..w]}], "outputs": [{"name": "label"}]})
        .to_string();
    let (code, answer) = common::http(
        running.http_addr,
        "POST",
        &format!("/v2/models/{PUMP}/infer"),
        &body,
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["model_name"], PUMP);
    let label = answer["outputs"][0]["data"][0].as_str().unwrap();
    assert!(label.is_empty() || label.starts_with("pump_"), "{answer}");
    let path = format!("/v2/models/{SHIPPED}/versions/{shipped_version}/infer");
    let (code, answer) = common::http(running.http_addr, "POST", &path, &body).await;
    assert_eq!(
        (code, answer["model_version"].as_str()),
        (200, Some(shipped_version.as_str()))
    );
    let (code, answer) =
        common::http(running.http_addr, "POST", "/v2/models/fan-end/infer", &body).await;
    assert_eq!(code, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains(PUMP), "{answer}");
    running.stop().await;
}

#[tokio::test]
async fn a_repository_that_cannot_be_served_as_laid_out_is_refused_by_what_is_wrong() {
    let refusal = |dir: &Path, extra: &[&str]| {
        let mut args = flags(dir);
        args.retain(|a| {
            !extra.contains(&"--no-default") || (a != "--default-model" && a != SHIPPED)
        });
        args.extend(
            extra
                .iter()
                .filter(|a| **a != "--no-default")
                .map(|a| a.to_string()),
        );
        let config = common::config(&args.iter().map(String::as_str).collect::<Vec<_>>());
        async move {
            match server::start(config).await {
                Ok(running) => {
                    running.shutdown();
                    running.stopped().await;
                    panic!("served a repository that should be refused");
                }
                Err(e) => e.to_string(),
            }
        }
    };
    // A card in another model's folder.
    let dir = tempfile::tempdir().unwrap();
    version(dir.path(), SHIPPED, "2.2.0", |card| {
        card["name"] = "other".into()
    });
    let err = refusal(dir.path(), &[]).await;
    assert!(err.contains("it sits in drsn-cw-cwru/2.2.0/"), "{err}");

    // Two models and no default.
    let dir = repository();
    let err = refusal(dir.path(), &["--no-default"]).await;
    assert!(err.contains("--default-model"), "{err}");
    // A default that is not there.
    let err = refusal(dir.path(), &["--default-model", "fan-end"]).await;
    assert!(
        err.contains("\"fan-end\" is not among those served"),
        "{err}"
    );

    // A version whose ONNX file does not match its card's checksum.
    let dir = repository();
    version(dir.path(), PUMP, "2", |card| {
        card["sha256"] = "00".repeat(32).into()
    });
    let err = refusal(dir.path(), &[]).await;
    assert!(err.contains("does not match its card"), "{err}");
}

/// POSTs to a repository route; the status and the JSON body.
async fn repository_call(running: &server::Running, what: &str) -> (u16, serde_json::Value) {
    common::http(running.http_addr, "POST", what, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_is_replaced_under_a_live_stream_without_losing_a_window() {
    use drsn_client::sensor;
    use drsn_client::{Event, Options, Sensor, Targets};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    // Versions of its own: metrics are process-wide, and other tests serve the shipped version.
    let first = "3.0.0".to_owned();
    version(dir.path(), SHIPPED, &first, |_| {});
    let mut flags = flags(dir.path());
    flags.extend(["--model-control".into(), "explicit".into()]);
    let running = common::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let addr = running.grpc_addr.to_string();

    // A live sensor stream (the gateway library, which resumes where the server says), paced like a sensor.
    let options = Options {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        ..Options::default()
    };
    let targets = Targets::plain([addr.clone()]).unwrap();
    let (tx, mut results) =
        sensor::open(targets, Sensor::new("pump-7", "de", 12_000.0), options).unwrap();
    let (w, hop) = (common::window(), common::hop());
    let windows = 40;
    let samples = signal(w + (windows - 1) * hop);
    // The first 22 windows' samples, then (once the old version is unloaded, the stream waiting for samples) the rest.
    let split = w + 21 * hop;
    let (go, gone) = tokio::sync::oneshot::channel::<()>();
    let feeder = tokio::spawn(async move {
        for block in samples[..split].chunks(2048) {
            tx.send(block).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gone.await.unwrap();
        for block in samples[split..].chunks(2048) {
            tx.send(block).await.unwrap();
        }
        tx.finish();
    });
    let mut go = Some(go);
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut step = 0;
    while let Some(event) = results.next().await {
        if let Event::Window { index, result } = event.unwrap() {
            seen.push((index, result.model_version));
        }
        match (step, seen.len()) {
            // A broken candidate (its ONNX file is not the one its card names) is refused; nothing changes.
            (0, 5..) => {
                version(dir.path(), SHIPPED, "3.1.0", |card| {
                    card["sha256"] = "00".repeat(32).into()
                });
                let (code, body) =
                    repository_call(&running, &format!("/v2/repository/models/{SHIPPED}/load"))
                        .await;
                assert_eq!(code, 400, "{body}");
                let why = body["error"].as_str().unwrap();
                assert!(
                    why.contains("3.1.0 was not loaded, nothing changed") && why.contains("sha256"),
                    "{why}"
                );
                let (_, index) = repository_call(&running, "/v2/repository/index").await;
                assert_eq!(index.as_array().unwrap().len(), 1, "{index}");
                step = 1;
            }
            // The fixed candidate loads beside the serving version; new streams get it, this one stays.
            (1, 10..) => {
                version(dir.path(), SHIPPED, "3.1.0", |_| {});
                let (code, body) =
                    repository_call(&running, &format!("/v2/repository/models/{SHIPPED}/load"))
                        .await;
                assert_eq!(code, 200, "{body}");
                assert!(
                    body["result"]
                        .as_str()
                        .unwrap()
                        .contains("loaded drsn-cw-cwru 3.1.0"),
                    "{body}"
                );
                let (opened, _) = stream(&common::addr(&running), "", "", "new", &signal(w))
                    .await
                    .unwrap();
                assert_eq!(opened.model_version, "3.1.0");
                step = 2;
            }
            // The old version's folder goes: a load unloads it, and its stream moves to the new one.
            (2, 20..) => {
                std::fs::remove_dir_all(dir.path().join(SHIPPED).join(&first)).unwrap();
                let (code, body) =
                    repository_call(&running, &format!("/v2/repository/models/{SHIPPED}/load"))
                        .await;
                assert_eq!(code, 200, "{body}");
                assert!(
                    body["result"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("unloaded drsn-cw-cwru {first}"))
                );
                if let Some(go) = go.take() {
                    go.send(()).unwrap();
                }
                step = 3;
            }
            _ => {}
        }
    }
    feeder.await.unwrap();
    assert_eq!(step, 3, "the stream ended before every step ran");
    let indices: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        indices,
        (0..windows as u64).collect::<Vec<_>>(),
        "every window once, in order"
    );
    let moved = seen
        .iter()
        .position(|s| s.1 == "3.1.0")
        .expect("the stream moved to 3.1.0");
    assert!(
        moved >= 20,
        "it stayed on {first} until that was unloaded: {seen:?}"
    );
    assert!(
        seen[..moved].iter().all(|s| s.1 == first) && seen[moved..].iter().all(|s| s.1 == "3.1.0"),
        "{seen:?}"
    );
    let stats = results.stats();
    assert_eq!(stats.resumes, 1, "{stats:?}");
    assert!(
        stats
            .last_error
            .contains(&format!("version {first} was unloaded")),
        "the stream was handed over by the unload, with a resume point: {stats:?}"
    );

    // Unloading a version stops its threads, not the replica: still ready.
    let (code, body) = common::http(running.http_addr, "GET", "/v2/health/ready", "").await;
    assert_eq!(code, 200, "{body}");

    // The default model's last version cannot be unloaded; an unknown model is named.
    let (code, body) =
        repository_call(&running, &format!("/v2/repository/models/{SHIPPED}/unload")).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("is the default"),
        "{body}"
    );
    let (code, body) = repository_call(&running, "/v2/repository/models/fan-end/load").await;
    assert_eq!(code, 400, "{body}");
    let metrics = common::scrape(&running).await;
    let info = |v: &str| {
        common::metric(
            &metrics,
            &format!(r#"drsn_model_info{{name="{SHIPPED}",version="{v}",device="cpu"}}"#),
        )
    };
    assert_eq!(
        (info(&first), info("3.1.0")),
        (Some(0.0), Some(1.0)),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test]
async fn model_control_is_off_unless_asked_for() {
    let dir = repository();
    let running = common::start(
        &flags(dir.path())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    let (code, body) =
        repository_call(&running, &format!("/v2/repository/models/{PUMP}/unload")).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--model-control explicit")
    );
    running.stop().await;
}

/// The index's `reason` for `version` of the shipped model.
async fn role(running: &server::Running, version: &str) -> String {
    let (_, index) = repository_call(running, "/v2/repository/index").await;
    index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == SHIPPED && e["version"] == version)
        .map_or("not served".into(), |e| {
            e["reason"].as_str().unwrap().to_owned()
        })
}

/// Loads the shipped model with `parameters` (JSON); the status and body.
async fn load(running: &server::Running, parameters: &str) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"parameters": {parameters}}}"#);
    let path = format!("/v2/repository/models/{SHIPPED}/load");
    common::http(running.http_addr, "POST", &path, &body).await
}

/// The shipped golden file with one logit of window 3 moved by 1: what another network would give.
fn tampered_golden(dir: &Path) -> std::path::PathBuf {
    use ndarray_npy::{NpzReader, NpzWriter};
    let shipped = common::model_card().with_file_name("drsn_cw_cwru.golden.npz");
    let mut npz = NpzReader::new(std::fs::File::open(shipped).unwrap()).unwrap();
    let windows: ndarray::Array2<f32> = npz.by_name("windows").unwrap();
    let mut logits: ndarray::Array2<f32> = npz.by_name("logits").unwrap();
    logits[[3, 2]] += 1.0;
    let path = dir.join("tampered.golden.npz");
    let mut out = NpzWriter::new(std::fs::File::create(&path).unwrap());
    out.add_array("windows", &windows).unwrap();
    out.add_array("logits", &logits).unwrap();
    out.finish().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_shadows_the_serving_version_then_is_promoted_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    // Versions of its own: metrics are process-wide.
    version(dir.path(), SHIPPED, "4.0.0", |_| {});
    let mut flags = flags(dir.path());
    flags.extend(["--model-control".into(), "explicit".into()]);
    let running = common::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let addr = common::addr(&running);

    // A candidate whose network does not give its golden file's logits is refused; nothing changes.
    let golden = tempfile::tempdir().unwrap();
    let tampered = tampered_golden(golden.path());
    version(dir.path(), SHIPPED, "4.0.1", |card| {
        card["golden"] = tampered.to_str().unwrap().into()
    });
    let (code, body) = load(&running, "{}").await;
    assert_eq!(code, 400, "{body}");
    let why = body["error"].as_str().unwrap();
    assert!(
        why.contains("nothing changed") && why.contains("golden file"),
        "{why}"
    );
    assert!(
        why.contains("window 3 class"),
        "names the window that differs: {why}"
    );
    assert_eq!(role(&running, "4.0.1").await, "not served");
    std::fs::remove_dir_all(dir.path().join(SHIPPED).join("4.0.1")).unwrap();

    // The candidate loads as a shadow: the version serving before goes on serving new streams.
    version(dir.path(), SHIPPED, "4.1.0", |_| {});
    let (code, body) = load(&running, r#"{"shadow": "9.9.9"}"#).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("nothing changed"),
        "{body}"
    );
    assert_eq!(
        role(&running, "4.1.0").await,
        "not served",
        "a refused load loads nothing"
    );
    let (code, body) = load(&running, r#"{"shadow": 4}"#).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = load(&running, r#"{"shadow": "4.1.0"}"#).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["result"]
            .as_str()
            .unwrap()
            .contains("version 4.0.0 serves (pinned); version 4.1.0 shadows it"),
        "{body}"
    );
    assert!(role(&running, "4.0.0").await.starts_with("serving"));
    assert!(
        role(&running, "4.1.0")
            .await
            .starts_with("shadow of version 4.0.0")
    );

    // Real recordings of every class one after the other on one stream: the serving answers change class, and the
    // candidate (the same network) must name the same class for every window it scored: a window paired with
    // another window's answer would disagree where the class changes.
    let samples: Vec<f32> = common::recordings()
        .iter()
        .flat_map(|(_, r)| r[..8192.min(r.len())].to_vec())
        .collect();
    let (opened, windows) = stream(&addr, "", "", "shadowed", &samples).await.unwrap();
    assert_eq!(opened.model_version, "4.0.0");
    let classes: std::collections::BTreeSet<&str> =
        windows.iter().map(|w| w.label.as_str()).collect();
    assert!(classes.len() >= 3, "the stream changes class: {classes:?}");
    let series = |agreement: &str| {
        format!(
            r#"drsn_shadow_windows_total{{model="{SHIPPED}",serving="4.0.0",candidate="4.1.0",agreement="{agreement}"}}"#
        )
    };
    let mut counts = [0.0; 4];
    for _ in 0..100 {
        let metrics = common::scrape(&running).await;
        counts = ["agree", "disagree", "unscored", "skipped"]
            .map(|a| common::metric(&metrics, &series(a)).unwrap_or(0.0));
        if counts.iter().sum::<f64>() >= windows.len() as f64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let [agree, disagree, unscored, skipped] = counts;
    assert_eq!(
        agree + disagree + unscored + skipped,
        windows.len() as f64,
        "every window the serving version judged is accounted for: {counts:?}"
    );
    assert!(
        agree >= 1.0 && disagree == 0.0 && unscored == 0.0,
        "{counts:?}"
    );
    let reason = role(&running, "4.1.0").await;
    assert!(
        reason.contains(&format!("{agree} windows agreed, 0 disagreed")),
        "{reason}"
    );
    assert!(reason.contains("(100.0% agreement)"), "{reason}");
    // The same tally as numbers, for a script deciding on a promotion.
    let (_, index) = repository_call(&running, "/v2/repository/index").await;
    let shadow = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["version"] == "4.1.0")
        .map(|e| e["shadow"].clone())
        .unwrap();
    assert_eq!(shadow["of"], "4.0.0", "{shadow}");
    assert_eq!(shadow["agree"].as_f64(), Some(agree), "{shadow}");
    assert_eq!(shadow["agreement"].as_f64(), Some(1.0), "{shadow}");

    // Unary (and V2) windows are shadowed too: each window of a call that names no version is accounted for.
    let unary: Vec<proto::Window> = common::recordings()
        .iter()
        .take(4)
        .map(|(_, r)| proto::Window {
            samples: Some(proto::window::Samples::F32le(
                r[..common::window()]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            )),
        })
        .collect();
    let mut client = DiagnosisClient::connect(addr.clone()).await.unwrap();
    let answered = client
        .diagnose(DiagnoseRequest {
            windows: unary.clone(),
            model: SHIPPED.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answered.results.iter().all(|r| r.model_version == "4.0.0"));
    let before = agree + disagree + unscored + skipped;
    let mut after = [0.0; 4];
    for _ in 0..100 {
        let metrics = common::scrape(&running).await;
        after = ["agree", "disagree", "unscored", "skipped"]
            .map(|a| common::metric(&metrics, &series(a)).unwrap_or(0.0));
        if after.iter().sum::<f64>() >= before + unary.len() as f64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        after.iter().sum::<f64>(),
        before + unary.len() as f64,
        "{after:?}"
    );
    assert_eq!((after[1], after[2]), (0.0, 0.0), "{after:?}");
    assert!(
        after[0] > agree,
        "the candidate scored unary windows: {after:?}"
    );

    // Promotion: the candidate serves new streams, and the old version shadows it for the way back.
    let (code, body) = load(&running, r#"{"serve": "4.1.0", "shadow": "4.0.0"}"#).await;
    assert_eq!(code, 200, "{body}");
    let (opened, _) = stream(&addr, "", "", "promoted", &signal(common::window()))
        .await
        .unwrap();
    assert_eq!(opened.model_version, "4.1.0");
    assert!(
        role(&running, "4.0.0")
            .await
            .starts_with("shadow of version 4.1.0")
    );

    // Roll back: the old version serves again, no shadow.
    let (code, body) = load(&running, r#"{"serve": "4.0.0", "shadow": "none"}"#).await;
    assert_eq!(code, 200, "{body}");
    let (opened, _) = stream(&addr, "", "", "rolled-back", &signal(common::window()))
        .await
        .unwrap();
    assert_eq!(opened.model_version, "4.0.0");
    assert!(role(&running, "4.1.0").await.starts_with("loaded"));

    // A shadow whose folder goes is unloaded and stops being the shadow; the pinned version serves on.
    let (code, _) = load(&running, r#"{"shadow": "4.1.0"}"#).await;
    assert_eq!(code, 200);
    std::fs::remove_dir_all(dir.path().join(SHIPPED).join("4.1.0")).unwrap();
    let (code, body) = load(&running, "{}").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(role(&running, "4.1.0").await, "not served");
    assert!(role(&running, "4.0.0").await.starts_with("serving"));
    running.stop().await;
}
