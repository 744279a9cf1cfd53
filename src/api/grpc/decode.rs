//! drsn.v1 requests into the pipeline's terms: `open` into an [`OpenRequest`], chunks (float or integer codes) and
//! windows into f32 frames, with sizes, framing, codes and finiteness checked.

use crate::api::grpc::condition;
use crate::api::grpc::proto::{
    self, Foundation, IntegerSamples, MachineGroup, ResultDetail, sample_chunk, window,
};
use crate::condition::debounce::State;
use crate::error::ServeError;
use crate::pipeline::quality::Rails;
use crate::pipeline::severity::{self, ZoneLimits};
use crate::pipeline::spec::{Detail, Limits, OpenRequest};

/// The pipeline's `open` from the wire's, and the condition state a resumed stream sent back.
/// The model (name, version) a stream or request asks for; empty: the default model, the newest version.
pub type ModelRef = (String, String);

pub fn open_request(
    open: proto::StreamOpen,
) -> Result<(OpenRequest, Option<State>, ModelRef), ServeError> {
    let carry = open
        .resume_condition
        .map(condition::carry_from)
        .transpose()?;
    let request = OpenRequest {
        detail: detail(open.detail)?,
        zones: zones(open.machine_group, open.foundation)?,
        machine_id: open.machine_id,
        sensor_id: open.sensor_id,
        sample_rate_hz: open.sample_rate_hz,
        channels: open.channels,
        hop: open.hop,
    };
    Ok((request, carry, (open.model, open.model_version)))
}

/// The machine's ISO zone limits; `None` (the server's default) when the open names neither group nor foundation.
fn zones(group: i32, foundation: i32) -> Result<Option<ZoneLimits>, ServeError> {
    let group = match MachineGroup::try_from(group) {
        Ok(MachineGroup::Unspecified) => None,
        Ok(MachineGroup::Large) => Some(severity::MachineGroup::Large),
        Ok(MachineGroup::Medium) => Some(severity::MachineGroup::Medium),
        Ok(MachineGroup::Small) => Some(severity::MachineGroup::Small),
        Err(_) => {
            return Err(ServeError::UnknownEnum {
                field: "machine_group",
                value: group,
            });
        }
    };
    let foundation = match Foundation::try_from(foundation) {
        Ok(Foundation::Unspecified) => None,
        Ok(Foundation::Rigid) => Some(severity::Foundation::Rigid),
        Ok(Foundation::Flexible) => Some(severity::Foundation::Flexible),
        Err(_) => {
            return Err(ServeError::UnknownEnum {
                field: "foundation",
                value: foundation,
            });
        }
    };
    Ok(match (group, foundation) {
        (None, None) => None,
        (g, f) => {
            let default = ZoneLimits::default();
            Some(ZoneLimits::new(
                g.unwrap_or(default.group),
                f.unwrap_or(default.foundation),
            ))
        }
    })
}

pub fn detail(value: i32) -> Result<Detail, ServeError> {
    match ResultDetail::try_from(value) {
        Ok(ResultDetail::Compact) => Ok(Detail::Compact),
        Ok(ResultDetail::Full | ResultDetail::Unspecified) => Ok(Detail::Full),
        Err(_) => Err(ServeError::UnknownEnum {
            field: "detail",
            value,
        }),
    }
}

/// A chunk in the pipeline's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Client sample index of the first frame.
    pub first: u64,
    /// Interleaved f32 frames in the card's input unit.
    pub samples: Vec<f32>,
    /// The converter's full scale in the same unit, when the chunk came as integer codes.
    pub rails: Option<Rails>,
}

/// Decodes a chunk's samples into interleaved f32 frames, checking size, framing, codes and finiteness.
pub fn decode_chunk(
    chunk: proto::SampleChunk,
    channels: usize,
    limits: Limits,
) -> Result<Chunk, ServeError> {
    let first = chunk.first_sample_index;
    let (samples, rails) = match chunk.samples {
        Some(sample_chunk::Samples::F32le(bytes)) => {
            (decode_f32le(&bytes, channels, limits)?, None)
        }
        Some(sample_chunk::Samples::Values(v)) => (check_frames(v.values, channels, limits)?, None),
        Some(sample_chunk::Samples::I16le(codes)) => {
            let (samples, rails) = decode_codes::<2>(&codes, channels, limits)?;
            (samples, Some(rails))
        }
        Some(sample_chunk::Samples::I32le(codes)) => {
            let (samples, rails) = decode_codes::<4>(&codes, channels, limits)?;
            (samples, Some(rails))
        }
        None => {
            return Err(ServeError::NoSamples {
                what: "a chunk".into(),
            });
        }
    };
    let frames = samples.len() / channels;
    if first.checked_add(frames as u64).is_none() {
        return Err(ServeError::IndexOverflow { first, frames });
    }
    // Codes times a finite scale are finite: only float chunks need the check.
    if rails.is_none() {
        check_finite(&samples, |i| {
            format!("sample {i} of the chunk starting at {first}")
        })?;
    }
    Ok(Chunk {
        first,
        samples,
        rails,
    })
}

