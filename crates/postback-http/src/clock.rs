//! Clocks for the drivers: the core never reads the time or sleeps, so the caller lends it a
//! clock.
//!
//! Both read the wall clock for `now` (the engine's times are `DateTime<Utc>`) and turn a wait
//! until a wall time into a monotonic sleep of the remaining duration, so a wall-clock step
//! during a wait only shifts that one wait.

// The one place this crate reads the clock and sleeps (see clippy.toml at the workspace root).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use postback::transport::Clock;

fn wall() -> DateTime<Utc> {
    DateTime::from(SystemTime::now())
}

/// How long from now until `t` (zero if it has passed).
fn until(t: DateTime<Utc>) -> Duration {
    (t - wall()).to_std().unwrap_or_default()
}

/// The system clock, sleeping the thread: for [`postback::transport::run_blocking`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        wall()
    }

    fn sleep_until(&self, t: DateTime<Utc>) {
        std::thread::sleep(until(t));
    }
}

/// The system clock, sleeping on tokio's timer: for [`postback::transport::run_async`] on a
/// tokio runtime.
#[cfg(feature = "reqwest")]
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

#[cfg(feature = "reqwest")]
impl postback::transport::AsyncClock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        wall()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> impl Future<Output = ()> + Send {
        // Map the wall time onto tokio's monotonic clock now, not when first polled.
        let deadline = tokio::time::Instant::now() + until(t);
        tokio::time::sleep_until(deadline)
    }
}
