//! The engine: registry, templates and deliveries composed into one sans-IO object, over the
//! core's decisions ([`plan_trigger`](crate::plan::plan_trigger) with its hold rule
//! [`held_for`], [`Delivery`], [`Health`], the status transitions of
//! [`Status`](crate::model::Status)), which a durable store calls the same way.
//!
//! Call order (str0m / quinn-proto style), all with the caller's `now`:
//!
//! - [`Engine::handle_trigger`] when a conversion, event or CPC click happens: resolves, creates
//!   deliveries (at most one per delivery key, so the same trigger twice creates nothing new),
//!   and returns pixels for the page.
//! - [`Engine::poll_transmit`] until `None`: each [`Transmit`] goes to the transport, and its
//!   result comes back through [`Engine::handle_response`].
//! - [`Engine::poll_event`] until `None`: delivered, retried, gave up, disabled, notify manager.
//! - [`Engine::poll_timeout`]: sleep until then (or until the next trigger), and start over.
//!
//! Management goes through [`Engine::create`], [`Engine::edit`], [`Engine::pause`],
//! [`Engine::resume`], [`Engine::enable`], [`Engine::delete`] and [`Engine::test_fire`], which
//! check permissions and write audit entries; resuming or enabling a postback replays the
//! deliveries held while it was off.
//!
//! Delivery is at least once. A request whose answer never comes (the process stopped, the
//! transport hung past [`EngineConfig::lease`]) is sent again with the same key, so a receiver
//! must drop duplicates by `{delivery_id}` (or the idempotency header).
//!
//! State and configuration are apart: [`Engine`] serializes its state (postbacks, deliveries,
//! health, pending events), and [`Engine::restore`] reads it back under the configuration you
//! pass, checked so that nothing collides or is lost.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{AccessError, Actor, AuditEntry, Gatekeeper, Operation, Settings};
use crate::delivery::{
    Action, Attempt, Delivery, DeliveryError, DeliveryId, DisablePolicy, Failure, FailureClass,
    Next, Progress, Rendered, RetryPolicy, SendContext, State, add, check, on_operation, settle,
};
use crate::hash::IdMap;
use crate::model::{DeliveryKey, PartnerId, Postback, PostbackId, Purpose, TriggerId};
use crate::net::{NetError, NetPolicy};
use crate::registry::{Precedence, Registry, RegistryError, Resolution, Trigger};
use crate::template::{MacroValues, StoredValues};

pub use crate::delivery::Health;
pub use crate::plan::{FireError, RenderedPixel, held_for};
use crate::plan::{History, PlanRules, correction_keys, plan_correction};

/// The shortest lease honoured, whatever the configuration says: a zero lease would send every
/// request again at once.
const MIN_LEASE: Duration = Duration::from_secs(1);

/// Requests kept from the plan's check for their first send, at most: enough for every delivery
/// of the triggers between two polls, a bounded few kilobytes whatever is in flight.
const RENDERED_KEPT: usize = 256;

/// How the engine delivers. Configuration, not state: a restored snapshot runs under the
/// configuration given to [`Engine::restore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Retries of one delivery.
    pub retry: RetryPolicy,
    /// When a postback is switched off.
    pub disable: DisablePolicy,
    /// The network's settings for partners.
    pub access: Settings,
    /// Send the delivery key as this header on every attempt (e.g. `Idempotency-Key`), so the
    /// receiver can drop duplicates. Off by default: most trackers ignore it.
    pub idempotency_header: Option<String>,
    /// Where server-to-server postbacks may go, checked when one is created or edited through
    /// the engine. Transports check resolved addresses against the same policy.
    pub net: NetPolicy,
    /// How long a request may be out before the engine takes it as lost (a crashed process, a
    /// hung transport) and sends it again with the same key (default 5 minutes; under one second
    /// counts as one second). Keep it longer than your transport's timeout, or slow answers are
    /// sent twice.
    pub lease: Duration,
    /// Finished deliveries kept per postback with their debug info, for
    /// [`Engine::finished_of`] (default 20).
    pub finished_per_postback: usize,
    /// Keys of finished deliveries remembered, so that the same trigger handled again creates
    /// nothing (default 100,000, about 200 bytes each). Older keys are forgotten first; a
    /// durable store remembers every key it keeps.
    pub remembered_keys: usize,
    /// The longest value, in bytes, a postback may carry (default 1,024). A longer one is
    /// refused when the trigger is handled
    /// ([`RenderError::ValueTooLong`](crate::delivery::RenderError::ValueTooLong)), so that one
    /// click's oversized sub value cannot make a partner's server answer 414 until the postback
    /// is disabled. A 413, 414 or 431 that comes back anyway ends that delivery, never counted.
    pub max_value_len: usize,
    /// The most deliveries one trigger may create (default 20). Past it, each further postback
    /// is reported in [`Fired::errors`] ([`FireError::TooManyDeliveries`]), not sent: a partner
    /// with two thousand postbacks cannot turn one conversion into two thousand requests.
    pub max_deliveries_per_trigger: usize,
    /// The most requests in flight to one partner host (scheme, host and port) at a time
    /// (default 8). A partner whose server never answers holds at most this many, and every
    /// other partner's deliveries go out meanwhile; due deliveries beyond it wait their turn.
    pub max_in_flight_per_host: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            retry: RetryPolicy::default(),
            disable: DisablePolicy::default(),
            access: Settings::default(),
            idempotency_header: None,
            net: NetPolicy::default(),
            lease: Duration::from_secs(300),
            finished_per_postback: 20,
            remembered_keys: 100_000,
            max_value_len: 1024,
            max_deliveries_per_trigger: 20,
            max_in_flight_per_host: 8,
        }
    }
}

