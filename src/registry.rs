//! Which postbacks fire for a trigger: postbacks indexed by level, partner, offer and kind, and
//! the precedence rules that pick among them, with the reasons a support engineer reads.
//!
//! ```
//! use postback::model::{OfferId, PartnerId, Postback, PostbackId};
//! use postback::registry::{Registry, Trigger};
//!
//! let (partner, offer) = (PartnerId::new(7), OfferId::new(42));
//! let mut reg = Registry::new();
//! reg.insert(Postback::builder(PostbackId::new(1)).partner(partner)
//!     .url("https://t.example/all?cid={sub1}").build()?)?;
//! reg.insert(Postback::builder(PostbackId::new(2)).partner(partner).offer(offer)
//!     .url("https://t.example/one?cid={sub1}").build()?)?;
//!
//! let r = reg.resolve(&Trigger::conversion(1001, partner, offer));
//! assert_eq!(r.firing().collect::<Vec<_>>(), [PostbackId::new(2)]);
//! println!("{r}"); // what fired, what was shadowed, and why
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::hash::IdMap;
use crate::model::{
    ConversionStatus, Correction, DeliveryKey, EventId, Kind, Level, OfferId, PartnerId, Postback,
    PostbackId, Scope, Status, StatusError, TriggerId,
};

pub use crate::model::TriggerKind;

/// Something that happened and may fire postbacks: a conversion, an event or a CPC click, with
/// the caller's own id for it. The id makes handling idempotent: the same trigger twice creates
/// no second delivery, and every delivery's key derives from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Trigger {
    /// The caller's conversion, event or click id.
    pub id: TriggerId,
    /// The partner who sent the traffic.
    pub partner: PartnerId,
    /// The offer (or smartlink).
    pub offer: OfferId,
    /// What happened.
    pub what: TriggerKind,
    /// Set when this is a status change of a conversion that fired before ([`Trigger::corrected`]):
    /// it reaches only the postbacks that opted in to that status, after the earlier deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<Correction>,
}

impl Trigger {
    /// A base conversion with id `id` (a number, or a [`TriggerId`] made from text).
    pub fn conversion(id: impl Into<TriggerId>, partner: PartnerId, offer: OfferId) -> Trigger {
        Trigger {
            id: id.into(),
            partner,
            offer,
            what: TriggerKind::Conversion,
            correction: None,
        }
    }
    /// An event with id `id`.
    pub fn event(
        id: impl Into<TriggerId>,
        partner: PartnerId,
        offer: OfferId,
        event: EventId,
    ) -> Trigger {
        Trigger {
            id: id.into(),
            partner,
            offer,
            what: TriggerKind::Event { event },
            correction: None,
        }
    }
    /// A valid click with id `id` on a CPC offer.
    pub fn cpc_click(id: impl Into<TriggerId>, partner: PartnerId, offer: OfferId) -> Trigger {
        Trigger {
            id: id.into(),
            partner,
            offer,
            what: TriggerKind::CpcClick,
            correction: None,
        }
    }

    /// The same conversion (or event) with its status changed: revision `revision` (1 for the
    /// first change, counting up; the same revision twice creates nothing new) announcing
    /// `status`. See [`Correction`].
    pub fn corrected(self, revision: NonZeroU32, status: ConversionStatus) -> Trigger {
        Trigger {
            correction: Some(Correction { revision, status }),
            ..self
        }
    }

    /// The key of the delivery of `postback` this trigger causes (revision 0, or the
    /// correction's).
    pub fn key(&self, postback: PostbackId) -> DeliveryKey {
        let revision = self.correction.map_or(0, |c| c.revision.get());
        DeliveryKey::new(self.id, postback, self.what, revision)
    }
}

/// How competing levels are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Precedence {
    /// Specific overrides offer-global overrides partner-global; inactive and disabled
    /// postbacks are skipped and the next level serves; every active postback of the winning
    /// level fires (default).
    #[default]
    Override,
    /// Every active matching postback fires, whatever its level (Everflow's documented
    /// behaviour).
    All,
}

/// Why a postback fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FireReason {
    /// Active, on the most specific level that has an active postback.
    WinningLevel,
    /// Active, and [`Precedence::All`] fires every match.
    AllMatch,
    /// A correction: this postback had the conversion before, so its status change follows it
    /// there (whatever the levels say now).
    HadOriginal,
}

/// Why a matching postback does not fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SkipReason {
    /// Paused by a person.
    Paused,
    /// Disabled automatically after delivery failures.
    Disabled,
    /// Active, but a more specific level has an active postback.
    Shadowed {
        /// The level that won.
        by: Level,
    },
    /// A correction, and this postback did not opt in to changes to its status.
    CorrectionsOff,
    /// A correction, and the conversion went to other postbacks, which get it.
    OriginalElsewhere,
    /// A correction older than one that went out to this postback already (a late revision):
    /// sending it would leave the partner on a stale status.
    Superseded,
}

