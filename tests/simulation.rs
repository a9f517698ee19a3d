//! Deterministic simulation of the delivery engine against a scripted partner.
//!
//! The harness owns a fake clock (it never reads the real one), an [`Engine`] with server-to-server
//! postbacks, and a partner that answers every [`Transmit`]. One step drains
//! [`Engine::poll_transmit`], answers each request through [`Engine::handle_response`] after a
//! fixed latency, and drains [`Engine::poll_event`] into a trace; then the clock jumps to
//! [`Engine::poll_timeout`]. Optionally the engine is serialized and restored after every single
//! call, which must not change the trace.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use postback::access::Actor;
use postback::delivery::{
    Action, Attempt, DEFAULT_SCHEDULE, Delivery, DeliveryId, DisablePolicy, Failure, FailureClass,
    GiveUpReason, Progress, RetryPolicy, SendContext, State,
};
use postback::engine::{Engine, EngineConfig, Event, Snapshot};
use postback::model::{
    DeliveryKey, HttpMethod, Kind, ManagerId, Method, OfferId, PartnerId, Postback, PostbackId,
    Purpose, Status, TriggerId,
};
use postback::registry::{Registry, Trigger};
use postback::template::{Macro, MacroValues, ValueMap};

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const CPC_OFFER: OfferId = OfferId::new(43);
const PB: PostbackId = PostbackId::new(1);
const CPC_PB: PostbackId = PostbackId::new(2);
const MANAGER: Actor = Actor::Network(ManagerId::new(100));
const URL: &str = "https://t.example/pb?cid={sub1}&d={delivery_id}&token={sub2}";
const STEP_LIMIT: usize = 20_000;

/// 2026-01-01T00:00:00Z: the simulation's epoch.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

fn hours(h: i64) -> TimeDelta {
    TimeDelta::hours(h)
}

fn std_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap()
}

/// What the partner answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Http {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    Fail(Failure),
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply::Http {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    fn fail(f: Failure) -> Reply {
        Reply::Fail(f)
    }

    fn header(self, name: &'static str, value: impl Into<String>) -> Reply {
        match self {
            Reply::Http {
                status,
                mut headers,
                body,
            } => {
                headers.push((name, value.into()));
                Reply::Http {
                    status,
                    headers,
                    body,
                }
            }
            fail => fail,
        }
    }

    fn body(self, text: &str) -> Reply {
        match self {
            Reply::Http {
                status, headers, ..
            } => Reply::Http {
                status,
                headers,
                body: text.to_owned(),
            },
            fail => fail,
        }
    }

    fn answer(&self) -> Result<http::Response<Vec<u8>>, Failure> {
        match self {
            Reply::Http {
                status,
                headers,
                body,
            } => {
                let mut b = http::Response::builder().status(*status);
                for (k, v) in headers {
                    b = b.header(*k, v.as_str());
                }
                Ok(b.body(body.clone().into_bytes()).unwrap())
            }
            Reply::Fail(f) => Err(f.clone()),
        }
    }
}

/// One request as the partner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    /// 0-based over the whole run.
    n: usize,
    at: DateTime<Utc>,
    delivery: DeliveryId,
    postback: PostbackId,
    method: String,
    uri: String,
}

impl Sent {
    /// The trigger id in the `d` query parameter: the delivery key the `{delivery_id}` macro
    /// put in the URL.
    fn d_param(&self) -> u64 {
        let q = self.uri.split_once('?').unwrap().1;
        let d = q.split('&').find_map(|kv| kv.strip_prefix("d=")).unwrap();
        d.split('.').next().unwrap().parse().unwrap()
    }
}

type Partner = Box<dyn FnMut(&Sent) -> Reply>;

/// The partner answers `replies` in order, then `then` forever.
fn script(replies: Vec<Reply>, then: Reply) -> Partner {
    let mut i = 0;
    Box::new(move |_| {
        let r = replies.get(i).cloned().unwrap_or_else(|| then.clone());
        i += 1;
        r
    })
}

fn always(r: Reply) -> Partner {
    script(Vec::new(), r)
}

struct Sim {
    engine: Engine,
    now: DateTime<Utc>,
    latency: TimeDelta,
    partner: Partner,
    trace: Vec<Event>,
    sent: Vec<Sent>,
    restore_every_step: bool,
    round_trips: usize,
    steps: usize,
    triggers: u64,
}

impl Sim {
    fn new(config: EngineConfig, postbacks: Vec<Postback>, partner: Partner) -> Sim {
        let mut engine = Engine::new(config, Registry::new());
        for p in postbacks {
            engine.create(t0(), MANAGER, p).unwrap();
        }
        Sim {
            engine,
            now: t0(),
            latency: TimeDelta::zero(),
            partner,
            trace: Vec::new(),
            sent: Vec::new(),
            restore_every_step: false,
            round_trips: 0,
            steps: 0,
            triggers: 0,
        }
    }

    /// The default engine with the one conversion postback [`PB`].
    fn default(partner: Partner) -> Sim {
        Sim::new(
            EngineConfig::default(),
            vec![conversion_postback()],
            partner,
        )
    }

