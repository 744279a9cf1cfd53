//! What a client asks for when it opens a stream, validated against the model and the server's limits: rate,
//! hop, ids, the detail of results, and the memory the stream may hold.

use crate::error::ServeError;
use crate::model::card::LoadedModel;
use crate::pipeline::resample::{self, StreamResampler};
use crate::pipeline::severity::ZoneLimits;

/// How much of each result the client wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Class, confidence, noise score, sample range and timings.
    Compact,
    /// Also the per-class probabilities and per-unit shrinkage.
    Full,
}

/// A stream's `open`, as any API received it.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    pub machine_id: String,
    pub sensor_id: String,
    pub sample_rate_hz: f64,
    pub channels: u32,
    /// Window step in model-rate samples; 0 means the card's default.
    pub hop: u32,
    pub detail: Detail,
    /// The machine's ISO vibration zones; `None`: the server's default.
    pub zones: Option<ZoneLimits>,
}

/// Limits on what one stream or request may carry, and hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_chunk_frames: usize,
    /// Longest `machine_id` / `sensor_id`, in bytes.
    pub max_id_bytes: usize,
    /// Windows one stream may have in flight (queued, running or awaiting delivery).
    pub stream_buffer: usize,
    /// Bytes the transport may buffer for one stream before the server reads them (HTTP/2 stream window).
    pub transport_buffer: usize,
    /// The most memory one stream may be budgeted, in bytes.
    pub max_stream_memory: usize,
    /// The ISO vibration zones of a stream that names none (`--iso-group`, `--iso-foundation`).
    pub default_zones: ZoneLimits,
}

impl Limits {
    pub fn check_chunk(&self, frames: usize) -> Result<(), ServeError> {
        if frames > self.max_chunk_frames {
            return Err(ServeError::ChunkTooLarge {
                frames,
                max: self.max_chunk_frames,
            });
        }
        Ok(())
    }

    /// The largest message a stream may send (`--max-chunk-frames` frames as f32le or packed floats, or an `open`
    /// with the longest ids), with room for the protobuf tags and lengths around it.
    pub fn stream_message(&self, model: &LoadedModel) -> usize {
        let chunk = self.max_chunk_frames.saturating_mul(4 * model.channels());
        chunk.max(2 * self.max_id_bytes) + MESSAGE_OVERHEAD
    }

    /// Upper bound of a stream's memory, in bytes, and what it is made of: the transport's buffer, the message
    /// being received (tonic's decode buffer, up to [`Limits::stream_message`]), a chunk decoded (and one held back
    /// at a discontinuity), the window being assembled, the windows in flight with their results, and the
    /// resampler's state.
    pub fn stream_memory(&self, model: &LoadedModel, resampler: usize) -> (usize, String) {
        let frame = 4 * model.channels();
        let chunk = self.max_chunk_frames * frame;
        let message = self.stream_message(model);
        let window = model.window_values() * 4;
        let in_flight = self.stream_buffer * (window + RESULT_BYTES);
        let total = self.transport_buffer + message + 2 * chunk + window + in_flight + resampler;
        let what = format!(
            "transport {} KiB, message {} KiB, chunks 2 x {} KiB, windows in flight {} x {} KiB, resampler {} KiB",
            self.transport_buffer / 1024,
            message / 1024,
            chunk / 1024,
            self.stream_buffer,
            (window + RESULT_BYTES) / 1024,
            resampler / 1024
        );
        (total, what)
    }
}

/// Protobuf tags and lengths around a stream message's samples or ids (and a little room for fields a newer
/// client may add).
const MESSAGE_OVERHEAD: usize = 128;

/// Room for one result on its way out (label, vectors, ids).
const RESULT_BYTES: usize = 512;

/// A validated `open`: how to window and answer this stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub machine_id: String,
    pub sensor_id: String,
    pub sample_rate_hz: f64,
    pub channels: usize,
    pub hop: usize,
    pub detail: Detail,
    pub zones: ZoneLimits,
    /// Integer (client, model) rates when the stream must be resampled.
    pub resample: Option<(usize, usize)>,
}

/// Largest hop accepted, in model-rate samples.
pub const MAX_HOP: usize = 1 << 20;

