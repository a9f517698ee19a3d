//! The [`Worker`]: delivery as a service over a [`Store`], after quinn's `ConnectionDriver` (a
//! spawned future over a state machine that never does IO itself).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinError, JoinSet};

use postback::access::Settings;
use postback::delivery::{
    Action, Delivery, DisablePolicy, Failure, FailureClass, GiveUpReason, Next, Progress,
    RetryPolicy,
};
use postback::model::{DeliveryKey, Postback};
use postback::transport::{AsyncTransport, Classify};

use tracing::Instrument;

use crate::apply;
use crate::clock::Clock;
use crate::handle::{Counters, Shared, WorkerHandle, blocking};
use crate::store::{Claimed, Completion, Notification, Rules, Store, StoreError, Token};
use crate::telemetry;

/// The span of one attempt: the delivery's key, its postback, partner and host, the redacted
/// URL (never the request's URI, which carries the secrets); its outcome, failure class, status
/// and duration are recorded when the result comes.
fn attempt_span(d: &Delivery, pb: &Postback, host: &str, url: &str) -> tracing::Span {
    tracing::info_span!(
        "postback.attempt",
        key = %d.key(),
        postback = %pb.id(),
        partner = pb.partner().map(|p| p.get()),
        host = %host,
        url = %url,
        attempt = d.attempts().len() + 1,
        outcome = tracing::field::Empty,
        class = tracing::field::Empty,
        counted = tracing::field::Empty,
        status = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    )
}

/// What an attempt did, on its span, as metrics, and as one event.
fn record_attempt(span: &tracing::Span, d: &Delivery, took: Duration) {
    let Some(a) = d.attempts().last() else {
        return;
    };
    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    span.record("duration_ms", ms);
    if let Some(s) = a.status {
        span.record("status", s);
    }
    telemetry::duration(a.failure.is_none(), took);
    match &a.failure {
        None => {
            span.record("outcome", "success");
            tracing::debug!(parent: span, duration_ms = ms, "delivered");
        }
        Some(class) => {
            let label = telemetry::class_label(class);
            span.record("outcome", "failure");
            span.record("class", label);
            span.record("counted", a.counted);
            telemetry::failed(class, a.counted, 1);
            tracing::info!(
                parent: span,
                class = label,
                counted = a.counted,
                duration_ms = ms,
                "attempt failed: {class}"
            );
        }
    }
}

/// Where the worker hands notifications for the network's manager (a postback was disabled
/// automatically). Each is marked done in the store once handed over.
#[derive(Clone)]
#[non_exhaustive]
pub enum NotificationSink {
    /// Called on the worker's loop for each notification: keep it quick and non-blocking (send
    /// it on to a channel or a task for anything slow).
    Callback(Arc<dyn Fn(Notification) + Send + Sync>),
    /// Sent on this channel (without waiting: when it is full or closed, the notification stays
    /// pending in the store and is tried again on the next check).
    Channel(mpsc::Sender<Notification>),
}

impl NotificationSink {
    /// A callback sink.
    pub fn callback(f: impl Fn(Notification) + Send + Sync + 'static) -> NotificationSink {
        NotificationSink::Callback(Arc::new(f))
    }

    /// A channel sink.
    pub fn channel(tx: mpsc::Sender<Notification>) -> NotificationSink {
        NotificationSink::Channel(tx)
    }

    /// Hand one over; whether it was taken.
    fn deliver(&self, n: Notification) -> bool {
        match self {
            NotificationSink::Callback(f) => {
                f(n);
                true
            }
            NotificationSink::Channel(tx) => tx.try_send(n).is_ok(),
        }
    }
}

impl fmt::Debug for NotificationSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotificationSink::Callback(_) => f.write_str("Callback(..)"),
            NotificationSink::Channel(tx) => f.debug_tuple("Channel").field(tx).finish(),
        }
    }
}

