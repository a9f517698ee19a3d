//! End to end through the Worker on SQLite to a loopback receiver: 10,000 conversions stored (one
//! transaction each), claimed, sent through postback-http's reqwest transport, completed (one
//! fenced transaction each), against the bare reqwest client sending the same 10,000 requests,
//! URLs prebuilt, with the same 64 in flight. Both in the same run, so the figure is a ratio.
//! With `POSTBACK_PG_URL` (and feature `postgres`), the same through 1, 2 and 4 Workers on
//! PostgreSQL in the same run: one process, each Worker with its own store (its own connection
//! pool and LISTEN connection) and its own transport, as separate processes would have; the
//! conversions spread over their handles.
//! The hand-written glue the issue quotes (an axum service persisting to SQLite by hand) did
//! about 2,400 conversions per second on this kind of machine.
#![allow(missing_docs)]
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::task::JoinSet;

use postback::access::{Actor, Settings};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{
    Manage, Rules, SqliteStore, Store, SystemClock, Worker, WorkerConfig, WorkerHandle,
};

const N: u64 = 10_000;
const IN_FLIGHT: usize = 64;
const PARTNER: PartnerId = PartnerId::new(7);

fn template(receiver: &Receiver) -> String {
    receiver.url("/pb?cid={sub1}&payout=1.00&did={delivery_id}")
}

/// The bare client: the same number of requests, prebuilt, `IN_FLIGHT` at a time.
async fn bare(client: &reqwest::Client, urls: &Arc<Vec<String>>) {
    let mut set = JoinSet::new();
    let mut next = 0;
    while next < urls.len() || !set.is_empty() {
        while set.len() < IN_FLIGHT && next < urls.len() {
            let (c, urls, i) = (client.clone(), Arc::clone(urls), next);
            set.spawn(async move {
                let r = c.get(&urls[i]).send().await.expect("receiver answers");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body");
            });
            next += 1;
        }
        if let Some(r) = set.join_next().await {
            r.expect("no panic");
        }
    }
}

fn create_postback<S: Store>(store: &S, url: &str) {
    let pb = Postback::builder(PostbackId::new(1))
        .partner(PARTNER)
        .url(url)
        .build()
        .expect("valid");
    store
        .postback_manage(
            chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("valid"),
            Actor::Network(ManagerId::new(1)),
            Manage::Create(pb),
            &Settings::default(),
        )
        .expect("create");
}

/// Ours: one Worker per store given (each its own transport, as separate processes would
/// have), `N` conversions through their handles from 8 request handlers, until delivered.
async fn workers<S: Store>(stores: Vec<Arc<S>>) -> Duration {
    let start = Instant::now();
    let handles: Vec<WorkerHandle> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            // Connection reuse as the bare client's: up to 64 per host, all kept idle.
            let transport = ReqwestTransport::new(
                Config::new(NetPolicy::default().allow_loopback())
                    .max_connections_per_host(IN_FLIGHT)
                    .idle_per_host(IN_FLIGHT),
            )
            .expect("transport");
            let config = WorkerConfig::new()
                .rules(Rules::default())
                .owner(format!("bench-{i}"))
                .max_concurrency(IN_FLIGHT)
                .max_per_host(IN_FLIGHT)
                .batch_size(IN_FLIGHT);
            Worker::new(Arc::clone(store), transport, SystemClock, config).start()
        })
        .collect();
    // Conversions arrive from 8 request handlers at once, as in a web service, spread over the
    // workers' handles.
    let mut set = JoinSet::new();
    for part in 0..8u64 {
        let w = handles[part as usize % handles.len()].clone();
        set.spawn(async move {
            for i in (part..N).step_by(8) {
                let v = ValueMap::new().with(Macro::SUB1, format!("click-{i}").as_str());
                let t = Trigger::conversion(i + 1, PARTNER, OfferId::new(42));
                let e = w.trigger(t, v).await.expect("trigger");
                assert_eq!(e.created.len(), 1);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("no panic");
    }
    // The workers' own counters: asking the store would compete with the work measured.
    loop {
        let mut delivered = 0;
        for w in &handles {
            let s = w.stats();
            assert_eq!(s.gave_up + s.held + s.store_errors, 0, "nothing fails here");
            delivered += s.delivered;
        }
        if delivered >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    let c = handles[0].counts().await.expect("counts");
    assert_eq!(c.delivered, N, "the store agrees");
    for w in handles {
        w.shutdown(Duration::from_secs(5)).await;
    }
    took
}

/// Ours on SQLite: a fresh store file.
async fn ours(dir: &std::path::Path, url: &str, run: u32) -> Duration {
    let path = dir.join(format!("run-{run}.sqlite"));
    let store = Arc::new(SqliteStore::open(&path).expect("open"));
    create_postback(&*store, url);
    let took = workers(vec![store]).await;
    let _ = std::fs::remove_file(&path);
    took
}

/// Ours on PostgreSQL: `n` stores (each its own pool, as `n` processes) over a fresh schema,
/// dropped after.
#[cfg(feature = "postgres")]
async fn ours_pg(pg: &str, url: &str, n: usize, run: u32) -> Duration {
    use postback_store::PostgresStore;
    let schema = format!("pb_bench_tp_{}_{run}_{n}", std::process::id());
    // Set up off the runtime: the blocking client cannot be used on it.
    let (pg_url, name, target) = (pg.to_owned(), schema.clone(), url.to_owned());
    let stores: Vec<Arc<PostgresStore>> = tokio::task::spawn_blocking(move || {
        let stores: Vec<_> = (0..n)
            .map(|_| {
                Arc::new(
                    PostgresStore::builder(pg_url.as_str())
                        .schema(name.as_str())
                        .open()
                        .expect("open"),
                )
            })
            .collect();
        create_postback(&*stores[0], &target);
        stores
    })
    .await
    .expect("set up");
    let took = workers(stores).await;
    let pg = pg.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut client =
            postback_store::postgres::Client::connect(&pg, postback_store::postgres::NoTls)
                .expect("connect");
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .expect("drop");
    })
    .await
    .expect("dropped");
    took
}

fn bench(c: &mut Criterion) {
    // The bare reqwest client needs a process-wide crypto provider (postback-http brings its own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let receiver = Receiver::start(|_, _| Response::ok().body("OK"));
    let url = template(&receiver);
    let urls: Arc<Vec<String>> = Arc::new(
        (0..N)
            .map(|i| {
                url.replace("{sub1}", &format!("click-{i}"))
                    .replace("{delivery_id}", &format!("{}.1.conversion.0", i + 1))
            })
            .collect(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("a client");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut g = c.benchmark_group("10k_conversions_end_to_end");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(N));
    g.bench_function("bare reqwest client, URLs prebuilt, 64 in flight", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(bare(&client, &urls));
            }
            start.elapsed()
        })
    });
    let mut run = 0;
    g.bench_function("Worker on SQLite over postback-http, 64 in flight", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    run += 1;
                    rt.block_on(ours(dir.path(), &url, run))
                })
                .sum()
        })
    });
    #[cfg(feature = "postgres")]
    match std::env::var("POSTBACK_PG_URL") {
        Ok(pg) => {
            for n in [1usize, 2, 4] {
                let name =
                    format!("{n} Worker(s) on PostgreSQL over postback-http, 64 in flight each");
                g.bench_function(name, |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| {
                                run += 1;
                                rt.block_on(ours_pg(&pg, &url, n, run))
                            })
                            .sum()
                    })
                });
            }
        }
        Err(_) => eprintln!("the PostgreSQL cases skipped: set POSTBACK_PG_URL to run them"),
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
