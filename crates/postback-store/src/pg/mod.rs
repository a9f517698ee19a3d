//! The shared store: PostgreSQL (feature `postgres`), for many worker processes on many machines
//! over one database.
//!
//! The schema is the SQLite store's in PostgreSQL types (`migrations/`, embedded and versioned
//! in a `schema_version` table; a database newer than this build is refused with
//! [`StoreError::SchemaTooNew`]), and so are the statements (`sql/<table>.sql`). The truth of a
//! delivery is its `state` column (the core's [`Delivery`] as JSONB); `status`, `due_at` and the
//! other columns are projections written in the same statement. Times are unix microseconds in
//! `BIGINT`s, always the caller's `now` (a parameter, never `now()`), rounded as the SQLite store
//! rounds them: a due time up, `now` and retention bounds down.
//!
//! How processes share it:
//! - **Claims** are one statement, a `MATERIALIZED` CTE with `FOR UPDATE SKIP LOCKED`: claimants
//!   pass each other's rows, so claims are disjoint, and the claim count is the fencing token.
//! - **Completions** are fenced (`WHERE claims = token`) and serialized per postback by the
//!   postback's lock (a transaction-level advisory lock, taken first, before any row lock), under
//!   which its health row is read `FOR UPDATE`, updated, and, when the policy fires, the postback
//!   flipped from active to disabled, the manager's notification inserted and its scheduled
//!   deliveries held, in the same transaction: however many processes fail the same postback at
//!   once, one disablement and one notification. Management operations take the same lock.
//! - **The registry** is cached per store under the version in `registry_meta`, read in the same
//!   transaction; every writer locks that row first, so a change made through any process is
//!   seen by every store at its next transaction.
//! - **Delivery ids** come from a sequence.
//! - **Wake-ups**: a transaction that makes deliveries due now (a trigger, a test fire, an
//!   enable, a resume, a replay) sends `NOTIFY postback_store_wake` with the schema's name when it
//!   commits; [`Store::wake_source`] starts a thread listening for it, which wakes the
//!   [`Worker`](crate::Worker) at once rather than at its next poll.
//!
//! Transactions run at READ COMMITTED; one that PostgreSQL aborts for a deadlock or a
//! serialization failure, or that loses a race to insert the same key, is run again from the
//! start (its effects were rolled back).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Statement};

use postback::access::{AccessError, Actor, AuditEntry, Operation, Settings};
use postback::delivery::{
    Attempt, Delivery, DeliveryError, DeliveryId, DisablePolicy, Health, Progress, on_operation,
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

mod listen;
mod queries;
mod schema;

use queries::{ATTEMPTS, AUDIT, DELIVERIES, HEALTH, META, NOTIFICATIONS, POSTBACKS, q};

/// How many times a transaction PostgreSQL aborted (deadlock, serialization, a lost race for a
/// key) is run again before its error is returned.
const RETRIES: usize = 8;

/// The connections a store opens at most, by default.
const DEFAULT_MAX_CONNECTIONS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Errors.

/// A failure inside a transaction: PostgreSQL's (which may be retried) or the store's.
#[derive(Debug)]
pub(super) enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<AccessError> for Fail {
    fn from(e: AccessError) -> Fail {
        Fail::Store(e.into())
    }
}

impl From<DeliveryError> for Fail {
    fn from(e: DeliveryError) -> Fail {
        Fail::Store(e.into())
    }
}

impl From<FireError> for Fail {
    fn from(e: FireError) -> Fail {
        Fail::Store(e.into())
    }
}

impl Fail {
    /// Whether PostgreSQL rolled the transaction back for a reason running it again can cure.
    fn retryable(&self) -> bool {
        match self {
            Fail::Pg(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::UNIQUE_VIOLATION
            ),
            Fail::Store(_) => false,
        }
    }

    fn into_store(self) -> StoreError {
        match self {
            Fail::Pg(e) => StoreError::Database(pg_message(&e)),
            Fail::Store(e) => e,
        }
    }
}

/// A PostgreSQL error with the server's message, if it sent one.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => e.to_string(),
    }
}

fn db(e: postgres::Error) -> StoreError {
    StoreError::Database(pg_message(&e))
}

// ---------------------------------------------------------------------------------------------
// The pool.

/// A connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

#[derive(Default)]
struct Slots {
    idle: Vec<Conn>,
    /// Connections open, idle or in use.
    open: usize,
}

/// A small pool: at most `max` connections, opened when needed, each with the store's search
/// path.
struct Pool {
    config: Config,
    schema: Option<String>,
    max: usize,
    slots: Mutex<Slots>,
    freed: Condvar,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let client = connect(&self.config, self.schema.as_deref())?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// A connection, waiting for one to be given back if `max` are in use.
    fn get(&self) -> Result<Lease<'_>, StoreError> {
        let mut slots = self.lock();
        loop {
            if let Some(conn) = slots.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if slots.open < self.max {
                slots.open += 1;
                drop(slots);
                return match self.connect() {
                    Ok(conn) => Ok(Lease {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            slots = self.freed.wait(slots).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put(&self, conn: Conn) {
        let mut slots = self.lock();
        if conn.client.is_closed() {
            slots.open -= 1;
            drop(slots);
            drop_off_runtime(vec![conn]);
        } else {
            slots.idle.push(conn);
        }
        self.freed.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        drop_off_runtime(idle);
    }
}

/// Drop blocking clients on a thread of their own: each owns a small tokio runtime, which
/// cannot be dropped (nor its connection closed) from inside an async context, where the last
/// handle on a store may well be dropped.
fn drop_off_runtime<T: Send + 'static>(things: Vec<T>) {
    if things.is_empty() {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        drop(things);
        return;
    }
    let dropper = std::thread::Builder::new()
        .name("postback-store-drop".to_owned())
        .spawn(move || drop(things));
    if let Ok(t) = dropper {
        let _ = t.join();
    }
}

/// A connection out of the pool, given back when dropped.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.put(c);
        }
    }
}

/// A blocking client on `config`, its search path the schema if given.
fn connect(config: &Config, schema: Option<&str>) -> Result<Client, StoreError> {
    let mut client = config.connect(NoTls).map_err(|e| {
        StoreError::Database(format!("connecting to PostgreSQL: {}", pg_message(&e)))
    })?;
    if let Some(s) = schema {
        client
            .batch_execute(&format!("SET search_path TO {}", schema::ident(s)))
            .map_err(db)?;
    }
    Ok(client)
}

// ---------------------------------------------------------------------------------------------
// Transactions.

type Params<'p> = [&'p (dyn ToSql + Sync)];

