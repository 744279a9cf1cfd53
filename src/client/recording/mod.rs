//! Reads vibration recordings from files for the replay client: CWRU .mat, .csv, .npy, .wav.
//!
//! Every format is reduced to one channel of `f32` samples, plus the sample rate when the
//! file stores one (only `.wav` does; CWRU `.mat` files do not).

mod csv;
mod mat;
mod npy;
mod wav;

use std::fs::File;
use std::path::{Path, PathBuf};

/// File extensions [`read_recording`] understands (lower case, without the dot).
pub const SUPPORTED_EXTENSIONS: [&str; 4] = ["mat", "csv", "npy", "wav"];

/// One channel of a recording read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// The file the samples came from.
    pub path: PathBuf,
    /// The samples, in file order.
    pub samples: Vec<f32>,
    /// Sample rate stored in the file, if the format stores one (only `.wav`).
    pub sample_rate_hz: Option<f64>,
    /// Which part of the file was read, e.g. `"X118_DE_time"`, `"column 0"` or `"channel 0"`.
    pub source: String,
    /// The bits of the integer codes the file stores (PCM WAV): each sample is `code / 2^(bits-1)` exactly, so
    /// it can go on the wire as the code it was.
    pub adc_bits: Option<u32>,
}

/// Which part of a file to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// `.mat`: the variable to read. Default: the drive-end variable (`*_DE_time`).
    pub variable: Option<String>,
    /// `.csv` column, `.npy` column (2-D arrays), `.wav` channel, or the column of a 2-D
    /// `.mat` variable. Default: 0.
    pub column: Option<usize>,
}

/// Why a recording could not be read. Every message names the file, says what was wrong
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording {}: file not found; check the path", .path.display())]
    NotFound { path: PathBuf },

    #[error("recording {}: cannot read the file: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "recording {}: unsupported file type {ext:?}; supported extensions are .mat (CWRU / MATLAB 5), .csv, .npy and .wav",
        .path.display()
    )]
    UnsupportedExtension { path: PathBuf, ext: String },

    #[error("recording {}: not a valid {format} file ({detail}); {hint}", .path.display())]
    Malformed {
        path: PathBuf,
        format: &'static str,
        detail: String,
        hint: &'static str,
    },

    #[error(
        "recording {}: no drive-end variable (a name ending in `_DE_time`) in this .mat file; numeric variables found: {available}; choose one with the `variable` option",
        .path.display()
    )]
    NoDriveEndVariable { path: PathBuf, available: String },

    #[error(
        "recording {}: several drive-end variables ({candidates}) and none matches the file number; choose one with the `variable` option",
        .path.display()
    )]
    AmbiguousDriveEndVariable { path: PathBuf, candidates: String },

    #[error(
        "recording {}: no numeric variable named {name:?} in this .mat file; numeric variables found: {available}; use one of these names",
        .path.display()
    )]
    VariableNotFound {
        path: PathBuf,
        name: String,
        available: String,
    },

    #[error("recording {}: {what} is not usable: {detail}", .path.display())]
    Unsupported {
        path: PathBuf,
        what: String,
        detail: String,
    },

    #[error(
        "recording {}: {what} has shape {shape} but one signal is needed; {hint}",
        .path.display()
    )]
    BadShape {
        path: PathBuf,
        what: String,
        shape: String,
        hint: String,
    },

    #[error(
        "recording {}: {kind} {index} (0-based) requested but {what} has only {count} {kind}(s); choose a {kind} from 0 to {last}",
        .path.display(),
        last = .count.saturating_sub(1)
    )]
    ColumnOutOfRange {
        path: PathBuf,
        kind: &'static str,
        index: usize,
        count: usize,
        what: String,
    },

    #[error("recording {}: line {line}: {problem}", .path.display())]
    CsvLine {
        path: PathBuf,
        line: u64,
        problem: String,
    },

    #[error("recording {}: {what} contains no samples; use a file with data", .path.display())]
    Empty { path: PathBuf, what: String },

    #[error(
        "recording {}: {what} has a non-finite value ({value}) at sample {index}; clean the data (remove NaN/inf) before replaying",
        .path.display()
    )]
    NonFinite {
        path: PathBuf,
        what: String,
        index: usize,
        value: f32,
    },
}

