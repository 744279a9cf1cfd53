//! CWRU-style MATLAB v5 files: the drive-end variable (`X<num>_DE_time`), or the one asked for.

use std::io::BufReader;
use std::path::Path;

use super::{Loaded, ReadOptions, RecordingError, open};
pub(super) fn read_mat(path: &Path, opts: &ReadOptions) -> Result<Loaded, RecordingError> {
    let file = open(path)?;
    let mat = matfile::MatFile::parse(BufReader::new(file)).map_err(|e| match e {
        matfile::Error::IOError(source) => RecordingError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => RecordingError::Malformed {
            path: path.to_path_buf(),
            format: "MATLAB 5 .mat",
            detail: other.to_string(),
            hint: "only MATLAB 5 files (as from the CWRU Bearing Data Center, or scipy.io.savemat) are supported; re-save v7.3/HDF5 files with `save -v7` or export the signal to .npy/.csv",
        },
    })?;

    let arrays = mat.arrays();
    let available = || {
        if arrays.is_empty() {
            "none".to_string()
        } else {
            arrays
                .iter()
                .map(|a| format!("{} ({})", a.name(), shape_string(a.size())))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };

    let array = match &opts.variable {
        Some(name) => mat
            .find_by_name(name)
            .ok_or_else(|| RecordingError::VariableNotFound {
                path: path.to_path_buf(),
                name: name.clone(),
                available: available(),
            })?,
        None => {
            let candidates: Vec<&matfile::Array> = arrays
                .iter()
                .filter(|a| a.name().ends_with("_DE_time"))
                .collect();
            match candidates.as_slice() {
                [] => {
                    return Err(RecordingError::NoDriveEndVariable {
                        path: path.to_path_buf(),
                        available: available(),
                    });
                }
                [only] => *only,
                many => pick_by_file_number(path, many).ok_or_else(|| {
                    RecordingError::AmbiguousDriveEndVariable {
                        path: path.to_path_buf(),
                        candidates: many
                            .iter()
                            .map(|a| a.name().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?,
            }
        }
    };

    let name = array.name().to_string();
    let values = mat_values(path, &name, array.data())?;
    let size = array.size();
    let bad_shape = |hint: &str| RecordingError::BadShape {
        path: path.to_path_buf(),
        what: format!("variable {name}"),
        shape: shape_string(size),
        hint: hint.to_string(),
    };
    let (rows, cols) = match size.as_slice() {
        [r, c] => (*r, *c),
        _ => {
            return Err(bad_shape(
                "only 2-D variables (N x 1, 1 x N, or N x C with a column chosen) can be read",
            ));
        }
    };

    if rows == 1 || cols == 1 {
        // A vector, (N, 1) or (1, N): the data is the signal whatever the orientation.
        if let Some(c) = opts.column
            && c != 0
        {
            return Err(RecordingError::ColumnOutOfRange {
                path: path.to_path_buf(),
                kind: "column",
                index: c,
                count: 1,
                what: format!("variable {name} ({})", shape_string(size)),
            });
        }
        let samples = values.into_iter().map(|v| v as f32).collect();
        return Ok((samples, None, name, None));
    }

    let Some(c) = opts.column else {
        return Err(bad_shape(&format!(
            "choose one of its {cols} columns with the `column` option"
        )));
    };
    if c >= cols {
        return Err(RecordingError::ColumnOutOfRange {
            path: path.to_path_buf(),
            kind: "column",
            index: c,
            count: cols,
            what: format!("variable {name} ({})", shape_string(size)),
        });
    }
    // MATLAB stores column-major: column c is one contiguous run of `rows` values.
    let samples = values
        .get(c * rows..(c + 1) * rows)
        .ok_or_else(|| RecordingError::Malformed {
            path: path.to_path_buf(),
            format: "MATLAB 5 .mat",
            detail: format!(
                "variable {name} declares shape {} but holds {} values",
                shape_string(size),
                values.len()
            ),
            hint: "the file is probably truncated; obtain it again",
        })?
        .iter()
        .map(|v| *v as f32)
        .collect();
    Ok((samples, None, format!("{name} column {c}"), None))
}

/// CWRU files sometimes hold more than one `*_DE_time` variable (e.g. `X098_DE_time` and
/// `X099_DE_time` in `98.mat`); the right one carries the number the file name ends with.
fn pick_by_file_number<'a>(
    path: &Path,
    candidates: &[&'a matfile::Array],
) -> Option<&'a matfile::Array> {
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    let digits: String = stem
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let file_number: u64 = digits.parse().ok()?;
    let mut matching = candidates.iter().filter(|a| {
        let n: String = a
            .name()
            .trim_start_matches('X')
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        n.parse::<u64>().ok() == Some(file_number)
    });
    let first = matching.next()?;
    match matching.next() {
        None => Some(*first),
        Some(_) => None,
    }
}

fn mat_values(
    path: &Path,
    name: &str,
    data: &matfile::NumericData,
) -> Result<Vec<f64>, RecordingError> {
    use matfile::NumericData as D;
    fn conv<T: Copy>(real: &[T], imag: &Option<Vec<T>>, f: impl Fn(T) -> f64) -> Option<Vec<f64>> {
        if imag.is_some() {
            return None;
        }
        Some(real.iter().map(|v| f(*v)).collect())
    }
    let out = match data {
        D::Double { real, imag } => conv(real, imag, |v| v),
        D::Single { real, imag } => conv(real, imag, f64::from),
        D::Int8 { real, imag } => conv(real, imag, f64::from),
        D::UInt8 { real, imag } => conv(real, imag, f64::from),
        D::Int16 { real, imag } => conv(real, imag, f64::from),
        D::UInt16 { real, imag } => conv(real, imag, f64::from),
        D::Int32 { real, imag } => conv(real, imag, f64::from),
        D::UInt32 { real, imag } => conv(real, imag, f64::from),
        D::Int64 { real, imag } => conv(real, imag, |v| v as f64),
        D::UInt64 { real, imag } => conv(real, imag, |v| v as f64),
    };
    out.ok_or_else(|| RecordingError::Unsupported {
        path: path.to_path_buf(),
        what: format!("variable {name}"),
        detail: "it is complex-valued; store the real signal instead".to_string(),
    })
}

fn shape_string(size: &[usize]) -> String {
    size.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}