/// The verdict on one matching postback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// It fires.
    Fires {
        /// Why.
        why: FireReason,
    },
    /// It does not.
    Skipped {
        /// Why not.
        why: SkipReason,
    },
}

/// One matching postback and the verdict on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decision {
    /// The postback.
    pub postback: PostbackId,
    /// Its level.
    pub level: Level,
    /// Fires or not, and why.
    pub outcome: Outcome,
}

impl Decision {
    /// Whether it fires.
    pub fn fires(&self) -> bool {
        matches!(self.outcome, Outcome::Fires { .. })
    }
}

/// What a trigger fires and what it does not: most specific level first, by id within a level
/// (for an event: that event's postbacks, then those for every event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[must_use]
pub struct Resolution {
    /// The trigger resolved.
    pub trigger: Trigger,
    /// The rule applied.
    pub precedence: Precedence,
    /// Every matching postback with its verdict.
    pub decisions: Vec<Decision>,
}

impl Resolution {
    /// The postbacks that fire.
    pub fn firing(&self) -> impl Iterator<Item = PostbackId> + '_ {
        self.decisions
            .iter()
            .filter(|d| d.fires())
            .map(|d| d.postback)
    }

    /// The matching postbacks that do not fire, with the reason.
    pub fn skipped(&self) -> impl Iterator<Item = (PostbackId, SkipReason)> + '_ {
        self.decisions.iter().filter_map(|d| match d.outcome {
            Outcome::Skipped { why } => Some((d.postback, why)),
            Outcome::Fires { .. } => None,
        })
    }

    /// The verdict on one postback, if it matched the trigger at all.
    pub fn decision(&self, id: PostbackId) -> Option<&Decision> {
        self.decisions.iter().find(|d| d.postback == id)
    }
}

impl fmt::Display for Resolution {
    /// One line per matching postback: "why did this (not) fire?".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.trigger;
        let what = match t.what {
            TriggerKind::Conversion => "conversion".to_owned(),
            TriggerKind::Event { event } => format!("event {event}"),
            TriggerKind::CpcClick => "CPC click".to_owned(),
        };
        match t.correction {
            Some(c) => write!(
                f,
                "{what} of partner {} on offer {}, now {} (revision {}):",
                t.partner, t.offer, c.status, c.revision
            )?,
            None => write!(f, "{what} of partner {} on offer {}:", t.partner, t.offer)?,
        }
        if self.decisions.is_empty() {
            return write!(f, " no postback matches");
        }
        for d in &self.decisions {
            write!(f, "\n  postback {} ({}): ", d.postback, d.level)?;
            match d.outcome {
                Outcome::Fires {
                    why: FireReason::WinningLevel,
                } => write!(f, "fires (most specific level with an active postback)")?,
                Outcome::Fires {
                    why: FireReason::AllMatch,
                } => write!(f, "fires (precedence `all` fires every active match)")?,
                Outcome::Fires {
                    why: FireReason::HadOriginal,
                } => write!(
                    f,
                    "fires (the conversion went to it; its correction follows)"
                )?,
                Outcome::Skipped {
                    why: SkipReason::Paused,
                } => write!(f, "skipped: paused")?,
                Outcome::Skipped {
                    why: SkipReason::Disabled,
                } => write!(f, "skipped: disabled after delivery failures")?,
                Outcome::Skipped {
                    why: SkipReason::Shadowed { by },
                } => write!(f, "skipped: overridden by the {by} postback")?,
                Outcome::Skipped {
                    why: SkipReason::CorrectionsOff,
                } => write!(f, "skipped: takes no corrections to this status")?,
                Outcome::Skipped {
                    why: SkipReason::Superseded,
                } => write!(
                    f,
                    "skipped: it has a later status change of this conversion already"
                )?,
                Outcome::Skipped {
                    why: SkipReason::OriginalElsewhere,
                } => write!(
                    f,
                    "skipped: the conversion went to other postbacks, which get the correction"
                )?,
            }
        }
        Ok(())
    }
}

/// A registry operation that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The id is taken.
    #[error("postback {0} already exists: update it, or choose another id")]
    Duplicate(PostbackId),
    /// No such postback.
    #[error("postback {0} does not exist: check the id")]
    NotFound(PostbackId),
    /// The status change does not apply to the postback's status.
    #[error("postback {id}: {error}")]
    Status {
        /// The postback.
        id: PostbackId,
        /// Why.
        error: StatusError,
    },
}

/// The kind part of an index key. Event postbacks are filed under their event, or under
/// "every event".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KindKey {
    Conversion,
    Cpc,
    Event(Option<EventId>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Partner(PartnerId, KindKey),
    Offer(OfferId, KindKey),
    Specific(PartnerId, OfferId, KindKey),
}