/// A [`WorkerConfig`] that does not fit its transport: [`WorkerConfig::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The lease is not longer than twice the transport's timeout: a request may outlive its
    /// lease and the delivery be sent again by another worker meanwhile.
    #[error(
        "the lease ({lease:?}) must be longer than twice the transport timeout ({transport_timeout:?}): a delivery is sent with as little as half its lease left, so a request may outlive the lease and be sent twice"
    )]
    LeaseTooShort {
        /// The configured lease.
        lease: Duration,
        /// The transport's timeout it was checked against.
        transport_timeout: Duration,
    },
}

/// How a [`Worker`] runs. Configuration, not state: a worker started again with another policy
/// uses the new one for every delivery, old or new.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// How deliveries are retried (default [`RetryPolicy::default`]).
    pub retry: RetryPolicy,
    /// When a postback is disabled automatically (default [`DisablePolicy::default`]).
    pub disable: DisablePolicy,
    /// Who may manage and test fire which postbacks (default [`Settings::default`]).
    pub access: Settings,
    /// The limits triggers are planned with and the idempotency header (default
    /// [`Rules::default`]).
    pub rules: Rules,
    /// How long a claim holds a delivery (default 5 minutes): longer than any request can take,
    /// more than twice the transport's timeout ([`WorkerConfig::check`] says if not). A
    /// delivery whose claimant dies is sent again once its lease ends.
    pub lease: Duration,
    /// The most deliveries claimed at once (default 32).
    pub batch_size: usize,
    /// The most requests out (and claimed deliveries waiting to go out) at once (default 64).
    pub max_concurrency: usize,
    /// The most requests out at once to one host, the postback template's origin (default 8).
    pub max_per_host: usize,
    /// This worker's name in the store's leases (default `postback-worker-<process id>`).
    pub owner: String,
    /// How often the loop looks at the store without being woken, so work queued by other
    /// processes and their notifications are seen (default 1 s; at most half the lease).
    pub poll_interval: Duration,
    /// Where notifications for the manager go (default none: they wait in the store, see
    /// [`WorkerHandle::notifications_pending`]).
    pub notifications: Option<NotificationSink>,
    /// How often the store-wide gauges ([`telemetry`](crate::telemetry): pending, held,
    /// exhausted, leased, the lag of the oldest due delivery) are read from the store, on the
    /// poll tick (default 10 s; each read counts the deliveries). Read at start and at shutdown
    /// too.
    pub gauges_every: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            retry: RetryPolicy::default(),
            disable: DisablePolicy::default(),
            access: Settings::default(),
            rules: Rules::default(),
            lease: Duration::from_secs(5 * 60),
            batch_size: 32,
            max_concurrency: 64,
            max_per_host: 8,
            owner: format!("postback-worker-{}", std::process::id()),
            poll_interval: Duration::from_secs(1),
            notifications: None,
            gauges_every: Duration::from_secs(10),
        }
    }
}

impl WorkerConfig {
    /// The defaults (see each field).
    pub fn new() -> WorkerConfig {
        WorkerConfig::default()
    }

