//! The main example: the whole job on the embedded default, a SQLite file, against a real HTTP
//! receiver on 127.0.0.1.
//!
//! Postbacks at the three levels (plus an event, a CPC and a pixel postback) fire through a
//! `postback_store::Worker` over a `SqliteStore` and postback-http's reqwest transport; the
//! partner's endpoint prints what it received; the same conversion handled again creates nothing.
//! A partner endpoint that keeps failing is retried on a compressed schedule; in the middle the
//! process "restarts": it drops everything but the file (the worker is killed mid-flight, not shut
//! down) and opens it again, and the retries go on where they were. After 25 failed attempts the
//! postback is disabled and the manager notified once; the debug info is shown; the partner fixes
//! its URL, the manager enables the postback, and the held conversions reach the new URL.
//!
//! Run: `cargo run --example quickstart`

// Examples may read the clock; the library may not (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postback::access::{Actor, Settings};
use postback::delivery::{DisablePolicy, RetryPolicy};
use postback::model::{
    DeliveryKey, EventId, Kind, ManagerId, Method, OfferId, PartnerId, Postback, PostbackId,
};
use postback::registry::Trigger;
use postback::template::{Amount, Currency, Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{
    Counts, Filter, Manage, Notification, NotificationSink, Rules, SqliteStore, SystemClock,
    Worker, WorkerConfig, WorkerHandle,
};

const MANAGER: Actor = Actor::Network(ManagerId::new(1));
const P9_POSTBACK: PostbackId = PostbackId::new(7);

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let start = Instant::now();
    // The partner's tracker: answers 200, except partner 9's old endpoint, which it moved away.
    let partner = Receiver::start(move |req, _| {
        if req.path().starts_with("/p9/old") {
            Response::status(404).body("no such endpoint: moved to /p9/pb")
        } else {
            Response::ok().body("OK")
        }
    });
    println!("== partner's tracker listening on {}", partner.addr());

    let path = store_path();
    let _ = std::fs::remove_file(&path);
    println!("== the store: {} (SQLite, created now)", path.display());
    let notes: Arc<Mutex<Vec<Notification>>> = Arc::default();

    // Part one: a process that is killed in the middle of partner 9's retries.
    let rt = runtime()?;
    let first: Result<Vec<DeliveryKey>, Error> = rt.block_on(async {
        let w = start_worker(&path, &notes)?;
        configure(&w, &partner).await?;
        fire_conversions(&w).await?;
        wait_until(&w, "the conversions are delivered", |c| c.pending == 0).await?;
        let again = w.trigger(Trigger::conversion(1001, PartnerId::new(7), OfferId::new(42)), values("p7 click #1 & more")).await?;
        println!(
            "  conversion 1001 handled again: {} new deliveries, already known: {:?}",
            again.created.len(),
            again.duplicates.iter().map(|k| k.to_string()).collect::<Vec<_>>()
        );
        println!("\n== what the partner's tracker received");
        for r in partner.requests() {
            let key = r.header("idempotency-key").unwrap_or("-");
            println!("  {} {}   (Idempotency-Key: {key})", r.method, r.target_str());
        }

        println!(
            "\n== partner 9's URL points at an endpoint it moved: retried on the schedule"
        );
        let mut keys = Vec::new();
        for (id, offer, click) in [(1005, OfferId::new(43), "p9-click-1"), (1006, OfferId::new(44), "p9-click-2")] {
            let e = w.trigger(Trigger::conversion(id, PartnerId::new(9), offer), values(click)).await?;
            println!("  conversion {id}: {} delivery queued", e.created.len());
            keys.extend(e.created);
        }
        // Let a few attempts happen, then die without a goodbye.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = attempts(&w, &keys).await?;
            if n >= 6 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (n, c) = (attempts(&w, &keys).await?, w.counts().await?);
        println!(
            "\n== killing the process: {n} attempts so far; in the file: pending {}, delivered {}, held {}",
            c.pending, c.delivered, c.held
        );
        Ok(keys)
    });
    let keys = first?;
    // Everything but the file goes: the worker's tasks, its requests in flight, the connections.
    rt.shutdown_background();

    // Part two: a new process opens the same file.
    let rt = runtime()?;
    rt.block_on(async {
        let w = start_worker(&path, &notes)?;
        let c = w.counts().await?;
        println!(
            "== restarted on the same file: pending {}, delivered {}, held {}; nothing lost",
            c.pending, c.delivered, c.held
        );
        println!("  (a request that was in flight at the kill is sent again after its 2 s lease, with the same key)");
        wait_until(&w, "partner 9's postback is disabled", |c| c.pending == 0).await?;
        let pb = w.deliveries_of(P9_POSTBACK, Filter::Held, 10).await?;
        println!("  partner 9's endpoint was called {} times", partner.requests().iter().filter(|r| r.path().starts_with("/p9/old")).count());
        println!("  held deliveries: {}", pb.len());
        for n in notes.lock().map(|n| n.clone()).unwrap_or_default() {
            println!("  the manager was notified (once): postback {} of partner {} disabled: {}", n.postback, n.partner.map_or("-".into(), |p| p.to_string()), n.reason);
        }

        println!("\n== debug info of the delivery that exhausted its attempts");
        let tipped = keys.first().copied().ok_or("a key")?;
        let attempts = w.attempts_of(tipped).await?;
        println!("  {:>3}  {:>9}  {:>6}  {:<12}  url", "#", "at (ms)", "status", "failure");
        let first = attempts.first().map(|a| a.at);
        for a in &attempts {
            let ms = first.map_or(0, |f| (a.at - f).num_milliseconds());
            let status = a.status.map_or("-".to_owned(), |s| s.to_string());
            let failure = a.failure.map_or("-".to_owned(), |f| f.to_string());
            println!("  {:>3}  {:>9}  {:>6}  {:<12}  {}", a.number, ms, status, failure, a.url);
        }
        if let Some(a) = attempts.last() {
            println!("  last response body: {:?}", a.body);
        }

        println!("\n== partner 9 fixes its URL; the network manager enables the postback again");
        let reg_pb = registry_postback(&w, P9_POSTBACK).await?;
        let fixed = reg_pb
            .to_builder()
            .url(partner.url("/p9/pb?cid={sub1}&payout={payout}&did={delivery_id}"))
            .build()?;
        w.manage(Actor::Partner(PartnerId::new(9)), Manage::Edit(fixed)).await?;
        let before = partner.count();
        let m = w.manage(MANAGER, Manage::Enable(P9_POSTBACK)).await?;
        println!("  enabled: {} held deliveries released", m.deliveries);
        wait_until(&w, "the held conversions are delivered", |c| c.pending == 0 && c.held == 0).await?;
        for r in partner.requests().iter().skip(before) {
            println!("  received {} {}", r.method, r.target_str());
        }
        let c = w.counts().await?;
        println!(
            "\n== in the file: delivered {}, pending {}, held {}, gave up {}",
            c.delivered, c.pending, c.held, c.gave_up
        );
        println!("\n== the operator's summary: per postback and per partner host");
        println!("{}", w.stats_summary().await?);
        w.shutdown(Duration::from_secs(5)).await;
        if c.pending + c.held + c.gave_up > 0 {
            return Err::<(), Error>("something was not delivered".into());
        }
        Ok(())
    })?;
    println!("\ndone in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The SQLite file, in the build's target directory.
fn store_path() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let _ = std::fs::create_dir_all(&dir);
    dir.join("quickstart.sqlite")
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn start_worker(
    path: &std::path::Path,
    notes: &Arc<Mutex<Vec<Notification>>>,
) -> Result<WorkerHandle, Error> {
    let store = Arc::new(SqliteStore::open(path)?);
    let transport = ReqwestTransport::new(
        Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5)),
    )?;
    let sink = Arc::clone(notes);
    let config = WorkerConfig::new()
        // Compressed: the 25-attempt schedule spreads over ~67 h in production; here ~2.4 s.
        .retry(RetryPolicy::compressed(100_000))
        .disable(DisablePolicy::PerDelivery { failures: 25 })
        .access(Settings::partners_may_edit(true))
        .rules(Rules::default().idempotency_header("Idempotency-Key"))
        .lease(Duration::from_secs(2))
        .notifications(NotificationSink::callback(move |n| {
            if let Ok(mut v) = sink.lock() {
                v.push(n);
            }
        }));
    Ok(Worker::new(store, transport, SystemClock, config).start())
}

