//! The main example: a full flow against a real HTTP receiver on 127.0.0.1.
//!
//! Postbacks at the three levels (plus an event, a CPC and a pixel postback) fire through the
//! engine and a real HTTP client (postback-http's `ureq` transport); the partner's endpoint
//! prints what it received; the same conversion handled again creates nothing. Then a partner endpoint that
//! keeps failing is retried on a compressed schedule until the postback is disabled after 25
//! attempts and the manager notified; its debug info is shown; the partner fixes its URL, the
//! manager enables the postback, and the held conversions reach the new URL.
//!
//! Run: `cargo run --example quickstart`

// Examples may read the clock; the library may not (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use postback::access::{Actor, Settings};
use postback::delivery::{DisablePolicy, RetryPolicy};
use postback::engine::{Engine, EngineConfig, Event};
use postback::model::{EventId, Kind, ManagerId, Method, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::{Amount, Currency, Macro, ValueMap};
use postback::transport::{Clock, NetPolicy, run_blocking};

use postback_http::clock::SystemClock;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, UreqTransport};

const MANAGER: Actor = Actor::Network(ManagerId::new(1));

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = std::time::Instant::now();
    // The partner's tracker: answers 200, except partner 9's old endpoint, which it moved away.
    let partner = Receiver::start(move |req, _| {
        if req.path().starts_with("/p9/old") {
            Response::status(404).body("no such endpoint: moved to /p9/pb")
        } else {
            Response::ok().body("OK")
        }
    });
    println!("== partner's tracker listening on {}", partner.addr());

    // Compressed: the 25-attempt schedule spreads over ~67 h in production; here ~2.4 s.
    let config = EngineConfig::default()
        .retry(RetryPolicy::compressed(100_000))
        .disable(DisablePolicy::PerDelivery { failures: 25 })
        .access(Settings::partners_may_edit(true))
        .net(NetPolicy::default().allow_loopback()) // production: never allow loopback
        .idempotency_header("Idempotency-Key");
    let mut engine = Engine::new(config, Registry::new());
    let clock = SystemClock;
    let transport = UreqTransport::new(
        Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5)),
    )
    .expect("a ureq transport");

    let (p7, p8, p9) = (PartnerId::new(7), PartnerId::new(8), PartnerId::new(9));
    let (o42, o43) = (OfferId::new(42), OfferId::new(43));
    let deposit = EventId::new(3);
    let url = |path: &str| partner.url(path);

    println!("\n== configuring postbacks");
    let postbacks = [
        Postback::builder(PostbackId::new(1))
            .partner(p7)
            .url(url(
                "/p7/all?cid={sub1}&payout={payout}&currency={currency}",
            ))
            .description("partner 7, every offer"),
        Postback::builder(PostbackId::new(2))
            .offer(o42)
            .url(url("/o42/all?clickid={sub1}&txid={transaction_id}"))
            .description("offer 42, every partner"),
        Postback::builder(PostbackId::new(3))
            .partner(p7)
            .offer(o42)
            .url(url(
                "/p7/o42?cid={sub1}&sum={payout}&cur={currency}&did={delivery_id}",
            ))
            .description("partner 7 on offer 42"),
        Postback::builder(PostbackId::new(4))
            .partner(p7)
            .kind(Kind::event(deposit))
            .url(url("/p7/event?cid={sub1}&event={event_name}"))
            .description("partner 7, deposits"),
        Postback::builder(PostbackId::new(5))
            .partner(p7)
            .offer(o43)
            .kind(Kind::Cpc)
            .url(url("/p7/cpc?cid={sub1}"))
            .description("partner 7, paid clicks on offer 43 (level and method chosen for CPC)"),
        Postback::builder(PostbackId::new(6))
            .partner(p8)
            .offer(o43)
            .method(Method::ImagePixel)
            .url(url("/p8/pixel?cid={sub1}&p={payout}"))
            .description("partner 8 on offer 43, an image pixel"),
        Postback::builder(PostbackId::new(7))
            .partner(p9)
            .url(url("/p9/old?cid={sub1}&payout={payout}"))
            .description("partner 9, whose URL points at an endpoint it moved"),
    ];
    for b in postbacks {
        let pb = b.build()?;
        println!(
            "  postback {} ({}, {}): {}",
            pb.id(),
            pb.level(),
            pb.method(),
            pb.description()
        );
        let actor = match pb.partner() {
            Some(p) => Actor::Partner(p), // partners configure their own postbacks
            None => MANAGER,              // offer-global ones are the network's
        };
        engine.create(now(&clock), actor, pb)?;
    }

    let values = |click: &str| {
        ValueMap::new()
            .with(Macro::SUB1, click)
            .with(Macro::TRANSACTION_ID, "102a3f9c")
            .with(Macro::PAYOUT, Amount::new(1250, 2))
            .with(Macro::CURRENCY, Currency::new("EUR").expect("an ISO code"))
            .with(Macro::EVENT_NAME, "first deposit")
    };

    println!("\n== firing conversions, an event and a CPC click");
    let triggers = [
        // The first number is your own conversion, event or click id.
        (Trigger::conversion(1001, p7, o42), "p7 click #1 & more"),
        (Trigger::conversion(1002, p7, o43), "p7-click-2"),
        (Trigger::conversion(1003, p8, o42), "p8 click é"),
        (Trigger::event(2001, p7, o42, deposit), "p7-click-3"),
        (Trigger::cpc_click(3001, p7, o43), "p7-click-4"),
        (Trigger::conversion(1004, p8, o43), "p8-click-5"),
    ];
    for (trigger, click) in &triggers {
        let fired = engine.handle_trigger(now(&clock), trigger, &values(click));
        println!("{}", fired.resolution);
        for pixel in &fired.pixels {
            println!("    pixel for the page: {}", pixel.html);
        }
        for (pb, err) in &fired.errors {
            println!("    postback {pb} could not fire: {err}");
        }
    }
    let deadline = now(&clock) + chrono::Duration::seconds(30);
    run_blocking(&mut engine, &transport, &clock, deadline, |e| {
        print_event(&e)
    });
    // A retried API call: the same conversion id again creates nothing new.
    let (trigger, click) = &triggers[0];
    let again = engine.handle_trigger(now(&clock), trigger, &values(click));
    println!(
        "  conversion {} handled again: {} new deliveries, already delivered: {:?}",
        trigger.id,
        again.deliveries.len(),
        again
            .duplicates
            .iter()
            .map(|(_, k)| k.to_string())
            .collect::<Vec<_>>()
    );
    println!("\n== what the partner's tracker received");
    for r in partner.requests() {
        let key = r.header("idempotency-key").unwrap_or("-");
        println!(
            "  {} {}   (Idempotency-Key: {key})",
            r.method,
            r.target_str()
        );
    }

    println!(
        "\n== partner 9's URL points at an endpoint it moved: retried on the schedule until the postback is disabled"
    );
    let before = partner.count();
    for (id, offer, click) in [
        (1005, o43, "p9-click-1"),
        (1006, OfferId::new(44), "p9-click-2"),
    ] {
        let fired = engine.handle_trigger(
            now(&clock),
            &Trigger::conversion(id, p9, offer),
            &values(click),
        );
        print!("{}", fired.resolution);
        println!();
    }
    let deadline = now(&clock) + chrono::Duration::seconds(60);
    let mut debug_info = Vec::new();
    run_blocking(&mut engine, &transport, &clock, deadline, |e| {
        if let Event::NotifyNetworkManager { attempts, .. } = &e {
            debug_info.clone_from(attempts);
        }
        print_event(&e);
    });
    println!(
        "  partner 9's endpoint was called {} times",
        partner.count() - before
    );
    let pb7 = engine
        .registry()
        .get(PostbackId::new(7))
        .expect("configured above");
    println!("  postback 7 status: {:?}", pb7.status());
    println!(
        "  held deliveries: {}",
        engine.deliveries_of(PostbackId::new(7)).count()
    );

    println!("\n== debug info of the delivery that exhausted its attempts");
    println!(
        "  {:>3}  {:>9}  {:>6}  {:<8}  url",
        "#", "at (ms)", "status", "failure"
    );
    let first = debug_info.first().map(|a| a.at);
    for a in &debug_info {
        let ms = first.map_or(0, |f| (a.at - f).num_milliseconds());
        let status = a.status.map_or("-".to_owned(), |s| s.to_string());
        let failure = a.failure.map_or("-".to_owned(), |f| f.to_string());
        println!(
            "  {:>3}  {:>9}  {:>6}  {:<8}  {}",
            a.number, ms, status, failure, a.url
        );
    }
    if let Some(a) = debug_info.last() {
        println!("  last response body: {:?}", a.body);
    }

    println!("\n== partner 9 fixes its URL; the network manager enables the postback again");
    let fixed = engine
        .registry()
        .get(PostbackId::new(7))
        .expect("configured above")
        .to_builder()
        .url(url("/p9/pb?cid={sub1}&payout={payout}&did={delivery_id}"))
        .build()?;
    engine.edit(now(&clock), Actor::Partner(p9), fixed)?;
    let before = partner.count();
    engine.enable(now(&clock), MANAGER, PostbackId::new(7))?;
    let deadline = now(&clock) + chrono::Duration::seconds(30);
    run_blocking(&mut engine, &transport, &clock, deadline, |e| {
        print_event(&e)
    });
    for r in partner.requests().iter().skip(before) {
        println!("  received {} {}", r.method, r.target_str());
    }
    println!(
        "  postback 7 status: {:?}; deliveries left: {}",
        engine
            .registry()
            .get(PostbackId::new(7))
            .map(|p| p.status().clone()),
        engine.deliveries().count()
    );
    println!("\ndone in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn now(clock: &SystemClock) -> DateTime<Utc> {
    clock.now()
}

