//! How a client puts one stream's samples on the wire: f32le, or integer codes (i16le, i32le) with the scale that
//! turns them back into the card's unit.

use crate::proto::{IntegerSamples, sample_chunk};

/// The encoding of a stream's chunks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wire {
    /// 4 bytes a sample, as recorded.
    F32,
    /// 2 bytes a sample: code = round(x / scale), a `bits`-bit converter's codes (at most 16).
    I16 { scale: f32, bits: u32 },
    /// 4 bytes a sample for converters of 17 to 32 bits (24-bit ADCs).
    I32 { scale: f32, bits: u32 },
}

/// Which encoding to use for a recording (`replay --wire`).
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireChoice {
    /// Integer recordings (PCM WAV) as their own codes, i16le up to 16 bits and i32le above; float ones as f32le.
    #[default]
    Auto,
    F32,
    /// 16-bit codes: an integer recording's own codes (narrowed from more bits), a float one quantised.
    I16,
    /// 24-bit codes in i32le: an integer recording's own codes, a float one quantised.
    I32,
}

/// Quantising a float recording leaves 6 dB of headroom above its peak, so no sample lands on the full-scale code
/// (which the server reads as clipping).
const HEADROOM: f32 = 2.0;

impl Wire {
    /// The wire for a recording: its samples and, for integer files, the bits of its codes (each sample is then
    /// code / 2^(bits-1) exactly).
    pub fn choose(choice: WireChoice, samples: &[f32], adc_bits: Option<u32>) -> Wire {
        let codes = |bits: u32| Self::integer(0.5f32.powi(bits as i32 - 1), bits);
        let quantised = |bits: u32| {
            let peak = samples.iter().fold(0f32, |m, x| m.max(x.abs()));
            let full_scale = 2f32.powi(bits as i32 - 1) - 1.0;
            let scale = if peak > 0.0 {
                HEADROOM * peak / full_scale
            } else {
                1.0
            };
            Self::integer(scale, bits)
        };
        match (choice, adc_bits) {
            (WireChoice::F32, _) | (WireChoice::Auto, None) => Wire::F32,
            (WireChoice::Auto, Some(bits)) => codes(bits.clamp(2, 32)),
            (WireChoice::I16, Some(bits)) => codes(bits.clamp(2, 16)),
            (WireChoice::I32, Some(bits)) => codes(bits.clamp(17, 32)),
            (WireChoice::I16, None) => quantised(16),
            (WireChoice::I32, None) => quantised(24),
        }
    }

    fn integer(scale: f32, bits: u32) -> Wire {
        if bits <= 16 {
            Wire::I16 { scale, bits }
        } else {
            Wire::I32 { scale, bits }
        }
    }

    /// Bytes per sample on the wire.
    pub fn width(self) -> usize {
        match self {
            Wire::I16 { .. } => 2,
            Wire::F32 | Wire::I32 { .. } => 4,
        }
    }

    /// Samples `at..end` of `samples` repeated end to end (a replay longer than its recording), encoded.
    pub fn encode(self, samples: &[f32], at: u64, end: u64) -> sample_chunk::Samples {
        let mut bytes = Vec::with_capacity(end.saturating_sub(at) as usize * self.width());
        for part in wrapped(samples, at, end) {
            match self {
                Wire::F32 if cfg!(target_endian = "little") => {
                    bytes.extend_from_slice(bytemuck::cast_slice(part))
                }
                Wire::F32 => part
                    .iter()
                    .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes())),
                Wire::I16 { scale, bits } => part.iter().for_each(|x| {
                    bytes.extend_from_slice(&(code(*x, scale, bits) as i16).to_le_bytes())
                }),
                Wire::I32 { scale, bits } => part
                    .iter()
                    .for_each(|x| bytes.extend_from_slice(&code(*x, scale, bits).to_le_bytes())),
            }
        }
        let codes = |data: Vec<u8>, scale, bits| IntegerSamples {
            data: data.into(),
            scale,
            offset: 0.0,
            adc_bits: bits,
        };
        match self {
            Wire::F32 => sample_chunk::Samples::F32le(bytes.into()),
            Wire::I16 { scale, bits } => sample_chunk::Samples::I16le(codes(bytes, scale, bits)),
            Wire::I32 { scale, bits } => sample_chunk::Samples::I32le(codes(bytes, scale, bits)),
        }
    }
}

