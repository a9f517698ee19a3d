//! Kill -9 at any moment loses nothing. Real workers run as child processes over a store (a
//! SQLite file, or a fresh schema of the PostgreSQL database at `POSTBACK_PG_URL`), sending to a
//! loopback receiver (in this, the parent, process) that fails a share of requests; the parent
//! kills one of them with SIGKILL at random moments, restarts it, and at the end checks what the
//! receiver accepted against what was fired. The last line is
//! `conversions N, delivered N, lost 0, duplicates D (in flight at kills: B)`; the exit status is
//! non-zero if anything was lost or D > B (a duplicate only comes from a delivery that was out
//! under a lease when its worker died).
//!
//! Run: `cargo run --release -p postback-store --example crash_test -- --store sqlite
//! --conversions 2000 --kills 5 --fail-share 0.3`, or with `--all-features` and
//! `--store postgres --workers 4 --conversions 4000 --kills 6 --fail-share 0.3` (the URL from
//! `POSTBACK_PG_URL`).

// An example reads the clock and sleeps; the library never does.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postback::access::{Actor, Settings};
use postback::delivery::RetryPolicy;
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{
    Clock, Filter, Manage, Rules, SqliteStore, Store, SystemClock, Worker, WorkerConfig,
};

type Error = Box<dyn std::error::Error>;

const PARTNER: PartnerId = PartnerId::new(7);
const HEADER: &str = "Idempotency-Key";

struct Args {
    store: String,
    workers: u32,
    conversions: u64,
    kills: u32,
    fail_share: f64,
    seed: u64,
    /// Run as a worker process over this store.
    child: Option<Backend>,
}

/// Where the deliveries are.
#[derive(Debug, Clone)]
enum Backend {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A schema of the database at `POSTBACK_PG_URL`.
    #[cfg(feature = "postgres")]
    Postgres { url: String, schema: String },
}

impl Backend {
    /// Open the store (outside any async runtime: the PostgreSQL client has one of its own).
    fn open(&self) -> Result<Opened, Error> {
        Ok(match self {
            Backend::Sqlite(db) => Opened::Sqlite(Arc::new(SqliteStore::open(db)?)),
            #[cfg(feature = "postgres")]
            Backend::Postgres { url, schema } => Opened::Postgres(Arc::new(
                postback_store::PostgresStore::builder(url.as_str())
                    .schema(schema.as_str())
                    .open()?,
            )),
        })
    }

    /// The arguments that make a child process open it.
    fn child_args(&self) -> Vec<String> {
        match self {
            Backend::Sqlite(db) => vec!["--child".into(), db.display().to_string()],
            #[cfg(feature = "postgres")]
            Backend::Postgres { schema, .. } => vec!["--child-pg".into(), schema.clone()],
        }
    }

    fn describe(&self) -> String {
        match self {
            Backend::Sqlite(db) => db.display().to_string(),
            #[cfg(feature = "postgres")]
            Backend::Postgres { schema, .. } => format!("schema {schema} of POSTBACK_PG_URL"),
        }
    }
}

/// An open store.
enum Opened {
    Sqlite(Arc<SqliteStore>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<postback_store::PostgresStore>),
}

impl Opened {
    fn store(&self) -> &dyn Store {
        match self {
            Opened::Sqlite(s) => &**s,
            #[cfg(feature = "postgres")]
            Opened::Postgres(s) => &**s,
        }
    }
}

