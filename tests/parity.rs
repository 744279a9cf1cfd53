//! The server's preprocessing and ONNX Runtime reproduce the golden file's logits and shrinkage, in-process and
//! over gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::path::Path;

use drsn_serve::api::grpc::proto::{
    DiagnoseRequest, ResultDetail, Window, diagnosis_client::DiagnosisClient, window,
};
use drsn_serve::engine::device::Device;
use drsn_serve::engine::onnx::{self, OnnxSession};
use drsn_serve::model::card::LoadedModel;
use ndarray::{Array1, Array2};
use ndarray_npy::NpzReader;

struct Golden {
    windows: Array2<f32>,
    labels: Array1<i64>,
    /// NaN for a clean window, else the SNR of the noise added to it.
    snr_db: Array1<f32>,
    logits: Array2<f32>,
    shrinkage: Array2<f32>,
    /// The out-of-distribution score, when the model has that output.
    ood: Option<Array1<f32>>,
}

fn golden() -> Golden {
    let path = Path::new(common::ROOT).join("models/drsn_cw_cwru.golden.npz");
    let mut npz = NpzReader::new(std::fs::File::open(path).unwrap()).unwrap();
    Golden {
        windows: npz.by_name("windows").unwrap(),
        labels: npz.by_name("labels").unwrap(),
        snr_db: npz.by_name("snr_db").unwrap(),
        logits: npz.by_name("logits").unwrap(),
        shrinkage: npz.by_name("shrinkage").unwrap(),
        ood: npz.by_name("ood_score").ok(),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn session_reproduces_golden_logits_at_several_batch_sizes() {
    let g = golden();
    let model = LoadedModel::load(&common::model_card()).unwrap();
    let lib = onnx::locate_library(None, Device::Cpu).unwrap();
    let env = onnx::environment(&lib).unwrap();
    let (mut session, _) = OnnxSession::open(&env, &model, Device::Cpu, 1).unwrap();
    let rows: Vec<&[f32]> = g
        .windows
        .rows()
        .into_iter()
        .map(|r| r.to_slice().unwrap())
        .collect();
    for batch in [1, 7, rows.len()] {
        for (start, chunk) in rows.chunks(batch).enumerate() {
            let out = session.run(chunk.iter().copied()).unwrap();
            let first = start * batch;
            let want = g.logits.slice(ndarray::s![first..first + chunk.len(), ..]);
            let d = max_abs_diff(&out.logits, want.as_standard_layout().as_slice().unwrap());
            assert!(d <= 1e-4, "batch {batch}: logits differ by {d}");
            let want = g
                .shrinkage
                .slice(ndarray::s![first..first + chunk.len(), ..]);
            let (units, got) = out.shrinkage.unwrap();
            assert_eq!(units, common::units());
            let d = max_abs_diff(&got, want.as_standard_layout().as_slice().unwrap());
            assert!(d <= 1e-4, "batch {batch}: shrinkage differs by {d}");
            match (&g.ood, &out.ood) {
                (Some(want), Some(got)) => {
                    let want = want.slice(ndarray::s![first..first + chunk.len()]);
                    // A squared distance of some hundreds: compare relative to its size.
                    for (w, o) in want.iter().zip(got) {
                        assert!(
                            (w - o).abs() <= 1e-3 * w.abs().max(1.0),
                            "batch {batch}: ood {o} vs {w}"
                        );
                    }
                }
                (None, None) => {}
                (want, got) => panic!(
                    "golden ood {:?}, session ood {:?}",
                    want.is_some(),
                    got.is_some()
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_over_grpc_matches_golden() {
    let g = golden();
    let running = common::start(&[]).await;
    let mut client = DiagnosisClient::connect(common::addr(&running))
        .await
        .unwrap();
    let windows = g
        .windows
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, r)| Window {
            // Half the windows as bytes, half as floats: both encodings must give the same numbers.
            samples: Some(if i % 2 == 0 {
                window::Samples::F32le(r.iter().flat_map(|v| v.to_le_bytes()).collect())
            } else {
                window::Samples::Values(drsn_serve::api::grpc::proto::FloatSamples {
                    values: r.to_vec(),
                })
            }),
        })
        .collect();
    let resp = client
        .diagnose(DiagnoseRequest {
            windows,
            detail: ResultDetail::Full as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), g.windows.nrows());
    let model = LoadedModel::load(&common::model_card()).unwrap();
    let (classes, t) = (model.card.classes.clone(), model.temperature());
    for (i, r) in resp.results.iter().enumerate() {
        // Probabilities are softmax(logits / T), T the card's calibrated temperature.
        let logits: Vec<f32> = g.logits.row(i).iter().map(|l| l / t).collect();
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let want: Vec<f32> = logits.iter().map(|l| (l - max).exp() / sum).collect();
        assert!(max_abs_diff(&r.probabilities, &want) <= 1e-4, "window {i}");
        assert!(
            max_abs_diff(&r.shrinkage, g.shrinkage.row(i).as_slice().unwrap()) <= 1e-4,
            "window {i}"
        );
        let argmax = want
            .iter()
            .enumerate()
            .fold(0, |b, (k, p)| if *p > want[b] { k } else { b });
        assert_eq!(r.class_index, Some(argmax as u32));
        assert_eq!(r.label, classes[argmax]);
        // Clean golden windows are all classified right.
        if g.snr_db[i].is_nan() {
            assert_eq!(
                r.class_index.map(i64::from),
                Some(g.labels[i]),
                "clean window {i}"
            );
        }
        if let Some(want) = &g.ood {
            let got = r
                .ood_score
                .expect("a model with an ood output scores every classified window");
            assert!(
                (got - want[i]).abs() <= 1e-3 * want[i].abs().max(1.0),
                "window {i}"
            );
            let above = model.uncertain_above().is_some_and(|t| got > t);
            assert_eq!(r.out_of_distribution, above, "window {i}");
        }
        let mean: f32 = r.shrinkage.iter().sum::<f32>() / common::units() as f32;
        assert!((r.noise_score.unwrap() - (1.0 - mean)).abs() < 1e-6);
        assert_eq!(
            (r.first_sample_index, r.last_sample_index),
            (0, common::window() as u64 - 1)
        );
    }
    running.stop().await;
}
