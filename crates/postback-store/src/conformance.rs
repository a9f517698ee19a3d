//! The behaviours every [`Store`] must have, written once and run against each store
//! (`tests/conformance_*.rs`). Each is a function over a [`Harness`] that makes a fresh store and
//! reopens one (a restart: everything but what the store persisted is dropped). Time moves only
//! by the `now` each call is given; nothing sleeps. Responses are played through the core's
//! delivery state machine, as the Worker does, without a network: what is under test is the
//! store.
//!
//! A store that fails one panics with the behaviour's name; [`run_all`] runs them all.

use std::time::Duration;

use chrono::{DateTime, Utc};

use postback::access::{Actor, Settings};
use postback::delivery::{
    Action, Delivery, DisablePolicy, GiveUpReason, Next, Progress, RetryPolicy, State,
};
use postback::model::ManagerId;
use postback::model::{
    ConversionStatus, Corrections, OfferId, PartnerId, Postback, PostbackId, Status,
};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};

use crate::store::{Claimed, Completion, Filter, Manage, Replay, Rules, Store, Token};

/// Makes the stores a behaviour runs against.
pub trait Harness {
    /// The store.
    type Store: Store;
    /// A new, empty store.
    fn fresh(&mut self) -> Self::Store;
    /// The same store after a restart: `old` is dropped and the store opened again. A store
    /// that keeps nothing across restarts (in memory) returns `old`.
    fn reopen(&mut self, old: Self::Store) -> Self::Store;
}