#[cfg(feature = "postgres")]
fn pg_url() -> Result<String, Error> {
    std::env::var("POSTBACK_PG_URL")
        .map_err(|_| "--store postgres reads the database's URL from POSTBACK_PG_URL".into())
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        store: "sqlite".into(),
        workers: 1,
        conversions: 2000,
        kills: 5,
        fail_share: 0.3,
        seed: SystemClock.now().timestamp_micros().unsigned_abs(),
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => a.store = value()?,
            "--workers" => a.workers = value()?.parse::<u32>()?.max(1),
            "--conversions" => a.conversions = value()?.parse()?,
            "--kills" => a.kills = value()?.parse()?,
            "--fail-share" => a.fail_share = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            "--child" => a.child = Some(Backend::Sqlite(PathBuf::from(value()?))),
            #[cfg(feature = "postgres")]
            "--child-pg" => {
                a.child = Some(Backend::Postgres {
                    url: pg_url()?,
                    schema: value()?,
                })
            }
            other => {
                return Err(format!(
                    "unknown argument {other}: use --store sqlite|postgres [--workers N] --conversions N --kills K --fail-share F [--seed S]"
                )
                .into());
            }
        }
    }
    let known = [
        "sqlite",
        if cfg!(feature = "postgres") {
            "postgres"
        } else {
            ""
        },
    ];
    if a.store.is_empty() || !known.contains(&a.store.as_str()) {
        return Err(format!(
            "--store {}: this build has {} (build with --all-features for postgres)",
            a.store,
            known.join(" ").trim()
        )
        .into());
    }
    if !(0.0..1.0).contains(&a.fail_share) {
        return Err("--fail-share must be at least 0 and below 1".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    match args().and_then(|a| match a.child {
        Some(ref backend) => child(backend).map(|()| true),
        None => parent(&a),
    }) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crash_test: {e}");
            ExitCode::from(2)
        }
    }
}

