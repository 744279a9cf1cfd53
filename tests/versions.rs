//! The ONNX Runtime release is pinned once (deploy/ort/onnxruntime-cpu.txt, with its hash); every other place that
//! names it must agree: the GPU pin, the training requirements, the container image, the README.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use drsn_serve::engine::onnx::ORT_VERSION;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_place_names_the_pinned_onnx_runtime() {
    assert!(
        read("deploy/ort/onnxruntime-cpu.txt").contains(&format!("onnxruntime=={ORT_VERSION} "))
    );
    for (file, text) in [
        (
            "deploy/ort/onnxruntime-gpu.txt",
            format!("onnxruntime-gpu=={ORT_VERSION} "),
        ),
        (
            "models/training/requirements.txt",
            format!("onnxruntime=={ORT_VERSION}\n"),
        ),
        (
            "deploy/docker/Dockerfile",
            format!("ARG ORT_VERSION={ORT_VERSION}\n"),
        ),
        ("Makefile", "deploy/ort/onnxruntime-cpu.txt".to_owned()),
    ] {
        assert!(
            read(file).contains(&text),
            "{file} does not say `{}`",
            text.trim()
        );
    }
    // Prose that names a release names this one.
    for file in ["README.md", "deploy/README.md"] {
        for (i, line) in read(file).lines().enumerate() {
            for word in line.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
                if word.starts_with("1.3")
                    && word.matches('.').count() == 2
                    && line.to_lowercase().contains("onnx")
                {
                    assert_eq!(word, ORT_VERSION, "{file}:{}: {line}", i + 1);
                }
            }
        }
    }
}
