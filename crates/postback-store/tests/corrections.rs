//! Corrections through the Worker on a SQLite file, against a real partner on 127.0.0.1: every
//! conversion's status changes reach the partner after the conversion itself and in revision
//! order, although the Worker sends up to 64 requests at once and every first attempt fails.
#![cfg(feature = "sqlite")]
// The receiver's script runs on its own threads and keeps its state behind a mutex.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use postback::access::Actor;
use postback::delivery::RetryPolicy;
use postback::model::{
    ConversionStatus, Corrections, DeliveryKey, ManagerId, OfferId, PartnerId, Postback, PostbackId,
};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{Manage, ManualClock, SqliteStore, Worker, WorkerConfig};

const PB: PostbackId = PostbackId::new(1);
const PARTNER: PartnerId = PartnerId::new(7);
const CONVERSIONS: u64 = 20;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

fn rev(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("above 0")
}

/// The key in a request's `id` parameter.
fn key_of(target: &str) -> DeliveryKey {
    let id = target
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("id="))
        .expect("the id parameter");
    id.parse().expect("a delivery key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_reach_the_partner_after_their_conversion_and_in_order() {
    // The partner fails the first attempt of every delivery and accepts the second.
    let tried: Arc<Mutex<BTreeSet<DeliveryKey>>> = Arc::default();
    let seen = Arc::clone(&tried);
    let rx = Receiver::start(move |r, _| {
        let key = key_of(&r.target_str());
        let first = seen.lock().map(|mut s| s.insert(key)).unwrap_or(false);
        if first {
            Response::status(503)
        } else {
            Response::ok()
        }
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(SqliteStore::open(dir.path().join("store.sqlite")).expect("open"));
    let clock = ManualClock::new(t0());
    let wait = Duration::from_secs(60);
    let config =
        WorkerConfig::new().retry(RetryPolicy::default().jitter(0, 0).schedule(vec![wait]));
    let transport = ReqwestTransport::new(
        Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5)),
    )
    .expect("a transport");
    let h = Worker::new(Arc::clone(&store), transport, clock.clone(), config).start();
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .url(rx.url("/pb?cid={sub1}&status={conversion_status}&id={delivery_id}"))
        .corrections(Corrections::all())
        .build()
        .expect("valid");
    h.manage(Actor::Network(ManagerId::new(1)), Manage::Create(pb))
        .await
        .expect("create");

    // Each conversion, then its approval and its reversal, all at once.
    for id in 1..=CONVERSIONS {
        let t = Trigger::conversion(id, PARTNER, OfferId::new(42));
        let values = || ValueMap::new().with(Macro::SUB1, format!("click-{id}").as_str());
        for t in [
            t,
            t.corrected(rev(1), ConversionStatus::Approved),
            t.corrected(rev(2), ConversionStatus::Reversed),
        ] {
            let e = h.trigger(t, values()).await.expect("a trigger");
            assert_eq!(e.created.len(), 1, "each creates one delivery");
        }
    }
    let total = CONVERSIONS * 3;
    // Each round, whatever is due is sent; then time moves to the retries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = h.counts().await.expect("counts").delivered;
        if delivered == total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {delivered} of {total} delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        clock.advance(wait);
        h.wake();
    }

    // Per conversion: the revisions the partner accepted, in the order it accepted them, and
    // no request for a revision before the one before it was accepted.
    let mut accepted: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut sent: BTreeMap<String, Vec<(u32, bool)>> = BTreeMap::new();
    for (req, status) in rx.exchanges() {
        let key = key_of(&req.target_str());
        let ok = status == Some(200);
        let conv = key.trigger().as_str().to_owned();
        sent.entry(conv.clone())
            .or_default()
            .push((key.revision(), ok));
        if ok {
            accepted.entry(conv).or_default().push(key.revision());
        }
        let word = ["approved", "approved", "reversed"][key.revision() as usize];
        if key.revision() > 0 {
            assert!(req.target_str().contains(&format!("status={word}")));
        }
    }
    assert_eq!(accepted.len(), usize::try_from(CONVERSIONS).unwrap_or(0));
    for (conv, revs) in &accepted {
        assert_eq!(revs, &[0, 1, 2], "conversion {conv} arrived in order");
    }
    for (conv, requests) in &sent {
        let mut done = 0;
        for &(revision, ok) in requests {
            assert!(
                revision <= done,
                "conversion {conv}: revision {revision} sent before {} was accepted",
                revision.saturating_sub(1)
            );
            if ok {
                done = revision + 1;
            }
        }
    }
    h.shutdown(Duration::from_secs(1)).await;
}
