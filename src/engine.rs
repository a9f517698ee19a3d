//! The engine: registry, templates and deliveries composed into one sans-IO object.
//!
//! Call order (str0m / quinn-proto style), all with the caller's `now`:
//!
//! - [`Engine::handle_trigger`] when a conversion, event or CPC click happens: resolves, expands,
//!   creates deliveries, and returns pixels for the page.
//! - [`Engine::poll_transmit`] until `None`: each [`Transmit`] goes to the transport, and its
//!   result comes back through [`Engine::handle_response`].
//! - [`Engine::poll_event`] until `None`: delivered, retried, gave up, disabled, notify manager.
//! - [`Engine::poll_timeout`]: sleep until then (or until the next trigger), and start over.
//!
//! Management goes through [`Engine::create`], [`Engine::edit`], [`Engine::enable`],
//! [`Engine::disable`] and [`Engine::delete`], which check permissions and write audit entries;
//! enabling a postback replays the deliveries held while it was off.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{AccessError, Actor, AuditEntry, Gatekeeper, Settings};
use crate::delivery::{
    Attempt, Delivery, DeliveryError, DeliveryId, DisablePolicy, Failure, FailureClass,
    GiveUpReason, Outbound, Progress, RequestError, RetryPolicy, State,
};
use crate::hash::IdMap;
use crate::model::{Kind, Method, PartnerId, Postback, PostbackId};
use crate::net::{NetError, NetPolicy};
use crate::registry::{
    Outcome, Precedence, Registry, RegistryError, Resolution, SkipReason, Trigger,
};
use crate::template::{ExpandError, Macro, MacroValues, Pixel, Value, redact_url};

/// How the engine delivers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Retries of one delivery.
    pub retry: RetryPolicy,
    /// When a postback is switched off.
    pub disable: DisablePolicy,
    /// The network's settings for partners.
    pub access: Settings,
    /// Send the delivery id as this header on every attempt (e.g. `Idempotency-Key`), so the
    /// receiver can drop duplicates. Off by default: most trackers ignore it.
    pub idempotency_header: Option<String>,
    /// Where server-to-server postbacks may go, checked when one is created or edited through
    /// the engine. Transports check resolved addresses against the same policy.
    pub net: NetPolicy,
    /// The first delivery id a new engine hands out (default 1). Engines that serve the same
    /// partners must not share ids, or receivers that de-duplicate by id drop real conversions:
    /// give each shard its own range (say, shard number << 48).
    pub first_delivery_id: u64,
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
    /// Start delivery ids at `first` (see [`EngineConfig::first_delivery_id`]).
    #[must_use]
    pub fn first_delivery_id(mut self, first: u64) -> Self {
        self.first_delivery_id = first;
        self
    }
    /// Set the network policy.
    #[must_use]
    pub fn net(mut self, n: NetPolicy) -> Self {
        self.net = n;
        self
    }
    /// Send the delivery id in this header.
    #[must_use]
    pub fn idempotency_header(mut self, name: impl Into<String>) -> Self {
        self.idempotency_header = Some(name.into());
        self
    }
}

/// A request to send.
#[must_use]
#[non_exhaustive]
pub struct Transmit {
    /// Pass it back to [`Engine::handle_response`] with the result.
    pub delivery: DeliveryId,
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
            .field("postback", &self.postback)
            .field("method", self.request.method())
            .field("uri", &redact_url(&self.request.uri().to_string()))
            .finish()
    }
}

/// A pixel or HTML postback rendered for the conversion page (the engine does not deliver
/// those; the page does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RenderedPixel {
    /// The postback.
    pub postback: PostbackId,
    /// The HTML to place in the page.
    pub html: String,
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
    /// Deliveries created held, for automatically disabled postbacks that nothing else served:
    /// they are sent when the postback is enabled again, so no conversion is lost meanwhile.
    pub held: Vec<(PostbackId, DeliveryId)>,
    /// Postbacks that fired but could not be expanded with the trigger's values.
    pub errors: Vec<(PostbackId, FireError)>,
}

