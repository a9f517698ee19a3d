//! [`WorkerHandle`]: what a running [`Worker`](crate::Worker) is told and asked while it runs.
//! Cloneable (an `Arc` over the store, the clock, the configuration, the wake-up, the shutdown
//! signal and the test fires being awaited); every store call runs on tokio's blocking threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};

use postback::access::{Actor, AuditEntry};
use postback::delivery::{Attempt, Delivery};
use postback::model::{DeliveryKey, PostbackId};
use postback::registry::Trigger;
use postback::template::MacroValues;

use crate::clock::Clock;
use crate::store::{
    Counts, Enqueued, Filter, Manage, Managed, Notification, Replay, Store, StoreError,
};
use crate::worker::WorkerConfig;

/// A failure of a [`WorkerHandle`] call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker's loop has stopped (shut down, or its runtime ended) before it could finish
    /// what was asked.
    #[error(
        "the worker has stopped: start a new worker on the same store; what was queued is kept there"
    )]
    Stopped,
    /// A store call on tokio's blocking threads did not return (the store panicked, or the
    /// runtime is shutting down).
    #[error(
        "a store call did not finish ({0}): the store panicked or the runtime is shutting down; retry on a running runtime"
    )]
    Blocking(String),
}

/// Plain counters of what a worker's loop did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Turns of the loop (each reads the time once, claims, and waits).
    pub turns: u64,
    /// Deliveries claimed.
    pub claimed: u64,
    /// Requests sent through the transport.
    pub sent: u64,
    /// Completions that delivered.
    pub delivered: u64,
    /// Completions that scheduled another attempt.
    pub retried: u64,
    /// Completions that ended without delivering (attempts used, terminal failures, local
    /// refusals, test fires that failed, deleted postbacks).
    pub gave_up: u64,
    /// Completions that held the delivery (its postback is off).
    pub held: u64,
    /// Results dropped because the lease was lost (another claimant has the delivery).
    pub lease_lost: u64,
    /// Claimed deliveries given back unsent (a full host, a shutdown).
    pub unclaimed: u64,
    /// Requests still out when the shutdown's grace ran out: left leased, sent again by the
    /// next claimant once the lease ends.
    pub left_leased: u64,
    /// Notifications handed to the sink and marked done.
    pub notified: u64,
    /// Store calls of the loop that failed (the loop carries on; what they concerned is sent
    /// again once its lease ends).
    pub store_errors: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub turns: AtomicU64,
    pub claimed: AtomicU64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub gave_up: AtomicU64,
    pub held: AtomicU64,
    pub lease_lost: AtomicU64,
    pub unclaimed: AtomicU64,
    pub left_leased: AtomicU64,
    pub notified: AtomicU64,
    pub store_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Stats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            turns: r(&self.turns),
            claimed: r(&self.claimed),
            sent: r(&self.sent),
            delivered: r(&self.delivered),
            retried: r(&self.retried),
            gave_up: r(&self.gave_up),
            held: r(&self.held),
            lease_lost: r(&self.lease_lost),
            unclaimed: r(&self.unclaimed),
            left_leased: r(&self.left_leased),
            notified: r(&self.notified),
            store_errors: r(&self.store_errors),
        }
    }
}

/// Test fires being awaited, by key.
pub(crate) type Fires = HashMap<DeliveryKey, Vec<oneshot::Sender<Delivery>>>;

/// What the loop and its handles share.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: WorkerConfig,
    /// A trigger, a management operation or a replay in this process: look for due work now.
    pub wake: Notify,
    /// Set once, with the grace period, when a shutdown is asked for.
    pub shutdown: watch::Sender<Option<Duration>>,
    /// Set when the loop has stopped.
    pub stopped: watch::Sender<bool>,
    pub fires: Mutex<Fires>,
    pub stats: Counters,
    /// Triggers waiting for the next group commit.
    pub triggers: Mutex<TriggerQueue>,
}

