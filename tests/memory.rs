//! Memory goes back to the system after load: the server binary's RSS, read from /proc, returns near where it was
//! once a burst of large requests has been answered (the allocator returns freed pages; glibc's kept them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use drsn_serve::api::grpc::proto::{DiagnoseRequest, FloatSamples, Window, window};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_given_back_after_a_burst_of_large_requests() {
    let server = common::ServerProcess::spawn(&[]);
    let pid = server.child.id();
    let client = drsn_serve::client::connect::connect(&server.addr)
        .await
        .unwrap();
    let w = common::window();
    // 256 windows of noise-like samples per call (8 MiB of floats on the wire), eight calls at a time.
    let request = || DiagnoseRequest {
        windows: (0..256)
            .map(|k| Window {
                samples: Some(window::Samples::Values(FloatSamples {
                    values: (0..w)
                        .map(|i| ((i * 7919 + k * 104_729) % 1000) as f32 * 1e-3 - 0.5)
                        .collect(),
                })),
            })
            .collect(),
        detail: 0,
        ..Default::default()
    };
    let burst = |rounds: usize| {
        let client = client.clone();
        async move {
            for _ in 0..rounds {
                let calls: Vec<_> = (0..8)
                    .map(|_| {
                        let mut c = client.clone();
                        let r = request();
                        tokio::spawn(async move { c.diagnose(r).await.map(|_| ()) })
                    })
                    .collect();
                for c in calls {
                    // Some calls may meet a full queue or budget (RESOURCE_EXHAUSTED); memory is what is measured.
                    let _ = c.await.unwrap();
                }
            }
        }
    };
    let before = common::proc_status_kib(pid, "VmRSS:");
    burst(6).await;
    let peak = common::proc_status_kib(pid, "VmRSS:");
    // The allocator gives pages back on its own schedule (jemalloc's decay: 10 s), while the server idles.
    let idle = std::time::Instant::now();
    let mut after = peak;
    while after > before + 64 * 1024 && idle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = common::proc_status_kib(pid, "VmRSS:");
    }
    eprintln!(
        "RSS: {before} KiB before, {peak} KiB at the end of the load, {after} KiB {:.1} s later",
        idle.elapsed().as_secs_f64()
    );
    assert!(
        after <= before + 64 * 1024,
        "RSS stayed at {after} KiB after the load ({before} KiB before, {peak} KiB at its peak)"
    );
}
