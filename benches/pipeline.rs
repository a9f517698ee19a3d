//! The whole pipeline against the bare client, for both clients: the same postbacks sent to a
//! real receiver on 127.0.0.1, once through the engine (trigger, resolve, expand, deliver,
//! classify, event) over postback-http's guarded transport, and once by the bare client alone
//! (ureq's agent, reqwest's client, default settings) with the URL already built. The ratio is
//! the overhead of the engine and the guards per postback; the last case isolates the engine's
//! share with an in-process answer.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Read;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use postback::engine::{Engine, EngineConfig, Event};
use postback::model::{OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::{Amount, Currency, Macro, MacroValues, Value};
use postback::transport::{AsyncTransport, NetPolicy, Transport};
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport, UreqTransport};

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

/// One conversion through the engine, sent by `send`.
fn pipeline(
    engine: &mut Engine,
    now: DateTime<Utc>,
    trigger: Trigger,
    send: impl FnOnce(
        http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, postback::delivery::Failure>,
) {
    let fired = engine.handle_trigger(now, &trigger, &Conversion);
    black_box(&fired);
    let tx = engine.poll_transmit(now).expect("due now");
    let result = send(tx.request);
    engine
        .handle_response(now, tx.delivery, result)
        .expect("in flight");
    assert!(matches!(engine.poll_event(), Some(Event::Delivered { .. })));
}

fn bench(c: &mut Criterion) {
    // The bare reqwest client needs a process-wide crypto provider (postback-http brings its own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let partner = Receiver::start(|_, _| Response::ok().body("OK"));
    let url =
        partner.url("/pb?cid={sub1}&payout={payout}&currency={currency}&txid={transaction_id}");
    let policy = NetPolicy::default().allow_loopback();
    let ureq_transport = UreqTransport::new(Config::new(policy.clone())).expect("ureq transport");
    let reqwest_transport =
        ReqwestTransport::new(Config::new(policy.clone())).expect("reqwest transport");
    let bare_ureq = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .build(),
    );
    let bare_reqwest = reqwest::Client::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
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
    let expanded = expanded.as_str().to_owned();

    let mut g = c.benchmark_group("postback_over_loopback_http");
    g.bench_function("ureq: bare client, URL prebuilt", |b| {
        b.iter(|| {
            let resp = bare_ureq.get(&expanded).call().expect("receiver answers");
            assert_eq!(resp.status(), 200);
            let mut body = Vec::new();
            let read = resp.into_body().into_reader().read_to_end(&mut body);
            read.expect("body");
            black_box(body);
        })
    });
    g.bench_function("ureq: engine pipeline over postback-http", |b| {
        b.iter(|| pipeline(&mut engine, now, trigger(), |r| ureq_transport.send(r)))
    });
    g.bench_function("reqwest: bare client, URL prebuilt", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = bare_reqwest.get(&expanded).send().await;
                let resp = resp.expect("receiver answers");
                assert_eq!(resp.status(), 200);
                black_box(resp.bytes().await.expect("body"));
            })
        })
    });
    g.bench_function("reqwest: engine pipeline over postback-http", |b| {
        b.iter(|| {
            pipeline(&mut engine, now, trigger(), |r| {
                rt.block_on(reqwest_transport.send(r))
            })
        })
    });
    // The engine's own share, isolated: the same pipeline with a transport that answers at once.
    g.bench_function(
        "engine pipeline, instant in-process 200 (overhead alone)",
        |b| {
            b.iter(|| {
                pipeline(&mut engine, now, trigger(), |r| {
                    black_box(&r);
                    let ok = http::Response::builder().status(200).body(b"OK".to_vec());
                    Ok(ok.expect("static response"))
                })
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
