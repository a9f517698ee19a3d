//! The whole pipeline against the bare client, for both clients: the same postbacks sent to a
//! real receiver on 127.0.0.1, once through the engine (trigger, resolve, expand, deliver,
//! classify, event) over postback-http's guarded transport, and once by the bare client alone
//! (ureq's agent, reqwest's client, default settings) with the URL already built. The ratio is
//! the overhead of the engine and the guards per postback; the last case isolates the engine's
//! share with an in-process answer.
//!
//! Criterion measures each case in turn over one set of connections, so a machine whose load
//! changes between cases (ours is shared) or that happens to place one receiver thread badly
//! skews the ratio. Before the criterion cases, a paired run (see `paired`) alternates ours and
//! the bare client over many fresh connections and prints the ratio: the load at any moment and
//! the luck of thread placement fall on both alike.
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

/// Median of `samples` (microseconds).
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The clients compared, each with its own pooled connection to the receiver.
struct Clients {
    ureq: UreqTransport,
    reqwest: ReqwestTransport,
    bare_ureq: ureq::Agent,
    bare_reqwest: reqwest::Client,
}

impl Clients {
    fn new(policy: &NetPolicy) -> Clients {
        let config = Config::new(policy.clone());
        Clients {
            ureq: UreqTransport::new(config.clone()).expect("ureq transport"),
            reqwest: ReqwestTransport::new(config).expect("reqwest transport"),
            bare_ureq: ureq::Agent::new_with_config(
                ureq::config::Config::builder()
                    .http_status_as_error(false)
                    .build(),
            ),
            bare_reqwest: reqwest::Client::new(),
        }
    }
}

/// The paired measurement: `ROUNDS` rounds, each with new clients (so new connections, served by
/// new receiver threads wherever the scheduler puts them: on two shared cores that placement
/// alone moves one exchange by 2x), each alternating `PAIRS` times `run(clients, true)` (ours)
/// and `run(clients, false)` (the bare client), who goes first swapping every pair. Prints the
/// medians over rounds of each side's median and of the per-round ratio.
#[allow(clippy::disallowed_methods)] // a benchmark reads the clock
fn paired(what: &str, policy: &NetPolicy, mut run: impl FnMut(&Clients, bool)) {
    const ROUNDS: usize = 25;
    const PAIRS: usize = 120;
    let mut time = |clients: &Clients, ours: bool| {
        let start = std::time::Instant::now();
        run(clients, ours);
        start.elapsed().as_secs_f64() * 1e6
    };
    let (mut ours_us, mut bare_us, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let clients = Clients::new(policy);
        let (mut ours, mut bare) = (Vec::new(), Vec::new());
        for i in 0..PAIRS + 20 {
            let (o, b) = if i % 2 == 0 {
                let o = time(&clients, true);
                (o, time(&clients, false))
            } else {
                let b = time(&clients, false);
                (time(&clients, true), b)
            };
            if i >= 20 {
                // The first pairs open the connections and warm up.
                ours.push(o);
                bare.push(b);
            }
        }
        let (o, b) = (median(ours), median(bare));
        ours_us.push(o);
        bare_us.push(b);
        ratios.push(o / b);
    }
    eprintln!(
        "paired, {what}: {:.1} µs; the bare client with the URL prebuilt: {:.1} µs; ratio {:.3} \
         ({:+.1}%)",
        median(ours_us),
        median(bare_us),
        median(ratios.clone()),
        (median(ratios) - 1.0) * 100.0
    );
}

fn bench(c: &mut Criterion) {
    // The bare reqwest client needs a process-wide crypto provider (postback-http brings its own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let partner = Receiver::start(|_, _| Response::ok().body("OK"));
    let url =
        partner.url("/pb?cid={sub1}&payout={payout}&currency={currency}&txid={transaction_id}");
    let policy = NetPolicy::default().allow_loopback();
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
    let mut engine = Engine::new(EngineConfig::default().net(policy.clone()), reg);
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
    let get = || {
        http::Request::get(expanded.as_str())
            .body(Vec::new())
            .expect("valid url")
    };
    let bare_ureq = |c: &Clients| {
        let resp = c.bare_ureq.get(&expanded).call().expect("receiver answers");
        assert_eq!(resp.status(), 200);
        let mut body = Vec::new();
        let read = resp.into_body().into_reader().read_to_end(&mut body);
        read.expect("body");
        black_box(body);
    };
    let bare_reqwest = |c: &Clients| {
        rt.block_on(async {
            let resp = c.bare_reqwest.get(&expanded).send().await;
            let resp = resp.expect("receiver answers");
            assert_eq!(resp.status(), 200);
            black_box(resp.bytes().await.expect("body"));
        })
    };
    let ok = |r: Result<http::Response<Vec<u8>>, postback::delivery::Failure>| {
        assert_eq!(r.map(|r| r.status().as_u16()), Ok(200));
    };

    paired(
        "ureq, postback-http's transport alone",
        &policy,
        |c, ours| {
            if ours {
                ok(c.ureq.send(get()))
            } else {
                bare_ureq(c)
            }
        },
    );
    paired(
        "reqwest, postback-http's transport alone",
        &policy,
        |c, ours| {
            if ours {
                ok(rt.block_on(c.reqwest.send(get())))
            } else {
                bare_reqwest(c)
            }
        },
    );
    paired(
        "ureq, the engine's pipeline over postback-http",
        &policy,
        |c, ours| {
            if ours {
                pipeline(&mut engine, now, trigger(), |r| c.ureq.send(r))
            } else {
                bare_ureq(c)
            }
        },
    );
    paired(
        "reqwest, the engine's pipeline over postback-http",
        &policy,
        |c, ours| {
            if ours {
                pipeline(&mut engine, now, trigger(), |r| {
                    rt.block_on(c.reqwest.send(r))
                })
            } else {
                bare_reqwest(c)
            }
        },
    );

    // The engine's share with caches as a network exchange leaves them: the pipeline answered
    // in process, followed by the bare client's request, against the bare request alone.
    let instant = |r: http::Request<Vec<u8>>| {
        black_box(&r);
        let ok = http::Response::builder().status(200).body(b"OK".to_vec());
        Ok(ok.expect("static response"))
    };
    paired(
        "ureq, the engine answered in process and then the bare client's request",
        &policy,
        |c, ours| {
            if ours {
                pipeline(&mut engine, now, trigger(), instant);
            }
            bare_ureq(c)
        },
    );

    // Criterion's view: each case in turn over one set of connections.
    let clients = Clients::new(&policy);
    let mut g = c.benchmark_group("postback_over_loopback_http");
    g.bench_function("ureq: bare client, URL prebuilt", |b| {
        b.iter(|| bare_ureq(&clients))
    });
    g.bench_function("ureq: engine pipeline over postback-http", |b| {
        b.iter(|| pipeline(&mut engine, now, trigger(), |r| clients.ureq.send(r)))
    });
    g.bench_function("reqwest: bare client, URL prebuilt", |b| {
        b.iter(|| bare_reqwest(&clients))
    });
    g.bench_function("reqwest: engine pipeline over postback-http", |b| {
        b.iter(|| {
            pipeline(&mut engine, now, trigger(), |r| {
                rt.block_on(clients.reqwest.send(r))
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
