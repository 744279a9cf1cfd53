//! How a stream's end is judged and where it goes on: the point the server names in its ending status (a drain, a
//! connection at its maximum age), or after a broken connection or a dead replica the window after the last one
//! delivered; which endings resending can fix; jittered exponential backoff between attempts.

use std::time::Duration;

use tonic::{Code, Status};

use crate::proto::{CONDITION_TRAILER, ConditionCarry, RESUME_TRAILER};

/// Where the server said to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// From this client sample index.
    At(u64),
    /// From where the stream started: the server received none of it.
    Start,
}

/// The resume point an ending status names (the `drsn-resume-from` trailer; a server from before the trailer says it
/// in the message), for UNAVAILABLE endings.
pub fn named(status: &Status) -> Option<Named> {
    if status.code() != Code::Unavailable {
        return None;
    }
    if let Some(at) = status
        .metadata()
        .get(RESUME_TRAILER)
        .and_then(|v| v.to_str().ok())
    {
        return match at {
            "start" => Some(Named::Start),
            n => n.parse().ok().map(Named::At),
        };
    }
    let text = status.message();
    let Some(at) = text.find("resume from sample ") else {
        return text
            .contains("send the stream again")
            .then_some(Named::Start);
    };
    text[at + "resume from sample ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
        .map(Named::At)
}

/// Endings a new stream elsewhere fixes: a drain or a connection at its maximum age (UNAVAILABLE, with a resume
/// point), a broken connection or a dead replica (UNAVAILABLE, INTERNAL or UNKNOWN, by client), a stream closed for
/// being idle (DEADLINE_EXCEEDED), a replica with no room for another stream (RESOURCE_EXHAUSTED). Anything else (a
/// bad token, bad input, a model that does not take this sensor) is the gateway's to fix.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// Endings after which the connection itself is done (drained, aged out, gone): the next stream dials again.
pub fn retire(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Internal | Code::Unknown)
}

/// The sensor's condition state an ending status carries, to send back as `resume_condition`.
pub fn carry(status: &Status) -> Option<ConditionCarry> {
    let bytes = status
        .metadata()
        .get_bin(CONDITION_TRAILER)?
        .to_bytes()
        .ok()?;
    <ConditionCarry as prost::Message>::decode(bytes).ok()
}

/// Client samples from one window's start to the next: the model-rate hop at the stream's rate.
pub fn client_hop(model_hop: u32, model_rate_hz: f64, sample_rate_hz: f64) -> u64 {
    let ratio = sample_rate_hz / model_rate_hz.max(f64::MIN_POSITIVE);
    ((f64::from(model_hop) * ratio).round() as u64).max(1)
}

/// Jittered exponential backoff ("full jitter"): attempt n waits a delay drawn from [0, min(cap, base x 2^n)], so
/// gateways cut off together do not come back together. Reset once a stream delivers again.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    state: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64).rotate_left(32);
        Self {
            base,
            cap,
            attempt: 0,
            state: seed | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs spread, not secrecy.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        ceiling.mul_f64((self.state >> 11) as f64 / (1u64 << 53) as f64)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(trailer: Option<&str>, message: &str) -> Status {
        let mut s = Status::unavailable(message);
        if let Some(t) = trailer {
            s.metadata_mut().insert(RESUME_TRAILER, t.parse().unwrap());
        }
        s
    }

    #[test]
    fn the_named_point_comes_from_the_trailer_or_an_older_servers_message() {
        assert_eq!(named(&unavailable(Some("4096"), "")), Some(Named::At(4096)));
        assert_eq!(named(&unavailable(Some("start"), "")), Some(Named::Start));
        assert_eq!(
            named(&unavailable(
                None,
                "draining; resume from sample 812 on another"
            )),
            Some(Named::At(812))
        );
        assert_eq!(
            named(&unavailable(None, "draining: send the stream again")),
            Some(Named::Start)
        );
        assert_eq!(named(&unavailable(None, "connection reset")), None);
        assert_eq!(named(&Status::internal("resume from sample 5")), None);
    }

    #[test]
    fn only_endings_elsewhere_can_fix_are_retried() {
        for code in [
            Code::Unavailable,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            assert!(retryable(code), "{code:?}");
        }
        for code in [
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::PermissionDenied,
        ] {
            assert!(!retryable(code), "{code:?}");
        }
        assert!(!retire(Code::DeadlineExceeded));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let ceiling = Duration::from_millis(100 << n.min(20)).min(Duration::from_secs(1));
            assert!(*d <= ceiling, "attempt {n}: {d:?}");
        }
        let late: Vec<_> = delays[10..].iter().collect();
        assert!(
            late.iter().any(|d| **d > Duration::from_millis(500)),
            "reaches toward the cap"
        );
        assert!(late.windows(2).any(|w| w[0] != w[1]), "jittered");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        assert_eq!(client_hop(512, 12_000.0, 48_000.0), 2048);
    }
}
