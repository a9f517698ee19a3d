//! The embedded store: one SQLite file (feature `sqlite`, on by default).
//!
//! Every write is one transaction begun with `BEGIN IMMEDIATE`, so several [`SqliteStore`]s on
//! one file (several processes) serialize: a delivery is claimed by one of them, and ids, drawn
//! from a counter in the `meta` table inside the transaction, stay unique across them. The
//! schema (`migrations/`) and the statements (`sql/<table>.sql`) are embedded; the schema is
//! versioned with `PRAGMA user_version`, and a file newer than this build is refused
//! ([`StoreError::SchemaTooNew`]).
//!
//! The truth of a delivery is its `state` column (the core's [`Delivery`] as JSON); `status`,
//! `due_at` and the other columns are projections written in the same statement. Times are
//! unix microseconds, always the caller's `now`, never SQLite's clock. A due time is stored
//! rounded up to the microsecond and `now` is compared rounded down, so nothing is claimed
//! before it is due; retention compares rounded down, so it keeps rather than deletes what lies
//! within a microsecond of its bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, named_params, params};

use postback::access::{Actor, AuditEntry, Operation, Settings};
use postback::delivery::{
    Attempt, Delivery, DeliveryId, DisablePolicy, Health, Progress, on_operation,
};
use postback::model::{DeliveryKey, Postback, PostbackId};
use postback::plan::FireError;
use postback::registry::{Precedence, Registry, Trigger};
use postback::template::MacroValues;

use crate::apply;
use crate::sql::{ceil, count, delivery_from, due_column, floor, status_text, time};
use crate::store::{
    Claimed, Completion, Counts, Enqueued, Filter, Manage, Managed, Notification, Replay, Rules,
    Store, StoreError, Token,
};

mod queries;
mod schema;

use queries::{ATTEMPTS, AUDIT, DELIVERIES, HEALTH, META, NOTIFICATIONS, POSTBACKS, q};

/// How long a write waits for another process's transaction on the file before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A rusqlite result as the store's.
trait Db<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Database(e.to_string()))
    }
}

/// What a commit of the [`SqliteStore`] survives once it returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Any crash of the process, kill -9 included (`synchronous = NORMAL` under WAL). The
    /// default.
    #[default]
    ProcessCrash,
    /// A power loss or a crash of the machine too (`synchronous = FULL`: the WAL is synced on
    /// every commit).
    PowerLoss,
}

/// The [`Store`] in one SQLite file.
///
/// Opened with WAL (readers never wait for the writer), `busy_timeout` 5 s (a write waits that
/// long for another process's), and the [`Durability`] asked for: by default
/// `synchronous = NORMAL`, under which a committed trigger or result survives any crash of the
/// process (kill -9 included) but the last commits can be lost if the machine itself loses
/// power; [`Durability::PowerLoss`] (`synchronous = FULL`) syncs the WAL on every commit and
/// cost 4.7x the throughput here (133 against 620 deliveries/s end to end, in the first version of
/// the Worker, which committed every trigger and result alone). No foreign keys: attempts, the audit
/// trail and notifications outlive the deliveries and postbacks they name.
///
/// Calls block (on the connection's lock and on other processes' writes); the
/// [`Worker`](crate::Worker) makes them on tokio's blocking threads.
#[derive(Debug)]
pub struct SqliteStore {
    inner: Mutex<Inner>,
    path: Option<PathBuf>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    /// The registry as of a `registry_version`: used only while the version stored in `meta`,
    /// read in the same transaction, is still that one.
    registry: Option<(i64, Registry)>,
}

