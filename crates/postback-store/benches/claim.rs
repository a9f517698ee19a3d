//! Claim + complete latency with 1,000 and with 1,000,000 pending deliveries, per store: the
//! ratio between the two says whether claiming uses an index or a scan (target: within 1.5x).
//! The pending deliveries are due later (the longest delay, 5 min); each iteration adds one due now (untimed), then
//! claims it and completes it as delivered (timed). Bytes per pending delivery on disk are
//! printed for the SQLite store.
#![allow(missing_docs)]
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};

use postback::access::{Actor, Settings};
use postback::delivery::{Action, DisablePolicy, RetryPolicy};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback_store::{Manage, MemoryStore, Rules, Store, send_context};

const PARTNER: PartnerId = PartnerId::new(7);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("valid")
}

fn setup<S: Store>(s: &S, pending: u64) {
    let pb = Postback::builder(PostbackId::new(1))
        .partner(PARTNER)
        .url("https://partner.example/pb?cid={sub1}&payout={payout}")
        .delay(postback::model::MAX_DELAY)
        .build()
        .expect("valid");
    s.postback_manage(
        t0(),
        Actor::Network(ManagerId::new(1)),
        Manage::Create(pb),
        &Settings::default(),
    )
    .expect("create");
    // A second postback with no delay, for the deliveries each iteration claims.
    let now_pb = Postback::builder(PostbackId::new(2))
        .offer(OfferId::new(43))
        .url("https://partner.example/pb?cid={sub1}")
        .build()
        .expect("valid");
    s.postback_manage(
        t0(),
        Actor::Network(ManagerId::new(1)),
        Manage::Create(now_pb),
        &Settings::default(),
    )
    .expect("create");
    for i in 0..pending {
        let t = Trigger::conversion(i, PARTNER, OfferId::new(42));
        let v = ValueMap::new().with(Macro::SUB1, format!("click-{i}").as_str());
        let _ = s
            .trigger_enqueue(t0(), &t, &v, &Rules::default())
            .expect("enqueue");
    }
}

/// One claim + complete of a delivery due now, among the pending ones.
fn cycle<S: Store>(s: &S, n: u64) -> Duration {
    let t = Trigger::conversion(1_000_000_000 + n, PartnerId::new(8), OfferId::new(43));
    let v = ValueMap::new().with(Macro::SUB1, "c");
    let _ = s
        .trigger_enqueue(t0(), &t, &v, &Rules::default())
        .expect("enqueue");
    let start = Instant::now();
    let mut claimed = s
        .deliveries_claim(t0(), "bench", 1, Duration::from_secs(60))
        .expect("claim");
    let c = claimed.pop().expect("one due");
    let pb = c.postback.clone().expect("exists");
    let mut d = c.delivery.clone();
    let rules = Rules::default();
    let Action::Send(_) = d.poll(t0(), &send_context(&pb, &rules)) else {
        panic!("sendable")
    };
    let resp = http::Response::builder()
        .status(200)
        .body(Vec::new())
        .expect("valid");
    let p = d
        .handle_response(t0(), Ok(resp), &RetryPolicy::default())
        .expect("in flight");
    let _ = s
        .delivery_complete(t0(), c.token, d, p, &DisablePolicy::default())
        .expect("complete");
    start.elapsed()
}

