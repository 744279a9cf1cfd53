//! Reads what a client sends: validates a stream's `open` message and decodes sample chunks into f32 frames.

use crate::api::grpc::proto::{self, ResultDetail, sample_chunk, window};
use crate::error::ServeError;
use crate::model::card::LoadedModel;
use crate::pipeline::resample::{self, StreamResampler};

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_chunk_frames: usize,
}

impl Limits {
    fn check(&self, frames: usize) -> Result<(), ServeError> {
        if frames > self.max_chunk_frames {
            return Err(ServeError::ChunkTooLarge {
                frames,
                max: self.max_chunk_frames,
            });
        }
        Ok(())
    }
}

/// A validated `open`: how to window and answer this stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub machine_id: String,
    pub sensor_id: String,
    pub sample_rate_hz: f64,
    pub channels: usize,
    pub hop: usize,
    pub detail: ResultDetail,
    /// Integer (client, model) rates when the stream must be resampled.
    pub resample: Option<(usize, usize)>,
}

impl StreamSpec {
    pub fn from_open(open: &proto::StreamOpen, model: &LoadedModel) -> Result<Self, ServeError> {
        let card = &model.card;
        if open.channels as usize != card.input.channels {
            return Err(ServeError::Channels {
                got: open.channels,
                want: card.input.channels,
            });
        }
        let rate = open.sample_rate_hz;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ServeError::SampleRate(rate));
        }
        let model_rate = card.input.sample_rate_hz;
        let resample = if (rate - model_rate).abs() < 1e-9 {
            None
        } else {
            Some(
                resample::plan(rate, model_rate)
                    .map_err(|reason| ServeError::UnservableRate { rate, reason })?,
            )
        };
        let max_hop = 1 << 20;
        let hop = match open.hop {
            0 => card.default_hop,
            h if h as usize > max_hop => {
                return Err(ServeError::Hop {
                    hop: h,
                    max: max_hop,
                });
            }
            h => h as usize,
        };
        Ok(Self {
            machine_id: open.machine_id.clone(),
            sensor_id: open.sensor_id.clone(),
            sample_rate_hz: rate,
            channels: card.input.channels,
            hop,
            detail: detail(open.detail)?,
            resample,
        })
    }

    /// A resampler for this stream, when it needs one.
    pub fn resampler(&self) -> Result<Option<StreamResampler>, ServeError> {
        let Some((a, b)) = self.resample else {
            return Ok(None);
        };
        StreamResampler::new(a, b, self.channels)
            .map(Some)
            .map_err(|reason| ServeError::UnservableRate {
                rate: self.sample_rate_hz,
                reason,
            })
    }
}

pub fn detail(value: i32) -> Result<ResultDetail, ServeError> {
    ResultDetail::try_from(value).map_err(|_| ServeError::UnknownEnum {
        field: "detail",
        value,
    })
}

/// Decodes a chunk's samples into interleaved f32 frames, checking size, framing and finiteness.
pub fn decode_chunk(
    chunk: proto::SampleChunk,
    channels: usize,
    limits: Limits,
) -> Result<(u64, Vec<f32>), ServeError> {
    let first = chunk.first_sample_index;
    let samples = match chunk.samples {
        Some(sample_chunk::Samples::F32le(bytes)) => decode_f32le(&bytes, channels, limits)?,
        Some(sample_chunk::Samples::Values(v)) => check_frames(v.values, channels, limits)?,
        None => return Err(ServeError::NoSamples),
    };
    let frames = samples.len() / channels;
    if first.checked_add(frames as u64).is_none() {
        return Err(ServeError::IndexOverflow { first, frames });
    }
    check_finite(&samples, first)?;
    Ok((first, samples))
}

/// Decodes one unary window; it must hold exactly `want` values.
pub fn decode_window(w: proto::Window, index: usize, want: usize) -> Result<Vec<f32>, ServeError> {
    let samples = match w.samples {
        Some(window::Samples::F32le(bytes)) if bytes.len() % 4 == 0 => f32le_to_vec(&bytes),
        Some(window::Samples::F32le(bytes)) => {
            return Err(ServeError::Misaligned {
                len: bytes.len(),
                frame_bytes: 4,
            });
        }
        Some(window::Samples::Values(v)) => v.values,
        None => return Err(ServeError::NoSamples),
    };
    if samples.len() != want {
        return Err(ServeError::WindowLength {
            index,
            got: samples.len(),
            want,
        });
    }
    check_finite(&samples, 0)?;
    Ok(samples)
}

