//! Vibration severity per window, the one amplitude a user gets (the model sees standardised windows): RMS
//! velocity in mm/s over 10-1000 Hz (ISO 10816-3 / ISO 20816-3), integrated from the acceleration samples in the
//! frequency domain, and its evaluation zone A-D for the machine's group and foundation.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// ISO 10816-3's measurement band for machines above 600 rpm.
pub const BAND_HZ: (f64, f64) = (10.0, 1000.0);
/// Standard gravity: samples in `g` are converted with it.
const G: f64 = 9.806_65;

/// The evaluation zones of ISO 10816 / ISO 20816: A newly commissioned, B unrestricted long-term operation, C
/// restricted operation (plan a repair), D damage likely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Zone {
    A,
    B,
    C,
    D,
}

impl Zone {
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
            Self::C => "C",
            Self::D => "D",
        }
    }
}

/// Which ISO table the machine is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineGroup {
    /// ISO 10816-3 group 1: large machines, 300 kW to 50 MW.
    Large,
    /// ISO 10816-3 group 2: medium machines, 15 kW to 300 kW.
    Medium,
    /// ISO 10816-1 class I: small machines up to 15 kW (the foundation does not change the limits).
    Small,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foundation {
    Rigid,
    Flexible,
}

/// A machine's zone boundaries, mm/s RMS: A/B, B/C, C/D.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZoneLimits {
    pub group: MachineGroup,
    pub foundation: Foundation,
    pub bounds: [f32; 3],
}

impl ZoneLimits {
    pub const fn new(group: MachineGroup, foundation: Foundation) -> Self {
        use Foundation::*;
        use MachineGroup::*;
        let bounds = match (group, foundation) {
            (Large, Rigid) => [2.3, 4.5, 7.1],
            (Large, Flexible) => [3.5, 7.1, 11.0],
            (Medium, Rigid) => [1.4, 2.8, 4.5],
            (Medium, Flexible) => [2.3, 4.5, 7.1],
            (Small, _) => [0.71, 1.8, 4.5],
        };
        Self {
            group,
            foundation,
            bounds,
        }
    }

    pub fn severity(&self, velocity_mm_s: f32) -> Severity {
        Severity {
            velocity_mm_s,
            zone: self.zone(velocity_mm_s),
        }
    }

    pub fn zone(&self, velocity_mm_s: f32) -> Zone {
        match self.bounds.iter().filter(|b| velocity_mm_s > **b).count() {
            0 => Zone::A,
            1 => Zone::B,
            2 => Zone::C,
            _ => Zone::D,
        }
    }
}

/// The stated default: ISO 10816-3 group 2 (15-300 kW) on a rigid foundation, the strictest limits of part 3.
impl Default for ZoneLimits {
    fn default() -> Self {
        Self::new(MachineGroup::Medium, Foundation::Rigid)
    }
}

/// A window's severity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Severity {
    pub velocity_mm_s: f32,
    pub zone: Zone,
}

/// Band power of one FFT length: a Hann-windowed real FFT, each bin in the band divided by 2πf (acceleration to
/// velocity), the band's power summed (Parseval, corrected for the window's power).
struct Spectrum {
    fft: Arc<dyn RealToComplex<f32>>,
    taper: Vec<f32>,
    /// The band's first spectrum bin; its bins are consecutive.
    first_bin: usize,
    /// Per band bin: weight = 2 / (N Σw²) / (2πf)², in (mm/s)² per |X|² of the sample unit.
    weights: Vec<f64>,
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl Spectrum {
    fn new(len: usize, rate_hz: f64, to_m_s2: f64) -> Option<Self> {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(len);
        let taper: Vec<f32> = (0..len)
            .map(|n| {
                let x = std::f64::consts::PI * n as f64 / len as f64;
                (x.sin() * x.sin()) as f32
            })
            .collect();
        let power: f64 = taper.iter().map(|w| f64::from(*w) * f64::from(*w)).sum();
        let resolution = rate_hz / len as f64;
        let bins: Vec<usize> = (1..len / 2)
            .filter(|k| (BAND_HZ.0..=BAND_HZ.1).contains(&(*k as f64 * resolution)))
            .collect();
        let weights = bins
            .iter()
            .map(|k| {
                let per_hz =
                    to_m_s2 * 1000.0 / (2.0 * std::f64::consts::PI * *k as f64 * resolution);
                2.0 / (len as f64 * power) * per_hz * per_hz
            })
            .collect();
        // Bins no wider than 10 Hz, or the band's low end (and the 1/f weighting there) would be guessed.
        (resolution <= BAND_HZ.0 && bins.len() >= 4).then(|| Self {
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            fft,
            taper,
            first_bin: bins[0],
            weights,
        })
    }

    /// Mean square velocity, (mm/s)², of channel `channel` of interleaved `frames` (exactly the FFT's length of
    /// frames), about its mean.
    fn power(&mut self, frames: &[f32], channel: usize, channels: usize) -> Option<f64> {
        if frames.len() != self.input.len() * channels {
            return None;
        }
        if channels == 1 {
            self.input.copy_from_slice(frames);
        } else {
            for (slot, x) in self
                .input
                .iter_mut()
                .zip(frames.iter().skip(channel).step_by(channels))
            {
                *slot = *x;
            }
        }
        // Eight independent sums so that the loop vectorises (one running sum is a chain of dependent adds).
        let mut lanes = [0f64; 8];
        let blocks = self.input.chunks_exact(8);
        let rest: f64 = blocks.remainder().iter().map(|x| f64::from(*x)).sum();
        for block in blocks {
            for (lane, x) in lanes.iter_mut().zip(block) {
                *lane += f64::from(*x);
            }
        }
        let mean = ((lanes.iter().sum::<f64>() + rest) / self.input.len() as f64) as f32;
        for (x, w) in self.input.iter_mut().zip(&self.taper) {
            *x = (*x - mean) * w;
        }
        self.fft
            .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch)
            .ok()?;
        let band = self
            .spectrum
            .get(self.first_bin..self.first_bin + self.weights.len())?;
        let mut lanes = [0f64; 4];
        for (bins, weights) in band.chunks(4).zip(self.weights.chunks(4)) {
            for ((lane, x), w) in lanes.iter_mut().zip(bins).zip(weights) {
                *lane += f64::from(x.norm_sqr()) * w;
            }
        }
        Some(lanes.iter().sum())
    }
}