impl Key {
    fn of(p: &Postback) -> Key {
        let kind = match p.kind() {
            Kind::Conversion => KindKey::Conversion,
            Kind::Cpc => KindKey::Cpc,
            Kind::Event { event } => KindKey::Event(event),
        };
        match p.scope() {
            Scope::PartnerGlobal { partner } => Key::Partner(partner, kind),
            Scope::OfferGlobal { offer } => Key::Offer(offer, kind),
            Scope::Specific { partner, offer } => Key::Specific(partner, offer, kind),
        }
    }

    fn at(level: Level, t: &Trigger, kind: KindKey) -> Key {
        match level {
            Level::PartnerGlobal => Key::Partner(t.partner, kind),
            Level::OfferGlobal => Key::Offer(t.offer, kind),
            Level::Specific => Key::Specific(t.partner, t.offer, kind),
        }
    }
}

/// Postbacks, indexed so that resolving a trigger costs at most six hash lookups however many
/// postbacks there are. Serializes as its precedence and its postbacks (sorted by id); reading
/// one back refuses duplicate ids.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(into = "RegistryData", try_from = "RegistryData")]
pub struct Registry {
    postbacks: IdMap<PostbackId, Postback>,
    /// Ids per key, sorted, so resolutions list postbacks in a stable order.
    index: IdMap<Key, Vec<PostbackId>>,
    /// Postbacks per partner (partner-global and specific), for the network's quota.
    per_partner: IdMap<PartnerId, usize>,
    precedence: Precedence,
}

/// The serialized form of a [`Registry`].
#[derive(Serialize, Deserialize)]
struct RegistryData {
    #[serde(default)]
    precedence: Precedence,
    postbacks: Vec<Postback>,
}

impl From<Registry> for RegistryData {
    fn from(r: Registry) -> Self {
        let mut postbacks: Vec<Postback> = r.postbacks.into_values().collect();
        postbacks.sort_by_key(Postback::id);
        RegistryData {
            precedence: r.precedence,
            postbacks,
        }
    }
}

impl TryFrom<RegistryData> for Registry {
    type Error = RegistryError;
    fn try_from(d: RegistryData) -> Result<Self, Self::Error> {
        let mut r = Registry::with_precedence(d.precedence);
        for p in d.postbacks {
            r.insert(p)?;
        }
        Ok(r)
    }
}

impl Registry {
    /// An empty registry with [`Precedence::Override`].
    pub fn new() -> Registry {
        Registry::default()
    }

    /// An empty registry with the given precedence.
    pub fn with_precedence(precedence: Precedence) -> Registry {
        Registry {
            precedence,
            ..Registry::default()
        }
    }

    /// The precedence rule in force.
    pub fn precedence(&self) -> Precedence {
        self.precedence
    }

    /// Change the precedence rule.
    pub fn set_precedence(&mut self, p: Precedence) {
        self.precedence = p;
    }

    /// Add a postback.
    pub fn insert(&mut self, p: Postback) -> Result<(), RegistryError> {
        if self.postbacks.contains_key(&p.id()) {
            return Err(RegistryError::Duplicate(p.id()));
        }
        self.link(&p);
        self.postbacks.insert(p.id(), p);
        Ok(())
    }

    /// Replace the postback with the same id; returns the old one.
    pub fn update(&mut self, p: Postback) -> Result<Postback, RegistryError> {
        let old = self
            .postbacks
            .get(&p.id())
            .ok_or(RegistryError::NotFound(p.id()))?;
        if Key::of(old) != Key::of(&p) {
            let old = old.clone();
            self.unlink(&old);
            self.link(&p);
        }
        Ok(self.postbacks.insert(p.id(), p).expect("checked above"))
    }

    /// Remove a postback; returns it.
    pub fn remove(&mut self, id: PostbackId) -> Result<Postback, RegistryError> {
        let p = self
            .postbacks
            .remove(&id)
            .ok_or(RegistryError::NotFound(id))?;
        self.unlink(&p);
        Ok(p)
    }

    /// Set a postback's status; returns the previous one.
    pub fn set_status(&mut self, id: PostbackId, status: Status) -> Result<Status, RegistryError> {
        let p = self
            .postbacks
            .get_mut(&id)
            .ok_or(RegistryError::NotFound(id))?;
        let old = p.status().clone();
        p.set_status(status);
        Ok(old)
    }

    /// Pause a postback (a person's decision): it takes no new triggers until resumed. An
    /// automatically disabled one is refused (it is off already; [`enable`](Self::enable) it).
    pub fn pause(&mut self, id: PostbackId) -> Result<Status, RegistryError> {
        let next = self
            .status_of(id)?
            .pause()
            .map_err(|error| RegistryError::Status { id, error })?;
        self.set_status(id, next)
    }