/// Reads one channel of a recording. The format is chosen by the file extension
/// (case-insensitive): `.mat`, `.csv`, `.npy` or `.wav`.
pub fn read_recording(path: &Path, opts: &ReadOptions) -> Result<Recording, RecordingError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if !SUPPORTED_EXTENSIONS.contains(&ext.as_str()) {
        return Err(RecordingError::UnsupportedExtension {
            path: path.to_path_buf(),
            ext: if ext.is_empty() {
                "(none)".to_string()
            } else {
                format!(".{ext}")
            },
        });
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(RecordingError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("it is a directory, not a file"),
            });
        }
        Err(e) => return Err(open_error(path, e)),
    }

    let (samples, sample_rate_hz, source, adc_bits) = match ext.as_str() {
        "mat" => mat::read_mat(path, opts)?,
        "csv" => csv::read_csv(path, opts)?,
        "npy" => npy::read_npy(path, opts)?,
        _ => wav::read_wav(path, opts)?,
    };

    if samples.is_empty() {
        return Err(RecordingError::Empty {
            path: path.to_path_buf(),
            what: source,
        });
    }
    if let Some(index) = samples.iter().position(|x| !x.is_finite()) {
        return Err(RecordingError::NonFinite {
            path: path.to_path_buf(),
            value: samples[index],
            what: source,
            index,
        });
    }
    Ok(Recording {
        path: path.to_path_buf(),
        samples,
        sample_rate_hz,
        source,
        adc_bits,
    })
}

/// Samples, the sample rate the file stores, what was read, and the bits of integer codes.
type Loaded = (Vec<f32>, Option<f64>, String, Option<u32>);