/// Why one postback could not fire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FireError {
    /// A value did not fit its macro.
    #[error(transparent)]
    Expand(#[from] ExpandError),
    /// The expanded request is not sendable.
    #[error(transparent)]
    Request(#[from] RequestError),
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
    /// A postback was enabled again and its held deliveries replayed.
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

/// A postback's delivery health, for the consecutive-failure rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// Times of the current run of consecutive counted failures (the most recent `n` kept).
    pub recent_failures: VecDeque<DateTime<Utc>>,
    /// Consecutive counted failures.
    pub consecutive_failures: u32,
    /// The last success.
    pub last_success: Option<DateTime<Utc>>,
}

impl Health {
    /// A success or an enable starts the count again.
    fn clear_failures(&mut self) {
        self.consecutive_failures = 0;
        self.recent_failures.clear();
    }
}

/// Values of a trigger plus the delivery id.
struct WithDeliveryId<'a, V: ?Sized> {
    inner: &'a V,
    id: &'a str,
}

impl<V: MacroValues + ?Sized> MacroValues for WithDeliveryId<'_, V> {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        if m == Macro::DELIVERY_ID {
            Some(Value::Text(self.id))
        } else {
            self.inner.value(m)
        }
    }
}

/// Registry, deliveries and health in one sans-IO object. See the [module docs](self).
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "EngineData", into = "EngineData")]
pub struct Engine {
    config: EngineConfig,
    registry: Registry,
    deliveries: BTreeMap<DeliveryId, Delivery>,
    /// Scheduled deliveries by due time (derived from `deliveries`).
    timers: BTreeSet<(DateTime<Utc>, DeliveryId)>,
    /// Unfinished deliveries per postback (derived from `deliveries`).
    by_postback: IdMap<PostbackId, BTreeSet<DeliveryId>>,
    health: IdMap<PostbackId, Health>,
    events: VecDeque<Event>,
    next_id: u64,
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
            next_id: config.first_delivery_id.max(1),
            config,
            registry,
            deliveries: BTreeMap::new(),
            timers: BTreeSet::new(),
            by_postback: IdMap::default(),
            health: IdMap::default(),
            events: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The postbacks.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Direct access for trusted setup. Changes made here skip permission checks and audit, and
    /// enabling here does not replay held deliveries: use [`Engine::enable`] for that.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Set the precedence rule.
    pub fn set_precedence(&mut self, p: Precedence) {
        self.registry.set_precedence(p);
    }

    /// A delivery that has not finished.
    pub fn delivery(&self, id: DeliveryId) -> Option<&Delivery> {
        self.deliveries.get(&id)
    }

    /// Unfinished deliveries (scheduled, in flight, held).
    pub fn deliveries(&self) -> impl Iterator<Item = &Delivery> {
        self.deliveries.values()
    }

