//! The [`Store`] trait: where deliveries, postbacks, health, attempts, the audit trail and the
//! manager's notifications live, and the transactions over them. Methods are named noun then
//! verb; every one that changes or reads time-dependent state takes `now`, never a database's
//! clock, so tests move time by hand.
//!
//! The rules are the core's ([`plan_trigger`](postback::plan::plan_trigger),
//! [`settle`](postback::delivery::settle), [`on_operation`](postback::delivery::on_operation),
//! the [`Gatekeeper`](postback::access::Gatekeeper)); a store applies them inside its
//! transactions and writes what they return.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use postback::access::{AccessError, Actor, AuditEntry, Operation};
use postback::delivery::{Attempt, Delivery, DisablePolicy, Health, Next, Progress};
use postback::engine::RenderedPixel;
use postback::model::{DeliveryKey, PartnerId, Postback, PostbackId};
use postback::plan::FireError;
use postback::registry::{Registry, Resolution, Trigger};
use postback::template::MacroValues;

/// A store's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The operation was refused (permissions, quota, unknown postback, wrong status).
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The database holds a schema newer than this crate knows.
    #[error(
        "the store's schema is version {found}, newer than this build of postback-store knows ({known}): upgrade postback-store, or open a copy made before the upgrade"
    )]
    SchemaTooNew {
        /// The version in the database.
        found: i64,
        /// The newest this crate knows.
        known: i64,
    },
    /// A stored row could not be read back.
    #[error(
        "stored {what} could not be read ({detail}): the row was changed outside postback-store"
    )]
    Corrupt {
        /// Which row.
        what: String,
        /// Why.
        detail: String,
    },
    /// No such delivery.
    #[error("no delivery has the key {0}")]
    UnknownDelivery(DeliveryKey),
    /// The delivery is not in a state the operation needs (say, a replay of one still pending).
    #[error(transparent)]
    Delivery(#[from] postback::delivery::DeliveryError),
    /// A test fire's request cannot be made.
    #[error(transparent)]
    Fire(#[from] FireError),
    /// The postback is a pixel: only server-to-server postbacks are delivered.
    #[error(
        "postback {0} is a pixel or HTML postback: only server-to-server postbacks can be test fired"
    )]
    NotServerToServer(PostbackId),
    /// The database failed.
    #[error("the database failed: {0}")]
    Database(String),
}

/// A management operation, applied through [`Store::postback_manage`] with the network's
/// [`Settings`](postback::access::Settings) and recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Manage {
    /// Add a postback.
    Create(Postback),
    /// Change a postback's configuration (its status stays).
    Edit(Postback),
    /// Pause: new triggers pass it by, its scheduled deliveries are held.
    Pause(PostbackId),
    /// Resume after a pause: a fresh health, held deliveries due now.
    Resume(PostbackId),
    /// Enable again after the automatic disable: a fresh health, held deliveries due now.
    Enable(PostbackId),
    /// Remove it; its unfinished deliveries end as `PostbackDeleted`.
    Delete(PostbackId),
}

impl Manage {
    /// The access operation it is.
    pub fn operation(&self) -> Operation {
        match self {
            Manage::Create(_) => Operation::Create,
            Manage::Edit(_) => Operation::Edit,
            Manage::Pause(_) => Operation::Pause,
            Manage::Resume(_) => Operation::Resume,
            Manage::Enable(_) => Operation::Enable,
            Manage::Delete(_) => Operation::Delete,
        }
    }
}

/// What a management operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Managed {
    /// The audit entry written.
    pub audit: AuditEntry,
    /// Deliveries it changed (held, released or ended).
    pub deliveries: usize,
}

/// The limits a trigger is planned with (the Worker's configuration; not state).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rules {
    /// The most deliveries one trigger may create.
    pub max_deliveries: usize,
    /// The longest value a postback may carry, in bytes.
    pub max_value_len: usize,
    /// The idempotency header sent with every request, if any.
    pub idempotency_header: Option<String>,
}

impl Default for Rules {
    fn default() -> Self {
        let core = postback::plan::PlanRules::new();
        Rules {
            max_deliveries: core.max_deliveries,
            max_value_len: core.max_value_len,
            idempotency_header: None,
        }
    }
}