    /// After every call into the engine: optionally serialize and restore it.
    fn checkpoint(&mut self) {
        if self.restore_every_step {
            let json = serde_json::to_string(&self.engine).unwrap();
            let snapshot: Snapshot = serde_json::from_str(&json).unwrap();
            self.engine = Engine::restore(self.engine.config().clone(), snapshot).unwrap();
            assert_eq!(serde_json::to_string(&self.engine).unwrap(), json);
            self.round_trips += 1;
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.engine.poll_event() {
            self.checkpoint();
            self.trace.push(e);
        }
    }

    /// One step: send everything due, answer it, collect the events.
    fn step(&mut self) {
        self.steps += 1;
        assert!(self.steps <= STEP_LIMIT, "the simulation did not settle");
        let mut batch = Vec::new();
        while let Some(t) = self.engine.poll_transmit(self.now) {
            self.checkpoint();
            batch.push(t);
        }
        let answered = self.now + self.latency;
        let any = !batch.is_empty();
        for t in batch {
            let sent = Sent {
                n: self.sent.len(),
                at: self.now,
                delivery: t.delivery,
                postback: t.postback,
                method: t.request.method().to_string(),
                uri: t.request.uri().to_string(),
            };
            let reply = (self.partner)(&sent);
            self.sent.push(sent);
            self.engine
                .handle_response(answered, t.delivery, reply.answer())
                .unwrap();
            self.checkpoint();
        }
        if any {
            self.now = answered;
        }
        self.drain_events();
    }

    /// Run every attempt due up to `limit`, then set the clock to `limit`.
    fn run_until(&mut self, limit: DateTime<Utc>) {
        loop {
            self.step();
            match self.engine.poll_timeout() {
                Some(t) if t <= limit => self.now = self.now.max(t),
                _ => break,
            }
        }
        self.now = self.now.max(limit);
    }

    /// Run until nothing is scheduled or in flight.
    fn run_to_idle(&mut self) {
        loop {
            self.step();
            match self.engine.poll_timeout() {
                Some(t) => self.now = self.now.max(t),
                None => break,
            }
        }
        assert!(self.engine.is_idle());
    }

    fn advance(&mut self, d: TimeDelta) {
        let to = self.now + d;
        self.run_until(to);
    }

    /// The next trigger id: 1, 2, 3, ...
    fn next_trigger(&mut self) -> u64 {
        self.triggers += 1;
        self.triggers
    }

    /// A conversion of [`PARTNER`] on [`OFFER`] with click id `clk-1` and a new trigger id.
    fn convert(&mut self) -> DeliveryId {
        let id = self.next_trigger();
        let fired = self.engine.handle_trigger(
            self.now,
            &Trigger::conversion(id, PARTNER, OFFER),
            &values(),
        );
        self.checkpoint();
        assert_eq!(fired.errors, []);
        assert_eq!(fired.deliveries.len(), 1);
        self.drain_events();
        fired.deliveries[0].1
    }

    fn cpc_click(&mut self) -> DeliveryId {
        let id = self.next_trigger();
        let fired = self.engine.handle_trigger(
            self.now,
            &Trigger::cpc_click(id, PARTNER, CPC_OFFER),
            &values(),
        );
        self.checkpoint();
        assert_eq!(fired.deliveries, [(CPC_PB, fired.deliveries[0].1)]);
        self.drain_events();
        fired.deliveries[0].1
    }

    fn enable(&mut self, id: PostbackId) {
        self.engine.enable(self.now, MANAGER, id).unwrap();
        self.checkpoint();
        self.drain_events();
    }

    fn resume(&mut self, id: PostbackId) {
        self.engine.resume(self.now, MANAGER, id).unwrap();
        self.checkpoint();
        self.drain_events();
    }

    fn pause(&mut self, id: PostbackId) {
        self.engine.pause(self.now, MANAGER, id).unwrap();
        self.checkpoint();
        self.drain_events();
    }

    fn test_fire(&mut self, id: PostbackId) -> DeliveryId {
        let d = self
            .engine
            .test_fire(self.now, MANAGER, id, &values())
            .unwrap();
        self.checkpoint();
        self.drain_events();
        d.delivery
    }

    fn status(&self, id: PostbackId) -> Status {
        self.engine.registry().get(id).unwrap().status().clone()
    }

    fn sends_of(&self, d: DeliveryId) -> Vec<DateTime<Utc>> {
        self.sent
            .iter()
            .filter(|s| s.delivery == d)
            .map(|s| s.at)
            .collect()
    }

    fn summary(&self) -> Vec<String> {
        self.trace.iter().map(summarize).collect()
    }

    fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.trace.iter().filter(|e| pred(e)).count()
    }
}

fn values() -> ValueMap {
    ValueMap::new()
        .with(Macro::SUB1, "clk-1")
        .with(Macro::SUB2, "s3cret")
}

fn conversion_postback() -> Postback {
    Postback::builder(PB)
        .partner(PARTNER)
        .offer(OFFER)
        .url(URL)
        .build()
        .unwrap()
}

fn cpc_postback() -> Postback {
    Postback::builder(CPC_PB)
        .partner(PARTNER)
        .offer(CPC_OFFER)
        .kind(Kind::Cpc)
        .url("https://t.example/cpc?cid={sub1}&d={delivery_id}")
        .build()
        .unwrap()
}

fn no_jitter() -> EngineConfig {
    EngineConfig::default().retry(RetryPolicy::default().jitter(0, 0))
}

/// The URL the partner receives for the delivery with key `key`.
fn url_for(key: &str) -> String {
    format!("https://t.example/pb?cid=clk-1&d={key}&token=s3cret")
}

/// The URL the partner receives for the conversion with trigger id `n`.
fn url_of(n: u64) -> String {
    url_for(&format!("{n}.1.conversion.0"))
}

/// The URL as attempts record it.
fn redacted_url_of(n: u64) -> String {
    format!("https://t.example/pb?cid=clk-1&d={n}.1.conversion.0&token=***")
}

/// One line per event, for exact comparisons of whole traces.
fn summarize(e: &Event) -> String {
    match e {
        Event::Delivered { record } => {
            format!(
                "delivered d{} after {}",
                record.id(),
                record.attempts().len()
            )
        }
        Event::RetryScheduled {
            delivery,
            failure,
            counted,
            ..
        } => format!(
            "retry d{delivery} {failure}{}",
            if *counted { "" } else { " (not counted)" }
        ),
        Event::GaveUp { record } => {
            let State::GaveUp { reason, .. } = record.state() else {
                panic!("gave up without the state: {record:?}")
            };
            format!("gave up d{} {reason:?}", record.id())
        }
        Event::Held { delivery, postback } => format!("held d{delivery} of p{postback}"),
        Event::PostbackDisabled { postback, .. } => format!("disabled p{postback}"),
        Event::NotifyNetworkManager {
            postback, attempts, ..
        } => format!(
            "notify manager of p{postback} with {} attempts",
            attempts.len()
        ),
        Event::Reenabled {
            postback, replayed, ..
        } => format!("reenabled p{postback} replaying {replayed}"),
        Event::TestFired { record } => format!("test fired d{}", record.id()),
        other => format!("{other:?}"),
    }
}

fn retries(d: u64, failure: &str, n: usize) -> Vec<String> {
    vec![format!("retry d{d} {failure}"); n]
}

fn lines(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

fn line(s: &str) -> Vec<String> {
    vec![s.to_owned()]
}

fn delivered_ids(sim: &Sim) -> Vec<u64> {
    sim.trace
        .iter()
        .filter_map(|e| match e {
            Event::Delivered { record } => Some(record.id().get()),
            _ => None,
        })
        .collect()
}

fn gaps(times: &[DateTime<Utc>]) -> Vec<Duration> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).to_std().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 25 failures
// ---------------------------------------------------------------------------------------------