fn print_event(e: &Event) {
    match e {
        Event::Delivered { record } => println!(
            "  delivered: {} (postback {}) after {} attempt(s){}",
            record.key(),
            record.postback(),
            record.attempts().len(),
            if record.is_hidden_from_reports() {
                " (CPC: not shown in reports)"
            } else {
                ""
            }
        ),
        Event::RetryScheduled {
            delivery,
            failure,
            at,
            ..
        } => {
            println!(
                "  delivery {delivery}: {failure}, retry at {}",
                at.format("%H:%M:%S%.3f")
            )
        }
        Event::GaveUp { record } => {
            println!("  gave up: delivery {} ({:?})", record.id(), record.state())
        }
        Event::Held { delivery, postback } => {
            println!("  held: delivery {delivery} of postback {postback} (kept until re-enabled)")
        }
        Event::PostbackDisabled {
            postback, reason, ..
        } => {
            println!("  POSTBACK {postback} DISABLED: {reason}")
        }
        Event::NotifyNetworkManager {
            postback,
            partner,
            attempts,
            ..
        } => println!(
            "  notify the network manager: postback {postback} of partner {} disabled ({} attempts recorded)",
            partner.map_or("-".to_owned(), |p| p.to_string()),
            attempts.len()
        ),
        Event::Reenabled {
            postback, replayed, ..
        } => {
            println!("  postback {postback} re-enabled: {replayed} held deliveries replayed")
        }
        other => println!("  {other:?}"),
    }
}