/// Measures windows of one stream. When consecutive windows overlap by half (the default hop), a window's power is
/// the mean of its two halves' (Welch), and each half is transformed once: the second half of one window is the
/// first of the next, so a stream pays one half-length FFT per window instead of a whole-length one.
pub struct VelocityMeter {
    whole: Spectrum,
    halves: Option<Spectrum>,
    /// The next window's first half, already measured: (window index, power per channel).
    cached: Option<(u64, Vec<f64>)>,
    len: usize,
}

impl VelocityMeter {
    /// For windows of `len` frames at `rate_hz`, samples in `unit` (`g` or `m/s2`); `None` for a unit it cannot
    /// convert, or a window too short to resolve the band.
    pub fn new(len: usize, rate_hz: f64, unit: &str) -> Option<Self> {
        let to_m_s2 = match unit.trim().to_ascii_lowercase().as_str() {
            "g" => G,
            "m/s2" | "m/s^2" | "m/s²" | "m s-2" => 1.0,
            _ => return None,
        };
        if len < 64 || !(rate_hz.is_finite() && rate_hz > 0.0) {
            return None;
        }
        Some(Self {
            whole: Spectrum::new(len, rate_hz, to_m_s2)?,
            halves: None,
            cached: None,
            len,
        })
    }

    /// For a stream whose windows step by `hop`: with half-window steps, each half is measured once.
    pub fn for_hop(mut self, hop: usize, rate_hz: f64, unit: &str) -> Self {
        if hop * 2 == self.len {
            let to_m_s2 = if unit.trim().eq_ignore_ascii_case("g") {
                G
            } else {
                1.0
            };
            self.halves = Spectrum::new(self.len / 2, rate_hz, to_m_s2);
        }
        self
    }

    /// The stream restarted (a discontinuity): no half is shared with the last window.
    pub fn restart(&mut self) {
        self.cached = None;
    }

    /// RMS velocity in mm/s of interleaved `window` (the highest of its channels).
    pub fn measure(&mut self, window: &[f32], channels: usize) -> Option<f32> {
        let channels = channels.max(1);
        if window.len() != self.len * channels {
            return None;
        }
        let mut worst = 0f64;
        for c in 0..channels {
            worst = worst.max(self.whole.power(window, c, channels)?);
        }
        finite_root(worst)
    }

    /// Like [`VelocityMeter::measure`], for window `index` of a stream (consecutive indices one hop apart).
    pub fn measure_at(&mut self, index: u64, window: &[f32], channels: usize) -> Option<f32> {
        let channels = channels.max(1);
        let Some(halves) = self.halves.as_mut() else {
            return self.measure(window, channels);
        };
        if window.len() != self.len * channels {
            return None;
        }
        let split = self.len / 2 * channels;
        let first = match self.cached.take() {
            Some((at, powers)) if at == index && powers.len() == channels => powers,
            _ => (0..channels)
                .map(|c| halves.power(&window[..split], c, channels))
                .collect::<Option<Vec<_>>>()?,
        };
        let second = (0..channels)
            .map(|c| halves.power(&window[split..], c, channels))
            .collect::<Option<Vec<_>>>()?;
        let worst = first
            .iter()
            .zip(&second)
            .map(|(a, b)| (a + b) / 2.0)
            .fold(0f64, f64::max);
        self.cached = Some((index + 1, second));
        finite_root(worst)
    }
}