    /// Set the retry policy.
    #[must_use]
    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.retry = p;
        self
    }

    /// Set the disable policy.
    #[must_use]
    pub fn disable(mut self, p: DisablePolicy) -> Self {
        self.disable = p;
        self
    }

    /// Set the access settings.
    #[must_use]
    pub fn access(mut self, s: Settings) -> Self {
        self.access = s;
        self
    }

    /// Set the planning rules.
    #[must_use]
    pub fn rules(mut self, r: Rules) -> Self {
        self.rules = r;
        self
    }

    /// Set the lease (at least 1 s).
    #[must_use]
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d.max(Duration::from_secs(1));
        self
    }

    /// Set the batch size (at least 1).
    #[must_use]
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Set the overall cap (at least 1).
    #[must_use]
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Set the per-host cap (at least 1).
    #[must_use]
    pub fn max_per_host(mut self, n: usize) -> Self {
        self.max_per_host = n.max(1);
        self
    }

    /// Set the owner name.
    #[must_use]
    pub fn owner(mut self, name: impl Into<String>) -> Self {
        self.owner = name.into();
        self
    }

    /// Set the poll interval.
    #[must_use]
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Set where notifications go.
    #[must_use]
    pub fn notifications(mut self, sink: NotificationSink) -> Self {
        self.notifications = Some(sink);
        self
    }

    /// Check the lease against the transport's timeout (say postback-http's
    /// `Config::timeout`, 10 s by default): the lease must be longer than twice it. A claimed
    /// delivery is sent only while at least half its lease is left, so a request that can take
    /// up to the timeout then ends before the lease does; with a shorter lease it may outlive
    /// it, and another worker may send the delivery again meanwhile (same key, but twice).
    /// Call it where the Worker is built, with the timeout its transport was given:
    ///
    /// ```
    /// # use std::time::Duration;
    /// use postback_store::{ConfigError, WorkerConfig};
    /// let config = WorkerConfig::new().lease(Duration::from_secs(15));
    /// assert!(matches!(
    ///     config.check(Duration::from_secs(10)),
    ///     Err(ConfigError::LeaseTooShort { .. })
    /// ));
    /// assert!(WorkerConfig::new().check(Duration::from_secs(10)).is_ok());
    /// ```
    pub fn check(&self, transport_timeout: Duration) -> Result<(), ConfigError> {
        if self.lease > transport_timeout.saturating_mul(2) {
            Ok(())
        } else {
            Err(ConfigError::LeaseTooShort {
                lease: self.lease,
                transport_timeout,
            })
        }
    }

    /// Set how often the store-wide gauges are read.
    #[must_use]
    pub fn gauges_every(mut self, d: Duration) -> Self {
        self.gauges_every = d;
        self
    }

    /// The poll interval as used: at most half the lease, at least 1 ms.
    pub(crate) fn poll_every(&self) -> Duration {
        self.poll_interval
            .min(self.lease / 2)
            .max(Duration::from_millis(1))
    }
}

/// Runs delivery as a service over a [`Store`]: claims due deliveries, sends them through an
/// [`AsyncTransport`] with bounded concurrency, completes them, and sleeps until the next is due
/// or it is woken. Start it with [`start`](Worker::start); talk to it through the
/// [`WorkerHandle`].
///
/// # The loop
///
/// Each turn:
/// 1. reads `now` once (through the [`Clock`]);
/// 2. claims up to the free slots (at most [`WorkerConfig::batch_size`]) under a lease; for each
///    claimed delivery, records earlier interrupted claims, then polls the core's
///    [`Delivery`] and sends its request through a `JoinSet` capped overall
///    ([`WorkerConfig::max_concurrency`]) and per host ([`WorkerConfig::max_per_host`], host =
///    the postback template's origin);
/// 3. hands pending notifications to the sink, at start, after a completion that disabled a
///    postback, and every [`WorkerConfig::poll_interval`];
/// 4. waits for the first of: the next due time in the store, a wake-up from a handle, a
///    finished send, the poll interval (so work queued by other processes is seen), or a
///    shutdown.
///
/// As each send finishes it reads `now`, gives the result to the delivery
/// ([`handle_response`](Delivery::handle_response)) and completes it in the store (fenced by
/// the claim's token). A [`LeaseLost`](crate::Completion::LeaseLost) drops the result (another
/// claimant has the delivery): counted in [`Stats::lease_lost`](crate::Stats::lease_lost).
/// Store calls block, so each runs on tokio's blocking threads.
///
/// # Decisions
///
/// - **A deleted postback.** A claimed delivery whose postback is gone is ended at once
///   ([`Delivery::abandon`]) and completed: the store's settle ends it as
///   [`PostbackDeleted`](postback::delivery::GiveUpReason::PostbackDeleted). Nothing is sent.
/// - **A full host.** A claimed delivery whose host has `max_per_host` requests out waits in
///   memory (holding one of the overall slots), at most `max_per_host` of them per host; more
///   are given back at once ([`Store::delivery_unclaim`]) and claimed again on a later turn, so
///   one slow partner never holds every slot. A waiter whose lease is half gone is given back
///   rather than sent, so it is never sent on a lease about to end.
/// - **A delivery the core will not send now** (not yet due by this worker's clock, held,
///   finished) is given back unsent.
/// - **Store errors in the loop** are counted ([`Stats::store_errors`](crate::Stats)) and the
///   loop carries on; a completion that could not be written leaves the delivery leased, so it
///   is sent again (same key) when the lease ends: at least once, never lost.
/// - **Notifications** are handed to the sink, then marked done. A crash between the two hands
///   the same notification (same [`id`](crate::Notification::id)) over once more after a
///   restart; de-duplicate by id if that matters. Several workers running at once on one store
///   may each hand over a notification they read at the same moment: give the sink to one of
///   them, or de-duplicate by id.
/// - **Time.** Due times are the clock's ([`ManualClock`](crate::ManualClock) in tests); the poll
///   interval and the shutdown's grace are real time (tokio's timer), since they concern other
///   processes and requests on the wire.
pub struct Worker<T> {
    shared: Arc<Shared>,
    transport: Arc<T>,
}

