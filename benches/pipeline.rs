//! The whole pipeline against the bare client: the same postbacks sent to a real receiver on
//! 127.0.0.1, once through the engine (trigger, resolve, expand, deliver, classify, event) and
//! once by the `ureq` client alone with the URL already built. The ratio is the crate's overhead
//! per postback; the third case isolates that overhead with an in-process answer.
#![allow(missing_docs)]

#[allow(dead_code)]
#[path = "../examples/adapters/receiver.rs"]
mod receiver;
#[allow(dead_code)]
#[path = "../examples/adapters/ureq_transport.rs"]
mod ureq_transport;

use std::hint::black_box;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use postback::engine::{Engine, EngineConfig, Event};
use postback::model::{OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::{Amount, Currency, Macro, MacroValues, Value};
use postback::transport::{NetPolicy, Transport};

struct Conversion;

impl MacroValues for Conversion {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        Some(match m {
            Macro::SUB1 => Value::Text("partner click 42 & co"),
            Macro::PAYOUT => Value::Amount(Amount::new(1250, 2)),
            Macro::CURRENCY => Value::Currency(Currency::new("EUR").ok()?),
            Macro::TRANSACTION_ID => Value::Text("102a3f9c4d5e"),
            _ => return None,
        })
    }
}

fn bench(c: &mut Criterion) {
    let partner = receiver::Receiver::start(|_, _| receiver::Response::ok().body("OK"));
    let url =
        partner.url("/pb?cid={sub1}&payout={payout}&currency={currency}&txid={transaction_id}");
    let policy = NetPolicy::default().allow_loopback();
    let transport = ureq_transport::UreqTransport::new(policy.clone(), Duration::from_secs(5));
    let mut reg = Registry::new();
    let pb = Postback::builder(PostbackId::new(1))
        .partner(PartnerId::new(7))
        .url(url)
        .build();
    reg.insert(pb.expect("valid postback")).expect("unique id");
    let mut engine = Engine::new(EngineConfig::default().net(policy), reg);
    let now = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).expect("valid time");
    // Every iteration is a new conversion (a new trigger id), as in production.
    let mut next = 0u64;
    let mut trigger = move || {
        next += 1;
        Trigger::conversion(next, PartnerId::new(7), OfferId::new(42))
    };
    let expanded = engine
        .registry()
        .get(PostbackId::new(1))
        .expect("inserted")
        .template()
        .expand(&Conversion)
        .expect("valid values");

    let mut g = c.benchmark_group("postback_over_loopback_http");
    g.bench_function("bare ureq client, URL prebuilt", |b| {
        b.iter(|| {
            let req = http::Request::get(expanded.as_str())
                .body(Vec::new())
                .expect("valid url");
            let resp = transport.send(req).expect("receiver answers");
            assert_eq!(resp.status(), 200);
        })
    });
    g.bench_function("engine pipeline over the same client", |b| {
        b.iter(|| {
            let fired = engine.handle_trigger(now, &trigger(), &Conversion);
            black_box(&fired);
            let tx = engine.poll_transmit(now).expect("due now");
            let result = transport
                .send(tx.request)
                .map_err(|e| postback::transport::Classify::failure(&e));
            engine
                .handle_response(now, tx.delivery, result)
                .expect("in flight");
            assert!(matches!(engine.poll_event(), Some(Event::Delivered { .. })));
        })
    });
    // The crate's own share, isolated: the same pipeline with a transport that answers at once.
    g.bench_function(
        "engine pipeline, instant in-process 200 (overhead alone)",
        |b| {
            b.iter(|| {
                let fired = engine.handle_trigger(now, &trigger(), &Conversion);
                black_box(&fired);
                let tx = engine.poll_transmit(now).expect("due now");
                black_box(&tx.request);
                let ok = http::Response::builder().status(200).body(b"OK".to_vec());
                engine
                    .handle_response(now, tx.delivery, Ok(ok.expect("static response")))
                    .expect("in flight");
                assert!(matches!(engine.poll_event(), Some(Event::Delivered { .. })));
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