#[test]
fn a_partner_answering_500_every_time_gets_exactly_25_sends_then_the_postback_is_disabled_once_and_the_delivery_is_held()
 {
    let mut sim = Sim::default(always(Reply::status(500).body("internal error")));
    let d = sim.convert();
    sim.run_to_idle();

    assert_eq!(sim.sent.len(), 25);
    assert!(
        sim.sent
            .iter()
            .all(|s| s.uri == url_of(1) && s.method == "GET")
    );
    assert_eq!(
        sim.summary(),
        lines(&[
            &retries(1, "HTTP 500", 24),
            &line("disabled p1"),
            &line("notify manager of p1 with 25 attempts"),
            &line("held d1 of p1"),
        ])
    );
    let last = *sim.sent.last().map(|s| &s.at).unwrap();
    let reason =
        "25 failed attempts of delivery 1.1.conversion.0 from the receiving server".to_owned();
    assert_eq!(
        sim.status(PB),
        Status::Disabled {
            reason: reason.clone(),
            at: last
        }
    );
    assert_eq!(
        sim.trace[24],
        Event::PostbackDisabled {
            postback: PB,
            reason: reason.clone(),
            at: last
        }
    );
    let Event::NotifyNetworkManager {
        postback,
        partner,
        reason: why,
        at,
        attempts,
    } = &sim.trace[25]
    else {
        panic!("{:?}", sim.trace[25])
    };
    assert_eq!(
        (*postback, *partner, why, *at),
        (PB, Some(PARTNER), &reason, last)
    );
    let numbers: Vec<u32> = attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, (1..=25).collect::<Vec<u32>>());
    let sent_at: Vec<DateTime<Utc>> = attempts.iter().map(|a| a.at).collect();
    assert_eq!(sent_at, sim.sends_of(d));
    for a in attempts {
        assert_eq!(a.url, redacted_url_of(1));
        assert_eq!(
            (a.status, a.body.as_str(), a.failure, a.counted, a.duration),
            (
                Some(500),
                "internal error",
                Some(FailureClass::Status(500)),
                true,
                Duration::ZERO
            )
        );
    }
    // Held, not lost: the engine still has it, with every attempt.
    let held = sim.engine.delivery(d).unwrap();
    assert_eq!(held.state(), &State::Held);
    assert_eq!(held.attempts(), &attempts[..]);
    assert_eq!(sim.engine.deliveries_of(PB).count(), 1);
    assert_eq!(sim.engine.poll_timeout(), None);
}

#[test]
fn a_partner_answering_503_twenty_four_times_then_200_is_delivered_on_the_25th_attempt_and_never_disabled()
 {
    let mut sim = Sim::default(script(vec![Reply::status(503); 24], Reply::status(200)));
    sim.convert();
    sim.run_to_idle();

    assert_eq!(sim.sent.len(), 25);
    assert_eq!(
        sim.summary(),
        lines(&[&retries(1, "HTTP 503", 24), &line("delivered d1 after 25")])
    );
    assert_eq!(sim.status(PB), Status::Active);
    let Event::Delivered { record } = &sim.trace[24] else {
        panic!()
    };
    let statuses: Vec<Option<u16>> = record.attempts().iter().map(|a| a.status).collect();
    let mut expected = vec![Some(503); 24];
    expected.push(Some(200));
    assert_eq!(statuses, expected);
    assert_eq!(record.failures(), 24);
    let last = sim.sent[24].at;
    assert_eq!(record.state(), &State::Delivered { at: last });
    let health = sim.engine.health(PB).expect("health is tracked");
    assert!(health.recent_failures.is_empty());
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(health.last_success, Some(last));
    assert_eq!(sim.engine.deliveries().count(), 0);
}

#[test]
fn local_refusals_do_not_count_so_ten_refusals_then_500s_disable_only_after_35_sends() {
    let mut replies = vec![Reply::fail(Failure::Forbidden("10.0.0.1 is private".into())); 6];
    replies.extend(vec![
        Reply::fail(Failure::Local(
            "client misconfigured".into()
        ));
        4
    ]);
    let mut sim = Sim::default(script(replies, Reply::status(500)));
    let d = sim.convert();
    sim.run_to_idle();

    assert_eq!(sim.sent.len(), 35);
    assert_eq!(
        sim.summary(),
        lines(&[
            &vec!["retry d1 refused by network policy (not counted)".to_owned(); 6],
            &vec!["retry d1 local error (not counted)".to_owned(); 4],
            &retries(1, "HTTP 500", 24),
            &line("disabled p1"),
            &line("notify manager of p1 with 35 attempts"),
            &line("held d1 of p1"),
        ])
    );
    let held = sim.engine.delivery(d).unwrap();
    assert_eq!(held.failures(), 25);
    let classes: Vec<(Option<FailureClass>, bool, Option<u16>)> = held
        .attempts()
        .iter()
        .map(|a| (a.failure, a.counted, a.status))
        .collect();
    let mut expected = vec![(Some(FailureClass::Forbidden), false, None); 6];
    expected.extend(vec![(Some(FailureClass::Local), false, None); 4]);
    expected.extend(vec![(Some(FailureClass::Status(500)), true, Some(500)); 25]);
    assert_eq!(classes, expected);
    assert_eq!(held.attempts()[0].body, "10.0.0.1 is private");
    assert_eq!(held.attempts()[6].body, "client misconfigured");
    assert_eq!(
        sim.status(PB),
        Status::Disabled {
            reason: "25 failed attempts of delivery 1.1.conversion.0 from the receiving server"
                .into(),
            at: sim.sent[34].at
        }
    );
}

#[test]
fn twenty_five_consecutive_local_refusals_give_up_without_disabling_the_postback() {
    let mut sim = Sim::default(always(Reply::fail(Failure::Forbidden("127.0.0.1".into()))));
    sim.convert();
    sim.run_to_idle();

    assert_eq!(sim.sent.len(), 25);
    assert_eq!(
        sim.summary(),
        lines(&[
            &vec!["retry d1 refused by network policy (not counted)".to_owned(); 24],
            &line("gave up d1 LocalRefusals { refusals: 25 }"),
        ])
    );
    assert_eq!(sim.status(PB), Status::Active);
    assert_eq!(sim.engine.health(PB), None);
}

#[test]
fn timeouts_and_connection_failures_count_like_error_statuses() {
    let replies = vec![
        Reply::fail(Failure::Timeout),
        Reply::fail(Failure::Connect("connection reset".into())),
        Reply::fail(Failure::Dns("no such host".into())),
        Reply::fail(Failure::Tls("bad certificate".into())),
        Reply::status(404),
    ];
    let mut sim = Sim::default(script(replies, Reply::status(500)));
    sim.convert();
    sim.run_to_idle();

    assert_eq!(sim.sent.len(), 25);
    assert_eq!(
        sim.summary()[..6],
        [
            "retry d1 timeout",
            "retry d1 connect",
            "retry d1 dns",
            "retry d1 tls",
            "retry d1 HTTP 404",
            "retry d1 HTTP 500",
        ]
    );
    assert_eq!(
        sim.count(|e| matches!(e, Event::PostbackDisabled { .. })),
        1
    );
    assert_eq!(
        sim.engine.delivery(DeliveryId::new(1)).unwrap().attempts()[0].body,
        "timed out"
    );
}

#[test]
fn two_deliveries_failing_in_the_same_batch_disable_the_postback_once_and_are_both_held() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        always(Reply::status(500)),
    );
    sim.convert();
    sim.convert();
    sim.run_to_idle();

    assert_eq!(sim.sent.len(), 50);
    let mut expected = Vec::new();
    for _ in 0..24 {
        expected.extend(line("retry d1 HTTP 500"));
        expected.extend(line("retry d2 HTTP 500"));
    }
    expected.extend(lines(&[
        &line("disabled p1"),
        &line("notify manager of p1 with 25 attempts"),
        &line("held d1 of p1"),
        &line("held d2 of p1"),
    ]));
    assert_eq!(sim.summary(), expected);
    assert_eq!(sim.engine.deliveries_of(PB).count(), 2);
    assert!(sim.engine.deliveries().all(|d| d.state() == &State::Held));
}

// ---------------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------------

