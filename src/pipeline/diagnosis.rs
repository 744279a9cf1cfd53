//! What the pipeline answers for a window, protocol-neutral: a class with its probabilities, shrinkage, noise score
//! and OOD score, or a flag saying why there is no class; with where the window came from and how long it took.

use std::time::Duration;

use crate::engine::BatchOutput;
use crate::pipeline::quality::{Flag, Flagged};
use crate::pipeline::severity::Severity;
use crate::telemetry::metrics as m;

/// The model's class for a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub class_index: usize,
    /// The model's raw outputs, in the card's class order.
    pub logits: Vec<f32>,
    /// Softmax of logits / temperature, in the card's class order.
    pub probabilities: Vec<f32>,
    /// Mean shrinkage alpha of each unit, when the model has that output.
    pub shrinkage: Option<Vec<f32>>,
    /// Distance from the training data (higher = further), when the model has an `ood_score` output.
    pub ood_score: Option<f32>,
    /// The OOD score is above the card's `ood.uncertain_above`.
    pub out_of_distribution: bool,
    /// The confidence is below the card's `uncertain_below`, or the window is out of distribution.
    pub uncertain: bool,
}

impl Classified {
    pub fn confidence(&self) -> f32 {
        self.probabilities
            .get(self.class_index)
            .copied()
            .unwrap_or(0.0)
    }

    /// 1 - mean shrinkage alpha, in [0, 1]: higher means the network judged more of the signal to be noise.
    pub fn noise_score(&self) -> Option<f32> {
        self.shrinkage.as_ref().filter(|s| !s.is_empty()).map(|s| {
            let mean = s.iter().sum::<f32>() / s.len() as f32;
            (1.0 - mean).clamp(0.0, 1.0)
        })
    }
}

/// A class, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Classified(Classified),
    Flagged(Flagged),
}

/// Where a window's time went inside the server.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub queue_wait: Duration,
    /// The whole batch's inference.
    pub inference: Duration,
    pub batch_size: usize,
}

/// The answer the inference side gives for one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub verdict: Verdict,
    pub timing: Timing,
}

impl Answer {
    /// A window answered without running the model.
    pub fn flagged(flagged: Flagged) -> Self {
        Self {
            verdict: Verdict::Flagged(flagged),
            timing: Timing::default(),
        }
    }
}

/// How the model's outputs become answers: the softmax temperature and the uncertainty thresholds from the card.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub temperature: f32,
    pub uncertain_below: Option<f32>,
    /// OOD score above which a class is uncertain (`ood.uncertain_above`).
    pub uncertain_above: Option<f32>,
}

impl Reading {
    /// The answer for one row of a batch's output. Non-finite outputs (logits, shrinkage, OOD score) are flagged,
    /// never turned into a class.
    pub fn answer(&self, out: &BatchOutput, row: usize, timing: Timing) -> Answer {
        let logits = &out.logits[row * out.classes..(row + 1) * out.classes];
        let shrinkage = out
            .shrinkage
            .as_ref()
            .map(|(units, values)| values[row * units..(row + 1) * units].to_vec());
        // A missing row reads as NaN: flagged like a non-finite score, never an in-distribution class.
        let ood_score = out
            .ood
            .as_ref()
            .map(|scores| scores.get(row).copied().unwrap_or(f32::NAN));
        let finite = logits.iter().all(|x| x.is_finite())
            && shrinkage
                .as_ref()
                .is_none_or(|s| s.iter().all(|x| x.is_finite()))
            && ood_score.is_none_or(f32::is_finite);
        if !finite {
            return Answer {
                verdict: Verdict::Flagged(Flagged {
                    flag: Flag::OutputNotFinite,
                    detail: "the model's output for this window is not finite".into(),
                }),
                timing,
            };
        }
        let probabilities = softmax(logits, self.temperature);
        let class_index = probabilities
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
                if p > best.1 { (i, p) } else { best }
            })
            .0;
        let out_of_distribution = self
            .uncertain_above
            .zip(ood_score)
            .is_some_and(|(t, score)| score > t);
        let uncertain = out_of_distribution
            || self
                .uncertain_below
                .is_some_and(|t| probabilities[class_index] < t);
        Answer {
            verdict: Verdict::Classified(Classified {
                class_index,
                logits: logits.to_vec(),
                probabilities,
                shrinkage,
                ood_score,
                out_of_distribution,
                uncertain,
            }),
            timing,
        }
    }
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let scaled: Vec<f32> = logits.iter().map(|x| x / temperature).collect();
    let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = scaled.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|x| x / sum).collect()
}

