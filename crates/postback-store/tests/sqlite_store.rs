//! What the SQLite store does beyond the conformance suite: its file's schema version, several
//! processes on one file, rows changed behind its back, and its size on disk.
#![cfg(feature = "sqlite")]

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use postback::access::{Actor, Settings};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback_store::{Claimed, Filter, Manage, Rules, SqliteStore, Store, StoreError};

const PB: PostbackId = PostbackId::new(1);
const PARTNER: PartnerId = PartnerId::new(7);
const LEASE: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn dir() -> tempfile::TempDir {
    ok(tempfile::tempdir(), "a temporary directory")
}

fn open(path: &Path) -> SqliteStore {
    ok(SqliteStore::open(path), "opening the store")
}

fn manager() -> Actor {
    Actor::Network(ManagerId::new(1))
}

fn postback() -> Postback {
    ok(
        Postback::builder(PB)
            .partner(PARTNER)
            .url("https://partner.example/pb?cid={sub1}&token=s3cr3t")
            .build(),
        "the fixture postback",
    )
}

fn create(s: &SqliteStore) {
    ok(
        s.postback_manage(
            t0(),
            manager(),
            Manage::Create(postback()),
            &Settings::default(),
        ),
        "creating the postback",
    );
}

fn convert(s: &SqliteStore, id: u64) -> usize {
    let t = Trigger::conversion(id, PARTNER, OfferId::new(42));
    let v = ValueMap::new().with(Macro::SUB1, format!("click-{id}-abcdefghij"));
    let e = ok(
        s.trigger_enqueue(t0(), &t, &v, &Rules::default()),
        "a trigger",
    );
    assert!(e.errors.is_empty(), "planned without errors");
    e.created.len()
}

fn claim(s: &SqliteStore, owner: &str, n: usize) -> Vec<Claimed> {
    ok(s.deliveries_claim(t0(), owner, n, LEASE), "claiming")
}

fn user_version(path: &Path) -> i64 {
    let conn = ok(
        rusqlite::Connection::open(path),
        "opening the file directly",
    );
    ok(
        conn.pragma_query_value(None, "user_version", |r| r.get(0)),
        "reading user_version",
    )
}

