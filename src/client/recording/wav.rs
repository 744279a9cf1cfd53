//! WAV files: one channel, integer or float samples, the file's sample rate, and the bits of integer ones.

use std::path::Path;

use super::{Loaded, ReadOptions, RecordingError, open_error};
pub(super) fn read_wav(path: &Path, opts: &ReadOptions) -> Result<Loaded, RecordingError> {
    let wav_error = |e: hound::Error| match e {
        hound::Error::IoError(source) => open_error(path, source),
        other => RecordingError::Malformed {
            path: path.to_path_buf(),
            format: ".wav",
            detail: other.to_string(),
            hint: "supported are PCM integer 8/16/24/32-bit and 32-bit float WAV files; convert others (e.g. with sox or ffmpeg)",
        },
    };
    let mut reader = hound::WavReader::open(path).map_err(wav_error)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    let channel = opts.column.unwrap_or(0);
    if channel >= channels {
        return Err(RecordingError::ColumnOutOfRange {
            path: path.to_path_buf(),
            kind: "channel",
            index: channel,
            count: channels,
            what: "the WAV file".to_string(),
        });
    }
    let mut samples = Vec::with_capacity(reader.len() as usize / channels.max(1));
    match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / 2f64.powi(i32::from(spec.bits_per_sample) - 1);
            for (i, s) in reader.samples::<i32>().enumerate() {
                let s = s.map_err(wav_error)?;
                if i % channels == channel {
                    samples.push((f64::from(s) * scale) as f32);
                }
            }
        }
        hound::SampleFormat::Float => {
            for (i, s) in reader.samples::<f32>().enumerate() {
                let s = s.map_err(wav_error)?;
                if i % channels == channel {
                    samples.push(s);
                }
            }
        }
    }
    Ok((
        samples,
        Some(f64::from(spec.sample_rate)),
        format!("channel {channel}"),
        (spec.sample_format == hound::SampleFormat::Int).then_some(u32::from(spec.bits_per_sample)),
    ))
}
