//! Signal checks before a window reaches the model: a window the model cannot judge (flat, clipped, outside the
//! input range the card says it was trained on) is flagged with its reason and never given a class.

use wide::{CmpEq, f32x8};

use crate::model::card::InputRange;

/// Why a window came back without a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Every sample of a channel has the same value: a dead or disconnected sensor.
    Flat,
    /// The sensor or its ADC saturated: several samples at the converter's full scale (integer samples), or sitting
    /// exactly at the window's largest or smallest value (float samples).
    Clipped,
    /// The window's RMS or peak is outside the range the model accepts (wrong gain or units, a broken sensor).
    OutOfRange,
    /// One impulse holds a share of the window's energy that no training window came near (a crest factor above
    /// the card's `crest_accepted`): a knock, a cable glitch or an ADC spike, which would otherwise rewrite the
    /// window's class.
    Impulsive,
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
            Self::Impulsive => "impulsive",
            Self::OutputNotFinite => "output_not_finite",
            Self::Shed => "shed",
        }
    }
}

/// A stream's converter full scale in input units, known when its samples arrive as integer codes at the model's
/// rate: a sample exactly at a rail is a code the converter could not go past, so clipping is known, not guessed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rails {
    pub low: f32,
    pub high: f32,
    /// The converter's resolution, for the message.
    pub bits: u32,
}

/// A flag and what exactly was wrong, for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Flagged {
    pub flag: Flag,
    pub detail: String,
}

/// Checks one window of `channels`-interleaved samples; `None` when the model may judge it. `rails`: the
/// converter's full scale when the samples came as integer codes.
pub fn check(
    window: &[f32],
    channels: usize,
    range: Option<&InputRange>,
    rails: Option<&Rails>,
) -> Option<Flagged> {
    let channels = channels.max(1);
    let mut scratch = Vec::new();
    let stats: Vec<Stats> = (0..channels)
        .map(|c| Stats::of(channel(window, c, channels, &mut scratch)))
        .collect();
    judge(&stats, range, rails)
}

/// Channel `c` of interleaved samples (the samples themselves when there is one channel).
fn channel<'a>(
    samples: &'a [f32],
    c: usize,
    channels: usize,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    if channels == 1 {
        return samples;
    }
    scratch.clear();
    scratch.extend(samples.iter().skip(c).step_by(channels));
    scratch
}

/// Checks one stream's windows in order. Consecutive windows overlap (the default hop is half a window), so each
/// block of gcd(window, hop) frames is summarised once, when a window first covers it, and a window's statistics
/// are merged from its blocks': every sample is read once instead of window / hop times. Blocks too small to pay
/// for their merge (or too many to keep) fall back to summarising each window whole.
pub struct Checker {
    channels: usize,
    /// Frames per block, and blocks per window and per hop; `None` when windows are summarised whole.
    blocks: Option<(usize, u64, u64)>,
    /// Statistics of the blocks the next windows still cover, by block number (channels of a block in order).
    cache: std::collections::VecDeque<(u64, Stats)>,
    merged: Vec<Stats>,
    scratch: Vec<f32>,
}

/// Smallest block worth summarising on its own, and most per-channel block summaries a stream keeps (a few KiB).
const MIN_BLOCK: usize = 256;
const MAX_SUMMARIES: usize = 64;