/// The first attempt answers `first`, the second 200; the time of the second attempt.
fn second_attempt_after(first: Reply) -> (Sim, DateTime<Utc>) {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        script(vec![first], Reply::status(200)),
    );
    sim.convert();
    sim.run_to_idle();
    assert_eq!(sim.sent.len(), 2);
    assert_eq!(sim.summary(), ["retry d1 HTTP 503", "delivered d1 after 2"]);
    let at = sim.sent[1].at;
    let Event::RetryScheduled { at: scheduled, .. } = sim.trace[0] else {
        panic!()
    };
    assert_eq!(scheduled, at);
    (sim, at)
}

#[test]
fn a_retry_after_of_3600_seconds_on_the_first_failure_postpones_the_next_attempt_by_an_hour_instead_of_10_seconds()
 {
    let (sim, at) = second_attempt_after(Reply::status(503).header("Retry-After", "3600"));
    assert_eq!(at, t0() + secs(3600));
    let Event::Delivered { record } = &sim.trace[1] else {
        panic!()
    };
    // Delayed, not advanced: the delivery is on its second attempt, one counted failure.
    assert_eq!(record.failures(), 1);
    assert_eq!(record.attempts()[1].number, 2);
}

#[test]
fn a_retry_after_shorter_than_the_schedule_leaves_the_schedule() {
    let (_, at) = second_attempt_after(Reply::status(503).header("Retry-After", "3"));
    assert_eq!(at, t0() + secs(10));
}

#[test]
fn a_retry_after_in_the_http_date_form_postpones_the_next_attempt_to_that_date() {
    let (_, at) = second_attempt_after(
        Reply::status(503).header("Retry-After", "Thu, 01 Jan 2026 00:30:00 GMT"),
    );
    assert_eq!(at, t0() + secs(30 * 60));
}

#[test]
fn a_retry_after_http_date_in_the_past_leaves_the_schedule() {
    let (_, at) = second_attempt_after(
        Reply::status(503).header("Retry-After", "Wed, 31 Dec 2025 23:00:00 GMT"),
    );
    assert_eq!(at, t0() + secs(10));
}

#[test]
fn a_huge_retry_after_is_capped_at_the_policy_cap() {
    let cap = RetryPolicy::default().retry_after_cap;
    assert_eq!(cap, Duration::from_secs(6 * 3600));
    let (_, at) = second_attempt_after(Reply::status(503).header("Retry-After", "999999999999"));
    assert_eq!(at, t0() + std_delta(cap));
    let (_, at) = second_attempt_after(
        Reply::status(503).header("Retry-After", "Fri, 01 Jan 2100 00:00:00 GMT"),
    );
    assert_eq!(at, t0() + std_delta(cap));
}

#[test]
fn an_unparseable_retry_after_is_ignored() {
    let (_, at) = second_attempt_after(Reply::status(503).header("Retry-After", "soon"));
    assert_eq!(at, t0() + secs(10));
}

#[test]
fn retry_after_is_measured_from_the_response_not_the_request() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        script(
            vec![Reply::status(503).header("Retry-After", "120")],
            Reply::status(200),
        ),
    );
    sim.latency = secs(7);
    sim.convert();
    sim.run_to_idle();
    assert_eq!(
        sim.sent.iter().map(|s| s.at).collect::<Vec<_>>(),
        [t0(), t0() + secs(7 + 120)]
    );
    let Event::Delivered { record } = &sim.trace[1] else {
        panic!()
    };
    assert_eq!(record.attempts()[0].duration, Duration::from_secs(7));
    assert_eq!(
        record.state(),
        &State::Delivered {
            at: t0() + secs(7 + 120 + 7)
        }
    );
}

// ---------------------------------------------------------------------------------------------
// The schedule
// ---------------------------------------------------------------------------------------------

#[test]
fn with_no_jitter_the_gaps_between_the_25_attempts_are_exactly_the_default_schedule() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        always(Reply::status(500)),
    );
    let d = sim.convert();
    sim.run_to_idle();
    let times = sim.sends_of(d);
    assert_eq!(times.len(), 25);
    assert_eq!(times[0], t0());
    assert_eq!(gaps(&times), DEFAULT_SCHEDULE);
    let total: Duration = DEFAULT_SCHEDULE.iter().sum();
    assert_eq!(times[24], t0() + std_delta(total));
}

#[test]
fn with_the_default_jitter_every_gap_is_within_20_percent_of_its_base_and_the_same_on_every_run() {
    let run = || {
        // Never disabled, so both deliveries use their 25 attempts.
        let mut sim = Sim::new(
            EngineConfig::default().disable(DisablePolicy::Never),
            vec![conversion_postback()],
            always(Reply::status(500)),
        );
        sim.convert();
        sim.convert();
        sim.run_to_idle();
        sim
    };
    let a = run();
    let b = run();
    assert_eq!(a.sent, b.sent);
    let policy = RetryPolicy::default();
    for d in [DeliveryId::new(1), DeliveryId::new(2)] {
        let g = gaps(&a.sends_of(d));
        assert_eq!(g.len(), 24);
        for (i, (gap, base)) in g.iter().zip(DEFAULT_SCHEDULE).enumerate() {
            assert_eq!(*gap, policy.wait_after(i as u32 + 1, d));
            let lo = base * 4 / 5;
            let hi = base * 6 / 5;
            assert!(
                (lo..=hi).contains(gap),
                "gap {} of {d:?}: {gap:?} not within 20% of {base:?}",
                i + 1
            );
        }
    }
    // Two deliveries of one postback do not retry in lockstep.
    assert_ne!(
        a.sends_of(DeliveryId::new(1))[1],
        a.sends_of(DeliveryId::new(2))[1]
    );
}

// ---------------------------------------------------------------------------------------------
// The consecutive-window policy
// ---------------------------------------------------------------------------------------------

fn everflow(retry: RetryPolicy) -> EngineConfig {
    EngineConfig::default()
        .retry(retry.jitter(0, 0))
        .disable(DisablePolicy::everflow_2026())
}

/// `n` conversions, `every` apart, each delivery answered by the partner.
fn conversions(sim: &mut Sim, n: usize, every: TimeDelta) {
    for i in 0..n {
        if i > 0 {
            sim.advance(every);
        }
        sim.convert();
        sim.run_until(sim.now);
    }
    sim.run_to_idle();
}

#[test]
fn ten_deliveries_failing_once_each_within_72_hours_disable_the_postback_under_the_consecutive_rule()
 {
    let mut sim = Sim::new(
        everflow(RetryPolicy::default().max_attempts(1)),
        vec![conversion_postback()],
        always(Reply::status(500)),
    );
    conversions(&mut sim, 10, hours(7));

    assert_eq!(sim.sent.len(), 10);
    let mut expected: Vec<String> = (1..=9)
        .map(|d| format!("gave up d{d} MaxAttempts {{ failures: 1 }}"))
        .collect();
    expected.extend(lines(&[
        &line("disabled p1"),
        &line("notify manager of p1 with 1 attempts"),
        &line("held d10 of p1"),
    ]));
    assert_eq!(sim.summary(), expected);
    assert_eq!(
        sim.status(PB),
        Status::Disabled {
            reason: "10 consecutive failed deliveries within 72 hours".into(),
            at: t0() + hours(63)
        }
    );
}