/// Every behaviour, in turn.
pub fn run_all<H: Harness>(h: &mut H) {
    same_trigger_twice_creates_nothing_new(h);
    a_batch_of_triggers_is_stored_as_one_by_one(h);
    a_due_delivery_is_claimed_by_one_claimant_only(h);
    a_completion_after_the_lease_was_lost_writes_nothing(h);
    a_batch_of_completions_is_fenced_one_by_one(h);
    an_expired_lease_is_claimed_again_and_reported_interrupted(h);
    an_unclaimed_delivery_is_due_at_once_and_not_interrupted(h);
    an_unclaim_leaves_earlier_interruptions_to_the_next_claimant(h);
    a_pause_and_resume_leave_a_request_out_to_its_claimant(h);
    nothing_of_a_postback_that_is_off_is_claimed(h);
    the_next_due_time_includes_the_ends_of_leases(h);
    many_failures_at_once_disable_the_postback_once_with_one_notification(h);
    enabling_releases_what_the_disable_held_with_a_fresh_health(h);
    pausing_holds_and_a_paused_postback_takes_no_new_triggers(h);
    exhausted_deliveries_are_replayed_singly_or_by_range_without_touching_health(h);
    attempts_outlive_success_until_pruned(h);
    a_delivered_record_forgets_its_values(h);
    a_retry_policy_changed_across_a_restart_is_the_one_used(h);
    deleting_a_postback_ends_its_deliveries(h);
    a_test_fire_goes_out_whatever_the_status_and_is_audited(h);
    refused_operations_change_nothing(h);
    the_stats_show_each_postback_and_host_with_its_last_results_and_stuck_work(h);
    corrections_go_to_the_postbacks_that_opted_in_each_after_the_earlier_revisions(h);
    a_correction_of_a_held_conversion_is_held_with_it_and_follows_it(h);
    a_revision_that_arrives_after_a_later_one_is_skipped(h);
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

const LEASE: Duration = Duration::from_secs(60);
const PB: PostbackId = PostbackId::new(1);
const PARTNER: PartnerId = PartnerId::new(7);

fn manager() -> Actor {
    Actor::Network(ManagerId::new(1))
}

fn postback(id: PostbackId) -> Postback {
    let built = Postback::builder(id)
        .partner(PARTNER)
        .url("https://partner.example/pb?cid={sub1}&token=s3cr3t")
        .build();
    match built {
        Ok(p) => p,
        Err(e) => panic!("the fixture postback is valid: {e}"),
    }
}

/// Postback 3 of partner 7, told of every status change.
const CORRECTED: PostbackId = PostbackId::new(3);

fn correcting_postback() -> Postback {
    let built = Postback::builder(CORRECTED)
        .partner(PARTNER)
        .url("https://partner.example/pb?cid={sub1}&status={conversion_status}")
        .corrections(Corrections::all())
        .build();
    match built {
        Ok(p) => p,
        Err(e) => panic!("the fixture postback is valid: {e}"),
    }
}

/// A store with postback 1 (no corrections) and postback 3 (every correction) of partner 7.
fn with_correcting_postback<H: Harness>(h: &mut H) -> H::Store {
    let s = with_postback(h);
    ok(
        s.postback_manage(
            t0(),
            manager(),
            Manage::Create(correcting_postback()),
            &Settings::default(),
        ),
        "creating the correcting postback",
    );
    s
}

/// Enqueue revision `revision` of conversion `id` with `status`; returns what it created.
fn correct<S: Store>(
    s: &S,
    id: u64,
    revision: u32,
    status: ConversionStatus,
    now: DateTime<Utc>,
) -> crate::store::Enqueued {
    let Some(revision) = std::num::NonZeroU32::new(revision) else {
        panic!("a correction's revision is above 0");
    };
    let t = Trigger::conversion(id, PARTNER, OfferId::new(42)).corrected(revision, status);
    ok(
        s.trigger_enqueue(now, &t, &values(&format!("click-{id}")), &Rules::default()),
        "a correction",
    )
}

/// The keys claimed at `now` (each then answered by the caller).
fn claimed_keys(claims: &[Claimed]) -> Vec<String> {
    claims
        .iter()
        .map(|c| c.delivery.key().to_string())
        .collect()
}

fn values(click: &str) -> ValueMap {
    ValueMap::new().with(Macro::SUB1, click)
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A store with postback 1 of partner 7, created through `postback_manage`.
fn with_postback<H: Harness>(h: &mut H) -> H::Store {
    let s = h.fresh();
    ok(
        s.postback_manage(
            t0(),
            manager(),
            Manage::Create(postback(PB)),
            &Settings::default(),
        ),
        "creating the postback",
    );
    s
}

fn convert<S: Store>(s: &S, id: u64, now: DateTime<Utc>) {
    let t = Trigger::conversion(id, PARTNER, OfferId::new(42));
    let e = ok(
        s.trigger_enqueue(now, &t, &values(&format!("click-{id}")), &Rules::default()),
        "a trigger",
    );
    assert!(e.errors.is_empty(), "the trigger planned without errors");
}

fn claim<S: Store>(s: &S, now: DateTime<Utc>, owner: &str, n: usize) -> Vec<Claimed> {
    ok(s.deliveries_claim(now, owner, n, LEASE), "claiming")
}

/// Send a claimed delivery (through the core's state machine) and answer it with `status`.
fn answer(
    c: &Claimed,
    now: DateTime<Utc>,
    status: u16,
    retry: &RetryPolicy,
) -> (Delivery, Progress) {
    let mut d = c.delivery.clone();
    let pb = c.postback.clone().unwrap_or_else(|| postback(d.postback()));
    let rules = Rules::default();
    match d.poll(now, &crate::send_context(&pb, &rules)) {
        Action::Send(_) => {}
        other => panic!("a claimed delivery is sendable, got {other:?}"),
    }
    let resp = http::Response::builder()
        .status(status)
        .body(b"body".to_vec());
    let progress = ok(
        d.handle_response(now, Ok(ok(resp, "a response")), retry),
        "a response",
    );
    (d, progress)
}

fn complete<S: Store>(
    s: &S,
    c: &Claimed,
    now: DateTime<Utc>,
    status: u16,
    retry: &RetryPolicy,
    disable: &DisablePolicy,
) -> Completion {
    let (d, p) = answer(c, now, status, retry);
    ok(
        s.delivery_complete(now, c.token, d, p, disable),
        "completing",
    )
}

fn no_jitter() -> RetryPolicy {
    RetryPolicy::default().jitter(0, 0)
}

/// The same trigger twice inserts nothing the second time, and says so.
pub fn same_trigger_twice_creates_nothing_new<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    let t = Trigger::conversion(1001, PARTNER, OfferId::new(42));
    let first = ok(
        s.trigger_enqueue(t0(), &t, &values("a"), &Rules::default()),
        "first",
    );
    let again = ok(
        s.trigger_enqueue(t0() + secs(5), &t, &values("b"), &Rules::default()),
        "again",
    );
    assert_eq!(
        first.created.len(),
        1,
        "same_trigger_twice: the first creates one"
    );
    assert!(
        again.created.is_empty(),
        "same_trigger_twice: the second creates none"
    );
    assert_eq!(
        again.duplicates, first.created,
        "same_trigger_twice: reported as duplicates"
    );
    let s = h.reopen(s);
    let third = ok(
        s.trigger_enqueue(t0() + secs(9), &t, &values("c"), &Rules::default()),
        "third",
    );
    assert!(
        third.created.is_empty(),
        "same_trigger_twice: nor after a restart"
    );
    assert_eq!(ok(s.deliveries_count(), "counts").pending, 1);
}

/// Two claimants at the same moment: each due delivery goes to one of them.
pub fn a_due_delivery_is_claimed_by_one_claimant_only<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    for i in 0..5 {
        convert(&s, i, t0());
    }
    let a = claim(&s, t0(), "a", 3);
    let b = claim(&s, t0(), "b", 10);
    assert_eq!(
        (a.len(), b.len()),
        (3, 2),
        "claims_are_exclusive: 3 then the other 2"
    );
    let mut keys: Vec<_> = a.iter().chain(&b).map(|c| *c.delivery.key()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        5,
        "claims_are_exclusive: no delivery claimed twice"
    );
    assert!(
        claim(&s, t0() + secs(30), "c", 10).is_empty(),
        "nothing left inside the lease"
    );
    assert!(a.iter().all(|c| c.interrupted == 0 && c.postback.is_some()));
}

/// A claimant whose lease ran out and was claimed again by another gets `LeaseLost`, and its
/// result is dropped; the new claimant's result is written.
pub fn a_completion_after_the_lease_was_lost_writes_nothing<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let a = claim(&s, t0(), "a", 1).remove(0);
    let later = t0() + secs(61);
    let b = claim(&s, later, "b", 1).remove(0);
    assert!(b.token > a.token, "the new claim has a newer token");
    let lost = complete(&s, &a, later, 200, &no_jitter(), &DisablePolicy::default());
    assert_eq!(lost, Completion::LeaseLost, "stale_token_is_lease_lost");
    let key = *a.delivery.key();
    let d = ok(s.delivery_get(&key), "get").expect("still there");
    assert!(
        matches!(d.state(), State::Scheduled { .. }),
        "nothing written by the stale claim"
    );
    let done = complete(&s, &b, later, 200, &no_jitter(), &DisablePolicy::default());
    assert!(matches!(
        done,
        Completion::Completed {
            next: Next::Finished,
            ..
        }
    ));
    let d = ok(s.delivery_get(&key), "get").expect("still there");
    assert!(matches!(d.state(), State::Delivered { .. }));
    assert_eq!(
        ok(s.attempts_of(&key), "attempts").len(),
        1,
        "one attempt recorded"
    );
}