    /// Unfinished deliveries of one postback.
    pub fn deliveries_of(&self, postback: PostbackId) -> impl Iterator<Item = &Delivery> {
        self.by_postback
            .get(&postback)
            .into_iter()
            .flatten()
            .filter_map(|id| self.deliveries.get(id))
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

    /// A conversion, event or CPC click happened: create deliveries for the server-to-server
    /// postbacks that fire, and render the pixels. One postback's bad value does not stop the
    /// others; it is reported in [`Fired::errors`].
    pub fn handle_trigger<V: MacroValues + ?Sized>(
        &mut self,
        now: DateTime<Utc>,
        trigger: &Trigger,
        values: &V,
    ) -> Fired {
        let resolution = self.registry.resolve(trigger);
        let mut fired = Fired {
            resolution,
            deliveries: Vec::new(),
            pixels: Vec::new(),
            held: Vec::new(),
            errors: Vec::new(),
        };
        let firing: Vec<PostbackId> = fired.resolution.firing().collect();
        for pid in firing {
            let Some(pb) = self.registry.get(pid) else {
                continue;
            };
            let result = match pb.method() {
                Method::ServerToServer { .. } => {
                    self.create_delivery(now, pid, values, false).map(|d| {
                        fired.deliveries.push((pid, d));
                    })
                }
                method => render(pb, method, values).map(|html| {
                    fired.pixels.push(RenderedPixel {
                        postback: pid,
                        html,
                    });
                }),
            };
            if let Err(e) = result {
                fired.errors.push((pid, e));
            }
        }
        for pid in self.held_for(&fired.resolution) {
            match self.create_delivery(now, pid, values, false) {
                Ok(d) => {
                    self.hold(d);
                    fired.held.push((pid, d));
                }
                Err(e) => fired.errors.push((pid, e)),
            }
        }
        fired
    }

    /// Automatically disabled server-to-server postbacks whose trigger nothing else serves: with
    /// `Precedence::All`, every one; with `Override`, those on the most specific level with a
    /// disabled postback, and only when no postback fires at all (when another level fires in
    /// their place, the fall-through has served the trigger and holding too would report the
    /// conversion twice). A paused postback holds nothing: a person chose to stop it.
    fn held_for(&self, r: &Resolution) -> Vec<PostbackId> {
        let disabled = r.decisions.iter().filter(|d| {
            matches!(
                d.outcome,
                Outcome::Skipped {
                    why: SkipReason::Disabled
                }
            ) && self
                .registry
                .get(d.postback)
                .is_some_and(|p| p.method().is_server_to_server())
        });
        match r.precedence {
            Precedence::All => disabled.map(|d| d.postback).collect(),
            _ if r.decisions.iter().any(|d| d.fires()) => Vec::new(),
            _ => {
                let mut disabled = disabled.peekable();
                let Some(level) = disabled.peek().map(|d| d.level) else {
                    return Vec::new();
                };
                disabled
                    .filter(|d| d.level == level)
                    .map(|d| d.postback)
                    .collect()
            }
        }
    }

    /// Fire one server-to-server postback once with `values` (say, [`SampleValues`](crate::template::SampleValues)),
    /// whatever its status. The result comes as [`Event::TestFired`] with the exact request and
    /// response; it is never retried and never counts toward disabling.
    pub fn test_fire<V: MacroValues + ?Sized>(
        &mut self,
        now: DateTime<Utc>,
        postback: PostbackId,
        values: &V,
    ) -> Result<DeliveryId, EngineError> {
        let pb = self
            .registry
            .get(postback)
            .ok_or(AccessError::Registry(RegistryError::NotFound(postback)))?;
        if !pb.method().is_server_to_server() {
            return Err(EngineError::NotServerToServer(postback));
        }
        Ok(self.create_delivery(now, postback, values, true)?)
    }

    fn create_delivery<V: MacroValues + ?Sized>(
        &mut self,
        now: DateTime<Utc>,
        pid: PostbackId,
        values: &V,
        test: bool,
    ) -> Result<DeliveryId, FireError> {
        let pb = self.registry.get(pid).expect("caller checked");
        let id = DeliveryId::new(self.next_id);
        let id_text = id.to_string();
        let url = pb.template().expand(&WithDeliveryId {
            inner: values,
            id: &id_text,
        })?;
        let http = match pb.method() {
            Method::ServerToServer { http } => http,
            _ => Default::default(),
        };
        let mut req = Outbound::new(http, url)?.with_secrets(pb.secrets().to_vec());
        if let Some(h) = &self.config.idempotency_header {
            req = req.header(h, &id_text)?;
        }
        let delay = if test {
            std::time::Duration::ZERO
        } else {
            pb.delay()
        };
        let mut d = Delivery::new(id, pid, req, now, delay)
            .with_response_check(pb.response_check().cloned())
            .hidden_from_reports(pb.kind() == Kind::Cpc);
        if test {
            d = d.as_test();
        }
        self.next_id += 1;
        self.insert(d);
        Ok(id)
    }

    fn insert(&mut self, d: Delivery) {
        if let Some(at) = d.due() {
            self.timers.insert((at, d.id()));
        }
        self.by_postback
            .entry(d.postback())
            .or_default()
            .insert(d.id());
        self.deliveries.insert(d.id(), d);
    }

    fn finish(&mut self, id: DeliveryId) -> Option<Delivery> {
        let d = self.deliveries.remove(&id)?;
        if let Some(at) = d.due() {
            self.timers.remove(&(at, id));
        }
        if let Some(set) = self.by_postback.get_mut(&d.postback()) {
            set.remove(&id);
            if set.is_empty() {
                self.by_postback.remove(&d.postback());
            }
        }
        Some(d)
    }

    /// The next request due at `now`, if any. Call until `None`.
    pub fn poll_transmit(&mut self, now: DateTime<Utc>) -> Option<Transmit> {
        loop {
            let &(at, id) = self.timers.first()?;
            if at > now {
                return None;
            }
            self.timers.pop_first();
            let Some(d) = self.deliveries.get(&id) else {
                continue;
            };
            // The registry may have changed behind the engine's back (`registry_mut`): never send
            // for a postback that is gone or off.
            if !d.is_test() && self.park_if_off(now, id, d.postback()) {
                continue;
            }
            let Some(d) = self.deliveries.get_mut(&id) else {
                continue;
            };
            if let crate::delivery::Action::Send(request) = d.poll(now) {
                return Some(Transmit {
                    delivery: id,
                    postback: d.postback(),
                    request,
                });
            }
            // Not sendable after all (held or rescheduled meanwhile): keep its timer right.
            if let Some(at) = d.due() {
                self.timers.insert((at, id));
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
        let d = self
            .deliveries
            .get_mut(&id)
            .ok_or(EngineError::UnknownDelivery(id))?;
        let progress = d.handle_response(now, result, &self.config.retry)?;
        let pid = d.postback();
        if d.is_test() {
            let record = self.finish(id).expect("present");
            self.events.push_back(Event::TestFired {
                record: Box::new(record),
            });
            return Ok(());
        }
        match progress {
            Progress::Delivered { .. } => {
                let h = self.health.entry(pid).or_default();
                h.clear_failures();
                h.last_success = Some(now);
                let record = self.finish(id).expect("present");
                self.events.push_back(Event::Delivered {
                    record: Box::new(record),
                });
            }
            Progress::Retry {
                at,
                failure,
                counted,
                failures,
            } => {
                if counted {
                    self.count_failure(now, pid, id, failures);
                }
                if !self.park_if_off(now, id, pid) {
                    self.timers.insert((at, id));
                    self.events.push_back(Event::RetryScheduled {
                        delivery: id,
                        postback: pid,
                        failure,
                        counted,
                        at,
                    });
                }
            }
            Progress::GaveUp { reason, failure } => {
                if failure.counts() {
                    let failures = self.deliveries.get(&id).map_or(0, Delivery::failures);
                    self.count_failure(now, pid, id, failures);
                }
                let held = matches!(reason, GiveUpReason::MaxAttempts { .. })
                    && self.registry.get(pid).is_some()
                    && self.postback_is_off(pid);
                if held {
                    self.hold(id);
                } else {
                    let record = self.finish(id).expect("present");
                    self.events.push_back(Event::GaveUp {
                        record: Box::new(record),
                    });
                }
            }
        }
        Ok(())
    }

    /// A delivery whose postback is gone ends (reported); one whose postback is off is held.
    /// Returns whether either happened.
    fn park_if_off(&mut self, now: DateTime<Utc>, id: DeliveryId, pid: PostbackId) -> bool {
        match self.registry.get(pid) {
            None => self.abandon(now, id),
            Some(p) if !p.status().is_active() => self.hold(id),
            Some(_) => return false,
        }
        true
    }

    /// End a delivery whose postback was deleted, and report it.
    fn abandon(&mut self, now: DateTime<Utc>, id: DeliveryId) {
        if let Some(mut d) = self.finish(id) {
            d.abandon(now);
            self.events.push_back(Event::GaveUp {
                record: Box::new(d),
            });
        }
    }

    fn postback_is_off(&self, pid: PostbackId) -> bool {
        self.registry
            .get(pid)
            .is_none_or(|p| !p.status().is_active())
    }

    fn hold(&mut self, id: DeliveryId) {
        let Some(d) = self.deliveries.get_mut(&id) else {
            return;
        };
        // Test fires go out whatever the postback's status.
        if d.is_test() || matches!(d.state(), State::Held) {
            return;
        }
        let due = d.due();
        if d.hold() {
            if let Some(at) = due {
                self.timers.remove(&(at, id));
            }
            self.events.push_back(Event::Held {
                delivery: id,
                postback: d.postback(),
            });
        }
    }

    /// Record a counted failure and apply the disable policy.
    fn count_failure(
        &mut self,
        now: DateTime<Utc>,
        pid: PostbackId,
        id: DeliveryId,
        delivery_failures: u32,
    ) {
        let h = self.health.entry(pid).or_default();
        h.consecutive_failures += 1;
        h.recent_failures.push_back(now);
        // Keep only as many failure times as the policy can look at.
        let keep = match self.config.disable {
            DisablePolicy::PerDelivery { failures }
            | DisablePolicy::ConsecutiveWithin { failures, .. } => failures as usize,
            DisablePolicy::Never => 0,
        };
        while h.recent_failures.len() > keep {
            h.recent_failures.pop_front();
        }
        let reason = match self.config.disable {
            DisablePolicy::PerDelivery { failures } => (delivery_failures >= failures).then(|| {
                format!(
                    "{delivery_failures} failed attempts of delivery {id} from the receiving server"
                )
            }),
            DisablePolicy::ConsecutiveWithin { failures, window } => {
                let first = h.recent_failures.front().copied();
                let within =
                    first.is_some_and(|f| (now - f).to_std().unwrap_or_default() <= window);
                (h.consecutive_failures >= failures
                    && h.recent_failures.len() as u32 >= failures
                    && within)
                    .then(|| {
                        format!(
                            "{failures} consecutive failed deliveries within {} hours",
                            window.as_secs() / 3600
                        )
                    })
            }
            DisablePolicy::Never => None,
        };
        if let Some(reason) = reason {
            self.disable_automatically(now, pid, id, reason);
        }
    }

    fn disable_automatically(
        &mut self,
        now: DateTime<Utc>,
        pid: PostbackId,
        cause: DeliveryId,
        reason: String,
    ) {
        let Some(pb) = self.registry.get(pid) else {
            return;
        };
        // Only server-to-server postbacks are delivered here, and a postback already off is not
        // disabled (or announced) twice.
        if !pb.method().is_server_to_server() || !pb.status().is_active() {
            return;
        }
        let partner = pb.partner();
        let _ = self
            .registry
            .disable_automatically(pid, reason.clone(), now);
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
        self.hold_all(pid);
    }

    /// Hold every scheduled delivery of a postback (in-flight ones are held when their result
    /// comes back as a failure).
    fn hold_all(&mut self, pid: PostbackId) {
        let ids = self.delivery_ids_of(pid);
        for id in ids {
            if matches!(
                self.deliveries.get(&id).map(Delivery::state),
                Some(State::Scheduled { .. })
            ) {
                self.hold(id);
            }
        }
    }

    /// Make every request in flight due again at the time it was sent, for when their answers
    /// will never come: after restoring a snapshot in a new process (a restore in the same
    /// process continues exactly where it was), or after dropping a driver mid-run. Receivers
    /// drop the duplicates by delivery id. A late answer for one of them is refused with
    /// [`DeliveryError::NotInFlight`]. Returns how many were requeued.
    pub fn requeue_in_flight(&mut self) -> usize {
        let mut n = 0;
        for (id, d) in &mut self.deliveries {
            if d.interrupted() {
                if let Some(at) = d.due() {
                    self.timers.insert((at, *id));
                }
                n += 1;
            }
        }
        n
    }

    /// The next event, if any. Call until `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the next attempt is due: sleep until then unless a trigger comes first.
    pub fn poll_timeout(&self) -> Option<DateTime<Utc>> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Whether nothing is scheduled or in flight (held deliveries wait for an enable).
    pub fn is_idle(&self) -> bool {
        self.timers.is_empty()
            && !self
                .deliveries
                .values()
                .any(|d| matches!(d.state(), State::InFlight { .. }))
    }

    /// Check a server-to-server postback's URL (expanded with sample values) against the network
    /// policy. Pixels are fetched by browsers, not by the network's servers, so they pass.
    pub fn check_net(&self, postback: &Postback) -> Result<(), EngineError> {
        if !postback.method().is_server_to_server() {
            return Ok(());
        }
        let url = postback
            .template()
            .preview()
            .unwrap_or_else(|_| postback.template().as_str().to_owned());
        Ok(self.config.net.check_url(&url)?)
    }

    fn gatekeeper(&self) -> Gatekeeper {
        Gatekeeper::new(self.config.access)
    }

    /// Add a postback on behalf of `actor`.
    pub fn create(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        postback: Postback,
    ) -> Result<AuditEntry, EngineError> {
        self.check_net(&postback)?;
        Ok(self
            .gatekeeper()
            .create(&mut self.registry, actor, now, postback)?)
    }

    /// Change a postback's configuration on behalf of `actor`; its status stays as it is (use
    /// [`Engine::enable`] and [`Engine::disable`]). Pending deliveries keep the request they were
    /// created with.
    pub fn edit(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        postback: Postback,
    ) -> Result<AuditEntry, EngineError> {
        self.check_net(&postback)?;
        Ok(self
            .gatekeeper()
            .edit(&mut self.registry, actor, now, postback)?)
    }

    /// After a postback became active again: a fresh failure count, held deliveries due now.
    fn reactivate(&mut self, now: DateTime<Utc>, id: PostbackId) {
        self.health.entry(id).or_default().clear_failures();
        let replayed = self.replay(now, id);
        self.events.push_back(Event::Reenabled {
            postback: id,
            replayed,
            at: now,
        });
    }

    /// Enable a postback on behalf of `actor` (after a pause or an automatic disable) and replay
    /// its held deliveries, due at `now`.
    pub fn enable(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        id: PostbackId,
    ) -> Result<AuditEntry, EngineError> {
        let entry = self
            .gatekeeper()
            .enable(&mut self.registry, actor, now, id)?;
        self.reactivate(now, id);
        Ok(entry)
    }

    fn replay(&mut self, now: DateTime<Utc>, id: PostbackId) -> usize {
        let ids = self.delivery_ids_of(id);
        let mut n = 0;
        for did in ids {
            if let Some(d) = self.deliveries.get_mut(&did) {
                if d.release(now).is_ok() {
                    self.timers.insert((now, did));
                    n += 1;
                }
            }
        }
        n
    }

    /// Pause a postback on behalf of `actor`; its scheduled deliveries are held.
    pub fn disable(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        id: PostbackId,
    ) -> Result<AuditEntry, EngineError> {
        let entry = self
            .gatekeeper()
            .disable(&mut self.registry, actor, now, id)?;
        self.hold_all(id);
        Ok(entry)
    }

    /// Delete a postback on behalf of `actor`; its unfinished deliveries end with
    /// [`GiveUpReason::PostbackDeleted`] (reported, not silently dropped).
    pub fn delete(
        &mut self,
        now: DateTime<Utc>,
        actor: Actor,
        id: PostbackId,
    ) -> Result<AuditEntry, EngineError> {
        let entry = self
            .gatekeeper()
            .delete(&mut self.registry, actor, now, id)?;
        for did in self.delivery_ids_of(id) {
            // A request already out ends when its result comes back: it may yet be delivered.
            let in_flight = self
                .deliveries
                .get(&did)
                .is_some_and(|d| matches!(d.state(), State::InFlight { .. }));
            if !in_flight {
                self.abandon(now, did);
            }
        }
        self.health.remove(&id);
        Ok(entry)
    }

    /// Bytes held by unfinished deliveries, including their index entries (capacity planning).
    pub fn delivery_bytes(&self) -> usize {
        let per_entry = std::mem::size_of::<Delivery>() + std::mem::size_of::<DeliveryId>() + 16;
        self.deliveries
            .values()
            .map(|d| per_entry + d.heap_bytes())
            .sum::<usize>()
            + self.timers.len() * (std::mem::size_of::<(DateTime<Utc>, DeliveryId)>() + 8)
    }
}

fn render<V: MacroValues + ?Sized>(
    pb: &Postback,
    method: Method,
    values: &V,
) -> Result<String, FireError> {
    Ok(match method {
        Method::ImagePixel => pb.template().render_pixel(Pixel::Image, values)?,
        Method::IframePixel => pb.template().render_pixel(Pixel::Iframe, values)?,
        _ => pb.template().expand(values)?,
    })
}

/// The serialized engine: configuration, postbacks, deliveries, health, pending events and the
/// id counter. Indexes are rebuilt on load.
#[derive(Serialize, Deserialize)]
struct EngineData {
    config: EngineConfig,
    precedence: Precedence,
    postbacks: Vec<Postback>,
    deliveries: Vec<Delivery>,
    health: BTreeMap<PostbackId, Health>,
    events: VecDeque<Event>,
    next_id: u64,
}

impl From<Engine> for EngineData {
    fn from(e: Engine) -> Self {
        let mut postbacks: Vec<Postback> = e.registry.iter().cloned().collect();
        postbacks.sort_by_key(Postback::id);
        EngineData {
            config: e.config,
            precedence: e.registry.precedence(),
            postbacks,
            deliveries: e.deliveries.into_values().collect(),
            health: e.health.into_iter().collect(),
            events: e.events,
            next_id: e.next_id,
        }
    }
}

impl From<EngineData> for Engine {
    fn from(d: EngineData) -> Self {
        let mut registry = Registry::with_precedence(d.precedence);
        for p in d.postbacks {
            // Ids were unique when saved.
            let _ = registry.insert(p);
        }
        let mut e = Engine::new(d.config, registry);
        for del in d.deliveries {
            e.insert(del);
        }
        e.health = d.health.into_iter().collect();
        e.events = d.events;
        e.next_id = d.next_id;
        e
    }
}
