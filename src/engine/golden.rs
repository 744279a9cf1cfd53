//! A version's golden file: the windows it was exported with and the logits the exported graph gave them, run
//! again through an opened session before the version serves, so that a wrong ONNX file, a card that reads
//! windows differently or an ONNX Runtime build that computes otherwise is refused instead of served.

use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::NpzReader;

use crate::engine::onnx::OnnxSession;
use crate::error::StartupError;
use crate::model::card::LoadedModel;

/// How far a logit may be from the file's: float reordering across batch sizes, threads and devices (CUDA's
/// kernels included) stays well inside it, while another network or another preprocessing moves logits by
/// whole units.
const ABS_TOLERANCE: f32 = 1e-2;
const REL_TOLERANCE: f32 = 1e-2;

/// What the check found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    pub(crate) windows: usize,
    pub(crate) max_diff: f32,
}

/// Runs the golden windows through `session` in batches of at most `max_batch` and compares every logit.
pub(crate) fn check(
    session: &mut OnnxSession,
    model: &LoadedModel,
    path: &Path,
    max_batch: usize,
) -> Result<Checked, StartupError> {
    let fail = |reason: String| StartupError::Golden {
        path: path.into(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open it: {e}")))?;
    let mut npz = NpzReader::new(file).map_err(|e| fail(format!("not an .npz file: {e}")))?;
    let windows: ArrayD<f32> = npz
        .by_name("windows")
        .map_err(|e| fail(format!("no float32 `windows` array: {e}")))?;
    let logits: ArrayD<f32> = npz
        .by_name("logits")
        .map_err(|e| fail(format!("no float32 `logits` array: {e}")))?;
    let rows = windows.shape().first().copied().unwrap_or(0);
    let per = model.window_values();
    let classes = model.card.classes.len();
    if rows == 0 || windows.len() != rows * per {
        return Err(fail(format!(
            "`windows` has shape {:?}; the card reads windows of {} values ({} samples x {} channel(s))",
            windows.shape(),
            per,
            model.window(),
            model.channels()
        )));
    }
    if logits.len() != rows * classes {
        return Err(fail(format!(
            "`logits` has shape {:?}; {rows} windows of the card's {classes} classes were expected",
            logits.shape()
        )));
    }
    let windows = windows.as_standard_layout();
    let logits = logits.as_standard_layout();
    let (Some(windows), Some(want)) = (windows.as_slice(), logits.as_slice()) else {
        return Err(fail("its arrays are not contiguous".into()));
    };
    let mut max_diff = 0.0f32;
    let all: Vec<&[f32]> = windows.chunks(per).collect();
    for (b, batch) in all.chunks(max_batch.max(1)).enumerate() {
        let out = session
            .run(batch.iter().copied())
            .map_err(|e| fail(format!("inference failed: {e}")))?;
        let first = b * max_batch.max(1);
        let expected = &want[first * classes..(first + batch.len()) * classes];
        for (i, (got, want)) in out.logits.iter().zip(expected).enumerate() {
            let diff = (got - want).abs();
            // NaN (a graph that breaks on these windows) fails too.
            let within = diff <= ABS_TOLERANCE + REL_TOLERANCE * want.abs();
            if !within {
                return Err(fail(format!(
                    "window {} class `{}`: logit {got} where the file says {want}",
                    first + i / classes,
                    model.card.classes[i % classes]
                )));
            }
            max_diff = max_diff.max(diff);
        }
    }
    Ok(Checked {
        windows: rows,
        max_diff,
    })
}
