//! What a trigger creates: the pure decision that the in-memory [`Engine`](crate::engine::Engine)
//! and a durable store both apply, so the rules live once. [`plan_trigger`] resolves the
//! trigger, picks what fires and what is held ([`held_for`]), renders pixels, captures the
//! trigger's values for each server-to-server delivery with its key, and checks that each can be
//! sent; the caller inserts the planned deliveries by key, so the same trigger twice creates
//! nothing new.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::delivery::{RenderError, Rendered, SendContext, check_rendered};
use crate::model::{ConversionStatus, DeliveryKey, Method, PostbackId};
use crate::registry::{FireReason, Outcome, Precedence, Registry, Resolution, SkipReason, Trigger};
use crate::template::{Macro, MacroValues, Pixel, StoredValues, Value};

/// Why one postback could not fire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FireError {
    /// Its request cannot be made from the trigger's values.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The trigger would create more deliveries than [`PlanRules::max_deliveries`] (from `EngineConfig::max_deliveries_per_trigger`).
    #[error(
        "this trigger would create more than {max} deliveries: the rest are not sent; check the partner's postbacks, or raise the limit"
    )]
    TooManyDeliveries {
        /// The limit.
        max: usize,
    },
    /// Every delivery id of this engine is taken.
    #[error(
        "the engine's delivery ids are exhausted: restore into a new engine (ids are local; delivery keys do not change)"
    )]
    IdsExhausted,
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

/// The limits a plan applies (from the engine's or store's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanRules<'a> {
    /// The most deliveries one trigger may create.
    pub max_deliveries: usize,
    /// The longest value a postback may carry, in bytes.
    pub max_value_len: usize,
    /// The idempotency header, for the check that each delivery can be sent.
    pub idempotency_header: Option<&'a str>,
}

impl PlanRules<'_> {
    /// 20 deliveries, 1,024-byte values, no header (the engine's defaults).
    pub fn new() -> Self {
        PlanRules {
            max_deliveries: 20,
            max_value_len: 1024,
            idempotency_header: None,
        }
    }
}

impl Default for PlanRules<'_> {
    fn default() -> Self {
        PlanRules::new()
    }
}

/// One delivery a trigger creates: insert it by key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Planned {
    /// Its key (insert only if no delivery has it).
    pub key: DeliveryKey,
    /// The trigger's values it keeps.
    pub values: StoredValues,
    /// The postback's firing delay.
    pub delay: Duration,
    /// Created held: its postback was disabled automatically (see [`held_for`]), or, for a
    /// correction, is off ([`plan_correction`]).
    pub held: bool,
    /// The request the check made, for the first send (see [`Rendered`]).
    pub(crate) rendered: Option<Rendered>,
}

/// What a trigger creates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct Plan {
    /// What fired, what did not, and why.
    pub resolution: Resolution,
    /// Server-to-server deliveries to create, most specific first; held ones last.
    pub deliveries: Vec<Planned>,
    /// Pixels and HTML code to render.
    pub pixels: Vec<RenderedPixel>,
    /// Postbacks that fired but cannot be delivered, and why.
    pub errors: Vec<(PostbackId, FireError)>,
}

/// Plan what `trigger` with `values` creates among `registry`'s postbacks. Pure: reads no state
/// but its arguments, so any store applies exactly the engine's rules.
///
/// A correction ([`Trigger::correction`]) is planned as if no postback had the conversion
/// before; a caller that keeps deliveries plans it with [`plan_correction`] instead.
pub fn plan_trigger<V: MacroValues + ?Sized>(
    registry: &Registry,
    trigger: &Trigger,
    values: &V,
    rules: &PlanRules<'_>,
) -> Plan {
    plan_correction(registry, trigger, values, rules, &History::default())
}

/// What the caller's records say of a correction's conversion, per postback, for
/// [`plan_correction`]: fill it from the [`correction_keys`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct History {
    /// Postbacks that had the original ([`DeliveryKey::original`] exists, in any state).
    pub had_original: Vec<PostbackId>,
    /// Postbacks to which a later revision of the conversion went out already (sent at least
    /// once, or finished): this correction is stale there and is skipped, so a late "approved"
    /// never follows "reversed". A later revision not yet sent waits behind this one instead.
    pub superseded: Vec<PostbackId>,
}

/// The keys a correction would have at each postback that matches its trigger (empty for a
/// trigger that is not a correction). For each, look up whether its
/// [`original`](DeliveryKey::original) exists and whether a later revision of it exists, and
/// pass what you find to [`plan_correction`] as a [`History`].
pub fn correction_keys(registry: &Registry, trigger: &Trigger) -> Vec<DeliveryKey> {
    if trigger.correction.is_none() {
        return Vec::new();
    }
    registry
        .resolve(trigger)
        .decisions
        .iter()
        .map(|d| trigger.key(d.postback))
        .collect()
}