/// A window's place in its stream: its index and the client sample range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPlace {
    pub index: u64,
    pub first_sample: u64,
    pub last_sample: u64,
}

/// A delivered window: where it came from, the answer, and the time from its last sample's arrival to delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowDiagnosis {
    pub place: WindowPlace,
    pub verdict: Verdict,
    pub timing: Timing,
    pub total: Duration,
    /// Vibration velocity and zone; `None` for a flagged window or samples in a unit that cannot be converted.
    pub severity: Option<Severity>,
}

impl WindowDiagnosis {
    /// Builds the delivered item and counts it in `meters` (its API's and model's series).
    pub(crate) fn deliver(
        meters: &m::WindowMeters,
        place: WindowPlace,
        answer: Answer,
        severity: Option<Severity>,
        total: Duration,
    ) -> Self {
        // A window the model cannot judge (flat, clipped, out of range) has no trustworthy amplitude either; a shed
        // one was measured before it waited.
        let severity = match &answer.verdict {
            Verdict::Flagged(f) if f.flag != Flag::Shed => None,
            _ => severity,
        };
        match &answer.verdict {
            Verdict::Classified(c) => meters.classified(
                c.class_index,
                c.uncertain,
                c.out_of_distribution,
                c.noise_score(),
                total,
            ),
            Verdict::Flagged(f) => meters.flagged(f.flag.reason(), total),
        }
        Self {
            place,
            verdict: answer.verdict,
            timing: answer.timing,
            total,
            severity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(logits: Vec<f32>) -> BatchOutput {
        BatchOutput {
            classes: 3,
            logits,
            shrinkage: Some((2, vec![0.2, 0.4, 0.2, 0.4])),
            ood: None,
        }
    }

    #[test]
    fn softmax_sums_to_one_keeps_order_and_temperature_flattens() {
        let p = softmax(&[1.0, 3.0, -2.0, 9.0], 1.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.99 && p[1] > p[0] && p[0] > p[2]);
        let big = softmax(&[1000.0, 999.0], 1.0);
        assert!((big[0] - 0.7311).abs() < 1e-3 && big.iter().all(|x| x.is_finite()));
        let hot = softmax(&[2.0, 0.0], 2.0);
        assert!((hot[0] - softmax(&[1.0, 0.0], 1.0)[0]).abs() < 1e-6);
    }

    #[test]
    fn classes_with_confidence_noise_score_and_uncertainty() {
        let reading = Reading {
            temperature: 1.0,
            uncertain_below: Some(0.9),
            uncertain_above: None,
        };
        let out = output(vec![0.0, 5.0, 0.0, 1.0, 1.2, 0.9]);
        let Verdict::Classified(sure) = reading.answer(&out, 0, Timing::default()).verdict else {
            panic!("row 0 is classified")
        };
        assert_eq!(sure.class_index, 1);
        assert!(!sure.uncertain && sure.confidence() > 0.9);
        assert!((sure.noise_score().unwrap() - 0.7).abs() < 1e-6);
        let Verdict::Classified(unsure) = reading.answer(&out, 1, Timing::default()).verdict else {
            panic!("row 1 is classified")
        };
        assert_eq!(unsure.class_index, 1);
        assert!(unsure.uncertain, "a near tie is uncertain");
    }

    #[test]
    fn non_finite_outputs_are_flagged_never_normal() {
        let reading = Reading {
            temperature: 1.0,
            uncertain_below: None,
            uncertain_above: None,
        };
        for bad in [f32::NAN, f32::INFINITY] {
            let out = output(vec![bad, 0.0, 0.0, 0.0, 0.0, 0.0]);
            match reading.answer(&out, 0, Timing::default()).verdict {
                Verdict::Flagged(f) => assert_eq!(f.flag, Flag::OutputNotFinite),
                v => panic!("{v:?}"),
            }
        }
    }

    /// Two sure rows (class 1) with OOD scores `scores`.
    fn scored(scores: Vec<f32>) -> BatchOutput {
        BatchOutput {
            ood: Some(scores),
            ..output(vec![0.0, 9.0, 0.0, 0.0, 9.0, 0.0])
        }
    }

    fn classified(reading: &Reading, out: &BatchOutput, row: usize) -> Classified {
        match reading.answer(out, row, Timing::default()).verdict {
            Verdict::Classified(c) => c,
            v => panic!("row {row}: {v:?}"),
        }
    }

    #[test]
    fn a_score_above_the_ood_threshold_is_uncertain_at_or_below_it_is_not() {
        let reading = Reading {
            temperature: 1.0,
            uncertain_below: Some(0.9),
            uncertain_above: Some(23.4),
        };
        let out = scored(vec![31.2, 23.4]);
        let far = classified(&reading, &out, 0);
        assert_eq!(
            far.class_index, 1,
            "an OOD window keeps its class, as a hint"
        );
        assert!(far.confidence() > 0.9, "confident, yet out of distribution");
        assert!(far.out_of_distribution && far.uncertain);
        assert_eq!(far.ood_score, Some(31.2));
        let edge = classified(&reading, &out, 1);
        assert!(
            !edge.out_of_distribution && !edge.uncertain,
            "equal is not above"
        );
        assert_eq!(edge.ood_score, Some(23.4));
        let near = classified(&reading, &scored(vec![-1.0, 0.5]), 1);
        assert!(!near.out_of_distribution && !near.uncertain);
        assert_eq!(near.ood_score, Some(0.5));
    }

    #[test]
    fn low_confidence_alone_is_uncertain_not_out_of_distribution() {
        let reading = Reading {
            temperature: 1.0,
            uncertain_below: Some(0.9),
            uncertain_above: Some(23.4),
        };
        let out = BatchOutput {
            ood: Some(vec![1.0, 1.0]),
            ..output(vec![0.0, 1.0, 0.9, 0.0, 1.0, 0.9])
        };
        let unsure = classified(&reading, &out, 0);
        assert!(unsure.uncertain && !unsure.out_of_distribution);
    }

    #[test]
    fn without_the_output_or_the_threshold_nothing_is_out_of_distribution() {
        let judged = Reading {
            temperature: 1.0,
            uncertain_below: None,
            uncertain_above: Some(23.4),
        };
        // The model has no ood_score output: no score, and nothing judged on one.
        let none = classified(&judged, &output(vec![0.0, 9.0, 0.0, 0.0, 9.0, 0.0]), 0);
        assert_eq!(none.ood_score, None);
        assert!(!none.out_of_distribution && !none.uncertain);
        // A score but no threshold: reported, never judged.
        let unjudged = Reading {
            uncertain_above: None,
            ..judged
        };
        let reported = classified(&unjudged, &scored(vec![1e6, 0.0]), 0);
        assert_eq!(reported.ood_score, Some(1e6));
        assert!(!reported.out_of_distribution && !reported.uncertain);
    }

    #[test]
    fn a_non_finite_or_missing_ood_score_is_flagged_never_a_class() {
        let reading = Reading {
            temperature: 1.0,
            uncertain_below: None,
            uncertain_above: Some(23.4),
        };
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let out = scored(vec![bad, 0.0]);
            match reading.answer(&out, 0, Timing::default()).verdict {
                Verdict::Flagged(f) => assert_eq!(f.flag, Flag::OutputNotFinite),
                v => panic!("{bad}: {v:?}"),
            }
            assert!(matches!(
                reading.answer(&out, 1, Timing::default()).verdict,
                Verdict::Classified(_)
            ));
        }
        match reading
            .answer(&scored(vec![0.0]), 1, Timing::default())
            .verdict
        {
            Verdict::Flagged(f) => assert_eq!(f.flag, Flag::OutputNotFinite),
            v => panic!("a row without a score: {v:?}"),
        }
    }
}
