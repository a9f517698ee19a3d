//! A bad partner cannot hurt the network or other partners: secrets never leave in clear, one
//! value cannot get a postback disabled, the network's confidential values stay the network's,
//! quotas and per-host fairness hold, and the network policy applies on every path.

use chrono::{DateTime, TimeDelta, Utc};
use postback::access::{AccessError, Actor, Settings};
use postback::delivery::{Failure, FailureClass, GiveUpReason, RenderError, State};
use postback::engine::{Engine, EngineConfig, EngineError, Event, FireError};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::net::NetPolicy;
use postback::registry::{Registry, Trigger};
use postback::template::{Macro, ValueMap};
use proptest::prelude::*;

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const PB: PostbackId = PostbackId::new(1);
const MANAGER: Actor = Actor::Network(ManagerId::new(100));

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

fn status(code: u16) -> Result<http::Response<Vec<u8>>, Failure> {
    Ok(http::Response::builder()
        .status(code)
        .body(Vec::new())
        .unwrap())
}

fn postback(id: u64, url: &str) -> Postback {
    Postback::builder(PostbackId::new(id))
        .partner(PARTNER)
        .url(url)
        .build()
        .unwrap()
}

fn engine(config: EngineConfig, postbacks: Vec<Postback>) -> Engine {
    let mut e = Engine::new(config, Registry::new());
    for p in postbacks {
        e.create(t0(), MANAGER, p).unwrap();
    }
    e
}

