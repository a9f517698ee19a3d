//! Several stores (several pools: as several processes) over one PostgreSQL schema, on the
//! server at `POSTBACK_PG_URL` (skipped without one): disjoint claims, one disablement however
//! many fail at once, results of a disabled postback held, changes seen across stores, wake-ups
//! over LISTEN/NOTIFY, and a schema newer than the build refused.
#![cfg(feature = "postgres")]
#![allow(
    clippy::disallowed_methods,
    reason = "the tests run stores on threads of their own"
)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use chrono::{DateTime, Utc};

use postback::access::{Actor, Settings};
use postback::delivery::{Action, Delivery, DisablePolicy, Next, Progress, RetryPolicy};
use postback::model::{
    ConversionStatus, Corrections, ManagerId, OfferId, PartnerId, Postback, PostbackId, Status,
};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback_store::{
    Claimed, Completion, Filter, Manage, PostgresStore, Rules, Store, StoreError, Token,
};

const PB: PostbackId = PostbackId::new(1);
const PARTNER: PartnerId = PartnerId::new(7);
const LEASE: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn postback() -> Postback {
    ok(
        Postback::builder(PB)
            .partner(PARTNER)
            .url("https://partner.example/pb?cid={sub1}")
            .build(),
        "the fixture postback",
    )
}

fn manager() -> Actor {
    Actor::Network(ManagerId::new(1))
}

/// `n` stores over one fresh schema, postback 1 created through the first.
fn stores(url: &str, n: usize) -> (String, Vec<Arc<PostgresStore>>) {
    let schema = support::schema_name();
    let all: Vec<_> = (0..n)
        .map(|_| Arc::new(support::open(url, &schema)))
        .collect();
    ok(
        all[0].postback_manage(
            t0(),
            manager(),
            Manage::Create(postback()),
            &Settings::default(),
        ),
        "creating the postback",
    );
    (schema, all)
}

fn convert(s: &PostgresStore, id: u64) {
    let t = Trigger::conversion(id, PARTNER, OfferId::new(42));
    let values = ValueMap::new().with(Macro::SUB1, format!("click-{id}"));
    let e = ok(
        s.trigger_enqueue(t0(), &t, &values, &Rules::default()),
        "a trigger",
    );
    assert!(e.errors.is_empty(), "the trigger planned without errors");
}

fn no_jitter() -> RetryPolicy {
    RetryPolicy::default().jitter(0, 0)
}

/// Send a claimed delivery through the core's state machine and answer it with `status`.
fn answer(c: &Claimed, now: DateTime<Utc>, status: u16) -> (Delivery, Progress) {
    let mut d = c.delivery.clone();
    let pb = c.postback.clone().unwrap_or_else(postback);
    let rules = Rules::default();
    match d.poll(now, &postback_store::send_context(&pb, &rules)) {
        Action::Send(_) => {}
        other => panic!("a claimed delivery is sendable, got {other:?}"),
    }
    let resp = ok(
        http::Response::builder()
            .status(status)
            .body(b"body".to_vec()),
        "a response",
    );
    let progress = ok(d.handle_response(now, Ok(resp), &no_jitter()), "a response");
    (d, progress)
}

fn complete(
    s: &PostgresStore,
    c: &Claimed,
    now: DateTime<Utc>,
    status: u16,
    policy: &DisablePolicy,
) -> Completion {
    let (d, p) = answer(c, now, status);
    ok(
        s.delivery_complete(now, c.token, d, p, policy),
        "completing",
    )
}

fn three_failures() -> DisablePolicy {
    DisablePolicy::ConsecutiveWithin {
        failures: 3,
        window: Duration::from_secs(3600),
    }
}

