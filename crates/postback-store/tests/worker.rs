//! The Worker against real partners on 127.0.0.1 (`postback_http::testing::Receiver`, sent
//! through `ReqwestTransport`), over the in-memory store, with time moved by hand
//! (`ManualClock`): no test waits for a retry in real time. Conditions are awaited with a bounded
//! poll (up to 10 s), never a fixed sleep, and nothing asserts on durations.

// The receiver's handlers stand for slow partners: they block their own (receiver) threads.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use postback::access::Actor;
use postback::delivery::{FailureClass, GiveUpReason, RetryPolicy, State};
use postback::model::{DeliveryKey, ManagerId, OfferId, PartnerId, Postback, PostbackId, Status};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{
    Filter, Manage, ManualClock, MemoryStore, Notification, NotificationSink, Rules, Store, Worker,
    WorkerConfig, WorkerError, WorkerHandle,
};

const PB: PostbackId = PostbackId::new(1);
const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const PATIENCE: Duration = Duration::from_secs(10);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

fn manager() -> Actor {
    Actor::Network(ManagerId::new(1))
}

fn transport() -> ReqwestTransport {
    let config = Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5));
    ReqwestTransport::new(config).expect("a reqwest transport")
}

fn postback(url: String) -> Postback {
    Postback::builder(PB)
        .partner(PARTNER)
        .url(url)
        .build()
        .expect("the fixture postback is valid")
}

fn values(click: &str) -> ValueMap {
    ValueMap::new().with(Macro::SUB1, click)
}

fn conversion(id: u64) -> Trigger {
    Trigger::conversion(id, PARTNER, OFFER)
}

/// No waits between attempts beyond the schedule's, so a test can step through them.
fn fixed_retry(wait: Duration) -> RetryPolicy {
    RetryPolicy::default().jitter(0, 0).schedule(vec![wait])
}

/// Wait until `cond` holds, polling; panic with `what` after [`PATIENCE`].
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

/// Start a worker on `store` with `config`.
fn start(store: &Arc<MemoryStore>, clock: &ManualClock, config: WorkerConfig) -> WorkerHandle {
    Worker::new(Arc::clone(store), transport(), clock.clone(), config).start()
}

async fn create(h: &WorkerHandle, rx: &Receiver, path: &str) {
    h.manage(manager(), Manage::Create(postback(rx.url(path))))
        .await
        .expect("creating the postback");
}

async fn delivered(h: &WorkerHandle) -> u64 {
    h.counts().await.expect("counts").delivered
}

/// A partner's handler that blocks until opened (at most [`PATIENCE`]).
#[derive(Clone, Default)]
struct Gate(Arc<AtomicBool>);