impl Rules {
    /// At most `n` deliveries per trigger (default 20).
    pub fn max_deliveries(mut self, n: usize) -> Self {
        self.max_deliveries = n;
        self
    }
    /// Values up to `n` bytes (default 1,024).
    pub fn max_value_len(mut self, n: usize) -> Self {
        self.max_value_len = n;
        self
    }
    /// Send each delivery's key in this header too (say `Idempotency-Key`).
    pub fn idempotency_header(mut self, name: impl Into<String>) -> Self {
        self.idempotency_header = Some(name.into());
        self
    }
    /// The core's view of them.
    pub fn plan(&self) -> postback::plan::PlanRules<'_> {
        let mut r = postback::plan::PlanRules::new();
        r.max_deliveries = self.max_deliveries;
        r.max_value_len = self.max_value_len;
        r.idempotency_header = self.idempotency_header.as_deref();
        r
    }
}

/// What a trigger did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct Enqueued {
    /// What fired, what did not, and why.
    pub resolution: Resolution,
    /// Deliveries created, due after their postback's delay.
    pub created: Vec<DeliveryKey>,
    /// Deliveries created held: their postback is disabled automatically, or, for a correction,
    /// off (paused or disabled) while it has the conversion the correction revises.
    pub held: Vec<DeliveryKey>,
    /// Keys that existed already: this trigger was seen before; nothing new was created.
    pub duplicates: Vec<DeliveryKey>,
    /// Pixels to render on the conversion page.
    pub pixels: Vec<RenderedPixel>,
    /// Postbacks that fired but cannot be delivered, and why.
    pub errors: Vec<(PostbackId, FireError)>,
}

/// The fencing token of a claim: a delivery's claim count when it was claimed. A completion
/// with a token that is no longer the delivery's is refused ([`Completion::LeaseLost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Token(pub i64);

/// A delivery claimed under a lease: send it, then [`Store::delivery_complete`] with its token
/// before the lease ends (`due` moved to the lease's end, so a claimant that dies leaves the
/// delivery due again then).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Claimed {
    /// The delivery as stored (scheduled, due).
    pub delivery: Delivery,
    /// The fence.
    pub token: Token,
    /// Its postback as it is now, for the request; `None` if it was deleted meanwhile.
    pub postback: Option<Postback>,
    /// Earlier claims of it that never completed (their claimant died or lost the lease): the
    /// Worker records each as an interrupted attempt, which never counts, so a request that
    /// crashes its sender still ends.
    pub interrupted: u32,
}

/// What [`Store::delivery_complete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum Completion {
    /// Written.
    Completed {
        /// Where the delivery now stands.
        next: Next,
        /// This result disabled its postback (once, however many workers failed at once); a
        /// notification for the manager was written with it.
        disabled: bool,
    },
    /// The claim's token is no longer the delivery's (its lease ran out and another claimant
    /// took it): nothing was written; drop the result.
    LeaseLost,
}

/// Which deliveries a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Filter {
    /// Every delivery of the postback.
    All,
    /// Scheduled (due now or later, or out under a lease).
    Pending,
    /// Held until the postback is enabled or resumed.
    Held,
    /// Gave up on attempts, a terminal failure or local refusals: can be replayed.
    Exhausted,
    /// Delivered.
    Delivered,
    /// Claimed and not completed: out under a lease now, or left by a claimant that died (due
    /// again when the lease ends). The only ones that can be sent twice.
    Leased,
}

/// Which exhausted deliveries a replay sends again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// One delivery.
    Delivery(DeliveryKey),
    /// A postback's exhausted deliveries created in `[from, to)`.
    Postback {
        /// The postback.
        postback: PostbackId,
        /// Created at or after.
        from: DateTime<Utc>,
        /// Created before.
        to: DateTime<Utc>,
    },
}

/// A message for the network's manager: a postback was disabled automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Notification {
    /// Its id in the store (mark it done with this).
    pub id: i64,
    /// The postback.
    pub postback: PostbackId,
    /// Its partner, if it has one.
    pub partner: Option<PartnerId>,
    /// Why it was disabled.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The attempts of the delivery that tipped it (URLs with secrets redacted).
    pub attempts: Vec<Attempt>,
}