/// A claim that never completes (its worker died) leaves the delivery due at the end of the
/// lease; the next claim says how many claims were interrupted. Across a restart too.
pub fn an_expired_lease_is_claimed_again_and_reported_interrupted<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    assert_eq!(claim(&s, t0(), "a", 1).len(), 1);
    let s = h.reopen(s);
    assert!(
        claim(&s, t0() + secs(59), "b", 1).is_empty(),
        "not before the lease ends"
    );
    let again = claim(&s, t0() + secs(60), "b", 1);
    assert_eq!(again.len(), 1, "expired_lease_is_reclaimed");
    assert_eq!(again[0].interrupted, 1, "one interrupted claim");
    assert!(matches!(again[0].delivery.state(), State::Scheduled { .. }));
    let third = claim(&s, t0() + secs(120), "c", 1);
    assert_eq!(
        third[0].interrupted, 2,
        "interruptions add up until a completion"
    );
    assert_eq!(
        ok(s.deliveries_count(), "counts").leased,
        1,
        "out under a lease"
    );
    let leased = ok(s.deliveries_of(PB, Filter::Leased, 10), "leased");
    assert_eq!(leased.len(), 1, "and listed as such");
    let c = &third[0];
    let mut d = c.delivery.clone();
    let pb = c.postback.clone().unwrap_or_else(|| postback(PB));
    let rules = Rules::default();
    let ctx = crate::send_context(&pb, &rules);
    let done =
        crate::record_interruptions(t0() + secs(120), &mut d, c.interrupted, &ctx, &no_jitter());
    assert_eq!(done, None, "two interruptions do not end it");
    let interrupted: Vec<_> = d
        .attempts()
        .iter()
        .map(|a| (a.failure, a.counted))
        .collect();
    assert_eq!(
        interrupted,
        vec![(Some(postback::delivery::FailureClass::Interrupted), false); 2],
        "each recorded, never counted"
    );
    let c = Claimed {
        delivery: d,
        ..c.clone()
    };
    let _ = complete(
        &s,
        &c,
        t0() + secs(121),
        503,
        &no_jitter(),
        &DisablePolicy::default(),
    );
    assert_eq!(ok(s.deliveries_count(), "counts").leased, 0, "completed");
    let s = h.reopen(s);
    let attempts = ok(s.attempts_of(c.delivery.key()), "attempts");
    assert_eq!(attempts.len(), 3, "two interruptions and the 503");
    let fourth = claim(&s, t0() + secs(3600), "d", 1);
    assert_eq!(
        fourth[0].interrupted, 0,
        "a completed claim resolves the interrupted ones"
    );
}

/// A claim given back (a shutdown before sending) is due at once and not an interruption.
pub fn an_unclaimed_delivery_is_due_at_once_and_not_interrupted<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let a = claim(&s, t0(), "a", 1).remove(0);
    let key = *a.delivery.key();
    assert!(ok(
        s.delivery_unclaim(t0() + secs(1), &key, a.token),
        "unclaim"
    ));
    assert!(!ok(
        s.delivery_unclaim(t0() + secs(1), &key, Token(a.token.0 - 1)),
        "stale"
    ));
    let b = claim(&s, t0() + secs(1), "b", 1);
    assert_eq!(b.len(), 1, "due again at once");
    assert_eq!(b[0].interrupted, 0, "not interrupted");
}

/// The next due time is the earliest scheduled attempt or lease end.
pub fn the_next_due_time_includes_the_ends_of_leases<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    assert_eq!(ok(s.deliveries_next_due(), "next due"), None);
    convert(&s, 1, t0());
    assert_eq!(ok(s.deliveries_next_due(), "next due"), Some(t0()));
    let a = claim(&s, t0(), "a", 1).remove(0);
    assert_eq!(
        ok(s.deliveries_next_due(), "next due"),
        Some(t0() + secs(60))
    );
    let c = complete(
        &s,
        &a,
        t0() + secs(1),
        503,
        &no_jitter(),
        &DisablePolicy::default(),
    );
    assert!(matches!(
        c,
        Completion::Completed {
            next: Next::Scheduled,
            ..
        }
    ));
    // The first retry waits 10 s (the default schedule).
    assert_eq!(
        ok(s.deliveries_next_due(), "next due"),
        Some(t0() + secs(11))
    );
}

/// However many deliveries fail at once, the policy disables the postback once, with one
/// notification, and its other scheduled deliveries are held with it.
pub fn many_failures_at_once_disable_the_postback_once_with_one_notification<H: Harness>(
    h: &mut H,
) {
    let s = with_postback(h);
    for i in 0..6 {
        convert(&s, i, t0());
    }
    let policy = DisablePolicy::ConsecutiveWithin {
        failures: 3,
        window: Duration::from_secs(3600),
    };
    let claimed = claim(&s, t0(), "a", 5);
    let mut disabled = 0;
    for c in &claimed {
        if let Completion::Completed { disabled: true, .. } =
            complete(&s, c, t0() + secs(1), 500, &no_jitter(), &policy)
        {
            disabled += 1;
        }
    }
    assert_eq!(disabled, 1, "disable_fires_once");
    let reg = ok(s.registry_get(), "registry");
    assert!(matches!(
        reg.get(PB).map(|p| p.status()),
        Some(Status::Disabled { .. })
    ));
    let s = h.reopen(s);
    let notes = ok(s.notifications_pending(), "notifications");
    assert_eq!(notes.len(), 1, "one notification");
    assert_eq!(notes[0].postback, PB);
    assert_eq!(notes[0].partner, Some(PARTNER));
    assert!(
        notes[0].reason.contains("3 consecutive"),
        "{}",
        notes[0].reason
    );
    assert!(
        notes[0].attempts.iter().all(|a| !a.url.contains("s3cr3t")),
        "the notification's attempts carry no secrets"
    );
    assert!(ok(s.notification_done(t0() + secs(2), notes[0].id), "done"));
    assert!(!ok(
        s.notification_done(t0() + secs(3), notes[0].id),
        "done twice"
    ));
    let s = h.reopen(s);
    assert!(
        ok(s.notifications_pending(), "pending").is_empty(),
        "done stays done"
    );
    let held = ok(s.deliveries_of(PB, Filter::Held, 100), "held");
    assert_eq!(
        held.len(),
        6,
        "every delivery of the postback is held, the unclaimed one too"
    );
    assert!(
        claim(&s, t0() + secs(3600), "b", 10).is_empty(),
        "nothing held is claimed"
    );
}

