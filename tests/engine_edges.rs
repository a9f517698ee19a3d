//! Edge cases of the engine found in review: restarts, changes behind the engine's back,
//! deletes while a request is out, shards, and secrets in debug output.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use postback::access::Actor;
use postback::delivery::{DeliveryId, DisablePolicy, Failure, FailureClass, RetryPolicy};
use postback::engine::{Engine, EngineConfig, Event};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId, Status};
use postback::registry::{Registry, Trigger};
use postback::template::{Catalog, Macro, Options, Template, ValueMap};

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const PB: PostbackId = PostbackId::new(1);
const MANAGER: Actor = Actor::Network(ManagerId::new(1));

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

fn engine(config: EngineConfig) -> Engine {
    let mut reg = Registry::new();
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .url("https://t.example/pb?cid={sub1}&token=s3cret&d={delivery_id}")
        .build()
        .unwrap();
    reg.insert(pb).unwrap();
    Engine::new(config.retry(RetryPolicy::default().jitter(0, 0)), reg)
}

/// A conversion with a trigger id of its own.
fn convert(e: &mut Engine, now: DateTime<Utc>) -> DeliveryId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let values = ValueMap::new().with(Macro::SUB1, "clk");
    let fired = e.handle_trigger(now, &Trigger::conversion(id, PARTNER, OFFER), &values);
    fired.deliveries[0].1
}

fn status(code: u16) -> Result<http::Response<Vec<u8>>, Failure> {
    Ok(http::Response::builder()
        .status(code)
        .body(Vec::new())
        .unwrap())
}