impl StreamSpec {
    pub fn new(
        open: OpenRequest,
        model: &LoadedModel,
        limits: &Limits,
    ) -> Result<Self, ServeError> {
        check_id("machine_id", &open.machine_id, limits.max_id_bytes)?;
        check_id("sensor_id", &open.sensor_id, limits.max_id_bytes)?;
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
        // Within a part per million of the model's rate is the model's rate: below any sensor clock's accuracy, and
        // a rate printed with a rounding error must not cost a resampler.
        let resample = if (rate - model_rate).abs() <= model_rate * 1e-6 {
            None
        } else {
            Some(
                resample::plan(rate, model_rate)
                    .map_err(|reason| ServeError::UnservableRate { rate, reason })?,
            )
        };
        let hop = match open.hop {
            0 => card.default_hop,
            h if h as usize > MAX_HOP => {
                return Err(ServeError::Hop {
                    hop: h,
                    max: MAX_HOP,
                });
            }
            h => h as usize,
        };
        Ok(Self {
            machine_id: open.machine_id,
            sensor_id: open.sensor_id,
            sample_rate_hz: rate,
            channels: card.input.channels,
            hop,
            detail: open.detail,
            zones: open.zones.unwrap_or(limits.default_zones),
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

/// Ids are free text for people, echoed in logs: bounded, and without control characters that could forge log
/// lines or colour a terminal.
fn check_id(field: &'static str, value: &str, max: usize) -> Result<(), ServeError> {
    if value.len() > max {
        return Err(ServeError::IdTooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if let Some((at, _)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(ServeError::IdCharacters { field, at });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_budget_covers_the_largest_message_being_received() {
        let card =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/drsn_cw_cwru.json");
        let model = LoadedModel::load(&card).unwrap();
        let limits = Limits {
            max_chunk_frames: 1 << 16,
            max_id_bytes: 128,
            stream_buffer: 16,
            transport_buffer: 256 << 10,
            max_stream_memory: 2 << 20,
            default_zones: ZoneLimits::default(),
        };
        let message = limits.stream_message(&model);
        assert_eq!(message, (1 << 16) * 4 * model.channels() + MESSAGE_OVERHEAD);
        let (total, what) = limits.stream_memory(&model, 0);
        let chunk = (1 << 16) * 4 * model.channels();
        assert!(
            total >= (256 << 10) + message + 2 * chunk,
            "{total}: {what}"
        );
        assert!(
            total <= 2 << 20,
            "the defaults fit the default budget: {total}"
        );
        assert!(what.contains("message 256 KiB"), "{what}");
    }

    #[test]
    fn ids_are_bounded_and_printable() {
        assert!(check_id("machine_id", "press-7 / bearing DE", 64).is_ok());
        assert!(check_id("machine_id", "Pumpe Süd ✓", 64).is_ok());
        assert!(matches!(
            check_id("sensor_id", &"x".repeat(65), 64),
            Err(ServeError::IdTooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
        for bad in ["a\nforged line", "\u{1b}[31mred", "tab\there", "nul\0"] {
            assert!(
                matches!(
                    check_id("sensor_id", bad, 64),
                    Err(ServeError::IdCharacters { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_rate_within_a_part_per_million_is_the_models_rate() {
        let card =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/drsn_cw_cwru.json");
        let model = LoadedModel::load(&card).unwrap();
        let limits = Limits {
            max_chunk_frames: 1024,
            max_id_bytes: 64,
            stream_buffer: 4,
            transport_buffer: 0,
            max_stream_memory: 1 << 30,
            default_zones: ZoneLimits::default(),
        };
        let open = |rate| OpenRequest {
            machine_id: "m".into(),
            sensor_id: "s".into(),
            sample_rate_hz: rate,
            channels: 1,
            hop: 0,
            detail: Detail::Compact,
            zones: None,
        };
        let rate = model.card.input.sample_rate_hz;
        for same in [rate, rate + 1e-7, rate * (1.0 - 5e-7)] {
            let spec = StreamSpec::new(open(same), &model, &limits).unwrap();
            assert!(spec.resample.is_none(), "{same} Hz is resampled");
        }
        let spec = StreamSpec::new(open(rate * 4.0), &model, &limits).unwrap();
        assert!(spec.resample.is_some());
        let e = StreamSpec::new(open(5e-324), &model, &limits)
            .unwrap_err()
            .to_string();
        assert!(e.contains("5e-324") && e.len() < 120, "{e}");
    }
}