impl EngineConfig {
    /// Set the retry policy.
    #[must_use]
    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }
    /// Set the disable policy.
    #[must_use]
    pub fn disable(mut self, d: DisablePolicy) -> Self {
        self.disable = d;
        self
    }
    /// Set the partner settings.
    #[must_use]
    pub fn access(mut self, s: Settings) -> Self {
        self.access = s;
        self
    }
    /// Set the network policy.
    #[must_use]
    pub fn net(mut self, n: NetPolicy) -> Self {
        self.net = n;
        self
    }
    /// Send the delivery key in this header.
    #[must_use]
    pub fn idempotency_header(mut self, name: impl Into<String>) -> Self {
        self.idempotency_header = Some(name.into());
        self
    }
    /// Set the lease of a request in flight (a lease under one second counts as one second).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }
    /// Keep `n` finished deliveries per postback.
    #[must_use]
    pub fn finished_per_postback(mut self, n: usize) -> Self {
        self.finished_per_postback = n;
        self
    }
    /// Remember the keys of `n` finished deliveries.
    #[must_use]
    pub fn remembered_keys(mut self, n: usize) -> Self {
        self.remembered_keys = n;
        self
    }
    /// Refuse values longer than `max` bytes.
    #[must_use]
    pub fn max_value_len(mut self, max: usize) -> Self {
        self.max_value_len = max;
        self
    }
    /// Let one trigger create at most `n` deliveries.
    #[must_use]
    pub fn max_deliveries_per_trigger(mut self, n: usize) -> Self {
        self.max_deliveries_per_trigger = n;
        self
    }
    /// Keep at most `n` requests in flight to one partner host (at least 1).
    #[must_use]
    pub fn max_in_flight_per_host(mut self, n: usize) -> Self {
        self.max_in_flight_per_host = n.max(1);
        self
    }
}

/// A request to send.
#[must_use]
#[non_exhaustive]
pub struct Transmit {
    /// Pass it back to [`Engine::handle_response`] with the result.
    pub delivery: DeliveryId,
    /// The URL with its secrets redacted, for `Debug`.
    shown: String,
    /// Its stable key (what the receiver de-duplicates on).
    pub key: DeliveryKey,
    /// The postback it fires.
    pub postback: PostbackId,
    /// The request.
    pub request: http::Request<Vec<u8>>,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL can carry a partner's token: show it redacted.
        f.debug_struct("Transmit")
            .field("delivery", &self.delivery)
            .field("key", &self.key)
            .field("postback", &self.postback)
            .field("method", self.request.method())
            .field("uri", &self.shown)
            .finish()
    }
}

/// What a trigger did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct Fired {
    /// What fired, what did not, and why.
    pub resolution: Resolution,
    /// Deliveries created for server-to-server postbacks.
    pub deliveries: Vec<(PostbackId, DeliveryId)>,
    /// Pixels and HTML code to render.
    pub pixels: Vec<RenderedPixel>,
    /// Deliveries created held, for automatically disabled postbacks (see [`held_for`]): they
    /// are sent when the postback is enabled again, so no conversion is lost meanwhile.
    pub held: Vec<(PostbackId, DeliveryId)>,
    /// Postbacks this trigger had already fired (the same trigger id handled again): nothing
    /// new was created for them.
    pub duplicates: Vec<(PostbackId, DeliveryKey)>,
    /// Postbacks that fired but could not be expanded with the trigger's values.
    pub errors: Vec<(PostbackId, FireError)>,
}

/// Something the caller should know or act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The partner accepted a delivery. `record` holds every attempt (the debug info).
    Delivered {
        /// The delivery, finished.
        record: Box<Delivery>,
    },
    /// An attempt failed; another is scheduled.
    RetryScheduled {
        /// The delivery.
        delivery: DeliveryId,
        /// Its postback.
        postback: PostbackId,
        /// Why the attempt failed.
        failure: FailureClass,
        /// Whether the failure counted.
        counted: bool,
        /// When the next attempt is due.
        at: DateTime<Utc>,
    },
    /// A delivery stopped for good (not held). `record` holds every attempt.
    GaveUp {
        /// The delivery, finished.
        record: Box<Delivery>,
    },
    /// A delivery is held because its postback is off; it replays when the postback is enabled.
    Held {
        /// The delivery.
        delivery: DeliveryId,
        /// Its postback.
        postback: PostbackId,
    },
    /// A postback was switched off automatically.
    PostbackDisabled {
        /// The postback.
        postback: PostbackId,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Tell the network's manager; emitted exactly once per automatic disablement.
    NotifyNetworkManager {
        /// The postback.
        postback: PostbackId,
        /// Its partner, if it has one.
        partner: Option<PartnerId>,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
        /// The attempts that led to it (debug info).
        attempts: Vec<Attempt>,
    },
    /// A postback was enabled or resumed and its held deliveries replayed.
    Reenabled {
        /// The postback.
        postback: PostbackId,
        /// How many held deliveries were released.
        replayed: usize,
        /// When.
        at: DateTime<Utc>,
    },
    /// The result of a test fire: the exact request and response, never counted.
    TestFired {
        /// The delivery, finished, with its single attempt.
        record: Box<Delivery>,
    },
}

/// An engine call that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No such delivery (finished, or never created).
    #[error("delivery {0} is unknown: it finished already or was never created")]
    UnknownDelivery(DeliveryId),
    /// The delivery refused the call.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// A permission or registry refusal.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A test fire of a postback that is not server-to-server.
    #[error(
        "postback {0} is a pixel or HTML code and cannot be test-fired from the server: render it in a page instead"
    )]
    NotServerToServer(PostbackId),
    /// A postback URL the network policy refuses.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A test fire whose expansion failed.
    #[error(transparent)]
    Fire(#[from] FireError),
}

/// A snapshot that cannot be restored as it is. Nothing is dropped, overwritten or wrapped to
/// make it fit: fix the snapshot, or restore from another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A finished delivery among the pending ones: it would block its key and never end.
    #[error(
        "the snapshot lists delivery {0} as pending, but it has finished: move it to the finished records or drop it"
    )]
    NotPending(DeliveryId),
    /// Two deliveries with one handle.
    #[error("the snapshot holds delivery {0} twice: keep one of them")]
    DuplicateDelivery(DeliveryId),
    /// Two deliveries with one key: one conversion would reach the partner twice.
    #[error("the snapshot holds two deliveries with key {0}: keep one of them")]
    DuplicateKey(DeliveryKey),
    /// The id counter is not past every delivery: new deliveries would take taken ids.
    #[error(
        "the snapshot's next delivery id {next} is not above its highest delivery id {highest}: the snapshot is damaged or was edited; set next_id above {highest}"
    )]
    IdBehind {
        /// The counter.
        next: u64,
        /// The highest id in use.
        highest: u64,
    },
    /// The id counter is at its limit.
    #[error(
        "the snapshot's delivery id counter is exhausted ({0}): no new delivery could get an id"
    )]
    IdsExhausted(u64),
}

/// A test fire started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct TestFire {
    /// The delivery; its result comes as [`Event::TestFired`].
    pub delivery: DeliveryId,
    /// Who fired it, when.
    pub audit: AuditEntry,
}