    /// Resume a paused postback. An automatically disabled one is refused: [`enable`](Self::enable) it.
    pub fn resume(&mut self, id: PostbackId) -> Result<Status, RegistryError> {
        let next = self
            .status_of(id)?
            .resume()
            .map_err(|error| RegistryError::Status { id, error })?;
        self.set_status(id, next)
    }

    /// Enable a postback again after an automatic disable. A paused one is refused:
    /// [`resume`](Self::resume) it.
    pub fn enable(&mut self, id: PostbackId) -> Result<Status, RegistryError> {
        let next = self
            .status_of(id)?
            .enable()
            .map_err(|error| RegistryError::Status { id, error })?;
        self.set_status(id, next)
    }

    /// Switch an active postback off after delivery failures, with the reason and time. Returns
    /// whether it changed: a postback already off is left as it is.
    pub fn disable_automatically(
        &mut self,
        id: PostbackId,
        reason: impl Into<String>,
        at: DateTime<Utc>,
    ) -> Result<bool, RegistryError> {
        match self.status_of(id)?.disable_automatically(reason.into(), at) {
            Some(next) => self.set_status(id, next).map(|_| true),
            None => Ok(false),
        }
    }

    fn status_of(&self, id: PostbackId) -> Result<&Status, RegistryError> {
        self.postbacks
            .get(&id)
            .map(Postback::status)
            .ok_or(RegistryError::NotFound(id))
    }

    /// A postback by id.
    pub fn get(&self, id: PostbackId) -> Option<&Postback> {
        self.postbacks.get(&id)
    }

    /// How many postbacks are held.
    pub fn len(&self) -> usize {
        self.postbacks.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.postbacks.is_empty()
    }

    /// Every postback, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Postback> {
        self.postbacks.values()
    }

    /// How many postbacks `partner` has (partner-global and specific).
    pub fn count_of_partner(&self, partner: PartnerId) -> usize {
        self.per_partner.get(&partner).copied().unwrap_or(0)
    }

    fn link(&mut self, p: &Postback) {
        let ids = self.index.entry(Key::of(p)).or_default();
        if let Err(i) = ids.binary_search(&p.id()) {
            ids.insert(i, p.id());
            if let Some(partner) = p.partner() {
                *self.per_partner.entry(partner).or_default() += 1;
            }
        }
    }

    fn unlink(&mut self, p: &Postback) {
        if let Some(partner) = p.partner() {
            if let Some(n) = self.per_partner.get_mut(&partner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_partner.remove(&partner);
                }
            }
        }
        let key = Key::of(p);
        if let Some(ids) = self.index.get_mut(&key) {
            ids.retain(|&i| i != p.id());
            if ids.is_empty() {
                self.index.remove(&key);
            }
        }
    }

    /// Decide which postbacks fire for `trigger`, and why the others do not.
    pub fn resolve(&self, trigger: &Trigger) -> Resolution {
        let kinds: (KindKey, Option<KindKey>) = match trigger.what {
            TriggerKind::Conversion => (KindKey::Conversion, None),
            TriggerKind::CpcClick => (KindKey::Cpc, None),
            TriggerKind::Event { event } => {
                (KindKey::Event(Some(event)), Some(KindKey::Event(None)))
            }
        };
        let mut decisions = Vec::new();
        let mut winner: Option<Level> = None;
        for level in Level::BY_PRECEDENCE {
            let first = self.index.get(&Key::at(level, trigger, kinds.0));
            let second = kinds
                .1
                .and_then(|k| self.index.get(&Key::at(level, trigger, k)));
            let ids = first.into_iter().chain(second).flatten();
            for &id in ids {
                let Some(p) = self.postbacks.get(&id) else {
                    continue;
                };
                let outcome = match (p.status(), self.precedence, winner) {
                    (Status::Paused, ..) => Outcome::Skipped {
                        why: SkipReason::Paused,
                    },
                    (Status::Disabled { .. }, ..) => Outcome::Skipped {
                        why: SkipReason::Disabled,
                    },
                    (_, Precedence::All, _) => Outcome::Fires {
                        why: FireReason::AllMatch,
                    },
                    (_, _, Some(by)) if by != level => Outcome::Skipped {
                        why: SkipReason::Shadowed { by },
                    },
                    _ => {
                        winner = Some(level);
                        Outcome::Fires {
                            why: FireReason::WinningLevel,
                        }
                    }
                };
                decisions.push(Decision {
                    postback: id,
                    level,
                    outcome,
                });
            }
        }
        Resolution {
            trigger: *trigger,
            precedence: self.precedence,
            decisions,
        }
    }
}