#[test]
fn ten_deliveries_failing_on_a_terminal_4xx_within_72_hours_disable_the_postback() {
    let retry = RetryPolicy::default()
        .classifier(postback::delivery::Classifier::default().client_errors_terminal());
    let mut sim = Sim::new(
        everflow(retry),
        vec![conversion_postback()],
        always(Reply::status(404)),
    );
    conversions(&mut sim, 10, hours(1));

    assert_eq!(sim.sent.len(), 10);
    let mut expected: Vec<String> = (1..=9)
        .map(|d| format!("gave up d{d} Terminal {{ failure: Status(404) }}"))
        .collect();
    expected.extend(lines(&[
        &line("disabled p1"),
        &line("notify manager of p1 with 1 attempts"),
        &line("gave up d10 Terminal { failure: Status(404) }"),
    ]));
    assert_eq!(sim.summary(), expected);
    assert!(matches!(sim.status(PB), Status::Disabled { at, .. } if at == t0() + hours(9)));
}

#[test]
fn ten_failures_spread_over_more_than_72_hours_do_not_disable_the_postback() {
    let mut sim = Sim::new(
        everflow(RetryPolicy::default().max_attempts(1)),
        vec![conversion_postback()],
        always(Reply::status(500)),
    );
    conversions(&mut sim, 12, hours(9));

    assert_eq!(sim.sent.len(), 12);
    assert_eq!(sim.count(|e| matches!(e, Event::GaveUp { .. })), 12);
    assert_eq!(
        sim.count(|e| matches!(e, Event::PostbackDisabled { .. })),
        0
    );
    assert_eq!(sim.status(PB), Status::Active);
    let h = sim.engine.health(PB).unwrap();
    assert_eq!(h.consecutive_failures, 12);
    assert_eq!(
        h.recent_failures.iter().copied().collect::<Vec<_>>(),
        (2..12).map(|i| t0() + hours(9 * i)).collect::<Vec<_>>()
    );
}

#[test]
fn a_success_between_failures_resets_the_consecutive_count() {
    // Delivery 10 succeeds; 1-9 and 11-19 fail: never ten in a row.
    let partner: Partner = Box::new(|s: &Sent| {
        if s.delivery == DeliveryId::new(10) {
            Reply::status(200)
        } else {
            Reply::status(500)
        }
    });
    let mut sim = Sim::new(
        everflow(RetryPolicy::default().max_attempts(1)),
        vec![conversion_postback()],
        partner,
    );
    conversions(&mut sim, 19, hours(1));
    assert_eq!(sim.status(PB), Status::Active);
    assert_eq!(sim.count(|e| matches!(e, Event::GaveUp { .. })), 18);
    assert_eq!(delivered_ids(&sim), [10]);
    assert_eq!(sim.engine.health(PB).unwrap().consecutive_failures, 9);

    // The tenth failure after the success disables it.
    sim.advance(hours(1));
    sim.convert();
    sim.run_to_idle();
    assert_eq!(
        sim.summary()[19..],
        [
            "disabled p1",
            "notify manager of p1 with 1 attempts",
            "held d20 of p1"
        ]
    );
    assert!(matches!(sim.status(PB), Status::Disabled { at, .. } if at == t0() + hours(19)));
}

#[test]
fn under_the_consecutive_rule_one_delivery_failing_ten_times_within_72_hours_disables_the_postback()
{
    let mut sim = Sim::new(
        everflow(RetryPolicy::default()),
        vec![conversion_postback()],
        always(Reply::status(500)),
    );
    sim.convert();
    sim.run_to_idle();
    assert_eq!(sim.sent.len(), 10);
    assert_eq!(
        sim.summary(),
        lines(&[
            &retries(1, "HTTP 500", 9),
            &line("disabled p1"),
            &line("notify manager of p1 with 10 attempts"),
            &line("held d1 of p1"),
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// Held deliveries and re-enabling
// ---------------------------------------------------------------------------------------------

#[test]
fn deliveries_held_by_an_automatic_disable_are_each_replayed_once_after_the_network_enables_the_postback()
 {
    let healthy = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = healthy.clone();
    let partner: Partner = Box::new(move |_| {
        if flag.get() {
            Reply::status(200)
        } else {
            Reply::status(500)
        }
    });
    let mut sim = Sim::new(no_jitter(), vec![conversion_postback()], partner);
    for _ in 0..4 {
        sim.convert();
        sim.run_until(sim.now);
        sim.advance(hours(1));
    }
    sim.run_to_idle();

    // Delivery 1 reached 25 failures first; the other three were waiting for a retry.
    assert_eq!(sim.sends_of(DeliveryId::new(1)).len(), 25);
    let disabled_at = sim.sends_of(DeliveryId::new(1))[24];
    assert!(matches!(sim.status(PB), Status::Disabled { at, .. } if at == disabled_at));
    // The disabling delivery is held last: the others are held as the postback goes off.
    assert_eq!(
        sim.summary().split_off(sim.trace.len() - 6),
        [
            "disabled p1",
            "notify manager of p1 with 25 attempts",
            "held d2 of p1",
            "held d3 of p1",
            "held d4 of p1",
            "held d1 of p1",
        ]
    );
    assert_eq!(sim.count(|e| matches!(e, Event::Held { .. })), 4);
    assert_eq!(
        sim.count(|e| matches!(e, Event::Delivered { .. } | Event::GaveUp { .. })),
        0
    );
    assert_eq!(sim.engine.deliveries_of(PB).count(), 4);
    // A conversion while disabled is not sent, but held with the others: nothing else serves it.
    let fired =
        sim.engine
            .handle_trigger(sim.now, &Trigger::conversion(5, PARTNER, OFFER), &values());
    assert_eq!(fired.deliveries, []);
    assert_eq!(fired.held, [(PB, DeliveryId::new(5))]);
    assert_eq!(
        sim.engine.poll_event(),
        Some(Event::Held {
            delivery: DeliveryId::new(5),
            postback: PB
        })
    );

    let before = sim.sent.len();
    let events_before = sim.trace.len();
    sim.advance(hours(24));
    assert_eq!(sim.sent.len(), before);
    healthy.set(true);
    let enabled_at = sim.now;
    sim.enable(PB);
    sim.run_to_idle();

    assert_eq!(
        sim.trace[events_before],
        Event::Reenabled {
            postback: PB,
            replayed: 5,
            at: enabled_at
        }
    );
    let replayed = &sim.sent[before..];
    assert_eq!(replayed.len(), 5);
    let mut by_transmit: Vec<u64> = replayed.iter().map(|s| s.delivery.get()).collect();
    let mut by_url: Vec<u64> = replayed.iter().map(Sent::d_param).collect();
    by_transmit.sort_unstable();
    by_url.sort_unstable();
    assert_eq!(by_transmit, [1, 2, 3, 4, 5]);
    assert_eq!(by_url, [1, 2, 3, 4, 5]);
    assert!(replayed.iter().all(|s| s.at == enabled_at));
    let mut delivered = delivered_ids(&sim);
    delivered.sort_unstable();
    assert_eq!(delivered, [1, 2, 3, 4, 5]);
    assert_eq!(sim.trace.len(), events_before + 6);
    assert_eq!(sim.status(PB), Status::Active);
    assert_eq!(sim.engine.deliveries().count(), 0);
    // Every send carried its own delivery id in the URL.
    assert!(sim.sent.iter().all(|s| s.d_param() == s.delivery.get()));
}

#[test]
fn a_replayed_delivery_gets_a_fresh_budget_of_25_attempts() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        always(Reply::status(500)),
    );
    let d = sim.convert();
    sim.run_to_idle();
    assert_eq!(sim.sent.len(), 25);
    sim.advance(hours(1));
    sim.enable(PB);
    sim.run_to_idle();
    assert_eq!(sim.sent.len(), 50);
    assert_eq!(
        sim.count(|e| matches!(e, Event::PostbackDisabled { .. })),
        2
    );
    assert_eq!(sim.count(|e| matches!(e, Event::Held { .. })), 2);
    let held = sim.engine.delivery(d).unwrap();
    assert_eq!(
        (held.state(), held.failures(), held.attempts().len()),
        (&State::Held, 25, 50)
    );
    let Some(Event::NotifyNetworkManager { attempts, .. }) = sim.trace.iter().rev().nth(1) else {
        panic!()
    };
    assert_eq!(attempts.len(), 50);
}

#[test]
fn a_paused_postback_holds_its_scheduled_deliveries_and_enabling_it_replays_them() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        script(vec![Reply::status(500)], Reply::status(200)),
    );
    let d = sim.convert();
    sim.run_until(t0() + secs(5));
    assert_eq!(sim.summary(), ["retry d1 HTTP 500"]);
    sim.pause(PB);
    assert_eq!(sim.status(PB), Status::Paused);
    assert_eq!(sim.summary()[1..], ["held d1 of p1"]);
    assert_eq!(sim.engine.poll_timeout(), None);
    sim.run_until(t0() + hours(1));
    assert_eq!(sim.sent.len(), 1);
    sim.resume(PB);
    sim.run_to_idle();
    assert_eq!(
        sim.summary()[2..],
        ["reenabled p1 replaying 1", "delivered d1 after 2"]
    );
    assert_eq!(sim.sends_of(d), [t0(), t0() + hours(1)]);
}