/// Integer codes of `WIDTH` bytes (2: i16le, 4: i32le) into f32 `(code - offset) * scale`, with the converter's
/// rails in the same unit. One pass converts; a second looks for codes outside the converter's range only when
/// `adc_bits` is below the container's width.
fn decode_codes<const WIDTH: usize>(
    codes: &IntegerSamples,
    channels: usize,
    limits: Limits,
) -> Result<(Vec<f32>, Rails), ServeError> {
    let encoding = if WIDTH == 2 { "i16le" } else { "i32le" };
    let container = 8 * WIDTH as u32;
    let bits = if codes.adc_bits == 0 {
        container
    } else {
        codes.adc_bits
    };
    if !(2..=container).contains(&bits) {
        return Err(ServeError::IntegerSamples {
            encoding,
            problem: format!(
                "adc_bits = {bits}; it must be 2 to {container} (or 0 for {container})"
            ),
        });
    }
    let (scale, offset) = (codes.scale, codes.offset);
    if !(scale.is_finite() && scale != 0.0 && offset.is_finite()) {
        return Err(ServeError::IntegerSamples {
            encoding,
            problem: format!(
                "scale = {scale}, offset = {offset}; scale must be finite and not 0 (input units per code), offset \
                 finite"
            ),
        });
    }
    let frame_bytes = WIDTH * channels;
    if !codes.data.len().is_multiple_of(frame_bytes) {
        return Err(ServeError::Misaligned {
            encoding,
            len: codes.data.len(),
            frame_bytes,
        });
    }
    limits.check_chunk(codes.data.len() / frame_bytes)?;
    let convert = |code: i32| (code as f32 - offset) * scale;
    // Slices of exactly WIDTH bytes (the range check below): the pattern always matches one arm.
    let read = |b: &[u8]| -> i32 {
        match *b {
            [lo, hi] => i32::from(i16::from_le_bytes([lo, hi])),
            [a, b, c, d] => i32::from_le_bytes([a, b, c, d]),
            _ => 0,
        }
    };
    // Fixed-size chunks zipped with the output, so the conversion compiles to vector code with no bounds checks.
    let mut samples = vec![0f32; codes.data.len() / WIDTH];
    if WIDTH == 2 {
        let (pairs, _) = codes.data.as_chunks::<2>();
        for (x, c) in samples.iter_mut().zip(pairs) {
            *x = convert(i32::from(i16::from_le_bytes(*c)));
        }
    } else {
        let (quads, _) = codes.data.as_chunks::<4>();
        for (x, c) in samples.iter_mut().zip(quads) {
            *x = convert(i32::from_le_bytes(*c));
        }
    }
    let (min_code, max_code) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    if bits < container
        && let Some((at, code)) = codes
            .data
            .chunks_exact(WIDTH)
            .map(|b| i64::from(read(b)))
            .enumerate()
            .find(|(_, code)| !(min_code..=max_code).contains(code))
    {
        return Err(ServeError::IntegerSamples {
            encoding,
            problem: format!(
                "code {code} (sample {at} of the chunk) is outside a {bits}-bit converter's {min_code}..={max_code}; \
                 sign-extend the codes, or set adc_bits to the converter's resolution"
            ),
        });
    }
    let (a, b) = (convert(min_code as i32), convert(max_code as i32));
    Ok((
        samples,
        Rails {
            low: a.min(b),
            high: a.max(b),
            bits,
        },
    ))
}

/// Decodes one unary window; it must hold exactly `want` values.
pub fn decode_window(w: proto::Window, index: usize, want: usize) -> Result<Vec<f32>, ServeError> {
    let samples = match w.samples {
        Some(window::Samples::F32le(bytes)) if bytes.len() % 4 == 0 => f32le_to_vec(&bytes),
        Some(window::Samples::F32le(bytes)) => {
            return Err(ServeError::Misaligned {
                encoding: "f32le",
                len: bytes.len(),
                frame_bytes: 4,
            });
        }
        Some(window::Samples::Values(v)) => v.values,
        None => {
            return Err(ServeError::NoSamples {
                what: format!("window {index}"),
            });
        }
    };
    if samples.len() != want {
        return Err(ServeError::WindowLength {
            index,
            got: samples.len(),
            want,
        });
    }
    check_finite(&samples, |i| format!("sample {i} of window {index}"))?;
    Ok(samples)
}