/// Enabling after the disable: a fresh health, every held delivery due now.
pub fn enabling_releases_what_the_disable_held_with_a_fresh_health<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    for i in 0..3 {
        convert(&s, i, t0());
    }
    let policy = DisablePolicy::ConsecutiveWithin {
        failures: 2,
        window: Duration::from_secs(3600),
    };
    for c in claim(&s, t0(), "a", 2) {
        let _ = complete(&s, &c, t0() + secs(1), 500, &no_jitter(), &policy);
    }
    assert_eq!(ok(s.deliveries_of(PB, Filter::Held, 10), "held").len(), 3);
    let later = t0() + secs(600);
    let m = ok(
        s.postback_manage(later, manager(), Manage::Enable(PB), &Settings::default()),
        "enable",
    );
    assert_eq!(m.deliveries, 3, "enable_releases_held");
    let health = ok(s.health_get(PB), "health").unwrap_or_default();
    assert_eq!(health.consecutive_failures, 0, "a fresh health");
    let again = claim(&s, later, "b", 10);
    assert_eq!(again.len(), 3, "all due now");
    for c in &again {
        let done = complete(&s, c, later, 200, &no_jitter(), &policy);
        assert!(matches!(
            done,
            Completion::Completed {
                next: Next::Finished,
                ..
            }
        ));
    }
    assert_eq!(ok(s.deliveries_count(), "counts").delivered, 3);
    let audit = ok(s.audit_of(PB), "audit");
    assert_eq!(audit.len(), 2, "create and enable audited");
}

/// A pause holds what is scheduled; a trigger meanwhile creates nothing for it; a resume
/// releases.
pub fn pausing_holds_and_a_paused_postback_takes_no_new_triggers<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    ok(
        s.postback_manage(t0(), manager(), Manage::Pause(PB), &Settings::default()),
        "pause",
    );
    let t = Trigger::conversion(2, PARTNER, OfferId::new(42));
    let e = ok(
        s.trigger_enqueue(t0(), &t, &values("x"), &Rules::default()),
        "trigger",
    );
    assert!(
        e.created.is_empty() && e.held.is_empty(),
        "a paused postback takes nothing new"
    );
    assert!(
        claim(&s, t0() + secs(1), "a", 10).is_empty(),
        "held, not claimed"
    );
    let s = h.reopen(s);
    let m = ok(
        s.postback_manage(
            t0() + secs(9),
            manager(),
            Manage::Resume(PB),
            &Settings::default(),
        ),
        "resume",
    );
    assert_eq!(m.deliveries, 1);
    assert_eq!(
        claim(&s, t0() + secs(9), "a", 10).len(),
        1,
        "released, due now"
    );
}

/// Deliveries that used up their attempts are sent again with a fresh budget, singly or by
/// postback and time range, and the replay leaves the postback's health alone.
pub fn exhausted_deliveries_are_replayed_singly_or_by_range_without_touching_health<H: Harness>(
    h: &mut H,
) {
    let s = with_postback(h);
    let retry = no_jitter().max_attempts(1);
    let never = DisablePolicy::Never;
    for i in 0..3 {
        convert(&s, i, t0() + secs(i64::try_from(i).unwrap_or(0) * 100));
    }
    let claimed = claim(&s, t0() + secs(300), "a", 10);
    assert_eq!(claimed.len(), 3);
    for c in &claimed {
        let done = complete(&s, c, t0() + secs(301), 500, &retry, &never);
        assert!(matches!(
            done,
            Completion::Completed {
                next: Next::Finished,
                ..
            }
        ));
    }
    let exhausted = ok(s.deliveries_of(PB, Filter::Exhausted, 10), "exhausted");
    assert_eq!(exhausted.len(), 3);
    assert!(exhausted.iter().all(|d| matches!(
        d.state(),
        State::GaveUp {
            reason: GiveUpReason::MaxAttempts { .. },
            ..
        }
    )));
    let health = ok(s.health_get(PB), "health");
    let first = *exhausted[2].key();
    let now = t0() + secs(400);
    assert_eq!(
        ok(s.deliveries_replay(now, &Replay::Delivery(first)), "one"),
        1
    );
    let range = Replay::Postback {
        postback: PB,
        from: t0() + secs(100),
        to: t0() + secs(300),
    };
    assert_eq!(
        ok(s.deliveries_replay(now, &range), "range"),
        2,
        "the other two"
    );
    assert_eq!(ok(s.health_get(PB), "health"), health, "health untouched");
    let again = claim(&s, now, "b", 10);
    assert_eq!(again.len(), 3, "all three due now");
    assert!(
        s.deliveries_replay(now, &Replay::Delivery(first)).is_err(),
        "a pending delivery cannot be replayed: a typed error"
    );
    for c in &again {
        let done = complete(&s, c, now, 200, &retry, &never);
        assert!(matches!(
            done,
            Completion::Completed {
                next: Next::Finished,
                ..
            }
        ));
    }
    assert_eq!(ok(s.deliveries_count(), "counts").delivered, 3);
}

