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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::delivery::{Action, DeliveryId, RetryPolicy, SendContext};
    use crate::model::{PartnerId, PostbackId, Status};
    use crate::registry::Trigger;
    use crate::template::{Macro, MacroValues, ValueMap};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
    }

    fn pb(status: Status) -> Postback {
        Postback::builder(PostbackId::new(1))
            .partner(PartnerId::new(7))
            .url("https://t.example/pb?cid={sub1}")
            .status(status)
            .build()
            .expect("valid")
    }

    fn delivery(n: u64) -> Delivery {
        let key = Trigger::conversion(n, PartnerId::new(7), 42.into()).key(PostbackId::new(1));
        let values = ValueMap::new().with(Macro::SUB1, "c").to_stored(&[]);
        Delivery::new(DeliveryId::new(n), key, values, t0(), Duration::ZERO)
    }

    /// Send `d` to `p` and answer `status`.
    fn answer(d: &mut Delivery, p: &Postback, status: u16, retry: &RetryPolicy) -> Progress {
        let sent = d.poll(t0(), &SendContext::new(p));
        assert!(matches!(sent, Action::Send(_)), "{sent:?}");
        let resp = http::Response::builder().status(status).body(Vec::new());
        d.handle_response(t0(), Ok(resp.expect("valid")), retry)
            .expect("in flight")
    }

    #[test]
    fn a_success_finishes_and_resets_the_health() {
        let p = pb(Status::Active);
        let mut d = delivery(1);
        let mut h = Health {
            consecutive_failures: 3,
            ..Health::default()
        };
        let progress = answer(&mut d, &p, 200, &RetryPolicy::default());
        let o = settle(
            t0(),
            &mut d,
            progress,
            Some(&p),
            &mut h,
            &DisablePolicy::default(),
        );
        assert_eq!(
            o,
            Outcome {
                disable: None,
                next: Next::Finished
            }
        );
        assert_eq!((h.consecutive_failures, h.last_success), (0, Some(t0())));
    }

    #[test]
    fn the_failure_that_trips_the_policy_disables_and_holds_the_delivery() {
        let p = pb(Status::Active);
        let policy = DisablePolicy::PerDelivery { failures: 2 };
        let retry = RetryPolicy::default().jitter(0, 0);
        let mut d = delivery(1);
        let mut h = Health::default();
        let first = answer(&mut d, &p, 500, &retry);
        let o = settle(t0(), &mut d, first, Some(&p), &mut h, &policy);
        assert_eq!(
            o,
            Outcome {
                disable: None,
                next: Next::Scheduled
            }
        );
        let mut d2 = d.clone();
        let due = d2.due().expect("scheduled");
        let _ = d2.poll(due, &SendContext::new(&p));
        let resp = http::Response::builder()
            .status(500)
            .body(Vec::new())
            .expect("valid");
        let second = d2
            .handle_response(due, Ok(resp), &retry)
            .expect("in flight");
        let o = settle(due, &mut d2, second, Some(&p), &mut h, &policy);
        assert!(o.disable.is_some(), "{o:?}");
        assert_eq!(o.next, Next::Held);
        assert_eq!(d2.state(), &State::Held);
    }

    #[test]
    fn a_postback_already_off_is_not_disabled_again_but_its_retry_is_held() {
        let off = pb(Status::Disabled {
            reason: "earlier".into(),
            at: t0(),
        });
        let mut d = delivery(1);
        let mut h = Health::default();
        let policy = DisablePolicy::PerDelivery { failures: 1 };
        let progress = answer(&mut d, &off, 500, &RetryPolicy::default());
        let o = settle(t0(), &mut d, progress, Some(&off), &mut h, &policy);
        assert_eq!(
            o,
            Outcome {
                disable: None,
                next: Next::Held
            }
        );
    }

    #[test]
    fn a_result_for_a_deleted_postback_ends_the_delivery() {
        let p = pb(Status::Active);
        let mut d = delivery(1);
        let progress = answer(&mut d, &p, 503, &RetryPolicy::default());
        let mut h = Health::default();
        let o = settle(
            t0(),
            &mut d,
            progress,
            None,
            &mut h,
            &DisablePolicy::default(),
        );
        assert_eq!(o.next, Next::Finished);
        assert!(matches!(
            d.state(),
            State::GaveUp {
                reason: GiveUpReason::PostbackDeleted,
                ..
            }
        ));
        assert_eq!(h, Health::default());
    }

    #[test]
    fn an_interruption_never_counts_and_is_due_at_once() {
        let p = pb(Status::Active);
        let mut d = delivery(1);
        let _ = d.poll(t0(), &SendContext::new(&p));
        let progress = d
            .interrupted(t0(), &RetryPolicy::default())
            .expect("in flight");
        let mut h = Health::default();
        let o = settle(
            t0(),
            &mut d,
            progress,
            Some(&p),
            &mut h,
            &DisablePolicy::PerDelivery { failures: 1 },
        );
        assert_eq!(
            o,
            Outcome {
                disable: None,
                next: Next::Scheduled
            }
        );
        assert_eq!(d.due(), Some(t0()));
        assert_eq!(h.consecutive_failures, 0);
    }

    #[test]
    fn operations_hold_release_and_end_deliveries() {
        let p = pb(Status::Active);
        let mut d = delivery(1);
        assert!(on_operation(Operation::Pause, t0(), &mut d));
        assert!(
            !on_operation(Operation::Pause, t0(), &mut d),
            "held already"
        );
        assert!(on_operation(Operation::Resume, t0(), &mut d));
        assert_eq!(d.due(), Some(t0()));
        let _ = d.poll(t0(), &SendContext::new(&p));
        assert!(
            !on_operation(Operation::Delete, t0(), &mut d),
            "a request out ends later"
        );
        let mut other = delivery(2);
        assert!(on_operation(Operation::Delete, t0(), &mut other));
        assert!(other.is_finished());
        assert!(!on_operation(Operation::Edit, t0(), &mut delivery(3)));
    }

    #[test]
    fn only_deliveries_that_gave_up_can_be_replayed() {
        let p = pb(Status::Active);
        let retry = RetryPolicy::default().max_attempts(1);
        let mut d = delivery(1);
        assert!(d.replay(t0()).is_err(), "a scheduled one cannot");
        let _ = answer(&mut d, &p, 500, &retry);
        assert!(d.is_finished());
        d.replay(t0()).expect("gave up on attempts");
        assert_eq!((d.due(), d.failures()), (Some(t0()), 0));
        let mut gone = delivery(2);
        gone.abandon(t0());
        assert!(gone.replay(t0()).is_err(), "a deleted postback's cannot");
    }
}