/// A trigger waiting to be stored, and who waits for its result.
pub(crate) struct Queued {
    trigger: Trigger,
    values: Box<dyn MacroValues + Send>,
    reply: tokio::sync::oneshot::Sender<Result<Enqueued, WorkerError>>,
}

/// Triggers that arrived while a commit was running: the next commit takes them all, so
/// concurrent callers share one transaction (group commit).
#[derive(Default)]
pub(crate) struct TriggerQueue {
    waiting: Vec<Queued>,
    /// A blocking task is committing; it takes what waits when it is done.
    flushing: bool,
}

/// The most triggers one commit takes.
const GROUP: usize = 256;

/// Lets the next trigger start a flusher if this one panicked (its callers get an error: their
/// reply senders are dropped).
struct Unstick<'a>(&'a Shared);

impl Drop for Unstick<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self
                .0
                .triggers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            q.flushing = false;
            // Nobody flushes what waits now: its callers get an error (their replies drop)
            // rather than waiting for a trigger that may never come.
            q.waiting.clear();
        }
    }
}

/// Commit what waits, then what came meanwhile, until nothing waits.
fn flush(shared: &Shared) {
    let _unstick = Unstick(shared);
    loop {
        let batch: Vec<Queued> = {
            let mut q = shared
                .triggers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if q.waiting.is_empty() {
                q.flushing = false;
                return;
            }
            let n = q.waiting.len().min(GROUP);
            q.waiting.drain(..n).collect()
        };
        let now = shared.clock.now();
        let items: Vec<(Trigger, &dyn MacroValues)> = batch
            .iter()
            .map(|q| (q.trigger, &*q.values as &dyn MacroValues))
            .collect();
        let result = shared
            .store
            .triggers_enqueue(now, &items, &shared.config.rules);
        drop(items);
        match result {
            Ok(outs) => {
                for (q, out) in batch.into_iter().zip(outs) {
                    let _ = q.reply.send(Ok(out));
                }
            }
            Err(e) => {
                let text = e.to_string();
                for q in batch {
                    let _ = q
                        .reply
                        .send(Err(WorkerError::Store(StoreError::Database(text.clone()))));
                }
            }
        }
        shared.wake.notify_one();
    }
}

impl Shared {
    pub(crate) fn fires(&self) -> MutexGuard<'_, Fires> {
        // Every change under the lock is a single insert or removal: consistent after a panic.
        self.fires.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The loop has stopped: tell whoever waits.
    pub(crate) fn mark_stopped(&self) {
        self.stopped.send_replace(true);
        // Dropping the senders tells every awaited test fire that no result will come from here.
        self.fires().clear();
    }
}

/// Run a store call on tokio's blocking threads (store calls block).
pub(crate) async fn blocking<R, F>(store: &Arc<dyn Store>, f: F) -> Result<R, WorkerError>
where
    R: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<R, StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || f(&*store)).await {
        Ok(r) => r.map_err(WorkerError::from),
        Err(e) => Err(WorkerError::Blocking(e.to_string())),
    }
}