/// Attempts are kept after a delivery succeeds (the debug info), until pruned; delivered rows go
/// when pruned, and their keys with them.
pub fn attempts_outlive_success_until_pruned<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let c = claim(&s, t0(), "a", 1).remove(0);
    let _ = complete(&s, &c, t0(), 503, &no_jitter(), &DisablePolicy::default());
    let c = claim(&s, t0() + secs(10), "a", 1).remove(0);
    let _ = complete(
        &s,
        &c,
        t0() + secs(10),
        200,
        &no_jitter(),
        &DisablePolicy::default(),
    );
    let key = *c.delivery.key();
    let s = h.reopen(s);
    let attempts = ok(s.attempts_of(&key), "attempts");
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![Some(503), Some(200)]
    );
    assert!(
        attempts.iter().all(|a| !a.url.contains("s3cr3t")),
        "no secret in the records"
    );
    assert_eq!(
        ok(s.attempts_prune(t0() + secs(5)), "prune"),
        1,
        "the older attempt goes"
    );
    assert_eq!(ok(s.attempts_of(&key), "attempts").len(), 1);
    assert_eq!(
        ok(s.deliveries_prune(t0() + secs(5)), "prune"),
        0,
        "delivered later"
    );
    assert_eq!(ok(s.deliveries_prune(t0() + secs(11)), "prune"), 1);
    assert_eq!(ok(s.delivery_get(&key), "get"), None);
}

/// A delivered record keeps no values (they may hold secrets; nothing sends them again).
pub fn a_delivered_record_forgets_its_values<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let c = claim(&s, t0(), "a", 1).remove(0);
    assert!(
        !c.delivery.values().is_empty(),
        "a pending delivery keeps its values"
    );
    let _ = complete(&s, &c, t0(), 200, &no_jitter(), &DisablePolicy::default());
    let d = ok(s.delivery_get(c.delivery.key()), "get").expect("kept");
    assert!(d.values().is_empty(), "a delivered one does not");
}

/// Configuration is not state: a retry policy changed across a restart is the one used.
pub fn a_retry_policy_changed_across_a_restart_is_the_one_used<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let c = claim(&s, t0(), "a", 1).remove(0);
    let _ = complete(&s, &c, t0(), 503, &no_jitter(), &DisablePolicy::default());
    let s = h.reopen(s);
    let slow = no_jitter().schedule(vec![Duration::from_secs(3600)]);
    let c = claim(&s, t0() + secs(10), "a", 1).remove(0);
    let _ = complete(
        &s,
        &c,
        t0() + secs(10),
        503,
        &slow,
        &DisablePolicy::default(),
    );
    assert_eq!(
        ok(s.deliveries_next_due(), "next due"),
        Some(t0() + secs(10 + 3600)),
        "the new schedule"
    );
}

/// Deleting a postback ends its unfinished deliveries as `PostbackDeleted`; one out under a
/// lease ends when its result comes back.
pub fn deleting_a_postback_ends_its_deliveries<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    convert(&s, 2, t0());
    let out = claim(&s, t0(), "a", 1).remove(0);
    let m = ok(
        s.postback_manage(t0(), manager(), Manage::Delete(PB), &Settings::default()),
        "delete",
    );
    assert!(m.deliveries >= 1);
    assert!(ok(s.registry_get(), "registry").get(PB).is_none());
    let done = complete(
        &s,
        &out,
        t0() + secs(1),
        503,
        &no_jitter(),
        &DisablePolicy::default(),
    );
    assert!(matches!(
        done,
        Completion::Completed {
            next: Next::Finished,
            ..
        }
    ));
    let all = ok(s.deliveries_of(PB, Filter::All, 10), "all");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|d| matches!(
        d.state(),
        State::GaveUp {
            reason: GiveUpReason::PostbackDeleted,
            ..
        }
    )));
    assert!(claim(&s, t0() + secs(3600), "a", 10).is_empty());
}

/// A test fire is queued whatever the postback's status, audited, attempted once, never
/// counted.
pub fn a_test_fire_goes_out_whatever_the_status_and_is_audited<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    ok(
        s.postback_manage(t0(), manager(), Manage::Pause(PB), &Settings::default()),
        "pause",
    );
    let (key, audit) = ok(
        s.test_fire_enqueue(
            t0(),
            manager(),
            PB,
            &values("sample"),
            &Rules::default(),
            &Settings::default(),
        ),
        "test fire",
    );
    assert_eq!(audit.postback, PB);
    let c = claim(&s, t0(), "a", 1);
    assert_eq!(
        c.len(),
        1,
        "the test fire is due although the postback is paused"
    );
    let done = complete(
        &s,
        &c[0],
        t0(),
        500,
        &no_jitter(),
        &DisablePolicy::PerDelivery { failures: 1 },
    );
    assert!(matches!(
        done,
        Completion::Completed {
            next: Next::Finished,
            disabled: false
        }
    ));
    let d = ok(s.delivery_get(&key), "get").expect("kept");
    assert!(matches!(
        d.state(),
        State::GaveUp {
            reason: GiveUpReason::TestFire,
            ..
        }
    ));
    assert_eq!(
        ok(s.health_get(PB), "health")
            .map(|h| h.consecutive_failures)
            .unwrap_or(0),
        0
    );
    assert_eq!(
        ok(s.audit_of(PB), "audit").len(),
        3,
        "create, pause, test fire"
    );
}

