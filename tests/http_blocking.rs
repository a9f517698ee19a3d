//! The blocking driver over real HTTP: postback-http's transports against a real receiver on
//! 127.0.0.1, every behaviour once over `ureq` (module `ureq`) and once over `reqwest` on a
//! runtime of its own (module `reqwest`), on the system clock with a compressed retry schedule (25 attempts take
//! well under a second).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use postback::access::Actor;
use postback::delivery::{FailureClass, GiveUpReason, RetryPolicy, State};
use postback::engine::{Engine, EngineConfig, Event};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId, Status};
use postback::registry::{Registry, Trigger};
use postback::template::{Amount, Currency, Macro, ValueMap};
use postback::transport::{
    Classify, Clock, IpRange, NetPolicy, RunReport, Transport, run_blocking, step_blocking,
};

use postback::delivery::Failure;
use postback_http::clock::SystemClock;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport, UreqTransport};

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const POSTBACK: PostbackId = PostbackId::new(1);

fn now() -> DateTime<Utc> {
    SystemClock.now()
}

/// Retries in milliseconds instead of days: the 25 waits add up to about a quarter second.
fn fast_retries() -> RetryPolicy {
    RetryPolicy::compressed(1_000_000)
}

/// An engine whose configuration allows loopback, with one partner-global postback to `url`.
fn engine(url: &str, config: EngineConfig) -> Engine {
    let config = config.net(NetPolicy::default().allow_loopback());
    let mut engine = Engine::new(config, Registry::new());
    let postback = Postback::builder(POSTBACK)
        .partner(PARTNER)
        .url(url)
        .build()
        .unwrap();
    engine
        .create(now(), Actor::Network(ManagerId::new(1)), postback)
        .unwrap();
    engine
}

fn values(click: &str) -> ValueMap {
    ValueMap::new()
        .with(Macro::SUB1, click)
        .with(Macro::PAYOUT, Amount::new(1250, 2))
        .with(Macro::CURRENCY, Currency::new("EUR").unwrap())
}

/// A conversion with a trigger id of its own.
fn fire(engine: &mut Engine, click: &str) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fired = engine.handle_trigger(
        now(),
        &Trigger::conversion(id, PARTNER, OFFER),
        &values(click),
    );
    assert_eq!(fired.deliveries.len(), 1, "{fired:?}");
}

#[derive(Debug, Clone, Copy)]
enum Client {
    Ureq,
    Reqwest,
}