/// [`plan_trigger`], with the `history` of the conversion (see [`correction_keys`]). For a
/// trigger that is not a correction, the same as [`plan_trigger`].
///
/// A correction goes to the postbacks that opted in to its status
/// ([`Corrections`](crate::model::Corrections)) and had the original: held while such a postback
/// is off (paused or disabled), so a reversal is never dropped behind a pause, and sent after the
/// original once it is on ([`DeliveryKey::waits_behind`]). When no matching postback had the
/// original (it predates them, or its record was pruned), the correction goes where a trigger
/// would, among those that opted in. A postback that has a later revision already skips it
/// ([`SkipReason::Superseded`]). It renders no pixel: the conversion page is gone.
pub fn plan_correction<V: MacroValues + ?Sized>(
    registry: &Registry,
    trigger: &Trigger,
    values: &V,
    rules: &PlanRules<'_>,
    history: &History,
) -> Plan {
    let mut resolution = registry.resolve(trigger);
    let (targets, status) = match trigger.correction {
        None => {
            let held = held_for(registry, &resolution).map(|p| (p, true));
            let firing = resolution.firing().map(|p| (p, false));
            (firing.chain(held).collect(), None)
        }
        Some(c) => {
            let targets = correction_targets(registry, &mut resolution, c.status, history);
            (targets, Some(c.status))
        }
    };
    let mut plan = Plan {
        resolution,
        deliveries: Vec::with_capacity(targets.len().min(rules.max_deliveries)),
        pixels: Vec::new(),
        errors: Vec::new(),
    };
    for (pid, is_held) in targets {
        let Some(pb) = registry.get(pid) else {
            continue;
        };
        let html = match pb.method() {
            Method::ServerToServer { .. } => None,
            Method::ImagePixel => Some(pb.template().render_pixel(Pixel::Image, values)),
            Method::IframePixel => Some(pb.template().render_pixel(Pixel::Iframe, values)),
            _ => Some(pb.template().expand(values)),
        };
        match html {
            Some(Ok(html)) => plan.pixels.push(RenderedPixel {
                postback: pid,
                html,
            }),
            Some(Err(e)) => plan.errors.push((pid, RenderError::from(e).into())),
            None if plan.deliveries.len() >= rules.max_deliveries => plan.errors.push((
                pid,
                FireError::TooManyDeliveries {
                    max: rules.max_deliveries,
                },
            )),
            None => {
                let key = trigger.key(pid);
                let custom: Vec<_> = pb.template().custom_macros().collect();
                let stored = match status {
                    // The status travels as this postback's tracker spells it.
                    Some(status) => WithStatus {
                        inner: values,
                        word: pb.corrections().word(status),
                    }
                    .to_stored(&custom),
                    None => values.to_stored(&custom),
                };
                let ctx = SendContext::new(pb)
                    .idempotency_header(rules.idempotency_header)
                    .max_value_len(Some(rules.max_value_len));
                // A value that does not fit is reported now, not on every attempt.
                match check_rendered(&key, &stored, &ctx) {
                    Ok(rendered) => plan.deliveries.push(Planned {
                        key,
                        values: stored,
                        delay: pb.delay(),
                        held: is_held,
                        rendered: Some(rendered),
                    }),
                    Err(e) => plan.errors.push((pid, e.into())),
                }
            }
        }
    }
    plan
}

/// Where a correction to `status` goes, firing ones first, and the resolution's verdicts
/// rewritten to say why (see [`plan_correction`]).
fn correction_targets(
    registry: &Registry,
    resolution: &mut Resolution,
    status: ConversionStatus,
    history: &History,
) -> Vec<(PostbackId, bool)> {
    let had_original = &history.had_original;
    let held: Vec<PostbackId> = held_for(registry, resolution).collect();
    let any_had = resolution
        .decisions
        .iter()
        .any(|d| had_original.contains(&d.postback));
    let mut targets = Vec::new();
    for d in &mut resolution.decisions {
        let Some(pb) = registry.get(d.postback) else {
            continue;
        };
        if !pb.corrections().covers(status) {
            if d.fires() {
                d.outcome = Outcome::Skipped {
                    why: SkipReason::CorrectionsOff,
                };
            }
        } else if history.superseded.contains(&d.postback) {
            d.outcome = Outcome::Skipped {
                why: SkipReason::Superseded,
            };
        } else if any_had {
            if had_original.contains(&d.postback) {
                let off = !pb.status().is_active();
                if !off {
                    d.outcome = Outcome::Fires {
                        why: FireReason::HadOriginal,
                    };
                }
                targets.push((d.postback, off));
            } else if d.fires() {
                d.outcome = Outcome::Skipped {
                    why: SkipReason::OriginalElsewhere,
                };
            }
        } else if d.fires() {
            targets.push((d.postback, false));
        } else if held.contains(&d.postback) {
            targets.push((d.postback, true));
        }
    }
    // Firing first, held last, as for a trigger.
    targets.sort_by_key(|(_, held)| *held);
    targets
}