fn open_error(path: &Path, e: std::io::Error) -> RecordingError {
    if e.kind() == std::io::ErrorKind::NotFound {
        RecordingError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        RecordingError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn open(path: &Path) -> Result<File, RecordingError> {
    File::open(path).map_err(|e| open_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "drsn-recording-{tag}-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cwru_fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/training/tests/fixtures/cwru_mini/0HP")
            .join(name)
    }

    fn col(c: usize) -> ReadOptions {
        ReadOptions {
            column: Some(c),
            ..ReadOptions::default()
        }
    }

    fn var(name: &str) -> ReadOptions {
        ReadOptions {
            variable: Some(name.to_string()),
            ..ReadOptions::default()
        }
    }

    /// Writes an uncompressed MATLAB 5 file holding real 2-D double/single variables
    /// (column-major `data`), the layout scipy.io.savemat and the CWRU files use.
    enum MatData {
        F64(Vec<f64>),
        F32(Vec<f32>),
    }

    fn write_mat(path: &Path, vars: &[(&str, [u32; 2], MatData)]) {
        fn element(out: &mut Vec<u8>, ty: u32, payload: &[u8]) {
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
        }
        let mut buf = Vec::new();
        let mut text = b"MATLAB 5.0 MAT-file, written by drsn-serve tests".to_vec();
        text.resize(116, b' ');
        buf.extend_from_slice(&text);
        buf.extend_from_slice(&[0u8; 8]); // subsystem data offset
        buf.extend_from_slice(&0x0100u16.to_le_bytes()); // version
        buf.extend_from_slice(b"IM"); // little-endian marker
        for (name, dims, data) in vars {
            let mut m = Vec::new();
            let class: u32 = match data {
                MatData::F64(_) => 6, // mxDOUBLE_CLASS
                MatData::F32(_) => 7, // mxSINGLE_CLASS
            };
            let mut flags = class.to_le_bytes().to_vec();
            flags.extend_from_slice(&0u32.to_le_bytes());
            element(&mut m, 6, &flags); // miUINT32
            let d: Vec<u8> = dims
                .iter()
                .flat_map(|x| (*x as i32).to_le_bytes())
                .collect();
            element(&mut m, 5, &d); // miINT32
            element(&mut m, 1, name.as_bytes()); // miINT8
            match data {
                MatData::F64(v) => {
                    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    element(&mut m, 9, &b); // miDOUBLE
                }
                MatData::F32(v) => {
                    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    element(&mut m, 7, &b); // miSINGLE
                }
            }
            element(&mut buf, 14, &m); // miMATRIX
        }
        std::fs::write(path, buf).unwrap();
    }

    // ----- CWRU fixture -------------------------------------------------------------

    #[test]
    fn reads_cwru_drive_end_variable() {
        let path = cwru_fixture("12k_Drive_End_B007_0_118.mat");
        let rec = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec.source, "X118_DE_time");
        assert_eq!(rec.samples.len(), 16_384);
        assert_eq!(rec.sample_rate_hz, None);
        assert_eq!(rec.path, path);
        // Reference: scipy.io.loadmat(...)['X118_DE_time'][:3, 0] (a compressed v5 file)
        let expected = [
            0.3133373558521271_f64,
            -0.011370458640158176,
            -0.2054804414510727,
        ];
        for (i, (got, want)) in rec.samples.iter().zip(expected).enumerate() {
            assert!(
                (f64::from(*got) - want).abs() < 1e-6,
                "sample {i}: got {got}, scipy gives {want}"
            );
        }
    }

    #[test]
    fn cwru_explicit_variable_matches_default() {
        let path = cwru_fixture("normal_0_97.mat");
        let default = read_recording(&path, &ReadOptions::default()).unwrap();
        let explicit = read_recording(&path, &var("X097_DE_time")).unwrap();
        assert_eq!(default.source, "X097_DE_time");
        assert_eq!(default.samples, explicit.samples);
        // The healthy baseline is stored at CWRU's 48 kHz: 16,384 samples at 12 kHz.
        assert_eq!(default.samples.len(), 65_536);
    }

    #[test]
    fn mat_missing_variable_lists_available_names() {
        let path = cwru_fixture("12k_Drive_End_B007_0_118.mat");
        let err = read_recording(&path, &var("X118_FE_time")).unwrap_err();
        assert!(
            matches!(err, RecordingError::VariableNotFound { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("X118_FE_time"), "{msg}");
        assert!(msg.contains("X118_DE_time (16384x1)"), "{msg}");
        assert!(msg.contains("12k_Drive_End_B007_0_118.mat"), "{msg}");
    }

    // ----- synthetic .mat -----------------------------------------------------------

    #[test]
    fn mat_f64_row_vector_and_fe_be_variables() {
        let dir = TempDir::new("mat-row");
        let path = dir.file("rec_7.mat");
        let de = vec![0.5, -0.25, 1.0e-3, 3.0];
        write_mat(
            &path,
            &[
                ("X007_FE_time", [1, 4], MatData::F64(vec![9.0; 4])),
                ("X007_DE_time", [1, 4], MatData::F64(de.clone())),
                ("X007RPM", [1, 1], MatData::F64(vec![1797.0])),
            ],
        );
        let rec = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec.source, "X007_DE_time");
        assert_eq!(
            rec.samples,
            de.iter().map(|v| *v as f32).collect::<Vec<_>>()
        );
        let fe = read_recording(&path, &var("X007_FE_time")).unwrap();
        assert_eq!(fe.samples, vec![9.0f32; 4]);
    }

    #[test]
    fn mat_without_drive_end_lists_numeric_variables() {
        let dir = TempDir::new("mat-no-de");
        let path = dir.file("other.mat");
        write_mat(
            &path,
            &[
                ("accel", [3, 1], MatData::F32(vec![1.0, 2.0, 3.0])),
                ("rpm", [1, 1], MatData::F64(vec![1750.0])),
            ],
        );
        let err = read_recording(&path, &ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, RecordingError::NoDriveEndVariable { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("accel (3x1)") && msg.contains("rpm (1x1)"),
            "{msg}"
        );
        let rec = read_recording(&path, &var("accel")).unwrap();
        assert_eq!(rec.samples, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn mat_several_drive_end_variables_pick_file_number() {
        let dir = TempDir::new("mat-many");
        let path = dir.file("normal_2_98.mat");
        let vars = [
            ("X099_DE_time", [2, 1], MatData::F64(vec![1.0, 1.0])),
            ("X098_DE_time", [2, 1], MatData::F64(vec![2.0, 2.0])),
        ];
        write_mat(&path, &vars);
        let rec = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec.source, "X098_DE_time");
        assert_eq!(rec.samples, vec![2.0, 2.0]);

        let other = dir.file("unnumbered.mat");
        write_mat(&other, &vars);
        let err = read_recording(&other, &ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, RecordingError::AmbiguousDriveEndVariable { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("X099_DE_time, X098_DE_time"),
            "{err}"
        );
    }

    #[test]
    fn mat_matrix_needs_column() {
        let dir = TempDir::new("mat-matrix");
        let path = dir.file("m.mat");
        // 3 x 2, column-major: column 0 = [1,2,3], column 1 = [4,5,6]
        write_mat(
            &path,
            &[(
                "X001_DE_time",
                [3, 2],
                MatData::F64(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            )],
        );
        let err = read_recording(&path, &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, RecordingError::BadShape { .. }), "{err:?}");
        assert!(err.to_string().contains("3x2"), "{err}");
        let rec = read_recording(&path, &col(1)).unwrap();
        assert_eq!(rec.samples, vec![4.0, 5.0, 6.0]);
        assert_eq!(rec.source, "X001_DE_time column 1");
        let err = read_recording(&path, &col(2)).unwrap_err();
        assert!(
            matches!(err, RecordingError::ColumnOutOfRange { count: 2, .. }),
            "{err:?}"
        );
    }

    // ----- .csv ---------------------------------------------------------------------

    #[test]
    fn csv_header_and_second_column() {
        let dir = TempDir::new("csv");
        let path = dir.file("rec.csv");
        std::fs::write(&path, "time,accel\n0,0.125\n1,-1.5e-3\n2, 3.25 \n").unwrap();
        let rec = read_recording(&path, &col(1)).unwrap();
        assert_eq!(rec.samples, vec![0.125, -1.5e-3, 3.25]);
        assert_eq!(rec.source, "column 1");
        assert_eq!(rec.sample_rate_hz, None);
        let rec0 = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec0.samples, vec![0.0, 1.0, 2.0]);
        assert_eq!(rec0.source, "column 0");
    }

    #[test]
    fn csv_without_header_keeps_first_line() {
        let dir = TempDir::new("csv-nohdr");
        let path = dir.file("rec.CSV");
        std::fs::write(&path, "0.5\r\n-0.5\r\n").unwrap();
        let rec = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec.samples, vec![0.5, -0.5]);
    }

    #[test]
    fn csv_bad_value_names_line() {
        let dir = TempDir::new("csv-bad");
        let path = dir.file("bad.csv");
        std::fs::write(&path, "accel\n0.1\n0.2\noops\n0.4\n").unwrap();
        let err = read_recording(&path, &ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, RecordingError::CsvLine { line: 4, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("line 4") && msg.contains("\"oops\""), "{msg}");
        assert!(msg.contains("bad.csv"), "{msg}");
    }

    #[test]
    fn csv_missing_column_and_header_only() {
        let dir = TempDir::new("csv-col");
        let path = dir.file("one.csv");
        std::fs::write(&path, "a\n1\n").unwrap();
        let err = read_recording(&path, &col(1)).unwrap_err();
        assert!(
            matches!(err, RecordingError::CsvLine { line: 1, .. }),
            "{err:?}"
        );

        let empty = dir.file("empty.csv");
        std::fs::write(&empty, "accel\n").unwrap();
        let err = read_recording(&empty, &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, RecordingError::Empty { .. }), "{err:?}");
    }

    // ----- .npy ---------------------------------------------------------------------

    #[test]
    fn npy_f64_1d_round_trip() {
        let dir = TempDir::new("npy1");
        let path = dir.file("rec.npy");
        let data = vec![0.1f64, -2.5, 1.0e-7, 42.0];
        ndarray_npy::write_npy(&path, &ndarray::Array1::from(data.clone())).unwrap();
        let rec = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(
            rec.samples,
            data.iter().map(|v| *v as f32).collect::<Vec<_>>()
        );
        assert_eq!(rec.source, "column 0");
        assert_eq!(rec.sample_rate_hz, None);
        let err = read_recording(&path, &col(1)).unwrap_err();
        assert!(
            matches!(err, RecordingError::ColumnOutOfRange { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn npy_f32_2d_column_round_trip() {
        let dir = TempDir::new("npy2");
        let path = dir.file("rec.npy");
        let a = ndarray::arr2(&[[1.0f32, -1.0, 0.5], [2.0, -2.0, 0.25], [3.0, -3.0, 0.125]]);
        ndarray_npy::write_npy(&path, &a).unwrap();
        let rec = read_recording(&path, &col(2)).unwrap();
        assert_eq!(rec.samples, vec![0.5, 0.25, 0.125]);
        assert_eq!(rec.source, "column 2");
        let rec0 = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec0.samples, vec![1.0, 2.0, 3.0]);
        let err = read_recording(&path, &col(3)).unwrap_err();
        assert!(
            matches!(err, RecordingError::ColumnOutOfRange { count: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn npy_integer_dtype_is_rejected() {
        let dir = TempDir::new("npy-int");
        let path = dir.file("ints.npy");
        ndarray_npy::write_npy(&path, &ndarray::Array1::from(vec![1i16, 2, 3])).unwrap();
        let err = read_recording(&path, &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, RecordingError::Unsupported { .. }), "{err:?}");
        assert!(err.to_string().contains("float32"), "{err}");
    }

    // ----- .wav ---------------------------------------------------------------------

    #[test]
    fn wav_16bit_mono_round_trip() {
        let dir = TempDir::new("wav16");
        let path = dir.file("rec.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 12_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let ints = [0i16, 16384, -32768, 32767, -1];
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for s in ints {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        let rec = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec.sample_rate_hz, Some(12_000.0));
        assert_eq!(rec.source, "channel 0");
        let expected: Vec<f32> = ints.iter().map(|s| f32::from(*s) / 32768.0).collect();
        assert_eq!(rec.samples, expected);
        assert_eq!(rec.samples[1], 0.5);
        assert_eq!(rec.samples[2], -1.0);
        assert_eq!(
            rec.adc_bits,
            Some(16),
            "its codes can go on the wire as they are"
        );
    }

    #[test]
    fn wav_float_stereo_channel_1() {
        let dir = TempDir::new("wavf");
        let path = dir.file("rec.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let left = [0.1f32, 0.2, 0.3];
        let right = [-0.75f32, 0.001, 1.5];
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for (l, r) in left.iter().zip(&right) {
            w.write_sample(*l).unwrap();
            w.write_sample(*r).unwrap();
        }
        w.finalize().unwrap();
        let rec = read_recording(&path, &col(1)).unwrap();
        assert_eq!(rec.samples, right.to_vec());
        assert_eq!(rec.source, "channel 1");
        assert_eq!(rec.sample_rate_hz, Some(48_000.0));
        assert_eq!(rec.adc_bits, None, "float samples are no codes");
        let rec0 = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec0.samples, left.to_vec());
        let err = read_recording(&path, &col(2)).unwrap_err();
        assert!(
            matches!(
                err,
                RecordingError::ColumnOutOfRange {
                    kind: "channel",
                    count: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn wav_24bit_scaling() {
        let dir = TempDir::new("wav24");
        let path = dir.file("rec.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 25_600,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for s in [1 << 22, -(1 << 23), 1] {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        let rec = read_recording(&path, &ReadOptions::default()).unwrap();
        assert_eq!(rec.samples, vec![0.5, -1.0, 1.0 / 8_388_608.0]);
        assert_eq!(rec.adc_bits, Some(24));
    }

    // ----- general errors -----------------------------------------------------------

    #[test]
    fn unknown_extension_lists_supported() {
        let dir = TempDir::new("ext");
        let path = dir.file("rec.flac");
        std::fs::write(&path, b"fLaC").unwrap();
        let err = read_recording(&path, &ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, RecordingError::UnsupportedExtension { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        for ext in [".mat", ".csv", ".npy", ".wav", ".flac", "rec.flac"] {
            assert!(msg.contains(ext), "{ext} missing in: {msg}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let dir = TempDir::new("missing");
        let path = dir.file("nope.wav");
        let err = read_recording(&path, &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, RecordingError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.wav"), "{err}");
    }

    #[test]
    fn garbage_mat_is_reported_as_malformed() {
        let dir = TempDir::new("garbage");
        let path = dir.file("junk.mat");
        std::fs::write(&path, b"definitely not a mat file").unwrap();
        let err = read_recording(&path, &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, RecordingError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn non_finite_samples_are_rejected() {
        let dir = TempDir::new("nan");
        let path = dir.file("nan.npy");
        ndarray_npy::write_npy(&path, &ndarray::Array1::from(vec![1.0f32, f32::NAN])).unwrap();
        let err = read_recording(&path, &ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, RecordingError::NonFinite { index: 1, .. }),
            "{err:?}"
        );
    }
}