/// A blocking transport of either client (a closure is a `Transport`).
type Blocking = Box<dyn Fn(http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, Failure>>;

/// A transport for loopback receivers.
fn loopback(client: Client, timeout: Duration) -> Blocking {
    transport(client, NetPolicy::default().allow_loopback(), timeout)
}

/// A transport with this policy and timeout, the crate's defaults otherwise.
fn transport(client: Client, policy: NetPolicy, timeout: Duration) -> Blocking {
    let config = Config::new(policy).timeout(timeout);
    match client {
        Client::Ureq => {
            let t = UreqTransport::new(config).unwrap();
            Box::new(move |request| t.send(request))
        }
        Client::Reqwest => {
            let t = ReqwestTransport::new(config).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            Box::new(move |request| {
                rt.block_on(postback::transport::AsyncTransport::send(&t, request))
            })
        }
    }
}

/// Run until nothing is scheduled (at most 30 s), collecting the events.
fn run(engine: &mut Engine, transport: &impl Transport) -> (RunReport, Vec<Event>) {
    let mut events = Vec::new();
    let report = run_blocking(
        engine,
        transport,
        &SystemClock,
        now() + TimeDelta::seconds(30),
        |e| events.push(e),
    );
    assert!(report.idle, "the run hit its deadline: {report:?}");
    (report, events)
}

/// One pass: send what is due now and collect the events.
fn step(engine: &mut Engine, transport: &impl Transport) -> Vec<Event> {
    let mut events = Vec::new();
    let _ = step_blocking(
        engine,
        transport,
        now,
        &mut RunReport::default(),
        &mut |e| events.push(e),
    );
    events
}

fn a_postback_answered_200_is_delivered_on_the_first_attempt(client: Client) {
    let receiver = Receiver::start(|_, _| Response::ok());
    let mut engine = engine(
        &receiver.url("/pb?cid={sub1}"),
        EngineConfig::default().retry(fast_retries()),
    );
    fire(&mut engine, "clk-1");

    let (report, events) = run(&mut engine, &loopback(client, Duration::from_secs(5)));

    assert_eq!((report.sent, report.handled), (1, 1));
    let [Event::Delivered { record }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(record.attempts().len(), 1);
    assert_eq!(
        (record.attempts()[0].status, record.attempts()[0].failure),
        (Some(200), None)
    );
    assert_eq!(record.attempts()[0].body, "OK");
    assert!(matches!(record.state(), State::Delivered { .. }));
    assert_eq!(receiver.count(), 1);
    assert!(engine.is_idle());
}

fn a_partner_answering_500_gets_exactly_25_attempts_and_then_the_postback_is_disabled(
    client: Client,
) {
    let receiver = Receiver::start(|_, _| Response::status(500).body("down"));
    let mut engine = engine(
        &receiver.url("/pb?cid={sub1}"),
        EngineConfig::default().retry(fast_retries()),
    );
    fire(&mut engine, "clk-1");

    let (report, events) = run(&mut engine, &loopback(client, Duration::from_secs(5)));

    assert_eq!(receiver.count(), 25);
    assert_eq!(report.sent, 25);
    let retries: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::RetryScheduled { .. }))
        .collect();
    assert_eq!(retries.len(), 24);
    assert!(retries.iter().all(|e| matches!(
        e,
        Event::RetryScheduled {
            failure: FailureClass::Status(500),
            counted: true,
            ..
        }
    )));
    let disabled: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::PostbackDisabled { .. }))
        .collect();
    assert_eq!(disabled.len(), 1);
    let notified: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::NotifyNetworkManager {
                postback,
                partner,
                attempts,
                ..
            } => Some((*postback, *partner, attempts)),
            _ => None,
        })
        .collect();
    assert_eq!(notified.len(), 1);
    let (postback, partner, attempts) = notified[0];
    assert_eq!((postback, partner), (POSTBACK, Some(PARTNER)));
    assert_eq!(attempts.len(), 25);
    assert!(
        attempts
            .iter()
            .all(|a| a.status == Some(500) && a.counted && a.body == "down")
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Delivered { .. })));
    assert!(matches!(
        engine.registry().get(POSTBACK).unwrap().status(),
        Status::Disabled { .. }
    ));
    // The delivery is held for a later enable, not lost.
    assert_eq!(engine.deliveries_of(POSTBACK).count(), 1);
}

