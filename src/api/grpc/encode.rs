//! The pipeline's answers into drsn.v1 messages: window results with their status, discontinuities, `opened`.

use crate::api::grpc::condition;
use crate::api::grpc::proto::{
    self, InvalidReason, StreamDiagnoseResponse, WindowResult, WindowStatus,
    stream_diagnose_response::Event,
};
use crate::model::card::LoadedModel;
use crate::pipeline::deliver::StreamEvent;
use crate::pipeline::diagnosis::{Verdict, WindowDiagnosis};
use crate::pipeline::quality::Flag;
use crate::pipeline::spec::{Detail, StreamSpec};

/// Builds results: model facts every result repeats, and how much detail the client asked for.
pub struct Encoder {
    pub model_name: String,
    pub model_version: String,
    pub classes: Vec<String>,
}

impl Encoder {
    pub fn new(model: &LoadedModel) -> Self {
        Self {
            model_name: model.card.name.clone(),
            model_version: model.card.version.clone(),
            classes: model.card.classes.clone(),
        }
    }

    pub fn event(&self, event: StreamEvent, detail: Detail) -> StreamDiagnoseResponse {
        let event = match event {
            StreamEvent::Window(w) => Event::Window(self.window(w, detail)),
            StreamEvent::Discontinuity(d) => Event::Discontinuity(proto::Discontinuity {
                expected: d.expected,
                received: d.received,
                samples_discarded: d.samples_discarded,
            }),
        };
        StreamDiagnoseResponse { event: Some(event) }
    }

    pub fn window(&self, w: WindowDiagnosis, detail: Detail) -> WindowResult {
        let full = detail == Detail::Full;
        let mut r = WindowResult {
            window_index: w.place.index,
            first_sample_index: w.place.first_sample,
            last_sample_index: w.place.last_sample,
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            queue_us: w.timing.queue_wait.as_micros() as u64,
            inference_us: w.timing.inference.as_micros() as u64,
            total_us: w.total.as_micros() as u64,
            velocity_rms_mm_s: w.severity.map(|s| s.velocity_mm_s),
            zone: condition::zone(w.severity.map(|s| s.zone)) as i32,
            ..Default::default()
        };
        match w.verdict {
            Verdict::Classified(c) => {
                r.status = if c.uncertain {
                    WindowStatus::Uncertain
                } else {
                    WindowStatus::Ok
                } as i32;
                r.label = self.classes.get(c.class_index).cloned().unwrap_or_default();
                r.class_index = Some(c.class_index as u32);
                r.confidence = Some(c.confidence());
                r.noise_score = c.noise_score();
                if full {
                    r.probabilities = c.probabilities;
                    r.shrinkage = c.shrinkage.unwrap_or_default();
                }
            }
            Verdict::Flagged(f) => {
                let (status, reason) = match f.flag {
                    Flag::Shed => (WindowStatus::Shed, InvalidReason::Unspecified),
                    Flag::Flat => (WindowStatus::InvalidSignal, InvalidReason::Flat),
                    Flag::Clipped => (WindowStatus::InvalidSignal, InvalidReason::Clipped),
                    Flag::OutOfRange => (WindowStatus::InvalidSignal, InvalidReason::OutOfRange),
                    Flag::Impulsive => (WindowStatus::InvalidSignal, InvalidReason::Impulsive),
                    Flag::OutputNotFinite => (
                        WindowStatus::InvalidSignal,
                        InvalidReason::ModelOutputNotFinite,
                    ),
                };
                r.status = status as i32;
                r.invalid_reason = reason as i32;
                r.status_detail = f.detail;
            }
        }
        r
    }

    pub fn opened(&self, model: &LoadedModel, spec: &StreamSpec) -> StreamDiagnoseResponse {
        let card = &model.card;
        StreamDiagnoseResponse {
            event: Some(Event::Opened(proto::StreamOpened {
                model_name: card.name.clone(),
                model_version: card.version.clone(),
                window: card.input.window as u32,
                hop: spec.hop as u32,
                model_sample_rate_hz: card.input.sample_rate_hz,
                resampled: spec.resample.is_some(),
                classes: card.classes.clone(),
                condition: None,
            })),
        }
    }
}
