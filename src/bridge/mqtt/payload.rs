//! The MQTT bridge's wire: raw-waveform topics and payloads in, JSON results and conditions out.
//!
//! A raw message goes to `{prefix}/raw/{machine_id}/{sensor_id}`; its payload is a 32-byte little-endian header
//! and the samples (interleaved frames):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `DRSN` |
//! | 4 | payload version, 1 |
//! | 5 | encoding: 1 = f32le, 2 = i16le (ADC codes) |
//! | 6..8 | channels (u16, at least 1) |
//! | 8..16 | first_sample_index (u64): the index of the first frame in the sensor's own count |
//! | 16..24 | sample rate in Hz (f64) |
//! | 24..28 | scale (f32, i16 only): value = (code - offset) x scale, in the model's input unit |
//! | 28..32 | offset (f32, i16 only) |

use drsn_client::proto::{Condition, ConditionReason, VibrationZone, WindowStatus};
use drsn_client::proto::{SensorCondition, WindowResult};
use serde_json::{Value, json};

/// Header bytes before the samples.
pub const HEADER_BYTES: usize = 32;
const MAGIC: &[u8; 4] = b"DRSN";
const VERSION: u8 = 1;
/// The highest first_sample_index taken: 2^62, centuries of samples at any rate.
pub const MAX_SAMPLE_INDEX: u64 = 1 << 62;

/// The samples of one raw message.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    F32(Vec<f32>),
    /// ADC codes with value = (code - offset) x scale.
    I16 {
        codes: Vec<i16>,
        scale: f32,
        offset: f32,
    },
}

/// One raw message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub channels: u16,
    pub first_sample_index: u64,
    pub sample_rate_hz: f64,
    pub samples: Samples,
}

impl Raw {
    /// Whole frames carried.
    pub fn frames(&self) -> u64 {
        let n = match &self.samples {
            Samples::F32(v) => v.len(),
            Samples::I16 { codes, .. } => codes.len(),
        };
        (n / usize::from(self.channels.max(1))) as u64
    }

    /// Payload bytes of the samples (what a queue holds).
    pub fn bytes(&self) -> usize {
        match &self.samples {
            Samples::F32(v) => v.len() * 4,
            Samples::I16 { codes, .. } => codes.len() * 2,
        }
    }

    /// What a stream must be opened anew for when it changes: rate, channels, encoding and its scale.
    pub fn shape(&self) -> (u64, u16, Option<(u32, u32)>) {
        let adc = match &self.samples {
            Samples::F32(_) => None,
            Samples::I16 { scale, offset, .. } => Some((scale.to_bits(), offset.to_bits())),
        };
        (self.sample_rate_hz.to_bits(), self.channels, adc)
    }

    /// The same message without its first `frames` frames (already sent: a redelivery's overlap).
    pub fn skip(mut self, frames: u64) -> Self {
        let n = (frames as usize).saturating_mul(usize::from(self.channels));
        match &mut self.samples {
            Samples::F32(v) => drop(v.drain(..n.min(v.len()))),
            Samples::I16 { codes, .. } => drop(codes.drain(..n.min(codes.len()))),
        }
        self.first_sample_index += frames;
        self
    }
}