impl SqliteStore {
    /// Open (or create) the store in the file at `path`, bringing its schema up to date.
    /// A file written by a newer postback-store is refused with [`StoreError::SchemaTooNew`]
    /// and left as it is.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, Durability::default())
    }

    /// [`open`](Self::open) with the durability of commits chosen.
    pub fn open_with(
        path: impl AsRef<Path>,
        durability: Durability,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let conn = Connection::open(path).db()?;
        SqliteStore::with_connection(conn, Some(path.to_owned()), durability)
    }

    /// A store in memory, gone when dropped (tests).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::with_connection(
            Connection::open_in_memory().db()?,
            None,
            Durability::default(),
        )
    }

    fn with_connection(
        mut conn: Connection,
        path: Option<PathBuf>,
        durability: Durability,
    ) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).db()?;
        // Before changing anything in the file.
        schema::check(schema::version(&conn)?)?;
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .db()?;
        let sync = match durability {
            Durability::ProcessCrash => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync).db()?;
        // Otherwise SQLite reads a bound `LIMIT :limit` while preparing, and every new binding
        // re-prepares the statement: twice a claim, compiling its correction checks each time.
        // No statement's plan depends on a bound value.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .db()?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        Ok(SqliteStore {
            inner: Mutex::new(Inner {
                conn,
                registry: None,
            }),
            path,
        })
    }

    /// The file it is in (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Replace the stored postbacks and precedence with `registry`, unaudited, as
    /// [`MemoryStore::with_registry`](crate::MemoryStore::with_registry) does: for setting up.
    /// Deliveries, health and the audit trail are left as they are.
    pub fn registry_replace(&self, registry: &Registry) -> Result<(), StoreError> {
        let mut g = self.lock();
        let Inner {
            conn,
            registry: cache,
        } = &mut *g;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let old = cached_registry(&tx, cache)?;
        let version = write_registry(&tx, old, registry)?;
        tx.commit().db()?;
        if let Some(v) = version {
            *cache = Some((v, registry.clone()));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock rolled its transaction back (rusqlite's `Transaction`
        // does on drop), and the cached registry is only ever one that was committed.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions.

fn int(what: &str, n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Database(format!("{what} {n} does not fit SQLite")))
}

// ---------------------------------------------------------------------------------------------
// Rows of `deliveries`.

/// A delivery's row as read.
struct Row {
    id: i64,
    /// Attempts already in the attempts table.
    written: usize,
    d: Delivery,
}

/// Every row of a statement, each read by `row`.
fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    conn.prepare_cached(sql)
        .db()?
        .query_map(params, row)
        .db()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .db()
}

/// Rows from a statement returning `id, attempts_written, state`.
fn rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Row>, StoreError> {
    let raw: Vec<_> = all(conn, sql, params, |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    raw.into_iter()
        .map(|(id, written, state)| {
            Ok(Row {
                id,
                written: count(written),
                d: delivery_from(id, &state)?,
            })
        })
        .collect()
}

fn row_by_key(conn: &Connection, key: &DeliveryKey) -> Result<Option<Row>, StoreError> {
    Ok(
        rows(conn, q(DELIVERIES, "by_key")?, params![key.to_text()])?
            .into_iter()
            .next(),
    )
}

/// The projections of a delivery's state, as the statements `insert`, `update` and `complete`
/// name them.
struct Projection {
    state: String,
    status: &'static str,
    due_at: Option<i64>,
    finished_at: Option<i64>,
    written: i64,
}

fn project(d: &Delivery, due: Option<DateTime<Utc>>) -> Result<Projection, StoreError> {
    Ok(Projection {
        state: apply::to_json(d)?,
        status: apply::status_of(d),
        due_at: due_column(d, due),
        finished_at: apply::finished_at(d).map(floor),
        written: int("attempt count", d.attempts().len() as u64)?,
    })
}

/// Append the attempts of `d` after the first `written`.
fn write_attempts(conn: &Connection, d: &Delivery, written: usize) -> Result<(), StoreError> {
    let new = apply::new_attempts(d, written);
    if new.is_empty() {
        return Ok(());
    }
    let key = d.key().to_text();
    let postback = int("postback id", d.postback().get())?;
    let mut stmt = conn.prepare_cached(q(ATTEMPTS, "insert")?).db()?;
    for a in new {
        stmt.execute(named_params! {
            ":delivery": key,
            ":number": a.number,
            ":postback": postback,
            ":at": floor(a.at),
            ":json": apply::to_json(a)?,
        })
        .db()?;
    }
    Ok(())
}

fn insert_delivery(conn: &Connection, d: &Delivery) -> Result<(), StoreError> {
    let key = d.key().to_text();
    let purpose = crate::sql::purpose_of(&key);
    let p = project(d, d.due())?;
    conn.prepare_cached(q(DELIVERIES, "insert")?)
        .db()?
        .execute(named_params! {
            ":id": int("delivery id", d.id().get())?,
            ":key": key,
            ":postback": int("postback id", d.postback().get())?,
            ":trigger": d.key().trigger().as_str(),
            ":purpose": purpose,
            ":revision": i64::from(d.key().revision()),
            ":status": p.status,
            ":due_at": p.due_at,
            ":written": p.written,
            ":created_at": floor(d.created()),
            ":finished_at": p.finished_at,
            ":state": p.state,
        })
        .db()?;
    write_attempts(conn, d, 0)
}

/// Write a row's delivery (due at `due` if scheduled), adding `settle` to its settled claims.
fn update_delivery(
    conn: &Connection,
    row: &Row,
    due: Option<DateTime<Utc>>,
    settle: i64,
) -> Result<(), StoreError> {
    let p = project(&row.d, due)?;
    conn.prepare_cached(q(DELIVERIES, "update")?)
        .db()?
        .execute(named_params! {
            ":id": row.id,
            ":state": p.state,
            ":status": p.status,
            ":due_at": p.due_at,
            ":finished_at": p.finished_at,
            ":written": p.written,
            ":settle": settle,
        })
        .db()?;
    write_attempts(conn, &row.d, row.written)
}

/// Apply `change` to each row; write those it changed (due as their state says). Returns how
/// many.
fn change_rows(
    conn: &Connection,
    rows: Vec<Row>,
    mut change: impl FnMut(&mut Delivery) -> bool,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for mut row in rows {
        if change(&mut row.d) {
            let due = row.d.due();
            update_delivery(conn, &row, due, 0)?;
            n += 1;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Meta, the registry, health.

fn meta_i64(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    conn.prepare_cached(q(META, "get")?)
        .db()?
        .query_row(params![name], |r| r.get(0))
        .db()
}

fn meta_set(conn: &Connection, name: &str, value: impl rusqlite::ToSql) -> Result<(), StoreError> {
    conn.prepare_cached(q(META, "set")?)
        .db()?
        .execute(params![name, value])
        .db()?;
    Ok(())
}

/// Hands out delivery ids from the counter in `meta`, inside the caller's transaction.
struct Ids {
    last: u64,
    start: u64,
}

impl Ids {
    fn read(conn: &Connection) -> Result<Ids, StoreError> {
        let last = u64::try_from(meta_i64(conn, "next_delivery_id")?).map_err(|_| {
            StoreError::Corrupt {
                what: "the delivery id counter".to_owned(),
                detail: "negative".to_owned(),
            }
        })?;
        Ok(Ids { last, start: last })
    }

    fn next(&mut self) -> Result<DeliveryId, StoreError> {
        let next = self
            .last
            .checked_add(1)
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or(FireError::IdsExhausted)?;
        self.last = next;
        Ok(DeliveryId::new(next))
    }

    fn write(&self, conn: &Connection) -> Result<(), StoreError> {
        if self.last != self.start {
            meta_set(conn, "next_delivery_id", int("delivery id", self.last)?)?;
        }
        Ok(())
    }
}

fn load_registry(conn: &Connection) -> Result<Registry, StoreError> {
    let precedence: String = conn
        .prepare_cached(q(META, "get")?)
        .db()?
        .query_row(params!["precedence"], |r| r.get(0))
        .db()?;
    let precedence: Precedence = apply::from_json("the registry's precedence", &precedence)?;
    let mut registry = Registry::with_precedence(precedence);
    let raw: Vec<_> = all(conn, q(POSTBACKS, "all")?, [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    for (id, json) in raw {
        let what = format!("postback {id}");
        let p: Postback = apply::from_json(&what, &json)?;
        registry.insert(p).map_err(|e| StoreError::Corrupt {
            what,
            detail: e.to_string(),
        })?;
    }
    Ok(registry)
}

/// The registry as stored, from the cache while the stored `registry_version` (read in this
/// transaction) is the cached one.
fn cached_registry<'a>(
    conn: &Connection,
    cache: &'a mut Option<(i64, Registry)>,
) -> Result<&'a Registry, StoreError> {
    let version = meta_i64(conn, "registry_version")?;
    if !matches!(cache, Some((v, _)) if *v == version) {
        *cache = Some((version, load_registry(conn)?));
    }
    cache
        .as_ref()
        .map(|(_, r)| r)
        .ok_or_else(|| StoreError::Database("the registry cache is empty".to_owned()))
}

/// Write what differs between `old` (as stored) and `new`. Returns the new registry version if
/// anything changed (cache `new` under it once the transaction committed).
fn write_registry(
    conn: &Connection,
    old: &Registry,
    new: &Registry,
) -> Result<Option<i64>, StoreError> {
    let mut changed = false;
    for p in new.iter() {
        if old.get(p.id()) != Some(p) {
            conn.prepare_cached(q(POSTBACKS, "upsert")?)
                .db()?
                .execute(named_params! {
                    ":id": int("postback id", p.id().get())?,
                    ":partner": p.partner().map(|x| int("partner id", x.get())).transpose()?,
                    ":status": status_text(p.status()),
                    ":json": apply::to_json(p)?,
                })
                .db()?;
            changed = true;
        }
    }
    for p in old.iter() {
        if new.get(p.id()).is_none() {
            conn.prepare_cached(q(POSTBACKS, "delete")?)
                .db()?
                .execute(params![int("postback id", p.id().get())?])
                .db()?;
            changed = true;
        }
    }
    if old.precedence() != new.precedence() {
        meta_set(conn, "precedence", apply::to_json(&new.precedence())?)?;
        changed = true;
    }
    if !changed {
        return Ok(None);
    }
    let v = conn
        .prepare_cached(q(META, "bump_registry_version")?)
        .db()?
        .query_row([], |r| r.get(0))
        .db()?;
    Ok(Some(v))
}

fn health_of(conn: &Connection, postback: PostbackId) -> Result<Option<Health>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached(q(HEALTH, "get")?)
        .db()?
        .query_row(params![int("postback id", postback.get())?], |r| r.get(0))
        .optional()
        .db()?;
    json.map(|j| apply::from_json(&format!("health of postback {postback}"), &j))
        .transpose()
}

fn health_put(conn: &Connection, postback: PostbackId, h: &Health) -> Result<(), StoreError> {
    conn.prepare_cached(q(HEALTH, "upsert")?)
        .db()?
        .execute(params![
            int("postback id", postback.get())?,
            apply::to_json(h)?
        ])
        .db()?;
    Ok(())
}

fn audit_put(conn: &Connection, a: &AuditEntry) -> Result<(), StoreError> {
    conn.prepare_cached(q(AUDIT, "insert")?)
        .db()?
        .execute(params![
            int("postback id", a.postback.get())?,
            floor(a.at),
            apply::to_json(a)?
        ])
        .db()?;
    Ok(())
}

/// Read a column of JSON texts.
fn json_rows<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    what: &str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>, StoreError> {
    let texts: Vec<_> = all(conn, sql, params, |r| r.get::<_, String>(0))?;
    texts.iter().map(|t| apply::from_json(what, t)).collect()
}

// ---------------------------------------------------------------------------------------------

impl Store for SqliteStore {
    fn registry_get(&self) -> Result<Registry, StoreError> {
        let mut g = self.lock();
        let Inner {
            conn,
            registry: cache,
        } = &mut *g;
        // A read transaction: the version and the rows from one snapshot.
        let tx = conn.transaction().db()?;
        let r = cached_registry(&tx, cache)?.clone();
        tx.commit().db()?;
        Ok(r)
    }

    fn postback_manage(
        &self,
        now: DateTime<Utc>,
        actor: Actor,
        op: Manage,
        access: &Settings,
    ) -> Result<Managed, StoreError> {
        let mut g = self.lock();
        let Inner {
            conn,
            registry: cache,
        } = &mut *g;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let old = cached_registry(&tx, cache)?;
        let mut registry = old.clone();
        let (audit, operation) = apply::manage(&mut registry, now, actor, op, access)?;
        let version = write_registry(&tx, old, &registry)?;
        let pid = audit.postback;
        let unfinished = rows(
            &tx,
            q(DELIVERIES, "unfinished_of")?,
            named_params! {
                ":postback": int("postback id", pid.get())?,
                ":skip_leased": operation == Operation::Pause,
                ":now": floor(now),
            },
        )?;
        let deliveries = change_rows(&tx, unfinished, |d| on_operation(operation, now, d))?;
        match apply::health_after(operation, health_of(&tx, pid)?) {
            Some(Some(h)) => health_put(&tx, pid, &h)?,
            Some(None) => {
                tx.prepare_cached(q(HEALTH, "delete")?)
                    .db()?
                    .execute(params![int("postback id", pid.get())?])
                    .db()?;
            }
            None => {}
        }
        audit_put(&tx, &audit)?;
        tx.commit().db()?;
        if let Some(v) = version {
            *cache = Some((v, registry));
        }
        Ok(Managed { audit, deliveries })
    }

    fn trigger_enqueue(
        &self,
        now: DateTime<Utc>,
        trigger: &Trigger,
        values: &dyn MacroValues,
        rules: &Rules,
    ) -> Result<Enqueued, StoreError> {
        let mut done = self.triggers_enqueue(now, &[(*trigger, values)], rules)?;
        done.pop()
            .ok_or_else(|| StoreError::Database("a batch of one enqueued nothing".to_owned()))
    }

    fn triggers_enqueue(
        &self,
        now: DateTime<Utc>,
        batch: &[(Trigger, &dyn MacroValues)],
        rules: &Rules,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let mut g = self.lock();
        let Inner {
            conn,
            registry: cache,
        } = &mut *g;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let registry = cached_registry(&tx, cache)?;
        let mut ids = Ids::read(&tx)?;
        let exists = q(DELIVERIES, "exists")?;
        let later = q(DELIVERIES, "later_revision")?;
        let mut outs = Vec::with_capacity(batch.len());
        for (trigger, values) in batch {
            let (out, new) = apply::enqueue(
                registry,
                now,
                trigger,
                *values,
                rules,
                |ask| match ask {
                    // Also a key inserted earlier in this batch: the same trigger twice in one
                    // batch inserts once.
                    apply::Ask::Exists(k) => tx
                        .prepare_cached(exists)
                        .db()?
                        .exists(params![k.to_text()])
                        .db(),
                    apply::Ask::Later(k) => tx
                        .prepare_cached(later)
                        .db()?
                        .exists(params![
                            k.trigger().as_str(),
                            int("postback id", k.postback().get())?,
                            crate::sql::purpose_of(&k.to_text()),
                            i64::from(k.revision()),
                        ])
                        .db(),
                },
                || ids.next(),
            )?;
            for d in &new {
                insert_delivery(&tx, d)?;
            }
            outs.push(out);
        }
        ids.write(&tx)?;
        tx.commit().db()?;
        Ok(outs)
    }

    fn test_fire_enqueue(
        &self,
        now: DateTime<Utc>,
        actor: Actor,
        postback: PostbackId,
        values: &dyn MacroValues,
        rules: &Rules,
        access: &Settings,
    ) -> Result<(DeliveryKey, AuditEntry), StoreError> {
        let mut g = self.lock();
        let Inner {
            conn,
            registry: cache,
        } = &mut *g;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let registry = cached_registry(&tx, cache)?;
        let mut ids = Ids::read(&tx)?;
        let id = ids.next()?;
        let (d, audit) =
            apply::test_fire(registry, now, actor, postback, values, rules, access, id)?;
        insert_delivery(&tx, &d)?;
        audit_put(&tx, &audit)?;
        ids.write(&tx)?;
        tx.commit().db()?;
        Ok((*d.key(), audit))
    }

    fn deliveries_claim(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut g = self.lock();
        let Inner {
            conn,
            registry: cache,
        } = &mut *g;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let until = chrono::Duration::from_std(lease)
            .ok()
            .and_then(|l| now.checked_add_signed(l))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // RETURNING yields rows in no set order, with the new due time: the order comes from
        // the same selection read first, in this transaction.
        let order: Vec<i64> = tx
            .prepare_cached(q(DELIVERIES, "due_ids")?)
            .db()?
            .query_map(named_params! {":now": floor(now), ":limit": limit}, |r| {
                r.get(0)
            })
            .db()?
            .collect::<rusqlite::Result<_>>()
            .db()?;
        if order.is_empty() {
            return Ok(Vec::new());
        }
        // The transaction holds the write lock, so the rows read are the rows claimed.
        let ids = format!(
            "[{}]",
            order
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut claimed: HashMap<i64, (i64, i64, String)> = tx
            .prepare_cached(q(DELIVERIES, "claim")?)
            .db()?
            .query_map(
                named_params! {
                    ":lease_end": ceil(until),
                    ":owner": owner,
                    ":ids": ids,
                },
                |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))),
            )
            .db()?
            .collect::<rusqlite::Result<_>>()
            .db()?;
        let registry = cached_registry(&tx, cache)?;
        let mut out = Vec::with_capacity(order.len());
        for id in order {
            let Some((claims, settled, state)) = claimed.remove(&id) else {
                continue;
            };
            let delivery = delivery_from(id, &state)?;
            // Claims before this one that never settled.
            let interrupted = u32::try_from(claims - 1 - settled).unwrap_or(u32::MAX);
            out.push(Claimed {
                postback: registry.get(delivery.postback()).cloned(),
                delivery,
                token: Token(claims),
                interrupted,
            });
        }
        tx.commit().db()?;
        Ok(out)
    }

    fn delivery_complete(
        &self,
        now: DateTime<Utc>,
        token: Token,
        delivery: Delivery,
        progress: Progress,
        disable: &DisablePolicy,
    ) -> Result<Completion, StoreError> {
        let mut done = self.deliveries_complete(now, vec![(token, delivery, progress)], disable)?;
        done.pop()
            .ok_or_else(|| StoreError::Database("a batch of one completed nothing".to_owned()))
    }

    fn deliveries_complete(
        &self,
        now: DateTime<Utc>,
        batch: Vec<(Token, Delivery, Progress)>,
        disable: &DisablePolicy,
    ) -> Result<Vec<Completion>, StoreError> {
        let mut g = self.lock();
        let Inner {
            conn,
            registry: cache,
        } = &mut *g;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let mut out = Vec::with_capacity(batch.len());
        let mut new_cache = None;
        let mut healths = HashMap::new();
        for (token, delivery, progress) in batch {
            match complete_one(
                &tx,
                cache,
                &mut new_cache,
                &mut healths,
                now,
                token,
                delivery,
                progress,
                disable,
            ) {
                Ok(c) => out.push(c),
                Err(e) => {
                    // The transaction rolls back: a registry read inside it must not stay cached.
                    *cache = None;
                    return Err(e);
                }
            }
        }
        for (pid, (h, dirty)) in &healths {
            if *dirty {
                if let Err(e) = health_put(&tx, *pid, h) {
                    *cache = None;
                    return Err(e);
                }
            }
        }
        tx.commit().db()?;
        if let Some(c) = new_cache {
            *cache = Some(c);
        }
        Ok(out)
    }

    fn delivery_unclaim(
        &self,
        now: DateTime<Utc>,
        key: &DeliveryKey,
        token: Token,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let text = key.to_text();
        // Not interrupted: the claim is as if it never happened.
        let n = tx
            .prepare_cached(q(DELIVERIES, "unclaim")?)
            .db()?
            .execute(named_params! {":key": text, ":token": token.0, ":now": ceil(now)})
            .db()?;
        if n == 0 {
            let known = tx
                .prepare_cached(q(DELIVERIES, "exists")?)
                .db()?
                .exists(params![text])
                .db()?;
            return if known {
                Ok(false)
            } else {
                Err(StoreError::UnknownDelivery(*key))
            };
        }
        tx.commit().db()?;
        Ok(true)
    }

    fn deliveries_next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let g = self.lock();
        let due: Option<i64> = g
            .conn
            .prepare_cached(q(DELIVERIES, "next_due")?)
            .db()?
            .query_row([], |r| r.get(0))
            .db()?;
        due.map(|d| time("a due time", d)).transpose()
    }

    fn delivery_get(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        let g = self.lock();
        Ok(row_by_key(&g.conn, key)?.map(|r| r.d))
    }

    fn deliveries_of(
        &self,
        postback: PostbackId,
        filter: Filter,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let g = self.lock();
        let status = match filter {
            Filter::Pending | Filter::Leased => Some("scheduled"),
            Filter::Held => Some("held"),
            Filter::Exhausted => Some("gave_up"),
            Filter::Delivered => Some("delivered"),
            _ => None,
        };
        let mut stmt = g.conn.prepare_cached(q(DELIVERIES, "of")?).db()?;
        let mut found = stmt
            .query(named_params! {
                ":postback": int("postback id", postback.get())?,
                ":status": status,
                ":leased": filter == Filter::Leased,
            })
            .db()?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(r) = found.next().db()? else {
                break;
            };
            let state: String = r.get(0).db()?;
            let d: Delivery = apply::from_json("a delivery of the postback", &state)?;
            // The status narrows; the core's filter decides (a gave-up test fire is not
            // exhausted).
            if apply::matches(&d, filter) {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn deliveries_count(&self) -> Result<Counts, StoreError> {
        let g = self.lock();
        let by: Vec<_> = all(&g.conn, q(DELIVERIES, "count")?, [], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        let mut c = Counts::default();
        for (status, n, leased) in by {
            let n = u64::try_from(n).unwrap_or(0);
            match status.as_str() {
                "held" => c.held += n,
                "delivered" => c.delivered += n,
                "gave_up" => c.gave_up += n,
                _ => {
                    c.pending += n;
                    c.leased += leased.and_then(|l| u64::try_from(l).ok()).unwrap_or(0);
                }
            }
        }
        Ok(c)
    }

    fn attempts_of(&self, key: &DeliveryKey) -> Result<Vec<Attempt>, StoreError> {
        let g = self.lock();
        json_rows(
            &g.conn,
            &format!("an attempt of {key}"),
            q(ATTEMPTS, "of")?,
            params![key.to_text()],
        )
    }

    fn deliveries_replay(&self, now: DateTime<Utc>, which: &Replay) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let candidates = match which {
            Replay::Delivery(k) => {
                let row = row_by_key(&tx, k)?.ok_or(StoreError::UnknownDelivery(*k))?;
                // A single replay says why it cannot be.
                row.d.clone().replay(now)?;
                vec![row]
            }
            Replay::Postback { postback, from, to } => rows(
                &tx,
                q(DELIVERIES, "gave_up_created_between")?,
                named_params! {
                    ":postback": int("postback id", postback.get())?,
                    ":from": floor(*from),
                    ":to": floor(*to),
                },
            )?
            .into_iter()
            .filter(|r| r.d.created() >= *from && r.d.created() < *to && apply::is_replayable(&r.d))
            .collect(),
        };
        let n = change_rows(&tx, candidates, |d| d.replay(now).is_ok())?;
        tx.commit().db()?;
        Ok(n)
    }

    fn health_get(&self, postback: PostbackId) -> Result<Option<Health>, StoreError> {
        health_of(&self.lock().conn, postback)
    }

    fn audit_of(&self, postback: PostbackId) -> Result<Vec<AuditEntry>, StoreError> {
        let g = self.lock();
        json_rows(
            &g.conn,
            &format!("an audit entry of postback {postback}"),
            q(AUDIT, "of")?,
            params![int("postback id", postback.get())?],
        )
    }

    fn notifications_pending(&self) -> Result<Vec<Notification>, StoreError> {
        let g = self.lock();
        json_rows(&g.conn, "a notification", q(NOTIFICATIONS, "pending")?, [])
    }

    fn notification_done(&self, now: DateTime<Utc>, id: i64) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let n = tx
            .prepare_cached(q(NOTIFICATIONS, "done")?)
            .db()?
            .execute(params![id, floor(now)])
            .db()?;
        tx.commit().db()?;
        Ok(n == 1)
    }

    fn attempts_prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.delete(ATTEMPTS, before)
    }

    fn deliveries_prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.delete(DELIVERIES, before)
    }

    fn stats(&self, now: DateTime<Utc>) -> Result<crate::stats::OpsStats, StoreError> {
        let mut g = self.lock();
        let Inner {
            conn,
            registry: cache,
        } = &mut *g;
        // A read transaction: every part from one snapshot.
        let tx = conn.transaction().db()?;
        let registry = cached_registry(&tx, cache)?.clone();
        let mut raw = crate::stats::Raw::default();
        let pid = |n: i64| PostbackId::new(u64::try_from(n).unwrap_or(0));
        let key = |t: &str| {
            t.parse::<DeliveryKey>().map_err(|e| StoreError::Corrupt {
                what: "a delivery key".to_owned(),
                detail: e.to_string(),
            })
        };
        {
            let rows: Vec<_> = all(&tx, q(DELIVERIES, "stats_counts")?, [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for (p, status, n) in rows {
                raw.count(pid(p), &status, u64::try_from(n).unwrap_or(0));
            }
            let rows: Vec<_> = all(
                &tx,
                q(DELIVERIES, "stats_unsettled")?,
                named_params! {":now": floor(now)},
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                },
            )?;
            for (k, n, live) in rows {
                raw.unsettled.push((key(&k)?, n, live));
            }
            let rows: Vec<_> = all(&tx, q(HEALTH, "all")?, [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            for (p, json) in rows {
                let h: Health = apply::from_json(&format!("health of postback {p}"), &json)?;
                raw.health.insert(pid(p), h);
            }
            let rows: Vec<_> = all(&tx, q(ATTEMPTS, "last_failures")?, [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for (p, k, json) in rows {
                let a: Attempt = apply::from_json(&format!("an attempt of {k}"), &json)?;
                if let Some(f) = crate::stats::LastFailure::of(key(&k)?, &a) {
                    raw.failure(pid(p), f);
                }
            }
        }
        tx.commit().db()?;
        Ok(crate::stats::assemble(now, &registry, raw))
    }
}

impl SqliteStore {
    /// Run a file's `prune` statement with `before`, in its own transaction.
    fn delete(&self, file: &'static str, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let n = tx
            .prepare_cached(q(file, "prune")?)
            .db()?
            .execute(named_params! {":before": floor(before)})
            .db()?;
        tx.commit().db()?;
        Ok(n)
    }
}

/// One completion of a batch, inside its transaction. `new_cache` takes the registry this
/// batch wrote (cached once the transaction commits).
#[allow(
    clippy::too_many_arguments,
    reason = "the arguments of Store::delivery_complete, the transaction and the caches"
)]
fn complete_one(
    tx: &rusqlite::Transaction<'_>,
    cache: &mut Option<(i64, Registry)>,
    new_cache: &mut Option<(i64, Registry)>,
    healths: &mut HashMap<PostbackId, (Health, bool)>,
    now: DateTime<Utc>,
    token: Token,
    mut delivery: Delivery,
    progress: Progress,
    disable: &DisablePolicy,
) -> Result<Completion, StoreError> {
    let key = *delivery.key();
    let fence: Option<(i64, i64, i64)> = tx
        .prepare_cached(q(DELIVERIES, "fence")?)
        .db()?
        .query_row(params![key.to_text()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .db()?;
    // Gone (pruned after another claimant finished it): this claim was lost long ago.
    let Some((id, claims, written)) = fence else {
        return Ok(Completion::LeaseLost);
    };
    if claims != token.0 {
        return Ok(Completion::LeaseLost);
    }
    let pid = key.postback();
    // A disable earlier in this batch changed the registry: read it from the transaction.
    let registry = match new_cache {
        Some((_, r)) => &*r,
        None => cached_registry(tx, cache)?,
    };
    let pb = registry.get(pid).cloned();
    // Read once per batch and postback, written once at the end of the batch.
    let (mut health, dirty) = match healths.remove(&pid) {
        Some(h) => h,
        None => (health_of(tx, pid)?.unwrap_or_default(), false),
    };
    let outcome = apply::complete(
        now,
        &mut delivery,
        progress,
        pb.as_ref(),
        &mut health,
        disable,
    );
    let p = project(&delivery, delivery.due())?;
    let n = tx
        .prepare_cached(q(DELIVERIES, "complete")?)
        .db()?
        .execute(named_params! {
            ":id": id,
            ":token": token.0,
            ":state": p.state,
            ":status": p.status,
            ":due_at": p.due_at,
            ":finished_at": p.finished_at,
            ":written": p.written,
        })
        .db()?;
    if n != 1 {
        // The fence was read in this same write transaction: nothing else can have moved it.
        return Err(StoreError::Database(format!(
            "delivery {key} changed inside its own completion: report it as a bug"
        )));
    }
    write_attempts(tx, &delivery, count(written))?;
    // Written once, at the end of the batch (a test fire or a deleted postback writes none).
    let write = pb.is_some() && !delivery.is_test();
    healths.insert(pid, (health, dirty || write));
    let mut disabled = false;
    if let Some(reason) = outcome.disable {
        let mut next = registry.clone();
        // Only an active postback flips: however many results say so, once.
        if matches!(
            next.disable_automatically(pid, reason.clone(), now),
            Ok(true)
        ) {
            disabled = true;
            if let Some(v) = write_registry(tx, registry, &next)? {
                *new_cache = Some((v, next));
            }
            let note_id: i64 = tx
                .prepare_cached(q(NOTIFICATIONS, "next_id")?)
                .db()?
                .query_row([], |r| r.get(0))
                .db()?;
            let note = Notification {
                id: note_id,
                postback: pid,
                partner: pb.as_ref().and_then(Postback::partner),
                reason,
                at: now,
                attempts: delivery.attempts().to_vec(),
            };
            tx.prepare_cached(q(NOTIFICATIONS, "insert")?)
                .db()?
                .execute(params![
                    note_id,
                    int("postback id", pid.get())?,
                    floor(now),
                    apply::to_json(&note)?
                ])
                .db()?;
            let others = rows(
                tx,
                q(DELIVERIES, "scheduled_of_except")?,
                named_params! {
                    ":postback": int("postback id", pid.get())?,
                    ":id": id,
                    ":now": floor(now),
                },
            )?;
            change_rows(tx, others, |d| on_operation(Operation::Pause, now, d))?;
        }
    }
    Ok(Completion::Completed {
        next: outcome.next,
        disabled,
    })
}
