//! Deliveries a network can trust: held and retried sends reach the postback's current URL,
//! holding is per postback, triggers are idempotent by their id, keys never repeat, restores are
//! checked and never strand work, and configuration is not state.

use chrono::{DateTime, TimeDelta, Utc};
use postback::access::{AccessError, Actor, Operation, Settings};
use postback::delivery::{Delivery, DeliveryId, Failure, FailureClass, RetryPolicy, State};
use postback::engine::{Engine, EngineConfig, EngineError, Event, RestoreError, Snapshot};
use postback::model::{
    ConfigError, DeliveryKey, Level, ManagerId, Method, OfferId, PartnerId, Postback, PostbackId,
    Purpose, Status, TriggerId, TriggerKind,
};
use postback::registry::{Registry, RegistryError, Trigger};
use postback::template::{Macro, SampleValues, ValueMap};
use postback::transport::{Clock, run_blocking};

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const PB: PostbackId = PostbackId::new(1);
const SIBLING: PostbackId = PostbackId::new(2);
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

fn values(click: &str) -> ValueMap {
    ValueMap::new()
        .with(Macro::SUB1, click)
        .with(Macro::SUB2, "s3cret-value")
}

fn specific(id: PostbackId, url: &str) -> Postback {
    Postback::builder(id)
        .partner(PARTNER)
        .offer(OFFER)
        .url(url)
        .build()
        .unwrap()
}

fn engine_with(config: EngineConfig, postbacks: Vec<Postback>) -> Engine {
    let mut e = Engine::new(
        config.retry(RetryPolicy::default().jitter(0, 0)),
        Registry::new(),
    );
    for p in postbacks {
        e.create(t0(), MANAGER, p).unwrap();
    }
    e
}

fn engine(postbacks: Vec<Postback>) -> Engine {
    engine_with(EngineConfig::default(), postbacks)
}

