//! The steps every store takes inside its transactions, written once over the core's decisions:
//! a store loads what a step needs, calls it, and writes what it returns.

use std::time::Duration;

use chrono::{DateTime, Utc};

use postback::access::{Actor, AuditEntry, Gatekeeper, Operation, Settings};
use postback::delivery::{
    Attempt, Delivery, DeliveryId, DisablePolicy, Health, Outcome, Progress, SendContext, State,
    check, settle,
};
use postback::model::{DeliveryKey, Postback, PostbackId, Purpose, TriggerId};
use postback::plan::{History, correction_keys, plan_correction};
use postback::registry::{Registry, RegistryError, Trigger};
use postback::template::MacroValues;

use crate::store::{Enqueued, Filter, Manage, Rules, StoreError};

/// Where a delivery stands, as the `status` column projects it.
pub(crate) fn status_of(d: &Delivery) -> &'static str {
    match d.state() {
        State::Held => "held",
        State::Delivered { .. } => "delivered",
        State::GaveUp { .. } => "gave_up",
        // In flight is never stored: a claimed delivery stays scheduled, its due time the lease's
        // end.
        _ => "scheduled",
    }
}

/// Whether a delivery matches a query filter.
pub(crate) fn matches(d: &Delivery, filter: Filter) -> bool {
    match filter {
        Filter::All => true,
        // Whether a pending one is under a lease is the store's to say (claims against settled).
        Filter::Pending | Filter::Leased => {
            matches!(d.state(), State::Scheduled { .. } | State::InFlight { .. })
        }
        Filter::Held => matches!(d.state(), State::Held),
        Filter::Exhausted => is_replayable(d),
        Filter::Delivered => matches!(d.state(), State::Delivered { .. }),
    }
}

/// Whether [`Delivery::replay`] accepts it (without trying on the real one).
pub(crate) fn is_replayable(d: &Delivery) -> bool {
    let mut probe = d.clone();
    matches!(d.state(), State::GaveUp { .. }) && probe.replay(d.created()).is_ok()
}

/// When it finished, for retention.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // used by the SQLite store
pub(crate) fn finished_at(d: &Delivery) -> Option<DateTime<Utc>> {
    match d.state() {
        State::Delivered { at } | State::GaveUp { at, .. } => Some(*at),
        _ => None,
    }
}

/// What [`enqueue`] asks the store about its rows.
pub(crate) enum Ask<'a> {
    /// Whether a delivery with this key exists (in any state).
    Exists(&'a DeliveryKey),
    /// Whether a delivery of this key's trigger to its postback with a higher revision went out
    /// (claimed at least once, or finished).
    Later(&'a DeliveryKey),
}

/// A trigger's plan, against the stored registry; `ask` answers what the plan needs of the
/// rows. `next_id` hands out delivery ids. Returns what to report and the deliveries to insert.
pub(crate) fn enqueue(
    registry: &Registry,
    now: DateTime<Utc>,
    trigger: &Trigger,
    values: &dyn MacroValues,
    rules: &Rules,
    mut ask: impl FnMut(Ask<'_>) -> Result<bool, StoreError>,
    mut next_id: impl FnMut() -> Result<DeliveryId, StoreError>,
) -> Result<(Enqueued, Vec<Delivery>), StoreError> {
    // A correction follows the conversion to the postbacks that had it, unless a later one got
    // there first.
    let mut history = History::default();
    for key in correction_keys(registry, trigger) {
        if ask(Ask::Exists(&key.original()))? {
            history.had_original.push(key.postback());
        }
        if ask(Ask::Later(&key))? {
            history.superseded.push(key.postback());
        }
    }
    let plan = plan_correction(registry, trigger, values, &rules.plan(), &history);
    let mut out = Enqueued {
        resolution: plan.resolution,
        created: Vec::new(),
        held: Vec::new(),
        duplicates: Vec::new(),
        pixels: plan.pixels,
        errors: plan.errors,
    };
    let mut rows = Vec::new();
    for p in plan.deliveries {
        if ask(Ask::Exists(&p.key))? {
            out.duplicates.push(p.key);
            continue;
        }
        let mut d = Delivery::new(next_id()?, p.key, p.values, now, p.delay);
        if p.held {
            d.hold();
            out.held.push(p.key);
        } else {
            out.created.push(p.key);
        }
        rows.push(d);
    }
    Ok((out, rows))
}

/// A test fire's delivery, checked sendable, and its audit entry. `tag` makes its trigger id
/// unique among test fires (the store's next delivery id).
#[allow(
    clippy::too_many_arguments,
    reason = "the arguments of Store::test_fire_enqueue, the registry and the id"
)]
pub(crate) fn test_fire(
    registry: &Registry,
    now: DateTime<Utc>,
    actor: Actor,
    postback: PostbackId,
    values: &dyn MacroValues,
    rules: &Rules,
    access: &Settings,
    id: DeliveryId,
) -> Result<(Delivery, AuditEntry), StoreError> {
    let audit = Gatekeeper::new(access.clone()).test_fire(registry, actor, now, postback)?;
    let pb = registry
        .get(postback)
        .ok_or(RegistryError::NotFound(postback))
        .map_err(postback::access::AccessError::from)?;
    if !pb.method().is_server_to_server() {
        return Err(StoreError::NotServerToServer(postback));
    }
    let tag = format!(
        "test-{}-{}",
        now.timestamp_millis().unsigned_abs(),
        id.get()
    );
    let trigger = TriggerId::new(&tag).unwrap_or(TriggerId::from(id.get()));
    let key = DeliveryKey::new(trigger, postback, Purpose::Test, 0);
    let custom: Vec<_> = pb.template().custom_macros().collect();
    let stored = values.to_stored(&custom);
    check(&key, &stored, &send_context(pb, rules)).map_err(postback::plan::FireError::from)?;
    Ok((Delivery::new(id, key, stored, now, Duration::ZERO), audit))
}

