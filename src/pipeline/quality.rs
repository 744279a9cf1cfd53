//! Signal checks before a window reaches the model: a window the model cannot judge (flat, clipped, outside the
//! input range the card says it was trained on) is flagged with its reason and never given a class.

use crate::model::card::InputRange;

/// Why a window came back without a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Every sample of a channel has the same value: a dead or disconnected sensor.
    Flat,
    /// Several samples sit exactly at the window's largest or smallest value: the sensor or its ADC saturated.
    Clipped,
    /// The window's RMS or peak is outside the range the model accepts (wrong gain or units, a broken sensor).
    OutOfRange,
    /// The model's output was not finite.
    OutputNotFinite,
    /// The server was overloaded: the window waited longer than `--max-queue-wait` and was not run.
    Shed,
}

impl Flag {
    /// The `reason` label of `drsn_windows_flagged_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Flat => "flat",
            Self::Clipped => "clipped",
            Self::OutOfRange => "out_of_range",
            Self::OutputNotFinite => "output_not_finite",
            Self::Shed => "shed",
        }
    }
}

/// A flag and what exactly was wrong, for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Flagged {
    pub flag: Flag,
    pub detail: String,
}

/// Checks one window of `channels`-interleaved samples; `None` when the model may judge it.
pub fn check(window: &[f32], channels: usize, range: Option<&InputRange>) -> Option<Flagged> {
    let channels = channels.max(1);
    for c in 0..channels {
        let stats = Stats::of(window.iter().skip(c).step_by(channels).copied());
        if stats.max == stats.min {
            return Some(Flagged {
                flag: Flag::Flat,
                detail: format!(
                    "channel {c}: every sample is {}: a dead or disconnected sensor",
                    stats.max
                ),
            });
        }
        let Some(range) = range else { continue };
        let peak = stats.max.abs().max(stats.min.abs());
        if !(stats.rms.is_finite() && peak.is_finite()) || peak > range.peak_accepted {
            return Some(Flagged {
                flag: Flag::OutOfRange,
                detail: format!(
                    "channel {c}: peak {peak:.3e} {unit} is above the {max} {unit} the model accepts",
                    unit = range.unit,
                    max = range.peak_accepted
                ),
            });
        }
        let (lo, hi) = (range.rms_accepted[0], range.rms_accepted[1]);
        if !(lo..=hi).contains(&stats.rms) {
            return Some(Flagged {
                flag: Flag::OutOfRange,
                detail: format!(
                    "channel {c}: RMS {rms:.3e} {unit} is outside the {lo}..{hi} {unit} the model accepts \
                     (check the sensor's gain and units)",
                    rms = stats.rms,
                    unit = range.unit,
                ),
            });
        }
        let at_rail = stats.at_max.max(stats.at_min);
        if at_rail >= range.clip_samples {
            return Some(Flagged {
                flag: Flag::Clipped,
                detail: format!(
                    "channel {c}: {at_rail} samples sit exactly at the window's extreme value {rail}: \
                     the signal is clipped",
                    rail = if stats.at_max >= stats.at_min {
                        stats.max
                    } else {
                        stats.min
                    }
                ),
            });
        }
    }
    None
}

/// One pass over a channel: extremes, how many samples sit exactly at them, and the RMS about the mean (the
/// graph standardises each window, so a DC offset does not matter to the model).
struct Stats {
    min: f32,
    max: f32,
    at_min: usize,
    at_max: usize,
    rms: f32,
}

impl Stats {
    fn of(samples: impl Iterator<Item = f32> + Clone) -> Self {
        let (mut min, mut max, mut sum, mut n) = (f32::INFINITY, f32::NEG_INFINITY, 0f64, 0usize);
        for x in samples.clone() {
            min = min.min(x);
            max = max.max(x);
            sum += x as f64;
            n += 1;
        }
        let mean = sum / n.max(1) as f64;
        let (mut at_min, mut at_max, mut sq) = (0, 0, 0f64);
        for x in samples {
            at_min += usize::from(x == min);
            at_max += usize::from(x == max);
            sq += (x as f64 - mean).powi(2);
        }
        Self {
            min,
            max,
            at_min,
            at_max,
            rms: (sq / n.max(1) as f64).sqrt() as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> InputRange {
        InputRange {
            unit: "g".into(),
            rms_accepted: [0.01, 10.0],
            peak_accepted: 60.0,
            clip_samples: 4,
        }
    }

    fn sine(n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|i| amp * (i as f32 * 0.37).sin()).collect()
    }

    #[test]
    fn a_normal_window_passes() {
        assert_eq!(check(&sine(2048, 1.0), 1, Some(&range())), None);
        assert_eq!(check(&sine(2048, 1.0), 1, None), None);
    }

    #[test]
    fn flat_windows_are_flagged_even_without_a_range() {
        let f = check(&[0.25; 2048], 1, None).unwrap();
        assert_eq!(f.flag, Flag::Flat);
        assert!(f.detail.contains("0.25"), "{}", f.detail);
    }

    #[test]
    fn out_of_range_in_both_directions_and_a_single_spike() {
        let big: Vec<f32> = sine(2048, 1.0).iter().map(|x| x * 1e18).collect();
        assert_eq!(
            check(&big, 1, Some(&range())).unwrap().flag,
            Flag::OutOfRange
        );
        let small: Vec<f32> = sine(2048, 1.0).iter().map(|x| x * 1e-3).collect();
        let f = check(&small, 1, Some(&range())).unwrap();
        assert_eq!(f.flag, Flag::OutOfRange);
        assert!(f.detail.contains("gain and units"), "{}", f.detail);
        let mut spiked = sine(2048, 1.0);
        spiked[700] = 3.4e38;
        assert_eq!(
            check(&spiked, 1, Some(&range())).unwrap().flag,
            Flag::OutOfRange
        );
    }

    #[test]
    fn clipping_is_several_samples_exactly_at_the_rail() {
        let clipped: Vec<f32> = sine(2048, 2.0).iter().map(|x| x.clamp(-1.5, 1.5)).collect();
        let f = check(&clipped, 1, Some(&range())).unwrap();
        assert_eq!(f.flag, Flag::Clipped);
        // A real peak is reached once or twice (at most twice in every CWRU window); three times still passes.
        let mut three = sine(2048, 1.0);
        three[10] = 1.25;
        three[20] = 1.25;
        three[30] = 1.25;
        assert_eq!(check(&three, 1, Some(&range())), None);
        three[40] = 1.25;
        assert_eq!(
            check(&three, 1, Some(&range())).unwrap().flag,
            Flag::Clipped
        );
    }

    #[test]
    fn each_channel_is_checked() {
        let mut two = Vec::new();
        for x in sine(2048, 1.0) {
            two.push(x);
            two.push(0.0);
        }
        let f = check(&two, 2, None).unwrap();
        assert_eq!(f.flag, Flag::Flat);
        assert!(f.detail.starts_with("channel 1"));
    }
}