/// Deliveries by the time the engine needs them next.
type Timers = BTreeSet<(DateTime<Utc>, DeliveryId)>;

/// One partner host's share of the sending.
#[derive(Debug, Clone)]
struct HostSlots {
    /// The host, shared with the requests and waiting deliveries that refer to it.
    name: Arc<str>,
    in_flight: usize,
    /// Due deliveries waiting for a slot, oldest first.
    waiting: VecDeque<DeliveryId>,
    /// The network policy's verdict on the host (the policy is configuration, fixed for the
    /// engine's life), so a send does not parse it again.
    refused: Option<NetError>,
}

/// Registry, deliveries and health in one sans-IO object. See the [module docs](self).
///
/// Serializes as its state (no configuration); read it back with [`Snapshot`] and
/// [`Engine::restore`].
#[derive(Clone)]
pub struct Engine {
    config: EngineConfig,
    registry: Registry,
    /// Boxed: B-tree nodes then move and scan 16-byte entries, not deliveries of a few hundred
    /// bytes, and a finished one goes into its event without a copy.
    deliveries: BTreeMap<DeliveryId, Box<Delivery>>,
    /// When each unfinished delivery needs the engine next: a scheduled one when due, one in
    /// flight when its lease runs out (derived from `deliveries` and the lease).
    timers: Timers,
    /// When each request in flight loses its lease: apart from `timers`, since it holds only the
    /// few requests out at a time and changes on every send and answer.
    leases: Timers,
    /// Requests in flight and due deliveries waiting for a slot, per partner host.
    hosts: IdMap<Arc<str>, HostSlots>,
    /// The host of each request in flight that holds a slot.
    sending: IdMap<DeliveryId, Arc<str>>,
    /// The host whose queue each waiting delivery is in (it is out of `timers` meanwhile).
    parked: IdMap<DeliveryId, Arc<str>>,
    /// Revisions of the unfinished corrections of each original (by the original's key), so a
    /// correction finds what it waits behind without a scan.
    corrections: IdMap<DeliveryKey, BTreeSet<u32>>,
    /// Corrections that came due while an earlier revision was unfinished, by the original's
    /// key: out of `timers` until that one finishes.
    behind: IdMap<DeliveryKey, Vec<DeliveryId>>,
    /// The original each of those waits on.
    waiting_behind: IdMap<DeliveryId, DeliveryKey>,
    /// The highest revision that went out (sent at least once, or finished), by the original's
    /// key, so a correction planned after a later one went out is skipped.
    latest: IdMap<DeliveryKey, u32>,
    /// Unfinished deliveries per postback (derived from `deliveries`).
    by_postback: IdMap<PostbackId, BTreeSet<DeliveryId>>,
    /// Every key known: an unfinished delivery's with its handle, a remembered finished one's
    /// with `None`. One table, so a delivery's life costs one insert, one update and, when its
    /// key is forgotten, one removal.
    keys: IdMap<DeliveryKey, Option<DeliveryId>>,
    /// Keys of finished deliveries, oldest first, at most `remembered_keys`.
    done_keys: VecDeque<DeliveryKey>,
    /// Finished deliveries per postback, oldest first, at most `finished_per_postback` each.
    finished: IdMap<PostbackId, VecDeque<Delivery>>,
    health: IdMap<PostbackId, Health>,
    events: VecDeque<Event>,
    next_id: u64,
    /// The request the plan's check made for a new delivery, taken by its first send so that
    /// the send does not render and parse it again (at most [`RENDERED_KEPT`]). Only valid for
    /// the registry as it was: emptied whenever the registry may have changed.
    rendered: IdMap<DeliveryId, Rendered>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("postbacks", &self.registry.len())
            .field("deliveries", &self.deliveries.len())
            .field("scheduled", &self.timers.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `registry`.
    pub fn new(config: EngineConfig, registry: Registry) -> Engine {
        Engine {
            config,
            registry,
            deliveries: BTreeMap::new(),
            timers: BTreeSet::new(),
            leases: BTreeSet::new(),
            hosts: IdMap::default(),
            sending: IdMap::default(),
            parked: IdMap::default(),
            corrections: IdMap::default(),
            behind: IdMap::default(),
            waiting_behind: IdMap::default(),
            latest: IdMap::default(),
            by_postback: IdMap::default(),
            keys: IdMap::default(),
            done_keys: VecDeque::new(),
            finished: IdMap::default(),
            health: IdMap::default(),
            events: VecDeque::new(),
            next_id: 1,
            rendered: IdMap::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Turn partner self-edit on or off (the network's global setting), at once.
    pub fn set_access(&mut self, settings: Settings) {
        self.config.access = settings;
    }

    /// The postbacks.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Direct access for trusted setup. Changes made here skip permission checks and audit, and
    /// resuming or enabling here does not replay held deliveries: use [`Engine::resume`] and
    /// [`Engine::enable`] for that. The engine checks every send against the registry as it is.
    pub fn registry_mut(&mut self) -> &mut Registry {
        self.registry_changed();
        &mut self.registry
    }

    /// Set the precedence rule.
    pub fn set_precedence(&mut self, p: Precedence) {
        self.registry.set_precedence(p);
    }

    /// The registry may have changed: a request rendered before is not sent as it is.
    fn registry_changed(&mut self) {
        self.rendered.clear();
    }

    /// A delivery that has not finished.
    pub fn delivery(&self, id: DeliveryId) -> Option<&Delivery> {
        self.deliveries.get(&id).map(|d| &**d)
    }

    /// The unfinished delivery with this key.
    pub fn delivery_by_key(&self, key: &DeliveryKey) -> Option<&Delivery> {
        self.keys
            .get(key)
            .copied()
            .flatten()
            .and_then(|id| self.deliveries.get(&id))
            .map(|d| &**d)
    }

    /// Unfinished deliveries (scheduled, in flight, held), by id.
    pub fn deliveries(&self) -> impl Iterator<Item = &Delivery> {
        self.deliveries.values().map(|d| &**d)
    }

    /// Unfinished deliveries of one postback.
    pub fn deliveries_of(&self, postback: PostbackId) -> impl Iterator<Item = &Delivery> {
        self.by_postback
            .get(&postback)
            .into_iter()
            .flatten()
            .filter_map(|id| self.deliveries.get(id))
            .map(|d| &**d)
    }

    /// The last finished deliveries of one postback, oldest first, each with every attempt (the
    /// debug info): at most [`EngineConfig::finished_per_postback`].
    pub fn finished_of(&self, postback: PostbackId) -> impl Iterator<Item = &Delivery> {
        self.finished.get(&postback).into_iter().flatten()
    }

    /// Ids of a postback's unfinished deliveries, copied so the caller may change them.
    fn delivery_ids_of(&self, postback: PostbackId) -> Vec<DeliveryId> {
        self.by_postback
            .get(&postback)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// A postback's health.
    pub fn health(&self, postback: PostbackId) -> Option<&Health> {
        self.health.get(&postback)
    }

    /// Whether a delivery with this key exists or was finished recently enough to be remembered.
    fn knows(&self, key: &DeliveryKey) -> bool {
        self.keys.contains_key(key)
    }

    /// A conversion, event or CPC click happened: create deliveries for the server-to-server
    /// postbacks that fire (and held ones, see [`held_for`]), and render the pixels
    /// ([`plan_trigger`](crate::plan::plan_trigger) decides). A postback this trigger id already fired gets nothing new
    /// ([`Fired::duplicates`]); its pixels are rendered again. One postback's bad value does not
    /// stop the others; it is reported in [`Fired::errors`].
    ///
    /// A correction ([`Trigger::corrected`]) follows the conversion to the postbacks that had it
    /// and opted in ([`plan_correction`]), and each is sent only after the earlier revisions of
    /// the conversion to that postback finished.
    pub fn handle_trigger<V: MacroValues + ?Sized>(
        &mut self,
        now: DateTime<Utc>,
        trigger: &Trigger,
        values: &V,
    ) -> Fired {
        let rules = PlanRules {
            max_deliveries: self.config.max_deliveries_per_trigger,
            max_value_len: self.config.max_value_len,
            idempotency_header: self.config.idempotency_header.as_deref(),
        };
        // A correction follows the conversion to the postbacks that had it, unless a later one
        // got there first.
        let mut history = History::default();
        for k in correction_keys(&self.registry, trigger) {
            if self.knows(&k.original()) {
                history.had_original.push(k.postback());
            }
            if self
                .latest
                .get(&k.original())
                .is_some_and(|&r| r > k.revision())
            {
                history.superseded.push(k.postback());
            }
        }
        let plan = plan_correction(&self.registry, trigger, values, &rules, &history);
        let mut fired = Fired {
            resolution: plan.resolution,
            deliveries: Vec::new(),
            pixels: plan.pixels,
            held: Vec::new(),
            duplicates: Vec::new(),
            errors: plan.errors,
        };
        for p in plan.deliveries {
            let pid = p.key.postback();
            if self.knows(&p.key) {
                fired.duplicates.push((pid, p.key));
                continue;
            }
            match self.create_delivery(now, p.key, p.values, p.delay) {
                Ok(id) if p.held => {
                    self.hold(id);
                    fired.held.push((pid, id));
                }
                Ok(id) => {
                    if let Some(r) = p.rendered.filter(|_| self.rendered.len() < RENDERED_KEPT) {
                        self.rendered.insert(id, r);
                    }
                    fired.deliveries.push((pid, id));
                }
                Err(e) => fired.errors.push((pid, e)),
            }
        }
        fired
    }

    /// Fire one server-to-server postback once with `values` (say,
    /// [`SampleValues`](crate::template::SampleValues)) on behalf of `actor`, whatever its
    /// status. Permissions apply as for an edit (a partner, only its own, only while partner
    /// self-edit is on), and the audit entry records it. The result comes as
    /// [`Event::TestFired`] with the exact request and response; it is never retried and never
    /// counts toward disabling.
    pub fn test_fire<V: MacroValues + ?Sized>(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        postback: PostbackId,
        values: &V,
    ) -> Result<TestFire, EngineError> {
        let audit = self
            .gatekeeper()
            .test_fire(&self.registry, actor, now, postback)?;
        let pb = self
            .registry
            .get(postback)
            .ok_or(AccessError::Registry(RegistryError::NotFound(postback)))?;
        if !pb.method().is_server_to_server() {
            return Err(EngineError::NotServerToServer(postback));
        }
        // Unique among test fires of this engine, and never a real trigger's key.
        let tag = format!(
            "test-{}-{}",
            now.timestamp_millis().unsigned_abs(),
            self.next_id
        );
        let trigger = TriggerId::new(&tag).unwrap_or(TriggerId::from(self.next_id));
        let key = DeliveryKey::new(trigger, postback, Purpose::Test, 0);
        let custom: Vec<_> = pb.template().custom_macros().collect();
        let stored = values.to_stored(&custom);
        check(&key, &stored, &Self::send_context(&self.config, pb)).map_err(FireError::from)?;
        let delivery = self.create_delivery(now, key, stored, Duration::ZERO)?;
        Ok(TestFire { delivery, audit })
    }

    fn send_context<'a>(config: &'a EngineConfig, pb: &'a Postback) -> SendContext<'a> {
        SendContext::new(pb)
            .idempotency_header(config.idempotency_header.as_deref())
            .max_value_len(Some(config.max_value_len))
    }

    /// Create a delivery whose request was checked ([`plan_trigger`](crate::plan::plan_trigger) checks a trigger's).
    fn create_delivery(
        &mut self,
        now: DateTime<Utc>,
        key: DeliveryKey,
        values: StoredValues,
        delay: Duration,
    ) -> Result<DeliveryId, FireError> {
        let next = self.next_id.checked_add(1).ok_or(FireError::IdsExhausted)?;
        let id = DeliveryId::new(self.next_id);
        self.next_id = next;
        self.insert(Box::new(Delivery::new(id, key, values, now, delay)));
        Ok(id)
    }

    /// Where and when the engine needs a delivery next: `timers` when it is due, `leases` when
    /// its request in flight is taken as lost.
    fn timer_of(&mut self, id: DeliveryId) -> Option<(&mut Timers, DateTime<Utc>)> {
        match self.deliveries.get(&id)?.state() {
            State::Scheduled { at } => Some((&mut self.timers, *at)),
            State::InFlight { since, .. } => Some((
                &mut self.leases,
                add(*since, self.config.lease.max(MIN_LEASE)),
            )),
            _ => None,
        }
    }

    fn unschedule(&mut self, id: DeliveryId) {
        if let Some(original) = self.waiting_behind.remove(&id) {
            if let Some(ids) = self.behind.get_mut(&original) {
                ids.retain(|w| *w != id);
                if ids.is_empty() {
                    self.behind.remove(&original);
                }
            }
            return;
        }
        if let Some(host) = self.parked.remove(&id) {
            if let Some(slots) = self.hosts.get_mut(&host) {
                slots.waiting.retain(|w| *w != id);
            }
            return;
        }
        if let Some((set, at)) = self.timer_of(id) {
            set.remove(&(at, id));
        }
    }

    /// A request in flight ended (answered, or its lease ran out): its host's slot goes to the
    /// delivery that waited longest for it.
    fn release_slot(&mut self, id: DeliveryId) {
        let Some(host) = self.sending.remove(&id) else {
            return;
        };
        let Some(slots) = self.hosts.get_mut(&host) else {
            return;
        };
        slots.in_flight = slots.in_flight.saturating_sub(1);
        if let Some(next) = slots.waiting.pop_front() {
            self.parked.remove(&next);
            self.schedule(next);
        }
    }

    fn schedule(&mut self, id: DeliveryId) {
        if let Some((set, at)) = self.timer_of(id) {
            set.insert((at, id));
        }
    }

    fn insert(&mut self, d: Box<Delivery>) {
        let id = d.id();
        if d.key().is_correction() {
            let revisions = self.corrections.entry(d.key().original()).or_default();
            revisions.insert(d.key().revision());
            if !d.attempts().is_empty() {
                self.note_key(d.key());
            }
        }
        self.by_postback.entry(d.postback()).or_default().insert(id);
        self.keys.insert(*d.key(), Some(id));
        self.deliveries.insert(id, d);
        self.schedule(id);
    }

    /// Remove a delivery that ended, remember its key and keep its record.
    fn finish(&mut self, id: DeliveryId) -> Option<Box<Delivery>> {
        self.unschedule(id);
        self.rendered.remove(&id);
        let mut d = self.deliveries.remove(&id)?;
        // A finished delivery is a record: its values (which may be secrets) are no longer
        // needed, and its events and kept records never carry them.
        d.forget_values();
        let pid = d.postback();
        if let Some(set) = self.by_postback.get_mut(&pid) {
            set.remove(&id);
            if set.is_empty() {
                self.by_postback.remove(&pid);
            }
        }
        self.release_behind(d.key());
        // Test fires have keys of their own and their record in their event: they take no room
        // from real deliveries. Nor does a delivery of a postback deleted while it was out.
        let real = !d.is_test() && self.registry.get(pid).is_some();
        if self.config.remembered_keys > 0 && real {
            if let Some(slot) = self.keys.get_mut(d.key()) {
                *slot = None;
            }
            self.done_keys.push_back(*d.key());
            self.forget_old_keys();
        } else {
            self.keys.remove(d.key());
            self.forget_key(d.key());
        }
        if self.config.finished_per_postback > 0 && real {
            let kept = self.finished.entry(pid).or_default();
            kept.push_back((*d).clone());
            trim_front(kept, self.config.finished_per_postback);
        }
        Some(d)
    }

    /// A delivery with key `key` finished: the corrections that waited behind it are due again
    /// (each checks once more whether it still waits behind another).
    fn release_behind(&mut self, key: &DeliveryKey) {
        let original = key.original();
        if key.is_correction() {
            if let Some(revisions) = self.corrections.get_mut(&original) {
                revisions.remove(&key.revision());
                if revisions.is_empty() {
                    self.corrections.remove(&original);
                }
            }
        }
        if self.behind.is_empty() {
            return;
        }
        for id in self.behind.remove(&original).unwrap_or_default() {
            self.waiting_behind.remove(&id);
            self.schedule(id);
        }
    }

    /// A correction went out (or finished): the latest revision of its original may be higher
    /// now.
    fn note_key(&mut self, key: &DeliveryKey) {
        if key.is_correction() {
            let latest = self.latest.entry(key.original()).or_default();
            *latest = (*latest).max(key.revision());
        }
    }

    /// A key is forgotten: if it was its original's latest revision, the latest is not known
    /// any more (as for any forgotten key, a correction then plans as if it were new).
    fn forget_key(&mut self, key: &DeliveryKey) {
        if key.is_correction() && self.latest.get(&key.original()) == Some(&key.revision()) {
            self.latest.remove(&key.original());
        }
    }

    /// Whether a delivery with key `key` must wait: an earlier revision of it is unfinished
    /// ([`DeliveryKey::waits_behind`]).
    fn waits(&self, key: &DeliveryKey) -> bool {
        if !key.is_correction() {
            return false;
        }
        let original = key.original();
        let first = self
            .corrections
            .get(&original)
            .and_then(|r| r.first())
            .map(|&rev| {
                DeliveryKey::new(
                    original.trigger(),
                    original.postback(),
                    original.purpose(),
                    rev,
                )
            });
        matches!(self.keys.get(&original), Some(Some(_)))
            || first.is_some_and(|earlier| key.waits_behind(&earlier))
    }

    /// Forget the oldest finished keys past [`EngineConfig::remembered_keys`].
    fn forget_old_keys(&mut self) {
        while self.done_keys.len() > self.config.remembered_keys {
            if let Some(old) = self.done_keys.pop_front() {
                self.keys.remove(&old);
                self.forget_key(&old);
            }
        }
    }

    /// The next request due at `now`, if any. Call until `None`. A request whose lease ran out
    /// is taken as lost here and made due again (an [`FailureClass::Interrupted`] attempt).
    pub fn poll_transmit(&mut self, now: DateTime<Utc>) -> Option<Transmit> {
        loop {
            if let Some(&(at, id)) = self.leases.first().filter(|(at, _)| *at <= now) {
                self.leases.remove(&(at, id));
                self.release_slot(id);
                if let Some(progress) = self
                    .deliveries
                    .get_mut(&id)
                    .and_then(|d| d.interrupted(now, &self.config.retry))
                {
                    self.progress(now, id, progress);
                }
                continue;
            }
            let &(at, id) = self.timers.first()?;
            if at > now {
                return None;
            }
            self.timers.pop_first();
            let Some(d) = self.deliveries.get_mut(&id) else {
                continue;
            };
            let (pid, test, key) = (d.postback(), d.is_test(), *d.key());
            // Never send for a postback that is gone or off (the registry may have changed
            // behind the engine's back through `registry_mut`); test fires go out regardless.
            if self.park_if_off(now, id, pid, test) {
                continue;
            }
            if !test && self.waits(&key) {
                // Its earlier revision is still pending or held: it goes when that one finishes.
                let original = key.original();
                self.behind.entry(original).or_default().push(id);
                self.waiting_behind.insert(id, original);
                continue;
            }
            let Some(pb) = self.registry.get(pid) else {
                continue;
            };
            let origin = pb.template().origin();
            if !self.hosts.contains_key(origin) {
                // The network policy on every path: also for postbacks that never went through
                // `create` or `edit` (a registry built by hand), and for the ports it allows.
                let name: Arc<str> = origin.into();
                let refused = self.config.net.check_url(origin).err();
                self.hosts.insert(
                    name.clone(),
                    HostSlots {
                        name,
                        in_flight: 0,
                        waiting: VecDeque::new(),
                        refused,
                    },
                );
            }
            let Some(slots) = self.hosts.get_mut(origin) else {
                continue;
            };
            if slots.in_flight >= self.config.max_in_flight_per_host.max(1) {
                // This host has its share out: wait for one of them, not for the clock.
                slots.waiting.push_back(id);
                self.parked.insert(id, slots.name.clone());
                continue;
            }
            let (host, refused) = (slots.name.clone(), slots.refused.clone());
            let Some(d) = self.deliveries.get_mut(&id) else {
                continue;
            };
            let rendered = self.rendered.remove(&id);
            let ctx = Self::send_context(&self.config, pb);
            let action = match refused {
                Some(e) => match d.poll_rendered(now, &ctx, rendered) {
                    Action::Send(_) | Action::Unsendable(_) => {
                        Action::Unsendable(Failure::Forbidden(e.to_string()))
                    }
                    other => other,
                },
                None => d.poll_rendered(now, &ctx, rendered),
            };
            let key = *d.key();
            match action {
                Action::Send(out) => {
                    self.note_key(&key);
                    self.schedule(id);
                    if let Some(slots) = self.hosts.get_mut(&host) {
                        slots.in_flight += 1;
                    }
                    self.sending.insert(id, host);
                    let (request, shown) = out.into_parts();
                    return Some(Transmit {
                        delivery: id,
                        shown,
                        key,
                        postback: pid,
                        request,
                    });
                }
                Action::Unsendable(failure) => {
                    // Our side cannot make the request: recorded, never counted.
                    if let Ok(progress) = d.handle_response(now, Err(failure), &self.config.retry) {
                        self.progress(now, id, progress);
                    }
                }
                // Not sendable after all (held or rescheduled meanwhile): keep its timer right.
                _ => self.schedule(id),
            }
        }
    }

    /// The result of a [`Transmit`]: the response, or the transport's failure.
    pub fn handle_response(
        &mut self,
        now: DateTime<Utc>,
        id: DeliveryId,
        result: Result<http::Response<Vec<u8>>, Failure>,
    ) -> Result<(), EngineError> {
        let lease = self.config.lease.max(MIN_LEASE);
        let d = self
            .deliveries
            .get_mut(&id)
            .ok_or(EngineError::UnknownDelivery(id))?;
        let since = match d.state() {
            State::InFlight { since, .. } => Some(*since),
            _ => None,
        };
        let progress = d.handle_response(now, result, &self.config.retry)?;
        if let Some(since) = since {
            self.leases.remove(&(add(since, lease), id));
        }
        self.release_slot(id);
        self.progress(now, id, progress);
        Ok(())
    }

    /// Apply what an attempt did ([`settle`] decides: health, the disable policy, holds), then
    /// timers and events.
    fn progress(&mut self, now: DateTime<Utc>, id: DeliveryId, progress: Progress) {
        let Some(d) = self.deliveries.get_mut(&id) else {
            return;
        };
        let pid = d.postback();
        let test = d.is_test();
        let pb = self.registry.get(pid);
        let mut health = self.health.remove(&pid).unwrap_or_default();
        let outcome = settle(now, d, progress, pb, &mut health, &self.config.disable);
        // A postback that never had a result kept has no health entry (nor a deleted one).
        if pb.is_some() && health != Health::default() {
            self.health.insert(pid, health);
        }
        if let Some(reason) = outcome.disable {
            self.disable_automatically(now, pid, id, reason);
        }
        match outcome.next {
            Next::Finished => {
                if let Some(record) = self.finish(id) {
                    self.events.push_back(match (test, record.state()) {
                        (true, _) => Event::TestFired { record },
                        (false, State::Delivered { .. }) => Event::Delivered { record },
                        (false, _) => Event::GaveUp { record },
                    });
                }
            }
            Next::Held => self.events.push_back(Event::Held {
                delivery: id,
                postback: pid,
            }),
            Next::Scheduled => {
                self.schedule(id);
                if let Progress::Retry {
                    at,
                    failure,
                    counted,
                    ..
                } = progress
                {
                    self.events.push_back(Event::RetryScheduled {
                        delivery: id,
                        postback: pid,
                        failure,
                        counted,
                        at,
                    });
                }
            }
        }
    }

    /// A delivery whose postback is gone ends (reported); one whose postback is off is held.
    /// Returns whether either happened. Test fires go out whatever the postback's status.
    fn park_if_off(
        &mut self,
        now: DateTime<Utc>,
        id: DeliveryId,
        pid: PostbackId,
        test: bool,
    ) -> bool {
        match self.registry.get(pid) {
            None => self.abandon(now, id),
            Some(p) if !test && !p.status().is_active() => self.hold(id),
            Some(_) => return false,
        }
        true
    }

    /// End a delivery whose postback was deleted, and report it.
    fn abandon(&mut self, now: DateTime<Utc>, id: DeliveryId) {
        // While the state still says where its timer is: `finish` no longer can.
        self.unschedule(id);
        if let Some(d) = self.deliveries.get_mut(&id) {
            d.abandon(now);
        }
        if let Some(d) = self.finish(id) {
            self.events.push_back(Event::GaveUp { record: d });
        }
    }

    fn hold(&mut self, id: DeliveryId) {
        let Some(d) = self.deliveries.get(&id) else {
            return;
        };
        if d.is_test() || matches!(d.state(), State::Held) {
            return;
        }
        self.unschedule(id);
        let Some(d) = self.deliveries.get_mut(&id) else {
            return;
        };
        if d.hold() {
            self.events.push_back(Event::Held {
                delivery: id,
                postback: d.postback(),
            });
        } else {
            self.schedule(id);
        }
    }

    fn disable_automatically(
        &mut self,
        now: DateTime<Utc>,
        pid: PostbackId,
        cause: DeliveryId,
        reason: String,
    ) {
        let Some(partner) = self.registry.get(pid).map(|pb| pb.partner()) else {
            return;
        };
        // A postback already off is not disabled (or announced) twice.
        if !matches!(
            self.registry
                .disable_automatically(pid, reason.clone(), now),
            Ok(true)
        ) {
            return;
        }
        let attempts = self
            .deliveries
            .get(&cause)
            .map(|d| d.attempts().to_vec())
            .unwrap_or_default();
        self.events.push_back(Event::PostbackDisabled {
            postback: pid,
            reason: reason.clone(),
            at: now,
        });
        self.events.push_back(Event::NotifyNetworkManager {
            postback: pid,
            partner,
            reason,
            at: now,
            attempts,
        });
        self.hold_all(now, pid);
    }

    /// Hold every scheduled delivery of a postback (in-flight ones are held when their result
    /// comes back as a failure).
    fn hold_all(&mut self, now: DateTime<Utc>, pid: PostbackId) {
        for id in self.delivery_ids_of(pid) {
            if self.would(Operation::Pause, now, id) {
                self.hold(id);
            }
        }
    }

    /// Whether `op` changes delivery `id` ([`on_operation`] decides, as for every store); the
    /// engine then applies it with its timers and events.
    fn would(&self, op: Operation, now: DateTime<Utc>, id: DeliveryId) -> bool {
        self.deliveries.get(&id).is_some_and(|d| {
            let mut probe = Delivery::clone(d);
            on_operation(op, now, &mut probe)
        })
    }

    /// Take every request in flight as lost now, without waiting for its lease: for when you
    /// know their answers will never come (a driver dropped mid-run). Each is recorded as an
    /// interrupted attempt and due again at once; receivers drop the duplicates by key. After a
    /// restart you need not call it: leases run out by themselves. Returns how many.
    pub fn requeue_in_flight(&mut self, now: DateTime<Utc>) -> usize {
        let ids: Vec<DeliveryId> = self
            .deliveries
            .values()
            .filter(|d| matches!(d.state(), State::InFlight { .. }))
            .map(|d| d.id())
            .collect();
        for &id in &ids {
            self.unschedule(id);
            self.release_slot(id);
            let Some(d) = self.deliveries.get_mut(&id) else {
                continue;
            };
            if let Some(progress) = d.interrupted(now, &self.config.retry) {
                self.progress(now, id, progress);
            }
        }
        ids.len()
    }

    /// The next event, if any. Call until `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the engine needs to be polled next: the next attempt due, or the end of the lease
    /// of a request in flight. Sleep until then unless a trigger or a response comes first.
    pub fn poll_timeout(&self) -> Option<DateTime<Utc>> {
        let due = self.timers.first().map(|(at, _)| *at);
        let lease = self.leases.first().map(|(at, _)| *at);
        due.into_iter().chain(lease).min()
    }

    /// Whether nothing is scheduled or in flight (held deliveries wait for an enable or resume).
    pub fn is_idle(&self) -> bool {
        self.timers.is_empty() && self.leases.is_empty()
    }

    /// Check a server-to-server postback's URL (its preview) against the network policy.
    /// Pixels are fetched by browsers, not by the network's servers, so they pass.
    pub fn check_net(&self, postback: &Postback) -> Result<(), EngineError> {
        if !postback.method().is_server_to_server() {
            return Ok(());
        }
        let url = postback
            .preview()
            .unwrap_or_else(|_| postback.template().as_str().to_owned());
        Ok(self.config.net.check_url(&url)?)
    }

    fn gatekeeper(&self) -> Gatekeeper {
        Gatekeeper::new(self.config.access.clone())
    }

    /// Add a postback on behalf of `actor`.
    pub fn create(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        postback: Postback,
    ) -> Result<AuditEntry, EngineError> {
        self.check_net(&postback)?;
        self.registry_changed();
        Ok(self
            .gatekeeper()
            .create(&mut self.registry, actor, now, postback)?)
    }

    /// Change a postback's configuration on behalf of `actor`; its status stays as it is (use
    /// [`Engine::pause`], [`Engine::resume`] and [`Engine::enable`]). Pending and held
    /// deliveries are sent with the new configuration: each send expands the current template.
    pub fn edit(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        postback: Postback,
    ) -> Result<AuditEntry, EngineError> {
        self.check_net(&postback)?;
        self.registry_changed();
        Ok(self
            .gatekeeper()
            .edit(&mut self.registry, actor, now, postback)?)
    }

    /// After a postback became active again: a fresh failure count, held deliveries due now.
    fn reactivate(&mut self, now: DateTime<Utc>, id: PostbackId, op: Operation) {
        self.health.entry(id).or_default().reset();
        let mut replayed = 0;
        for did in self.delivery_ids_of(id) {
            if let Some(d) = self.deliveries.get_mut(&did) {
                if on_operation(op, now, d) {
                    self.schedule(did);
                    replayed += 1;
                }
            }
        }
        self.events.push_back(Event::Reenabled {
            postback: id,
            replayed,
            at: now,
        });
    }

    /// Enable a postback again after the automatic disable, on behalf of `actor` (once the
    /// partner's server answers again), and replay its held deliveries, due at `now`. A paused
    /// postback is refused: [`Engine::resume`] it.
    pub fn enable(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        id: PostbackId,
    ) -> Result<AuditEntry, EngineError> {
        self.registry_changed();
        let entry = self
            .gatekeeper()
            .enable(&mut self.registry, actor, now, id)?;
        self.reactivate(now, id, Operation::Enable);
        Ok(entry)
    }

    /// Pause a postback on behalf of `actor`: it takes no new triggers (the next level serves
    /// them), and its scheduled deliveries are held until it is resumed.
    pub fn pause(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        id: PostbackId,
    ) -> Result<AuditEntry, EngineError> {
        self.registry_changed();
        let entry = self
            .gatekeeper()
            .pause(&mut self.registry, actor, now, id)?;
        self.hold_all(now, id);
        Ok(entry)
    }

    /// Resume a paused postback on behalf of `actor`, and replay its held deliveries, due at
    /// `now`. An automatically disabled postback is refused: [`Engine::enable`] it.
    pub fn resume(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        id: PostbackId,
    ) -> Result<AuditEntry, EngineError> {
        self.registry_changed();
        let entry = self
            .gatekeeper()
            .resume(&mut self.registry, actor, now, id)?;
        self.reactivate(now, id, Operation::Resume);
        Ok(entry)
    }

    /// Delete a postback on behalf of `actor`; its unfinished deliveries end with
    /// [`GiveUpReason::PostbackDeleted`](crate::delivery::GiveUpReason::PostbackDeleted) (reported, not silently dropped).
    pub fn delete(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        id: PostbackId,
    ) -> Result<AuditEntry, EngineError> {
        self.registry_changed();
        let entry = self
            .gatekeeper()
            .delete(&mut self.registry, actor, now, id)?;
        for did in self.delivery_ids_of(id) {
            // A request already out ends when its result comes back: it may yet be delivered.
            if self.would(Operation::Delete, now, did) {
                self.abandon(now, did);
            }
        }
        self.health.remove(&id);
        self.finished.remove(&id);
        Ok(entry)
    }

    /// Bytes held by unfinished deliveries, including their index entries (capacity planning).
    pub fn delivery_bytes(&self) -> usize {
        let per_entry = std::mem::size_of::<Delivery>()
            + std::mem::size_of::<DeliveryId>()
            + 16
            + std::mem::size_of::<(DeliveryKey, DeliveryId)>()
            + 8
            + std::mem::size_of::<DeliveryId>()
            + 8;
        self.deliveries
            .values()
            .map(|d| per_entry + d.heap_bytes())
            .sum::<usize>()
            + (self.timers.len() + self.leases.len())
                * (std::mem::size_of::<(DateTime<Utc>, DeliveryId)>() + 8)
    }

    /// Read back a snapshot (what [`Engine`] serializes) under `config`, checked: nothing in it
    /// collides, nothing is dropped. Requests that were in flight when it was taken are due again
    /// when their lease runs out, with no call needed.
    pub fn restore(config: EngineConfig, snapshot: Snapshot) -> Result<Engine, RestoreError> {
        let Snapshot {
            registry,
            deliveries,
            finished,
            remembered_keys,
            health,
            events,
            next_id,
        } = snapshot;
        let mut e = Engine::new(config, registry);
        if next_id == u64::MAX {
            return Err(RestoreError::IdsExhausted(next_id));
        }
        if let Some(highest) = deliveries.iter().map(|d| d.id().get()).max() {
            if next_id <= highest {
                return Err(RestoreError::IdBehind {
                    next: next_id,
                    highest,
                });
            }
        }
        for d in deliveries {
            if d.is_finished() {
                return Err(RestoreError::NotPending(d.id()));
            }
            if e.deliveries.contains_key(&d.id()) {
                return Err(RestoreError::DuplicateDelivery(d.id()));
            }
            if e.keys.contains_key(d.key()) {
                return Err(RestoreError::DuplicateKey(*d.key()));
            }
            e.insert(Box::new(d));
        }
        // Requests that were out hold their host's slots until their leases run out.
        let out: Vec<(DeliveryId, Arc<str>)> = e
            .deliveries
            .values()
            .filter(|d| matches!(d.state(), State::InFlight { .. }))
            .filter_map(|d| {
                let pb = e.registry.get(d.postback())?;
                Some((d.id(), pb.template().origin().into()))
            })
            .collect();
        for (id, host) in out {
            let refused = e.config.net.check_url(&host).err();
            let slots = e.hosts.entry(host.clone()).or_insert_with(|| HostSlots {
                name: host.clone(),
                in_flight: 0,
                waiting: VecDeque::new(),
                refused,
            });
            slots.in_flight += 1;
            e.sending.insert(id, host);
        }
        for key in remembered_keys {
            // A finished key that is also pending would let one conversion be sent twice.
            if e.keys.insert(key, None).is_some() {
                return Err(RestoreError::DuplicateKey(key));
            }
            e.note_key(&key);
            e.done_keys.push_back(key);
        }
        for d in finished {
            let kept = e.finished.entry(d.postback()).or_default();
            kept.push_back(d);
        }
        e.health = health.into_iter().collect();
        e.events = events;
        e.next_id = next_id;
        // A smaller configuration than the snapshot's: keep the newest.
        e.forget_old_keys();
        let cap = e.config.finished_per_postback;
        for kept in e.finished.values_mut() {
            trim_front(kept, cap);
        }
        Ok(e)
    }
}

/// Drop the oldest entries past `cap`.
fn trim_front<T>(list: &mut VecDeque<T>, cap: usize) {
    while list.len() > cap {
        list.pop_front();
    }
}

/// The state of an [`Engine`] as it serializes (postbacks, deliveries, remembered keys, health,
/// pending events, the id counter), without its configuration. Restore it with
/// [`Engine::restore`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The postbacks.
    pub registry: Registry,
    /// Unfinished deliveries.
    pub deliveries: Vec<Delivery>,
    /// Finished deliveries kept for their debug info.
    #[serde(default)]
    pub finished: Vec<Delivery>,
    /// Keys of finished deliveries, oldest first.
    #[serde(default)]
    pub remembered_keys: Vec<DeliveryKey>,
    /// Health per postback.
    #[serde(default)]
    pub health: BTreeMap<PostbackId, Health>,
    /// Events not yet polled.
    #[serde(default)]
    pub events: VecDeque<Event>,
    /// The next delivery id.
    pub next_id: u64,
}

impl Serialize for Engine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The same fields as `Snapshot`, borrowed.
        #[derive(Serialize)]
        struct Ref<'a> {
            registry: &'a Registry,
            deliveries: Vec<&'a Delivery>,
            finished: Vec<&'a Delivery>,
            remembered_keys: &'a VecDeque<DeliveryKey>,
            health: BTreeMap<&'a PostbackId, &'a Health>,
            events: &'a VecDeque<Event>,
            next_id: u64,
        }
        // Sorted, so the same state always writes the same bytes.
        let mut finished: Vec<&Delivery> = self.finished.values().flatten().collect();
        finished.sort_by_key(|d| d.id());
        let deliveries: Vec<&Delivery> = self.deliveries().collect();
        Ref {
            registry: &self.registry,
            deliveries,
            finished,
            remembered_keys: &self.done_keys,
            health: self.health.iter().collect(),
            events: &self.events,
            next_id: self.next_id,
        }
        .serialize(s)
    }
}
