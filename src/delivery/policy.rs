//! When to retry, when to give up, and when to switch a postback off.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{DeliveryId, FailureClass};

/// What to do after a failure of a given class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnFailure {
    /// Count it and retry on the schedule.
    Retry,
    /// Count it and give up on this delivery now.
    GiveUp,
}

/// The classification table: which failures are retried and which end a delivery at once.
/// Every failure caused by the receiving server counts toward the limits; local refusals
/// (network policy, our own errors) never count and are always retried.
///
/// | failure | default |
/// | --- | --- |
/// | 3xx (redirects are never followed) | retry |
/// | 4xx | retry |
/// | 5xx and other statuses | retry |
/// | timeout, connect, DNS, TLS | retry |
/// | response body check failed | retry |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Classifier {
    /// 3xx.
    pub redirect: OnFailure,
    /// 4xx.
    pub client_error: OnFailure,
    /// 5xx and any other non-2xx status.
    pub server_error: OnFailure,
    /// Timeout, connect, DNS and TLS failures.
    pub transport: OnFailure,
    /// A 2xx whose body failed the postback's response check.
    pub body_check: OnFailure,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            redirect: OnFailure::Retry,
            client_error: OnFailure::Retry,
            server_error: OnFailure::Retry,
            transport: OnFailure::Retry,
            body_check: OnFailure::Retry,
        }
    }
}

impl Classifier {
    /// 4xx ends the delivery at once (the partner's server said the request itself is wrong).
    #[must_use]
    pub fn client_errors_terminal(mut self) -> Self {
        self.client_error = OnFailure::GiveUp;
        self
    }

    /// The rule for a counted failure class.
    pub fn on(&self, class: &FailureClass) -> OnFailure {
        match class {
            FailureClass::Status(s) if (300..400).contains(s) => self.redirect,
            FailureClass::Status(s) if (400..500).contains(s) => self.client_error,
            FailureClass::Status(_) => self.server_error,
            FailureClass::BodyCheck => self.body_check,
            _ => self.transport,
        }
    }
}

/// The default retry schedule: the wait before attempt 2, 3, ... 25. It spreads 25 attempts over
/// about 2.8 days, dense at first (most outages are short) and every 6 hours at the end.
pub const DEFAULT_SCHEDULE: [Duration; 24] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(4 * 3600),
    Duration::from_secs(4 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
];

/// How one delivery is retried.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Counted failures after which a delivery gives up (default 25, the seeds' number).
    pub max_attempts: u32,
    /// Waits between attempts; the last one repeats. Default: [`DEFAULT_SCHEDULE`].
    pub schedule: Vec<Duration>,
    /// Each wait is spread by up to ± this percentage (default 20), so that retries of many
    /// deliveries to one partner do not arrive together.
    pub jitter_percent: u8,
    /// Seed of the deterministic jitter: the same seed, delivery and attempt give the same wait.
    pub jitter_seed: u64,
    /// No wait is longer than this (default 12 hours).
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is cut to it (default 6 hours). `Retry-After` can only
    /// delay a retry, never bring it forward.
    pub retry_after_cap: Duration,
    /// Local refusals after which a delivery gives up (default 25, counted since creation or
    /// the last release). They never count toward disabling the postback.
    pub max_local_refusals: u32,
    /// Which failures are retried.
    pub classifier: Classifier,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 25,
            schedule: DEFAULT_SCHEDULE.to_vec(),
            jitter_percent: 20,
            jitter_seed: 0x005E_ED0F_BAC4,
            max_delay: Duration::from_secs(12 * 3600),
            retry_after_cap: Duration::from_secs(6 * 3600),
            max_local_refusals: 25,
            classifier: Classifier::default(),
        }
    }
}

impl RetryPolicy {
    /// The default policy with every wait divided by `factor` (at least 1 ms), for demos and
    /// tests that must finish in seconds. `Retry-After` and the cap shrink alike.
    pub fn compressed(factor: u32) -> RetryPolicy {
        let f = factor.max(1);
        let d = RetryPolicy::default();
        let shrink = |x: Duration| (x / f).max(Duration::from_millis(1));
        RetryPolicy {
            schedule: d.schedule.iter().map(|&x| shrink(x)).collect(),
            max_delay: shrink(d.max_delay),
            retry_after_cap: shrink(d.retry_after_cap),
            ..d
        }
    }

    /// Set the number of counted attempts.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Set the schedule (the last wait repeats). An empty schedule means retry at once.
    #[must_use]
    pub fn schedule(mut self, waits: Vec<Duration>) -> Self {
        self.schedule = waits;
        self
    }

    /// Set the jitter spread and seed.
    #[must_use]
    pub fn jitter(mut self, percent: u8, seed: u64) -> Self {
        self.jitter_percent = percent.min(100);
        self.jitter_seed = seed;
        self
    }