fn events(e: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn convert(e: &mut Engine, id: u64, values: &ValueMap) -> postback::engine::Fired {
    e.handle_trigger(t0(), &Trigger::conversion(id, PARTNER, OFFER), values)
}

/// Answer every request due (now and later) with `answer`, until nothing is left.
fn run(
    e: &mut Engine,
    mut answer: impl FnMut(&http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, Failure>,
) -> Vec<Event> {
    let mut now = t0();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        while let Some(tx) = e.poll_transmit(now) {
            let r = answer(&tx.request);
            e.handle_response(now, tx.delivery, r).unwrap();
        }
        out.extend(events(e));
        match e.poll_timeout() {
            Some(t) => now = now.max(t),
            None => return out,
        }
    }
    panic!("never settled");
}

// ---------------------------------------------------------------------------------------------
// Secrets never leave in clear
// ---------------------------------------------------------------------------------------------

const SECRET_URL: &str = "https://t.example/K3YPATH/pb?cid={sub1}&token={sub2}";

fn secret_postback() -> Postback {
    Postback::builder(PB)
        .partner(PARTNER)
        .url(SECRET_URL)
        .secret("K3YPATH")
        .build()
        .unwrap()
}

fn secret_values() -> ValueMap {
    ValueMap::new()
        .with(Macro::SUB1, "clk-1")
        .with(Macro::SUB2, "s3cretvalue")
}

#[test]
fn a_serialized_delivered_event_contains_no_secret() {
    let mut e = engine(EngineConfig::default(), vec![secret_postback()]);
    let _ = convert(&mut e, 1, &secret_values());
    let evs = run(&mut e, |_| status(200));
    let json = serde_json::to_string(&evs).unwrap();
    assert!(json.contains("delivered"), "{json}");
    assert!(!json.contains("s3cretvalue"), "{json}");
    assert!(!json.contains("K3YPATH"), "{json}");
    // Nor does the engine's snapshot keep a finished delivery's values.
    let state = serde_json::to_string(&e).unwrap();
    assert!(!state.contains("s3cretvalue"), "{state}");
}

#[test]
fn transport_error_text_never_carries_the_url_secrets_into_attempts_or_the_manager_notification() {
    let mut e = engine(EngineConfig::default(), vec![secret_postback()]);
    let _ = convert(&mut e, 1, &secret_values());
    // As reqwest and ureq do: the error text quotes the whole URL.
    let evs = run(&mut e, |req| {
        Err(Failure::Connect(format!(
            "error sending request for url ({}): connection refused",
            req.uri()
        )))
    });
    let notify = evs
        .iter()
        .find_map(|ev| match ev {
            Event::NotifyNetworkManager { attempts, .. } => Some(attempts),
            _ => None,
        })
        .expect("25 failures disable the postback");
    assert_eq!(notify.len(), 25);
    for a in notify {
        assert!(a.body.contains("connection refused"), "{}", a.body);
        for secret in ["s3cretvalue", "K3YPATH"] {
            assert!(!a.body.contains(secret), "{}", a.body);
            assert!(!a.url.contains(secret), "{}", a.url);
        }
    }
    let json = serde_json::to_string(&evs).unwrap();
    assert!(!json.contains("s3cretvalue") && !json.contains("K3YPATH"));
}

#[test]
fn a_response_body_that_echoes_the_request_is_recorded_without_its_secrets() {
    let mut e = engine(EngineConfig::default(), vec![secret_postback()]);
    let _ = convert(&mut e, 1, &secret_values());
    let evs = run(&mut e, |req| {
        Ok(http::Response::builder()
            .status(200)
            .body(format!("OK got {}", req.uri()).into_bytes())
            .unwrap())
    });
    let Some(Event::Delivered { record }) = evs.first() else {
        panic!("{evs:?}")
    };
    let body = &record.attempts()[0].body;
    assert_eq!(body, "OK got https://t.example/***/pb?cid=clk-1&token=***");
}

#[test]
fn debug_output_of_a_template_a_transmit_and_a_send_action_redacts_literal_secrets() {
    let pb = secret_postback();
    assert!(!format!("{:?}", pb.template()).contains("K3YPATH"));
    let mut e = engine(EngineConfig::default(), vec![pb.clone()]);
    let _ = convert(&mut e, 1, &secret_values());
    let tx = e.poll_transmit(t0()).unwrap();
    let shown = format!("{tx:?}");
    assert!(
        !shown.contains("K3YPATH") && !shown.contains("s3cretvalue"),
        "{shown}"
    );
    assert!(shown.contains("token=***"), "{shown}");

    let mut d = postback::delivery::Delivery::new(
        postback::delivery::DeliveryId::new(9),
        Trigger::conversion(9, PARTNER, OFFER).key(PB),
        postback::template::MacroValues::to_stored(&secret_values(), &[]),
        t0(),
        std::time::Duration::ZERO,
    );
    let action = d.poll(t0(), &postback::delivery::SendContext::new(&pb));
    let shown = format!("{action:?}");
    assert!(
        shown.starts_with("Send(GET https://t.example/***/pb"),
        "{shown}"
    );
    assert!(!shown.contains("s3cretvalue"), "{shown}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the secret value, and whichever secret-looking name carries it, no record of
    /// the delivery holds it: not the attempt URL, not the echoed error text, not the events.
    #[test]
    fn no_secret_value_reaches_a_record(
        secret in "[A-Za-z0-9]{8,24}",
        name in prop::sample::select(vec![
            "token", "api_key", "hmac", "jwt", "pwd", "bearer", "session_id", "nonce", "Sig",
        ]),
    ) {
        let url = format!("https://t.example/pb?cid={{sub1}}&{name}={{sub2}}");
        let mut e = engine(EngineConfig::default(), vec![postback(1, &url)]);
        let values = ValueMap::new().with(Macro::SUB1, "c").with(Macro::SUB2, secret.as_str());
        let _ = convert(&mut e, 1, &values);
        let mut n = 0;
        let evs = run(&mut e, |req| {
            n += 1;
            if n < 3 {
                Err(Failure::Dns(format!("dns error for {}: no record", req.uri())))
            } else {
                status(200)
            }
        });
        let json = serde_json::to_string(&evs).unwrap();
        prop_assert!(!json.contains(&secret), "{}", json);
        prop_assert!(json.contains("dns error"));
    }
}

// ---------------------------------------------------------------------------------------------
// One value cannot get a partner's postback disabled
// ---------------------------------------------------------------------------------------------

#[test]
fn a_414_caused_by_one_long_value_ends_that_delivery_and_never_counts_toward_disabling() {
    let mut e = engine(
        EngineConfig::default().max_value_len(4096),
        vec![postback(1, "https://t.example/pb?cid={sub1}")],
    );
    let long = "x".repeat(3000);
    for i in 0..30 {
        let fired = convert(&mut e, i, &ValueMap::new().with(Macro::SUB1, long.as_str()));
        assert_eq!(fired.deliveries.len(), 1);
    }
    let evs = run(&mut e, |_| status(414));
    let gave_up: Vec<_> = evs
        .iter()
        .filter_map(|ev| match ev {
            Event::GaveUp { record } => Some(record.state().clone()),
            _ => None,
        })
        .collect();
    assert_eq!(gave_up.len(), 30);
    assert!(gave_up.iter().all(|s| matches!(
        s,
        State::GaveUp {
            reason: GiveUpReason::Terminal {
                failure: FailureClass::Rejected(414)
            },
            ..
        }
    )));
    assert!(e.registry().get(PB).unwrap().status().is_active());
    assert_eq!(e.health(PB).map_or(0, |h| h.consecutive_failures), 0);
    assert!(
        !evs.iter()
            .any(|ev| matches!(ev, Event::PostbackDisabled { .. }))
    );
}

#[test]
fn a_431_ends_the_delivery_uncounted_too() {
    let mut e = engine(
        EngineConfig::default(),
        vec![postback(1, "https://t.example/pb?cid={sub1}")],
    );
    let _ = convert(&mut e, 1, &ValueMap::new().with(Macro::SUB1, "c"));
    let evs = run(&mut e, |_| status(431));
    assert!(matches!(&evs[..], [Event::GaveUp { .. }]), "{evs:?}");
    assert_eq!(e.health(PB).map_or(0, |h| h.consecutive_failures), 0);
}

#[test]
fn a_value_over_the_length_cap_is_refused_before_sending() {
    let mut e = engine(
        EngineConfig::default().max_value_len(100),
        vec![postback(1, "https://t.example/pb?cid={sub1}")],
    );
    let fired = convert(
        &mut e,
        1,
        &ValueMap::new().with(Macro::SUB1, "x".repeat(101).as_str()),
    );
    assert_eq!(fired.deliveries, []);
    let [(pid, FireError::Render(RenderError::ValueTooLong { name, len, max }))] =
        &fired.errors[..]
    else {
        panic!("{:?}", fired.errors)
    };
    assert_eq!((*pid, name.as_str(), *len, *max), (PB, "sub1", 101, 100));
    assert!(fired.errors[0].1.to_string().contains("{sub1}"));
    // A value the template does not use is no reason to refuse.
    let fired = convert(
        &mut e,
        2,
        &ValueMap::new()
            .with(Macro::SUB1, "ok")
            .with(Macro::SUB9, "y".repeat(5000).as_str()),
    );
    assert_eq!(fired.deliveries.len(), 1);
    assert!(e.poll_transmit(t0()).is_some());
}

// ---------------------------------------------------------------------------------------------
// The network's confidential values stay the network's
// ---------------------------------------------------------------------------------------------

#[test]
fn a_partner_may_not_send_itself_the_networks_confidential_values_but_the_network_may() {
    let mut e = engine(EngineConfig::default(), vec![]);
    let partner = Actor::Partner(PARTNER);
    for (i, name) in ["revenue", "sale_amount", "adv1", "adv10", "session_ip"]
        .into_iter()
        .enumerate()
    {
        let pb = postback(
            i as u64 + 1,
            &format!("https://t.example/pb?cid={{sub1}}&x={{{name}}}"),
        );
        let err = e.create(t0(), partner, pb.clone()).unwrap_err();
        assert_eq!(
            err,
            EngineError::Access(AccessError::NetworkOnlyMacro {
                name: name.to_owned()
            })
        );
        assert!(err.to_string().contains(&format!("{{{name}}}")), "{err}");
        e.create(t0(), MANAGER, pb).unwrap();
    }
    // Nor may a partner edit one in.
    let own = postback(20, "https://t.example/pb?cid={sub1}");
    e.create(t0(), partner, own.clone()).unwrap();
    let sneaky = own
        .to_builder()
        .url("https://t.example/pb?cid={sub1}&r={revenue}")
        .build()
        .unwrap();
    assert!(matches!(
        e.edit(t0(), partner, sneaky),
        Err(EngineError::Access(AccessError::NetworkOnlyMacro { .. }))
    ));
    // The network decides which macros are gated.
    e.set_access(Settings::default().network_only_macros([Macro::PAYOUT]));
    assert!(
        e.create(
            t0(),
            partner,
            postback(21, "https://t.example/pb?cid={sub1}&r={revenue}")
        )
        .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Quotas and fairness
// ---------------------------------------------------------------------------------------------

#[test]
fn a_partner_past_its_postback_quota_is_refused_with_a_clear_error() {
    let mut e = engine(
        EngineConfig::default().access(Settings::default().max_postbacks_per_partner(3)),
        vec![],
    );
    for i in 1..=3 {
        e.create(
            t0(),
            Actor::Partner(PARTNER),
            postback(i, "https://t.example/pb?cid={sub1}"),
        )
        .unwrap();
    }
    let err = e
        .create(
            t0(),
            Actor::Partner(PARTNER),
            postback(4, "https://t.example/pb?cid={sub1}"),
        )
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::Access(AccessError::TooManyPostbacks {
            partner: PARTNER,
            max: 3
        })
    );
    assert!(err.to_string().contains("delete one first"), "{err}");
    // Room again after a delete.
    e.delete(t0(), MANAGER, PostbackId::new(1)).unwrap();
    e.create(
        t0(),
        Actor::Partner(PARTNER),
        postback(4, "https://t.example/pb?cid={sub1}"),
    )
    .unwrap();
}

#[test]
fn one_trigger_creates_at_most_the_configured_number_of_deliveries_and_reports_the_rest() {
    let mut reg = Registry::new();
    for i in 1..=2000 {
        reg.insert(postback(i, "https://t.example/pb?cid={sub1}"))
            .unwrap();
    }
    let mut e = Engine::new(EngineConfig::default(), reg);
    let fired = convert(&mut e, 1, &ValueMap::new().with(Macro::SUB1, "c"));
    assert_eq!(fired.deliveries.len(), 20);
    assert_eq!(fired.errors.len(), 1980);
    assert!(
        fired
            .errors
            .iter()
            .all(|(_, err)| *err == FireError::TooManyDeliveries { max: 20 })
    );
}

/// 48 conversions for a partner at `stalled.example` (postback 1), then one for another
/// partner at `healthy.example` (postback 2).
fn stalled_and_healthy() -> Engine {
    let stalled = postback(1, "https://stalled.example/pb?cid={sub1}");
    let healthy = Postback::builder(PostbackId::new(2))
        .partner(PartnerId::new(8))
        .url("https://healthy.example/pb?cid={sub1}")
        .build()
        .unwrap();
    let mut e = engine(EngineConfig::default(), vec![stalled, healthy]);
    for i in 0..48 {
        let _ = convert(&mut e, i, &ValueMap::new().with(Macro::SUB1, "s"));
    }
    let _ = e.handle_trigger(
        t0(),
        &Trigger::conversion(100, PartnerId::new(8), OFFER),
        &ValueMap::new().with(Macro::SUB1, "h"),
    );
    e
}

#[test]
fn a_partner_that_never_answers_cannot_starve_another_partners_deliveries() {
    let mut e = stalled_and_healthy();
    // Nothing is answered: the stalled partner holds its share, and the healthy one still gets
    // its request out at once.
    let mut out = Vec::new();
    while let Some(tx) = e.poll_transmit(t0()) {
        out.push(tx);
    }
    let to_stalled = out.iter().filter(|t| t.postback == PB).count();
    assert_eq!(to_stalled, 8);
    assert!(out.iter().any(|t| t.postback == PostbackId::new(2)));
    // Each answer frees a slot for the next waiting delivery of that host, in order.
    let first = out.iter().find(|t| t.postback == PB).unwrap().delivery;
    e.handle_response(t0(), first, status(200)).unwrap();
    let next = e.poll_transmit(t0()).unwrap();
    assert_eq!(next.postback, PB);
    assert!(e.poll_transmit(t0()).is_none());
    // When leases run out nothing is stranded: the requests never answered are sent again
    // with the same keys, the waiting ones follow, and every conversion is delivered once.
    let later = t0() + TimeDelta::minutes(6);
    for _ in 0..100 {
        let Some(tx) = e.poll_transmit(later) else {
            break;
        };
        e.handle_response(later, tx.delivery, status(200)).unwrap();
    }
    let delivered = events(&mut e)
        .iter()
        .filter(|ev| matches!(ev, Event::Delivered { .. }))
        .count();
    assert_eq!(delivered, 49);
    assert_eq!(e.deliveries().count(), 0);
    assert!(e.is_idle());
}

// ---------------------------------------------------------------------------------------------
// The network policy on every path
// ---------------------------------------------------------------------------------------------

#[test]
fn a_postback_inserted_into_the_registry_by_hand_never_hands_the_transport_a_forbidden_url() {
    let mut reg = Registry::new();
    for (i, url) in [
        "http://127.0.0.1/pb?cid={sub1}",
        "http://169.254.169.254/latest/meta-data?cid={sub1}",
        "http://2852039166/pb?cid={sub1}",
        "http://[::ffff:10.0.0.1]/pb?cid={sub1}",
        "http://localhost:8080/pb?cid={sub1}",
    ]
    .into_iter()
    .enumerate()
    {
        reg.insert(
            Postback::builder(PostbackId::new(i as u64 + 1))
                .partner(PARTNER)
                .offer(OfferId::new(i as u64))
                .url(url)
                .build()
                .unwrap(),
        )
        .unwrap();
    }
    let mut e = Engine::new(EngineConfig::default(), reg);
    for i in 0..5 {
        let fired = e.handle_trigger(
            t0(),
            &Trigger::conversion(i, PARTNER, OfferId::new(i)),
            &ValueMap::new().with(Macro::SUB1, "c"),
        );
        assert_eq!(fired.deliveries.len(), 1);
    }
    let evs = run(&mut e, |req| {
        panic!("the transport was handed {}", req.uri())
    });
    // Refused locally, never counted: they give up after the refusal budget, reported.
    assert!(
        !evs.iter()
            .any(|ev| matches!(ev, Event::PostbackDisabled { .. }))
    );
    let refused = evs
        .iter()
        .filter(|ev| {
            matches!(
                ev,
                Event::RetryScheduled {
                    failure: FailureClass::Forbidden,
                    counted: false,
                    ..
                }
            )
        })
        .count();
    assert!(refused >= 5, "{refused}");
}

#[test]
fn the_ports_of_the_network_policy_are_enforced_at_send_time() {
    let mut reg = Registry::new();
    reg.insert(postback(1, "https://t.example:8443/pb?cid={sub1}"))
        .unwrap();
    let mut e = Engine::new(
        EngineConfig::default().net(NetPolicy::default().only_ports([443])),
        reg,
    );
    let _ = convert(&mut e, 1, &ValueMap::new().with(Macro::SUB1, "c"));
    assert!(
        e.poll_transmit(t0()).is_none(),
        "no request for a forbidden port"
    );
    assert!(matches!(
        e.poll_event(),
        Some(Event::RetryScheduled {
            failure: FailureClass::Forbidden,
            counted: false,
            ..
        })
    ));
}

/// Time for the async driver from tokio's clock, which the test pauses: no test waits for real.
struct PausedClock(tokio::time::Instant, DateTime<Utc>);

impl postback::transport::AsyncClock for PausedClock {
    fn now(&self) -> DateTime<Utc> {
        self.1 + TimeDelta::from_std(self.0.elapsed()).unwrap()
    }
    fn sleep_until(&self, t: DateTime<Utc>) -> impl std::future::Future<Output = ()> + Send {
        let wait = (t - self.now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait)
    }
}

#[tokio::test(start_paused = true)]
async fn through_the_async_driver_a_healthy_partner_is_delivered_before_a_stalled_one_answers() {
    let mut e = stalled_and_healthy();
    // The stalled partner answers each request after 30 s; the healthy one at once.
    let transport = |req: http::Request<Vec<u8>>| async move {
        if req.uri().host() == Some("stalled.example") {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
        status(200)
    };
    let clock = PausedClock(tokio::time::Instant::now(), t0());
    let mut order = Vec::new();
    let report = postback::transport::run_async(
        &mut e,
        &transport,
        &clock,
        16,
        t0() + TimeDelta::hours(1),
        |ev| {
            if let Event::Delivered { record } = ev {
                order.push(record.postback());
            }
        },
    )
    .await;
    assert!(report.idle);
    assert_eq!(order.len(), 49);
    // Without a per-host limit, 16 slots would all wait on the stalled partner first.
    assert_eq!(order[0], PostbackId::new(2), "{order:?}");
}