/// The converter's code for `x`: rounded, and held at the full scale beyond it (as the converter would).
fn code(x: f32, scale: f32, bits: u32) -> i32 {
    let top = (1i64 << (bits - 1)) - 1;
    (f64::from(x) / f64::from(scale))
        .round()
        .clamp(-(top as f64) - 1.0, top as f64) as i32
}

/// The slices of `samples` that make up `at..end` when it repeats end to end.
fn wrapped(samples: &[f32], at: u64, end: u64) -> impl Iterator<Item = &[f32]> {
    let n = samples.len() as u64;
    let mut i = at;
    std::iter::from_fn(move || {
        if i >= end || n == 0 {
            return None;
        }
        let from = (i % n) as usize;
        let take = ((end - i) as usize).min(samples.len() - from);
        i += take as u64;
        Some(&samples[from..from + take])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(s: sample_chunk::Samples) -> Vec<f32> {
        match s {
            sample_chunk::Samples::F32le(b) => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            other => panic!("not f32le: {other:?}"),
        }
    }

    #[test]
    fn chunks_wrap_around_the_recording() {
        let samples = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            floats(Wire::F32.encode(&samples, 2, 8)),
            [2.0, 3.0, 4.0, 0.0, 1.0, 2.0]
        );
        assert_eq!(floats(Wire::F32.encode(&samples, 4, 5)), [4.0]);
        assert!(floats(Wire::F32.encode(&[], 0, 4)).is_empty());
    }

    #[test]
    fn a_16_bit_recording_goes_as_its_own_codes() {
        let codes = [-32768i32, -1, 0, 1, 12345, 32767];
        let samples: Vec<f32> = codes.iter().map(|c| *c as f32 / 32768.0).collect();
        let wire = Wire::choose(WireChoice::Auto, &samples, Some(16));
        assert_eq!(
            wire,
            Wire::I16 {
                scale: 1.0 / 32768.0,
                bits: 16
            }
        );
        let sample_chunk::Samples::I16le(sent) = wire.encode(&samples, 0, 6) else {
            panic!("not i16le");
        };
        assert_eq!(sent.data.len(), 12, "two bytes a sample");
        let back: Vec<i32> = sent
            .data
            .chunks_exact(2)
            .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
            .collect();
        assert_eq!(back, codes);
        // As the server converts them: the very floats the recording holds.
        let served: Vec<f32> = back
            .iter()
            .map(|c| (*c as f32 - sent.offset) * sent.scale)
            .collect();
        assert_eq!(served, samples);
    }

    #[test]
    fn a_24_bit_recording_goes_as_i32_and_floats_stay_floats() {
        assert_eq!(
            Wire::choose(WireChoice::Auto, &[0.5], Some(24)),
            Wire::I32 {
                scale: 0.5f32.powi(23),
                bits: 24
            }
        );
        assert_eq!(Wire::choose(WireChoice::Auto, &[0.5], None), Wire::F32);
        assert_eq!(Wire::choose(WireChoice::F32, &[0.5], Some(16)), Wire::F32);
    }

    #[test]
    fn a_quantised_float_recording_keeps_headroom_and_its_shape() {
        let samples: Vec<f32> = (0..1000).map(|i| 0.3 * (i as f32 * 0.1).sin()).collect();
        let Wire::I16 { scale, bits: 16 } = Wire::choose(WireChoice::I16, &samples, None) else {
            panic!("not 16-bit");
        };
        let codes: Vec<i32> = samples.iter().map(|x| code(*x, scale, 16)).collect();
        let top = codes.iter().map(|c| c.abs()).max().unwrap_or(0);
        assert!(
            (16_000..=16_400).contains(&top),
            "peak code {top}: 6 dB below full scale"
        );
        let worst = samples
            .iter()
            .zip(&codes)
            .map(|(x, c)| (x - *c as f32 * scale).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= scale / 2.0 + f32::EPSILON,
            "error {worst} over half a code"
        );
        // Beyond the full scale a code is held there, as the converter would.
        assert_eq!(code(10.0, scale, 16), 32767);
        assert_eq!(code(-10.0, scale, 16), -32768);
    }
}
