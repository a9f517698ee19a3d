//! Signed postbacks through a durable store: a Worker on a SQLite file sends over real loopback
//! HTTP, and the partner checks the Standard Webhooks headers with `postback::signing`, after the
//! process (store and worker) restarted between creating the postback and sending it. Time moves
//! only by `ManualClock`; conditions are awaited with a bounded poll, never a fixed sleep.
#![cfg(feature = "sqlite")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use postback::access::Actor;
use postback::delivery::RetryPolicy;
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::Trigger;
use postback::signing::{
    self, DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, QueryNames, Secret,
    Signing, VerifyError,
};
use postback::template::{Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Request, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{
    Clock, Manage, ManualClock, SqliteStore, Store, Worker, WorkerConfig, WorkerHandle,
};

const PB: PostbackId = PostbackId::new(1);
const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const PATIENCE: Duration = Duration::from_secs(10);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEXT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

fn manager() -> Actor {
    Actor::Network(ManagerId::new(1))
}

fn secret(text: &str) -> Secret {
    Secret::parse(text).expect("a valid secret")
}

fn transport() -> ReqwestTransport {
    let config = Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5));
    ReqwestTransport::new(config).expect("a reqwest transport")
}

fn start(store: &Arc<SqliteStore>, clock: &ManualClock) -> WorkerHandle {
    let retry = RetryPolicy::default()
        .jitter(0, 0)
        .schedule(vec![Duration::from_secs(60)]);
    Worker::new(
        Arc::clone(store),
        transport(),
        clock.clone(),
        WorkerConfig::new().retry(retry),
    )
    .start()
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

/// The receiver's request as an `http::Request`, the way a partner's server framework has it.
fn to_http(r: &Request) -> http::Request<Vec<u8>> {
    let mut b = http::Request::builder()
        .method(r.method.as_str())
        .uri(r.target_str().as_ref());
    for (k, v) in &r.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(r.body.clone()).expect("a valid request")
}

/// How the partner checks a request: the request, the origin it serves, its secrets, its clock.
type Check = fn(&Request, &str, &[Secret], DateTime<Utc>) -> Result<(), VerifyError>;

/// What the partner's verification said of each request, in arrival order.
type Verdicts = Arc<Mutex<Vec<Result<(), VerifyError>>>>;

/// A partner that verifies every request with `secrets` at its own clock (the test's), answers
/// 503 to the first and then 200 to each request that verifies (401 otherwise), and records what
/// verification said.
fn verifying_partner(
    clock: &ManualClock,
    secrets: Vec<Secret>,
    check: Check,
) -> (Receiver, Verdicts) {
    let results: Verdicts = Arc::new(Mutex::new(Vec::new()));
    let origin = Arc::new(Mutex::new(String::new()));
    let (r, o, c) = (Arc::clone(&results), Arc::clone(&origin), clock.clone());
    let rx = Receiver::start(move |req, n| {
        let origin = o.lock().map(|o| o.clone()).unwrap_or_default();
        let verdict = check(req, &origin, &secrets, c.now());
        let ok = verdict.is_ok();
        if let Ok(mut r) = r.lock() {
            r.push(verdict);
        }
        match (n, ok) {
            (1, _) => Response::status(503),
            (_, true) => Response::ok(),
            (_, false) => Response::status(401),
        }
    });
    if let Ok(mut o) = origin.lock() {
        *o = rx.url("");
    }
    (rx, results)
}

fn by_headers(
    r: &Request,
    origin: &str,
    secrets: &[Secret],
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    signing::verify_request(&to_http(r), origin, secrets, now, DEFAULT_TOLERANCE)
}

fn by_query(
    r: &Request,
    origin: &str,
    secrets: &[Secret],
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    let url = format!("{origin}{}", r.target_str());
    let names = QueryNames::new("sig", "ts").id("did");
    let method = http::Method::from_bytes(r.method.as_bytes()).unwrap_or_default();
    signing::verify_url(
        &method,
        &url,
        &r.body,
        &names,
        secrets,
        now,
        DEFAULT_TOLERANCE,
    )
}

/// Create the postback through a first worker, then stop it and close the store: the signing
/// settings must come back from the file.
async fn create_then_restart(
    path: &std::path::Path,
    clock: &ManualClock,
    pb: Postback,
) -> Arc<SqliteStore> {
    {
        let store = Arc::new(SqliteStore::open(path).expect("opening the store"));
        let h = start(&store, clock);
        h.manage(manager(), Manage::Create(pb))
            .await
            .expect("creating the postback");
        h.shutdown(Duration::from_secs(1)).await;
    }
    Arc::new(SqliteStore::open(path).expect("reopening the store"))
}

async fn deliver_one(
    store: &Arc<SqliteStore>,
    clock: &ManualClock,
    rx: &Receiver,
) -> Vec<postback::delivery::Attempt> {
    let h = start(store, clock);
    let values = ValueMap::new().with(Macro::SUB1, "click-1");
    let key = h
        .trigger(Trigger::conversion(1001, PARTNER, OFFER), values)
        .await
        .expect("a trigger")
        .created[0];
    eventually("the first attempt is answered", async || {
        h.stats().retried == 1
    })
    .await;
    clock.advance(Duration::from_secs(60));
    eventually("it is delivered", async || {
        h.counts().await.expect("counts").delivered == 1
    })
    .await;
    assert_eq!(rx.count(), 2);
    let attempts = h.attempts_of(key).await.expect("attempts");
    h.shutdown(Duration::from_secs(1)).await;
    attempts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_sqlite_signs_each_attempt_after_a_restart_and_the_partner_verifies_the_headers()
 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("postback.sqlite");
    let clock = ManualClock::new(t0());
    // The partner holds only the new secret; the network signs with both during the rotation.
    let (rx, results) = verifying_partner(&clock, vec![secret(NEXT_SECRET)], by_headers);
    let signing = Signing::headers([secret(SECRET), secret(NEXT_SECRET)]).expect("valid signing");
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .url(rx.url("/pb?cid={sub1}"))
        .signing(signing.clone())
        .build()
        .expect("a valid postback");
    let store = create_then_restart(&path, &clock, pb).await;

    // The store kept the signing whole in its postbacks, and redacted it in its audit trail.
    let registry = store.registry_get().expect("the registry");
    assert_eq!(registry.get(PB).and_then(Postback::signing), Some(&signing));
    let audit = store.audit_of(PB).expect("the audit trail");
    let after = audit[0].after.as_ref().expect("the created postback");
    assert!(after.signing().is_some_and(|s| s.is_redacted()));

    let attempts = deliver_one(&store, &clock, &rx).await;
    let verdicts = results.lock().expect("results").clone();
    assert_eq!(verdicts, [Ok(()), Ok(())], "both attempts verify");

    let requests = rx.requests();
    let h = |i: usize, n: &str| requests[i].header(n).expect("a signing header").to_owned();
    assert_eq!(h(0, HEADER_ID), "1001.1.conversion.0");
    assert_eq!(
        h(1, HEADER_ID),
        h(0, HEADER_ID),
        "one key for every attempt"
    );
    assert_eq!(h(0, HEADER_TIMESTAMP), t0().timestamp().to_string());
    assert_eq!(h(1, HEADER_TIMESTAMP), (t0().timestamp() + 60).to_string());
    assert_eq!(h(1, HEADER_SIGNATURE).split(' ').count(), 2);
    // The retry was signed anew: the first attempt's signature does not verify the second's
    // timestamp.
    let mut replay = to_http(&requests[1]);
    let first_sig = h(0, HEADER_SIGNATURE);
    replay
        .headers_mut()
        .insert(HEADER_SIGNATURE, first_sig.parse().expect("a header value"));
    assert_eq!(
        signing::verify_request(
            &replay,
            &rx.url(""),
            &[secret(SECRET)],
            clock.now(),
            DEFAULT_TOLERANCE
        ),
        Err(VerifyError::Mismatch)
    );
    // No secret reached an attempt record.
    let records = format!("{attempts:?}");
    for s in [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ] {
        assert!(!records.contains(s), "{records}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_sqlite_signs_in_query_parameters_and_the_partner_verifies_the_url() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("postback.sqlite");
    let clock = ManualClock::new(t0());
    let (rx, results) = verifying_partner(&clock, vec![secret(SECRET)], by_query);
    let names = QueryNames::new("sig", "ts").id("did");
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .url(rx.url("/pb?cid={sub1}"))
        .signing(Signing::query(names, [secret(SECRET)]).expect("valid signing"))
        .build()
        .expect("a valid postback");
    let store = create_then_restart(&path, &clock, pb).await;
    let attempts = deliver_one(&store, &clock, &rx).await;
    assert_eq!(results.lock().expect("results").clone(), [Ok(()), Ok(())]);
    let targets: Vec<String> = rx
        .requests()
        .iter()
        .map(|r| r.target_str().into_owned())
        .collect();
    assert!(
        targets[1].starts_with(&format!(
            "/pb?cid=click-1&ts={}&did=1001.1.conversion.0&sig=v1%2C",
            t0().timestamp() + 60
        )),
        "{targets:?}"
    );
    assert!(
        attempts[1].url.contains("&did=1001.1.conversion.0&sig=***"),
        "{:?}",
        attempts[1].url
    );
}