fn events(e: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn convert(e: &mut Engine, now: DateTime<Utc>, id: u64, click: &str) -> Vec<DeliveryId> {
    let fired = e.handle_trigger(
        now,
        &Trigger::conversion(id, PARTNER, OFFER),
        &values(click),
    );
    assert_eq!(fired.errors, []);
    fired
        .deliveries
        .iter()
        .chain(&fired.held)
        .map(|(_, d)| *d)
        .collect()
}

/// Send everything due at `now`, answering each request with `code`; the URIs sent, in order.
fn answer_all(e: &mut Engine, now: DateTime<Utc>, code: u16) -> Vec<String> {
    let mut sent = Vec::new();
    while let Some(tx) = e.poll_transmit(now) {
        sent.push(tx.request.uri().to_string());
        e.handle_response(now, tx.delivery, status(code)).unwrap();
    }
    sent
}

/// Fail postback `PB` 25 times (a partner whose URL is broken), until it is disabled.
fn fail_until_disabled(e: &mut Engine) -> DateTime<Utc> {
    let mut now = t0();
    for _ in 0..200 {
        answer_all(e, now, 404);
        if e.registry().get(PB).unwrap().status().is_disabled() {
            return now;
        }
        now = e.poll_timeout().expect("a retry is scheduled");
    }
    panic!("never disabled");
}

// ---------------------------------------------------------------------------------------------
// A delivery keeps its values; every send uses the postback's current template
// ---------------------------------------------------------------------------------------------

#[test]
fn held_conversions_reach_the_fixed_url_exactly_once_after_the_manager_enables_the_postback() {
    let broken = "https://t.example/old-path?cid={sub1}&d={delivery_id}";
    let mut e = engine(vec![specific(PB, broken)]);
    convert(&mut e, t0(), 1, "clk-1");
    let disabled_at = fail_until_disabled(&mut e);
    // While disabled, two more conversions are held (nothing else serves them).
    for (id, click) in [(2, "clk-2"), (3, "clk-3")] {
        let fired = e.handle_trigger(
            disabled_at,
            &Trigger::conversion(id, PARTNER, OFFER),
            &values(click),
        );
        assert_eq!(fired.held.len(), 1);
    }
    assert_eq!(e.deliveries_of(PB).count(), 3);

    // The partner fixes its URL; the manager edits and enables the postback.
    let fixed = specific(PB, "https://t.example/new-path?cid={sub1}&d={delivery_id}");
    e.edit(disabled_at, MANAGER, fixed).unwrap();
    e.enable(disabled_at, MANAGER, PB).unwrap();
    let mut sent = answer_all(&mut e, disabled_at, 200);
    sent.sort();
    assert_eq!(
        sent,
        [
            "https://t.example/new-path?cid=clk-1&d=1.1.conversion.0",
            "https://t.example/new-path?cid=clk-2&d=2.1.conversion.0",
            "https://t.example/new-path?cid=clk-3&d=3.1.conversion.0",
        ]
    );
    let delivered = events(&mut e)
        .into_iter()
        .filter(|ev| matches!(ev, Event::Delivered { .. }))
        .count();
    assert_eq!(delivered, 3);
    assert!(e.is_idle());
    assert_eq!(e.deliveries().count(), 0);
}

#[test]
fn a_retry_after_an_edit_goes_to_the_new_url_and_each_attempt_records_the_request_that_went_out() {
    let mut e = engine(vec![specific(PB, "https://t.example/v1?cid={sub1}")]);
    convert(&mut e, t0(), 1, "clk-1");
    assert_eq!(
        answer_all(&mut e, t0(), 503),
        ["https://t.example/v1?cid=clk-1"]
    );
    e.edit(
        t0(),
        MANAGER,
        specific(PB, "https://t.example/v2?cid={sub1}&token={sub2}"),
    )
    .unwrap();
    let retry = e.poll_timeout().unwrap();
    assert_eq!(
        answer_all(&mut e, retry, 200),
        ["https://t.example/v2?cid=clk-1&token=s3cret-value"]
    );
    let record = events(&mut e)
        .into_iter()
        .find_map(|ev| match ev {
            Event::Delivered { record } => Some(record),
            _ => None,
        })
        .unwrap();
    let urls: Vec<&str> = record.attempts().iter().map(|a| a.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://t.example/v1?cid=clk-1",
            "https://t.example/v2?cid=clk-1&token=***"
        ]
    );
}

#[test]
fn a_delivery_keeps_the_values_it_was_made_from_and_its_debug_output_shows_none_of_them() {
    let mut e = engine(vec![specific(
        PB,
        "https://t.example/pb?cid={sub1}&token={sub2}",
    )]);
    let [d] = convert(&mut e, t0(), 1, "clk-1")[..] else {
        panic!()
    };
    let delivery = e.delivery(d).unwrap();
    assert_eq!(
        delivery.values().macros().collect::<Vec<_>>(),
        [Macro::SUB1, Macro::SUB2]
    );
    let shown = format!("{delivery:?}");
    assert!(!shown.contains("s3cret-value"), "{shown}");
    assert!(!shown.contains("clk-1"), "{shown}");
    // The state itself keeps them, so a restore can send again.
    let json = serde_json::to_string(delivery).unwrap();
    let back: Delivery = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, delivery);
}

