//! Logging set-up: text or JSON lines on stderr, levels from RUST_LOG; colour only on a terminal, so log files and
//! collectors get plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(json: bool, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        // The current span's fields (a stream's machine, sensor, peer, model version) ride on each line; the list of
        // enclosing spans would repeat them.
        builder.json().with_span_list(false).init();
    } else {
        builder.init();
    }
}

/// Lines a client can cause (one per stream it opens, one per request that fails) pass through a budget per call
/// site: a burst, then a steady rate; the rest are counted in `drsn_log_lines_suppressed_total{site}` and summed up
/// in one line when lines flow again. One client opening and resetting streams in a loop cannot fill a disk.
pub struct LogBudget {
    site: &'static str,
    state: std::sync::Mutex<Budget>,
}

struct Budget {
    tokens: f64,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

/// Lines a site may write at once, and per second after that.
pub const LOG_BURST: f64 = 100.0;
pub const LOG_RATE: f64 = 20.0;

impl LogBudget {
    pub const fn new(site: &'static str) -> Self {
        Self {
            site,
            state: std::sync::Mutex::new(Budget {
                tokens: LOG_BURST,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written now.
    pub fn admit(&self) -> bool {
        self.admit_at(std::time::Instant::now())
    }

    /// Whether a line may be written at `now`; when one is after some were held back, says how many first.
    pub fn admit_at(&self, now: std::time::Instant) -> bool {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = b.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * LOG_RATE;
            b.tokens = (b.tokens + refill).min(LOG_BURST);
        }
        b.last = Some(now);
        if b.tokens < 1.0 {
            b.suppressed += 1;
            metrics::counter!(crate::telemetry::metrics::LOG_LINES_SUPPRESSED, "site" => self.site)
                .increment(1);
            return false;
        }
        b.tokens -= 1.0;
        if b.suppressed > 0 {
            tracing::warn!(
                site = self.site,
                suppressed = b.suppressed,
                "log lines held back (over {LOG_RATE} a second)"
            );
            b.suppressed = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_burst_then_a_steady_rate() {
        let budget = LogBudget::new("test");
        let t0 = Instant::now();
        let admitted = (0..1000).filter(|_| budget.admit_at(t0)).count();
        assert_eq!(admitted, LOG_BURST as usize);
        // Ten seconds of a flood at 1,000 lines a second: the rate lets through 20 a second.
        let admitted = (1..=10_000)
            .filter(|i| budget.admit_at(t0 + Duration::from_millis(*i)))
            .count();
        assert!((195..=205).contains(&admitted), "{admitted}");
        // Quiet for a minute: the burst is back.
        let later = t0 + Duration::from_secs(70);
        assert_eq!(
            (0..500).filter(|_| budget.admit_at(later)).count(),
            LOG_BURST as usize
        );
    }
}
