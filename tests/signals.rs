//! Windows the model cannot judge are flagged, never given a class: real recordings scaled far out of range,
//! spiked, flat and clipped, on plain and resampled streams and in unary calls; a card's calibration marks
//! low-confidence classes uncertain. Every window is still answered, in order, and the stream ends OK. The tests
//! count process-wide metrics, so they run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::sync::Arc;

use drsn_client::samples::{Wire, WireChoice};
use drsn_serve::api::grpc::proto::{
    DiagnoseRequest, FloatSamples, InvalidReason, Window, WindowResult, WindowStatus, window,
};
use drsn_serve::client::replay::{self, StreamPlan};

/// Streams `samples` at `rate` with the default hop; returns every window result, checking the stream ended OK.
async fn stream(
    running: &drsn_serve::server::Running,
    samples: Vec<f32>,
    rate: f64,
) -> Vec<WindowResult> {
    stream_on(running, samples, rate, Wire::F32).await
}

/// [`stream`] with the samples sent as `wire` says.
async fn stream_on(
    running: &drsn_serve::server::Running,
    samples: Vec<f32>,
    rate: f64,
    wire: Wire,
) -> Vec<WindowResult> {
    let client = replay::connect(&common::addr(running)).await.unwrap();
    let mut plan = StreamPlan::new(rate, samples.len() as u64);
    plan.wire = wire;
    let out = replay::stream_samples(client, Arc::new(samples), plan, |_| {})
        .await
        .unwrap();
    assert!(
        out.status.is_none(),
        "the stream ended with {:?}",
        out.status
    );
    out.windows
}

/// A 12 kHz recording streamed as `wire` says.
async fn stream_as(
    running: &drsn_serve::server::Running,
    samples: &[f32],
    wire: Wire,
) -> Vec<WindowResult> {
    stream_on(running, samples.to_vec(), 12_000.0, wire).await
}

fn status(w: &WindowResult) -> (WindowStatus, InvalidReason) {
    (
        WindowStatus::try_from(w.status).unwrap(),
        InvalidReason::try_from(w.invalid_reason).unwrap(),
    )
}

fn assert_unclassified(w: &WindowResult) {
    assert!(
        w.label.is_empty() && w.class_index.is_none() && w.confidence.is_none(),
        "{w:?}"
    );
    assert!(w.probabilities.is_empty() && w.noise_score.is_none());
    assert!(!w.status_detail.is_empty());
}