#[test]
fn claims_from_several_stores_at_once_are_disjoint_and_cover_everything_due() {
    let Some(url) = support::url("claims_from_several_stores_at_once_are_disjoint") else {
        return;
    };
    let (schema, stores) = stores(&url, 4);
    for i in 0..400 {
        convert(&stores[0], i);
    }
    let start = Arc::new(Barrier::new(stores.len() * 2));
    let threads: Vec<_> = (0..stores.len() * 2)
        .map(|i| {
            let s = Arc::clone(&stores[i % stores.len()]);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let mut mine = Vec::new();
                loop {
                    let got = ok(
                        s.deliveries_claim(t0(), &format!("claimant-{i}"), 7, LEASE),
                        "claiming",
                    );
                    if got.is_empty() {
                        break mine;
                    }
                    mine.extend(got.into_iter().map(|c| (*c.delivery.key(), c.token)));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in threads {
        let mine = match t.join() {
            Ok(m) => m,
            Err(_) => panic!("a claimant panicked"),
        };
        total += mine.len();
        for (key, token) in mine {
            assert_eq!(token, Token(1), "claimed once: {key}");
            assert!(seen.insert(key), "{key} was claimed twice");
        }
    }
    assert_eq!(
        total, 400,
        "every due delivery claimed, by one claimant each"
    );
    let counts = ok(stores[1].deliveries_count(), "counts");
    assert_eq!((counts.pending, counts.leased), (400, 400));
    drop(stores);
    support::drop_schemas(&url, &[schema]);
}

#[test]
fn two_stores_failing_the_same_postback_at_once_disable_it_once_with_one_notification() {
    let Some(url) = support::url("two_stores_failing_the_same_postback_at_once") else {
        return;
    };
    for round in 0..5 {
        let (schema, stores) = stores(&url, 2);
        for i in 0..24 {
            convert(&stores[0], i);
        }
        let a = ok(stores[0].deliveries_claim(t0(), "a", 10, LEASE), "a claims");
        let b = ok(stores[1].deliveries_claim(t0(), "b", 10, LEASE), "b claims");
        assert_eq!((a.len(), b.len()), (10, 10));
        let start = Arc::new(Barrier::new(2));
        let threads: Vec<_> = [(Arc::clone(&stores[0]), a), (Arc::clone(&stores[1]), b)]
            .into_iter()
            .map(|(s, claimed)| {
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    claimed
                        .iter()
                        .filter(|c| {
                            matches!(
                                complete(&s, c, t0() + secs(1), 500, &three_failures()),
                                Completion::Completed { disabled: true, .. }
                            )
                        })
                        .count()
                })
            })
            .collect();
        let disabled: usize = threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| panic!("a completer panicked")))
            .sum();
        assert_eq!(
            disabled, 1,
            "round {round}: one disablement across both stores"
        );
        for s in &stores {
            let reg = ok(s.registry_get(), "registry");
            assert!(
                matches!(
                    reg.get(PB).map(|p| p.status()),
                    Some(Status::Disabled { .. })
                ),
                "round {round}: both stores see it disabled"
            );
            assert_eq!(
                ok(s.notifications_pending(), "notifications").len(),
                1,
                "round {round}: one notification"
            );
        }
        assert_eq!(
            ok(stores[1].deliveries_of(PB, Filter::Held, 100), "held").len(),
            24,
            "round {round}: every delivery of the postback is held, claimed or not"
        );
        assert!(
            ok(
                stores[0].deliveries_claim(t0() + secs(7200), "c", 50, LEASE),
                "claim"
            )
            .is_empty(),
            "nothing held is claimed"
        );
        drop(stores);
        support::drop_schemas(&url, &[schema]);
    }
}

#[test]
fn a_postback_disabled_by_one_store_holds_what_another_had_claimed_when_results_come_back() {
    let Some(url) = support::url("a_postback_disabled_by_one_store_holds_what_another_claimed")
    else {
        return;
    };
    let (schema, stores) = stores(&url, 2);
    for i in 0..5 {
        convert(&stores[0], i);
    }
    let a = ok(stores[0].deliveries_claim(t0(), "a", 3, LEASE), "a claims");
    let b = ok(stores[1].deliveries_claim(t0(), "b", 3, LEASE), "b claims");
    assert_eq!((a.len(), b.len()), (3, 2));
    let mut disabled = 0;
    for c in &a {
        if let Completion::Completed { disabled: true, .. } =
            complete(&stores[0], c, t0() + secs(1), 500, &three_failures())
        {
            disabled += 1;
        }
    }
    assert_eq!(disabled, 1, "the first store's failures disable it");
    for c in &b {
        let done = complete(&stores[1], c, t0() + secs(2), 503, &three_failures());
        assert_eq!(
            done,
            Completion::Completed {
                next: Next::Held,
                disabled: false
            },
            "a result of another store's claim comes back to a disabled postback: held"
        );
    }
    let held = ok(stores[1].deliveries_of(PB, Filter::Held, 10), "held");
    assert_eq!(held.len(), 5);
    assert_eq!(ok(stores[1].deliveries_count(), "counts").leased, 0);
    assert_eq!(ok(stores[1].notifications_pending(), "notes").len(), 1);
    // Enabled through the second store: the first sees it before its next claim.
    let later = t0() + secs(600);
    let m = ok(
        stores[1].postback_manage(later, manager(), Manage::Enable(PB), &Settings::default()),
        "enable",
    );
    assert_eq!(m.deliveries, 5);
    let again = ok(stores[0].deliveries_claim(later, "a", 10, LEASE), "claim");
    assert_eq!(again.len(), 5, "released everywhere");
    assert!(
        again
            .iter()
            .all(|c| c.postback.as_ref().is_some_and(|p| p.status().is_active())),
        "the claim carries the postback as the other store left it"
    );
    drop(stores);
    support::drop_schemas(&url, &[schema]);
}

