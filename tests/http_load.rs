//! The async driver over real HTTP: postback-http's `reqwest` transport against a real
//! receiver on 127.0.0.1, on tokio. First the transport's contract (no redirects, timeouts,
//! forbidden addresses refused), then 10,000 conversions with bounded concurrency, every
//! delivery id counted by the receiver, over each client: reqwest, and the blocking ureq
//! transport on tokio's blocking threads.
//!
//! Throughput is printed; see it with `cargo test --release --test http_load -- --nocapture`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::TimeDelta;
use postback::access::Actor;
use postback::delivery::{Failure, FailureClass, RetryPolicy};
use postback::engine::{Engine, EngineConfig, Event};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::{Macro, ValueMap};
use postback::transport::{AsyncClock, AsyncTransport, NetPolicy, run_async};

use postback_http::clock::TokioClock;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport, UreqTransport};

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const CONVERSIONS: usize = 10_000;
const CONCURRENCY: usize = 64;
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The load tests take turns, so each measures its own throughput.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn loopback() -> ReqwestTransport {
    transport(
        NetPolicy::default().allow_loopback(),
        Duration::from_secs(10),
    )
}

/// A transport with this policy and timeout, the crate's defaults otherwise (the load runs keep
/// at most `CONCURRENCY` requests in flight, all to one host).
fn transport(policy: NetPolicy, timeout: Duration) -> ReqwestTransport {
    let config = Config::new(policy)
        .timeout(timeout)
        .max_connections_per_host(CONCURRENCY);
    ReqwestTransport::new(config).unwrap()
}

fn get(url: &str) -> http::Request<Vec<u8>> {
    http::Request::get(url).body(Vec::new()).unwrap()
}

/// What the transport made of a request: the status, or the failure class.
async fn send(transport: &ReqwestTransport, url: &str) -> Result<u16, Failure> {
    transport.send(get(url)).await.map(|r| r.status().as_u16())
}

#[tokio::test]
async fn the_async_transport_returns_a_302_and_never_follows_it() {
    let receiver = Receiver::start(|req, _| match req.path().as_str() {
        "/pb" => Response::status(302).header("Location", "/internal/admin"),
        _ => Response::ok(),
    });

    assert_eq!(send(&loopback(), &receiver.url("/pb?cid=1")).await, Ok(302));
    let paths: Vec<String> = receiver.requests().iter().map(|r| r.path()).collect();
    assert_eq!(paths, ["/pb"]);
}

#[tokio::test]
async fn the_async_transport_reports_a_stalled_partner_as_a_timeout() {
    let receiver = Receiver::start(|_, _| Response::stall(Duration::from_secs(20)));
    let transport = transport(
        NetPolicy::default().allow_loopback(),
        Duration::from_millis(300),
    );

    let result = send(&transport, &receiver.url("/pb?cid=1")).await;

    assert_eq!(result.map_err(|f| f.class()), Err(FailureClass::Timeout));
}

#[tokio::test]
async fn the_async_transport_refuses_a_host_name_that_resolves_to_a_forbidden_address() {
    let receiver = Receiver::start(|_, _| Response::ok());
    let transport = transport(NetPolicy::default(), Duration::from_secs(5));

    let url = format!("http://localhost:{}/pb?cid=1", receiver.addr().port());
    let result = send(&transport, &url).await;

    assert!(
        matches!(&result, Err(Failure::Forbidden(why)) if why.contains("loopback")),
        "{result:?}"
    );
    assert_eq!(receiver.connections(), 0);
}

#[tokio::test]
async fn the_async_transport_refuses_forbidden_ip_literals_in_every_spelling() {
    let receiver = Receiver::start(|_, _| Response::ok());
    let transport = transport(NetPolicy::default(), Duration::from_secs(5));
    let port = receiver.addr().port();

    // 127.0.0.1 as written, as one decimal number, and IPv4-mapped IPv6 (which the URL parser
    // writes as hex); none reaches the resolver, so the transport checks literals itself.
    for host in ["127.0.0.1", "2130706433", "[::ffff:127.0.0.1]"] {
        let result = send(&transport, &format!("http://{host}:{port}/pb?cid=1")).await;
        assert!(
            matches!(result, Err(Failure::Forbidden(_))),
            "{host}: {result:?}"
        );
    }
    assert_eq!(receiver.connections(), 0);
}

