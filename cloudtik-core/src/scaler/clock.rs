//! Wall-clock time for the controller, driven by tokio's clock so tests can pause and
//! advance it.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time in unix seconds (the unit of heartbeat times).
    fn unix_now(&self) -> f64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
    }
}

/// Wall-clock time that advances with tokio's clock: the system time when it was made,
/// plus the tokio time elapsed since. In production it is the system time; under
/// `tokio::time::pause` it moves only when the test advances time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock starting at the current system time.
    pub fn new() -> Self {
        TokioClock::starting_at(SystemTime::now())
    }

    /// A clock starting at `base` (tests use a fixed date).
    pub fn starting_at(base: SystemTime) -> Self {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}
