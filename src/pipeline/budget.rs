//! The memory budget of requests in flight (drsn.v1 `Diagnose`, KServe V2 over gRPC and REST): bytes reserved from
//! the size a request declares, before its body is buffered or decoded, and given back when it has been answered.
//! Streams are budgeted apart, at `open` (`--max-stream-memory`); together the two bound what clients can make the
//! server hold.

use std::sync::Arc;

use metrics::gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ServeError;
use crate::telemetry::metrics as m;

/// Bytes reserved per byte a request declares: its wire buffer, the decoded values, and the windows cut from them
/// (decoding is bounded to about the wire size: see `api::grpc::wire` and the REST parser).
pub(crate) const EXPANSION: usize = 3;

/// The budget shared by every request of this server.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    bytes: Arc<Semaphore>,
    capacity: usize,
}

/// Bytes held for one request; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        gauge!(m::REQUEST_MEMORY).decrement(self.bytes as f64);
    }
}

impl RequestBudget {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        gauge!(m::REQUEST_MEMORY_CAPACITY).set(capacity as f64);
        Self {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// The whole budget, in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserves room for a request whose body is `wire` bytes, at once or not at all: a request that could never
    /// fit is refused as too large, one that does not fit now as exhausted (retry later).
    pub fn reserve(&self, wire: usize) -> Result<Reservation, ServeError> {
        let bytes = wire.saturating_mul(EXPANSION).max(1);
        if bytes > self.capacity {
            return Err(ServeError::RequestTooLarge {
                bytes: wire,
                max: self.capacity / EXPANSION,
            });
        }
        let permits = u32::try_from(bytes).ok();
        let permit = match permits {
            Some(n) => self.bytes.clone().try_acquire_many_owned(n),
            None => Err(tokio::sync::TryAcquireError::NoPermits),
        }
        .map_err(|_| ServeError::RequestMemory {
            bytes: wire,
            capacity: self.capacity,
        })?;
        gauge!(m::REQUEST_MEMORY).increment(bytes as f64);
        Ok(Reservation {
            _permit: Some(permit),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_all_or_nothing_and_given_back() {
        let budget = RequestBudget::new(3000);
        let a = budget.reserve(600).unwrap();
        assert!(matches!(
            budget.reserve(600),
            Err(ServeError::RequestMemory { .. })
        ));
        assert!(matches!(
            budget.reserve(1001),
            Err(ServeError::RequestTooLarge { .. })
        ));
        drop(a);
        assert!(budget.reserve(1000).is_ok());
    }
}