impl<T> fmt::Debug for Worker<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncTransport + Send + Sync + 'static> Worker<T> {
    /// A worker over `store`, sending through `transport`, reading the time from `clock`.
    pub fn new<S: Store, C: Clock>(
        store: Arc<S>,
        transport: T,
        clock: C,
        config: WorkerConfig,
    ) -> Worker<T> {
        let store: Arc<dyn Store> = store;
        Worker {
            shared: Arc::new(Shared {
                store,
                clock: Arc::new(clock),
                config,
                wake: Notify::new(),
                shutdown: watch::Sender::new(None),
                stopped: watch::Sender::new(false),
                fires: Mutex::default(),
                stats: Counters::default(),
                triggers: Mutex::default(),
            }),
            transport: Arc::new(transport),
        }
    }

    /// Spawn the loop on the current tokio runtime and return a handle on it.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn start(self) -> WorkerHandle {
        let handle = WorkerHandle {
            shared: Arc::clone(&self.shared),
        };
        let driver = Driver {
            shared: self.shared,
            transport: self.transport,
            sends: JoinSet::new(),
            out: HashMap::new(),
            waiting: VecDeque::new(),
            per_host: HashMap::new(),
            check_notifications: true,
            gauges_at: None,
        };
        telemetry::describe();
        tokio::spawn(driver.run());
        handle
    }
}

type Reply = Result<http::Response<Vec<u8>>, Failure>;

/// A reply and how long it took (real time).
type Sent = (Reply, std::time::Duration);

/// A claimed delivery ready to send.
struct Ready {
    delivery: Delivery,
    token: Token,
    postback: Postback,
    host: String,
    claimed_at: DateTime<Utc>,
}

/// A request out.
struct Out {
    delivery: Delivery,
    token: Token,
    host: String,
    /// The attempt's span.
    span: tracing::Span,
}

/// Marks the loop stopped however it ends (a panic too), so nothing waits on it forever.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.mark_stopped();
    }
}

struct Driver<T> {
    shared: Arc<Shared>,
    transport: Arc<T>,
    sends: JoinSet<Sent>,
    out: HashMap<tokio::task::Id, Out>,
    /// Claimed, waiting for a slot of their host.
    waiting: VecDeque<Ready>,
    /// Requests out, by host.
    per_host: HashMap<String, usize>,
    check_notifications: bool,
    /// When the gauges were last read (real time).
    gauges_at: Option<tokio::time::Instant>,
}

fn count(c: &std::sync::atomic::AtomicU64) {
    Counters::add(c, 1);
}