/// An operation the gatekeeper refuses changes nothing and says why.
pub fn refused_operations_change_nothing<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let partner = Actor::Partner(PartnerId::new(8));
    let refused = s.postback_manage(t0(), partner, Manage::Pause(PB), &Settings::default());
    assert!(refused.is_err(), "another partner may not pause it");
    let gone = PostbackId::new(99);
    let refused = s.postback_manage(t0(), manager(), Manage::Delete(gone), &Settings::default());
    assert!(refused.is_err(), "an unknown postback cannot be deleted");
    assert_eq!(ok(s.audit_of(PB), "audit").len(), 1, "only the create");
    assert_eq!(
        claim(&s, t0(), "a", 10).len(),
        1,
        "the delivery is untouched"
    );
    let e = s.deliveries_replay(
        t0(),
        &Replay::Delivery(
            postback::registry::Trigger::conversion(99, PARTNER, OfferId::new(1)).key(PB),
        ),
    );
    assert!(e.is_err(), "an unknown delivery is a typed error");
}

/// Completions written together are each fenced by their own token, and come back in order.
pub fn a_batch_of_completions_is_fenced_one_by_one<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    for i in 0..3 {
        convert(&s, i, t0());
    }
    let first = claim(&s, t0(), "a", 3);
    let later = t0() + secs(61);
    // The lease of all three ran out; "b" takes one of them.
    let stolen = claim(&s, later, "b", 1).remove(0);
    let batch: Vec<_> = first
        .iter()
        .map(|c| {
            let (d, p) = answer(c, later, 200, &no_jitter());
            (c.token, d, p)
        })
        .collect();
    let keys: Vec<_> = first.iter().map(|c| *c.delivery.key()).collect();
    let done = ok(
        s.deliveries_complete(later, batch, &DisablePolicy::default()),
        "a batch",
    );
    assert_eq!(done.len(), 3, "one completion per item");
    for (key, c) in keys.iter().zip(&done) {
        if *key == *stolen.delivery.key() {
            assert_eq!(*c, Completion::LeaseLost, "the stolen one is fenced off");
        } else {
            assert!(matches!(
                c,
                Completion::Completed {
                    next: Next::Finished,
                    ..
                }
            ));
        }
    }
    let s = h.reopen(s);
    assert_eq!(
        ok(s.deliveries_count(), "counts").delivered,
        2,
        "the other two are written"
    );
}

/// Triggers stored together come back in order, each as if alone: the same trigger twice in
/// one batch creates one delivery.
pub fn a_batch_of_triggers_is_stored_as_one_by_one<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    let (a, b) = (
        Trigger::conversion(1, PARTNER, OfferId::new(42)),
        Trigger::conversion(2, PARTNER, OfferId::new(42)),
    );
    let (va, vb) = (values("a"), values("b"));
    let batch: Vec<(Trigger, &dyn postback::template::MacroValues)> =
        vec![(a, &va), (b, &vb), (a, &va)];
    let out = ok(
        s.triggers_enqueue(t0(), &batch, &Rules::default()),
        "a batch",
    );
    assert_eq!(out.len(), 3);
    assert_eq!((out[0].created.len(), out[1].created.len()), (1, 1));
    assert!(
        out[2].created.is_empty(),
        "the repeat in the batch creates nothing"
    );
    assert_eq!(out[2].duplicates, out[0].created);
    let s = h.reopen(s);
    assert_eq!(ok(s.deliveries_count(), "counts").pending, 2);
}

/// A claimant that gives a delivery back has not recorded the claims interrupted before its
/// own: the next claimant is told of them.
pub fn an_unclaim_leaves_earlier_interruptions_to_the_next_claimant<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let _dies = claim(&s, t0(), "a", 1).remove(0);
    let b = claim(&s, t0() + secs(60), "b", 1).remove(0);
    assert_eq!(b.interrupted, 1);
    assert!(ok(
        s.delivery_unclaim(t0() + secs(61), b.delivery.key(), b.token),
        "unclaim"
    ));
    let c = claim(&s, t0() + secs(61), "c", 1);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].interrupted, 1, "still to be recorded");
}

/// A pause and a resume while a request is out leave it to its claimant: nobody claims it
/// again inside the lease, and its result is written.
pub fn a_pause_and_resume_leave_a_request_out_to_its_claimant<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let a = claim(&s, t0(), "a", 1).remove(0);
    let m = ok(
        s.postback_manage(
            t0() + secs(1),
            manager(),
            Manage::Pause(PB),
            &Settings::default(),
        ),
        "pause",
    );
    assert_eq!(
        m.deliveries, 0,
        "the request out is not held under its claimant"
    );
    ok(
        s.postback_manage(
            t0() + secs(2),
            manager(),
            Manage::Resume(PB),
            &Settings::default(),
        ),
        "resume",
    );
    assert!(
        claim(&s, t0() + secs(3), "b", 10).is_empty(),
        "not claimed twice inside the lease"
    );
    let done = complete(
        &s,
        &a,
        t0() + secs(4),
        200,
        &no_jitter(),
        &DisablePolicy::default(),
    );
    assert!(matches!(
        done,
        Completion::Completed {
            next: Next::Finished,
            ..
        }
    ));
}

/// A delivery left scheduled for a postback that went off (it was out under a lease, and its
/// claimant died) is not claimed while the postback is off, and is once it is on again.
pub fn nothing_of_a_postback_that_is_off_is_claimed<H: Harness>(h: &mut H) {
    let s = with_postback(h);
    convert(&s, 1, t0());
    let _dies = claim(&s, t0(), "a", 1).remove(0);
    ok(
        s.postback_manage(
            t0() + secs(1),
            manager(),
            Manage::Pause(PB),
            &Settings::default(),
        ),
        "pause",
    );
    let s = h.reopen(s);
    assert!(
        claim(&s, t0() + secs(120), "b", 10).is_empty(),
        "paused: nothing claimed"
    );
    ok(
        s.postback_manage(
            t0() + secs(121),
            manager(),
            Manage::Resume(PB),
            &Settings::default(),
        ),
        "resume",
    );
    let again = claim(&s, t0() + secs(121), "b", 10);
    assert_eq!(again.len(), 1, "on again: claimed");
    assert_eq!(again[0].interrupted, 1, "its lost claim is reported");
}