    /// Set the classification table.
    #[must_use]
    pub fn classifier(mut self, c: Classifier) -> Self {
        self.classifier = c;
        self
    }

    /// The wait after the `attempt`-th attempt (1-based) of `delivery`, jitter and cap applied.
    pub fn wait_after(&self, attempt: u32, delivery: DeliveryId) -> Duration {
        let base = match self.schedule.len() {
            0 => return Duration::ZERO,
            n => self.schedule[(attempt.max(1) as usize - 1).min(n - 1)],
        };
        let pct = u64::from(self.jitter_percent.min(100));
        let wait = if pct == 0 {
            base
        } else {
            // A sample in [0, 2*pct] per mille-percent, centred on pct: base * (1 +- pct%).
            let r = splitmix64(
                self.jitter_seed
                    ^ delivery.get().wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ u64::from(attempt),
            );
            let span = 2 * pct * 1000 + 1;
            let offset = (r % span) as i128 - (pct * 1000) as i128; // in 1/100_000 of base
            let nanos = base.as_nanos() as i128;
            let jittered = nanos + nanos * offset / 100_000;
            Duration::from_nanos(jittered.clamp(0, u64::MAX as i128) as u64)
        };
        wait.min(self.max_delay)
    }

    /// When to retry after the `attempt`-th attempt failed at `now`, honouring a `Retry-After`
    /// (capped) only when it asks for a later time.
    pub fn next_attempt_at(
        &self,
        now: DateTime<Utc>,
        attempt: u32,
        delivery: DeliveryId,
        retry_after: Option<DateTime<Utc>>,
    ) -> DateTime<Utc> {
        let scheduled = add(now, self.wait_after(attempt, delivery));
        match retry_after {
            Some(t) => scheduled.max(t.min(add(now, self.retry_after_cap))),
            None => scheduled,
        }
    }
}

/// `now + d`, saturating instead of overflowing.
pub(crate) fn add(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// When a postback is switched off automatically. Applies to server-to-server postbacks (the
/// only ones this crate sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DisablePolicy {
    /// After `failures` counted failed attempts of one delivery (default 25: the seeds' rule).
    PerDelivery {
        /// Counted failures of one delivery.
        failures: u32,
    },
    /// After `failures` consecutive counted failures across the postback's deliveries, all
    /// within `window` (Everflow's newer rule: 10 within 72 hours). A success resets the count.
    ConsecutiveWithin {
        /// Consecutive counted failures.
        failures: u32,
        /// The window they must fall in.
        window: Duration,
    },
    /// Never disable.
    Never,
}

impl Default for DisablePolicy {
    fn default() -> Self {
        DisablePolicy::PerDelivery { failures: 25 }
    }
}

impl DisablePolicy {
    /// Everflow's 2026 rule: 10 consecutive failures within 72 hours.
    pub const fn everflow_2026() -> DisablePolicy {
        DisablePolicy::ConsecutiveWithin {
            failures: 10,
            window: Duration::from_secs(72 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_spreads_25_attempts_over_about_three_days() {
        let total: Duration = DEFAULT_SCHEDULE.iter().sum();
        let hours = total.as_secs_f64() / 3600.0;
        assert!((60.0..80.0).contains(&hours), "{hours} h");
        assert_eq!(DEFAULT_SCHEDULE.len() + 1, 25);
    }

    #[test]
    fn jitter_stays_within_its_percentage_and_is_deterministic() {
        let p = RetryPolicy::default();
        for attempt in 1..30 {
            for id in 0..50 {
                let w = p.wait_after(attempt, DeliveryId::new(id));
                let base = DEFAULT_SCHEDULE[(attempt as usize - 1).min(23)].as_secs_f64();
                let r = w.as_secs_f64() / base;
                assert!((0.8 - 1e-9..=1.2 + 1e-9).contains(&r), "{r}");
                assert_eq!(w, p.wait_after(attempt, DeliveryId::new(id)));
            }
        }
    }

    #[test]
    fn retry_after_only_delays_and_is_capped() {
        let p = RetryPolicy::default().jitter(0, 0);
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let id = DeliveryId::new(1);
        let sched = p.next_attempt_at(now, 1, id, None);
        assert_eq!(sched, now + chrono::Duration::seconds(10));
        // Earlier than the schedule: ignored.
        assert_eq!(
            p.next_attempt_at(now, 1, id, Some(now + chrono::Duration::seconds(2))),
            sched
        );
        // Later: honoured.
        let later = now + chrono::Duration::seconds(120);
        assert_eq!(p.next_attempt_at(now, 1, id, Some(later)), later);
        // Far later: capped.
        let far = now + chrono::Duration::days(30);
        assert_eq!(
            p.next_attempt_at(now, 1, id, Some(far)),
            now + chrono::Duration::hours(6)
        );
    }
}