/// Decodes a raw payload; the error says what is wrong with it.
pub fn decode(payload: &[u8]) -> Result<Raw, String> {
    if payload.len() < HEADER_BYTES {
        return Err(format!(
            "{} bytes: shorter than the {HEADER_BYTES}-byte header",
            payload.len()
        ));
    }
    let (head, body) = payload.split_at(HEADER_BYTES);
    if &head[..4] != MAGIC {
        return Err("the payload does not start with DRSN".into());
    }
    if head[4] != VERSION {
        return Err(format!(
            "payload version {} (this bridge reads {VERSION})",
            head[4]
        ));
    }
    let word = |at: usize| <[u8; 4]>::try_from(&head[at..at + 4]).unwrap_or_default();
    let long = |at: usize| <[u8; 8]>::try_from(&head[at..at + 8]).unwrap_or_default();
    let channels = u16::from_le_bytes([head[6], head[7]]);
    let first_sample_index = u64::from_le_bytes(long(8));
    let sample_rate_hz = f64::from_le_bytes(long(16));
    if channels == 0 {
        return Err("channels is 0".into());
    }
    // Room to count on: sample indices stay far from overflowing in every sum the stream makes.
    if first_sample_index > MAX_SAMPLE_INDEX {
        return Err(format!(
            "first_sample_index {first_sample_index} is above {MAX_SAMPLE_INDEX}"
        ));
    }
    if !(sample_rate_hz.is_finite() && sample_rate_hz > 0.0) {
        return Err(format!(
            "sample rate {sample_rate_hz} Hz is not a positive number"
        ));
    }
    let samples = match head[5] {
        1 => {
            if body.len() % 4 != 0 {
                return Err(format!(
                    "{} bytes of f32 samples are not whole samples",
                    body.len()
                ));
            }
            let values: Vec<f32> = body
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Samples::F32(values)
        }
        2 => {
            if body.len() % 2 != 0 {
                return Err(format!(
                    "{} bytes of i16 samples are not whole samples",
                    body.len()
                ));
            }
            let (scale, offset) = (f32::from_le_bytes(word(24)), f32::from_le_bytes(word(28)));
            if !(scale.is_finite() && scale != 0.0 && offset.is_finite()) {
                return Err("i16 samples need a finite, non-zero scale and a finite offset".into());
            }
            let codes = body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            Samples::I16 {
                codes,
                scale,
                offset,
            }
        }
        other => return Err(format!("encoding {other} (1 = f32le, 2 = i16le)")),
    };
    let raw = Raw {
        channels,
        first_sample_index,
        sample_rate_hz,
        samples,
    };
    let n = match &raw.samples {
        Samples::F32(v) => v.len(),
        Samples::I16 { codes, .. } => codes.len(),
    };
    if n % usize::from(channels) != 0 {
        return Err(format!(
            "{n} samples are not whole frames of {channels} channels"
        ));
    }
    Ok(raw)
}

/// Encodes a raw payload (sensors and tests; the inverse of [`decode`]).
pub fn encode(raw: &Raw) -> Vec<u8> {
    let (encoding, scale, offset, body): (u8, f32, f32, Vec<u8>) = match &raw.samples {
        Samples::F32(v) => (
            1,
            1.0,
            0.0,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Samples::I16 {
            codes,
            scale,
            offset,
        } => (
            2,
            *scale,
            *offset,
            codes.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, encoding]);
    out.extend_from_slice(&raw.channels.to_le_bytes());
    out.extend_from_slice(&raw.first_sample_index.to_le_bytes());
    out.extend_from_slice(&raw.sample_rate_hz.to_le_bytes());
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The machine and sensor a raw topic names: `{prefix}/raw/{machine_id}/{sensor_id}`.
pub fn sensor_of<'t>(prefix: &str, topic: &'t str) -> Option<(&'t str, &'t str)> {
    ids_of(prefix, "raw", topic)
}

/// The machine and sensor of `{prefix}/{kind}/{machine_id}/{sensor_id}`.
pub fn ids_of<'t>(prefix: &str, kind: &str, topic: &'t str) -> Option<(&'t str, &'t str)> {
    let rest = topic
        .strip_prefix(prefix)?
        .strip_prefix('/')?
        .strip_prefix(kind)?
        .strip_prefix('/')?;
    let (machine, sensor) = rest.split_once('/')?;
    (!machine.is_empty() && !sensor.is_empty() && !sensor.contains('/'))
        .then_some((machine, sensor))
}

/// The topics a bridge writes for one sensor.
pub fn result_topic(prefix: &str, machine: &str, sensor: &str) -> String {
    format!("{prefix}/result/{machine}/{sensor}")
}
pub fn condition_topic(prefix: &str, machine: &str, sensor: &str) -> String {
    format!("{prefix}/condition/{machine}/{sensor}")
}
/// A closing bridge's samples of a sensor that no window covers yet (retained; a raw payload): the next bridge
/// starts there.
pub fn tail_topic(prefix: &str, machine: &str, sensor: &str) -> String {
    format!("{prefix}/tail/{machine}/{sensor}")
}
pub fn error_topic(prefix: &str, machine: &str, sensor: &str) -> String {
    format!("{prefix}/error/{machine}/{sensor}")
}

fn name<E: Copy>(
    value: i32,
    of: impl Fn(i32) -> Option<E>,
    text: impl Fn(E) -> &'static str,
) -> &'static str {
    of(value).map(text).unwrap_or("UNKNOWN")
}

