//! What a batch costs: inference time per batch size, measured at start-up and updated as batches run, and the
//! batch sizes that follow from it. The efficient batch is the smallest that gets within 2% of the best windows
//! per second: on a CPU that is a handful of windows, on a GPU hundreds. Batches larger than that only make windows
//! wait (on a CPU, batches of 4 to 16 windows cost the same per window as 32 and come back 2 to 8 times sooner);
//! batches are also cut early enough that queue wait plus inference stays within the latency budget.

use std::sync::Mutex;
use std::time::Duration;

/// A batch size is efficient when it reaches this share of the best throughput.
const EFFICIENT: f64 = 0.98;
/// Weight of a new observation in the running estimate.
const ALPHA: f64 = 0.1;

#[derive(Debug)]
pub struct CostModel {
    /// Seconds per batch of size `i + 1`.
    seconds: Mutex<Vec<f64>>,
}

impl CostModel {
    /// From measurements `(batch size, seconds)`, at least one; sizes between are interpolated linearly, sizes
    /// beyond the largest extrapolated per window.
    pub fn new(max_batch: usize, measured: &[(usize, f64)]) -> Self {
        let mut points: Vec<(usize, f64)> = measured
            .iter()
            .copied()
            .filter(|(b, t)| *b >= 1 && t.is_finite() && *t > 0.0)
            .collect();
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        if points.is_empty() {
            points.push((1, 1e-3));
        }
        let seconds = (1..=max_batch.max(1))
            .map(|b| {
                let after = points.iter().position(|p| p.0 >= b);
                match after {
                    Some(0) => points[0].1 * b as f64 / points[0].0 as f64,
                    Some(i) => {
                        let ((b0, t0), (b1, t1)) = (points[i - 1], points[i]);
                        t0 + (t1 - t0) * (b - b0) as f64 / (b1 - b0) as f64
                    }
                    None => {
                        let (bl, tl) = points[points.len() - 1];
                        tl * b as f64 / bl as f64
                    }
                }
            })
            .collect();
        Self {
            seconds: Mutex::new(seconds),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Vec<f64>> {
        self.seconds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expected inference time of a batch of `size`.
    pub fn estimate(&self, size: usize) -> Duration {
        let t = self.table();
        let i = size.clamp(1, t.len()) - 1;
        Duration::from_secs_f64(t[i] * (size.max(1) as f64 / (i + 1) as f64))
    }

    /// A batch of `size` took `elapsed`.
    pub fn observe(&self, size: usize, elapsed: Duration) {
        let mut t = self.table();
        if (1..=t.len()).contains(&size) {
            let s = &mut t[size - 1];
            *s += ALPHA * (elapsed.as_secs_f64() - *s);
        }
    }

    /// The smallest batch size within [`EFFICIENT`] of the best windows per second.
    pub fn efficient_batch(&self) -> usize {
        let t = self.table();
        let rate = |i: usize| (i + 1) as f64 / t[i];
        let best = (0..t.len()).map(rate).fold(0.0, f64::max);
        (0..t.len())
            .find(|&i| rate(i) >= EFFICIENT * best)
            .map_or(t.len(), |i| i + 1)
    }

    /// The largest batch, at most `limit`, whose inference ends within `budget` of now.
    pub fn fits(&self, limit: usize, budget: Duration) -> usize {
        let t = self.table();
        let budget = budget.as_secs_f64();
        (1..=limit.min(t.len()))
            .rev()
            .find(|&b| t[b - 1] <= budget)
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: f64) -> f64 {
        x / 1e3
    }

    #[test]
    fn a_cpu_like_curve_is_efficient_at_a_handful_of_windows() {
        // Fixed overhead, then about 0.5 ms a window: throughput flattens beyond a few windows.
        let m = CostModel::new(
            32,
            &[
                (1, ms(0.9)),
                (4, ms(2.2)),
                (8, ms(4.2)),
                (16, ms(8.2)),
                (32, ms(16.2)),
            ],
        );
        let e = m.efficient_batch();
        assert!((8..=16).contains(&e), "{e}");
        assert!(
            (m.estimate(6).as_secs_f64() - ms(3.2)).abs() < 1e-6,
            "interpolated"
        );
        assert_eq!(m.fits(32, Duration::from_millis(5)), 9);
        assert_eq!(
            m.fits(32, Duration::from_micros(100)),
            1,
            "at least one window"
        );
    }

    #[test]
    fn a_gpu_like_curve_is_efficient_only_when_large() {
        // Nearly flat: a batch of 1024 costs little more than one.
        let m = CostModel::new(1024, &[(1, ms(1.0)), (256, ms(1.5)), (1024, ms(3.0))]);
        assert!(m.efficient_batch() >= 900, "{}", m.efficient_batch());
    }

    #[test]
    fn observations_move_the_estimate() {
        let m = CostModel::new(8, &[(8, ms(8.0))]);
        assert!((m.estimate(8).as_secs_f64() - ms(8.0)).abs() < 1e-9);
        for _ in 0..100 {
            m.observe(8, Duration::from_millis(4));
        }
        assert!((m.estimate(8).as_secs_f64() - ms(4.0)).abs() < 1e-4);
        assert!((m.estimate(16).as_secs_f64() - 2.0 * m.estimate(8).as_secs_f64()).abs() < 1e-9);
    }
}