#[test]
fn a_trigger_stored_through_one_store_wakes_the_listener_of_another() {
    let Some(url) = support::url("a_trigger_stored_through_one_store_wakes_another") else {
        return;
    };
    let (schema, stores) = stores(&url, 2);
    let Some(wake) = stores[1].wake_source() else {
        panic!("the PostgreSQL store has a wake source");
    };
    convert(&stores[0], 1);
    let rt = ok(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build(),
        "a runtime",
    );
    // Not a timing assertion: a bound so a missing wake-up fails rather than hangs.
    let woke =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), wake.notified()).await });
    assert!(
        woke.is_ok(),
        "the NOTIFY of the trigger woke the other store"
    );
    drop(stores);
    support::drop_schemas(&url, &[schema]);
}

#[test]
fn a_schema_newer_than_the_build_is_refused_and_left_alone() {
    let Some(url) = support::url("a_schema_newer_than_the_build_is_refused") else {
        return;
    };
    let (schema, stores) = stores(&url, 1);
    drop(stores);
    let mut client = ok(postgres::Client::connect(&url, postgres::NoTls), "connect");
    ok(
        client.batch_execute(&format!(
            "UPDATE \"{schema}\".schema_version SET version = 99"
        )),
        "bumping the version",
    );
    match PostgresStore::builder(url.as_str()).schema(&schema).open() {
        Err(StoreError::SchemaTooNew { found: 99, known }) => assert!(known < 99),
        Err(e) => panic!("expected SchemaTooNew, got {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    let v: i64 = ok(
        client.query_one(
            &format!("SELECT version FROM \"{schema}\".schema_version"),
            &[],
        ),
        "reading the version",
    )
    .get(0);
    assert_eq!(v, 99, "left as it was");
    support::drop_schemas(&url, &[schema]);
}

#[test]
fn a_trigger_stored_in_the_callers_transaction_commits_or_rolls_back_with_it() {
    let Some(url) = support::url("a_trigger_stored_in_the_callers_transaction") else {
        return;
    };
    let (schema, stores) = stores(&url, 1);
    let s = &stores[0];
    let mut client = ok(postgres::Client::connect(&url, postgres::NoTls), "connect");
    ok(
        client.batch_execute("CREATE TEMP TABLE conversions (id BIGINT PRIMARY KEY)"),
        "the caller's table",
    );
    let values = ValueMap::new().with(Macro::SUB1, "click-1");
    for (id, commit) in [(1_u64, false), (2, true)] {
        let mut tx = ok(client.transaction(), "the caller's transaction");
        let n = i64::try_from(id).unwrap_or_default();
        ok(
            tx.execute("INSERT INTO conversions (id) VALUES ($1)", &[&n]),
            "the conversion",
        );
        let t = Trigger::conversion(id, PARTNER, OfferId::new(42));
        let e = ok(
            s.trigger_enqueue_in(&mut tx, t0(), &t, &values, &Rules::default()),
            "enqueue in the caller's transaction",
        );
        assert_eq!(e.created.len(), 1);
        let path: String = ok(tx.query_one("SHOW search_path", &[]), "search path").get(0);
        assert!(
            !path.contains(&schema),
            "the caller's search path is back: {path}"
        );
        if commit {
            ok(tx.commit(), "commit");
        } else {
            ok(tx.rollback(), "rollback");
        }
    }
    let counts = ok(s.deliveries_count(), "counts");
    assert_eq!(
        counts.pending, 1,
        "the rolled-back conversion left no delivery"
    );
    let kept = ok(s.deliveries_of(PB, Filter::All, 10), "deliveries");
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].key().trigger().as_str(), "2");
    drop(stores);
    support::drop_schemas(&url, &[schema]);
}

