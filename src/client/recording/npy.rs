//! NumPy `.npy` arrays: 1-D, or one column of a 2-D array.

use std::path::Path;

use ndarray::{ArrayD, Axis};
use ndarray_npy::ReadNpyError;

use super::{Loaded, ReadOptions, RecordingError, open_error};
pub(super) fn read_npy(path: &Path, opts: &ReadOptions) -> Result<Loaded, RecordingError> {
    match ndarray_npy::read_npy::<_, ArrayD<f64>>(path) {
        Ok(a) => return npy_column(path, opts, a, |v| v as f32),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(npy_error(path, e)),
    }
    match ndarray_npy::read_npy::<_, ArrayD<f32>>(path) {
        Ok(a) => npy_column(path, opts, a, |v| v),
        Err(ReadNpyError::WrongDescriptor(desc)) => Err(RecordingError::Unsupported {
            path: path.to_path_buf(),
            what: "the .npy array".to_string(),
            detail: format!(
                "its dtype {desc} is not float32/float64 (little-endian); convert it, e.g. `np.save(path, a.astype(np.float32))`"
            ),
        }),
        Err(e) => Err(npy_error(path, e)),
    }
}

fn npy_error(path: &Path, e: ReadNpyError) -> RecordingError {
    match e {
        ReadNpyError::Io(source) => open_error(path, source),
        other => RecordingError::Malformed {
            path: path.to_path_buf(),
            format: ".npy",
            detail: other.to_string(),
            hint: "write it with numpy.save (not savez or pickle) and check it was copied completely",
        },
    }
}

fn npy_column<T: Copy>(
    path: &Path,
    opts: &ReadOptions,
    a: ArrayD<T>,
    to_f32: impl Fn(T) -> f32,
) -> Result<Loaded, RecordingError> {
    let shape = a.shape().to_vec();
    let shape_str = format!(
        "({})",
        shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    match shape.as_slice() {
        [_] => {
            if let Some(c) = opts.column
                && c != 0
            {
                return Err(RecordingError::ColumnOutOfRange {
                    path: path.to_path_buf(),
                    kind: "column",
                    index: c,
                    count: 1,
                    what: format!("the 1-D array {shape_str}"),
                });
            }
            Ok((
                a.iter().map(|v| to_f32(*v)).collect(),
                None,
                "column 0".to_string(),
                None,
            ))
        }
        [_, cols] => {
            let c = opts.column.unwrap_or(0);
            if c >= *cols {
                return Err(RecordingError::ColumnOutOfRange {
                    path: path.to_path_buf(),
                    kind: "column",
                    index: c,
                    count: *cols,
                    what: format!("the array {shape_str}"),
                });
            }
            let samples = a
                .index_axis(Axis(1), c)
                .iter()
                .map(|v| to_f32(*v))
                .collect();
            Ok((samples, None, format!("column {c}"), None))
        }
        _ => Err(RecordingError::BadShape {
            path: path.to_path_buf(),
            what: "the .npy array".to_string(),
            shape: shape_str,
            hint: "save a 1-D array (N,) or a 2-D array (N, C) with samples along the first axis"
                .to_string(),
        }),
    }
}
