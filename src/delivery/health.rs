//! A postback's delivery health and the decision of the disable policy: pure, so the in-memory
//! engine and every store apply the same rule to the state they keep.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::DisablePolicy;
use crate::model::DeliveryKey;

/// A postback's delivery health, for the disable policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// Times of the current run of consecutive counted failures (the most recent `n` kept).
    pub recent_failures: VecDeque<DateTime<Utc>>,
    /// Consecutive counted failures (saturating).
    pub consecutive_failures: u32,
    /// The last success.
    pub last_success: Option<DateTime<Utc>>,
}

impl Health {
    /// A delivery succeeded: the consecutive count starts again.
    pub fn record_success(&mut self, now: DateTime<Utc>) {
        self.reset();
        self.last_success = Some(now);
    }

    /// A counted failure of the delivery `cause`, which has `delivery_failures` counted failures
    /// now. Returns the reason to disable the postback when `policy` says so (the caller flips the
    /// postback from active to disabled, which happens once however often this says so).
    pub fn record_failure(
        &mut self,
        now: DateTime<Utc>,
        cause: &DeliveryKey,
        delivery_failures: u32,
        policy: &DisablePolicy,
    ) -> Option<String> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.recent_failures.push_back(now);
        // Keep only as many failure times as the policy can look at.
        let keep = match *policy {
            DisablePolicy::PerDelivery { failures }
            | DisablePolicy::ConsecutiveWithin { failures, .. } => failures as usize,
            DisablePolicy::Never => 0,
        };
        while self.recent_failures.len() > keep {
            self.recent_failures.pop_front();
        }
        match *policy {
            DisablePolicy::PerDelivery { failures } => (delivery_failures >= failures).then(|| {
                format!(
                    "{delivery_failures} failed attempts of delivery {cause} from the receiving server"
                )
            }),
            DisablePolicy::ConsecutiveWithin { failures, window } => {
                let first = self.recent_failures.front().copied();
                let within =
                    first.is_some_and(|f| (now - f).to_std().unwrap_or_default() <= window);
                (self.consecutive_failures >= failures
                    && self.recent_failures.len() as u32 >= failures
                    && within)
                    .then(|| {
                        let secs = window.as_secs();
                        let span = if secs >= 3600 && secs % 3600 == 0 {
                            format!("{} hours", secs / 3600)
                        } else if secs >= 60 && secs % 60 == 0 {
                            format!("{} minutes", secs / 60)
                        } else {
                            format!("{secs} seconds")
                        };
                        format!("{failures} consecutive failed deliveries within {span}")
                    })
            }
            DisablePolicy::Never => None,
        }
    }

    /// Start the count again (after an enable).
    pub fn reset(&mut self) {
        self.consecutive_failures = 0;
        self.recent_failures.clear();
    }
}