fn a_302_counts_as_a_failure_and_its_location_is_never_followed(client: Client) {
    let receiver = Receiver::start(|req, _| {
        if req.path() == "/pb" {
            Response::status(302).header("Location", "/internal/admin")
        } else {
            Response::ok()
        }
    });
    let config = EngineConfig::default().retry(fast_retries().max_attempts(3));
    let mut engine = engine(&receiver.url("/pb?cid={sub1}"), config);
    fire(&mut engine, "clk-1");

    let (_, events) = run(&mut engine, &loopback(client, Duration::from_secs(5)));

    let paths: Vec<String> = receiver.requests().iter().map(|r| r.path()).collect();
    assert_eq!(paths, ["/pb", "/pb", "/pb"]);
    let [.., Event::GaveUp { record }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert!(matches!(
        record.state(),
        State::GaveUp {
            reason: GiveUpReason::MaxAttempts { failures: 3 },
            ..
        }
    ));
    assert!(
        record
            .attempts()
            .iter()
            .all(|a| a.failure == Some(FailureClass::Status(302)) && a.counted)
    );
}

fn a_partner_that_stalls_is_recorded_as_a_timeout(client: Client) {
    let receiver = Receiver::start(|_, _| Response::stall(Duration::from_secs(20)));
    let mut engine = engine(
        &receiver.url("/pb?cid={sub1}"),
        EngineConfig::default().retry(fast_retries()),
    );
    fire(&mut engine, "clk-1");

    #[allow(clippy::disallowed_methods)]
    let started = std::time::SystemTime::now();
    let events = step(&mut engine, &loopback(client, Duration::from_millis(300)));
    let waited = started.elapsed().unwrap_or_default();

    assert!(waited < Duration::from_secs(5), "took {waited:?}");
    let [
        Event::RetryScheduled {
            failure: FailureClass::Timeout,
            counted: true,
            delivery,
            ..
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    let attempts = engine.delivery(*delivery).unwrap().attempts();
    assert_eq!(
        (attempts[0].failure, attempts[0].status),
        (Some(FailureClass::Timeout), None)
    );
    assert_eq!(receiver.exchanges().len(), 1);
    assert_eq!(receiver.exchanges()[0].1, None, "the receiver stalled");
}

fn a_host_name_that_resolves_to_a_forbidden_address_is_refused_before_connecting(client: Client) {
    let receiver = Receiver::start(|_, _| Response::ok());
    // `localhost` passes the engine's configuration check (which allows loopback), but the
    // transport's policy forbids loopback: the name resolves to 127.0.0.1 (or ::1) and is refused.
    let url = format!(
        "http://localhost:{}/pb?cid={{sub1}}",
        receiver.addr().port()
    );
    let mut engine = engine(&url, EngineConfig::default().retry(fast_retries()));
    fire(&mut engine, "clk-1");

    let events = step(
        &mut engine,
        &transport(client, NetPolicy::default(), Duration::from_secs(5)),
    );

    let [
        Event::RetryScheduled {
            failure: FailureClass::Forbidden,
            counted: false,
            delivery,
            ..
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    let d = engine.delivery(*delivery).unwrap();
    assert_eq!(d.failures(), 0, "a local refusal never counts");
    assert!(
        d.attempts()[0].body.contains("loopback"),
        "{}",
        d.attempts()[0].body
    );
    assert_eq!(
        receiver.connections(),
        0,
        "no connection reached the receiver"
    );
}

fn an_address_the_transport_policy_forbids_is_refused_even_when_the_configuration_allowed_it(
    client: Client,
) {
    let receiver = Receiver::start(|_, _| Response::ok());
    let mut engine = engine(
        &receiver.url("/pb?cid={sub1}"),
        EngineConfig::default().retry(fast_retries()),
    );
    fire(&mut engine, "clk-1");
    let policy = NetPolicy::default()
        .allow_loopback()
        .forbid(IpRange::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 32));

    let events = step(
        &mut engine,
        &transport(client, policy, Duration::from_secs(5)),
    );

    assert!(
        matches!(
            events.as_slice(),
            [Event::RetryScheduled {
                failure: FailureClass::Forbidden,
                counted: false,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(receiver.connections(), 0);
}

fn forbidden_ip_literals_in_every_spelling_are_refused_by_the_transport(client: Client) {
    let receiver = Receiver::start(|_, _| Response::ok());
    let transport = transport(client, NetPolicy::default(), Duration::from_secs(5));
    let port = receiver.addr().port();

    // 127.0.0.1 as written, as one decimal number, and IPv4-mapped IPv6.
    for host in ["127.0.0.1", "2130706433", "[::ffff:127.0.0.1]"] {
        let request = http::Request::get(format!("http://{host}:{port}/pb?cid=1"))
            .body(Vec::new())
            .unwrap();
        let result = transport.send(request).map_err(|e| e.failure().class());
        assert_eq!(
            result.map(|r| r.status()).err(),
            Some(FailureClass::Forbidden),
            "{host}"
        );
    }
    assert_eq!(receiver.connections(), 0);
}

fn a_refused_connection_is_classified_as_connect(client: Client) {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut engine = engine(
        &format!("http://127.0.0.1:{port}/pb?cid={{sub1}}"),
        EngineConfig::default(),
    );
    fire(&mut engine, "clk-1");

    let events = step(&mut engine, &loopback(client, Duration::from_secs(5)));

    assert!(
        matches!(
            events.as_slice(),
            [Event::RetryScheduled {
                failure: FailureClass::Connect,
                counted: true,
                ..
            }]
        ),
        "{events:?}"
    );
}

fn the_partner_receives_the_expanded_template_byte_for_byte(client: Client) {
    let receiver = Receiver::start(|_, _| Response::ok());
    let template = "/pb/{sub2}?cid={sub1}&payout={payout}&currency={currency}&dedupe={delivery_id}";
    let config = EngineConfig::default().idempotency_header("Idempotency-Key");
    let mut engine = engine(&receiver.url(template), config);
    let values = values("clk 1&payout=999#x").with(Macro::SUB2, "café/au lait");
    let fired = engine.handle_trigger(now(), &Trigger::conversion(1001, PARTNER, OFFER), &values);
    let [(pb, _)] = fired.deliveries.as_slice() else {
        panic!("{fired:?}")
    };
    let delivery = format!("1001.{pb}.conversion.0");

    let _ = run(&mut engine, &loopback(client, Duration::from_secs(5)));

    let [request] = receiver
        .requests()
        .try_into()
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(request.method, "GET");
    // Currency first; space as %20; `& = # /` and non-ASCII encoded, so the sub id adds nothing.
    let expected = format!(
        "/pb/caf%C3%A9%2Fau%20lait?currency=EUR&cid=clk%201%26payout%3D999%23x&payout=12.50&dedupe={delivery}"
    );
    assert_eq!(request.target, expected.as_bytes());
    assert_eq!(request.header("Idempotency-Key"), Some(delivery.as_str()));
    assert_eq!(
        request.header("Host"),
        Some(receiver.addr().to_string().as_str())
    );
}

fn deliveries_to_one_partner_share_one_keep_alive_connection(client: Client) {
    let receiver = Receiver::start(|_, _| Response::status(204));
    let mut engine = engine(&receiver.url("/pb?cid={sub1}"), EngineConfig::default());
    for i in 0..5 {
        fire(&mut engine, &format!("clk-{i}"));
    }

    let (report, events) = run(&mut engine, &loopback(client, Duration::from_secs(5)));

    assert_eq!(report.sent, 5);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Delivered { .. }))
            .count(),
        5
    );
    let connections: Vec<usize> = receiver.requests().iter().map(|r| r.connection).collect();
    assert_eq!(connections, [0, 0, 0, 0, 0]);
}

macro_rules! for_both_clients {
    ($($behaviour:ident),* $(,)?) => {
        mod ureq {
            $(#[test] fn $behaviour() { super::$behaviour(super::Client::Ureq) })*
        }
        mod reqwest {
            $(#[test] fn $behaviour() { super::$behaviour(super::Client::Reqwest) })*
        }
    };
}

for_both_clients!(
    a_postback_answered_200_is_delivered_on_the_first_attempt,
    a_partner_answering_500_gets_exactly_25_attempts_and_then_the_postback_is_disabled,
    a_302_counts_as_a_failure_and_its_location_is_never_followed,
    a_partner_that_stalls_is_recorded_as_a_timeout,
    a_host_name_that_resolves_to_a_forbidden_address_is_refused_before_connecting,
    an_address_the_transport_policy_forbids_is_refused_even_when_the_configuration_allowed_it,
    forbidden_ip_literals_in_every_spelling_are_refused_by_the_transport,
    a_refused_connection_is_classified_as_connect,
    the_partner_receives_the_expanded_template_byte_for_byte,
    deliveries_to_one_partner_share_one_keep_alive_connection,
);