/// The context a delivery of `pb` is sent with under `rules`.
pub fn send_context<'a>(pb: &'a Postback, rules: &'a Rules) -> SendContext<'a> {
    SendContext::new(pb)
        .idempotency_header(rules.idempotency_header.as_deref())
        .max_value_len(Some(rules.max_value_len))
}

/// A management operation on the registry through the gatekeeper. Returns its audit entry, the
/// postback it concerns, and the access operation (what it does to deliveries:
/// [`on_operation`](postback::delivery::on_operation)).
pub(crate) fn manage(
    registry: &mut Registry,
    now: DateTime<Utc>,
    actor: Actor,
    op: Manage,
    access: &Settings,
) -> Result<(AuditEntry, Operation), StoreError> {
    let g = Gatekeeper::new(access.clone());
    let operation = op.operation();
    let audit = match op {
        Manage::Create(p) => g.create(registry, actor, now, p)?,
        Manage::Edit(p) => g.edit(registry, actor, now, p)?,
        Manage::Pause(id) => g.pause(registry, actor, now, id)?,
        Manage::Resume(id) => g.resume(registry, actor, now, id)?,
        Manage::Enable(id) => g.enable(registry, actor, now, id)?,
        Manage::Delete(id) => g.delete(registry, actor, now, id)?,
    };
    Ok((audit, operation))
}

/// What an operation does to the postback's health: `Some(None)` drops it, `Some(Some(h))`
/// writes `h`, `None` leaves it.
pub(crate) fn health_after(op: Operation, health: Option<Health>) -> Option<Option<Health>> {
    match op {
        Operation::Resume | Operation::Enable => {
            let mut h = health.unwrap_or_default();
            h.reset();
            Some(Some(h))
        }
        Operation::Delete => Some(None),
        _ => None,
    }
}

/// A completion's decision, with the postback and health as stored in the same transaction.
pub(crate) fn complete(
    now: DateTime<Utc>,
    delivery: &mut Delivery,
    progress: Progress,
    postback: Option<&Postback>,
    health: &mut Health,
    disable: &DisablePolicy,
) -> Outcome {
    let outcome = settle(now, delivery, progress, postback, health, disable);
    // A delivered record is never sent again: its values (which may hold secrets) go. A
    // delivery that gave up keeps them for a replay.
    if matches!(delivery.state(), State::Delivered { .. }) {
        delivery.forget_values();
    }
    outcome
}

/// The attempts of `d` after the first `written`: what the append-only table lacks.
pub(crate) fn new_attempts(d: &Delivery, written: usize) -> &[Attempt] {
    d.attempts().get(written..).unwrap_or_default()
}

/// Serialize a delivery's state (the truth of its row).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // used by the SQLite store
pub(crate) fn to_json<T: serde::Serialize>(what: &T) -> Result<String, StoreError> {
    serde_json::to_string(what).map_err(|e| StoreError::Database(format!("encoding a row: {e}")))
}

/// Read a row back.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // used by the SQLite store
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

/// Record the `interrupted` claims of a claimed delivery (each an attempt whose answer never came:
/// [`Delivery::interrupted`], never counted), so a request that crashes its sender ends after
/// `max_local_refusals`. Returns the progress to complete with if that ended it; `None` if it is
/// still due now and should be sent.
pub fn record_interruptions(
    now: DateTime<Utc>,
    delivery: &mut Delivery,
    interrupted: u32,
    ctx: &SendContext<'_>,
    retry: &postback::delivery::RetryPolicy,
) -> Option<Progress> {
    for _ in 0..interrupted.min(retry.max_local_refusals) {
        // Puts it in flight (the request is not sent), so the interruption can be recorded.
        let _ = delivery.poll(now, ctx);
        match delivery.interrupted(now, retry)? {
            Progress::Retry { .. } => continue,
            done => return Some(done),
        }
    }
    None
}
