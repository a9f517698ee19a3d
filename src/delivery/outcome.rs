//! What a delivery's result means beyond the delivery: the postback's health, the disable
//! policy, and whether the delivery is held, retried or finished. One rule, pure, applied by the
//! in-memory engine and by every store to the state it keeps.

use chrono::{DateTime, Utc};

use super::{Delivery, DisablePolicy, GiveUpReason, Health, Progress, State};
use crate::access::Operation;
use crate::model::Postback;

/// Where a delivery stands after [`settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Next {
    /// Delivered or given up: a record now (report it).
    Finished,
    /// Due again at [`Delivery::due`].
    Scheduled,
    /// Held until its postback is enabled or resumed.
    Held,
}

/// What [`settle`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct Outcome {
    /// The disable policy fired, for this reason, while the postback was active: flip it from
    /// active to disabled (conditionally: however many results say so, it flips once), tell the
    /// network's manager, and hold its other scheduled deliveries, all together.
    pub disable: Option<String>,
    /// Where the delivery now stands.
    pub next: Next,
}

/// Apply a delivery's [`Progress`] (from [`Delivery::handle_response`] or
/// [`Delivery::interrupted`]) with its postback as it is now (`None`: deleted) and the postback's
/// `health`, which this updates:
/// - a success resets the health; a counted failure feeds the disable policy;
/// - a retry of a postback that is off (or that this very failure disables) is held, and so is
///   a delivery that used up its attempts as its postback went off: kept for the replay, not lost;
/// - a delivery whose postback is gone ends ([`GiveUpReason::PostbackDeleted`]);
/// - a test fire always finishes and never touches the health.
pub fn settle(
    now: DateTime<Utc>,
    delivery: &mut Delivery,
    progress: Progress,
    postback: Option<&Postback>,
    health: &mut Health,
    policy: &DisablePolicy,
) -> Outcome {
    let finished = Outcome {
        disable: None,
        next: Next::Finished,
    };
    if delivery.is_test() {
        return finished;
    }
    let Some(pb) = postback else {
        delivery.abandon(now);
        return finished;
    };
    let mut count = |failures: u32| {
        let reason = health.record_failure(now, delivery.key(), failures, policy);
        reason.filter(|_| pb.status().is_active() && pb.method().is_server_to_server())
    };
    let (disable, held) = match progress {
        Progress::Delivered { .. } => {
            health.record_success(now);
            return finished;
        }
        Progress::Retry {
            counted, failures, ..
        } => {
            let disable = if counted { count(failures) } else { None };
            let off = disable.is_some() || !pb.status().is_active();
            (disable, off)
        }
        Progress::GaveUp { reason, failure } => {
            let disable = if failure.counts() {
                count(delivery.failures())
            } else {
                None
            };
            let off = disable.is_some() || !pb.status().is_active();
            (
                disable,
                off && matches!(reason, GiveUpReason::MaxAttempts { .. }),
            )
        }
    };
    let next = if held && delivery.hold() {
        Next::Held
    } else if delivery.is_finished() {
        Next::Finished
    } else {
        Next::Scheduled
    };
    Outcome { disable, next }
}

/// What a management operation on its postback does to one of the postback's deliveries, at
/// `now`: a pause holds it if scheduled; a resume or an enable releases it if held (a fresh
/// attempt budget, due now); a delete ends it unless its request is out (that one ends when its
/// result comes back, and may yet be delivered). Returns whether it changed. The caller also
/// resets the postback's [`Health`] on a resume or an enable, and drops it on a delete.
pub fn on_operation(op: Operation, now: DateTime<Utc>, delivery: &mut Delivery) -> bool {
    match op {
        Operation::Pause => {
            matches!(delivery.state(), State::Scheduled { .. })
                && !delivery.is_test()
                && delivery.hold()
        }
        Operation::Resume | Operation::Enable => delivery.release(now).is_ok(),
        Operation::Delete => {
            if delivery.is_finished() || matches!(delivery.state(), State::InFlight { .. }) {
                return false;
            }
            delivery.abandon(now);
            true
        }
        _ => false,
    }
}