fn decode_f32le(bytes: &[u8], channels: usize, limits: Limits) -> Result<Vec<f32>, ServeError> {
    let frame_bytes = 4 * channels;
    if !bytes.len().is_multiple_of(frame_bytes) {
        return Err(ServeError::Misaligned {
            encoding: "f32le",
            len: bytes.len(),
            frame_bytes,
        });
    }
    limits.check_chunk(bytes.len() / frame_bytes)?;
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
    limits.check_chunk(values.len() / channels)?;
    Ok(values)
}

/// Every sample finite, or the first one that is not, placed by `place` (its index) for the client.
fn check_finite(samples: &[f32], place: impl Fn(usize) -> String) -> Result<(), ServeError> {
    // Every sample arrives through here: blocks checked without a branch per sample (which vectorises), the
    // position looked for only when a block fails.
    let finite = |c: &[f32]| c.iter().fold(true, |ok, x| ok & x.is_finite());
    if samples.chunks(64).all(finite) {
        return Ok(());
    }
    match samples.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(ServeError::NonFinite {
            place: place(index),
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
        max_id_bytes: 64,
        stream_buffer: 4,
        transport_buffer: 0,
        max_stream_memory: 1 << 20,
        default_zones: ZoneLimits::new(severity::MachineGroup::Medium, severity::Foundation::Rigid),
    };

    fn bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn both_encodings_decode_to_the_same_frames() {
        let v = [1.5f32, -2.25, 3.0e-7, 4.0];
        let a = proto::SampleChunk {
            first_sample_index: 7,
            samples: Some(sample_chunk::Samples::F32le(bytes(&v).into())),
        };
        let b = proto::SampleChunk {
            first_sample_index: 7,
            samples: Some(sample_chunk::Samples::Values(FloatSamples {
                values: v.to_vec(),
            })),
        };
        let want = Chunk {
            first: 7,
            samples: v.to_vec(),
            rails: None,
        };
        assert_eq!(decode_chunk(a, 1, LIMITS).unwrap(), want);
        assert_eq!(decode_chunk(b, 1, LIMITS).unwrap(), want);
    }

    fn codes(data: Vec<u8>, scale: f32, offset: f32, adc_bits: u32) -> IntegerSamples {
        IntegerSamples {
            data: data.into(),
            scale,
            offset,
            adc_bits,
        }
    }

    fn int_chunk(s: sample_chunk::Samples) -> proto::SampleChunk {
        proto::SampleChunk {
            first_sample_index: 3,
            samples: Some(s),
        }
    }

    #[test]
    fn integer_codes_decode_to_scaled_floats_with_the_converter_rails() {
        let i16s: Vec<u8> = [-32768i16, -2, 0, 5, 32767]
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        let got = decode_chunk(
            int_chunk(sample_chunk::Samples::I16le(codes(i16s, 0.5, 1.0, 0))),
            1,
            LIMITS,
        )
        .unwrap();
        assert_eq!(got.first, 3);
        assert_eq!(got.samples, [-16384.5, -1.5, -0.5, 2.0, 16383.0]);
        assert_eq!(
            got.rails,
            Some(Rails {
                low: -16384.5,
                high: 16383.0,
                bits: 16
            })
        );
        // A 24-bit converter in 32-bit words: its rails are +-2^23, and a negative scale swaps them.
        let i32s: Vec<u8> = [-(1i32 << 23), 0, (1 << 23) - 1]
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        let got = decode_chunk(
            int_chunk(sample_chunk::Samples::I32le(codes(i32s, -1.0, 0.0, 24))),
            1,
            LIMITS,
        )
        .unwrap();
        assert_eq!(got.samples, [8_388_608.0, -0.0, -8_388_607.0]);
        assert_eq!(
            got.rails,
            Some(Rails {
                low: -8_388_607.0,
                high: 8_388_608.0,
                bits: 24
            })
        );
    }

    #[test]
    fn bad_integer_chunks_say_what_to_fix() {
        let err = |s| {
            decode_chunk(int_chunk(s), 1, LIMITS)
                .unwrap_err()
                .to_string()
        };
        let wide = (1i32 << 23).to_le_bytes().to_vec();
        let e = err(sample_chunk::Samples::I32le(codes(wide, 1.0, 0.0, 24)));
        assert!(
            e.contains("code 8388608 (sample 0 of the chunk) is outside a 24-bit converter's"),
            "{e}"
        );
        let e = err(sample_chunk::Samples::I16le(codes(vec![0; 4], 0.0, 0.0, 0)));
        assert!(e.starts_with("i16le: scale = 0"), "{e}");
        let e = err(sample_chunk::Samples::I16le(codes(
            vec![0; 4],
            f32::NAN,
            0.0,
            0,
        )));
        assert!(e.contains("scale must be finite"), "{e}");
        let e = err(sample_chunk::Samples::I16le(codes(
            vec![0; 4],
            1.0,
            0.0,
            17,
        )));
        assert!(e.contains("adc_bits = 17; it must be 2 to 16"), "{e}");
        let e = err(sample_chunk::Samples::I16le(codes(vec![0; 3], 1.0, 0.0, 0)));
        assert!(e.starts_with("i16le carries 3 bytes"), "{e}");
        let e = err(sample_chunk::Samples::I32le(codes(
            vec![0; 36],
            1.0,
            0.0,
            0,
        )));
        assert!(e.contains("over the limit of 8"), "{e}");
    }

    #[test]
    fn bad_chunks_are_named() {
        let chunk = |s| proto::SampleChunk {
            first_sample_index: 0,
            samples: Some(s),
        };
        let e = decode_chunk(
            chunk(sample_chunk::Samples::F32le(vec![0; 6].into())),
            1,
            LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ServeError::Misaligned {
                    encoding: "f32le",
                    len: 6,
                    frame_bytes: 4
                }
            ),
            "{e}"
        );
        let e = decode_chunk(
            chunk(sample_chunk::Samples::F32le(bytes(&[0.0; 9]).into())),
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
        assert!(
            e.to_string()
                .starts_with("sample 1 of the chunk starting at 0 is NaN"),
            "{e}"
        );
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
            Err(ServeError::NoSamples { .. })
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
        assert_eq!(detail(1).unwrap(), Detail::Compact);
        assert_eq!(detail(0).unwrap(), Detail::Full);
        assert!(matches!(
            detail(42),
            Err(ServeError::UnknownEnum {
                field: "detail",
                value: 42
            })
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes: a chunk decodes exactly when it is whole frames, within the limit and finite, and then to
            /// the very floats the bytes encode; nothing panics.
            #[test]
            fn f32le_chunks_decode_exactly_or_are_refused(
                bytes in proptest::collection::vec(any::<u8>(), 0..80),
                channels in 1usize..4,
                first in any::<u64>(),
            ) {
                let chunk = proto::SampleChunk {
                    first_sample_index: first,
                    samples: Some(sample_chunk::Samples::F32le(bytes.clone().into())),
                };
                let floats: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let frames = bytes.len() / (4 * channels);
                let whole = bytes.len() % (4 * channels) == 0;
                let ok = whole
                    && frames <= LIMITS.max_chunk_frames
                    && floats.iter().all(|x| x.is_finite())
                    && first.checked_add(frames as u64).is_some();
                match decode_chunk(chunk, channels, LIMITS) {
                    Ok(chunk) => {
                        prop_assert!(ok);
                        prop_assert_eq!(chunk.first, first);
                        prop_assert_eq!(chunk.samples, floats);
                    }
                    Err(_) => prop_assert!(!ok),
                }
            }

            #[test]
            fn packed_floats_decode_exactly_or_are_refused(
                values in proptest::collection::vec(any::<f32>(), 0..20),
                channels in 1usize..4,
            ) {
                let chunk = proto::SampleChunk {
                    first_sample_index: 0,
                    samples: Some(sample_chunk::Samples::Values(FloatSamples { values: values.clone() })),
                };
                let ok = values.len() % channels == 0
                    && values.len() / channels <= LIMITS.max_chunk_frames
                    && values.iter().all(|x| x.is_finite());
                match decode_chunk(chunk, channels, LIMITS) {
                    Ok(chunk) => {
                        prop_assert!(ok);
                        prop_assert_eq!(chunk.samples.len(), values.len());
                    }
                    Err(_) => prop_assert!(!ok),
                }
            }
        }
    }

    #[test]
    fn unary_window_errors_speak_of_windows_not_chunks() {
        let empty = proto::Window { samples: None };
        let e = decode_window(empty, 3, 4).unwrap_err().to_string();
        assert!(e.starts_with("window 3 carries no samples"), "{e}");
        let nan = proto::Window {
            samples: Some(window::Samples::Values(FloatSamples {
                values: vec![0.0, f32::NAN, 0.0, 0.0],
            })),
        };
        let e = decode_window(nan, 2, 4).unwrap_err().to_string();
        assert!(e.starts_with("sample 1 of window 2 is NaN"), "{e}");
        assert!(!e.contains("chunk"), "{e}");
    }
}