/// The stats: per postback and per host, pending / held / exhausted, the last success, the last
/// failure with its class, and a delivery whose lease expired twice as stuck work (read again
/// after a restart).
pub fn the_stats_show_each_postback_and_host_with_its_last_results_and_stuck_work<H: Harness>(
    h: &mut H,
) {
    use postback::delivery::FailureClass;
    let s = with_postback(h);
    let retry = no_jitter().max_attempts(1);
    let never = DisablePolicy::Never;
    let empty = ok(s.stats(t0()), "stats");
    assert_eq!(empty.postbacks.len(), 1, "one line per postback");
    assert_eq!(
        empty.postbacks[0].counts,
        crate::stats::WorkCounts::default()
    );
    assert_eq!(empty.postbacks[0].last_success, None);
    assert_eq!(empty.postbacks[0].last_failure, None);
    // One delivered, one exhausted by a 500.
    convert(&s, 1, t0());
    let c = claim(&s, t0(), "a", 1);
    let _ = complete(&s, &c[0], t0() + secs(1), 200, &retry, &never);
    convert(&s, 2, t0() + secs(2));
    let c = claim(&s, t0() + secs(2), "a", 1);
    let failed = *c[0].delivery.key();
    let _ = complete(&s, &c[0], t0() + secs(3), 500, &retry, &never);
    // One claimed twice, both leases run out: stuck.
    convert(&s, 3, t0() + secs(10));
    let c = claim(&s, t0() + secs(10), "a", 1);
    let stuck = *c[0].delivery.key();
    assert_eq!(claim(&s, t0() + secs(70), "b", 1).len(), 1, "claimed again");
    // One pending, never claimed (due later than anything claimed below).
    convert(&s, 4, t0() + secs(10_000));
    let s = h.reopen(s);
    let now = t0() + secs(131);
    let st = ok(s.stats(now), "stats");
    assert_eq!(st.at, now);
    let p = match st.postback(PB) {
        Some(p) => p.clone(),
        None => panic!("the postback has a line"),
    };
    assert_eq!(p.partner, Some(PARTNER));
    assert_eq!(p.host, "https://partner.example", "the template's origin");
    assert_eq!(
        (
            p.counts.pending,
            p.counts.held,
            p.counts.exhausted,
            p.counts.stuck
        ),
        (2, 0, 1, 1),
        "two pending (one stuck), one exhausted"
    );
    assert_eq!(p.last_success, Some(t0() + secs(1)), "from the health");
    let f = match &p.last_failure {
        Some(f) => f.clone(),
        None => panic!("the 500 is the last failure"),
    };
    assert_eq!(
        (f.at, f.class, f.counted, f.delivery),
        (t0() + secs(3), FailureClass::Status(500), true, failed)
    );
    assert_eq!(st.stuck.len(), 1, "stuck work");
    assert_eq!(st.stuck[0].key, stuck);
    assert_eq!(st.stuck[0].expired_leases, 2);
    assert!(!st.stuck[0].leased_now);
    let host = match st.host("https://partner.example") {
        Some(h) => h.clone(),
        None => panic!("the host has a line"),
    };
    assert_eq!((host.postbacks, host.counts), (1, p.counts));
    assert_eq!(st.total, p.counts);
    // Before the second lease ran out, it had expired once only: not stuck.
    let early = ok(s.stats(t0() + secs(100)), "stats");
    assert!(early.stuck.is_empty(), "one expired lease is not stuck");
    // A third claim under a live lease: still stuck, and out now.
    assert_eq!(claim(&s, now, "c", 1).len(), 1);
    let st = ok(s.stats(now + secs(1)), "stats");
    assert_eq!(st.stuck.len(), 1);
    assert_eq!(
        (st.stuck[0].expired_leases, st.stuck[0].leased_now),
        (2, true)
    );
    // Paused: the pending not out under a lease are held.
    ok(
        s.postback_manage(now, manager(), Manage::Pause(PB), &Settings::default()),
        "pausing",
    );
    let st = ok(s.stats(now + secs(2)), "stats");
    let p = &st.postbacks[0];
    assert_eq!(
        (p.counts.pending, p.counts.held),
        (1, 1),
        "one held, one out"
    );
    assert!(
        st.to_string().contains("https://partner.example"),
        "the table names the host"
    );
}

/// A correction reaches only the postbacks that opted in, as a new delivery keyed by its
/// revision, and is claimed only after every earlier revision of the conversion to that postback
/// was delivered or gave up; across a restart too. Waiting corrections are not counted as due.
pub fn corrections_go_to_the_postbacks_that_opted_in_each_after_the_earlier_revisions<
    H: Harness,