fn bench_store<S: Store>(
    c: &mut Criterion,
    name: &str,
    mut make: impl FnMut() -> S,
    mut fill: impl FnMut(&S, u64),
) {
    let mut g = c.benchmark_group(format!("claim_and_complete/{name}"));
    g.sample_size(20);
    for pending in [1_000u64, 1_000_000] {
        let s = make();
        fill(&s, pending);
        let mut n = 0;
        g.bench_function(format!("{pending} pending"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        n += 1;
                        cycle(&s, n)
                    })
                    .sum()
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_store(c, "memory", MemoryStore::new, setup);
    #[cfg(feature = "sqlite")]
    {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut n = 0;
        bench_store(
            c,
            "sqlite",
            || {
                n += 1;
                postback_store::SqliteStore::open(dir.path().join(format!("claim-{n}.sqlite")))
                    .expect("open")
            },
            setup,
        );
        for entry in std::fs::read_dir(dir.path()).expect("listing").flatten() {
            let name = entry.file_name();
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            eprintln!("on disk: {} {} bytes", name.to_string_lossy(), bytes);
        }
    }
}

/// PostgreSQL (with `POSTBACK_PG_URL`): a fresh schema per case, dropped after.
#[cfg(feature = "postgres")]
fn bench_postgres(c: &mut Criterion) {
    use postback_store::PostgresStore;
    let Ok(url) = std::env::var("POSTBACK_PG_URL") else {
        eprintln!("claim_and_complete/postgres skipped: set POSTBACK_PG_URL to run it");
        return;
    };
    let mut schemas = Vec::new();
    bench_store(
        c,
        "postgres",
        || {
            let name = format!("pb_bench_claim_{}_{}", std::process::id(), schemas.len());
            schemas.push(name.clone());
            PostgresStore::builder(url.as_str())
                .schema(name)
                .open()
                .expect("open")
        },
        |s, pending| setup_postgres(s, &url, pending),
    );
    let mut client =
        postback_store::postgres::Client::connect(&url, postback_store::postgres::NoTls)
            .expect("connect");
    for name in schemas {
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
            .expect("drop");
    }
}

/// Up to 1,000 pending through the store (batches of `triggers_enqueue`); beyond, copies of a
/// stored one made by one `INSERT ... SELECT generate_series` (each its own trigger, key, id and
/// value, the state rewritten to match), so 1,000,000 take seconds, not the minutes a million
/// transactions would.
#[cfg(feature = "postgres")]
fn setup_postgres(s: &postback_store::PostgresStore, url: &str, pending: u64) {
    setup(s, 0);
    let through_store = pending.min(1_000);
    let values: Vec<_> = (0..through_store)
        .map(|i| ValueMap::new().with(Macro::SUB1, format!("click-{i}").as_str()))
        .collect();
    let batch: Vec<(Trigger, &dyn postback::template::MacroValues)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                Trigger::conversion(i as u64, PARTNER, OfferId::new(42)),
                v as &dyn postback::template::MacroValues,
            )
        })
        .collect();
    let _ = s
        .triggers_enqueue(t0(), &batch, &Rules::default())
        .expect("enqueue");
    if pending <= through_store {
        return;
    }
    // The template: conversion 999's delivery, whose trigger id and value are the only places
    // "999" appears in the key and state besides the delivery id, which is rewritten apart.
    let mut client =
        postback_store::postgres::Client::connect(url, postback_store::postgres::NoTls)
            .expect("connect");
    let schema = s.schema().expect("a schema");
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .expect("search path");
    let n = client
        .execute(
            "INSERT INTO deliveries (id, key, postback, trigger, purpose, status, due_at, claims, \
                 settled, attempts_written, created_at, finished_at, state)
             SELECT g, replace(t.key, '999.', g::text || '.'), t.postback, g::text, t.purpose,
                    t.status, t.due_at, 0, 0, t.attempts_written, t.created_at, t.finished_at,
                    jsonb_set(
                        replace(replace(t.state::text, '\"999.', '\"' || g::text || '.'),
                                'click-999', 'click-' || g::text)::jsonb,
                        '{id}', to_jsonb(g))
             FROM deliveries t, generate_series($1::bigint, $2::bigint) AS g
             WHERE t.trigger = '999'",
            &[
                &(10_000_000i64),
                &(10_000_000i64 + (pending - through_store) as i64 - 1),
            ],
        )
        .expect("bulk insert");
    assert_eq!(n, pending - through_store);
    // The copies read back as deliveries of their own.
    let some = s
        .deliveries_of(PostbackId::new(1), postback_store::Filter::Pending, 3)
        .expect("the copies are deliveries");
    assert_eq!(some.len(), 3);
    assert!(some[0].key() != some[1].key() && some[0].id() != some[1].id());
    assert_eq!(
        some[0].key().trigger().as_str(),
        some[0].id().get().to_string()
    );
    client.batch_execute("ANALYZE deliveries").expect("analyze");
}

#[cfg(feature = "postgres")]
criterion_group!(b, benches, bench_postgres);
#[cfg(not(feature = "postgres"))]
criterion_group!(b, benches);
criterion_main!(b);