/// A transaction on a pooled connection, with that connection's prepared statements.
struct Tx<'a> {
    tx: postgres::Transaction<'a>,
    statements: &'a mut HashMap<&'static str, Statement>,
}

impl Tx<'_> {
    fn prepare(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &'static str, p: &Params<'_>) -> Result<Vec<postgres::Row>, Fail> {
        let s = self.prepare(sql)?;
        Ok(self.tx.query(&s, p)?)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        p: &Params<'_>,
    ) -> Result<Option<postgres::Row>, Fail> {
        let s = self.prepare(sql)?;
        Ok(self.tx.query_opt(&s, p)?)
    }

    fn query_one(&mut self, sql: &'static str, p: &Params<'_>) -> Result<postgres::Row, Fail> {
        let s = self.prepare(sql)?;
        Ok(self.tx.query_one(&s, p)?)
    }

    fn execute(&mut self, sql: &'static str, p: &Params<'_>) -> Result<u64, Fail> {
        let s = self.prepare(sql)?;
        Ok(self.tx.execute(&s, p)?)
    }
}

/// What a transaction returns, and the registry to cache once it committed.
type Done<T> = (T, Option<(i64, Registry)>);

// ---------------------------------------------------------------------------------------------
// The store.

/// The [`Store`] in a PostgreSQL database, shared by any number of processes.
///
/// Built on the blocking [`postgres`] client (which wraps tokio-postgres and drives it on a
/// runtime of its own) with a small pool of its own, rather than tokio-postgres with
/// deadpool-postgres: the [`Store`] trait is synchronous, called by the
/// [`Worker`](crate::Worker) on tokio's blocking threads and by the conformance suite from
/// plain tests with no runtime, so an async pool would need a runtime of the store's own and a
/// `block_on` per call anyway. Connections are plain TCP (no TLS): run it next to the database
/// or through a TLS tunnel.
///
/// Calls block (on the pool, the network and other processes' row locks); make them off async
/// tasks, as the Worker does. Open it with [`PostgresStore::connect`] or
/// [`PostgresStore::builder`].
pub struct PostgresStore {
    pool: Pool,
    /// The registry as of a version: used only while the version stored in `registry_meta`,
    /// read in the same transaction, is still that one.
    registry: Mutex<Option<(i64, Arc<Registry>)>>,
    /// The LISTEN thread, started by the first [`Store::wake_source`].
    listener: OnceLock<listen::Listener>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.pool.schema)
            .field("max_connections", &self.pool.max)
            .finish_non_exhaustive()
    }
}

/// How to open a [`PostgresStore`]: [`PostgresStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresStoreBuilder {
    url: String,
    schema: Option<String>,
    max_connections: usize,
}

impl PostgresStoreBuilder {
    /// Keep the store's tables in this schema (created if missing; the search path of every
    /// connection), not in the connection's default (`public`). Several stores, say one per
    /// test, can share a database this way.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }

    /// Open at most `n` connections (default 8; at least 1). Calls beyond them wait.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Connect and bring the schema up to date. A schema written by a newer postback-store is
    /// refused with [`StoreError::SchemaTooNew`] and left as it is.
    pub fn open(self) -> Result<PostgresStore, StoreError> {
        let config: Config = self.url.parse().map_err(|e: postgres::Error| {
            StoreError::Database(format!("the PostgreSQL URL is not valid: {e}"))
        })?;
        let pool = Pool {
            config,
            schema: self.schema,
            max: self.max_connections,
            slots: Mutex::new(Slots::default()),
            freed: Condvar::new(),
        };
        {
            let mut lease = pool.get()?;
            let conn = lease.conn.as_mut().ok_or_else(no_connection)?;
            schema::migrate(&mut conn.client, pool.schema.as_deref()).map_err(Fail::into_store)?;
        }
        Ok(PostgresStore {
            pool,
            registry: Mutex::new(None),
            listener: OnceLock::new(),
        })
    }
}

