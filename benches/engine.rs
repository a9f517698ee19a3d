//! Engine capacity: the cost of one delivery's whole life (trigger, transmit, response, event)
//! with 1,000,000 deliveries in flight, against the bare work any sender does (expand the
//! template and build the `http::Request`), and the bytes held per in-flight delivery.
//!
//! With the `signing` feature, a second group measures in the same run what signing costs per
//! delivery against the expansion of its URL: the HMAC-SHA256 signature alone (one and two
//! secrets), and one delivery's life through an engine of unsigned and of signed postbacks.
#![allow(missing_docs)]

use std::alloc::System;
use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use postback::delivery::Failure;
use postback::engine::{Engine, EngineConfig};
use postback::model::{OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::{Amount, Currency, Macro, MacroValues, Value};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Counts heap use so the bench can report bytes per delivery (the crate forbids unsafe code,
/// so the counting allocator comes from `stats_alloc`).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const IN_FLIGHT: u64 = 1_000_000;
const PARTNERS: u64 = 1_000;

struct Conversion {
    click: String,
}

impl MacroValues for Conversion {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        Some(match m {
            Macro::SUB1 => Value::Text(&self.click),
            Macro::PAYOUT => Value::Amount(Amount::new(1250, 2)),
            Macro::CURRENCY => Value::Currency(Currency::new("USD").ok()?),
            Macro::CONVERSION_ID => Value::Text("cv-123456"),
            _ => return None,
        })
    }
}

const URL: &str = "https://tracker.partner.example/postback?cid={sub1}&payout={payout}&currency={currency}&txid={conversion_id}&did={delivery_id}";

fn engine() -> Engine {
    let mut reg = Registry::new();
    for p in 0..PARTNERS {
        let pb = Postback::builder(PostbackId::new(p))
            .partner(PartnerId::new(p))
            .url(URL)
            .build();
        reg.insert(pb.expect("valid postback")).expect("unique ids");
    }
    Engine::new(EngineConfig::default(), reg)
}

fn ok() -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(200)
        .body(Vec::new())
        .expect("static response")
}

fn bench(c: &mut Criterion) {
    let now = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).expect("valid time");
    let values = Conversion {
        click: "a1b2c3d4-partner-click".into(),
    };

    let mut e = engine();
    let region = Region::new(GLOBAL);
    for i in 0..IN_FLIGHT {
        let t = Trigger::conversion(i, PartnerId::new(i % PARTNERS), OfferId::new(1));
        let fired = e.handle_trigger(now, &t, &values);
        debug_assert_eq!(fired.deliveries.len(), 1);
    }
    let stats = region.change();
    let held =
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated;
    eprintln!(
        "engine: {} deliveries in flight hold {} bytes: {:.0} bytes per delivery (engine's own estimate {:.0})",
        IN_FLIGHT,
        held,
        held as f64 / IN_FLIGHT as f64,
        e.delivery_bytes() as f64 / IN_FLIGHT as f64
    );

    let mut g = c.benchmark_group("delivery_lifecycle_with_1m_in_flight");
    let mut i = IN_FLIGHT;
    g.bench_function("engine: trigger + transmit + 200 + event", |b| {
        b.iter(|| {
            i += 1;
            let t = Trigger::conversion(i, PartnerId::new(i % PARTNERS), OfferId::new(1));
            let _ = black_box(e.handle_trigger(now, &t, &values));
            let tx = e.poll_transmit(now).expect("a delivery is due");
            e.handle_response(now, tx.delivery, Ok(ok()))
                .expect("in flight");
            black_box(e.poll_event());
        })
    });
    g.bench_function("engine: transmit + 503 + retry event", |b| {
        b.iter(|| {
            let tx = e
                .poll_transmit(now + chrono::Duration::days(365))
                .expect("a delivery is due");
            let r = Err(Failure::Connect("refused".into()));
            e.handle_response(now, tx.delivery, r).expect("in flight");
            black_box(e.poll_event());
        })
    });
    let template = e
        .registry()
        .get(PostbackId::new(1))
        .expect("exists")
        .template()
        .clone();
    g.bench_function("bare: expand + build http::Request", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let url = template.expand(&values).expect("valid values");
            let req = http::Request::get(url)
                .body(Vec::<u8>::new())
                .expect("valid url");
            black_box((req, n));
        })
    });
    g.finish();
    assert!(e.deliveries().count() as u64 >= IN_FLIGHT - 1);
}

/// Signing's cost per delivery, as a ratio to the expansion of the same delivery's URL.
#[cfg(feature = "signing")]
fn bench_signing(c: &mut Criterion) {
    use postback::signing::{self, Secret, Signing};

    let now = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).expect("valid time");
    let values = Conversion {
        click: "a1b2c3d4-partner-click".into(),
    };
    let secrets = [
        Secret::from_bytes(&[7; 32]).expect("a valid secret"),
        Secret::from_bytes(&[9; 32]).expect("a valid secret"),
    ];
    let small = |signing: Option<Signing>| {
        let mut reg = Registry::new();
        for p in 0..PARTNERS {
            let pb = Postback::builder(PostbackId::new(p))
                .partner(PartnerId::new(p))
                .url(URL)
                .signing(signing.clone())
                .build();
            reg.insert(pb.expect("valid postback")).expect("unique ids");
        }
        Engine::new(EngineConfig::default(), reg)
    };
    let mut unsigned = small(None);
    let mut signed = small(Some(
        Signing::headers([secrets[0].clone()]).expect("valid signing"),
    ));
    let template = unsigned
        .registry()
        .get(PostbackId::new(1))
        .expect("exists")
        .template()
        .clone();
    let url = template.expand(&values).expect("valid values");
    let key = "1001.1.conversion.0";

    let mut g = c.benchmark_group("signing_cost_per_delivery");
    g.bench_function("expand the URL", |b| {
        b.iter(|| black_box(template.expand(black_box(&values)).expect("valid values")))
    });
    g.bench_function("sign it, 1 secret", |b| {
        b.iter(|| {
            black_box(
                signing::sign(
                    key,
                    now.timestamp(),
                    black_box(url.as_bytes()),
                    &secrets[..1],
                )
                .expect("signs"),
            )
        })
    });
    g.bench_function("sign it, 2 secrets", |b| {
        b.iter(|| {
            black_box(
                signing::sign(key, now.timestamp(), black_box(url.as_bytes()), &secrets)
                    .expect("signs"),
            )
        })
    });
    let mut life = |name: &str, e: &mut Engine| {
        let mut i = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let t = Trigger::conversion(i, PartnerId::new(i % PARTNERS), OfferId::new(1));
                let _ = black_box(e.handle_trigger(now, &t, &values));
                let tx = e.poll_transmit(now).expect("a delivery is due");
                e.handle_response(now, tx.delivery, Ok(ok()))
                    .expect("in flight");
                black_box(e.poll_event());
            })
        });
    };
    life(
        "engine: trigger + transmit + 200 + event, unsigned",
        &mut unsigned,
    );
    life(
        "engine: trigger + transmit + 200 + event, signed (1 secret)",
        &mut signed,
    );
    g.finish();
}

criterion_group!(benches, bench);
#[cfg(feature = "signing")]
criterion_group!(signing_benches, bench_signing);
#[cfg(not(feature = "signing"))]
criterion_main!(benches);
#[cfg(feature = "signing")]
criterion_main!(benches, signing_benches);