#[test]
fn an_edit_that_no_longer_expands_with_a_held_delivery_s_values_is_our_error_and_never_counts() {
    let mut e = engine(vec![specific(PB, "https://t.example/pb?cid={sub1}")]);
    convert(&mut e, t0(), 1, "clk-1");
    // The new template wants a currency the conversion never had as an ISO code.
    let mut values_bad = ValueMap::new().with(Macro::SUB1, "clk-2");
    values_bad.set(Macro::CURRENCY, "euro");
    let _ = e.handle_trigger(t0(), &Trigger::conversion(2, PARTNER, OFFER), &values_bad);
    e.edit(
        t0(),
        MANAGER,
        specific(PB, "https://t.example/pb?cid={sub1}&cur={currency}"),
    )
    .unwrap();
    answer_all(&mut e, t0(), 200);
    let evs = events(&mut e);
    let refused: Vec<_> = evs
        .iter()
        .filter_map(|ev| match ev {
            Event::RetryScheduled {
                failure, counted, ..
            } => Some((*failure, *counted)),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [(FailureClass::Local, false)]);
    assert_eq!(e.health(PB).map_or(0, |h| h.consecutive_failures), 0);
    assert!(e.registry().get(PB).unwrap().status().is_active());
}

// ---------------------------------------------------------------------------------------------
// Holding is per postback
// ---------------------------------------------------------------------------------------------

#[test]
fn a_conversion_for_an_auto_disabled_postback_is_held_even_though_its_sibling_on_the_same_level_fires()
 {
    let mut e = engine(vec![
        specific(PB, "https://a.example/pb?cid={sub1}"),
        specific(SIBLING, "https://b.example/pb?cid={sub1}"),
    ]);
    e.registry_mut()
        .disable_automatically(PB, "25 failures", t0())
        .unwrap();
    let fired = e.handle_trigger(t0(), &Trigger::conversion(1, PARTNER, OFFER), &values("c"));
    assert_eq!(
        fired.deliveries.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [SIBLING]
    );
    assert_eq!(fired.held.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [PB]);
    assert_eq!(
        answer_all(&mut e, t0(), 200),
        ["https://b.example/pb?cid=c"]
    );
    e.enable(t0(), MANAGER, PB).unwrap();
    assert_eq!(
        answer_all(&mut e, t0(), 200),
        ["https://a.example/pb?cid=c"]
    );
}

#[test]
fn a_conversion_for_an_auto_disabled_postback_is_held_even_though_a_pixel_sibling_renders() {
    let pixel = Postback::builder(SIBLING)
        .partner(PARTNER)
        .offer(OFFER)
        .method(Method::ImagePixel)
        .url("https://b.example/px?cid={sub1}")
        .build()
        .unwrap();
    let mut e = engine(vec![specific(PB, "https://a.example/pb?cid={sub1}"), pixel]);
    e.registry_mut()
        .disable_automatically(PB, "25 failures", t0())
        .unwrap();
    let fired = e.handle_trigger(t0(), &Trigger::conversion(1, PARTNER, OFFER), &values("c"));
    assert_eq!(fired.pixels.len(), 1);
    assert_eq!(fired.held.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [PB]);
}

#[test]
fn nothing_is_held_when_another_level_serves_the_conversion_in_place_of_a_disabled_one() {
    let global = Postback::builder(SIBLING)
        .partner(PARTNER)
        .url("https://g.example/pb?cid={sub1}")
        .build()
        .unwrap();
    let mut e = engine(vec![
        specific(PB, "https://a.example/pb?cid={sub1}"),
        global,
    ]);
    e.registry_mut()
        .disable_automatically(PB, "25 failures", t0())
        .unwrap();
    let fired = e.handle_trigger(t0(), &Trigger::conversion(1, PARTNER, OFFER), &values("c"));
    assert_eq!(fired.held, []);
    assert_eq!(
        fired.deliveries.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [SIBLING]
    );
    assert_eq!(
        fired.resolution.decision(PB).unwrap().level,
        Level::Specific
    );
}

#[test]
fn a_conversion_that_meets_a_paused_postback_creates_nothing_for_it_and_the_next_level_serves() {
    let global = Postback::builder(SIBLING)
        .partner(PARTNER)
        .url("https://g.example/pb?cid={sub1}")
        .build()
        .unwrap();
    let mut e = engine(vec![
        specific(PB, "https://a.example/pb?cid={sub1}"),
        global,
    ]);
    e.pause(t0(), MANAGER, PB).unwrap();
    let fired = e.handle_trigger(t0(), &Trigger::conversion(1, PARTNER, OFFER), &values("c"));
    assert_eq!(fired.held, []);
    assert_eq!(
        fired.deliveries.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [SIBLING]
    );
    // Alone, a paused postback takes nothing either: a person stopped it on purpose.
    let mut alone = engine(vec![specific(PB, "https://a.example/pb?cid={sub1}")]);
    alone.pause(t0(), MANAGER, PB).unwrap();
    let fired = alone.handle_trigger(t0(), &Trigger::conversion(1, PARTNER, OFFER), &values("c"));
    assert_eq!((fired.deliveries.len(), fired.held.len()), (0, 0));
    alone.resume(t0(), MANAGER, PB).unwrap();
    assert_eq!(answer_all(&mut alone, t0(), 200), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Triggers carry their own id; keys derive from it
// ---------------------------------------------------------------------------------------------

#[test]
fn handling_the_same_trigger_twice_creates_no_second_delivery_before_or_after_it_was_delivered() {
    let mut e = engine(vec![specific(PB, "https://t.example/pb?cid={sub1}")]);
    let trigger = Trigger::conversion(TriggerId::new("conv-9f8a").unwrap(), PARTNER, OFFER);
    let first = e.handle_trigger(t0(), &trigger, &values("c"));
    assert_eq!(first.deliveries.len(), 1);
    // A caller's retried API call while the delivery is pending.
    let again = e.handle_trigger(t0(), &trigger, &values("c"));
    assert_eq!(again.deliveries, []);
    assert_eq!(again.duplicates, [(PB, trigger.key(PB))]);
    assert_eq!(answer_all(&mut e, t0(), 200).len(), 1);
    // A queue redelivering the message after it was delivered.
    let late = e.handle_trigger(t0() + TimeDelta::hours(1), &trigger, &values("c"));
    assert_eq!((late.deliveries.len(), late.duplicates.len()), (0, 1));
    assert_eq!(
        answer_all(&mut e, t0() + TimeDelta::hours(1), 200),
        Vec::<String>::new()
    );
}

#[test]
fn the_key_derives_from_trigger_postback_and_kind_and_is_the_same_in_every_process() {
    let url = "https://t.example/pb?cid={sub1}&d={delivery_id}";
    let mut one = engine_with(
        EngineConfig::default().idempotency_header("Idempotency-Key"),
        vec![specific(PB, url)],
    );
    let mut two = one.clone();
    // Process two has handed out other handles before.
    convert(&mut two, t0(), 500, "other");
    answer_all(&mut two, t0(), 200);
    for e in [&mut one, &mut two] {
        convert(e, t0(), 77, "c");
        let tx = e.poll_transmit(t0()).unwrap();
        assert_eq!(tx.key.to_string(), "77.1.conversion.0");
        assert_eq!(
            tx.request.uri(),
            "https://t.example/pb?cid=c&d=77.1.conversion.0"
        );
        assert_eq!(tx.request.headers()["Idempotency-Key"], "77.1.conversion.0");
    }
    let event = DeliveryKey::new(
        TriggerId::from(77),
        PB,
        TriggerKind::Event {
            event: postback::model::EventId::new(3),
        },
        0,
    );
    assert_eq!(event.to_string(), "77.1.event-3.0");
}

#[test]
fn a_restore_from_an_old_checkpoint_never_gives_a_new_conversion_the_key_of_another() {
    let url = "https://t.example/pb?cid={sub1}&d={delivery_id}";
    let mut e = engine(vec![specific(PB, url)]);
    let checkpoint = serde_json::to_string(&e).unwrap();
    convert(&mut e, t0(), 1001, "first");
    let first = answer_all(&mut e, t0(), 200);
    // The process dies; the network restores the older checkpoint and the next conversion comes.
    let snapshot: Snapshot = serde_json::from_str(&checkpoint).unwrap();
    let mut restored = Engine::restore(e.config().clone(), snapshot).unwrap();
    convert(&mut restored, t0(), 1002, "second");
    let second = answer_all(&mut restored, t0(), 200);
    assert_eq!(
        first,
        ["https://t.example/pb?cid=first&d=1001.1.conversion.0"]
    );
    assert_eq!(
        second,
        ["https://t.example/pb?cid=second&d=1002.1.conversion.0"]
    );
}

#[test]
fn the_preview_shows_the_delivery_id_exactly_as_a_send_writes_it() {
    let pb = specific(PB, "https://t.example/pb?cid={sub1}&d={delivery_id}#{sub2}");
    let preview = pb.preview().unwrap();
    let mut e = engine(vec![pb]);
    let sample = Trigger::conversion(TriggerId::sample(), PARTNER, OFFER);
    let _ = e.handle_trigger(t0(), &sample, &SampleValues);
    let tx = e.poll_transmit(t0()).unwrap();
    let sent = tx.request.uri().to_string();
    // The same URL, but for the fragment, which is never sent.
    assert_eq!(preview.split_once('#').unwrap().0, sent);
    assert!(sent.ends_with(&format!("d={}", tx.key)), "{sent}");
}

// ---------------------------------------------------------------------------------------------
// Restores never strand or overwrite anything
// ---------------------------------------------------------------------------------------------

fn snapshot_json(e: &Engine) -> serde_json::Value {
    serde_json::to_value(e).unwrap()
}

fn restore(json: serde_json::Value) -> Result<Engine, RestoreError> {
    Engine::restore(
        EngineConfig::default(),
        serde_json::from_value(json).unwrap(),
    )
}

#[test]
fn a_snapshot_with_colliding_ids_keys_or_an_exhausted_counter_is_refused_with_a_typed_error() {
    let mut e = engine(vec![specific(PB, "https://t.example/pb?cid={sub1}")]);
    convert(&mut e, t0(), 1, "a");
    convert(&mut e, t0(), 2, "b");
    let good = snapshot_json(&e);
    assert!(restore(good.clone()).is_ok());

    let mut same_id = good.clone();
    same_id["deliveries"][1]["id"] = same_id["deliveries"][0]["id"].clone();
    assert_eq!(
        restore(same_id).unwrap_err(),
        RestoreError::DuplicateDelivery(DeliveryId::new(1))
    );

    let mut same_key = good.clone();
    same_key["deliveries"][1]["key"] = same_key["deliveries"][0]["key"].clone();
    assert!(matches!(
        restore(same_key).unwrap_err(),
        RestoreError::DuplicateKey(k) if k.to_string() == "1.1.conversion.0"
    ));

    let mut behind = good.clone();
    behind["next_id"] = 2.into();
    assert_eq!(
        restore(behind).unwrap_err(),
        RestoreError::IdBehind {
            next: 2,
            highest: 2
        }
    );

    let mut exhausted = good.clone();
    exhausted["next_id"] = u64::MAX.into();
    assert_eq!(
        restore(exhausted).unwrap_err(),
        RestoreError::IdsExhausted(u64::MAX)
    );

    let mut two_postbacks = good;
    let pb = two_postbacks["registry"]["postbacks"][0].clone();
    two_postbacks["registry"]["postbacks"]
        .as_array_mut()
        .unwrap()
        .push(pb);
    let err = serde_json::from_value::<Snapshot>(two_postbacks).unwrap_err();
    assert!(
        err.to_string().contains("postback 1 already exists"),
        "{err}"
    );
}

#[test]
fn a_registry_round_trips_through_serde_and_refuses_duplicate_ids() {
    let mut reg = Registry::new();
    reg.insert(specific(PB, "https://a.example/pb?cid={sub1}"))
        .unwrap();
    reg.insert(specific(SIBLING, "https://b.example/pb?cid={sub1}"))
        .unwrap();
    let json = serde_json::to_value(&reg).unwrap();
    let back: Registry = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    assert_eq!(
        back.resolve(&Trigger::conversion(1, PARTNER, OFFER))
            .firing()
            .count(),
        2
    );
    let mut dup = json;
    dup["postbacks"][1]["id"] = 1.into();
    assert!(serde_json::from_value::<Registry>(dup).is_err());
}

/// A clock the driver sleeps on by jumping ahead.
struct JumpClock(std::cell::Cell<DateTime<Utc>>);

impl Clock for JumpClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.get()
    }
    fn sleep_until(&self, t: DateTime<Utc>) {
        self.0.set(self.0.get().max(t));
    }
}

#[test]
fn a_request_in_flight_at_a_save_is_sent_again_after_a_restore_with_no_call_and_no_idle_driver() {
    let mut e = engine(vec![specific(PB, "https://t.example/pb?cid={sub1}")]);
    convert(&mut e, t0(), 1, "c");
    let _lost = e.poll_transmit(t0()).unwrap();
    let saved = serde_json::to_string(&e).unwrap();

    // A new process: nothing but the saved state.
    let mut restored = Engine::restore(
        EngineConfig::default(),
        serde_json::from_str(&saved).unwrap(),
    )
    .unwrap();
    assert!(!restored.is_idle());
    let clock = JumpClock(std::cell::Cell::new(t0() + TimeDelta::seconds(1)));
    let sent = std::cell::RefCell::new(Vec::new());
    let transport = |req: http::Request<Vec<u8>>| -> Result<http::Response<Vec<u8>>, Failure> {
        sent.borrow_mut().push(req.uri().to_string());
        status(200)
    };
    let mut delivered = 0;
    let report = run_blocking(
        &mut restored,
        &transport,
        &clock,
        t0() + TimeDelta::hours(1),
        |ev| delivered += usize::from(matches!(ev, Event::Delivered { .. })),
    );
    assert!(report.idle);
    assert_eq!(delivered, 1);
    assert_eq!(*sent.borrow(), ["https://t.example/pb?cid=c"]);
    // Due again once the lease ran out, not before.
    assert_eq!(clock.now(), t0() + TimeDelta::minutes(5));
}

#[test]
fn a_snapshot_restored_with_a_new_configuration_runs_under_the_new_one() {
    let mut e = engine(vec![specific(PB, "https://t.example/pb?cid={sub1}")]);
    convert(&mut e, t0(), 1, "c");
    let saved = serde_json::to_string(&e).unwrap();
    assert!(
        !saved.contains("max_attempts"),
        "configuration is not state"
    );

    let config = EngineConfig::default()
        .retry(RetryPolicy::default().jitter(0, 0).max_attempts(2))
        .idempotency_header("X-Dedupe")
        .access(Settings::partners_may_edit(false));
    let mut restored = Engine::restore(config, serde_json::from_str(&saved).unwrap()).unwrap();
    let tx = restored.poll_transmit(t0()).unwrap();
    assert_eq!(tx.request.headers()["X-Dedupe"], "1.1.conversion.0");
    restored
        .handle_response(t0(), tx.delivery, status(500))
        .unwrap();
    let next = restored.poll_timeout().unwrap();
    let tx = restored.poll_transmit(next).unwrap();
    restored
        .handle_response(next, tx.delivery, status(500))
        .unwrap();
    // Two attempts, as the new policy says (the old one allowed 25).
    assert!(
        events(&mut restored)
            .iter()
            .any(|ev| matches!(ev, Event::GaveUp { .. } | Event::Held { .. }))
    );
    assert_eq!(
        restored
            .pause(t0(), Actor::Partner(PARTNER), PB)
            .unwrap_err(),
        EngineError::Access(AccessError::PartnerEditingOff(Operation::Pause))
    );
}

#[test]
fn the_partner_self_edit_switch_can_be_flipped_on_a_running_engine() {
    let mut e = engine(vec![specific(PB, "https://t.example/pb?cid={sub1}")]);
    let partner = Actor::Partner(PARTNER);
    e.pause(t0(), partner, PB).unwrap();
    e.set_access(Settings::partners_may_edit(false));
    assert_eq!(
        e.resume(t0(), partner, PB).unwrap_err(),
        EngineError::Access(AccessError::PartnerEditingOff(Operation::Resume))
    );
    e.set_access(Settings::partners_may_edit(true));
    e.resume(t0(), partner, PB).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Click id and the fragment
// ---------------------------------------------------------------------------------------------

#[test]
fn a_url_whose_click_id_stands_only_in_the_fragment_is_refused_at_build() {
    let err = Postback::builder(PB)
        .partner(PARTNER)
        .url("https://t.example/pb?x=1#cid={sub1}")
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::ClickIdInFragment("{sub1}".into()));
    assert!(err.to_string().contains("move it into the query"), "{err}");
}

#[test]
fn the_fragment_is_never_sent_and_the_recorded_attempt_url_equals_the_request_uri() {
    let mut e = engine(vec![specific(
        PB,
        "https://t.example/pb?cid={sub1}#section-{sub1}",
    )]);
    convert(&mut e, t0(), 1, "c");
    let tx = e.poll_transmit(t0()).unwrap();
    let uri = tx.request.uri().to_string();
    assert_eq!(uri, "https://t.example/pb?cid=c");
    e.handle_response(t0(), tx.delivery, status(200)).unwrap();
    let Some(Event::Delivered { record }) = e.poll_event() else {
        panic!()
    };
    assert_eq!(record.attempts()[0].url, uri);
}

// ---------------------------------------------------------------------------------------------
// Names and small gaps
// ---------------------------------------------------------------------------------------------

#[test]
fn resume_undoes_a_pause_and_enable_undoes_the_automatic_disable_and_neither_does_the_other() {
    let mut e = engine(vec![specific(PB, "https://t.example/pb?cid={sub1}")]);
    e.pause(t0(), MANAGER, PB).unwrap();
    let err = e.enable(t0(), MANAGER, PB).unwrap_err();
    assert!(err.to_string().contains("resume it instead"), "{err}");
    e.resume(t0(), MANAGER, PB).unwrap();
    e.registry_mut()
        .disable_automatically(PB, "25 failures", t0())
        .unwrap();
    let err = e.resume(t0(), MANAGER, PB).unwrap_err();
    assert!(matches!(
        err,
        EngineError::Access(AccessError::Registry(RegistryError::Status { .. }))
    ));
    assert!(err.to_string().contains("enable it"), "{err}");
    e.enable(t0(), MANAGER, PB).unwrap();
    assert_eq!(e.registry().get(PB).unwrap().status(), &Status::Active);
}

#[test]
fn a_test_fire_goes_through_access_and_leaves_an_audit_entry() {
    let mut e = engine(vec![specific(PB, "https://t.example/pb?cid={sub1}")]);
    let partner = Actor::Partner(PARTNER);
    let fire = e.test_fire(t0(), partner, PB, &SampleValues).unwrap();
    assert_eq!(
        (fire.audit.actor, fire.audit.operation, fire.audit.postback),
        (partner, Operation::TestFire, PB)
    );
    let d = e.delivery(fire.delivery).unwrap();
    assert_eq!(d.key().purpose(), Purpose::Test);
    e.set_access(Settings::partners_may_edit(false));
    assert_eq!(
        e.test_fire(t0(), partner, PB, &SampleValues).unwrap_err(),
        EngineError::Access(AccessError::PartnerEditingOff(Operation::TestFire))
    );
    let other = Actor::Partner(PartnerId::new(8));
    e.set_access(Settings::partners_may_edit(true));
    assert!(matches!(
        e.test_fire(t0(), other, PB, &SampleValues).unwrap_err(),
        EngineError::Access(AccessError::NotOwner { .. })
    ));
}

#[test]
fn finished_deliveries_keep_their_debug_info_for_a_bounded_number_per_postback() {
    let mut e = engine_with(
        EngineConfig::default().finished_per_postback(3),
        vec![specific(PB, "https://t.example/pb?cid={sub1}")],
    );
    for i in 1..=5 {
        convert(&mut e, t0(), i, &format!("c{i}"));
        answer_all(&mut e, t0(), 200);
    }
    let kept: Vec<String> = e.finished_of(PB).map(|d| d.key().to_string()).collect();
    assert_eq!(
        kept,
        ["3.1.conversion.0", "4.1.conversion.0", "5.1.conversion.0"]
    );
    assert!(
        e.finished_of(PB)
            .all(|d| matches!(d.state(), State::Delivered { .. }) && d.attempts().len() == 1)
    );
    // Kept across a restore too.
    let restored = Engine::restore(
        e.config().clone(),
        serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(restored.finished_of(PB).count(), 3);
}