impl Checker {
    /// `window` and `hop` in frames.
    pub fn new(window: usize, hop: usize, channels: usize) -> Self {
        let block = gcd(window, hop.max(1));
        let per_window = window / block.max(1);
        let kept = per_window * channels.max(1);
        let blocks = (hop < window && block >= MIN_BLOCK && kept <= MAX_SUMMARIES)
            .then(|| (block, per_window as u64, (hop / block) as u64));
        Self {
            channels: channels.max(1),
            blocks,
            cache: Default::default(),
            merged: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Checks the stream's window number `index` (consecutive within a segment; [`Checker::restart`] between
    /// segments).
    pub fn check(
        &mut self,
        index: u64,
        window: &[f32],
        range: Option<&InputRange>,
        rails: Option<&Rails>,
    ) -> Option<Flagged> {
        let Some((block, per_window, per_hop)) = self.blocks else {
            return check(window, self.channels, range, rails);
        };
        let first = index * per_hop;
        while self.cache.front().is_some_and(|(b, _)| *b < first) {
            self.cache.pop_front();
        }
        if self.cache.front().is_some_and(|(b, _)| *b != first) {
            self.cache.clear(); // not the window after the last one: start over
        }
        let (channels, width) = (self.channels, block * self.channels);
        let cached = (self.cache.len() / channels) as u64;
        for b in first + cached..first + per_window {
            let at = (b - first) as usize * width;
            let Some(samples) = window.get(at..at + width) else {
                return check(window, channels, range, rails);
            };
            for c in 0..channels {
                let stats = Stats::of(channel(samples, c, channels, &mut self.scratch));
                self.cache.push_back((b, stats));
            }
        }
        self.merged.clear();
        for c in 0..channels {
            let mut blocks = self.cache.iter().skip(c).step_by(channels).map(|(_, s)| *s);
            let head = blocks.next().unwrap_or_default();
            self.merged.push(blocks.fold(head, Stats::merge));
        }
        judge(&self.merged, range, rails)
    }

    /// The stream restarted its windows (a discontinuity): nothing summarised so far is covered again.
    pub fn restart(&mut self) {
        self.cache.clear();
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The verdict on a window from its channels' statistics.
fn judge(channels: &[Stats], range: Option<&InputRange>, rails: Option<&Rails>) -> Option<Flagged> {
    for (c, stats) in channels.iter().enumerate() {
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
        if !(stats.rms().is_finite() && peak.is_finite()) || peak > range.peak_accepted {
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
        if !(lo..=hi).contains(&stats.rms()) {
            return Some(Flagged {
                flag: Flag::OutOfRange,
                detail: format!(
                    "channel {c}: RMS {rms:.3e} {unit} is outside the {lo}..{hi} {unit} the model accepts \
                     (check the sensor's gain and units)",
                    rms = stats.rms(),
                    unit = range.unit,
                ),
            });
        }
        if let Some(max_crest) = range.crest_accepted
            && stats.crest() > max_crest
        {
            return Some(Flagged {
                flag: Flag::Impulsive,
                detail: format!(
                    "channel {c}: crest factor {crest:.1} (peak over RMS) is above the {max_crest} the model \
                     accepts: one impulse carries {share:.0}% of the window's energy (a knock, a glitch or a spike)",
                    crest = stats.crest(),
                    share = 100.0 * stats.crest().powi(2) / stats.n.max(1) as f32,
                ),
            });
        }
        if let Some(detail) = clipping(c, stats, range.clip_samples, rails) {
            return Some(Flagged {
                flag: Flag::Clipped,
                detail,
            });
        }
    }
    None
}

/// Why channel `c` is clipped, if it is: at least `min` samples at the converter's full scale when the rails are
/// known (exact), else at least `min` samples sitting exactly at the window's extreme value.
fn clipping(c: usize, stats: &Stats, min: usize, rails: Option<&Rails>) -> Option<String> {
    if let Some(r) = rails {
        let at_high = if stats.max == r.high { stats.at_max } else { 0 };
        let at_low = if stats.min == r.low { stats.at_min } else { 0 };
        let (at, rail) = if at_high >= at_low {
            (at_high, r.high)
        } else {
            (at_low, r.low)
        };
        return (at >= min).then(|| {
            format!(
                "channel {c}: {at} samples at the {bits}-bit converter's full scale ({rail}): the signal is \
                 clipped (exact: from the integer codes)",
                bits = r.bits
            )
        });
    }
    let at_rail = stats.at_max.max(stats.at_min);
    (at_rail >= min).then(|| {
        format!(
            "channel {c}: {at_rail} samples sit exactly at the window's extreme value {rail}: the signal is \
             clipped",
            rail = if stats.at_max >= stats.at_min {
                stats.max
            } else {
                stats.min
            }
        )
    })
}

/// A channel's extremes, how many samples sit exactly at them, and the RMS about the mean (the graph standardises
/// each window, so a DC offset does not matter to the model). This runs on every window before the model, so it is
/// written in SIMD vectors (`wide`; SSE2 on any x86-64): one pass for min, max, and the sum and sum of squares of
/// the samples less the first one (which takes out a DC offset before squaring), then one pass counting the samples
/// at each extreme. Two independent vectors per accumulator keep the adds' latency hidden. The RMS only has to be
/// right to a few digits: the card's accepted range is ten times wider than the training range. A NaN makes the
/// RMS NaN, which the range check flags. Two blocks' statistics merge exactly (Chan et al.'s pairwise update for
/// the variance).
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    min: f32,
    max: f32,
    at_min: usize,
    at_max: usize,
    n: usize,
    mean: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
}

/// Samples per step: two vectors of eight.
const STEP: usize = 16;

fn vectors(c: &[f32]) -> [f32x8; 2] {
    let mut v = [f32x8::ZERO; 2];
    for (k, part) in c.chunks_exact(8).enumerate().take(2) {
        if let Ok(a) = <[f32; 8]>::try_from(part) {
            v[k] = f32x8::from(a);
        }
    }
    v
}

impl Stats {
    fn of(x: &[f32]) -> Self {
        let x0 = x.first().copied().unwrap_or(0.0);
        let shift = f32x8::splat(x0);
        let (mut lo, mut hi) = (
            [f32x8::splat(f32::INFINITY); 2],
            [f32x8::splat(f32::NEG_INFINITY); 2],
        );
        let (mut sum, mut sq) = ([f32x8::ZERO; 2], [f32x8::ZERO; 2]);
        let mut steps = x.chunks_exact(STEP);
        for c in steps.by_ref() {
            for (k, v) in vectors(c).into_iter().enumerate() {
                lo[k] = lo[k].fast_min(v);
                hi[k] = hi[k].fast_max(v);
                let d = v - shift;
                sum[k] += d;
                sq[k] = d.mul_add(d, sq[k]);
            }
        }
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for v in lo[0].fast_min(lo[1]).to_array() {
            min = min.min(v);
        }
        for v in hi[0].fast_max(hi[1]).to_array() {
            max = max.max(v);
        }
        let mut total = f64::from((sum[0] + sum[1]).reduce_add());
        let mut squares = f64::from((sq[0] + sq[1]).reduce_add());
        for &v in steps.remainder() {
            (min, max) = (min.min(v), max.max(v));
            total += f64::from(v - x0);
            squares += f64::from((v - x0) * (v - x0));
        }
        let n = x.len().max(1) as f64;
        let m2 = squares - total * total / n;
        let m2 = if m2 < 0.0 { 0.0 } else { m2 }; // rounding below zero; a NaN stays NaN
        let (at_min, at_max) = count_at(x, min, max);
        Self {
            min,
            max,
            at_min,
            at_max,
            n: x.len(),
            mean: f64::from(x0) + total / n,
            m2,
        }
    }

    fn merge(self, other: Self) -> Self {
        let n = self.n + other.n;
        if self.n == 0 || other.n == 0 {
            return if self.n == 0 { other } else { self };
        }
        let (min, max) = (self.min.min(other.min), self.max.max(other.max));
        let at = |v: f32, count: usize, extreme: f32| if v == extreme { count } else { 0 };
        let delta = other.mean - self.mean;
        let (a, b) = (self.n as f64, other.n as f64);
        Self {
            min,
            max,
            at_min: at(self.min, self.at_min, min) + at(other.min, other.at_min, min),
            at_max: at(self.max, self.at_max, max) + at(other.max, other.at_max, max),
            n,
            mean: self.mean + delta * b / (a + b),
            m2: self.m2 + other.m2 + delta * delta * a * b / (a + b),
        }
    }

    fn rms(&self) -> f32 {
        (self.m2 / self.n.max(1) as f64).sqrt() as f32
    }

    /// The largest deviation from the mean over the RMS; crest² / n is the top sample's share of the energy.
    fn crest(&self) -> f32 {
        let peak = (f64::from(self.max) - self.mean)
            .abs()
            .max((f64::from(self.min) - self.mean).abs());
        (peak / (self.m2 / self.n.max(1) as f64).sqrt()) as f32
    }
}

/// Samples exactly equal to `lo` and to `hi`, counted in vectors (as f32 counts: exact up to 2^24 per lane).
fn count_at(x: &[f32], lo: f32, hi: f32) -> (usize, usize) {
    let (l, h, one) = (f32x8::splat(lo), f32x8::splat(hi), f32x8::splat(1.0));
    let (mut at_lo, mut at_hi) = (f32x8::ZERO, f32x8::ZERO);
    let mut steps = x.chunks_exact(STEP);
    for c in steps.by_ref() {
        for v in vectors(c) {
            at_lo += v.cmp_eq(l) & one;
            at_hi += v.cmp_eq(h) & one;
        }
    }
    let tail = steps.remainder();
    (
        at_lo.reduce_add() as usize + tail.iter().filter(|&&v| v == lo).count(),
        at_hi.reduce_add() as usize + tail.iter().filter(|&&v| v == hi).count(),
    )
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
            crest_accepted: Some(25.0),
        }
    }

    fn sine(n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|i| amp * (i as f32 * 0.37).sin()).collect()
    }

    /// The two-pass definition the lane version must agree with.
    fn naive(x: &[f32]) -> (f32, f32, usize, usize, f64) {
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / x.len() as f64;
        let count = |e: f32| x.iter().filter(|&&v| v == e).count();
        (min, max, count(min), count(max), var.sqrt())
    }

    #[test]
    fn stats_agree_with_the_two_pass_definition() {
        // Lengths around the lane width, offsets far above the signal, clipped runs.
        for (n, offset, amp) in [
            (1, 0.0, 1.0),
            (7, 3.0, 0.5),
            (8, 0.0, 2.0),
            (15, 1.0, 1.0),
            (16, 0.0, 1.0),
            (17, -1.0, 3.0),
            (8195, 100.0, 0.007),
            (2048, -5.0, 30.0),
        ] {
            let mut x: Vec<f32> = sine(n, amp).into_iter().map(|v| v + offset).collect();
            if n > 100 {
                x[10..16].fill(offset + amp * 0.9);
            }
            let s = Stats::of(&x);
            let (min, max, at_min, at_max, rms) = naive(&x);
            assert_eq!(
                (s.min, s.max, s.at_min, s.at_max),
                (min, max, at_min, at_max),
                "n {n}"
            );
            assert!(
                (f64::from(s.rms()) - rms).abs() <= 1e-4 * rms.max(1e-3),
                "n {n}: {} vs {rms}",
                s.rms()
            );
        }
        assert!(Stats::of(&[1.0, f32::NAN, 2.0]).rms().is_nan());
    }

    #[test]
    fn a_normal_window_passes() {
        assert_eq!(check(&sine(2048, 1.0), 1, Some(&range()), None), None);
        assert_eq!(check(&sine(2048, 1.0), 1, None, None), None);
    }

    #[test]
    fn flat_windows_are_flagged_even_without_a_range() {
        let f = check(&[0.25; 2048], 1, None, None).unwrap();
        assert_eq!(f.flag, Flag::Flat);
        assert!(f.detail.contains("0.25"), "{}", f.detail);
    }

    #[test]
    fn out_of_range_in_both_directions_and_a_single_spike() {
        let big: Vec<f32> = sine(2048, 1.0).iter().map(|x| x * 1e18).collect();
        assert_eq!(
            check(&big, 1, Some(&range()), None).unwrap().flag,
            Flag::OutOfRange
        );
        let small: Vec<f32> = sine(2048, 1.0).iter().map(|x| x * 1e-3).collect();
        let f = check(&small, 1, Some(&range()), None).unwrap();
        assert_eq!(f.flag, Flag::OutOfRange);
        assert!(f.detail.contains("gain and units"), "{}", f.detail);
        let mut spiked = sine(2048, 1.0);
        spiked[700] = 3.4e38;
        assert_eq!(
            check(&spiked, 1, Some(&range()), None).unwrap().flag,
            Flag::OutOfRange
        );
    }

    #[test]
    fn clipping_is_several_samples_exactly_at_the_rail() {
        let clipped: Vec<f32> = sine(2048, 2.0).iter().map(|x| x.clamp(-1.5, 1.5)).collect();
        let f = check(&clipped, 1, Some(&range()), None).unwrap();
        assert_eq!(f.flag, Flag::Clipped);
        // A real peak is reached once or twice (at most twice in every CWRU window); three times still passes.
        let mut three = sine(2048, 1.0);
        three[10] = 1.25;
        three[20] = 1.25;
        three[30] = 1.25;
        assert_eq!(check(&three, 1, Some(&range()), None), None);
        three[40] = 1.25;
        assert_eq!(
            check(&three, 1, Some(&range()), None).unwrap().flag,
            Flag::Clipped
        );
    }

    #[test]
    fn with_integer_codes_clipping_is_the_converter_full_scale_not_a_repeated_extreme() {
        // A quiet signal on a +-2 g 16-bit converter: 300 codes each way, so its extremes repeat many times without
        // any clipping.
        let lsb = 2.0 / 32768.0;
        let rails = Rails {
            low: -32768.0 * lsb,
            high: 32767.0 * lsb,
            bits: 16,
        };
        let quiet: Vec<f32> = sine(2048, 1.0)
            .iter()
            .map(|x| (x * 300.0).round() * lsb)
            .collect();
        assert_eq!(
            check(&quiet, 1, Some(&range()), None).map(|f| f.flag),
            Some(Flag::Clipped),
            "the float check reads repeated extremes as clipping"
        );
        assert_eq!(check(&quiet, 1, Some(&range()), Some(&rails)), None);
        // Four samples at the full-scale code: clipped, and the message says the converter's.
        let mut hit: Vec<f32> = sine(2048, 0.9);
        for i in [100, 101, 102, 103] {
            hit[i] = rails.high;
        }
        let f = check(&hit, 1, Some(&range()), Some(&rails)).unwrap();
        assert_eq!(f.flag, Flag::Clipped);
        assert!(
            f.detail.contains("16-bit converter's full scale"),
            "{}",
            f.detail
        );
        hit[103] = 0.5;
        assert_eq!(check(&hit, 1, Some(&range()), Some(&rails)), None);
    }

    #[test]
    fn each_channel_is_checked() {
        let mut two = Vec::new();
        for x in sine(2048, 1.0) {
            two.push(x);
            two.push(0.0);
        }
        let f = check(&two, 2, None, None).unwrap();
        assert_eq!(f.flag, Flag::Flat);
        assert!(f.detail.starts_with("channel 1"));
    }

    #[test]
    fn merged_blocks_give_the_whole_window_statistics() {
        let mut x: Vec<f32> = sine(4096, 1.0).into_iter().map(|v| v + 7.0).collect();
        x[100..103].fill(9.0); // three at the top, within the first block
        x[3000] = 9.0; // and one in the second
        let (a, b) = x.split_at(1024);
        let merged = Stats::of(a).merge(Stats::of(b));
        let whole = Stats::of(&x);
        assert_eq!(
            (
                merged.min,
                merged.max,
                merged.at_min,
                merged.at_max,
                merged.n
            ),
            (whole.min, whole.max, whole.at_min, whole.at_max, whole.n)
        );
        assert_eq!(merged.at_max, 4);
        assert!((merged.rms() - whole.rms()).abs() <= 1e-5 * whole.rms());
        assert!((merged.mean - whole.mean).abs() < 1e-5);
        let empty = Stats::default();
        assert_eq!(empty.merge(whole).n, whole.n);
    }

    /// A stream's windows (interleaved `channels`), with a clipped run, a dead stretch and a spike placed so
    /// that windows straddle them.
    fn stream(frames: usize, channels: usize) -> Vec<f32> {
        let mut x = Vec::with_capacity(frames * channels);
        for i in 0..frames {
            for c in 0..channels {
                let v = (0.2 + 0.1 * c as f32) * ((i * (c + 3)) as f32 * 0.11).sin();
                x.push(match i {
                    5000..5010 if c == 0 => 0.3, // clipped at the top of channel 0
                    9000..20000 if c == channels - 1 => 0.0, // the last channel goes dead
                    30000 => 500.0,              // a spike out of range
                    _ => v,
                });
            }
        }
        x
    }

    #[test]
    fn a_streams_checker_agrees_with_checking_each_window_whole() {
        let r = range();
        for (window, hop, channels) in [
            (2048, 1024, 1),
            (2048, 512, 1),
            (2048, 768, 2),  // blocks of 256 frames
            (1024, 1024, 1), // no overlap: whole windows
            (2048, 1000, 1), // blocks of 8 frames: whole windows
            (1024, 4096, 3),
        ] {
            let x = stream(40_000, channels);
            let mut checker = Checker::new(window, hop, channels);
            let mut flagged = 0;
            let mut index = 0u64;
            let mut start = 0;
            while (start + window) * channels <= x.len() {
                let w = &x[start * channels..(start + window) * channels];
                let got = checker.check(index, w, Some(&r), None).map(|f| f.flag);
                let want = check(w, channels, Some(&r), None).map(|f| f.flag);
                assert_eq!(got, want, "window {index} of {window}/{hop}/{channels}");
                flagged += usize::from(want.is_some());
                index += 1;
                start += hop;
            }
            assert!(flagged > 0 && flagged < index as usize, "{window}/{hop}");
        }
    }

    #[test]
    fn after_a_restart_or_a_gap_nothing_old_is_merged() {
        let r = range();
        let quiet: Vec<f32> = sine(2048, 0.001).into_iter().collect(); // RMS below the accepted range
        let loud = sine(2048, 1.0);
        let mut checker = Checker::new(2048, 1024, 1);
        assert_eq!(
            checker.check(0, &quiet, Some(&r), None).map(|f| f.flag),
            Some(Flag::OutOfRange)
        );
        // Window 1 of a new segment: its first half is not window 0's second half.
        checker.restart();
        assert_eq!(checker.check(1, &loud, Some(&r), None), None);
        // A jump in the numbering (a window the caller skipped) starts over as well.
        assert_eq!(
            checker.check(5, &quiet, Some(&r), None).map(|f| f.flag),
            Some(Flag::OutOfRange)
        );
    }
}