fn values(click: &str) -> ValueMap {
    ValueMap::new()
        .with(Macro::SUB1, click)
        .with(Macro::TRANSACTION_ID, "102a3f9c")
        .with(Macro::PAYOUT, Amount::new(1250, 2))
        .with(Macro::CURRENCY, Currency::new("EUR").expect("an ISO code"))
        .with(Macro::EVENT_NAME, "first deposit")
}

async fn configure(w: &WorkerHandle, partner: &Receiver) -> Result<(), Error> {
    let (p7, p8, p9) = (PartnerId::new(7), PartnerId::new(8), PartnerId::new(9));
    let (o42, o43) = (OfferId::new(42), OfferId::new(43));
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
            .kind(Kind::event(EventId::new(3)))
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
        Postback::builder(P9_POSTBACK)
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
        w.manage(actor, Manage::Create(pb)).await?;
    }
    Ok(())
}

async fn fire_conversions(w: &WorkerHandle) -> Result<(), Error> {
    let (p7, p8) = (PartnerId::new(7), PartnerId::new(8));
    let (o42, o43) = (OfferId::new(42), OfferId::new(43));
    println!("\n== firing conversions, an event and a CPC click");
    let triggers = [
        // The first number is your own conversion, event or click id.
        (Trigger::conversion(1001, p7, o42), "p7 click #1 & more"),
        (Trigger::conversion(1002, p7, o43), "p7-click-2"),
        (Trigger::conversion(1003, p8, o42), "p8 click é"),
        (Trigger::event(2001, p7, o42, EventId::new(3)), "p7-click-3"),
        (Trigger::cpc_click(3001, p7, o43), "p7-click-4"),
        (Trigger::conversion(1004, p8, o43), "p8-click-5"),
    ];
    for (trigger, click) in triggers {
        let fired = w.trigger(trigger, values(click)).await?;
        println!("{}", fired.resolution);
        for pixel in &fired.pixels {
            println!("    pixel for the page: {}", pixel.html);
        }
        for (pb, err) in &fired.errors {
            println!("    postback {pb} could not fire: {err}");
        }
    }
    Ok(())
}

/// Wait (printing progress) until the store's counts satisfy `done`; an error after 60 s.
async fn wait_until(
    w: &WorkerHandle,
    what: &str,
    done: impl Fn(&Counts) -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        let c = w.counts().await?;
        if last != Some(c) {
            println!(
                "  … pending {} (out now: {}), delivered {}, held {}, gave up {}",
                c.pending, c.leased, c.delivered, c.held, c.gave_up
            );
            last = Some(c);
        }
        if done(&c) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Attempts made so far by these deliveries.
async fn attempts(w: &WorkerHandle, keys: &[DeliveryKey]) -> Result<usize, Error> {
    let mut n = 0;
    for k in keys {
        n += w.attempts_of(*k).await?.len();
    }
    Ok(n)
}

async fn registry_postback(w: &WorkerHandle, id: PostbackId) -> Result<Postback, Error> {
    let reg = w.registry().await?;
    Ok(reg.get(id).cloned().ok_or("configured above")?)
}