/// A small deterministic generator (no dependency for a test's dice).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn parent(a: &Args) -> Result<bool, Error> {
    let started = Instant::now();
    println!(
        "crash_test: store {}, {} worker(s), {} conversions, {} kills, {:.0}% of requests failing, seed {}",
        a.store,
        a.workers,
        a.conversions,
        a.kills,
        a.fail_share * 100.0,
        a.seed
    );
    // The partner: fails a share of requests (by the dice), counts what it accepted per key.
    let accepted: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let (acc, reqs, share, seed) = (
        Arc::clone(&accepted),
        Arc::clone(&requests),
        a.fail_share,
        a.seed,
    );
    let receiver = Receiver::start(move |req, _| {
        let n = reqs.fetch_add(1, Ordering::Relaxed);
        let mut dice = Dice(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        if dice.unit() < share {
            return Response::status(500).body("try again");
        }
        if let (Some(key), Ok(mut m)) = (req.header(HEADER), acc.lock()) {
            *m.entry(key.to_owned()).or_default() += 1;
        }
        Response::ok().body("OK")
    });

    let dir = std::env::temp_dir().join(format!("postback-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let backend = match a.store.as_str() {
        #[cfg(feature = "postgres")]
        "postgres" => {
            let url = pg_url()?;
            let schema = format!("postback_crash_{}", std::process::id());
            drop_schema(&url, &schema)?;
            Backend::Postgres { url, schema }
        }
        _ => {
            let db = dir.join("deliveries.sqlite");
            let _ = std::fs::remove_file(&db);
            Backend::Sqlite(db)
        }
    };
    {
        let opened = backend.open()?;
        let store = opened.store();
        let pb = Postback::builder(PostbackId::new(1))
            .partner(PARTNER)
            .url(receiver.url("/pb?cid={sub1}&did={delivery_id}"))
            .build()?;
        let now = SystemClock.now();
        store.postback_manage(
            now,
            Actor::Network(ManagerId::new(1)),
            Manage::Create(pb),
            &Settings::default(),
        )?;
        for i in 0..a.conversions {
            let v = ValueMap::new().with(Macro::SUB1, format!("click-{i}").as_str());
            let t = Trigger::conversion(i + 1, PARTNER, OfferId::new(42));
            let _ = store.trigger_enqueue(now, &t, &v, &rules())?;
        }
        println!(
            "  {} conversions queued in {}",
            a.conversions,
            backend.describe()
        );
    }

    let mut dice = Dice(a.seed | 1);
    let mut out_at_kills = std::collections::HashSet::new();
    let mut workers = (0..a.workers)
        .map(|_| spawn_child(&backend))
        .collect::<Result<Vec<_>, _>>()?;
    for kill in 1..=a.kills {
        let wait = Duration::from_millis(100 + dice.next() % 900);
        std::thread::sleep(wait);
        let victim = (dice.next() % u64::from(a.workers)) as usize;
        let child = &mut workers[victim];
        if child.try_wait()?.is_some() {
            println!("  kill {kill}: worker {victim} had finished already");
            continue;
        }
        child.kill()?; // SIGKILL
        let _ = child.wait()?;
        let opened = backend.open()?;
        let store = opened.store();
        let c = store.deliveries_count()?;
        // Distinct deliveries out at any kill: one left out across two kills counts once.
        for d in store.deliveries_of(PostbackId::new(1), Filter::Leased, usize::MAX)? {
            out_at_kills.insert(*d.key());
        }
        println!(
            "  kill {kill} of worker {victim} after {} ms: pending {} (out under a lease: {}), delivered {}",
            wait.as_millis(),
            c.pending,
            c.leased,
            c.delivered
        );
        *child = spawn_child(&backend)?;
    }
    println!("  the workers run to the end");
    let deadline = Instant::now() + Duration::from_secs(600);
    for w in &mut workers {
        loop {
            if w.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                for w in &mut workers {
                    let _ = w.kill();
                }
                return Err("the workers did not finish within 10 minutes".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let in_flight_at_kills = out_at_kills.len() as u64;
    let c = backend.open()?.store().deliveries_count()?;
    let accepted = accepted.lock().map(|m| m.clone()).unwrap_or_default();
    let distinct = accepted.len() as u64;
    let duplicates: u64 = accepted.values().map(|n| u64::from(*n) - 1).sum();
    let lost = a.conversions.saturating_sub(c.delivered.min(distinct));
    println!(
        "  {} requests in {:.1} s; gave up {}, held {}, pending {}",
        requests.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        c.gave_up,
        c.held,
        c.pending
    );
    let _ = std::fs::remove_dir_all(&dir);
    #[cfg(feature = "postgres")]
    if let Backend::Postgres { url, schema } = &backend {
        drop_schema(url, schema)?;
    }
    println!(
        "conversions {}, delivered {}, lost {lost}, duplicates {duplicates} (in flight at kills: {in_flight_at_kills})",
        a.conversions, c.delivered
    );
    Ok(lost == 0 && duplicates <= in_flight_at_kills && distinct == a.conversions)
}

fn spawn_child(backend: &Backend) -> Result<std::process::Child, Error> {
    Ok(Command::new(std::env::current_exe()?)
        .args(backend.child_args())
        .spawn()?)
}

#[cfg(feature = "postgres")]
fn drop_schema(url: &str, schema: &str) -> Result<(), Error> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))?;
    Ok(())
}

fn rules() -> Rules {
    Rules::default().idempotency_header(HEADER)
}

/// A worker process: runs until nothing is pending, then shuts down gracefully.
fn child(backend: &Backend) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match backend.open()? {
        Opened::Sqlite(s) => rt.block_on(work(s)),
        #[cfg(feature = "postgres")]
        Opened::Postgres(s) => rt.block_on(work(s)),
    }
}

async fn work<S: Store>(store: Arc<S>) -> Result<(), Error> {
    {
        let transport = ReqwestTransport::new(
            Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5)),
        )?;
        let config = WorkerConfig::new()
            .retry(RetryPolicy::compressed(100_000))
            .rules(rules())
            // Short, so a killed worker's deliveries are claimed again soon.
            .lease(Duration::from_secs(1))
            .max_per_host(32);
        let w = Worker::new(store, transport, SystemClock, config).start();
        loop {
            let c = w.counts().await?;
            if c.pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w.shutdown(Duration::from_secs(5)).await;
        Ok::<(), Error>(())
    }
}
