//! Kill -9 at any moment loses nothing. A real worker runs as a child process over a store file,
//! sending to a loopback receiver (in this, the parent, process) that fails a share of requests;
//! the parent kills the child with SIGKILL at random moments, restarts it, and at the end checks
//! what the receiver accepted against what was fired. The last line is
//! `conversions N, delivered N, lost 0, duplicates D (in flight at kills: B)`; the exit status is
//! non-zero if anything was lost or D > B (a duplicate only comes from a delivery that was out
//! under a lease when its worker died).
//!
//! Run: `cargo run --release -p postback-store --example crash_test -- --store sqlite
//! --conversions 2000 --kills 5 --fail-share 0.3`

// An example reads the clock and sleeps; the library never does.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    conversions: u64,
    kills: u32,
    fail_share: f64,
    seed: u64,
    /// Run as the worker process over this store file.
    child: Option<PathBuf>,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        store: "sqlite".into(),
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
            "--conversions" => a.conversions = value()?.parse()?,
            "--kills" => a.kills = value()?.parse()?,
            "--fail-share" => a.fail_share = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            "--child" => a.child = Some(PathBuf::from(value()?)),
            other => {
                return Err(format!(
                    "unknown argument {other}: use --store sqlite --conversions N --kills K --fail-share F [--seed S]"
                )
                .into());
            }
        }
    }
    if a.store != "sqlite" {
        return Err(format!("--store {}: this build has the sqlite store only", a.store).into());
    }
    if !(0.0..1.0).contains(&a.fail_share) {
        return Err("--fail-share must be at least 0 and below 1".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    match args().and_then(|a| match a.child {
        Some(ref db) => child(db).map(|()| true),
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
        "crash_test: store {}, {} conversions, {} kills, {:.0}% of requests failing, seed {}",
        a.store,
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
    let db = dir.join("deliveries.sqlite");
    let _ = std::fs::remove_file(&db);
    {
        let store = SqliteStore::open(&db)?;
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
        println!("  {} conversions queued in {}", a.conversions, db.display());
    }

    let mut dice = Dice(a.seed | 1);
    let mut out_at_kills = std::collections::HashSet::new();
    for kill in 1..=a.kills {
        let mut child = spawn_child(&db)?;
        let wait = Duration::from_millis(100 + dice.next() % 900);
        std::thread::sleep(wait);
        if child.try_wait()?.is_some() {
            println!("  kill {kill}: the worker had finished already");
            continue;
        }
        child.kill()?; // SIGKILL
        let _ = child.wait()?;
        let store = SqliteStore::open(&db)?;
        let c = store.deliveries_count()?;
        // Distinct deliveries out at any kill: one left out across two kills counts once.
        for d in store.deliveries_of(PostbackId::new(1), Filter::Leased, usize::MAX)? {
            out_at_kills.insert(*d.key());
        }
        println!(
            "  kill {kill} after {} ms: pending {} (out under a lease: {}), delivered {}",
            wait.as_millis(),
            c.pending,
            c.leased,
            c.delivered
        );
    }
    println!("  a last worker runs to the end");
    let mut last = spawn_child(&db)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if last.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            last.kill()?;
            return Err("the last worker did not finish within 10 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let in_flight_at_kills = out_at_kills.len() as u64;
    let c = SqliteStore::open(&db)?.deliveries_count()?;
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
    println!(
        "conversions {}, delivered {}, lost {lost}, duplicates {duplicates} (in flight at kills: {in_flight_at_kills})",
        a.conversions, c.delivered
    );
    Ok(lost == 0 && duplicates <= in_flight_at_kills && distinct == a.conversions)
}

fn spawn_child(db: &Path) -> Result<std::process::Child, Error> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(db)
        .spawn()?)
}

fn rules() -> Rules {
    Rules::default().idempotency_header(HEADER)
}

/// The worker process: runs until nothing is pending, then shuts down gracefully.
fn child(db: &Path) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Arc::new(SqliteStore::open(db)?);
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
    })
}
