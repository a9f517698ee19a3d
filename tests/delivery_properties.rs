//! Properties of deliveries under random partner behaviour: random mixes of 2xx, 3xx, 4xx, 5xx,
//! timeouts, local refusals and `Retry-After` values. Attempts stay within the limits, time
//! never runs backwards, and every delivery ends delivered, given up or held: none vanishes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use postback::access::Actor;
use postback::delivery::{
    Action, Attempt, Delivery, DeliveryId, DisablePolicy, Failure, GiveUpReason, Progress,
    RetryPolicy, SendContext, State, parse_retry_after,
};
use postback::engine::{Engine, EngineConfig, Event};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::{Macro, MacroValues, ValueMap};
use proptest::prelude::*;

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const PB: PostbackId = PostbackId::new(1);
const MANAGER: Actor = Actor::Network(ManagerId::new(100));

/// 2026-01-01T00:00:00Z.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

/// What the partner (or the transport) answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Http {
        status: u16,
        retry_after: Option<String>,
    },
    Fail(Failure),
}

impl Reply {
    fn answer(&self) -> Result<http::Response<Vec<u8>>, Failure> {
        match self {
            Reply::Http {
                status,
                retry_after,
            } => {
                let mut b = http::Response::builder().status(*status);
                if let Some(v) = retry_after {
                    b = b.header("Retry-After", v.as_str());
                }
                Ok(b.body(b"body".to_vec()).unwrap())
            }
            Reply::Fail(f) => Err(f.clone()),
        }
    }

    fn retry_after(&self) -> Option<&str> {
        match self {
            Reply::Http { retry_after, .. } => retry_after.as_deref(),
            Reply::Fail(_) => None,
        }
    }
}

fn retry_after() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        2 => (0u64..200_000).prop_map(|s| Some(s.to_string())),
        1 => (0i64..400).prop_map(|h| Some(
            (t0() + TimeDelta::hours(h)).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
        )),
        1 => Just(Some("soon".to_owned())),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let status = prop_oneof![
        3 => prop::sample::select(vec![200u16, 201, 202, 204]),
        1 => prop::sample::select(vec![301u16, 302, 307]),
        2 => prop::sample::select(vec![400u16, 404, 410, 429]),
        3 => prop::sample::select(vec![500u16, 502, 503, 504]),
    ];
    prop_oneof![
        6 => (status, retry_after()).prop_map(|(status, retry_after)| Reply::Http { status, retry_after }),
        1 => Just(Reply::Fail(Failure::Timeout)),
        1 => Just(Reply::Fail(Failure::Connect("reset".into()))),
        2 => Just(Reply::Fail(Failure::Forbidden("10.0.0.1".into()))),
        1 => Just(Reply::Fail(Failure::Local("bad client".into()))),
    ]
}

/// A script weighted toward failures, so that limits are reached.
fn script() -> impl Strategy<Value = Vec<Reply>> {
    prop::collection::vec(reply(), 1..40)
}

fn policy() -> impl Strategy<Value = RetryPolicy> {
    (
        prop_oneof![3 => 1u32..8, 1 => Just(25u32)],
        prop_oneof![3 => 1u32..6, 1 => Just(25u32)],
        prop_oneof![Just(0u8), Just(20u8), 0u8..=100],
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(attempts, refusals, jitter, seed, terminal)| {
            let mut p = RetryPolicy::default()
                .max_attempts(attempts)
                .jitter(jitter, seed);
            p.max_local_refusals = refusals;
            if terminal {
                p = p
                    .classifier(postback::delivery::Classifier::default().client_errors_terminal());
            }
            p
        })
}

fn counted(attempts: &[Attempt]) -> u32 {
    attempts.iter().filter(|a| a.counted).count() as u32
}