/// An engine with one postback to the receiver that carries the delivery id twice: in the URL
/// and as the idempotency header.
fn engine(receiver: &Receiver, retry: RetryPolicy) -> Engine {
    let config = EngineConfig::default()
        .net(NetPolicy::default().allow_loopback())
        .idempotency_header(IDEMPOTENCY_KEY)
        .retry(retry);
    let mut engine = Engine::new(config, Registry::new());
    let url = receiver.url("/pb?cid={sub1}&id={delivery_id}");
    let postback = Postback::builder(PostbackId::new(1))
        .partner(PARTNER)
        .url(url)
        .build()
        .unwrap();
    engine
        .create(
            TokioClock.now(),
            Actor::Network(ManagerId::new(1)),
            postback,
        )
        .unwrap();
    engine
}

/// What one load run saw.
struct Load {
    delivered: usize,
    retries: usize,
    other_events: Vec<Event>,
    seconds: f64,
}

/// Which client carries a load run.
#[derive(Debug, Clone, Copy)]
enum Client {
    Reqwest,
    Ureq,
}

/// The blocking ureq transport as an async one: each send on tokio's blocking threads.
fn ureq_on_tokio(transport: UreqTransport) -> impl AsyncTransport<Error = Failure> + Sync {
    move |request: http::Request<Vec<u8>>| {
        let transport = transport.clone();
        async move {
            let sent = tokio::task::spawn_blocking(move || {
                postback::transport::Transport::send(&transport, request)
            });
            sent.await.unwrap_or(Err(Failure::Interrupted))
        }
    }
}

/// Fire `CONVERSIONS` conversions and run them all through the async driver over `client`.
async fn load(engine: &mut Engine, client: Client) -> Load {
    match client {
        Client::Reqwest => load_over(engine, &loopback()).await,
        Client::Ureq => {
            let config = Config::new(NetPolicy::default().allow_loopback())
                .timeout(Duration::from_secs(10))
                .max_connections_per_host(CONCURRENCY);
            let transport = UreqTransport::new(config).unwrap();
            load_over(engine, &ureq_on_tokio(transport)).await
        }
    }
}

async fn load_over<T: AsyncTransport + Sync>(engine: &mut Engine, transport: &T) -> Load {
    for i in 0..CONVERSIONS {
        let trigger = Trigger::conversion(i as u64, PARTNER, OFFER);
        let values = ValueMap::new().with(Macro::SUB1, format!("clk-{i}").as_str());
        let fired = engine.handle_trigger(TokioClock.now(), &trigger, &values);
        assert_eq!(fired.deliveries.len(), 1);
    }
    let (mut delivered, mut retries, mut other_events) = (0, 0, Vec::new());
    let start = TokioClock.now();
    let deadline = start + TimeDelta::seconds(120);
    let report = run_async(
        engine,
        transport,
        &TokioClock,
        CONCURRENCY,
        deadline,
        |e| match e {
            Event::Delivered { .. } => delivered += 1,
            Event::RetryScheduled { .. } => retries += 1,
            e => other_events.push(e),
        },
    )
    .await;
    let seconds = (TokioClock.now() - start).as_seconds_f64();
    assert!(report.idle, "the run hit its deadline: {report:?}");
    assert!(engine.is_idle());
    Load {
        delivered,
        retries,
        other_events,
        seconds,
    }
}