/// A correction's values: the caller's, with `{conversion_status}` in the postback's word.
struct WithStatus<'a, V: ?Sized> {
    inner: &'a V,
    word: &'a str,
}

impl<V: MacroValues + ?Sized> MacroValues for WithStatus<'_, V> {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        if m == Macro::CONVERSION_STATUS {
            Some(Value::Text(self.word))
        } else {
            self.inner.value(m)
        }
    }
}

/// Decisions of the precedence resolution that create a held delivery rather than nothing:
/// automatically disabled server-to-server postbacks that would have fired, so no conversion
/// meant for them is lost while the partner's server is down.
///
/// - With [`Precedence::All`], every disabled match.
/// - With [`Precedence::Override`], the disabled postbacks on the level that serves the trigger
///   (siblings of the postbacks that fire, pixels included). When no level fires at all, those on
///   the most specific level that has a disabled postback. A disabled postback on a more specific
///   level than the one that fires is not held: the fall-through served its conversion, and
///   holding it too would report the conversion twice.
/// - A paused postback takes no new triggers, and holds nothing: a person chose to stop it (the
///   next level serves, as for any postback that is off). Deliveries it already had are held and
///   replay when it is resumed.
pub fn held_for<'r>(
    registry: &'r Registry,
    r: &'r Resolution,
) -> impl Iterator<Item = PostbackId> + 'r {
    let serving = match r.precedence {
        Precedence::All => None,
        _ => r
            .decisions
            .iter()
            .find(|d| d.fires())
            .or_else(|| {
                r.decisions.iter().find(|d| {
                    matches!(
                        d.outcome,
                        Outcome::Skipped {
                            why: SkipReason::Disabled
                        }
                    )
                })
            })
            .map(|d| d.level),
    };
    r.decisions
        .iter()
        .filter(move |d| {
            matches!(
                d.outcome,
                Outcome::Skipped {
                    why: SkipReason::Disabled
                }
            ) && serving.is_none_or(|level| d.level == level)
                && registry
                    .get(d.postback)
                    .is_some_and(|p| p.method().is_server_to_server())
        })
        .map(|d| d.postback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OfferId, PartnerId, Postback};
    use crate::template::{Macro, ValueMap};

    fn postback(id: u64, offer: Option<u64>) -> Postback {
        let b = Postback::builder(PostbackId::new(id)).partner(PartnerId::new(7));
        let b = match offer {
            Some(o) => b.offer(OfferId::new(o)),
            None => b,
        };
        b.url("https://t.example/pb?cid={sub1}").build().unwrap()
    }

    #[test]
    fn a_plan_lists_each_delivery_with_its_key_values_and_whether_it_is_held() {
        let mut reg = Registry::new();
        reg.insert(postback(1, Some(42))).unwrap();
        reg.insert(postback(2, Some(42))).unwrap();
        reg.insert(postback(3, None)).unwrap();
        let at = chrono::DateTime::from_timestamp(0, 0).unwrap();
        reg.disable_automatically(PostbackId::new(2), "failures", at)
            .unwrap();
        let trigger = Trigger::conversion(1001, PartnerId::new(7), OfferId::new(42));
        let values = ValueMap::new().with(Macro::SUB1, "c");
        let plan = plan_trigger(&reg, &trigger, &values, &PlanRules::new());
        let planned: Vec<(String, bool)> = plan
            .deliveries
            .iter()
            .map(|p| (p.key.to_string(), p.held))
            .collect();
        // The specific level serves: its active postback fires, its disabled sibling is held,
        // and the partner-global one is shadowed.
        assert_eq!(
            planned,
            [
                ("1001.1.conversion.0".to_owned(), false),
                ("1001.2.conversion.0".to_owned(), true)
            ]
        );
        assert_eq!(
            plan.deliveries[0].values.value(Macro::SUB1),
            values.value(Macro::SUB1)
        );
        // Pure: the same inputs plan the same.
        assert_eq!(
            plan_trigger(&reg, &trigger, &values, &PlanRules::new()),
            plan
        );
    }
}
