//! Time for the [`Worker`](crate::Worker): the store and the core never read a clock, the
//! Worker reads one through [`Clock`] once per turn of its loop and as each send finishes, and
//! passes `now` down.
//!
//! [`SystemClock`] is the wall clock (the one place this crate reads it). [`ManualClock`] moves
//! only when a test says so, and wakes whatever sleeps on it when its time passes their
//! deadline, so tests of retries never sleep real time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A future a [`Clock`] returns for a sleep; boxed so the Worker and its handles can share one
/// clock as `dyn Clock`.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the Worker reads the time and waits for it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// A future that completes once the time is `t` or later (at once if it has passed).
    fn sleep_until(&self, t: DateTime<Utc>) -> Sleep;
}

/// The system's wall clock; sleeps on tokio's timer.
///
/// A wait until a wall time becomes a monotonic sleep of the remaining duration when the sleep
/// is made, so a step of the wall clock shifts only that one wait (the Worker makes a new one
/// every turn of its loop).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one place this crate reads the wall clock (see clippy.toml at the workspace root).
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> DateTime<Utc> {
        DateTime::from(std::time::SystemTime::now())
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> Sleep {
        let wait = (t - self.now()).to_std().unwrap_or_default();
        // Mapped onto tokio's monotonic clock now, not when first polled.
        let deadline = tokio::time::Instant::now() + wait;
        Box::pin(tokio::time::sleep_until(deadline))
    }
}

/// A clock that moves only by [`advance`](ManualClock::advance) and [`set`](ManualClock::set),
/// for tests. Clones share one time; a task sleeping on it wakes once the time passes its
/// deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    time: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock that reads `start` until moved.
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            time: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Move the time forward by `d`, waking sleepers whose deadline it passes.
    pub fn advance(&self, d: Duration) {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        self.time.send_modify(|t| {
            *t = t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC);
        });
    }

    /// Set the time (backwards too: a wall clock can step back), waking sleepers whose deadline
    /// it passes.
    pub fn set(&self, t: DateTime<Utc>) {
        self.time.send_replace(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.time.borrow()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> Sleep {
        let mut rx = self.time.subscribe();
        Box::pin(async move {
            while *rx.borrow_and_update() < t {
                if rx.changed().await.is_err() {
                    // Every clone is gone: the time can no longer move, so it never comes.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_sleeper_wakes_when_the_manual_time_passes_its_deadline() {
        let clock = ManualClock::new(t0());
        let deadline = t0() + chrono::Duration::seconds(10);
        let mut sleep = clock.sleep_until(deadline);
        assert!(futures_poll(&mut sleep).is_pending());
        clock.advance(Duration::from_secs(9));
        assert!(futures_poll(&mut sleep).is_pending());
        clock.advance(Duration::from_secs(1));
        assert!(futures_poll(&mut sleep).is_ready());
        assert_eq!(clock.now(), deadline);
    }

    #[tokio::test]
    async fn a_deadline_already_passed_is_ready_at_once() {
        let clock = ManualClock::new(t0());
        clock.set(t0() + chrono::Duration::seconds(5));
        let mut sleep = clock.sleep_until(t0());
        assert!(futures_poll(&mut sleep).is_ready());
    }

    fn futures_poll(f: &mut Sleep) -> std::task::Poll<()> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.as_mut().poll(&mut cx)
    }
}
