//! CSV files: one column of samples, with or without a header.

use std::fmt::Write as _;
use std::io::BufReader;
use std::path::Path;

use super::{Loaded, ReadOptions, RecordingError, open};
pub(super) fn read_csv(path: &Path, opts: &ReadOptions) -> Result<Loaded, RecordingError> {
    let column = opts.column.unwrap_or(0);
    let file = open(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(BufReader::new(file));

    let mut samples = Vec::new();
    let mut first = true;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let problem =
                    format!("{e}; the file must be UTF-8 text with comma-separated numbers");
                return Err(match e.into_kind() {
                    csv::ErrorKind::Io(source) => RecordingError::Io {
                        path: path.to_path_buf(),
                        source,
                    },
                    _ => RecordingError::CsvLine {
                        path: path.to_path_buf(),
                        line,
                        problem,
                    },
                });
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let is_first = std::mem::replace(&mut first, false);
        let Some(field) = record.get(column) else {
            let mut problem = format!(
                "column {column} requested but this line has only {} column(s) (0-based)",
                record.len()
            );
            if record.len() == 1 && record.get(0).is_some_and(has_foreign_separator) {
                problem.push_str(
                    "; the file seems to use ';' or tabs as separator, only ',' is supported",
                );
            } else {
                let _ = write!(
                    problem,
                    "; choose a column from 0 to {}",
                    record.len().saturating_sub(1)
                );
            }
            return Err(RecordingError::CsvLine {
                path: path.to_path_buf(),
                line,
                problem,
            });
        };
        match field.parse::<f32>() {
            Ok(v) if v.is_finite() => samples.push(v),
            Ok(v) => {
                return Err(RecordingError::CsvLine {
                    path: path.to_path_buf(),
                    line,
                    problem: format!(
                        "column {column} holds the non-finite value {v} ({field:?}); clean the data (remove NaN/inf) before replaying"
                    ),
                });
            }
            // A non-numeric first line is a header: skip it (once).
            Err(_) if is_first => {}
            Err(_) => {
                let mut problem = format!("column {column} holds {field:?}, which is not a number");
                if has_foreign_separator(field) {
                    problem.push_str(
                        "; the file seems to use ';' or tabs as separator, only ',' is supported",
                    );
                } else if field.is_empty() {
                    problem.push_str("; fill in or remove the empty value");
                } else {
                    problem
                        .push_str("; only the first line may be a header, fix or remove this line");
                }
                return Err(RecordingError::CsvLine {
                    path: path.to_path_buf(),
                    line,
                    problem,
                });
            }
        }
    }
    Ok((samples, None, format!("column {column}"), None))
}

fn has_foreign_separator(field: &str) -> bool {
    field.contains(';') || field.contains('\t')
}