fn decode_f32le(bytes: &[u8], channels: usize, limits: Limits) -> Result<Vec<f32>, ServeError> {
    let frame_bytes = 4 * channels;
    if !bytes.len().is_multiple_of(frame_bytes) {
        return Err(ServeError::Misaligned {
            len: bytes.len(),
            frame_bytes,
        });
    }
    limits.check(bytes.len() / frame_bytes)?;
    Ok(f32le_to_vec(bytes))
}

/// One copy from the wire bytes into f32s; on little-endian machines no per-sample decode.
fn f32le_to_vec(bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / 4];
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
    dst.copy_from_slice(&bytes[..dst.len()]);
    if cfg!(target_endian = "big") {
        for x in &mut out {
            *x = f32::from_bits(x.to_bits().swap_bytes());
        }
    }
    out
}

fn check_frames(values: Vec<f32>, channels: usize, limits: Limits) -> Result<Vec<f32>, ServeError> {
    if !values.len().is_multiple_of(channels) {
        return Err(ServeError::PartialFrame {
            count: values.len(),
            channels,
        });
    }
    limits.check(values.len() / channels)?;
    Ok(values)
}

fn check_finite(samples: &[f32], first: u64) -> Result<(), ServeError> {
    match samples.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(ServeError::NonFinite {
            first,
            index,
            value: samples[index],
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::grpc::proto::FloatSamples;

    const LIMITS: Limits = Limits {
        max_chunk_frames: 8,
    };

    fn bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn both_encodings_decode_to_the_same_frames() {
        let v = [1.5f32, -2.25, 3.0e-7, 4.0];
        let a = proto::SampleChunk {
            first_sample_index: 7,
            samples: Some(sample_chunk::Samples::F32le(bytes(&v))),
        };
        let b = proto::SampleChunk {
            first_sample_index: 7,
            samples: Some(sample_chunk::Samples::Values(FloatSamples {
                values: v.to_vec(),
            })),
        };
        assert_eq!(decode_chunk(a, 1, LIMITS).unwrap(), (7, v.to_vec()));
        assert_eq!(decode_chunk(b, 1, LIMITS).unwrap(), (7, v.to_vec()));
    }

    #[test]
    fn bad_chunks_are_named() {
        let chunk = |s| proto::SampleChunk {
            first_sample_index: 0,
            samples: Some(s),
        };
        let e =
            decode_chunk(chunk(sample_chunk::Samples::F32le(vec![0; 6])), 1, LIMITS).unwrap_err();
        assert!(
            matches!(
                e,
                ServeError::Misaligned {
                    len: 6,
                    frame_bytes: 4
                }
            ),
            "{e}"
        );
        let e = decode_chunk(
            chunk(sample_chunk::Samples::F32le(bytes(&[0.0; 9]))),
            1,
            LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(e, ServeError::ChunkTooLarge { frames: 9, max: 8 }),
            "{e}"
        );
        let e = decode_chunk(
            chunk(sample_chunk::Samples::Values(FloatSamples {
                values: vec![0.0, f32::NAN],
            })),
            1,
            LIMITS,
        )
        .unwrap_err();
        assert!(matches!(e, ServeError::NonFinite { index: 1, .. }), "{e}");
        let e = decode_chunk(
            chunk(sample_chunk::Samples::Values(FloatSamples {
                values: vec![0.0; 3],
            })),
            2,
            LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ServeError::PartialFrame {
                    count: 3,
                    channels: 2
                }
            ),
            "{e}"
        );
        let none = proto::SampleChunk {
            first_sample_index: 0,
            samples: None,
        };
        assert!(matches!(
            decode_chunk(none, 1, LIMITS),
            Err(ServeError::NoSamples)
        ));
        let overflow = proto::SampleChunk {
            first_sample_index: u64::MAX,
            samples: Some(sample_chunk::Samples::Values(FloatSamples {
                values: vec![0.0; 2],
            })),
        };
        assert!(matches!(
            decode_chunk(overflow, 1, LIMITS),
            Err(ServeError::IndexOverflow { .. })
        ));
    }

    #[test]
    fn unknown_detail_is_refused() {
        assert!(detail(1).is_ok());
        assert!(matches!(
            detail(42),
            Err(ServeError::UnknownEnum {
                field: "detail",
                value: 42
            })
        ));
    }
}