impl Gate {
    fn wait(&self) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !self.0.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversions_through_the_handle_are_delivered_exactly_once_each_with_their_key() {
    let rx = Receiver::start(|_, _| Response::ok());
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let mut rules = Rules::default();
    rules.idempotency_header = Some("Idempotency-Key".to_owned());
    let h = start(&store, &clock, WorkerConfig::new().rules(rules));
    create(&h, &rx, "/pb?cid={sub1}&id={delivery_id}").await;

    let mut keys = BTreeSet::new();
    for id in 1..=5 {
        let e = h
            .trigger(conversion(id), values(&format!("click-{id}")))
            .await
            .expect("a trigger");
        assert_eq!(e.created.len(), 1, "each conversion creates one delivery");
        keys.insert(e.created[0]);
    }
    eventually("five are delivered", async || delivered(&h).await == 5).await;

    let requests = rx.requests();
    assert_eq!(requests.len(), 5, "one request per conversion");
    let mut seen = BTreeSet::new();
    for r in &requests {
        let header = r.header("Idempotency-Key").expect("the idempotency header");
        let key: DeliveryKey = header.parse().expect("the header is a delivery key");
        assert!(
            keys.contains(&key),
            "the header names one of the deliveries"
        );
        assert!(
            r.target_str().contains(&format!("id={key}")),
            "{{delivery_id}} is the key: {}",
            r.target_str()
        );
        seen.insert(key);
    }
    assert_eq!(seen, keys, "each delivery was sent once");

    // The same conversion again creates nothing, and nothing is sent for it.
    let again = h
        .trigger(conversion(1), values("click-1"))
        .await
        .expect("a trigger");
    assert!(again.created.is_empty());
    assert_eq!(again.duplicates.len(), 1);
    let _ = h
        .trigger(conversion(6), values("click-6"))
        .await
        .expect("a trigger");
    eventually("the sixth is delivered", async || delivered(&h).await == 6).await;
    assert_eq!(rx.count(), 6, "the duplicate trigger sent nothing");
    assert_eq!(h.stats().delivered, 6);
    h.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_that_answers_503_then_200_gets_one_retry_after_the_schedules_wait() {
    let rx = Receiver::start(|_, n| {
        if n == 1 {
            Response::status(503)
        } else {
            Response::ok()
        }
    });
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let wait = Duration::from_secs(60);
    let h = start(&store, &clock, WorkerConfig::new().retry(fixed_retry(wait)));
    create(&h, &rx, "/pb?cid={sub1}").await;
    let key = h
        .trigger(conversion(1), values("a"))
        .await
        .expect("a trigger")
        .created[0];

    eventually("the first attempt is completed", async || {
        h.stats().retried == 1
    })
    .await;
    assert_eq!(rx.count(), 1, "no second attempt before the wait");
    let d = h.delivery(key).await.expect("get").expect("kept");
    assert!(
        matches!(d.state(), State::Scheduled { at } if *at == t0() + chrono::Duration::seconds(60))
    );

    clock.advance(wait);
    eventually("it is delivered", async || delivered(&h).await == 1).await;
    assert_eq!(rx.count(), 2);
    let attempts = h.attempts_of(key).await.expect("attempts");
    let statuses: Vec<_> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(503), Some(200)]);
    assert_eq!(attempts[0].failure, Some(FailureClass::Status(503)));
    assert_eq!(attempts[1].failure, None);
    h.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_failures_disable_the_postback_once_and_the_manager_is_told_once() {
    let rx = Receiver::start(|_, _| Response::status(500));
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let told: Arc<Mutex<Vec<Notification>>> = Arc::default();
    let sink = {
        let told = Arc::clone(&told);
        NotificationSink::callback(move |n| told.lock().expect("lock").push(n))
    };
    let config = WorkerConfig::new()
        .retry(fixed_retry(Duration::from_secs(1)))
        .notifications(sink);
    let h = start(&store, &clock, config);
    create(&h, &rx, "/pb?cid={sub1}").await;
    // Two deliveries failing side by side: still one disablement.
    let _ = h
        .trigger(conversion(1), values("a"))
        .await
        .expect("a trigger");
    let _ = h
        .trigger(conversion(2), values("b"))
        .await
        .expect("a trigger");

    let disabled = || {
        let registry = store.registry_get().expect("registry");
        matches!(
            registry.get(PB).map(Postback::status),
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
    eventually("the manager is told", async || h.stats().notified == 1).await;
    assert_eq!(told.lock().expect("lock").len(), 1, "one notification");
    assert_eq!(told.lock().expect("lock")[0].postback, PB);
    assert!(
        h.notifications_pending().await.expect("pending").is_empty(),
        "marked done"
    );
    let held = h.deliveries_of(PB, Filter::Held, 10).await.expect("held");
    assert!(!held.is_empty(), "what was still scheduled is held");

    // Later turns and a second worker on the same store tell nobody again.
    clock.advance(Duration::from_secs(3600));
    let turns = h.stats().turns;
    eventually("the first worker turns again", async || {
        h.stats().turns > turns + 1
    })
    .await;
    h.shutdown(Duration::from_secs(1)).await;
    assert_eq!(told.lock().expect("lock").len(), 1, "still one");

    let again: Arc<Mutex<Vec<Notification>>> = Arc::default();
    let sink = {
        let again = Arc::clone(&again);
        NotificationSink::callback(move |n| again.lock().expect("lock").push(n))
    };
    let second = start(&store, &clock, WorkerConfig::new().notifications(sink));
    eventually("the second worker has turned", async || {
        second.stats().turns >= 2
    })
    .await;
    assert!(
        again.lock().expect("lock").is_empty(),
        "the second worker tells nobody"
    );
    second.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_fires_result_can_be_awaited_and_it_is_never_retried() {
    let rx = Receiver::start(|_, _| Response::status(500));
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let h = start(
        &store,
        &clock,
        WorkerConfig::new().retry(fixed_retry(Duration::from_secs(1))),
    );
    create(&h, &rx, "/pb?cid={sub1}").await;

    let fire = h
        .test_fire(manager(), PB, values("sample"))
        .await
        .expect("a test fire");
    let key = *fire.key();
    let d = fire.finished().await.expect("its result");
    assert!(matches!(
        d.state(),
        State::GaveUp {
            reason: GiveUpReason::TestFire,
            ..
        }
    ));
    assert_eq!(d.attempts().len(), 1);
    assert_eq!(d.attempts()[0].status, Some(500));

    clock.advance(Duration::from_secs(24 * 3600));
    let turns = h.stats().turns;
    eventually("the worker turns again", async || {
        h.stats().turns > turns + 1
    })
    .await;
    assert_eq!(rx.count(), 1, "never retried");
    assert_eq!(h.attempts_of(key).await.expect("attempts").len(), 1);
    h.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_fire_awaited_after_the_worker_stopped_says_so() {
    let rx = Receiver::start(|_, _| Response::ok());
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let h = start(&store, &clock, WorkerConfig::new());
    create(&h, &rx, "/pb?cid={sub1}").await;
    h.shutdown(Duration::ZERO).await;
    assert!(h.is_stopped());

    let fire = h
        .test_fire(manager(), PB, values("sample"))
        .await
        .expect("queued");
    assert!(matches!(fire.finished().await, Err(WorkerError::Stopped)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_gives_back_what_it_had_not_sent_and_loses_nothing() {
    let gate = Gate::default();
    let arrived = Arc::new(AtomicUsize::new(0));
    let rx = {
        let (gate, arrived) = (gate.clone(), Arc::clone(&arrived));
        Receiver::start(move |_, _| {
            arrived.fetch_add(1, Ordering::SeqCst);
            gate.wait();
            Response::ok()
        })
    };
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let lease = Duration::from_secs(60);
    let config = WorkerConfig::new().max_per_host(1).lease(lease);
    let first = start(&store, &clock, config);
    create(&first, &rx, "/pb?cid={sub1}").await;
    let mut keys = Vec::new();
    for id in 1..=3 {
        let e = first
            .trigger(conversion(id), values("c"))
            .await
            .expect("a trigger");
        keys.extend(e.created);
    }
    eventually("one request is out", async || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;

    first.shutdown(Duration::from_millis(50)).await;
    let stats = first.stats();
    assert_eq!(stats.left_leased, 1, "the request still out stays leased");
    assert_eq!(stats.delivered, 0);
    assert_eq!(
        first.counts().await.expect("counts").pending,
        3,
        "nothing lost"
    );
    gate.open();

    // A new worker claims what was given back at once, with no time passing.
    let second = start(&store, &clock, WorkerConfig::new().lease(lease));
    eventually("the two given back are delivered", async || {
        delivered(&second).await == 2
    })
    .await;
    assert_eq!(second.counts().await.expect("counts").pending, 1);

    // The one left out is sent again once its lease ends, recorded as interrupted.
    clock.advance(lease + Duration::from_secs(1));
    eventually("all three are delivered", async || {
        delivered(&second).await == 3
    })
    .await;
    let mut interrupted = 0;
    for key in keys {
        let attempts = second.attempts_of(key).await.expect("attempts");
        interrupted += attempts
            .iter()
            .filter(|a| a.failure == Some(FailureClass::Interrupted))
            .count();
    }
    assert_eq!(interrupted, 1, "the request cut off by the shutdown");
    second.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_host_cap_holds() {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let rx = {
        let (now, most) = (Arc::clone(&now), Arc::clone(&most));
        Receiver::start(move |_, _| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            now.fetch_sub(1, Ordering::SeqCst);
            Response::ok()
        })
    };
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let h = start(&store, &clock, WorkerConfig::new().max_per_host(2));
    create(&h, &rx, "/pb?cid={sub1}").await;
    for id in 1..=10 {
        let _ = h
            .trigger(conversion(id), values("c"))
            .await
            .expect("a trigger");
    }
    eventually("all ten are delivered", async || delivered(&h).await == 10).await;
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "at most 2 at once to one host, saw {most}"
    );
    assert_eq!(rx.count(), 10, "each sent once");
    h.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn a_lease_not_longer_than_twice_the_transport_timeout_is_reported() {
    let http = Config::new(NetPolicy::default());
    // The defaults fit: a 5 minute lease over a 10 s timeout.
    assert_eq!(WorkerConfig::new().check(http.timeout), Ok(()));
    for lease in [http.timeout, http.timeout * 3 / 2, http.timeout * 2] {
        let config = WorkerConfig::new().lease(lease);
        let err = config.check(http.timeout);
        assert_eq!(
            err,
            Err(postback_store::ConfigError::LeaseTooShort {
                lease,
                transport_timeout: http.timeout,
            }),
            "a lease of {lease:?}"
        );
        let said = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(said.contains("twice the transport timeout"), "{said}");
    }
    assert_eq!(
        WorkerConfig::new()
            .lease(http.timeout * 2 + Duration::from_millis(1))
            .check(http.timeout),
        Ok(())
    );
}