/// One window's result as JSON: `window_index` counts the sensor's windows from 0 as one uninterrupted stream would.
pub fn window_json(machine: &str, sensor: &str, index: u64, r: &WindowResult) -> Value {
    json!({
        "machine_id": machine,
        "sensor_id": sensor,
        "window_index": index,
        "first_sample_index": r.first_sample_index,
        "last_sample_index": r.last_sample_index,
        "status": name(r.status, |v| WindowStatus::try_from(v).ok(), |s| s.as_str_name()),
        "label": (!r.label.is_empty()).then_some(&r.label),
        "class_index": r.class_index,
        "confidence": r.confidence,
        "status_detail": (!r.status_detail.is_empty()).then_some(&r.status_detail),
        "velocity_rms_mm_s": r.velocity_rms_mm_s,
        "zone": name(r.zone, |v| VibrationZone::try_from(v).ok(), |z| z.as_str_name()),
        "out_of_distribution": r.out_of_distribution,
        "model_name": r.model_name,
        "model_version": r.model_version,
    })
}

/// A condition change as JSON (retained: the sensor's last condition for whoever subscribes later).
pub fn condition_json(c: &SensorCondition) -> Value {
    json!({
        "machine_id": c.machine_id,
        "sensor_id": c.sensor_id,
        "condition": name(c.condition, |v| Condition::try_from(v).ok(), |s| s.as_str_name()),
        "previous": name(c.previous, |v| Condition::try_from(v).ok(), |s| s.as_str_name()),
        "reason": name(c.reason, |v| ConditionReason::try_from(v).ok(), |s| s.as_str_name()),
        "fault_class": (!c.fault_class.is_empty()).then_some(&c.fault_class),
        "evidence_seconds": c.evidence_seconds,
        "since_sample": c.since_sample,
        "since_unix_ms": c.since_unix_ms,
        "velocity_rms_mm_s": c.velocity_rms_mm_s,
        "zone": name(c.zone, |v| VibrationZone::try_from(v).ok(), |z| z.as_str_name()),
        "worst_zone": name(c.worst_zone, |v| VibrationZone::try_from(v).ok(), |z| z.as_str_name()),
        "summary": c.summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(samples: Samples) -> Raw {
        Raw {
            channels: 1,
            first_sample_index: 40_960,
            sample_rate_hz: 12_000.0,
            samples,
        }
    }

    #[test]
    fn payloads_round_trip_in_both_encodings() {
        for samples in [
            Samples::F32(vec![0.5, -1.25, 3.0]),
            Samples::I16 {
                codes: vec![1, -2, i16::MAX, i16::MIN],
                scale: 1e-3,
                offset: 0.5,
            },
        ] {
            let r = raw(samples);
            assert_eq!(decode(&encode(&r)).unwrap(), r);
        }
    }

    #[test]
    fn broken_payloads_are_named() {
        let good = encode(&raw(Samples::F32(vec![1.0, 2.0])));
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let mut odd = good.clone();
        odd.push(0);
        let mut zero_rate = good.clone();
        zero_rate[16..24].copy_from_slice(&0f64.to_le_bytes());
        let mut encoding = good.clone();
        encoding[5] = 9;
        let mut far = good.clone();
        far[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut frames = encode(&raw(Samples::F32(vec![1.0, 2.0, 3.0])));
        frames[6] = 2;
        for (payload, says) in [
            (&good[..10], "header"),
            (&bad_magic[..], "DRSN"),
            (&odd[..], "whole samples"),
            (&zero_rate[..], "positive"),
            (&encoding[..], "encoding 9"),
            (&frames[..], "whole frames"),
            (&far[..], "above"),
        ] {
            let err = decode(payload).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn a_redelivered_overlap_is_skipped_by_frames() {
        let r = Raw {
            channels: 2,
            ..raw(Samples::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
        };
        let rest = r.skip(2);
        assert_eq!(rest.samples, Samples::F32(vec![5.0, 6.0]));
        assert_eq!((rest.first_sample_index, rest.frames()), (40_962, 1));
    }

    #[test]
    fn topics_name_a_machine_and_a_sensor() {
        assert_eq!(
            sensor_of("drsn", "drsn/raw/pump-7/de"),
            Some(("pump-7", "de"))
        );
        assert_eq!(sensor_of("plant/a", "plant/a/raw/m/s"), Some(("m", "s")));
        for bad in [
            "drsn/raw/pump-7",
            "drsn/raw//de",
            "drsn/raw/m/s/x",
            "other/raw/m/s",
        ] {
            assert_eq!(sensor_of("drsn", bad), None, "{bad}");
        }
    }
}
