//! Converts a stream's sample rate to the model's, chunk by chunk, with rubato's synchronous FFT resampler.

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

/// Largest rate ratio served, either way: below half the model's rate the band the model learned is missing;
/// far above, a window would be a sliver of the recording.
const MAX_DOWN: f64 = 16.0;
const MAX_UP: f64 = 2.0;
/// Largest reduced ratio term (rate / gcd): FFT sizes, and so latency and memory, grow with it.
const MAX_REDUCED: usize = 4096;
/// Input frames per resampler call.
const CHUNK: usize = 1024;
/// Largest |sample| the resampler takes; larger values are clamped to it. A finite sample near f32::MAX would
/// overflow the FFT and spread NaN through the filter state; nothing a sensor sends is this large, and a window
/// holding such a value is flagged as out of range anyway.
const MAX_ABS: f32 = 1e15;

/// Checks that `rate_in` can be resampled to `rate_out`; returns the integer rates, or why not.
pub fn plan(rate_in: f64, rate_out: f64) -> Result<(usize, usize), String> {
    let round = |r: f64| (r.round() - r).abs() < 1e-6 && r.round() >= 1.0;
    if !round(rate_in) || !round(rate_out) {
        return Err(format!(
            "only whole-hertz rates can be resampled to the model's {rate_out} Hz"
        ));
    }
    let (a, b) = (rate_in.round() as usize, rate_out.round() as usize);
    if (a as f64) < b as f64 / MAX_UP {
        return Err(format!(
            "below {} Hz the signal lacks the band the model was trained on ({rate_out} Hz)",
            b as f64 / MAX_UP
        ));
    }
    if a as f64 > b as f64 * MAX_DOWN {
        return Err(format!(
            "above {} Hz ({MAX_DOWN} x the model's rate) is not served",
            b as f64 * MAX_DOWN
        ));
    }
    let g = gcd(a, b);
    if a / g > MAX_REDUCED || b / g > MAX_REDUCED {
        return Err(format!(
            "the ratio {a}:{b} reduces to {}:{}, too fine to resample in real time (terms over {MAX_REDUCED}); \
             resample at the gateway or use a rate with a larger common divisor",
            a / g,
            b / g
        ));
    }
    Ok((a, b))
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A streaming resampler whose output is aligned with its input: the filter delay is dropped, so output frame k is
/// the signal at input time k * rate_in / rate_out.
pub struct StreamResampler {
    inner: Fft<f32>,
    channels: usize,
    rates: (usize, usize),
    pending: Vec<f32>,
    scratch: Vec<f32>,
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl StreamResampler {
    pub fn new(rate_in: usize, rate_out: usize, channels: usize) -> Result<Self, String> {
        let inner = Fft::<f32>::new(rate_in, rate_out, CHUNK, channels, FixedSync::Input)
            .map_err(|e| e.to_string())?;
        let delay_left = inner.output_delay();
        let scratch = vec![0.0; inner.output_frames_max() * channels];
        Ok(Self {
            inner,
            channels,
            rates: (rate_in, rate_out),
            pending: Vec::new(),
            scratch,
            delay_left,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Output frames per input frame.
    pub fn ratio(&self) -> f64 {
        self.rates.1 as f64 / self.rates.0 as f64
    }

    /// Resamples `input` (interleaved), appending every output frame that is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), String> {
        self.frames_in += (input.len() / self.channels) as u64;
        self.pending
            .extend(input.iter().map(|x| x.clamp(-MAX_ABS, MAX_ABS)));
        self.drain(out, None)
    }

    /// Bytes this resampler holds between calls: rubato's FFT buffers, plans and overlap, and our scratch
    /// (the pending input is at most a chunk, budgeted with the chunks).
    pub fn memory_bytes(&self) -> usize {
        let (fin, fout) = (self.inner.fft_size_in(), self.inner.fft_size_out());
        let (in_max, out_max) = (
            self.inner.input_frames_max(),
            self.inner.output_frames_max(),
        );
        let complex = 8;
        // Spectra and time buffers of the filter, input and output; the real-FFT plans (twiddles and scratch).
        let fft = (fin + 1) * 2 * complex + 2 * fin * 4 + (fout + 1) * complex + 2 * fout * 4;
        let plans = (2 * fin + 2 * fout) * 2 * complex;
        let buffers = self.channels * 4 * (fout + in_max + fin + out_max + fout);
        fft + plans + buffers + self.scratch.capacity() * 4
    }

    /// Flushes the filter at the end of the stream: appends the output still owed for the input received.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), String> {
        let owed = (self.frames_in as f64 * self.ratio()).floor() as u64;
        let mut guard = 0;
        while self.frames_out < owed && guard < 64 {
            let have = self.pending.len() / self.channels;
            self.pending
                .resize(self.inner.input_frames_next() * self.channels, 0.0);
            self.drain(out, Some(have))?;
            guard += 1;
        }
        let excess = self.frames_out.saturating_sub(owed) as usize * self.channels;
        out.truncate(out.len().saturating_sub(excess));
        self.frames_out = self.frames_out.min(owed);
        Ok(())
    }

    /// Forgets all state, as at a discontinuity.
    pub fn reset(&mut self) {
        self.inner.reset();
        self.pending.clear();
        self.delay_left = self.inner.output_delay();
        self.frames_in = 0;
        self.frames_out = 0;
    }

    fn drain(&mut self, out: &mut Vec<f32>, partial: Option<usize>) -> Result<(), String> {
        let ch = self.channels;
        loop {
            let need = self.inner.input_frames_next();
            if self.pending.len() / ch < need {
                return Ok(());
            }
            let frames_out = self.inner.output_frames_next();
            let indexing = partial.map(|n| rubato::Indexing::new().partial_len(n));
            let input = InterleavedSlice::new(&self.pending[..need * ch], ch, need)
                .map_err(|e| e.to_string())?;
            let mut output =
                InterleavedSlice::new_mut(&mut self.scratch[..frames_out * ch], ch, frames_out)
                    .map_err(|e| e.to_string())?;
            let (used, written) = self
                .inner
                .process_into_buffer(&input, &mut output, indexing.as_ref())
                .map_err(|e| format!("resampling failed: {e}"))?;
            self.pending.drain(..used * ch);
            let skip = self.delay_left.min(written);
            self.delay_left -= skip;
            out.extend_from_slice(&self.scratch[skip * ch..written * ch]);
            self.frames_out += (written - skip) as u64;
            if partial.is_some() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin() as f32)
            .collect()
    }

    /// Frequency of the strongest DFT bin (coarse scan, then refined) of `x` sampled at `rate`.
    fn dominant_frequency(x: &[f32], rate: f64) -> f64 {
        let power = |f: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, &v) in x.iter().enumerate() {
                let ph = 2.0 * std::f64::consts::PI * f * i as f64 / rate;
                re += v as f64 * ph.cos();
                im += v as f64 * ph.sin();
            }
            re * re + im * im
        };
        let mut best = (0.0, 0.0);
        for step in 0..600 {
            let f = 10.0 * step as f64;
            let p = power(f);
            if p > best.1 {
                best = (f, p);
            }
        }
        let mut f0 = best.0;
        for k in -100..=100 {
            let f = best.0 + k as f64 * 0.1;
            let p = power(f);
            if p > best.1 {
                best = (f, p);
                f0 = f;
            }
        }
        f0
    }

    #[test]
    fn keeps_a_sines_frequency_and_its_timing() {
        for (rate_in, freq) in [
            (48_000.0, 1_234.5),
            (25_600.0, 3_000.0),
            (8_000.0, 700.0),
            (44_100.0, 157.0),
        ] {
            let x = sine(freq, rate_in, rate_in as usize);
            let (a, b) = plan(rate_in, 12_000.0).unwrap();
            let mut rs = StreamResampler::new(a, b, 1).unwrap();
            let mut out = Vec::new();
            // Uneven chunks, as a gateway sends them.
            for chunk in x.chunks(777) {
                rs.push(chunk, &mut out).unwrap();
            }
            rs.finish(&mut out).unwrap();
            assert_eq!(
                out.len(),
                12_000,
                "rate {rate_in}: one second in, one second out"
            );
            let f = dominant_frequency(&out[2_000..10_000], 12_000.0);
            assert!(
                (f - freq).abs() < 1.0,
                "rate {rate_in}: {freq} Hz came out at {f} Hz"
            );
            // Aligned: the output at model time t matches the input's sine at t (delay removed).
            let expect = sine(freq, 12_000.0, 12_000);
            let err = out[2_000..10_000]
                .iter()
                .zip(&expect[2_000..10_000])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                err < 0.05,
                "rate {rate_in}: output is shifted in time (max error {err})"
            );
        }
    }

    #[test]
    fn refuses_ratios_it_cannot_serve() {
        assert!(plan(12_000.0, 12_000.0).is_ok());
        assert!(
            plan(11_999.5, 12_000.0)
                .unwrap_err()
                .contains("whole-hertz")
        );
        assert!(
            plan(4_000.0, 12_000.0)
                .unwrap_err()
                .contains("lacks the band")
        );
        assert!(
            plan(1_000_000.0, 12_000.0)
                .unwrap_err()
                .contains("not served")
        );
        assert!(plan(11_999.0, 12_000.0).unwrap_err().contains("too fine"));
    }
}