fn events(e: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

#[test]
fn a_request_in_flight_at_a_snapshot_is_sent_again_when_its_lease_runs_out_after_a_restore() {
    let mut e = engine(EngineConfig::default());
    let d = convert(&mut e, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    assert_eq!(tx.delivery, d);

    let saved = serde_json::to_string(&e).unwrap();
    let mut restored =
        Engine::restore(e.config().clone(), serde_json::from_str(&saved).unwrap()).unwrap();
    // Restored as it was: in flight, not idle, due again when the lease (5 minutes) runs out.
    assert!(!restored.is_idle());
    let lease_end = t0() + TimeDelta::minutes(5);
    assert_eq!(restored.poll_timeout(), Some(lease_end));
    assert!(
        restored
            .poll_transmit(lease_end - TimeDelta::seconds(1))
            .is_none()
    );
    let again = restored.poll_transmit(lease_end).unwrap();
    assert_eq!(again.delivery, d);
    assert_eq!(again.key, tx.key);
    assert_eq!(again.request.uri(), tx.request.uri());
    restored.handle_response(lease_end, d, status(200)).unwrap();
    let evs = events(&mut restored);
    let [
        Event::RetryScheduled {
            failure,
            counted: false,
            ..
        },
        Event::Delivered { record },
    ] = &evs[..]
    else {
        panic!("{evs:?}")
    };
    assert_eq!(*failure, FailureClass::Interrupted);
    assert_eq!(record.attempts().len(), 2);
    assert_eq!(restored.health(PB).map(|h| h.consecutive_failures), Some(0));
}

#[test]
fn a_postback_paused_through_registry_mut_is_not_sent_to() {
    let mut e = engine(EngineConfig::default());
    let d = convert(&mut e, t0());
    e.registry_mut().pause(PB).unwrap();
    assert!(e.poll_transmit(t0()).is_none());
    assert_eq!(
        events(&mut e),
        [Event::Held {
            delivery: d,
            postback: PB
        }]
    );
}

#[test]
fn a_postback_removed_through_registry_mut_ends_its_deliveries_with_a_report() {
    let mut e = engine(EngineConfig::default());
    let d = convert(&mut e, t0());
    e.registry_mut().remove(PB).unwrap();
    assert!(e.poll_transmit(t0()).is_none());
    match &events(&mut e)[..] {
        [Event::GaveUp { record }] => assert_eq!(record.id(), d),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.deliveries().count(), 0);
}

#[test]
fn a_delivery_whose_postback_is_deleted_while_its_request_is_out_is_reported_delivered_if_it_was() {
    let mut e = engine(EngineConfig::default());
    let d = convert(&mut e, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    e.delete(t0(), MANAGER, PB).unwrap();
    assert_eq!(events(&mut e), []);
    e.handle_response(t0(), tx.delivery, status(200)).unwrap();
    match &events(&mut e)[..] {
        [Event::Delivered { record }] => assert_eq!(record.id(), d),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_request_of_a_deleted_postback_ends_instead_of_waiting_forever() {
    let mut e = engine(EngineConfig::default());
    convert(&mut e, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    e.delete(t0(), MANAGER, PB).unwrap();
    e.handle_response(t0(), tx.delivery, status(500)).unwrap();
    assert!(matches!(events(&mut e)[..], [Event::GaveUp { .. }]));
    assert_eq!(e.deliveries().count(), 0);
    assert!(e.is_idle());
}

#[test]
fn with_disabling_off_the_failure_history_stays_empty() {
    let mut e = engine(EngineConfig::default().disable(DisablePolicy::Never));
    let mut now = t0();
    let mut sends = 0;
    for _ in 0..50 {
        convert(&mut e, now);
        while let Some(tx) = e.poll_transmit(now) {
            e.handle_response(now, tx.delivery, status(500)).unwrap();
            sends += 1;
        }
        now += TimeDelta::seconds(1);
    }
    let h = e.health(PB).unwrap();
    assert!(sends > 50, "retries fell due too");
    assert_eq!(h.consecutive_failures, sends);
    assert!(h.recent_failures.is_empty());
}

#[test]
fn after_a_re_enable_the_retry_schedule_starts_again_from_ten_seconds() {
    let mut e = engine(EngineConfig::default());
    convert(&mut e, t0());
    let mut now = t0();
    // 25 failures disable the postback and hold the delivery.
    for _ in 0..25 {
        let tx = e.poll_transmit(now).unwrap();
        e.handle_response(now, tx.delivery, status(500)).unwrap();
        if let Some(t) = e.poll_timeout() {
            now = t;
        }
    }
    assert!(matches!(
        e.registry().get(PB).unwrap().status(),
        Status::Disabled { .. }
    ));
    e.enable(now, MANAGER, PB).unwrap();
    let tx = e.poll_transmit(now).unwrap();
    e.handle_response(now, tx.delivery, status(500)).unwrap();
    assert_eq!(e.poll_timeout(), Some(now + TimeDelta::seconds(10)));
}

#[test]
fn debug_output_of_a_transmit_hides_the_token() {
    let mut e = engine(EngineConfig::default());
    convert(&mut e, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    let shown = format!("{tx:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("token=***"), "{shown}");
}

#[test]
fn a_rebuilt_postback_keeps_its_custom_macros() {
    let mut catalog = Catalog::standard();
    let clickref = catalog.register("clickref").unwrap();
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .catalog(catalog)
        .url("https://t.example/pb?cid={sub1}&ref={clickref}")
        .build()
        .unwrap();
    let again = pb
        .to_builder()
        .url("https://t.example/v2?cid={sub2}&ref={clickref}")
        .build()
        .unwrap();
    assert_eq!(
        again.template().macros().collect::<Vec<_>>(),
        [Macro::SUB2, clickref]
    );
    let t = Template::compile(
        again.template().as_str(),
        Default::default(),
        &Catalog::standard(),
        Options::default(),
    );
    assert!(
        t.is_err(),
        "without the catalogue the custom macro is unknown"
    );
}

#[test]
fn attempt_records_redact_a_secret_in_the_path() {
    let mut reg = Registry::new();
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .url("https://k.example/K3YS3CRET/postback?subid={sub1}")
        .secret("K3YS3CRET")
        .build()
        .unwrap();
    reg.insert(pb).unwrap();
    let mut e = Engine::new(EngineConfig::default(), reg);
    convert(&mut e, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    // The partner gets the real URL; the records do not keep the key.
    assert_eq!(
        tx.request.uri(),
        "https://k.example/K3YS3CRET/postback?subid=clk"
    );
    e.handle_response(t0(), tx.delivery, status(200)).unwrap();
    match &events(&mut e)[..] {
        [Event::Delivered { record }] => {
            assert_eq!(
                record.attempts()[0].url,
                "https://k.example/***/postback?subid=clk"
            );
            assert!(!format!("{record:?}").contains("K3YS3CRET"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_postback_edited_between_the_trigger_and_the_first_send_sends_the_new_url() {
    let edited = |url: &str| {
        Postback::builder(PB)
            .partner(PARTNER)
            .url(url)
            .build()
            .unwrap()
    };
    // Behind the engine's back, through the registry.
    let mut e = engine(EngineConfig::default());
    convert(&mut e, t0());
    e.registry_mut()
        .update(edited("https://new.example/pb?cid={sub1}"))
        .unwrap();
    let tx = e.poll_transmit(t0()).unwrap();
    assert_eq!(tx.request.uri(), "https://new.example/pb?cid=clk");
    // Through the engine, on behalf of a manager.
    let mut e = engine(EngineConfig::default());
    convert(&mut e, t0());
    e.edit(
        t0(),
        MANAGER,
        edited("https://other.example/pb?c={sub1}&d={delivery_id}"),
    )
    .unwrap();
    let tx = e.poll_transmit(t0()).unwrap();
    assert!(
        tx.request
            .uri()
            .to_string()
            .starts_with("https://other.example/pb?c=clk&d="),
        "{}",
        tx.request.uri()
    );
    // Unedited, the first send is the request the trigger's check made.
    let mut e = engine(EngineConfig::default().idempotency_header("Idempotency-Key"));
    convert(&mut e, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    let key = tx.key.to_string();
    assert_eq!(
        tx.request.uri().to_string(),
        format!("https://t.example/pb?cid=clk&token=s3cret&d={key}")
    );
    assert_eq!(tx.request.headers()["idempotency-key"], key.as_str());
    assert!(!format!("{tx:?}").contains("s3cret"));
}