// ---------------------------------------------------------------------------------------------
// Test fires
// ---------------------------------------------------------------------------------------------

#[test]
fn a_test_fire_reports_the_exact_request_url_and_response_in_one_attempt() {
    let mut sim = Sim::default(always(Reply::status(200).body("OK: postback received")));
    sim.latency = secs(2);
    let d = sim.test_fire(PB);
    sim.run_to_idle();

    assert_eq!(sim.sent.len(), 1);
    assert_eq!(sim.summary(), [format!("test fired d{d}")]);
    let Event::TestFired { record } = &sim.trace[0] else {
        panic!()
    };
    assert!(record.is_test());
    let key = record.key().to_string();
    assert!(key.ends_with(".1.test.0"), "{key}");
    assert_eq!(sim.sent[0].uri, url_for(&key));
    assert_eq!(sim.sent[0].method, "GET");
    // A finished delivery is a record: it keeps no values (they may be secrets).
    assert!(record.values().is_empty());
    assert_eq!(record.attempts().len(), 1);
    let a: &Attempt = &record.attempts()[0];
    assert_eq!(
        (
            a.number,
            a.at,
            a.url.as_str(),
            a.status,
            a.body.as_str(),
            a.duration,
            a.failure,
            a.counted
        ),
        (
            1,
            t0(),
            format!("https://t.example/pb?cid=clk-1&d={key}&token=***").as_str(),
            Some(200),
            "OK: postback received",
            Duration::from_secs(2),
            None,
            false
        )
    );
    assert_eq!(record.state(), &State::Delivered { at: t0() + secs(2) });
    assert_eq!(sim.engine.health(PB), None);
}

#[test]
fn thirty_failing_test_fires_never_disable_the_postback_or_change_its_health() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        script(vec![Reply::status(500); 3], Reply::status(500).body("down")),
    );
    // Three counted failures of a real delivery first, so there is health to keep.
    sim.convert();
    sim.run_until(t0() + secs(40));
    assert_eq!(sim.sent.len(), 3);
    let health = sim.engine.health(PB).cloned();
    assert_eq!(health.as_ref().map(|h| h.consecutive_failures), Some(3));

    let mut fired = Vec::new();
    for _ in 0..30 {
        fired.push(sim.test_fire(PB));
        sim.run_until(sim.now);
    }
    assert_eq!(sim.sent.len(), 33);
    assert_eq!(sim.engine.health(PB).cloned(), health);
    assert_eq!(sim.status(PB), Status::Active);
    let test_fired: Vec<&Delivery> = sim
        .trace
        .iter()
        .filter_map(|e| match e {
            Event::TestFired { record } => Some(&**record),
            _ => None,
        })
        .collect();
    assert_eq!(test_fired.len(), 30);
    for (record, id) in test_fired.iter().zip(&fired) {
        assert_eq!(record.id(), *id);
        assert_eq!(record.attempts().len(), 1);
        assert_eq!(record.attempts()[0].status, Some(500));
        assert_eq!(
            record.state(),
            &State::GaveUp {
                at: t0() + secs(40),
                reason: GiveUpReason::TestFire
            }
        );
    }
    assert_eq!(
        sim.count(|e| matches!(e, Event::PostbackDisabled { .. })),
        0
    );
    // The real delivery is still on its own schedule.
    assert_eq!(
        sim.engine.delivery(DeliveryId::new(1)).unwrap().due(),
        Some(t0() + secs(10 + 30 + 60))
    );
}

#[test]
fn a_test_fire_of_a_disabled_postback_is_sent_once_and_does_not_replay_held_deliveries() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        always(Reply::status(500)),
    );
    sim.convert();
    sim.run_to_idle();
    assert!(matches!(sim.status(PB), Status::Disabled { .. }));
    let events = sim.trace.len();
    let d = sim.test_fire(PB);
    sim.run_to_idle();
    assert_eq!(sim.sent.len(), 26);
    assert_eq!(sim.sent[25].delivery, d);
    assert_eq!(sim.summary()[events..], [format!("test fired d{d}")]);
    assert_eq!(
        sim.engine.delivery(DeliveryId::new(1)).unwrap().state(),
        &State::Held
    );
}