/// Counts of a store's deliveries by where they stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Counts {
    /// Scheduled, including those out under a lease.
    pub pending: u64,
    /// Held.
    pub held: u64,
    /// Delivered.
    pub delivered: u64,
    /// Gave up.
    pub gave_up: u64,
    /// Of the pending, those claimed and not completed (out under a lease, or left by a
    /// claimant that died): the only ones that can be sent twice.
    pub leased: u64,
}

/// Where deliveries, postbacks, health, attempts, the audit trail and the manager's
/// notifications live, and the transactions over them. Methods are named noun then verb; every
/// one that changes or reads time-dependent state takes `now`, never a database's clock. The
/// rules are the core's ([`plan_trigger`](postback::plan::plan_trigger),
/// [`settle`](postback::delivery::settle), [`on_operation`](postback::delivery::on_operation),
/// the [`Gatekeeper`](postback::access::Gatekeeper)): a store applies them inside its
/// transactions and writes what they return.
///
/// Implementations: [`MemoryStore`](crate::MemoryStore) (the reference),
/// [`SqliteStore`](crate::SqliteStore) (feature `sqlite`, the default), `PostgresStore`
/// (feature `postgres`: many processes over one database). All pass
/// [`conformance::run_all`](crate::conformance::run_all). Calls block; the
/// [`Worker`](crate::Worker) runs them on tokio's blocking threads.
pub trait Store: Send + Sync + 'static {
    /// The postbacks as stored now.
    fn registry_get(&self) -> Result<Registry, StoreError>;

    /// Apply a management operation on behalf of `actor`, with `access` deciding who may, in one
    /// transaction with what it does to the postback's deliveries
    /// ([`on_operation`](postback::delivery::on_operation)) and its audit entry.
    fn postback_manage(
        &self,
        now: DateTime<Utc>,
        actor: Actor,
        op: Manage,
        access: &postback::access::Settings,
    ) -> Result<Managed, StoreError>;

    /// A trigger happened: plan it against the stored postbacks and insert its deliveries by key,
    /// in one transaction. The same trigger twice inserts nothing ([`Enqueued::duplicates`]).
    fn trigger_enqueue(
        &self,
        now: DateTime<Utc>,
        trigger: &Trigger,
        values: &dyn MacroValues,
        rules: &Rules,
    ) -> Result<Enqueued, StoreError>;

    /// Several triggers at once, each as [`trigger_enqueue`](Store::trigger_enqueue) would; a
    /// store may write them in one transaction (the SQLite store does: one commit for the batch,
    /// so concurrent callers share it). The results come back in the batch's order; on an error
    /// none of the batch may have been stored.
    fn triggers_enqueue(
        &self,
        now: DateTime<Utc>,
        batch: &[(Trigger, &dyn MacroValues)],
        rules: &Rules,
    ) -> Result<Vec<Enqueued>, StoreError> {
        batch
            .iter()
            .map(|(t, v)| self.trigger_enqueue(now, t, *v, rules))
            .collect()
    }

    /// Queue one test fire of a server-to-server postback with `values` on behalf of `actor`
    /// (permissions as for an edit; audited), whatever the postback's status: attempted once,
    /// never retried, never counted. Returns its key.
    fn test_fire_enqueue(
        &self,
        now: DateTime<Utc>,
        actor: Actor,
        postback: PostbackId,
        values: &dyn MacroValues,
        rules: &Rules,
        access: &postback::access::Settings,
    ) -> Result<(DeliveryKey, AuditEntry), StoreError>;

    /// Claim up to `limit` deliveries due at `now`, oldest due first, for `owner`, under a lease
    /// until `now + lease`. A delivery whose lease ran out is due again and claimed like any
    /// other.
    fn deliveries_claim(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Complete a claimed delivery with what its attempt did (`delivery` after
    /// [`handle_response`](Delivery::handle_response), `progress` what that returned), in one
    /// transaction fenced by `token`: the delivery, its new attempts, its postback's health
    /// ([`settle`](postback::delivery::settle) with `disable`), and, when the policy fires, the
    /// postback flipped from active to disabled, the manager's notification and the holding of its
    /// scheduled deliveries.
    fn delivery_complete(
        &self,
        now: DateTime<Utc>,
        token: Token,
        delivery: Delivery,
        progress: Progress,
        disable: &DisablePolicy,
    ) -> Result<Completion, StoreError>;

    /// Complete several claimed deliveries at once, each as
    /// [`delivery_complete`](Store::delivery_complete) would and fenced by its own token; a
    /// store may write them in one transaction (the SQLite store does: one commit for the batch).
    /// The completions come back in the batch's order. On an error nothing of the batch may have
    /// been written: its deliveries stay leased and are sent again when their leases end.
    fn deliveries_complete(
        &self,
        now: DateTime<Utc>,
        batch: Vec<(Token, Delivery, Progress)>,
        disable: &DisablePolicy,
    ) -> Result<Vec<Completion>, StoreError> {
        batch
            .into_iter()
            .map(|(token, d, p)| self.delivery_complete(now, token, d, p, disable))
            .collect()
    }

    /// Give a claimed delivery back unsent (a shutdown before sending): due again at `now`, not
    /// counted as interrupted. Returns whether the token still held it.
    fn delivery_unclaim(
        &self,
        now: DateTime<Utc>,
        key: &DeliveryKey,
        token: Token,
    ) -> Result<bool, StoreError>;

    /// When the next delivery is due (including the end of a lease), if any.
    fn deliveries_next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// One delivery by key.
    fn delivery_get(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError>;

    /// A postback's deliveries matching `filter`, newest first, at most `limit`.
    fn deliveries_of(
        &self,
        postback: PostbackId,
        filter: Filter,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Counts over every delivery.
    fn deliveries_count(&self) -> Result<Counts, StoreError>;

    /// The attempts of a delivery, from the append-only table (kept after the delivery finished,
    /// until [`attempts_prune`](Store::attempts_prune)).
    fn attempts_of(&self, key: &DeliveryKey) -> Result<Vec<Attempt>, StoreError>;

    /// Send exhausted deliveries again with a fresh attempt budget, due at `now`, without
    /// touching the postback's health. Returns how many. A replayed original whose correction
    /// was delivered meanwhile is sent after that correction: replay the correction too if the
    /// partner must end on its status.
    fn deliveries_replay(&self, now: DateTime<Utc>, which: &Replay) -> Result<usize, StoreError>;

    /// A postback's health.
    fn health_get(&self, postback: PostbackId) -> Result<Option<Health>, StoreError>;

    /// A postback's audit trail, oldest first.
    fn audit_of(&self, postback: PostbackId) -> Result<Vec<AuditEntry>, StoreError>;

    /// Notifications not yet marked done, oldest first.
    fn notifications_pending(&self) -> Result<Vec<Notification>, StoreError>;

    /// Mark a notification done (delivered to the manager). Returns whether it was pending.
    fn notification_done(&self, now: DateTime<Utc>, id: i64) -> Result<bool, StoreError>;

    /// Retention: delete attempts made before `before`. Returns how many.
    fn attempts_prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError>;

    /// Retention: delete deliveries that were delivered before `before` (their keys are
    /// forgotten with them: a trigger seen again after that creates them anew). Returns how
    /// many.
    fn deliveries_prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError>;

    /// What an operator's page shows, in one call: per postback and per partner host (the
    /// template's origin), the deliveries pending, held and exhausted, the last success (from
    /// the health), the last failure with its class (from the attempts table, so only while
    /// retention keeps it), and the stuck work: pending deliveries whose lease expired
    /// [`STUCK_AFTER`](crate::stats::STUCK_AFTER) times or more without a completion. A read:
    /// it scans the deliveries that are not delivered and the attempts table, so call it for a
    /// page or a CLI, not per request.
    fn stats(&self, now: DateTime<Utc>) -> Result<crate::stats::OpsStats, StoreError>;

    /// A wake-up from outside this process, if the store has one: notified when a transaction
    /// of any process made deliveries due now (PostgreSQL: LISTEN/NOTIFY). The
    /// [`Worker`](crate::Worker) waits on it besides its handles' wake-ups and its poll
    /// interval. Default: none (the poll interval finds what other processes queued).
    fn wake_source(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}