fn finite_root(power: f64) -> Option<f32> {
    let v = power.sqrt() as f32;
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An acceleration sine (in g) whose velocity has RMS `v_mm_s` at `f` Hz, plus an offset the meter must ignore.
    fn sine_g(v_mm_s: f64, f: f64, rate: f64, len: usize) -> Vec<f32> {
        let v_peak = v_mm_s * 2f64.sqrt() / 1000.0; // m/s
        let a_peak = v_peak * 2.0 * std::f64::consts::PI * f / G; // g
        (0..len)
            .map(|n| {
                (0.3 + a_peak * (2.0 * std::f64::consts::PI * f * n as f64 / rate + 0.4).sin())
                    as f32
            })
            .collect()
    }

    #[test]
    fn a_sine_of_known_velocity_is_measured_within_two_percent() {
        let mut meter = VelocityMeter::new(8192, 12_000.0, "g").unwrap();
        for (v, f) in [(1.0, 29.95), (4.5, 100.0), (7.1, 161.7), (11.0, 987.0)] {
            let got = meter.measure(&sine_g(v, f, 12_000.0, 8192), 1).unwrap();
            assert!(
                (f64::from(got) / v - 1.0).abs() < 0.02,
                "{v} mm/s at {f} Hz measured {got}"
            );
        }
    }

    #[test]
    fn out_of_band_vibration_does_not_count() {
        let mut meter = VelocityMeter::new(8192, 12_000.0, "g").unwrap();
        for f in [3.0, 2500.0] {
            let got = meter.measure(&sine_g(10.0, f, 12_000.0, 8192), 1).unwrap();
            assert!(
                got < 0.5,
                "{f} Hz is outside 10-1000 Hz but measured {got} mm/s"
            );
        }
    }

    #[test]
    fn units_convert_and_unknown_units_give_no_velocity() {
        let g = sine_g(4.5, 100.0, 12_000.0, 8192);
        let si: Vec<f32> = g.iter().map(|x| x * G as f32).collect();
        let a = VelocityMeter::new(8192, 12_000.0, "g")
            .unwrap()
            .measure(&g, 1)
            .unwrap();
        let b = VelocityMeter::new(8192, 12_000.0, "m/s2")
            .unwrap()
            .measure(&si, 1)
            .unwrap();
        assert!((a - b).abs() < 0.01 * a);
        assert!(VelocityMeter::new(8192, 12_000.0, "volts").is_none());
    }

    #[test]
    fn the_loudest_channel_sets_the_velocity() {
        let loud = sine_g(7.0, 120.0, 12_000.0, 4096);
        let quiet = sine_g(1.0, 120.0, 12_000.0, 4096);
        let both: Vec<f32> = quiet
            .iter()
            .zip(&loud)
            .flat_map(|(q, l)| [*q, *l])
            .collect();
        let got = VelocityMeter::new(4096, 12_000.0, "g")
            .unwrap()
            .measure(&both, 2)
            .unwrap();
        assert!((got / 7.0 - 1.0).abs() < 0.03, "{got}");
    }

    #[test]
    fn halves_shared_by_overlapping_windows_measure_what_whole_windows_do() {
        // A sine and a broadband signal with a drift: consecutive windows half a window apart.
        let x: Vec<f32> = sine_g(4.5, 161.7, 12_000.0, 8192 * 6)
            .iter()
            .enumerate()
            .map(|(n, s)| s + 0.05 * ((n as f32 * 1.91).cos() + (n as f32 * 0.013).sin()))
            .collect();
        let mut whole = VelocityMeter::new(8192, 12_000.0, "g").unwrap();
        let mut shared = VelocityMeter::new(8192, 12_000.0, "g")
            .unwrap()
            .for_hop(4096, 12_000.0, "g");
        for k in 0..10u64 {
            let w = &x[k as usize * 4096..k as usize * 4096 + 8192];
            let (a, b) = (
                whole.measure(w, 1).unwrap(),
                shared.measure_at(k, w, 1).unwrap(),
            );
            assert!(
                (a / b - 1.0).abs() < 0.03,
                "window {k}: whole {a}, halves {b}"
            );
        }
        // After a restart the cached half is not used for another signal.
        shared.restart();
        let quiet = vec![0.0f32; 8192];
        let v = shared.measure_at(10, &quiet, 1).unwrap();
        assert!(v < 1e-6, "a silent window after a restart measured {v}");
        let v = shared.measure_at(12, &x[..8192], 1).unwrap();
        assert!(
            (v / whole.measure(&x[..8192], 1).unwrap() - 1.0).abs() < 0.03,
            "a skipped index is not reused"
        );
    }

    #[test]
    fn zones_follow_the_iso_tables() {
        let medium_rigid = ZoneLimits::default();
        assert_eq!(medium_rigid.zone(1.0), Zone::A);
        assert_eq!(
            medium_rigid.zone(1.4),
            Zone::A,
            "a boundary belongs to the better zone"
        );
        assert_eq!(medium_rigid.zone(2.0), Zone::B);
        assert_eq!(medium_rigid.zone(3.0), Zone::C);
        assert_eq!(medium_rigid.zone(4.6), Zone::D);
        let large_flexible = ZoneLimits::new(MachineGroup::Large, Foundation::Flexible);
        assert_eq!(large_flexible.zone(4.6), Zone::B);
        let small = ZoneLimits::new(MachineGroup::Small, Foundation::Flexible);
        assert_eq!(small.zone(1.0), Zone::B);
    }
}
