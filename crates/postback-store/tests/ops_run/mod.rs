//! The scripted run of the operating tests (`ops.rs`, `ops_spans.rs`): 25 failures that disable
//! the postback, a delivery created held, an enable and a replay, over the in-memory store and a
//! real partner on 127.0.0.1, with time moved by hand (`ManualClock`).

#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use postback::access::Actor;
use postback::delivery::{DisablePolicy, RetryPolicy};
use postback::model::{DeliveryKey, ManagerId, OfferId, PartnerId, Postback, PostbackId, Status};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{
    Manage, ManualClock, MemoryStore, NotificationSink, OpsStats, Replay, Store, Worker,
    WorkerConfig, WorkerHandle,
};

pub const PB: PostbackId = PostbackId::new(1);
pub const PARTNER: PartnerId = PartnerId::new(7);
pub const SECRET: &str = "s3cr3t-0f-the-partner";
const PATIENCE: Duration = Duration::from_secs(10);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

fn manager() -> Actor {
    Actor::Network(ManagerId::new(1))
}

async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the scripted run leaves to check.
pub struct Run {
    pub rx: Receiver,
    pub store: Arc<MemoryStore>,
    /// The delivery that exhausted its attempts (and was replayed).
    pub failed: DeliveryKey,
    /// The delivery whose failure disabled the postback.
    pub tipped: DeliveryKey,
    pub summary: OpsStats,
}

/// 25 failures: a first delivery exhausts its 20 attempts, a second fails 5 times and the 25th
/// consecutive failure disables the postback (the second is held, the manager is told); a third
/// trigger while disabled is created held; an enable releases both (delivered); a replay of the
/// exhausted one (delivered); then a shutdown. 28 requests in all.
pub async fn scripted_run() -> Run {
    // The first 25 requests (numbered from 1) fail with a 500, then every one succeeds.
    let rx = Receiver::start(|_, n| {
        if n <= 25 {
            Response::status(500)
        } else {
            Response::ok()
        }
    });
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let told = Arc::new(AtomicU64::new(0));
    let sink = {
        let told = Arc::clone(&told);
        NotificationSink::callback(move |_| {
            told.fetch_add(1, Ordering::SeqCst);
        })
    };
    let config = WorkerConfig::new()
        .retry(
            RetryPolicy::default()
                .jitter(0, 0)
                .schedule(vec![Duration::from_secs(1)])
                .max_attempts(20),
        )
        .disable(DisablePolicy::ConsecutiveWithin {
            failures: 25,
            window: Duration::from_secs(72 * 3600),
        })
        .notifications(sink)
        .poll_interval(Duration::from_millis(20));
    let transport = ReqwestTransport::new(
        Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5)),
    )
    .expect("a reqwest transport");
    let h: WorkerHandle = Worker::new(Arc::clone(&store), transport, clock.clone(), config).start();
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        // A tracker's key in the path, marked as a literal secret.
        .url(rx.url(&format!("/pb/{SECRET}?cid={{sub1}}")))
        .secret(SECRET)
        .build()
        .expect("the fixture postback is valid");
    h.manage(manager(), Manage::Create(pb))
        .await
        .expect("creating the postback");
    let trigger = async |id: u64, click: &str| {
        h.trigger(
            Trigger::conversion(id, PARTNER, OfferId::new(42)),
            ValueMap::new().with(Macro::SUB1, click),
        )
        .await
        .expect("a trigger")
    };
    let failed = trigger(1, "click-aaaa").await.created[0];
    eventually("the first delivery is exhausted", async || {
        if h.counts().await.expect("counts").gave_up == 1 {
            return true;
        }
        clock.advance(Duration::from_secs(1));
        false
    })
    .await;
    let tipped = trigger(2, "click-bbbb").await.created[0];
    let disabled = || {
        matches!(
            store
                .registry_get()
                .expect("registry")
                .get(PB)
                .map(Postback::status),
            Some(Status::Disabled { .. })
        )
    };
    eventually("the postback is disabled", async || {
        if disabled() {
            return true;
        }
        clock.advance(Duration::from_secs(1));
        false
    })
    .await;
    eventually("the manager is told", async || {
        told.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        trigger(3, "click-cccc").await.held.len(),
        1,
        "created held: the postback is disabled"
    );
    h.manage(manager(), Manage::Enable(PB))
        .await
        .expect("enabling");
    eventually("the held deliveries are delivered", async || {
        h.counts().await.expect("counts").delivered == 2
    })
    .await;
    assert_eq!(
        h.replay(Replay::Delivery(failed)).await.expect("a replay"),
        1
    );
    eventually("the replayed delivery is delivered", async || {
        h.counts().await.expect("counts").delivered == 3
    })
    .await;
    let summary = h.stats_summary().await.expect("the stats summary");
    h.shutdown(Duration::from_secs(1)).await;
    Run {
        rx,
        store,
        failed,
        tipped,
        summary,
    }
}