>(
    h: &mut H,
) {
    let s = with_correcting_postback(h);
    convert(&s, 1001, t0());
    let first = correct(&s, 1001, 1, ConversionStatus::Rejected, t0());
    assert_eq!(
        first
            .created
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["1001.3.conversion.1"],
        "corrections: only the postback that opted in"
    );
    let again = correct(&s, 1001, 1, ConversionStatus::Rejected, t0());
    assert!(
        again.created.is_empty() && again.duplicates.len() == 1,
        "corrections: the same revision twice creates nothing"
    );
    let _ = correct(&s, 1001, 2, ConversionStatus::Reversed, t0());
    // Both originals go out; the corrections wait behind theirs.
    let c = claim(&s, t0(), "a", 10);
    let mut keys = claimed_keys(&c);
    keys.sort();
    assert_eq!(
        keys,
        ["1001.1.conversion.0", "1001.3.conversion.0"],
        "corrections: the originals first"
    );
    let retry_at = t0() + secs(1);
    for claimed in &c {
        let status = if claimed.delivery.postback() == CORRECTED {
            500
        } else {
            200
        };
        let _ = complete(
            &s,
            claimed,
            retry_at,
            status,
            &no_jitter(),
            &DisablePolicy::default(),
        );
    }
    let next = ok(s.deliveries_next_due(), "next due");
    assert!(
        next.is_some_and(|t| t > retry_at),
        "corrections: a waiting correction is not due, its original's retry is ({next:?})"
    );
    assert!(
        claim(&s, retry_at, "a", 10).is_empty(),
        "corrections: nothing while the original waits for its retry"
    );
    let s = h.reopen(s);
    let at = next.unwrap_or(retry_at);
    let c = claim(&s, at, "b", 10);
    assert_eq!(
        claimed_keys(&c),
        ["1001.3.conversion.0"],
        "corrections: the retry"
    );
    let _ = complete(&s, &c[0], at, 200, &no_jitter(), &DisablePolicy::default());
    for (revision, word) in [(1, "status=rejected"), (2, "status=reversed")] {
        let c = claim(&s, at, "b", 10);
        assert_eq!(
            claimed_keys(&c),
            [format!("1001.3.conversion.{revision}")],
            "corrections: one revision at a time, in order"
        );
        let (d, p) = answer(&c[0], at, 200, &no_jitter());
        assert!(
            d.attempts().last().is_some_and(|a| a.url.contains(word)),
            "corrections: the new status is sent"
        );
        let done = ok(
            s.delivery_complete(at, c[0].token, d, p, &DisablePolicy::default()),
            "completing",
        );
        assert!(matches!(
            done,
            Completion::Completed {
                next: Next::Finished,
                ..
            }
        ));
    }
    assert_eq!(ok(s.deliveries_count(), "counts").delivered, 4);
}

/// A conversion held behind a paused postback holds its correction too (a paused postback takes
/// no new triggers, but a correction of what it already has is not dropped), and after the
/// resume the correction goes only once the original was delivered.
pub fn a_correction_of_a_held_conversion_is_held_with_it_and_follows_it<H: Harness>(h: &mut H) {
    let s = with_correcting_postback(h);
    convert(&s, 1001, t0());
    ok(
        s.postback_manage(
            t0(),
            manager(),
            Manage::Pause(CORRECTED),
            &Settings::default(),
        ),
        "pause",
    );
    let e = correct(&s, 1001, 1, ConversionStatus::Reversed, t0());
    assert_eq!(
        e.held.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["1001.3.conversion.1"],
        "corrections: held with the conversion it revises"
    );
    assert_eq!(
        ok(s.deliveries_of(CORRECTED, Filter::Held, 10), "held").len(),
        2,
        "corrections: the original and its reversal are held"
    );
    let s = h.reopen(s);
    let later = t0() + secs(60);
    ok(
        s.postback_manage(
            later,
            manager(),
            Manage::Resume(CORRECTED),
            &Settings::default(),
        ),
        "resume",
    );
    let c = claim(&s, later, "a", 10);
    let keys: Vec<_> = claimed_keys(&c)
        .into_iter()
        .filter(|k| k.starts_with("1001.3."))
        .collect();
    assert_eq!(
        keys,
        ["1001.3.conversion.0"],
        "corrections: the original first"
    );
    for claimed in &c {
        let _ = complete(
            &s,
            claimed,
            later,
            200,
            &no_jitter(),
            &DisablePolicy::default(),
        );
    }
    assert_eq!(
        claimed_keys(&claim(&s, later, "a", 10)),
        ["1001.3.conversion.1"],
        "corrections: then the reversal"
    );
}

/// A correction whose later revision went out already is skipped, also after a restart: the
/// partner never ends on a stale status. One whose later revision has not gone out yet is
/// created and goes first.
pub fn a_revision_that_arrives_after_a_later_one_is_skipped<H: Harness>(h: &mut H) {
    let s = with_correcting_postback(h);
    convert(&s, 1001, t0());
    convert(&s, 1002, t0());
    let _ = correct(&s, 1001, 2, ConversionStatus::Reversed, t0());
    let _ = correct(&s, 1002, 2, ConversionStatus::Reversed, t0());
    // 1002's revision 1 comes while its revision 2 still waits behind the original: it is
    // created, and revision 2 waits behind it too.
    let early = correct(&s, 1002, 1, ConversionStatus::Approved, t0());
    assert_eq!(
        early.created.len(),
        1,
        "corrections: a revision before one not yet out"
    );
    let mut sent = Vec::new();
    for round in 0..4 {
        let at = t0() + secs(round);
        let c = claim(&s, at, "a", 10);
        for claimed in &c {
            let _ = complete(
                &s,
                claimed,
                at,
                200,
                &no_jitter(),
                &DisablePolicy::default(),
            );
        }
        sent.extend(claimed_keys(&c).into_iter().filter(|k| k.contains(".3.")));
    }
    let of_1002: Vec<&String> = sent.iter().filter(|k| k.starts_with("1002.")).collect();
    assert_eq!(
        of_1002,
        [
            "1002.3.conversion.0",
            "1002.3.conversion.1",
            "1002.3.conversion.2"
        ],
        "corrections: in order"
    );
    let s = h.reopen(s);
    // 1001's revision 2 went out; its revision 1 comes late.
    let late = correct(&s, 1001, 1, ConversionStatus::Approved, t0());
    assert!(
        late.created.is_empty() && late.held.is_empty(),
        "corrections: a late revision creates nothing"
    );
    assert_eq!(
        late.resolution.decision(CORRECTED).map(|d| d.outcome),
        Some(postback::registry::Outcome::Skipped {
            why: postback::registry::SkipReason::Superseded
        }),
        "corrections: the resolution says why"
    );
}