const PB2: PostbackId = PostbackId::new(2);

#[test]
fn batches_of_completions_over_two_postbacks_from_several_stores_take_locks_in_one_order() {
    let Some(url) = support::url("batches_of_completions_over_two_postbacks") else {
        return;
    };
    let (schema, stores) = stores(&url, 4);
    let second = ok(
        Postback::builder(PB2)
            .partner(PARTNER)
            .url("https://partner.example/pb2?cid={sub1}")
            .build(),
        "the second postback",
    );
    ok(
        stores[0].postback_manage(
            t0(),
            manager(),
            Manage::Create(second),
            &Settings::default(),
        ),
        "creating the second postback",
    );
    for i in 0..150 {
        convert(&stores[0], i);
    }
    let start = Arc::new(Barrier::new(stores.len()));
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let (s, start) = (Arc::clone(s), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let mut disabled = 0;
                loop {
                    let claimed = ok(
                        s.deliveries_claim(t0(), &format!("w{n}"), 16, LEASE),
                        "a claim",
                    );
                    if claimed.is_empty() {
                        return disabled;
                    }
                    // Every batch holds both postbacks, half of them in the other order: the
                    // locks are taken sorted whatever the batch's order, so no deadlock.
                    let mut batch: Vec<_> = claimed
                        .iter()
                        .map(|c| {
                            let (d, p) = answer(c, t0() + secs(1), 500);
                            (c.token, d, p)
                        })
                        .collect();
                    batch.sort_by_key(|(_, d, _)| d.postback());
                    if n % 2 == 1 {
                        batch.reverse();
                    }
                    let done = ok(
                        s.deliveries_complete(t0() + secs(1), batch, &three_failures()),
                        "a batch of completions",
                    );
                    assert_eq!(done.len(), claimed.len(), "one completion per item");
                    disabled += done
                        .iter()
                        .filter(|c| matches!(c, Completion::Completed { disabled: true, .. }))
                        .count();
                }
            })
        })
        .collect();
    let disabled: usize = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| panic!("a completer panicked")))
        .sum();
    assert_eq!(disabled, 2, "each postback disabled once, by one batch");
    assert_eq!(
        ok(stores[3].notifications_pending(), "notifications").len(),
        2,
        "one notification per postback"
    );
    for pb in [PB, PB2] {
        assert_eq!(
            ok(stores[2].deliveries_of(pb, Filter::Held, 1000), "held").len(),
            150,
            "every delivery of postback {pb} is held"
        );
    }
    drop(stores);
    support::drop_schemas(&url, &[schema]);
}

#[test]
fn overlapping_batches_of_triggers_from_several_stores_create_each_delivery_once() {
    let Some(url) = support::url("overlapping_batches_of_triggers") else {
        return;
    };
    let (schema, stores) = stores(&url, 4);
    let start = Arc::new(Barrier::new(stores.len()));
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let (s, start) = (Arc::clone(s), Arc::clone(&start));
            std::thread::spawn(move || {
                // Every store stores the same 200 triggers in batches of 25, half in reverse.
                let mut ids: Vec<u64> = (0..200).collect();
                if n % 2 == 1 {
                    ids.reverse();
                }
                let values: Vec<_> = ids
                    .iter()
                    .map(|i| ValueMap::new().with(Macro::SUB1, format!("click-{i}")))
                    .collect();
                start.wait();
                let mut created = Vec::new();
                for (ids, values) in ids.chunks(25).zip(values.chunks(25)) {
                    let batch: Vec<(Trigger, &dyn postback::template::MacroValues)> = ids
                        .iter()
                        .zip(values)
                        .map(|(i, v)| {
                            (
                                Trigger::conversion(*i, PARTNER, OfferId::new(42)),
                                v as &dyn postback::template::MacroValues,
                            )
                        })
                        .collect();
                    let out = ok(
                        s.triggers_enqueue(t0(), &batch, &Rules::default()),
                        "a batch of triggers",
                    );
                    assert_eq!(out.len(), batch.len());
                    for e in out {
                        assert_eq!(e.created.len() + e.duplicates.len(), 1);
                        created.extend(e.created);
                    }
                }
                created
            })
        })
        .collect();
    let created: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_else(|_| panic!("an enqueuer panicked")))
        .collect();
    let unique: HashSet<_> = created.iter().collect();
    assert_eq!(
        (created.len(), unique.len()),
        (200, 200),
        "each delivery created once across the stores"
    );
    assert_eq!(ok(stores[1].deliveries_count(), "counts").pending, 200);
    drop(stores);
    support::drop_schemas(&url, &[schema]);
}

