//! Device selection with the CPU build of ONNX Runtime, which has no CUDA provider: `--device cuda` must refuse to
//! start, naming the fix; `--device auto` must fall back to CPU and count the fallback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use drsn_serve::engine::device::Placement;
use drsn_serve::error::StartupError;
use drsn_serve::server;

fn cpu_lib() -> String {
    format!(
        "{}/.ort/cpu/libonnxruntime.so.{}",
        common::ROOT,
        drsn_serve::engine::onnx::ORT_VERSION
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_that_cannot_register_is_a_startup_error() {
    let lib = cpu_lib();
    let err = match server::start(common::config(&["--device", "cuda:0", "--ort-lib", &lib])).await
    {
        Ok(_) => panic!("started on CUDA with the CPU build of ONNX Runtime"),
        Err(e) => e,
    };
    assert!(matches!(err, StartupError::Cuda { device: 0, .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("make ort-gpu") && text.contains("--device cpu"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_cpu_with_a_metric() {
    let lib = cpu_lib();
    let running = server::start(common::config(&["--device", "auto", "--ort-lib", &lib]))
        .await
        .unwrap();
    assert_eq!(running.placement, Placement::Cpu);
    // The CPU defaults apply once the device is known.
    assert_eq!(running.settings.max_batch, 32);
    let scrape = common::scrape(&running).await;
    assert!(
        common::metric(&scrape, "drsn_device_fallbacks_total").unwrap_or(0.0) >= 1.0,
        "{scrape}"
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::model_card()).unwrap()).unwrap();
    let info = format!(
        r#"drsn_model_info{{name={},version={},device="cpu"}} 1"#,
        card["name"], card["version"]
    );
    assert!(scrape.contains(&info), "{info} not in {scrape}");
    running.shutdown();
    running.stopped().await;
}