fn expected_windows(n: usize) -> usize {
    common::windows_in(n, common::window(), common::hop())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_far_out_of_range_every_window_is_flagged() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let (_, samples) = common::recordings().remove(3);
    let counts = |scrape: &str| {
        let flagged = common::metric(
            scrape,
            r#"drsn_windows_flagged_total{api="stream",reason="out_of_range"}"#,
        )
        .unwrap_or(0.0);
        let predicted: f64 = scrape
            .lines()
            .filter(|l| l.starts_with("drsn_predictions_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (flagged, predicted)
    };
    let before = counts(&common::scrape(&running).await);
    for (scale, text) in [(1e20f32, "above"), (1e-4, "outside")] {
        let scaled: Vec<f32> = samples.iter().map(|x| x * scale).collect();
        let windows = stream(&running, scaled, 12_000.0).await;
        assert_eq!(
            windows.len(),
            expected_windows(samples.len()),
            "every window is answered"
        );
        for w in &windows {
            assert_eq!(
                status(w),
                (WindowStatus::InvalidSignal, InvalidReason::OutOfRange),
                "scale {scale}"
            );
            assert_unclassified(w);
            assert!(w.status_detail.contains(text), "{}", w.status_detail);
        }
    }
    // Counted by reason, and never as a prediction (counters are process-wide: compare with before).
    let after = counts(&common::scrape(&running).await);
    assert_eq!(
        (after.0 - before.0) as usize,
        2 * expected_windows(samples.len())
    );
    assert_eq!(after.1, before.1, "a flagged window is no prediction");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_spike_flags_only_the_windows_that_hold_it() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let (label, samples) = common::recordings().remove(7);
    let mut spiked = samples.to_vec();
    // A quarter window past the first window's end: held by two windows at the default hop (half a window).
    let at = common::window() + common::window() / 4;
    spiked[at] = 3.4e38;
    let windows = stream(&running, spiked, 12_000.0).await;
    assert_eq!(windows.len(), expected_windows(samples.len()));
    for w in &windows {
        let holds = w.first_sample_index <= at as u64 && at as u64 <= w.last_sample_index;
        if holds {
            assert_eq!(
                status(w),
                (WindowStatus::InvalidSignal, InvalidReason::OutOfRange)
            );
            assert_unclassified(w);
        } else {
            assert_eq!(status(w).0, WindowStatus::Ok);
            assert_eq!(w.label, label, "window {}", w.window_index);
        }
    }
    assert_eq!(
        windows
            .iter()
            .filter(|w| status(w).0 == WindowStatus::InvalidSignal)
            .count(),
        2,
        "two windows hold the spike"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_and_clipped_signals_are_flagged() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let (_, samples) = common::recordings().remove(9);
    let n = samples.len();
    for (signal, reason) in [
        (vec![0.0f32; n], InvalidReason::Flat),
        (vec![0.31f32; n], InvalidReason::Flat),
        (
            {
                let peak = samples.iter().fold(0f32, |m, x| m.max(x.abs()));
                samples
                    .iter()
                    .map(|x| x.clamp(-0.3 * peak, 0.3 * peak))
                    .collect()
            },
            InvalidReason::Clipped,
        ),
    ] {
        let windows = stream(&running, signal, 12_000.0).await;
        assert_eq!(windows.len(), expected_windows(n));
        for w in &windows {
            assert_eq!(
                status(w),
                (WindowStatus::InvalidSignal, reason),
                "{}",
                w.status_detail
            );
            assert_unclassified(w);
        }
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_codes_are_judged_as_their_floats_and_clipping_is_the_converter_full_scale() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let (label, samples) = common::recordings().remove(7);
    let n = samples.len();
    let peak = samples.iter().fold(0f32, |m, x| m.max(x.abs()));
    let clipped_count = |ws: &[WindowResult]| {
        ws.iter()
            .filter(|w| status(w) == (WindowStatus::InvalidSignal, InvalidReason::Clipped))
            .count()
    };

    // 16-bit codes with headroom: the same results as the floats those codes stand for, to the bit.
    let wire = Wire::choose(WireChoice::I16, &samples, None);
    let Wire::I16 { scale, .. } = wire else {
        panic!("not 16-bit: {wire:?}")
    };
    let as_floats: Vec<f32> = samples
        .iter()
        .map(|x| (x / scale).round() * scale)
        .collect();
    let by_codes = stream_as(&running, &samples, wire).await;
    let by_floats = stream_as(&running, &as_floats, Wire::F32).await;
    assert_eq!(by_codes.len(), expected_windows(n));
    for (a, b) in by_codes.iter().zip(&by_floats) {
        assert_eq!(
            (a.status, &a.label, &a.probabilities),
            (b.status, &b.label, &b.probabilities)
        );
    }
    assert!(
        by_codes.iter().all(|w| w.label == label),
        "16 bits keep the class"
    );

    // The same signal on a converter whose full scale is a third of its peak: codes pinned at the rails, and
    // every window that holds them is flagged clipped, naming the converter.
    let small = Wire::I16 {
        scale: peak / 3.0 / 32767.0,
        bits: 16,
    };
    let railed = stream_as(&running, &samples, small).await;
    assert_eq!(railed.len(), expected_windows(n));
    for w in &railed {
        assert_eq!(
            status(w),
            (WindowStatus::InvalidSignal, InvalidReason::Clipped),
            "{}",
            w.status_detail
        );
        assert!(
            w.status_detail.contains("16-bit converter's full scale"),
            "{}",
            w.status_detail
        );
        assert_unclassified(w);
    }

    // A coarse converter (12 codes to the peak) repeats its extreme codes without clipping: sent as floats, the
    // repeated extremes read as clipping; sent as codes, the server knows the rails were never reached.
    let coarse = Wire::I16 {
        scale: peak / 12.0,
        bits: 16,
    };
    let Wire::I16 { scale, .. } = coarse else {
        unreachable!()
    };
    let coarse_floats: Vec<f32> = samples
        .iter()
        .map(|x| (x / scale).round() * scale)
        .collect();
    let guessed = stream_as(&running, &coarse_floats, Wire::F32).await;
    let known = stream_as(&running, &samples, coarse).await;
    assert!(
        clipped_count(&guessed) > 0,
        "the float check guesses clipping from repeated extremes"
    );
    assert_eq!(
        clipped_count(&known),
        0,
        "codes never at the rails are not clipped"
    );
    assert_eq!(known.len(), expected_windows(n));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_values_on_a_resampled_stream_are_flagged_and_nothing_is_lost() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let (label, samples) = common::recordings().remove(4);
    let mut up: Vec<f32> = samples
        .windows(2)
        .flat_map(|p| (0..4).map(move |k| p[0] + (p[1] - p[0]) * k as f32 / 4.0))
        .collect();
    // A huge finite spike, and a stretch of values near the float32 limit.
    up[6000] = 3.4e38;
    for x in &mut up[12_000..12_100] {
        *x = -3.0e38;
    }
    let frames = up.len();
    let windows = stream(&running, up, 48_000.0).await;
    assert_eq!(
        windows.len(),
        expected_windows(frames / 4),
        "every window is answered"
    );
    let flagged: Vec<_> = windows
        .iter()
        .filter(|w| status(w).0 == WindowStatus::InvalidSignal)
        .collect();
    assert!(!flagged.is_empty(), "the spikes were flagged");
    for w in &flagged {
        assert_eq!(status(w).1, InvalidReason::OutOfRange);
        // The resampler's filter rings for a few hundred samples after a spike.
        assert!(
            w.first_sample_index <= 12_100 + 1024,
            "only windows near the spikes: {w:?}"
        );
    }
    for w in windows.iter().filter(|w| status(w).0 == WindowStatus::Ok) {
        assert_eq!(w.label, label);
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_flag_windows_one_by_one() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let mut client = replay::connect(&common::addr(&running)).await.unwrap();
    let (label, samples) = common::recordings().remove(2);
    let win = |values: Vec<f32>| Window {
        samples: Some(window::Samples::Values(FloatSamples { values })),
    };
    let good = samples[..common::window()].to_vec();
    let resp = client
        .diagnose(DiagnoseRequest {
            windows: vec![
                win(good.clone()),
                win(vec![1.0; common::window()]),
                win(good.iter().map(|x| x * 1e30).collect()),
                win(good),
            ],
            detail: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = resp.results.iter().map(status).collect();
    assert_eq!(
        got,
        [
            (WindowStatus::Ok, InvalidReason::Unspecified),
            (WindowStatus::InvalidSignal, InvalidReason::Flat),
            (WindowStatus::InvalidSignal, InvalidReason::OutOfRange),
            (WindowStatus::Ok, InvalidReason::Unspecified),
        ]
    );
    assert_eq!(
        (
            resp.results[0].label.as_str(),
            resp.results[3].label.as_str()
        ),
        (label.as_str(), label.as_str())
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calibrated_card_marks_low_confidence_classes_uncertain() {
    let _serial = common::serial().await;
    // The shipped card with a calibration that doubts everything below 99.9999%, beside a link to its model.
    let dir = std::env::temp_dir().join(format!("drsn-calibrated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let card_path = common::model_card();
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    card["calibration"] = serde_json::json!({"temperature": 3.0, "uncertain_below": 0.999999});
    // Temperature leaves the logits as they are: the shipped golden file still holds.
    let golden = card_path.with_file_name(card["golden"].as_str().unwrap());
    card["golden"] = golden.to_str().unwrap().into();
    let onnx = card["onnx"].as_str().unwrap().to_owned();
    let _ = std::fs::remove_file(dir.join(&onnx));
    std::os::unix::fs::symlink(card_path.parent().unwrap().join(&onnx), dir.join(&onnx)).unwrap();
    std::fs::write(dir.join("card.json"), card.to_string()).unwrap();
    let running = common::start(&["--model", dir.join("card.json").to_str().unwrap()]).await;
    let (label, samples) = common::recordings().remove(5);
    let windows = stream(&running, samples.to_vec(), 12_000.0).await;
    let uncertain = windows
        .iter()
        .filter(|w| status(w).0 == WindowStatus::Uncertain)
        .count();
    assert!(
        uncertain > 0,
        "temperature 3 and a 0.999999 bar leave some windows uncertain"
    );
    for w in &windows {
        // Uncertain windows still carry their class: a hint, flagged.
        assert_eq!(w.label, label);
        assert!(w.confidence.is_some());
    }
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spikes_inside_the_input_range_are_flagged_impulsive_not_classified() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let (label, samples) = common::recordings().pop().unwrap();
    assert_eq!(label, "normal");
    // A 10 g knock every hop: well inside the card's peak range, yet every window holds one and no training
    // window had an impulse of that share of its energy. Unchecked, these windows came back as a fault.
    let mut spiked = samples.to_vec();
    for at in (1000..spiked.len()).step_by(common::hop()) {
        spiked[at] += 10.0;
    }
    let windows = stream(&running, spiked, 12_000.0).await;
    assert_eq!(windows.len(), expected_windows(samples.len()));
    for w in &windows {
        assert_eq!(
            status(w),
            (WindowStatus::InvalidSignal, InvalidReason::Impulsive),
            "window {}: {w:?}",
            w.window_index
        );
        assert_unclassified(w);
        assert!(
            w.status_detail.contains("crest factor"),
            "{}",
            w.status_detail
        );
    }
    running.stop().await;
}

/// Every window of every recording (the CWRU data, or the committed excerpts), clean and with heavy noise, passes
/// the input checks: the impulse check flags spikes, not bearing faults. The data behind the card's threshold.
#[test]
fn no_recording_clean_or_noisy_is_flagged() {
    use drsn_serve::model::card::LoadedModel;
    use drsn_serve::pipeline::quality;
    let model = LoadedModel::load(&common::model_card()).unwrap();
    let range = model.card.input_range.as_ref().unwrap();
    let (window, hop) = (common::window(), common::hop());
    let dirs: Vec<std::path::PathBuf> = match common::cwru_dir() {
        Some(d) => ["0HP", "1HP", "2HP"].iter().map(|l| d.join(l)).collect(),
        None => vec![
            std::path::Path::new(common::ROOT).join("models/training/tests/fixtures/cwru_mini/0HP"),
        ],
    };
    // A small xorshift generator: Gaussian (Box-Muller) and Laplacian noise at -8 dB, reproducible.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let (mut checked, mut flagged) = (0usize, Vec::new());
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "mat"))
        {
            let clean = drsn_serve::client::recording::read_recording(f, &Default::default())
                .unwrap()
                .samples;
            let power =
                clean.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / clean.len() as f64;
            let sd = (power / 10f64.powf(-8.0 / 10.0)).sqrt();
            let gaussian: Vec<f32> = clean
                .iter()
                .map(|x| {
                    let g =
                        (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
                    x + (g * sd) as f32
                })
                .collect();
            let laplacian: Vec<f32> = clean
                .iter()
                .map(|x| {
                    let u = uniform() - 0.5;
                    let l = -u.signum() * (1.0 - 2.0 * u.abs()).ln() / std::f64::consts::SQRT_2;
                    x + (l * sd) as f32
                })
                .collect();
            for (kind, signal) in [
                ("clean", &clean),
                ("gaussian", &gaussian),
                ("laplacian", &laplacian),
            ] {
                for start in (0..signal.len().saturating_sub(window) + 1).step_by(hop) {
                    checked += 1;
                    if let Some(f) =
                        quality::check(&signal[start..start + window], 1, Some(range), None)
                    {
                        flagged.push(format!("{} {kind} @{start}: {}", f.flag.reason(), f.detail));
                    }
                }
            }
        }
    }
    assert!(checked >= 30, "{checked} windows checked");
    assert!(
        flagged.is_empty(),
        "{} of {checked} windows flagged: {flagged:?}",
        flagged.len()
    );
    eprintln!("{checked} windows checked, none flagged");
}

/// The healthy baseline's committed excerpt as CWRU recorded it: 48 kHz samples.
fn healthy_at_48_khz() -> Vec<f32> {
    let path = std::path::Path::new(common::ROOT)
        .join("models/training/tests/fixtures/cwru_mini/0HP/normal_0_97.mat");
    drsn_serve::client::recording::read_recording(&path, &Default::default())
        .unwrap()
        .samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_at_the_wrong_rate_is_out_of_distribution_never_a_confident_class() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    // 48 kHz samples sent as if they were 12 kHz: every frequency a quarter of what it is, the mix-up the training
    // data itself once had. Every window comes back UNCERTAIN, out of distribution, saying why.
    let wrong = stream(&running, healthy_at_48_khz(), 12_000.0).await;
    assert!(!wrong.is_empty());
    for w in &wrong {
        assert_eq!(status(w).0, WindowStatus::Uncertain, "{w:?}");
        assert!(w.out_of_distribution && w.ood_score.is_some(), "{w:?}");
        assert!(
            w.status_detail
                .contains("outside what the model was trained on"),
            "{w:?}"
        );
    }
    // The same signal at its rate (the server resamples it) and a faulty recording are in the model's range.
    let (_, fault) = common::recordings().remove(3);
    for (samples, rate) in [(healthy_at_48_khz(), 48_000.0), (fault.to_vec(), 12_000.0)] {
        let windows = stream(&running, samples, rate).await;
        assert!(!windows.is_empty());
        assert!(
            windows
                .iter()
                .all(|w| !w.out_of_distribution && w.ood_score.is_some()),
            "{windows:?}"
        );
    }
    running.stop().await;
}