/// The longest run of consecutive uncounted failures.
fn longest_refusal_run(attempts: &[Attempt]) -> u32 {
    let (mut run, mut longest) = (0, 0);
    for a in attempts {
        if a.failure.is_some() && !a.counted {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

/// Attempts are sent in time order, each after the previous one was answered.
fn assert_time_flows(attempts: &[Attempt]) -> Result<(), TestCaseError> {
    for w in attempts.windows(2) {
        let answered = w[0].at + TimeDelta::from_std(w[0].duration).unwrap();
        prop_assert!(w[1].at >= answered, "{:?} then {:?}", w[0], w[1]);
    }
    Ok(())
}

/// Check the limits of one release of a delivery (the attempts since it was created or last
/// released).
fn assert_within_limits(attempts: &[Attempt], policy: &RetryPolicy) -> Result<(), TestCaseError> {
    prop_assert!(counted(attempts) <= policy.max_attempts);
    prop_assert!(longest_refusal_run(attempts) <= policy.max_local_refusals);
    // Local refusals are consecutive-limited, so each counted failure may follow up to
    // `max_local_refusals - 1` of them.
    prop_assert!(attempts.len() as u32 <= policy.max_attempts * policy.max_local_refusals);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One delivery alone
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_lone_delivery_stays_within_its_limits_keeps_time_in_order_and_always_finishes(
        policy in policy(),
        script in script(),
        latency_ms in 0i64..5_000,
    ) {
        let id = DeliveryId::new(3);
        let pb = Postback::builder(PB).partner(PARTNER).url("https://t.example/pb?cid={sub1}").build().unwrap();
        let ctx = SendContext::new(&pb);
        let values = ValueMap::new().with(Macro::SUB1, "1").to_stored(&[]);
        let mut d = Delivery::new(id, Trigger::conversion(1, PARTNER, OFFER).key(PB), values, t0(), Duration::ZERO);
        let latency = TimeDelta::milliseconds(latency_ms);
        let mut now = t0();
        let mut sends = 0usize;
        let bound = (policy.max_attempts * policy.max_local_refusals) as usize;
        let last = loop {
            let Action::Send(_) = d.poll(now, &ctx) else {
                prop_assert!(false, "not sendable at its due time: {:?}", d.state());
                unreachable!()
            };
            let r = &script[sends % script.len()];
            sends += 1;
            prop_assert!(sends <= bound, "{sends} sends");
            let answered = now + latency;
            let progress = d.handle_response(answered, r.answer(), &policy).unwrap();
            prop_assert_eq!(d.attempts().len(), sends);
            match progress {
                Progress::Retry { at, failures, counted, .. } => {
                    prop_assert_eq!(failures, d.failures());
                    prop_assert_eq!(counted, d.attempts()[sends - 1].counted);
                    // Never before the schedule; Retry-After only ever delays, up to its cap.
                    let scheduled = answered + TimeDelta::from_std(policy.wait_after(sends as u32, id)).unwrap();
                    let cap = answered + TimeDelta::from_std(policy.retry_after_cap).unwrap();
                    prop_assert!(at >= scheduled);
                    prop_assert!(at <= scheduled.max(cap));
                    let asked = r.retry_after().and_then(|v| parse_retry_after(v, answered));
                    prop_assert_eq!(at, scheduled.max(asked.map_or(scheduled, |t| t.min(cap))));
                    prop_assert_eq!(d.due(), Some(at));
                    now = at;
                }
                other => break other,
            }
        };
        prop_assert!(d.is_finished());
        prop_assert!(matches!(d.poll(now, &ctx), Action::Finished));
        assert_within_limits(d.attempts(), &policy)?;
        assert_time_flows(d.attempts())?;
        let final_attempt = d.attempts().last().unwrap();
        match (last, d.state()) {
            (Progress::Delivered { attempts }, State::Delivered { .. }) => {
                prop_assert_eq!(attempts as usize, sends);
                prop_assert_eq!(final_attempt.failure, None);
            }
            (Progress::GaveUp { reason, failure }, State::GaveUp { reason: r, .. }) => {
                prop_assert_eq!(reason, *r);
                prop_assert_eq!(Some(failure), final_attempt.failure);
                match reason {
                    GiveUpReason::MaxAttempts { failures } => {
                        prop_assert_eq!(failures, policy.max_attempts);
                        prop_assert_eq!(counted(d.attempts()), policy.max_attempts);
                    }
                    GiveUpReason::LocalRefusals { refusals } => {
                        prop_assert_eq!(refusals, policy.max_local_refusals);
                        prop_assert!(!final_attempt.counted);
                    }
                    GiveUpReason::Terminal { failure } => {
                        prop_assert!(matches!(failure, postback::delivery::FailureClass::Status(400..=499)));
                    }
                    other => prop_assert!(false, "unexpected reason {other:?}"),
                }
            }
            (p, s) => prop_assert!(false, "progress {p:?} but state {s:?}"),
        }
        let back: Delivery = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        prop_assert_eq!(back, d);
    }
}

// ---------------------------------------------------------------------------------------------
// Many deliveries in an engine
// ---------------------------------------------------------------------------------------------

struct Run {
    engine: Engine,
    now: DateTime<Utc>,
    script: Vec<Reply>,
    latency: TimeDelta,
    sent: Vec<(DateTime<Utc>, DeliveryId)>,
    trace: Vec<Event>,
    created: BTreeSet<DeliveryId>,
}

impl Run {
    fn step(&mut self) {
        let mut batch = Vec::new();
        while let Some(t) = self.engine.poll_transmit(self.now) {
            batch.push(t);
        }
        let answered = self.now + self.latency;
        for t in &batch {
            let r = &self.script[self.sent.len() % self.script.len()];
            self.sent.push((self.now, t.delivery));
            self.engine
                .handle_response(answered, t.delivery, r.answer())
                .unwrap();
        }
        if !batch.is_empty() {
            self.now = answered;
        }
        while let Some(e) = self.engine.poll_event() {
            self.trace.push(e);
        }
    }

    fn run(&mut self, limit: Option<DateTime<Utc>>) {
        for _ in 0..100_000 {
            self.step();
            match self.engine.poll_timeout() {
                Some(t) if limit.is_none_or(|l| t <= l) => self.now = self.now.max(t),
                _ => {
                    if let Some(l) = limit {
                        self.now = self.now.max(l);
                    }
                    return;
                }
            }
        }
        panic!("no end");
    }

    /// Terminal events by delivery: (delivered, gave up), each delivery at most once.
    fn finished(&self) -> Result<BTreeMap<DeliveryId, &Delivery>, TestCaseError> {
        let mut out = BTreeMap::new();
        for e in &self.trace {
            if let Event::Delivered { record } | Event::GaveUp { record } = e {
                prop_assert!(
                    out.insert(record.id(), &**record).is_none(),
                    "{:?} finished twice",
                    record.id()
                );
            }
        }
        Ok(out)
    }

    /// Nothing vanished: every created delivery finished once or is held.
    fn assert_conserved(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.engine.is_idle());
        let finished = self.finished()?;
        let held: BTreeSet<DeliveryId> = self.engine.deliveries().map(Delivery::id).collect();
        prop_assert!(self.engine.deliveries().all(|d| d.state() == &State::Held));
        prop_assert!(finished.keys().all(|id| !held.contains(id)));
        prop_assert_eq!(finished.len() + held.len(), self.created.len());
        let all: BTreeSet<DeliveryId> = finished.keys().copied().chain(held).collect();
        prop_assert_eq!(&all, &self.created);
        Ok(())
    }

    fn attempts_of(&self, id: DeliveryId) -> Result<Vec<Attempt>, TestCaseError> {
        let finished = self.finished()?;
        Ok(match finished.get(&id) {
            Some(d) => d.attempts().to_vec(),
            None => self.engine.delivery(id).unwrap().attempts().to_vec(),
        })
    }
}

fn disable_policy() -> impl Strategy<Value = DisablePolicy> {
    prop_oneof![
        (1u32..30).prop_map(|failures| DisablePolicy::PerDelivery { failures }),
        Just(DisablePolicy::everflow_2026()),
        (1u32..12, 1u64..100).prop_map(|(failures, h)| DisablePolicy::ConsecutiveWithin {
            failures,
            window: Duration::from_secs(h * 3600)
        }),
        Just(DisablePolicy::Never),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn in_an_engine_every_delivery_ends_delivered_gave_up_or_held_and_none_is_lost_or_doubled(
        policy in policy(),
        disable in disable_policy(),
        script in script(),
        gaps in prop::collection::vec(0i64..20_000, 1..8),
        latency_ms in 0i64..3_000,
    ) {
        let config = EngineConfig::default().retry(policy.clone()).disable(disable);
        let mut engine = Engine::new(config, Registry::new());
        let pb = Postback::builder(PB)
            .partner(PARTNER)
            .offer(OFFER)
            .url("https://t.example/pb?cid={sub1}&d={delivery_id}")
            .build()
            .unwrap();
        engine.create(t0(), MANAGER, pb).unwrap();
        let mut run = Run {
            engine,
            now: t0(),
            script,
            latency: TimeDelta::milliseconds(latency_ms),
            sent: Vec::new(),
            trace: Vec::new(),
            created: BTreeSet::new(),
        };
        let values = ValueMap::new().with(Macro::SUB1, "clk");
        for (i, gap) in gaps.into_iter().enumerate() {
            let to = run.now + TimeDelta::seconds(gap);
            run.run(Some(to));
            let fired = run.engine.handle_trigger(run.now, &Trigger::conversion(i as u64, PARTNER, OFFER), &values);
            // Sent now, or held because the postback is disabled: either way it must not vanish.
            for (_, id) in fired.deliveries.into_iter().chain(fired.held) {
                prop_assert!(run.created.insert(id));
            }
        }
        run.run(None);
        run.assert_conserved()?;
        prop_assert!(run.sent.windows(2).all(|w| w[0].0 <= w[1].0), "time went backwards");
        for &id in &run.created {
            let attempts = run.attempts_of(id)?;
            prop_assert_eq!(attempts.len(), run.sent.iter().filter(|s| s.1 == id).count());
            assert_within_limits(&attempts, &policy)?;
            assert_time_flows(&attempts)?;
        }
        let disabled = run.trace.iter().filter(|e| matches!(e, Event::PostbackDisabled { .. })).count();
        let notified = run.trace.iter().filter(|e| matches!(e, Event::NotifyNetworkManager { .. })).count();
        prop_assert!(disabled <= 1);
        prop_assert_eq!(disabled, notified);
        if disable == DisablePolicy::Never {
            prop_assert_eq!(disabled, 0);
            prop_assert_eq!(run.engine.deliveries().count(), 0);
        }

        // Replay whatever is held: each held delivery is released once, with a fresh budget.
        let held: BTreeMap<DeliveryId, usize> =
            run.engine.deliveries().map(|d| (d.id(), d.attempts().len())).collect();
        if !held.is_empty() {
            let events = run.trace.len();
            run.now += TimeDelta::hours(1);
            let enabled_at = run.now;
            run.engine.enable(run.now, MANAGER, PB).unwrap();
            run.run(None);
            prop_assert_eq!(
                &run.trace[events],
                &Event::Reenabled { postback: PB, replayed: held.len(), at: enabled_at }
            );
            run.assert_conserved()?;
            for (&id, &before) in &held {
                let attempts = run.attempts_of(id)?;
                prop_assert!(attempts.len() > before, "{id:?} was not replayed");
                assert_within_limits(&attempts[before..], &policy)?;
                assert_time_flows(&attempts)?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The limit on sends per release
// ---------------------------------------------------------------------------------------------

/// A delivery is sent at most `max_attempts + max_local_refusals` times per release: counted
/// failures cannot reset the refusal budget, so alternating refusals cannot keep it alive.
#[test]
fn a_delivery_is_sent_at_most_max_attempts_plus_max_local_refusals_times_per_release() {
    let policy = RetryPolicy::default().jitter(0, 0);
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .url("https://t.example/pb?cid={sub1}")
        .build()
        .unwrap();
    let values = ValueMap::new().with(Macro::SUB1, "1").to_stored(&[]);
    let key = Trigger::conversion(1, PARTNER, OFFER).key(PB);
    let mut d = Delivery::new(DeliveryId::new(1), key, values, t0(), Duration::ZERO);
    let mut now = t0();
    let mut sends = 0u32;
    while let Action::Send(_) = d.poll(now, &SendContext::new(&pb)) {
        sends += 1;
        // 24 refusals, then one 500, over and over.
        let result = if sends % 25 == 0 {
            Err(Failure::Timeout)
        } else {
            Err(Failure::Forbidden("10.0.0.1".into()))
        };
        match d.handle_response(now, result, &policy).unwrap() {
            Progress::Retry { at, .. } => now = at,
            _ => break,
        }
    }
    // Refusals are limited per release in total, so the 25th refusal ends it: 24 refusals, one
    // counted timeout, one more refusal.
    assert_eq!(
        d.state(),
        &State::GaveUp {
            at: now,
            reason: GiveUpReason::LocalRefusals { refusals: 25 }
        }
    );
    assert_eq!(sends, 26);
    assert!(
        sends <= policy.max_attempts + policy.max_local_refusals,
        "{sends} sends, the last {} days after the first",
        (now - t0()).num_days()
    );
}