#[test]
fn a_file_with_a_newer_schema_is_refused_with_schema_too_new_and_left_alone() {
    let d = dir();
    let path = d.path().join("store.sqlite");
    drop(open(&path));
    let known = user_version(&path);
    assert!(known >= 1, "a new file is migrated");
    {
        let conn = ok(
            rusqlite::Connection::open(&path),
            "opening the file directly",
        );
        ok(
            conn.pragma_update(None, "user_version", known + 1),
            "a newer schema",
        );
    }
    match SqliteStore::open(&path) {
        Err(StoreError::SchemaTooNew { found, known: k }) => {
            assert_eq!((found, k), (known + 1, known));
            let message = StoreError::SchemaTooNew { found, known: k }.to_string();
            assert!(
                message.contains("newer than this build") && message.contains("upgrade"),
                "the message says what to do: {message}"
            );
        }
        Err(e) => panic!("expected SchemaTooNew, got {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    assert_eq!(user_version(&path), known + 1, "the file is left as it is");
}

#[test]
fn two_stores_on_one_file_claim_disjointly_and_assign_distinct_ids() {
    let d = dir();
    let path = d.path().join("store.sqlite");
    let a = open(&path);
    let b = open(&path);
    create(&a);
    let mut claimed: Vec<Claimed> = Vec::new();
    let mut created = 0;
    for i in 0..40u64 {
        let (here, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        created += convert(here, i);
        if i % 3 == 0 {
            claimed.extend(claim(other, "other", 2));
        }
        if i % 5 == 0 {
            claimed.extend(claim(here, "here", 3));
        }
    }
    claimed.extend(claim(&a, "a", 100));
    claimed.extend(claim(&b, "b", 100));
    assert_eq!(created, 40, "every trigger created its delivery");
    let keys: HashSet<_> = claimed.iter().map(|c| *c.delivery.key()).collect();
    assert_eq!(claimed.len(), 40, "each delivery claimed once");
    assert_eq!(keys.len(), 40, "no delivery claimed by both");
    let all = ok(b.deliveries_of(PB, Filter::All, 1000), "all");
    let ids: HashSet<_> = all.iter().map(|d| d.id()).collect();
    assert_eq!(
        (all.len(), ids.len()),
        (40, 40),
        "distinct ids across stores"
    );
}

#[test]
fn a_change_to_the_postbacks_through_one_store_is_seen_by_another_on_the_same_file() {
    let d = dir();
    let path = d.path().join("store.sqlite");
    let a = open(&path);
    let b = open(&path);
    create(&a);
    assert_eq!(convert(&b, 1), 1, "b sees the postback a created");
    ok(
        a.postback_manage(t0(), manager(), Manage::Pause(PB), &Settings::default()),
        "pause",
    );
    assert_eq!(convert(&b, 2), 0, "b sees the pause at once");
    assert!(claim(&b, "b", 10).is_empty(), "the pause held b's delivery");
}

#[test]
fn two_processes_claiming_at_once_never_share_a_delivery() {
    let d = dir();
    let path = d.path().join("store.sqlite");
    create(&open(&path));
    let per = 60u64;
    let claimed: Vec<Vec<Claimed>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|w| {
                let path = path.clone();
                scope.spawn(move || {
                    let s = open(&path);
                    let mut mine = Vec::new();
                    for i in 0..per {
                        convert(&s, w * 1000 + i);
                        mine.extend(claim(&s, &format!("w{w}"), 2));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| match h.join() {
                Ok(v) => v,
                Err(_) => panic!("a worker panicked"),
            })
            .collect()
    });
    let mut all: Vec<Claimed> = claimed.into_iter().flatten().collect();
    all.extend(claim(&open(&path), "last", 1000));
    let keys: HashSet<_> = all.iter().map(|c| *c.delivery.key()).collect();
    assert_eq!(all.len(), 2 * 60, "every delivery claimed once");
    assert_eq!(keys.len(), all.len(), "none claimed twice");
    let ids: HashSet<_> = all.iter().map(|c| c.delivery.id()).collect();
    assert_eq!(ids.len(), all.len(), "distinct ids");
}

#[test]
fn a_corrupt_state_row_is_reported_as_corrupt_not_a_panic() {
    let d = dir();
    let path = d.path().join("store.sqlite");
    let s = open(&path);
    create(&s);
    convert(&s, 1);
    let key = *claim(&s, "a", 1)[0].delivery.key();
    {
        let conn = ok(
            rusqlite::Connection::open(&path),
            "opening the file directly",
        );
        ok(
            conn.execute("UPDATE deliveries SET state = '{\"id\": 1, \"key\"'", []),
            "corrupting the row",
        );
    }
    let corrupt = |r: Result<(), StoreError>, what: &str| match r {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(
                e.to_string().contains("outside postback-store"),
                "{what}: {e}"
            );
        }
        Err(e) => panic!("{what}: expected Corrupt, got {e}"),
        Ok(()) => panic!("{what}: a corrupt row was read"),
    };
    corrupt(s.delivery_get(&key).map(drop), "get");
    corrupt(s.deliveries_of(PB, Filter::All, 10).map(drop), "query");
    corrupt(
        s.deliveries_claim(t0() + chrono::Duration::seconds(61), "b", 10, LEASE)
            .map(drop),
        "claim",
    );
}

#[test]
fn a_pending_delivery_takes_a_few_hundred_bytes_on_disk() {
    let d = dir();
    let path = d.path().join("store.sqlite");
    let s = open(&path);
    create(&s);
    let used = |s: &SqliteStore| {
        drop(s.deliveries_count());
        let conn = ok(
            rusqlite::Connection::open(&path),
            "opening the file directly",
        );
        ok(
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())),
            "checkpoint",
        );
        let pages: i64 = ok(
            conn.query_row("PRAGMA page_count", [], |r| r.get(0)),
            "pages",
        );
        let free: i64 = ok(
            conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)),
            "free pages",
        );
        let size: i64 = ok(
            conn.query_row("PRAGMA page_size", [], |r| r.get(0)),
            "page size",
        );
        (pages - free) * size
    };
    let before = used(&s);
    let n = 2000;
    for i in 0..n {
        convert(&s, i);
    }
    let after = used(&s);
    let per = (after - before) / i64::try_from(n).unwrap_or(1);
    println!("{per} bytes on disk per pending delivery ({n} deliveries, indexes included)");
    assert!(
        (100..2048).contains(&per),
        "{per} bytes per pending delivery"
    );
}

#[test]
fn a_file_from_before_corrections_is_migrated_and_its_deliveries_still_claimed() {
    let d = dir();
    let path = d.path().join("v1.sqlite");
    {
        let s = open(&path);
        create(&s);
        assert_eq!(convert(&s, 1), 1);
    }
    // Take the file back to schema 1: what a file written before corrections looks like.
    {
        let conn = ok(rusqlite::Connection::open(&path), "opening the file");
        ok(
            conn.execute_batch(
                "DROP INDEX deliveries_corrections;
                 ALTER TABLE deliveries DROP COLUMN revision;
                 PRAGMA user_version = 1;",
            ),
            "downgrading to schema 1",
        );
    }
    let s = open(&path);
    assert_eq!(user_version(&path), 2, "migrated to the corrections schema");
    assert_eq!(convert(&s, 2), 1);
    let claimed = claim(&s, "a", 10);
    assert_eq!(
        claimed.len(),
        2,
        "the old delivery and the new one are claimed"
    );
}