/// Per delivery id: the statuses the receiver answered, in order. Checks that the URL's id and
/// the idempotency header agree.
fn by_delivery_id(receiver: &Receiver) -> HashMap<String, Vec<Option<u16>>> {
    let mut seen: HashMap<String, Vec<Option<u16>>> = HashMap::new();
    for (request, status) in receiver.exchanges() {
        let target = request.target_str();
        let id = target
            .rsplit_once("&id=")
            .map(|(_, id)| id.to_owned())
            .expect("an id in the URL");
        assert_eq!(
            request.header(IDEMPOTENCY_KEY),
            Some(id.as_str()),
            "{target}"
        );
        seen.entry(id).or_default().push(status);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_conversions_are_each_delivered_exactly_once() {
    all_delivered_once(Client::Reqwest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_conversions_over_ureq_are_each_delivered_exactly_once() {
    all_delivered_once(Client::Ureq).await;
}

async fn all_delivered_once(client: Client) {
    let _turn = LOAD.lock().await;
    let receiver = Receiver::start(|_, _| Response::ok());
    let mut engine = engine(&receiver, RetryPolicy::compressed(10_000));

    let run = load(&mut engine, client).await;

    eprintln!(
        "http_load ({client:?}): {CONVERSIONS} deliveries, all 200, concurrency {CONCURRENCY}: {:.2} s, {:.0} deliveries/s",
        run.seconds,
        CONVERSIONS as f64 / run.seconds
    );
    assert_eq!(run.delivered, CONVERSIONS);
    assert_eq!(run.retries, 0);
    assert!(run.other_events.is_empty(), "{:?}", run.other_events);
    let seen = by_delivery_id(&receiver);
    assert_eq!(seen.len(), CONVERSIONS, "none lost");
    assert!(seen.values().all(|s| s == &[Some(200)]), "none doubled");
    assert_eq!(receiver.count(), CONVERSIONS);
}

/// splitmix64: a deterministic pseudo-random stream from a seed.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_30_percent_of_requests_failing_every_conversion_is_still_delivered_exactly_once() {
    delivered_once_through_failures(Client::Reqwest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_30_percent_of_requests_failing_every_conversion_over_ureq_is_still_delivered_exactly_once()
 {
    delivered_once_through_failures(Client::Ureq).await;
}

async fn delivered_once_through_failures(client: Client) {
    const SEED: u64 = 0x5EED_2026;
    let _turn = LOAD.lock().await;
    // Request number n fails with 503 when the seeded stream says so: about 30 in 100.
    let receiver = Receiver::start(|_, n| {
        if splitmix(SEED ^ n as u64) % 100 < 30 {
            Response::status(503)
        } else {
            Response::ok()
        }
    });
    let mut engine = engine(&receiver, RetryPolicy::compressed(10_000));

    let run = load(&mut engine, client).await;

    let exchanges = receiver.exchanges();
    let failures = exchanges.iter().filter(|(_, s)| *s != Some(200)).count();
    eprintln!(
        "http_load ({client:?}): {CONVERSIONS} deliveries through {} requests ({failures} answered 503), concurrency \
         {CONCURRENCY}: {:.2} s, {:.0} deliveries/s, {:.0} requests/s",
        exchanges.len(),
        run.seconds,
        CONVERSIONS as f64 / run.seconds,
        exchanges.len() as f64 / run.seconds
    );
    assert_eq!(run.delivered, CONVERSIONS);
    assert!(
        run.other_events.is_empty(),
        "nothing gave up or was disabled: {:?}",
        run.other_events
    );
    assert_eq!(run.retries, failures, "every failure was retried");
    assert_eq!(exchanges.len(), CONVERSIONS + failures);
    assert!(
        (2_000..6_000).contains(&failures),
        "about 30% of requests failed: {failures}"
    );
    let seen = by_delivery_id(&receiver);
    assert_eq!(seen.len(), CONVERSIONS, "none lost");
    for (id, statuses) in &seen {
        // Zero or more 503s, then exactly one 200, then nothing.
        let (last, earlier) = statuses.split_last().unwrap();
        assert_eq!(*last, Some(200), "delivery {id}: {statuses:?}");
        assert!(
            earlier.iter().all(|s| *s == Some(503)),
            "delivery {id}: {statuses:?}"
        );
    }
}