impl<T: AsyncTransport + Send + Sync + 'static> Driver<T> {
    async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let _guard = StopGuard(Arc::clone(&shared));
        let mut shutdown = shared.shutdown.subscribe();
        let poll = shared.config.poll_every();
        let mut next_poll = tokio::time::Instant::now() + poll;
        // Wake-ups from other processes (PostgreSQL: LISTEN/NOTIFY), if the store has them.
        let store_wake = blocking(&shared.store, |s| Ok(s.wake_source()))
            .await
            .ok()
            .flatten();
        self.gauges().await;
        let grace = loop {
            if let Some(grace) = *shutdown.borrow_and_update() {
                break grace;
            }
            count(&shared.stats.turns);
            let now = shared.clock.now();
            // With requests out, wait for room for a quarter batch before claiming again: one
            // claim per finished send would cost a transaction each.
            let floor = (shared.config.batch_size.min(shared.config.max_concurrency) / 4).max(1);
            let room = self.sends.is_empty() || self.free() >= floor;
            let (claimed, limit) = if room { self.claim(now).await } else { (0, 0) };
            if self.check_notifications {
                self.notify(now).await;
            }
            if claimed > 0 && claimed == limit && self.free() > 0 {
                // A full batch: there may be more due now.
                continue;
            }
            let next_due = if room && self.free() > 0 {
                match blocking(&shared.store, |s| s.deliveries_next_due()).await {
                    Ok(t) => t.filter(|t| *t > now),
                    Err(_) => {
                        count(&shared.stats.store_errors);
                        None
                    }
                }
            } else {
                None
            };
            let due = async {
                match next_due {
                    Some(t) => shared.clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => {}
                Some(done) = self.sends.join_next_with_id(), if !self.sends.is_empty() => {
                    self.finished(done).await;
                }
                _ = shared.wake.notified() => {}
                _ = async {
                    match &store_wake {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = due => {}
                // One deadline across turns: a busy loop must not push the tick away forever.
                _ = tokio::time::sleep_until(next_poll) => {
                    self.check_notifications = true;
                    next_poll = tokio::time::Instant::now() + poll;
                    let every = shared.config.gauges_every;
                    if self.gauges_at.is_none_or(|at| at.elapsed() >= every) {
                        self.gauges().await;
                    }
                }
            }
        };
        self.shut_down(grace).await;
    }

    /// Read the store-wide counts and set the gauges.
    async fn gauges(&mut self) {
        self.gauges_at = Some(tokio::time::Instant::now());
        let now = self.shared.clock.now();
        let read = blocking(&self.shared.store, |s| {
            Ok((s.deliveries_count()?, s.deliveries_next_due()?))
        })
        .await;
        match read {
            Ok((counts, next)) => {
                let lag = next
                    .and_then(|t| (now - t).to_std().ok())
                    .unwrap_or_default();
                telemetry::gauges(&counts, lag);
            }
            Err(_) => count(&self.shared.stats.store_errors),
        }
    }

    /// Slots for more claims.
    fn free(&self) -> usize {
        self.shared
            .config
            .max_concurrency
            .saturating_sub(self.sends.len() + self.waiting.len())
    }

    /// Claim up to the free slots and start each claimed delivery. Returns how many were claimed
    /// and the limit asked for.
    async fn claim(&mut self, now: DateTime<Utc>) -> (usize, usize) {
        let limit = self.free().min(self.shared.config.batch_size);
        if limit == 0 {
            return (0, 0);
        }
        let owner = self.shared.config.owner.clone();
        let lease = self.shared.config.lease;
        let claimed = match blocking(&self.shared.store, move |s| {
            s.deliveries_claim(now, &owner, limit, lease)
        })
        .await
        {
            Ok(c) => c,
            Err(_) => {
                count(&self.shared.stats.store_errors);
                return (0, limit);
            }
        };
        let n = claimed.len();
        Counters::add(&self.shared.stats.claimed, n as u64);
        let expired: u64 = claimed.iter().map(|c| u64::from(c.interrupted)).sum();
        if expired > 0 {
            telemetry::add(telemetry::CLAIMS_EXPIRED, expired);
            telemetry::failed(&FailureClass::Interrupted, false, expired);
            tracing::warn!(
                claims = expired,
                "leases ran out without a completion: recorded as interrupted attempts"
            );
        }
        let mut kept = 0;
        for c in claimed {
            if !self.start(now, c).await {
                kept += 1;
            }
        }
        // What was given back (a full host) does not count: claiming again at once would only
        // give it back again.
        (kept, limit)
    }

    /// A claimed delivery: end it, send it, let it wait for its host, or give it back.
    /// Returns whether it was given back unsent (its host is full).
    async fn start(&mut self, now: DateTime<Utc>, c: Claimed) -> bool {
        let Claimed {
            mut delivery,
            token,
            postback,
            interrupted,
            ..
        } = c;
        let Some(postback) = postback else {
            // Deleted meanwhile: nothing to send; the store ends it as PostbackDeleted.
            delivery.abandon(now);
            let progress = Progress::GaveUp {
                reason: GiveUpReason::PostbackDeleted,
                failure: FailureClass::Local,
            };
            self.complete(now, token, delivery, progress).await;
            return false;
        };
        if interrupted > 0 {
            let ctx = apply::send_context(&postback, &self.shared.config.rules);
            let done = apply::record_interruptions(
                now,
                &mut delivery,
                interrupted,
                &ctx,
                &self.shared.config.retry,
            );
            if let Some(progress) = done {
                self.complete(now, token, delivery, progress).await;
                return false;
            }
        }
        let host = postback.template().origin().to_owned();
        let ready = Ready {
            delivery,
            token,
            postback,
            host,
            claimed_at: now,
        };
        let cap = self.shared.config.max_per_host;
        if self.out_to(&ready.host) < cap {
            self.send(now, ready).await;
        } else if self.waiting_for(&ready.host) < cap {
            self.waiting.push_back(ready);
        } else {
            self.unclaim(now, &ready).await;
            return true;
        }
        false
    }

    fn out_to(&self, host: &str) -> usize {
        self.per_host.get(host).copied().unwrap_or(0)
    }

    fn waiting_for(&self, host: &str) -> usize {
        self.waiting.iter().filter(|r| r.host == host).count()
    }

    /// Poll the delivery and send what it asks for.
    async fn send(&mut self, now: DateTime<Utc>, ready: Ready) {
        let Ready {
            mut delivery,
            token,
            postback,
            host,
            ..
        } = ready;
        let action = {
            let ctx = apply::send_context(&postback, &self.shared.config.rules);
            delivery.poll(now, &ctx)
        };
        match action {
            Action::Send(outgoing) => {
                let span = attempt_span(&delivery, &postback, &host, outgoing.redacted_url());
                let request = outgoing.into_request();
                let transport = Arc::clone(&self.transport);
                let task = self.sends.spawn(
                    async move {
                        let started = tokio::time::Instant::now();
                        let reply = transport.send(request).await.map_err(|e| e.failure());
                        (reply, started.elapsed())
                    }
                    .instrument(span.clone()),
                );
                *self.per_host.entry(host.clone()).or_default() += 1;
                self.out.insert(
                    task.id(),
                    Out {
                        delivery,
                        token,
                        host,
                        span,
                    },
                );
                count(&self.shared.stats.sent);
            }
            Action::Unsendable(failure) => {
                tracing::warn!(
                    key = %delivery.key(),
                    postback = %postback.id(),
                    class = telemetry::class_label(&failure.class()),
                    "the request could not be made"
                );
                telemetry::failed(&failure.class(), false, 1);
                match delivery.handle_response(now, Err(failure), &self.shared.config.retry) {
                    Ok(progress) => self.complete(now, token, delivery, progress).await,
                    // Cannot happen (Unsendable puts it in flight); the lease will free it.
                    Err(_) => count(&self.shared.stats.store_errors),
                }
            }
            // Not due by this clock, held or finished: the store knows better; give it back.
            _ => {
                self.unclaim_key(now, *delivery.key(), token).await;
            }
        }
    }

    async fn unclaim(&mut self, now: DateTime<Utc>, ready: &Ready) {
        self.unclaim_key(now, *ready.delivery.key(), ready.token)
            .await;
    }

    async fn unclaim_key(
        &mut self,
        now: DateTime<Utc>,
        key: postback::model::DeliveryKey,
        token: Token,
    ) {
        match blocking(&self.shared.store, move |s| {
            s.delivery_unclaim(now, &key, token)
        })
        .await
        {
            Ok(_) => count(&self.shared.stats.unclaimed),
            Err(_) => count(&self.shared.stats.store_errors),
        }
    }

    /// A send finished: complete it, then start a waiter of its host.
    async fn finished(&mut self, done: Result<(tokio::task::Id, Sent), JoinError>) {
        // Every other send that is done too: their results go to the store in one call.
        let mut all = vec![done];
        while let Some(more) = self.sends.try_join_next_with_id() {
            all.push(more);
        }
        let now = self.shared.clock.now();
        let mut batch = Vec::with_capacity(all.len());
        let mut hosts = Vec::with_capacity(all.len());
        for done in all {
            let (id, reply) = match done {
                Ok((id, reply)) => (id, Some(reply)),
                // The transport panicked: the delivery stays leased and is sent again when the
                // lease ends.
                Err(e) => (e.id(), None),
            };
            let Some(out) = self.out.remove(&id) else {
                continue;
            };
            if let Some(n) = self.per_host.get_mut(&out.host) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_host.remove(&out.host);
                }
            }
            hosts.push(out.host.clone());
            let Some((reply, took)) = reply else {
                tracing::error!(parent: &out.span, "the transport panicked: sent again when the lease ends");
                count(&self.shared.stats.store_errors);
                continue;
            };
            let mut delivery = out.delivery;
            match delivery.handle_response(now, reply, &self.shared.config.retry) {
                Ok(progress) => {
                    record_attempt(&out.span, &delivery, took);
                    batch.push((out.token, delivery, progress));
                }
                Err(_) => count(&self.shared.stats.store_errors),
            }
        }
        self.complete_batch(now, batch).await;
        for host in hosts {
            self.next_waiter(now, &host).await;
        }
    }

    /// Start the first delivery waiting for `host`, if its host has room.
    async fn next_waiter(&mut self, now: DateTime<Utc>, host: &str) {
        if self.out_to(host) >= self.shared.config.max_per_host {
            return;
        }
        let Some(i) = self.waiting.iter().position(|r| r.host == host) else {
            return;
        };
        let Some(ready) = self.waiting.remove(i) else {
            return;
        };
        let half = chrono::Duration::from_std(self.shared.config.lease / 2)
            .ok()
            .and_then(|h| ready.claimed_at.checked_add_signed(h))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if now >= half {
            self.unclaim(now, &ready).await;
            return;
        }
        // It waited: send it with its postback as it is now. One paused, disabled or deleted
        // meanwhile is given back (the store claims nothing of a postback that is off).
        let pid = ready.delivery.postback();
        let current = blocking(&self.shared.store, move |s| {
            Ok(s.registry_get()?.get(pid).cloned())
        })
        .await;
        match current {
            Ok(Some(pb)) if pb.status().is_active() || ready.delivery.is_test() => {
                let ready = Ready {
                    postback: pb,
                    ..ready
                };
                self.send(now, ready).await;
            }
            Ok(_) => self.unclaim(now, &ready).await,
            Err(_) => {
                count(&self.shared.stats.store_errors);
                self.unclaim(now, &ready).await;
            }
        }
    }

    /// Write a result, fenced by the claim's token.
    async fn complete(
        &mut self,
        now: DateTime<Utc>,
        token: Token,
        delivery: Delivery,
        progress: Progress,
    ) {
        self.complete_batch(now, vec![(token, delivery, progress)])
            .await;
    }

    /// Write results, each fenced by its claim's token, in one store call (one transaction
    /// where the store can).
    async fn complete_batch(
        &mut self,
        now: DateTime<Utc>,
        batch: Vec<(Token, Delivery, Progress)>,
    ) {
        if batch.is_empty() {
            return;
        }
        let meta: Vec<(DeliveryKey, bool, Progress)> = batch
            .iter()
            .map(|(_, d, p)| (*d.key(), d.is_test(), *p))
            .collect();
        let disable = self.shared.config.disable;
        let tests: Vec<DeliveryKey> = meta.iter().filter(|m| m.1).map(|m| m.0).collect();
        let written = blocking(&self.shared.store, move |s| {
            let keep = batch.clone();
            match s.deliveries_complete(now, batch, &disable) {
                Ok(done) => Ok(done.into_iter().map(Ok).collect::<Vec<_>>()),
                // A batch that failed as a whole (a store without one transaction for it may
                // have written part): each on its own, so one bad item costs only itself.
                Err(_) => Ok(keep
                    .into_iter()
                    .map(|(t, d, p)| s.delivery_complete(now, t, d, p, &disable))
                    .collect()),
            }
        })
        .await;
        let stats = &self.shared.stats;
        let completions: Vec<Result<Completion, StoreError>> = match written {
            Ok(w) => w,
            Err(_) => {
                Counters::add(&stats.store_errors, meta.len() as u64);
                return;
            }
        };
        // Test fires' records, for whoever awaits them (a failure here loses nothing written).
        let records = if tests.is_empty() {
            Vec::new()
        } else {
            blocking(&self.shared.store, move |s| {
                Ok(tests
                    .iter()
                    .filter_map(|k| s.delivery_get(k).ok().flatten())
                    .collect::<Vec<_>>())
            })
            .await
            .unwrap_or_default()
        };
        for (completion, (key, _, progress)) in completions.into_iter().zip(&meta) {
            let Ok(completion) = completion else {
                // Not written: it stays leased and is sent again when the lease ends.
                count(&stats.store_errors);
                continue;
            };
            match completion {
                Completion::LeaseLost => {
                    count(&stats.lease_lost);
                    telemetry::add(telemetry::RESULTS_LEASE_LOST, 1);
                    tracing::warn!(key = %key, "the lease was lost meanwhile: result dropped");
                }
                Completion::Completed { next, disabled } => {
                    match next {
                        Next::Finished if matches!(progress, Progress::Delivered { .. }) => {
                            count(&stats.delivered);
                            telemetry::add(telemetry::DELIVERIES_DELIVERED, 1);
                        }
                        Next::Finished => {
                            count(&stats.gave_up);
                            telemetry::add(telemetry::DELIVERIES_GAVE_UP, 1);
                        }
                        Next::Scheduled => count(&stats.retried),
                        Next::Held => count(&stats.held),
                        _ => {}
                    }
                    if disabled {
                        self.check_notifications = true;
                        telemetry::add(telemetry::POSTBACKS_DISABLED, 1);
                        tracing::warn!(
                            postback = %key.postback(),
                            key = %key,
                            "the postback was disabled automatically"
                        );
                    }
                }
            }
        }
        for record in records.into_iter().filter(Delivery::is_finished) {
            let waiters = self.shared.fires().remove(record.key()).unwrap_or_default();
            for w in waiters {
                let _ = w.send(record.clone());
            }
        }
    }

    /// Hand pending notifications to the sink, then mark them done.
    async fn notify(&mut self, now: DateTime<Utc>) {
        self.check_notifications = false;
        let Some(sink) = self.shared.config.notifications.clone() else {
            return;
        };
        let pending = match blocking(&self.shared.store, |s| s.notifications_pending()).await {
            Ok(p) => p,
            Err(_) => {
                count(&self.shared.stats.store_errors);
                return;
            }
        };
        let mut handed = Vec::new();
        for n in pending {
            let id = n.id;
            if !sink.deliver(n) {
                break;
            }
            handed.push(id);
        }
        if handed.is_empty() {
            return;
        }
        let n = handed.len() as u64;
        let marked = blocking(&self.shared.store, move |s| {
            for id in handed {
                s.notification_done(now, id)?;
            }
            Ok(())
        })
        .await;
        match marked {
            Ok(()) => {
                Counters::add(&self.shared.stats.notified, n);
                telemetry::add(telemetry::NOTIFICATIONS_SENT, n);
            }
            Err(_) => count(&self.shared.stats.store_errors),
        }
    }

    /// Stop claiming, give back what waits, let what is out finish within `grace`.
    async fn shut_down(mut self, grace: Duration) {
        let now = self.shared.clock.now();
        for ready in std::mem::take(&mut self.waiting) {
            self.unclaim(now, &ready).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.sends.is_empty() {
            tokio::select! {
                Some(done) = self.sends.join_next_with_id() => self.finished(done).await,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Whatever is still out stays leased: the next claimant sends it again (same key).
        Counters::add(&self.shared.stats.left_leased, self.out.len() as u64);
        self.sends.abort_all();
        if self.check_notifications {
            let now = self.shared.clock.now();
            self.notify(now).await;
        }
        self.gauges().await;
    }
}