fn no_connection() -> StoreError {
    StoreError::Database("the pool handed out no connection: report it as a bug".to_owned())
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgresql://user@host:port/db`, or the key=value
    /// form) and bring the schema (in the connection's default schema) up to date.
    pub fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::builder(url).open()
    }

    /// A store at `url`, to be configured and opened.
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            schema: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// The schema it keeps its tables in, if one was given.
    pub fn schema(&self) -> Option<&str> {
        self.pool.schema.as_deref()
    }

    /// Replace the stored postbacks and precedence with `registry`, unaudited, as
    /// [`MemoryStore::with_registry`](crate::MemoryStore::with_registry) does: for setting up.
    /// Deliveries, health and the audit trail are left as they are.
    pub fn registry_replace(&self, registry: &Registry) -> Result<(), StoreError> {
        self.transaction(|tx| {
            let old = self.registry_in(tx, true)?;
            let v = write_registry(tx, &old, registry)?;
            Ok(((), v.map(|v| (v, registry.clone()))))
        })
    }

    /// Store a trigger inside the caller's own transaction, so a conversion and its postbacks
    /// commit or roll back together: as [`Store::trigger_enqueue`], in a savepoint of `tx` (run
    /// again from the savepoint if it loses a race for a key), with the store's schema as the
    /// search path until it returns. The transaction must be on the store's database; its
    /// workers are woken when it commits. Nothing is stored if the caller rolls back.
    pub fn trigger_enqueue_in(
        &self,
        tx: &mut postgres::Transaction<'_>,
        now: DateTime<Utc>,
        trigger: &Trigger,
        values: &dyn MacroValues,
        rules: &Rules,
    ) -> Result<Enqueued, StoreError> {
        // Statements prepared on the caller's connection live as long as this call.
        let mut statements = HashMap::new();
        let mut tries = 0;
        loop {
            let run = (|| {
                let mut t = Tx {
                    tx: tx.transaction()?,
                    statements: &mut statements,
                };
                let path = match &self.pool.schema {
                    Some(schema) => {
                        let old: String =
                            t.tx.query_one("SELECT current_setting('search_path')", &[])?
                                .try_get(0)?;
                        let ours = schema::ident(schema);
                        t.tx.execute("SELECT set_config('search_path', $1, true)", &[&ours])?;
                        Some(old)
                    }
                    None => None,
                };
                let out = self.enqueue_in(&mut t, now, trigger, values, rules)?;
                if let Some(old) = path {
                    t.tx.execute("SELECT set_config('search_path', $1, true)", &[&old])?;
                }
                t.tx.commit()?;
                Ok::<_, Fail>(out)
            })();
            match run {
                Ok(out) => return Ok(out),
                // The savepoint rolled back (the search path with it): run it again.
                Err(e) if e.retryable() && tries < RETRIES => tries += 1,
                Err(e) => return Err(e.into_store()),
            }
        }
    }

    /// A trigger's plan against the stored postbacks, its deliveries inserted by key, in `tx`.
    fn enqueue_in(
        &self,
        tx: &mut Tx<'_>,
        now: DateTime<Utc>,
        trigger: &Trigger,
        values: &dyn MacroValues,
        rules: &Rules,
    ) -> Result<Enqueued, Fail> {
        let registry = self.registry_in(tx, false)?;
        let out = plan_in(tx, &registry, now, trigger, values, rules)?;
        if !out.created.is_empty() {
            wake(tx)?;
        }
        Ok(out)
    }

    /// Complete one claimed delivery in `tx`, fenced by `token`, its postback's lock already
    /// held. `local` is the registry as this transaction wrote it, if it did (a disable): read
    /// from it, not the cache, which must not see what may yet roll back; a disable here sets it.
    #[allow(clippy::too_many_arguments)]
    fn complete_in(
        &self,
        tx: &mut Tx<'_>,
        local: &mut Option<(i64, Registry)>,
        batch: &mut Batch,
        now: DateTime<Utc>,
        token: Token,
        mut delivery: Delivery,
        progress: Progress,
        disable: &DisablePolicy,
    ) -> Result<Completion, Fail> {
        let key = *delivery.key();
        let pid = key.postback();
        let text = key.to_text();
        // Gone (pruned after another claimant finished it): this claim was lost long ago.
        let Some(fence) = tx.query_opt(q(DELIVERIES, "fence")?, &[&text])? else {
            return Ok(Completion::LeaseLost);
        };
        let id: i64 = fence.try_get(0)?;
        let claims: i64 = fence.try_get(1)?;
        let written: i64 = fence.try_get(2)?;
        if claims != token.0 {
            return Ok(Completion::LeaseLost);
        }
        // Read under the postback's lock: a disable committed by another process is seen;
        // one earlier in this transaction is in `local`.
        // Read once per batch, once every postback's lock is held.
        let pb = match (&*local, &batch.registry) {
            (Some((_, r)), _) => r.get(pid).cloned(),
            (None, Some(r)) => r.get(pid).cloned(),
            (None, None) => {
                let r = self.registry_in(tx, false)?;
                let pb = r.get(pid).cloned();
                batch.registry = Some(r);
                pb
            }
        };
        // A postback's health is read (locked) once per batch and written once, at its end.
        let (health, dirty) = match batch.health.entry(pid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((health_of(tx, pid, true)?.unwrap_or_default(), false))
            }
        };
        let outcome = apply::complete(now, &mut delivery, progress, pb.as_ref(), health, disable);
        let p = project(&delivery, delivery.due())?;
        let n = tx.execute(
            q(DELIVERIES, "complete")?,
            &[
                &id,
                &token.0,
                &p.state,
                &p.status,
                &p.due_at,
                &p.finished_at,
                &p.written,
            ],
        )?;
        if n != 1 {
            return Ok(Completion::LeaseLost);
        }
        write_attempts(tx, &delivery, count(written))?;
        if pb.is_some() && !delivery.is_test() {
            *dirty = true;
        }
        let mut disabled = false;
        if let Some(reason) = outcome.disable {
            // The registry's lock, then the registry as it is under it (another postback may
            // have changed since the read above; this one cannot have).
            let current = match local {
                // Locked already by the write that made it.
                Some((_, r)) => Arc::new(r.clone()),
                None => self.registry_in(tx, true)?,
            };
            let mut next = (*current).clone();
            // Only an active postback flips: however many results say so, once.
            if matches!(
                next.disable_automatically(pid, reason.clone(), now),
                Ok(true)
            ) {
                disabled = true;
                if let Some(v) = write_registry(tx, &current, &next)? {
                    *local = Some((v, next));
                }
                let note_id: i64 = tx
                    .query_one(q(NOTIFICATIONS, "next_id")?, &[])?
                    .try_get(0)?;
                let note = Notification {
                    id: note_id,
                    postback: pid,
                    partner: pb.as_ref().and_then(Postback::partner),
                    reason,
                    at: now,
                    attempts: delivery.attempts().to_vec(),
                };
                tx.execute(
                    q(NOTIFICATIONS, "insert")?,
                    &[
                        &note_id,
                        &pid_of(pid)?,
                        &floor(now),
                        &apply::to_json(&note)?,
                    ],
                )?;
                let others = rows(
                    tx,
                    q(DELIVERIES, "scheduled_of_except")?,
                    &[&pid_of(pid)?, &id, &floor(now)],
                )?;
                change_rows(tx, others, |d| on_operation(Operation::Pause, now, d))?;
            }
        }
        Ok(Completion::Completed {
            next: outcome.next,
            disabled,
        })
    }

    /// Run `f` in a transaction on a pooled connection, again from the start if PostgreSQL
    /// aborted it for a reason that can pass; cache the registry it returns once committed.
    fn transaction<T>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<Done<T>, Fail>,
    ) -> Result<T, StoreError> {
        let mut lease = self.pool.get()?;
        let conn = lease.conn.as_mut().ok_or_else(no_connection)?;
        let mut tries = 0;
        loop {
            let run = (|| {
                let mut tx = Tx {
                    tx: conn.client.transaction()?,
                    statements: &mut conn.statements,
                };
                let done = f(&mut tx)?;
                tx.tx.commit()?;
                Ok::<_, Fail>(done)
            })();
            match run {
                Ok((value, cache)) => {
                    if let Some((v, r)) = cache {
                        *self.cache() = Some((v, Arc::new(r)));
                    }
                    return Ok(value);
                }
                Err(e) if e.retryable() && tries < RETRIES && !conn.client.is_closed() => {
                    tries += 1;
                }
                Err(e) => return Err(e.into_store()),
            }
        }
    }

    /// A read in a transaction (one snapshot per statement; nothing to cache).
    fn read<T>(&self, mut f: impl FnMut(&mut Tx<'_>) -> Result<T, Fail>) -> Result<T, StoreError> {
        self.transaction(|tx| Ok((f(tx)?, None)))
    }

    fn cache(&self) -> MutexGuard<'_, Option<(i64, Arc<Registry>)>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry as stored, from the cache while the stored version (read in this
    /// transaction, and locked until it ends if `lock`: what a writer of the registry does
    /// before it reads it) is the cached one.
    fn registry_in(&self, tx: &mut Tx<'_>, lock: bool) -> Result<Arc<Registry>, Fail> {
        let sql = if lock {
            q(META, "lock_version")?
        } else {
            q(META, "version")?
        };
        let version: i64 = tx.query_one(sql, &[])?.try_get(0)?;
        if let Some((v, r)) = &*self.cache()
            && *v == version
        {
            return Ok(Arc::clone(r));
        }
        let (loaded_at, registry) = load_registry(tx)?;
        let registry = Arc::new(registry);
        // Loaded in one statement: its version names exactly what it holds.
        *self.cache() = Some((loaded_at, Arc::clone(&registry)));
        Ok(registry)
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions.

fn int(what: &str, n: u64) -> Result<i64, StoreError> {
    i64::try_from(n)
        .map_err(|_| StoreError::Database(format!("{what} {n} does not fit PostgreSQL's BIGINT")))
}

fn pid_of(p: PostbackId) -> Result<i64, StoreError> {
    int("postback id", p.get())
}

/// The second key of a postback's advisory lock (the first is the schema's): its id folded to
/// 32 bits. Two postbacks that fold alike only serialize with each other.
fn lock_key(p: PostbackId) -> i32 {
    let v = p.get();
    ((v ^ (v >> 32)) as u32) as i32
}

// ---------------------------------------------------------------------------------------------
// Rows of `deliveries`.

/// A delivery's row as read.
struct Stored {
    id: i64,
    /// Attempts already in the attempts table.
    written: usize,
    d: Delivery,
}

/// Rows from a statement returning `id, attempts_written, state`.
fn rows(tx: &mut Tx<'_>, sql: &'static str, p: &Params<'_>) -> Result<Vec<Stored>, Fail> {
    tx.query(sql, p)?
        .into_iter()
        .map(|r| {
            let id: i64 = r.try_get(0)?;
            let written: i64 = r.try_get(1)?;
            let state: String = r.try_get(2)?;
            Ok(Stored {
                id,
                written: count(written),
                d: delivery_from(id, &state)?,
            })
        })
        .collect()
}

/// The projections of a delivery's state.
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
fn write_attempts(tx: &mut Tx<'_>, d: &Delivery, written: usize) -> Result<(), Fail> {
    let new = apply::new_attempts(d, written);
    if new.is_empty() {
        return Ok(());
    }
    let key = d.key().to_text();
    let postback = pid_of(d.postback())?;
    let sql = q(ATTEMPTS, "insert")?;
    for a in new {
        let number = i64::from(a.number);
        let json = apply::to_json(a)?;
        tx.execute(sql, &[&key, &number, &postback, &floor(a.at), &json])?;
    }
    Ok(())
}

fn insert_delivery(tx: &mut Tx<'_>, d: &Delivery) -> Result<(), Fail> {
    let key = d.key().to_text();
    let purpose = crate::sql::purpose_of(&key);
    let p = project(d, d.due())?;
    tx.execute(
        q(DELIVERIES, "insert")?,
        &[
            &int("delivery id", d.id().get())?,
            &key,
            &pid_of(d.postback())?,
            &d.key().trigger().as_str(),
            &purpose,
            &p.status,
            &p.due_at,
            &p.written,
            &floor(d.created()),
            &p.finished_at,
            &p.state,
            &i64::from(d.key().revision()),
        ],
    )?;
    write_attempts(tx, d, 0)
}

/// Write a row's delivery (due at `due` if scheduled), adding `settle` to its settled claims.
fn update_delivery(
    tx: &mut Tx<'_>,
    row: &Stored,
    due: Option<DateTime<Utc>>,
    settle: i64,
) -> Result<(), Fail> {
    let p = project(&row.d, due)?;
    tx.execute(
        q(DELIVERIES, "update")?,
        &[
            &row.id,
            &p.state,
            &p.status,
            &p.due_at,
            &p.finished_at,
            &p.written,
            &settle,
        ],
    )?;
    write_attempts(tx, &row.d, row.written)
}

/// Apply `change` to each row; write those it changed (due as their state says). Returns how
/// many.
fn change_rows(
    tx: &mut Tx<'_>,
    rows: Vec<Stored>,
    mut change: impl FnMut(&mut Delivery) -> bool,
) -> Result<usize, Fail> {
    let mut n = 0;
    for mut row in rows {
        if change(&mut row.d) {
            let due = row.d.due();
            update_delivery(tx, &row, due, 0)?;
            n += 1;
        }
    }
    Ok(n)
}

/// A trigger's plan against `registry`, its deliveries inserted by key, in `tx` (no wake-up:
/// the caller sends one per transaction).
fn plan_in(
    tx: &mut Tx<'_>,
    registry: &Registry,
    now: DateTime<Utc>,
    trigger: &Trigger,
    values: &dyn MacroValues,
    rules: &Rules,
) -> Result<Enqueued, Fail> {
    let exists = q(DELIVERIES, "exists")?;
    let later = q(DELIVERIES, "later_revision")?;
    let cell = RefCell::new(&mut *tx);
    let (out, new) = apply::enqueue(
        registry,
        now,
        trigger,
        values,
        rules,
        |ask| {
            let found = match ask {
                apply::Ask::Exists(k) => cell.borrow_mut().query_opt(exists, &[&k.to_text()]),
                apply::Ask::Later(k) => cell.borrow_mut().query_opt(
                    later,
                    &[
                        &k.trigger().as_str(),
                        &pid_of(k.postback())?,
                        &crate::sql::purpose_of(&k.to_text()),
                        &i64::from(k.revision()),
                    ],
                ),
            };
            Ok(found.map_err(Fail::into_store)?.is_some())
        },
        || next_delivery_id(&mut cell.borrow_mut()).map_err(Fail::into_store),
    )?;
    // A key inserted meanwhile by another process fails the insert with a unique
    // violation: the transaction runs again and finds it a duplicate.
    for d in &new {
        insert_delivery(tx, d)?;
    }
    Ok(out)
}

/// Wake the listening workers when this transaction commits.
fn wake(tx: &mut Tx<'_>) -> Result<(), Fail> {
    tx.execute(q(META, "wake")?, &[])?;
    Ok(())
}

/// What a batch of completions reads once: the registry (under every postback's lock) and each
/// postback's health (locked), written back once when the batch ends.
#[derive(Default)]
struct Batch {
    registry: Option<Arc<Registry>>,
    health: HashMap<PostbackId, (Health, bool)>,
}

impl Batch {
    /// Write every health the batch changed.
    fn flush(&mut self, tx: &mut Tx<'_>) -> Result<(), Fail> {
        for (pid, (h, dirty)) in &self.health {
            if *dirty {
                health_put(tx, *pid, h)?;
            }
        }
        Ok(())
    }
}

/// Take the postback's lock until the transaction ends (see `sql/health.sql`).
fn lock_postback(tx: &mut Tx<'_>, p: PostbackId) -> Result<(), Fail> {
    tx.execute(q(HEALTH, "lock")?, &[&lock_key(p)])?;
    Ok(())
}

/// Take the locks of several postbacks (their lock keys, sorted and without repeats: the one
/// order every batch takes them in) until the transaction ends, in one statement.
fn lock_postbacks(tx: &mut Tx<'_>, keys: &[i32]) -> Result<(), Fail> {
    match keys {
        [] => Ok(()),
        [one] => {
            tx.execute(q(HEALTH, "lock")?, &[one])?;
            Ok(())
        }
        _ => {
            tx.execute(q(HEALTH, "lock_many")?, &[&keys])?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The registry, health, audit.

/// The registry and the version it is, read in one statement.
fn load_registry(tx: &mut Tx<'_>) -> Result<(i64, Registry), Fail> {
    let found = tx.query(q(META, "load_registry")?, &[])?;
    let Some(first) = found.first() else {
        return Err(StoreError::Corrupt {
            what: "the registry".to_owned(),
            detail: "registry_meta has no row".to_owned(),
        }
        .into());
    };
    let version: i64 = first.try_get(0)?;
    let precedence: String = first.try_get(1)?;
    let precedence: Precedence = apply::from_json("the registry's precedence", &precedence)?;
    let mut registry = Registry::with_precedence(precedence);
    for r in &found {
        let Some(id) = r.try_get::<_, Option<i64>>(2)? else {
            continue;
        };
        let json: String = r.try_get(3)?;
        let what = format!("postback {id}");
        let p: Postback = apply::from_json(&what, &json)?;
        registry.insert(p).map_err(|e| StoreError::Corrupt {
            what,
            detail: e.to_string(),
        })?;
    }
    Ok((version, registry))
}

/// Write what differs between `old` (as stored, read under the version's lock) and `new`.
/// Returns the new registry version if anything changed (cache `new` under it once the
/// transaction committed).
fn write_registry(tx: &mut Tx<'_>, old: &Registry, new: &Registry) -> Result<Option<i64>, Fail> {
    let mut changed = false;
    for p in new.iter() {
        if old.get(p.id()) != Some(p) {
            let partner = p
                .partner()
                .map(|x| int("partner id", x.get()))
                .transpose()?;
            tx.execute(
                q(POSTBACKS, "upsert")?,
                &[
                    &pid_of(p.id())?,
                    &partner,
                    &status_text(p.status()),
                    &apply::to_json(p)?,
                ],
            )?;
            changed = true;
        }
    }
    for p in old.iter() {
        if new.get(p.id()).is_none() {
            tx.execute(q(POSTBACKS, "delete")?, &[&pid_of(p.id())?])?;
            changed = true;
        }
    }
    if old.precedence() != new.precedence() {
        tx.execute(
            q(META, "set_precedence")?,
            &[&apply::to_json(&new.precedence())?],
        )?;
        changed = true;
    }
    if !changed {
        return Ok(None);
    }
    let v: i64 = tx
        .query_one(q(META, "bump_registry_version")?, &[])?
        .try_get(0)?;
    Ok(Some(v))
}

fn health_of(tx: &mut Tx<'_>, postback: PostbackId, lock: bool) -> Result<Option<Health>, Fail> {
    let sql = if lock {
        q(HEALTH, "get_for_update")?
    } else {
        q(HEALTH, "get")?
    };
    let Some(r) = tx.query_opt(sql, &[&pid_of(postback)?])? else {
        return Ok(None);
    };
    let json: String = r.try_get(0)?;
    Ok(Some(apply::from_json(
        &format!("health of postback {postback}"),
        &json,
    )?))
}

fn health_put(tx: &mut Tx<'_>, postback: PostbackId, h: &Health) -> Result<(), Fail> {
    tx.execute(
        q(HEALTH, "upsert")?,
        &[&pid_of(postback)?, &apply::to_json(h)?],
    )?;
    Ok(())
}

fn audit_put(tx: &mut Tx<'_>, a: &AuditEntry) -> Result<(), Fail> {
    tx.execute(
        q(AUDIT, "insert")?,
        &[&pid_of(a.postback)?, &floor(a.at), &apply::to_json(a)?],
    )?;
    Ok(())
}

/// Read a column of JSON texts.
fn json_rows<T: serde::de::DeserializeOwned>(
    tx: &mut Tx<'_>,
    what: &str,
    sql: &'static str,
    p: &Params<'_>,
) -> Result<Vec<T>, Fail> {
    tx.query(sql, p)?
        .iter()
        .map(|r| {
            let text: String = r.try_get(0)?;
            Ok(apply::from_json(what, &text)?)
        })
        .collect()
}

fn next_delivery_id(tx: &mut Tx<'_>) -> Result<DeliveryId, Fail> {
    let id: i64 = tx
        .query_one(q(META, "next_delivery_id")?, &[])?
        .try_get(0)?;
    let id = u64::try_from(id).map_err(|_| FireError::IdsExhausted)?;
    Ok(DeliveryId::new(id))
}

/// The postback a management operation concerns.
fn target(op: &Manage) -> PostbackId {
    match op {
        Manage::Create(p) | Manage::Edit(p) => p.id(),
        Manage::Pause(id) | Manage::Resume(id) | Manage::Enable(id) | Manage::Delete(id) => *id,
    }
}

// ---------------------------------------------------------------------------------------------

impl Store for PostgresStore {
    fn registry_get(&self) -> Result<Registry, StoreError> {
        self.read(|tx| Ok((*self.registry_in(tx, false)?).clone()))
    }

    fn postback_manage(
        &self,
        now: DateTime<Utc>,
        actor: Actor,
        op: Manage,
        access: &Settings,
    ) -> Result<Managed, StoreError> {
        let pid = target(&op);
        self.transaction(|tx| {
            // The postback's lock, then the registry's: the order every writer takes them in.
            lock_postback(tx, pid)?;
            let old = self.registry_in(tx, true)?;
            let mut registry = (*old).clone();
            let (audit, operation) = apply::manage(&mut registry, now, actor, op.clone(), access)?;
            let version = write_registry(tx, &old, &registry)?;
            let pid = audit.postback;
            let pause = operation == Operation::Pause;
            let unfinished = rows(
                tx,
                q(DELIVERIES, "unfinished_of")?,
                &[&pid_of(pid)?, &pause, &floor(now)],
            )?;
            let deliveries = change_rows(tx, unfinished, |d| on_operation(operation, now, d))?;
            let health = health_of(tx, pid, true)?;
            match apply::health_after(operation, health) {
                Some(Some(h)) => health_put(tx, pid, &h)?,
                Some(None) => {
                    tx.execute(q(HEALTH, "delete")?, &[&pid_of(pid)?])?;
                }
                None => {}
            }
            audit_put(tx, &audit)?;
            if matches!(operation, Operation::Resume | Operation::Enable) {
                wake(tx)?;
            }
            Ok((
                Managed { audit, deliveries },
                version.map(|v| (v, registry)),
            ))
        })
    }

    fn trigger_enqueue(
        &self,
        now: DateTime<Utc>,
        trigger: &Trigger,
        values: &dyn MacroValues,
        rules: &Rules,
    ) -> Result<Enqueued, StoreError> {
        self.transaction(|tx| Ok((self.enqueue_in(tx, now, trigger, values, rules)?, None)))
    }

    fn triggers_enqueue(
        &self,
        now: DateTime<Utc>,
        batch: &[(Trigger, &dyn MacroValues)],
        rules: &Rules,
    ) -> Result<Vec<Enqueued>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction, one registry read, one wake-up. Enqueueing takes no postback lock;
        // the triggers are planned in the order of their keys (stable: a repeat stays after the
        // first), the same order in every batch of every process, so a batch only ever waits
        // for another's insert of a key it reaches later: no deadlock, however batches overlap.
        // It then fails as a duplicate and runs again, finding the other's keys stored.
        let mut order: Vec<(String, usize)> = batch
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (t.key(PostbackId::new(1)).to_text(), i))
            .collect();
        order.sort();
        self.transaction(|tx| {
            let registry = self.registry_in(tx, false)?;
            let mut outs: Vec<Option<Enqueued>> = vec![None; batch.len()];
            for (_, i) in &order {
                let (trigger, values) = &batch[*i];
                // Also a key inserted earlier in this batch: the same trigger twice in one batch
                // inserts once.
                outs[*i] = Some(plan_in(tx, &registry, now, trigger, *values, rules)?);
            }
            let outs: Vec<Enqueued> = outs.into_iter().flatten().collect();
            if outs.iter().any(|o| !o.created.is_empty()) {
                wake(tx)?;
            }
            Ok((outs, None))
        })
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
        self.transaction(|tx| {
            let registry = self.registry_in(tx, false)?;
            let id = next_delivery_id(tx)?;
            let (d, audit) =
                apply::test_fire(&registry, now, actor, postback, values, rules, access, id)?;
            insert_delivery(tx, &d)?;
            audit_put(tx, &audit)?;
            wake(tx)?;
            Ok(((*d.key(), audit), None))
        })
    }

    fn deliveries_claim(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let until = chrono::Duration::from_std(lease)
            .ok()
            .and_then(|l| now.checked_add_signed(l))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            let mut claimed = tx.query(
                q(DELIVERIES, "claim")?,
                &[&floor(now), &limit, &ceil(until), &owner],
            )?;
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            let mut order = Vec::with_capacity(claimed.len());
            for r in claimed.drain(..) {
                let id: i64 = r.try_get(0)?;
                let due: i64 = r.try_get(1)?;
                let claims: i64 = r.try_get(2)?;
                let settled: i64 = r.try_get(3)?;
                let state: String = r.try_get(4)?;
                order.push((due, id, claims, settled, state));
            }
            order.sort_by_key(|(due, id, ..)| (*due, *id));
            let registry = self.registry_in(tx, false)?;
            let mut out = Vec::with_capacity(order.len());
            for (_, id, claims, settled, state) in order {
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
            Ok(out)
        })
    }

    fn delivery_complete(
        &self,
        now: DateTime<Utc>,
        token: Token,
        delivery: Delivery,
        progress: Progress,
        disable: &DisablePolicy,
    ) -> Result<Completion, StoreError> {
        let pid = delivery.key().postback();
        self.transaction(|tx| {
            // The postback's lock first: a completion of another of its deliveries, its disable
            // and a management operation on it wait here, holding no row.
            lock_postback(tx, pid)?;
            let mut local = None;
            let mut batch = Batch::default();
            let c = self.complete_in(
                tx,
                &mut local,
                &mut batch,
                now,
                token,
                delivery.clone(),
                progress,
                disable,
            )?;
            batch.flush(tx)?;
            Ok((c, local))
        })
    }

    fn deliveries_complete(
        &self,
        now: DateTime<Utc>,
        batch: Vec<(Token, Delivery, Progress)>,
        disable: &DisablePolicy,
    ) -> Result<Vec<Completion>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Every postback's lock, in one order (by lock key) before any row: two batches over the
        // same postbacks queue on the first they share and never hold one the other waits for.
        let mut locks: Vec<i32> = batch
            .iter()
            .map(|(_, d, _)| lock_key(d.postback()))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        self.transaction(|tx| {
            lock_postbacks(tx, &locks)?;
            // The registry as this transaction changed it (a disable earlier in the batch).
            let mut local = None;
            let mut read = Batch::default();
            let mut out = Vec::with_capacity(batch.len());
            for (token, delivery, progress) in &batch {
                out.push(self.complete_in(
                    tx,
                    &mut local,
                    &mut read,
                    now,
                    *token,
                    delivery.clone(),
                    *progress,
                    disable,
                )?);
            }
            read.flush(tx)?;
            Ok((out, local))
        })
    }

    fn delivery_unclaim(
        &self,
        now: DateTime<Utc>,
        key: &DeliveryKey,
        token: Token,
    ) -> Result<bool, StoreError> {
        let text = key.to_text();
        let done = self.read(|tx| {
            // Not interrupted. No NOTIFY: the claimant that gave it back (its host is full, or it
            // is stopping) would only be woken to take it again.
            let n = tx.execute(q(DELIVERIES, "unclaim")?, &[&text, &token.0, &ceil(now)])?;
            if n == 1 {
                return Ok(Some(true));
            }
            let known = tx.query_opt(q(DELIVERIES, "exists")?, &[&text])?.is_some();
            Ok(known.then_some(false))
        })?;
        done.ok_or(StoreError::UnknownDelivery(*key))
    }

    fn deliveries_next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let due: Option<i64> =
            self.read(|tx| Ok(tx.query_one(q(DELIVERIES, "next_due")?, &[])?.try_get(0)?))?;
        due.map(|d| time("a due time", d)).transpose()
    }

    fn delivery_get(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        let text = key.to_text();
        self.read(|tx| {
            Ok(rows(tx, q(DELIVERIES, "by_key")?, &[&text])?
                .into_iter()
                .next()
                .map(|r| r.d))
        })
    }

    fn deliveries_of(
        &self,
        postback: PostbackId,
        filter: Filter,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let status = match filter {
            Filter::Pending | Filter::Leased => Some("scheduled"),
            Filter::Held => Some("held"),
            Filter::Exhausted => Some("gave_up"),
            Filter::Delivered => Some("delivered"),
            _ => None,
        };
        let leased = filter == Filter::Leased;
        let pid = pid_of(postback)?;
        self.read(|tx| {
            let sql = tx.prepare(q(DELIVERIES, "of")?)?;
            let portal = tx.tx.bind(&sql, &[&pid, &status, &leased])?;
            let mut out = Vec::new();
            // In batches, until `limit` match: the status narrows; the core's filter decides (a
            // gave-up test fire is not exhausted).
            'read: while out.len() < limit {
                let batch = tx.tx.query_portal(&portal, 256)?;
                if batch.is_empty() {
                    break;
                }
                for r in batch {
                    let state: String = r.try_get(0)?;
                    let d: Delivery = apply::from_json("a delivery of the postback", &state)?;
                    if apply::matches(&d, filter) {
                        out.push(d);
                        if out.len() >= limit {
                            break 'read;
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    fn deliveries_count(&self) -> Result<Counts, StoreError> {
        self.read(|tx| {
            let mut c = Counts::default();
            for r in tx.query(q(DELIVERIES, "count")?, &[])? {
                let status: String = r.try_get(0)?;
                let n = u64::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0);
                let leased: Option<i64> = r.try_get(2)?;
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
        })
    }

    fn attempts_of(&self, key: &DeliveryKey) -> Result<Vec<Attempt>, StoreError> {
        let text = key.to_text();
        let what = format!("an attempt of {key}");
        self.read(|tx| json_rows(tx, &what, q(ATTEMPTS, "of")?, &[&text]))
    }

    fn deliveries_replay(&self, now: DateTime<Utc>, which: &Replay) -> Result<usize, StoreError> {
        self.transaction(|tx| {
            let candidates = match which {
                Replay::Delivery(k) => {
                    let row = rows(tx, q(DELIVERIES, "by_key_for_update")?, &[&k.to_text()])?
                        .into_iter()
                        .next()
                        .ok_or(StoreError::UnknownDelivery(*k))?;
                    // A single replay says why it cannot be.
                    row.d.clone().replay(now)?;
                    vec![row]
                }
                Replay::Postback { postback, from, to } => rows(
                    tx,
                    q(DELIVERIES, "gave_up_created_between")?,
                    &[&pid_of(*postback)?, &floor(*from), &floor(*to)],
                )?
                .into_iter()
                .filter(|r| {
                    r.d.created() >= *from && r.d.created() < *to && apply::is_replayable(&r.d)
                })
                .collect(),
            };
            let n = change_rows(tx, candidates, |d| d.replay(now).is_ok())?;
            if n > 0 {
                wake(tx)?;
            }
            Ok((n, None))
        })
    }

    fn health_get(&self, postback: PostbackId) -> Result<Option<Health>, StoreError> {
        self.read(|tx| health_of(tx, postback, false))
    }

    fn audit_of(&self, postback: PostbackId) -> Result<Vec<AuditEntry>, StoreError> {
        let what = format!("an audit entry of postback {postback}");
        let pid = pid_of(postback)?;
        self.read(|tx| json_rows(tx, &what, q(AUDIT, "of")?, &[&pid]))
    }

    fn notifications_pending(&self) -> Result<Vec<Notification>, StoreError> {
        self.read(|tx| json_rows(tx, "a notification", q(NOTIFICATIONS, "pending")?, &[]))
    }

    fn notification_done(&self, now: DateTime<Utc>, id: i64) -> Result<bool, StoreError> {
        self.read(|tx| Ok(tx.execute(q(NOTIFICATIONS, "done")?, &[&id, &floor(now)])? == 1))
    }

    fn attempts_prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.delete(ATTEMPTS, before)
    }

    fn deliveries_prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.delete(DELIVERIES, before)
    }

    fn wake_source(&self) -> Option<Arc<tokio::sync::Notify>> {
        let listener = self.listener.get_or_init(|| {
            listen::Listener::start(&self.pool.config, self.pool.schema.as_deref())
        });
        Some(listener.notify())
    }

    fn stats(&self, now: DateTime<Utc>) -> Result<crate::stats::OpsStats, StoreError> {
        self.stats_read(now)
    }
}

impl PostgresStore {
    /// Run a file's `prune` statement with `before`, in its own transaction.
    fn delete(&self, file: &'static str, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let n = self.read(|tx| tx.execute(q(file, "prune")?, &[&floor(before)]))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

// ---------------------------------------------------------------------------------------------
// The stats (issue 16), kept apart from the rest.

impl PostgresStore {
    /// [`Store::stats`]: every part in one read transaction.
    fn stats_read(&self, now: DateTime<Utc>) -> Result<crate::stats::OpsStats, StoreError> {
        const COUNTS: &str = "SELECT postback, status, count(*) FROM deliveries \
            WHERE status <> 'delivered' GROUP BY postback, status";
        const UNSETTLED: &str = "SELECT key, claims - settled, due_at > $1 FROM deliveries \
            WHERE status = 'scheduled' AND claims > settled";
        const HEALTH_ALL: &str = "SELECT postback, json::text FROM health";
        // Scans the table: attempts carry no index by postback.
        const LAST_FAILURES: &str = "SELECT DISTINCT ON (postback) postback, delivery, json::text \
            FROM attempts WHERE jsonb_typeof(json -> 'failure') = 'object' \
            ORDER BY postback, at DESC, id DESC";
        let pid = |n: i64| PostbackId::new(u64::try_from(n).unwrap_or(0));
        let key = |t: &str| {
            t.parse::<DeliveryKey>().map_err(|e| StoreError::Corrupt {
                what: "a delivery key".to_owned(),
                detail: e.to_string(),
            })
        };
        let (registry, raw) = self.read(|tx| {
            let registry = (*self.registry_in(tx, false)?).clone();
            let mut raw = crate::stats::Raw::default();
            for r in tx.query(COUNTS, &[])? {
                let (p, status, n): (i64, String, i64) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                raw.count(pid(p), &status, u64::try_from(n).unwrap_or(0));
            }
            for r in tx.query(UNSETTLED, &[&floor(now)])? {
                let (k, n, live): (String, i64, bool) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                raw.unsettled.push((key(&k)?, n, live));
            }
            for r in tx.query(HEALTH_ALL, &[])? {
                let (p, json): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
                let h: Health = apply::from_json(&format!("health of postback {p}"), &json)?;
                raw.health.insert(pid(p), h);
            }
            for r in tx.query(LAST_FAILURES, &[])? {
                let (p, k, json): (i64, String, String) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                let a: Attempt = apply::from_json(&format!("an attempt of {k}"), &json)?;
                if let Some(f) = crate::stats::LastFailure::of(key(&k)?, &a) {
                    raw.failure(pid(p), f);
                }
            }
            Ok((registry, raw))
        })?;
        Ok(crate::stats::assemble(now, &registry, raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_round_up_and_now_rounds_down() {
        let t = DateTime::from_timestamp(10, 1_500).unwrap_or_default();
        assert_eq!(floor(t), 10_000_001);
        assert_eq!(ceil(t), 10_000_002);
        let exact = DateTime::from_timestamp(10, 2_000).unwrap_or_default();
        assert_eq!(ceil(exact), floor(exact));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(schema::ident("pb_test"), "\"pb_test\"");
        assert_eq!(schema::ident("a\"b"), "\"a\"\"b\"");
    }
}