#[test]
fn a_test_fire_requested_just_before_a_pause_is_still_sent() {
    // `Engine::test_fire` fires "whatever its status": pausing the postback between the request
    // and its send must not hold the test fire.
    let mut sim = Sim::default(always(Reply::status(200)));
    let d = sim.test_fire(PB);
    sim.pause(PB);
    sim.run_to_idle();
    assert_eq!(sim.summary(), [format!("test fired d{d}")]);
    assert_eq!(sim.sent.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// CPC, redirects
// ---------------------------------------------------------------------------------------------

#[test]
fn cpc_deliveries_are_hidden_from_reports_and_conversion_deliveries_are_not() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback(), cpc_postback()],
        always(Reply::status(200)),
    );
    let cpc = sim.cpc_click();
    assert!(sim.engine.delivery(cpc).unwrap().is_hidden_from_reports());
    let conv = sim.convert();
    assert!(!sim.engine.delivery(conv).unwrap().is_hidden_from_reports());
    sim.run_to_idle();
    let hidden: Vec<(u64, bool)> = sim
        .trace
        .iter()
        .filter_map(|e| match e {
            Event::Delivered { record } => {
                Some((record.id().get(), record.is_hidden_from_reports()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(hidden, [(cpc.get(), true), (conv.get(), false)]);
    assert_eq!(
        sim.sent
            .iter()
            .map(|s| (s.postback, s.uri.as_str()))
            .collect::<Vec<_>>(),
        [
            (CPC_PB, "https://t.example/cpc?cid=clk-1&d=1.2.cpc.0"),
            (
                PB,
                "https://t.example/pb?cid=clk-1&d=2.1.conversion.0&token=s3cret"
            ),
        ]
    );
}

#[test]
fn a_302_counts_as_a_failure_and_the_redirect_is_not_followed() {
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback()],
        script(
            vec![Reply::status(302).header("Location", "https://elsewhere.example/landing")],
            Reply::status(200),
        ),
    );
    sim.convert();
    sim.run_to_idle();
    assert_eq!(sim.summary(), ["retry d1 HTTP 302", "delivered d1 after 2"]);
    let Event::RetryScheduled { counted, at, .. } = sim.trace[0] else {
        panic!()
    };
    assert_eq!((counted, at), (true, t0() + secs(10)));
    assert_eq!(
        sim.sent.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(),
        [url_of(1), url_of(1)]
    );
    let Event::Delivered { record } = &sim.trace[1] else {
        panic!()
    };
    assert_eq!(record.failures(), 1);
    assert_eq!(
        record.attempts()[0].failure,
        Some(FailureClass::Status(302))
    );
}

#[test]
fn thirty_redirects_in_a_row_disable_the_postback_after_25() {
    let mut sim = Sim::default(always(
        Reply::status(301).header("Location", "https://elsewhere.example/"),
    ));
    sim.convert();
    sim.run_to_idle();
    assert_eq!(sim.sent.len(), 25);
    assert!(sim.sent.iter().all(|s| s.uri == url_of(1)));
    assert_eq!(
        sim.count(|e| matches!(e, Event::PostbackDisabled { .. })),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

/// A run touching every path: refusals, Retry-After, a redirect, timeouts, an automatic
/// disable with holds, a test fire, a re-enable with replay, CPC, a pause, with latency.
fn eventful_run(restore_every_step: bool) -> Sim {
    let mut n = 0;
    let partner: Partner = Box::new(move |s: &Sent| {
        n += 1;
        if s.postback == CPC_PB {
            return Reply::status(200);
        }
        if s.at >= t0() + hours(200) {
            return Reply::status(200).body("ok");
        }
        match n % 7 {
            0 => Reply::fail(Failure::Forbidden("10.1.2.3".into())),
            1 => Reply::status(503).header("Retry-After", "600"),
            2 => Reply::status(302).header("Location", "https://x.example/"),
            3 => Reply::fail(Failure::Timeout),
            4 => Reply::status(503).header("Retry-After", "Thu, 01 Jan 2026 00:00:05 GMT"),
            _ => Reply::status(500).body("é".repeat(5000).as_str()),
        }
    });
    let mut sim = Sim::new(
        EngineConfig::default().idempotency_header("Idempotency-Key"),
        vec![conversion_postback(), cpc_postback()],
        partner,
    );
    sim.restore_every_step = restore_every_step;
    sim.latency = TimeDelta::milliseconds(1234);
    sim.convert();
    sim.advance(hours(3));
    sim.convert();
    sim.cpc_click();
    sim.advance(hours(1));
    sim.test_fire(PB);
    sim.advance(TimeDelta::minutes(90));
    sim.convert();
    sim.run_until(t0() + hours(150));
    assert!(matches!(sim.status(PB), Status::Disabled { .. }));
    sim.test_fire(PB);
    sim.run_until(t0() + hours(160));
    sim.enable(PB);
    sim.run_until(t0() + hours(161));
    sim.pause(PB);
    sim.run_until(t0() + hours(200));
    sim.resume(PB);
    sim.run_to_idle();
    sim
}

#[test]
fn serializing_and_restoring_the_engine_after_every_step_gives_the_identical_trace() {
    let plain = eventful_run(false);
    let restored = eventful_run(true);
    assert_eq!(plain.round_trips, 0);
    assert!(restored.round_trips > 200, "{}", restored.round_trips);
    assert_eq!(restored.sent, plain.sent);
    assert_eq!(restored.trace, plain.trace);
    // The run went through every path it was meant to.
    let kinds = |pred: fn(&Event) -> bool| plain.count(pred);
    assert!(kinds(|e| matches!(e, Event::PostbackDisabled { .. })) >= 1);
    assert!(kinds(|e| matches!(e, Event::Held { .. })) >= 3);
    assert_eq!(kinds(|e| matches!(e, Event::Reenabled { .. })), 2);
    assert_eq!(kinds(|e| matches!(e, Event::TestFired { .. })), 2);
    assert!(kinds(|e| matches!(e, Event::Delivered { .. })) >= 4);
    assert_eq!(plain.engine.deliveries().count(), 0);
}

fn assert_round_trips(d: &Delivery) -> Delivery {
    let json = serde_json::to_string(d).unwrap();
    let back: Delivery = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, d);
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    back
}

#[test]
fn a_delivery_alone_round_trips_through_serde_json_in_every_state() {
    let policy = RetryPolicy::default().jitter(0, 0).max_attempts(3);
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .offer(OFFER)
        .method(Method::ServerToServer {
            http: HttpMethod::Post,
        })
        .url(URL)
        .response_check(postback::model::ResponseCheck::MustNotContain(
            "error".into(),
        ))
        .build()
        .unwrap();
    let ctx = SendContext::new(&pb).idempotency_header(Some("Idempotency-Key"));
    let stored = || values().to_stored(&[]);
    // A CPC click's delivery: hidden from reports.
    let key = Trigger::cpc_click(1, PARTNER, OFFER).key(PB);
    let mut d = Delivery::new(
        DeliveryId::new(1),
        key,
        stored(),
        t0(),
        Duration::from_secs(60),
    );
    assert!(d.is_hidden_from_reports());
    let mut states = Vec::new();
    let mut step = |d: &mut Delivery| {
        *d = assert_round_trips(d);
        states.push(
            serde_json::to_value(d.state()).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    };
    step(&mut d); // scheduled, with a delay
    assert!(matches!(d.poll(t0(), &ctx), Action::Wait(at) if at == t0() + secs(60)));
    let Action::Send(req) = d.poll(t0() + secs(60), &ctx) else {
        panic!()
    };
    assert_eq!(
        (req.method(), req.uri().to_string()),
        (&http::Method::POST, url_for("1.1.cpc.0"))
    );
    assert_eq!(req.headers()["Idempotency-Key"], "1.1.cpc.0");
    step(&mut d); // in flight
    let p = d
        .handle_response(
            t0() + secs(61),
            Reply::status(200).body("error: bad click").answer(),
            &policy,
        )
        .unwrap();
    assert!(matches!(
        p,
        Progress::Retry {
            failure: FailureClass::BodyCheck,
            counted: true,
            failures: 1,
            ..
        }
    ));
    step(&mut d); // scheduled again
    assert!(d.hold());
    step(&mut d); // held
    d.release(t0() + hours(1)).unwrap();
    step(&mut d);
    let Action::Send(_) = d.poll(t0() + hours(1), &ctx) else {
        panic!()
    };
    let p = d
        .handle_response(
            t0() + hours(1),
            Err(Failure::Forbidden("10.0.0.1".into())),
            &policy,
        )
        .unwrap();
    assert!(matches!(
        p,
        Progress::Retry {
            counted: false,
            failures: 0,
            ..
        }
    ));
    step(&mut d);
    let at = d.due().unwrap();
    let Action::Send(_) = d.poll(at, &ctx) else {
        panic!()
    };
    let p = d
        .handle_response(at, Reply::status(200).body("accepted").answer(), &policy)
        .unwrap();
    assert_eq!(p, Progress::Delivered { attempts: 3 });
    step(&mut d); // delivered

    let mut g = Delivery::new(
        DeliveryId::new(2),
        Trigger::conversion(2, PARTNER, OFFER).key(PB),
        stored(),
        t0(),
        Duration::ZERO,
    );
    for i in 0..3 {
        let Action::Send(_) = g.poll(t0() + hours(i), &ctx) else {
            panic!()
        };
        let _ = g
            .handle_response(t0() + hours(i), Err(Failure::Timeout), &policy)
            .unwrap();
        g = assert_round_trips(&g);
    }
    assert_eq!(
        g.state(),
        &State::GaveUp {
            at: t0() + hours(2),
            reason: GiveUpReason::MaxAttempts { failures: 3 }
        }
    );
    assert!(g.hold());
    g = assert_round_trips(&g);
    assert_eq!(g.state(), &State::Held);
    g.abandon(t0() + hours(3));
    assert_round_trips(&g);
    let test = Delivery::new(
        DeliveryId::new(3),
        DeliveryKey::new(TriggerId::new("t-3").unwrap(), PB, Purpose::Test, 0),
        stored(),
        t0(),
        Duration::ZERO,
    );
    assert!(assert_round_trips(&test).is_test());

    assert_eq!(
        states,
        [
            "scheduled",
            "in_flight",
            "scheduled",
            "held",
            "scheduled",
            "scheduled",
            "delivered"
        ]
    );
}

#[test]
fn an_edit_never_changes_the_status_so_a_stale_copy_cannot_switch_a_disabled_postback_back_on() {
    // Ten 500s disable it under the consecutive rule.
    let mut sim = Sim::new(
        everflow(RetryPolicy::default()),
        vec![conversion_postback()],
        script(vec![Reply::status(500); 11], Reply::status(200)),
    );
    // A copy loaded before the disable, as an edit form would hold it.
    let stale = sim.engine.registry().get(PB).unwrap().clone();
    sim.convert();
    sim.run_to_idle();
    assert_eq!(
        sim.summary()[9..],
        [
            "disabled p1",
            "notify manager of p1 with 10 attempts",
            "held d1 of p1"
        ]
    );
    let sent = sim.sent.len();

    let edited = stale
        .to_builder()
        .description("fix a typo")
        .status(Status::Active)
        .build()
        .unwrap();
    let entry = sim.engine.edit(sim.now, MANAGER, edited).unwrap();
    assert!(matches!(
        entry.after.unwrap().status(),
        Status::Disabled { .. }
    ));
    sim.run_to_idle();
    assert!(matches!(sim.status(PB), Status::Disabled { .. }));
    assert_eq!(
        sim.sent.len(),
        sent,
        "nothing is sent to a disabled postback"
    );
    assert_eq!(
        sim.engine.registry().get(PB).unwrap().description(),
        "fix a typo"
    );

    // Enabling is the way back on.
    sim.enable(PB);
    sim.run_to_idle();
    assert_eq!(
        sim.summary()[12..],
        [
            "reenabled p1 replaying 1",
            "retry d1 HTTP 500",
            "delivered d1 after 12"
        ]
    );
    assert_eq!(sim.status(PB), Status::Active);
}

#[test]
fn re_enabling_through_enable_resets_the_consecutive_count_so_one_more_failure_does_not_disable_again()
 {
    let mut sim = Sim::new(
        everflow(RetryPolicy::default()),
        vec![conversion_postback()],
        script(vec![Reply::status(500); 11], Reply::status(200)),
    );
    sim.convert();
    sim.run_to_idle();
    sim.enable(PB);
    sim.run_to_idle();
    assert_eq!(
        sim.summary()[12..],
        [
            "reenabled p1 replaying 1",
            "retry d1 HTTP 500",
            "delivered d1 after 12"
        ]
    );
    assert_eq!(sim.status(PB), Status::Active);
}

#[test]
fn a_postbacks_delay_postpones_its_first_attempt_but_not_a_test_fire() {
    let delayed = conversion_postback()
        .to_builder()
        .delay(Duration::from_secs(90))
        .build()
        .unwrap();
    let mut sim = Sim::new(no_jitter(), vec![delayed], always(Reply::status(200)));
    let d = sim.convert();
    let test = sim.test_fire(PB);
    sim.run_to_idle();
    assert_eq!(sim.sends_of(test), [t0()]);
    assert_eq!(sim.sends_of(d), [t0() + secs(90)]);
    assert_eq!(
        sim.summary(),
        [
            format!("test fired d{test}"),
            format!("delivered d{d} after 1")
        ]
    );
}

#[test]
fn disabling_one_postback_leaves_another_postbacks_deliveries_alone() {
    let partner: Partner = Box::new(|s: &Sent| {
        if s.postback == PB {
            Reply::status(500)
        } else if s.n < 30 {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    });
    let mut sim = Sim::new(
        no_jitter(),
        vec![conversion_postback(), cpc_postback()],
        partner,
    );
    let conv = sim.convert();
    let cpc = sim.cpc_click();
    sim.run_to_idle();
    assert!(matches!(sim.status(PB), Status::Disabled { .. }));
    assert_eq!(sim.status(CPC_PB), Status::Active);
    assert_eq!(sim.engine.delivery(conv).unwrap().state(), &State::Held);
    assert_eq!(delivered_ids(&sim), [cpc.get()]);
    assert_eq!(sim.sends_of(conv).len(), 25);
    assert_eq!(sim.count(|e| matches!(e, Event::Held { .. })), 1);
}