/// A handle on a running [`Worker`](crate::Worker): takes triggers, management operations, test
/// fires and replays, answers queries, and shuts the worker down. Clones share one worker.
///
/// The loop runs until [`shutdown`](WorkerHandle::shutdown) (or until its runtime ends);
/// dropping every handle does not stop it. Calls that only write to the store (a trigger, a
/// management operation, a replay) succeed after the worker stopped too: what they queue waits
/// in the store for the next worker.
#[derive(Clone)]
pub struct WorkerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("owner", &self.shared.config.owner)
            .field("stopped", &self.is_stopped())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    async fn call<R, F>(&self, f: F) -> Result<R, WorkerError>
    where
        R: Send + 'static,
        F: FnOnce(&dyn Store, &WorkerConfig) -> Result<R, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        blocking(&self.shared.store, move |s| f(s, &shared.config)).await
    }

    /// A trigger happened: plan it against the stored postbacks and queue its deliveries
    /// ([`Store::trigger_enqueue`] with the worker's [`Rules`](crate::Rules)), then wake the
    /// loop to send them. The same trigger twice queues nothing new.
    pub async fn trigger(
        &self,
        trigger: Trigger,
        values: impl MacroValues + Send + 'static,
    ) -> Result<Enqueued, WorkerError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self
                .shared
                .triggers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            q.waiting.push(Queued {
                trigger,
                values: Box::new(values),
                reply,
            });
            !std::mem::replace(&mut q.flushing, true)
        };
        if start {
            let shared = Arc::clone(&self.shared);
            // The flusher ends only when nothing waits, so no trigger is left behind.
            tokio::task::spawn_blocking(move || flush(&shared));
        }
        let out = answer.await.map_err(|_| {
            WorkerError::Blocking("the commit of this trigger was cancelled".into())
        })??;
        crate::telemetry::created(out.created.len(), out.held.len());
        Ok(out)
    }

    /// Create, edit, pause, resume, enable or delete a postback on behalf of `actor`, as the
    /// worker's access [`Settings`](postback::access::Settings) allow; audited. Wakes the loop
    /// (an enable or a resume makes held deliveries due).
    pub async fn manage(&self, actor: Actor, op: Manage) -> Result<Managed, WorkerError> {
        let now = self.shared.clock.now();
        let out = self
            .call(move |s, c| s.postback_manage(now, actor, op, &c.access))
            .await?;
        self.wake();
        Ok(out)
    }

    /// Queue one test fire of a server-to-server postback with `values` on behalf of `actor`
    /// (whatever the postback's status; audited), and wake the loop. Await its result with
    /// [`TestFire::finished`]. A test fire is attempted once, never retried, never counted.
    pub async fn test_fire(
        &self,
        actor: Actor,
        postback: PostbackId,
        values: impl MacroValues + Send + 'static,
    ) -> Result<TestFire, WorkerError> {
        let now = self.shared.clock.now();
        let (key, audit) = self
            .call(move |s, c| {
                s.test_fire_enqueue(now, actor, postback, &values, &c.rules, &c.access)
            })
            .await?;
        let (tx, rx) = oneshot::channel();
        self.shared.fires().entry(key).or_default().push(tx);
        self.wake();
        Ok(TestFire {
            key,
            audit,
            rx,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Send exhausted deliveries again with a fresh attempt budget, due now, without touching
    /// the postback's health; wakes the loop. Returns how many.
    pub async fn replay(&self, which: Replay) -> Result<usize, WorkerError> {
        let now = self.shared.clock.now();
        let n = self
            .call(move |s, _| s.deliveries_replay(now, &which))
            .await?;
        crate::telemetry::add(crate::telemetry::DELIVERIES_REPLAYED, n as u64);
        self.wake();
        Ok(n)
    }

    /// One delivery by key.
    pub async fn delivery(&self, key: DeliveryKey) -> Result<Option<Delivery>, WorkerError> {
        self.call(move |s, _| s.delivery_get(&key)).await
    }

    /// A postback's deliveries matching `filter` ([`Filter::Held`], [`Filter::Exhausted`], ...),
    /// newest first, at most `limit`.
    pub async fn deliveries_of(
        &self,
        postback: PostbackId,
        filter: Filter,
        limit: usize,
    ) -> Result<Vec<Delivery>, WorkerError> {
        self.call(move |s, _| s.deliveries_of(postback, filter, limit))
            .await
    }

    /// The attempts of a delivery (kept after it finished, until pruned).
    pub async fn attempts_of(&self, key: DeliveryKey) -> Result<Vec<Attempt>, WorkerError> {
        self.call(move |s, _| s.attempts_of(&key)).await
    }

    /// Notifications for the manager not yet marked done (with a sink configured, the loop
    /// hands them over and marks them; without one they wait here).
    pub async fn notifications_pending(&self) -> Result<Vec<Notification>, WorkerError> {
        self.call(|s, _| s.notifications_pending()).await
    }

    /// Counts of the store's deliveries by where they stand.
    pub async fn counts(&self) -> Result<Counts, WorkerError> {
        self.call(|s, _| s.deliveries_count()).await
    }

    /// What an operator's page shows, at the worker's clock's `now`
    /// ([`Store::stats`]): per postback and per partner host, pending / held / exhausted
    /// counts, the last success, the last failure with its class, and the stuck deliveries. Its
    /// `Display` is a small table. (The loop's own counters are [`stats`](WorkerHandle::stats).)
    pub async fn stats_summary(&self) -> Result<crate::stats::OpsStats, WorkerError> {
        let now = self.shared.clock.now();
        self.call(move |s, _| s.stats(now)).await
    }

    /// The postbacks as stored now.
    pub async fn registry(&self) -> Result<postback::registry::Registry, WorkerError> {
        self.call(|s, _| s.registry_get()).await
    }

    /// A postback's health.
    pub async fn health(
        &self,
        postback: postback::model::PostbackId,
    ) -> Result<Option<postback::delivery::Health>, WorkerError> {
        self.call(move |s, _| s.health_get(postback)).await
    }

    /// A postback's audit trail, oldest first.
    pub async fn audit_of(
        &self,
        postback: postback::model::PostbackId,
    ) -> Result<Vec<postback::access::AuditEntry>, WorkerError> {
        self.call(move |s, _| s.audit_of(postback)).await
    }

    /// The worker's configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// What the loop did so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// Make the loop look for due work now (say, on a notice that another process queued some).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Whether the loop has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.shared.stopped.borrow()
    }

    /// Stop gracefully, and return once the loop has stopped: claiming stops, claimed
    /// deliveries not yet sent are given back (due at once, for any worker), and requests out
    /// get up to `grace` to finish and be completed. Whatever is still out then stays leased:
    /// the next claimant sends it again once the lease ends (never lost). The first call's
    /// grace is the one used; every call returns once the loop stopped.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutdown.send_if_modified(|g| {
            let first = g.is_none();
            if first {
                *g = Some(grace);
            }
            first
        });
        self.stopped().await;
    }

    /// Return once the loop has stopped (without asking it to).
    pub async fn stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        // The sender lives in `shared`, which this handle holds: `wait_for` fails only if it is
        // gone, which it cannot be.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// A queued test fire: its key and audit entry, and its result once the worker completed it.
