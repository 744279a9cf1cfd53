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
pub(crate) struct Encoder {
    pub model_name: String,
    pub model_version: String,
    pub classes: Vec<String>,
    /// The card's `ood.uncertain_above`, said in an out-of-distribution window's `status_detail`.
    pub uncertain_above: Option<f32>,
}

impl Encoder {
    pub(crate) fn new(model: &LoadedModel) -> Self {
        Self {
            model_name: model.card.name.clone(),
            model_version: model.card.version.clone(),
            classes: model.card.classes.clone(),
            uncertain_above: model.uncertain_above(),
        }
    }

    pub(crate) fn event(&self, event: StreamEvent, detail: Detail) -> StreamDiagnoseResponse {
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

    pub(crate) fn window(&self, w: WindowDiagnosis, detail: Detail) -> WindowResult {
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
                r.ood_score = c.ood_score;
                r.out_of_distribution = c.out_of_distribution;
                if let (true, Some(score), Some(limit)) =
                    (c.out_of_distribution, c.ood_score, self.uncertain_above)
                {
                    r.status_detail = format!(
                        "outside what the model was trained on: OOD score {} > {limit}",
                        above(score, limit)
                    );
                }
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

    pub(crate) fn opened(&self, model: &LoadedModel, spec: &StreamSpec) -> StreamDiagnoseResponse {
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

/// `score` with one decimal, or as many more as it takes to read as above `limit` (23.44 > 23.4, not 23.4 > 23.4).
fn above(score: f32, limit: f32) -> String {
    (1..=6)
        .map(|digits| format!("{score:.digits$}"))
        .find(|text| text.parse::<f32>().is_ok_and(|x| x > limit))
        .unwrap_or_else(|| score.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pipeline::diagnosis::{Classified, Timing, WindowPlace};

    fn encoder(uncertain_above: Option<f32>) -> Encoder {
        Encoder {
            model_name: "m".into(),
            model_version: "2.1.0".into(),
            classes: vec!["normal".into(), "ball_007".into()],
            uncertain_above,
        }
    }

    fn window(
        confidence: f32,
        ood_score: Option<f32>,
        out_of_distribution: bool,
    ) -> WindowDiagnosis {
        WindowDiagnosis {
            place: WindowPlace {
                index: 3,
                first_sample: 0,
                last_sample: 8191,
            },
            verdict: Verdict::Classified(Classified {
                class_index: 1,
                logits: vec![0.0, 1.0],
                probabilities: vec![1.0 - confidence, confidence],
                shrinkage: None,
                ood_score,
                out_of_distribution,
                uncertain: out_of_distribution || confidence < 0.9,
            }),
            timing: Timing::default(),
            total: Duration::from_millis(1),
            severity: None,
        }
    }

    #[test]
    fn an_out_of_distribution_window_is_uncertain_and_says_by_how_much() {
        let r = encoder(Some(23.4)).window(window(0.99, Some(31.2), true), Detail::Compact);
        assert_eq!(r.status, WindowStatus::Uncertain as i32);
        assert_eq!(r.label, "ball_007");
        assert_eq!((r.ood_score, r.out_of_distribution), (Some(31.2), true));
        assert_eq!(
            r.status_detail,
            "outside what the model was trained on: OOD score 31.2 > 23.4"
        );
        let close = encoder(Some(23.4)).window(window(0.99, Some(23.44), true), Detail::Compact);
        assert!(
            close.status_detail.ends_with("OOD score 23.44 > 23.4"),
            "{}",
            close.status_detail
        );
    }

    #[test]
    fn an_in_distribution_window_has_its_score_and_no_detail() {
        let r = encoder(Some(23.4)).window(window(0.99, Some(4.5), false), Detail::Compact);
        assert_eq!(r.status, WindowStatus::Ok as i32);
        assert_eq!((r.ood_score, r.out_of_distribution), (Some(4.5), false));
        assert!(r.status_detail.is_empty());
        // Low confidence alone: UNCERTAIN as before, with no OOD word.
        let unsure = encoder(Some(23.4)).window(window(0.6, Some(4.5), false), Detail::Compact);
        assert_eq!(unsure.status, WindowStatus::Uncertain as i32);
        assert!(!unsure.out_of_distribution && unsure.status_detail.is_empty());
    }

    #[test]
    fn a_model_without_the_output_leaves_the_fields_unset() {
        let r = encoder(None).window(window(0.99, None, false), Detail::Full);
        assert_eq!(r.status, WindowStatus::Ok as i32);
        assert_eq!((r.ood_score, r.out_of_distribution), (None, false));
        assert!(r.status_detail.is_empty());
    }
}