/// A conversion's correction, enqueued through another process, is not claimed by anyone while
/// the original is out under a lease, and is claimed once the original's result is written.
#[test]
fn a_correction_waits_for_the_original_out_with_another_process() {
    let Some(url) = support::url("a_correction_waits_for_the_original_out_with_another_process")
    else {
        return;
    };
    let (schema, all) = stores(&url, 2);
    let corrected = ok(
        Postback::builder(PostbackId::new(3))
            .partner(PARTNER)
            .url("https://partner.example/pb?cid={sub1}&status={conversion_status}")
            .corrections(Corrections::all())
            .build(),
        "the correcting postback",
    );
    ok(
        all[0].postback_manage(
            t0(),
            manager(),
            Manage::Create(corrected),
            &Settings::default(),
        ),
        "creating it",
    );
    let t = Trigger::conversion(1001, PARTNER, OfferId::new(42));
    let values = ValueMap::new().with(Macro::SUB1, "click");
    let _ = ok(
        all[0].trigger_enqueue(t0(), &t, &values, &Rules::default()),
        "the conversion",
    );
    let a = ok(all[0].deliveries_claim(t0(), "a", 10, LEASE), "claim a");
    assert_eq!(a.len(), 2, "both postbacks' originals");
    let revision = std::num::NonZeroU32::new(1).unwrap_or(std::num::NonZeroU32::MIN);
    let e = ok(
        all[1].trigger_enqueue(
            t0(),
            &t.corrected(revision, ConversionStatus::Reversed),
            &values,
            &Rules::default(),
        ),
        "the reversal",
    );
    assert_eq!(e.created.len(), 1, "only the postback that opted in");
    assert!(
        ok(all[1].deliveries_claim(t0(), "b", 10, LEASE), "claim b").is_empty(),
        "the reversal waits while its original is out"
    );
    for c in &a {
        let _ = complete(&all[0], c, t0() + secs(1), 200, &DisablePolicy::default());
    }
    let b = ok(
        all[1].deliveries_claim(t0() + secs(1), "b", 10, LEASE),
        "claim b",
    );
    assert_eq!(
        b.iter()
            .map(|c| c.delivery.key().to_string())
            .collect::<Vec<_>>(),
        ["1001.3.conversion.1"]
    );
    drop((all, a, b));
    support::drop_schemas(&url, &[schema]);
}

/// A schema from before corrections (version 1) is migrated in place, its deliveries kept.
#[test]
fn a_schema_from_before_corrections_is_migrated_and_its_deliveries_still_claimed() {
    let Some(url) = support::url("a_schema_from_before_corrections_is_migrated") else {
        return;
    };
    let (schema, all) = stores(&url, 1);
    convert(&all[0], 1);
    drop(all);
    let mut client = ok(postgres::Client::connect(&url, postgres::NoTls), "connect");
    ok(
        client.batch_execute(&format!(
            "SET search_path TO \"{schema}\";
             DROP INDEX deliveries_corrections;
             ALTER TABLE deliveries DROP COLUMN revision;
             UPDATE schema_version SET version = 1;"
        )),
        "downgrading to schema 1",
    );
    let s = support::open(&url, &schema);
    convert(&s, 2);
    assert_eq!(
        ok(s.deliveries_claim(t0(), "a", 10, LEASE), "claim").len(),
        2
    );
    let version: i64 = ok(
        client.query_one(
            &format!("SELECT version FROM \"{schema}\".schema_version"),
            &[],
        ),
        "version",
    )
    .get(0);
    assert_eq!(version, 2);
    drop(s);
    support::drop_schemas(&url, &[schema]);
}