#[derive(Debug)]
#[must_use = "await `finished` for the result; dropping this leaves the test fire queued"]
pub struct TestFire {
    key: DeliveryKey,
    audit: AuditEntry,
    rx: oneshot::Receiver<Delivery>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TestFire {
    /// Its delivery's key.
    pub fn key(&self) -> &DeliveryKey {
        &self.key
    }

    /// The audit entry written for it.
    pub fn audit(&self) -> &AuditEntry {
        &self.audit
    }

    /// Wait until it finished (delivered, or given up after its one attempt) and return the
    /// delivery as stored, with its attempt. It is also found finished when another worker on
    /// the same store completed it. [`WorkerError::Stopped`] if this worker stopped before it
    /// finished (it stays queued for the next worker).
    pub async fn finished(mut self) -> Result<Delivery, WorkerError> {
        let poll = self.shared.config.poll_every();
        let mut stopped = self.shared.stopped.subscribe();
        loop {
            let key = self.key;
            let found = self.call_get(key).await?;
            if let Some(d) = found.filter(Delivery::is_finished) {
                return Ok(d);
            }
            if *stopped.borrow_and_update() {
                return Err(WorkerError::Stopped);
            }
            tokio::select! {
                got = &mut self.rx => match got {
                    Ok(d) => return Ok(d),
                    // No result will come from this worker: one last look at the store.
                    Err(_) => {
                        let found = self.call_get(key).await?;
                        return found.filter(Delivery::is_finished).ok_or(WorkerError::Stopped);
                    }
                },
                _ = stopped.changed() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn call_get(&self, key: DeliveryKey) -> Result<Option<Delivery>, WorkerError> {
        blocking(&self.shared.store, move |s| s.delivery_get(&key)).await
    }
}
