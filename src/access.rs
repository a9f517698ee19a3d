//! Who may create, edit, enable, disable or delete which postback, and the audit trail of every
//! authorized change.
//!
//! The network (its managers) may do everything. A partner may change only its own
//! partner-global and specific postbacks, and only while the network's "partners may edit their
//! own postbacks" setting is on. Offer-global postbacks belong to the network alone.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Level, ManagerId, PartnerId, Postback, PostbackId};
use crate::registry::{Registry, RegistryError};
use crate::template::Macro;

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Actor {
    /// A manager of the network.
    Network(ManagerId),
    /// A partner, in its own portal.
    Partner(PartnerId),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Network(m) => write!(f, "network manager {m}"),
            Actor::Partner(p) => write!(f, "partner {p}"),
        }
    }
}

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    /// Add a postback.
    Create,
    /// Change a postback's settings.
    Edit,
    /// Pause it (a person's decision).
    Pause,
    /// Resume it after a pause.
    Resume,
    /// Enable it again after the automatic disable.
    Enable,
    /// Remove it.
    Delete,
    /// Fire it once with sample values to check the partner's side.
    TestFire,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 7] = [
        Operation::Create,
        Operation::Edit,
        Operation::Pause,
        Operation::Resume,
        Operation::Enable,
        Operation::Delete,
        Operation::TestFire,
    ];
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Create => "create",
            Operation::Edit => "edit",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Enable => "enable",
            Operation::Delete => "delete",
            Operation::TestFire => "test-fire",
        })
    }
}

/// The network's settings that govern partners.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Settings {
    /// Whether partners may create and change their own postbacks (default `true`; the
    /// network's Global Settings switch turns it off).
    pub partners_may_edit: bool,
    /// Macros only the network may put in a postback: its confidential values. Default, as
    /// Everflow gates them: `{revenue}`, `{sale_amount}`, `{adv1}`..`{adv10}`, `{session_ip}`.
    pub network_only_macros: Vec<Macro>,
    /// The most postbacks one partner may have, whoever creates them (default 100): one
    /// partner's thousand postbacks would turn every conversion into a thousand requests.
    pub max_postbacks_per_partner: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::partners_may_edit(true)
    }
}

impl Settings {
    /// The default settings with partner self-edit on or off.
    pub fn partners_may_edit(on: bool) -> Settings {
        let mut network_only = vec![Macro::REVENUE, Macro::SALE_AMOUNT, Macro::SESSION_IP];
        network_only.extend((1..=10).filter_map(Macro::adv));
        Settings {
            partners_may_edit: on,
            network_only_macros: network_only,
            max_postbacks_per_partner: 100,
        }
    }

    /// Set the macros only the network may use.
    #[must_use]
    pub fn network_only_macros(mut self, macros: impl IntoIterator<Item = Macro>) -> Settings {
        self.network_only_macros = macros.into_iter().collect();
        self
    }

    /// Set the most postbacks one partner may have.
    #[must_use]
    pub fn max_postbacks_per_partner(mut self, n: usize) -> Settings {
        self.max_postbacks_per_partner = n;
        self
    }
}

/// A refused or failed change. Each message says who may do it.
///
/// A partner's test fire is an operation like the others: refused while partner self-edit is
/// off, and only on the partner's own postbacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The network has turned partner self-edit off.
    #[error(
        "partners may not {0} postbacks on this network: ask a network manager, who may also turn partner self-edit back on in the global settings"
    )]
    PartnerEditingOff(Operation),
    /// Offer-global postbacks are the network's.
    #[error(
        "only a network manager may {0} an offer-global postback: it fires for every partner of the offer"
    )]
    NetworkOnly(Operation),
    /// Another partner's postback.
    #[error(
        "postback {postback} belongs to {owner}, not partner {actor}: only its owner or a network manager may {operation} it"
    )]
    NotOwner {
        /// Who asked.
        actor: PartnerId,
        /// The owner.
        owner: String,
        /// The postback.
        postback: PostbackId,
        /// What was asked.
        operation: Operation,
    },
    /// A partner's postback uses a macro that carries the network's confidential value.
    #[error(
        "{{{name}}} is the network's own value and partners may not send it to themselves: remove it from the URL, or ask a network manager"
    )]
    NetworkOnlyMacro {
        /// The macro, as written.
        name: String,
    },
    /// The partner has as many postbacks as the network allows.
    #[error(
        "partner {partner} has {max} postbacks, the most this network allows: delete one first, or ask a network manager to raise the limit"
    )]
    TooManyPostbacks {
        /// The partner.
        partner: PartnerId,
        /// The limit.
        max: usize,
    },
    /// An edit that changes the postback's id.
    #[error("an edit must keep the postback's id ({0}): create a new postback instead")]
    IdChanged(PostbackId),
    /// The registry refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A postback whose signing secrets were redacted (read back from an audit entry).
    #[error(
        "postback {0} carries signing secrets redacted from an audit entry: set its secrets again before creating or editing it"
    )]
    RedactedSecrets(PostbackId),
}

/// One authorized change: who, what, which postback, when, and the postback before and after.
///
/// Its `Debug` and its serialized form never show signing secrets: the postbacks are written
/// with them redacted ([`Secret::is_redacted`](crate::signing::Secret::is_redacted)), so an
/// audit trail can be shown and exported. A postback read back from an entry cannot sign, and
/// [`Gatekeeper`] refuses to create or edit it until its secrets are set again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who.
    pub actor: Actor,
    /// What.
    pub operation: Operation,
    /// Which postback.
    pub postback: PostbackId,
    /// When.
    pub at: DateTime<Utc>,
    /// The postback before (absent on create).
    #[serde(serialize_with = "signing_redacted")]
    pub before: Option<Postback>,
    /// The postback after (absent on delete).
    #[serde(serialize_with = "signing_redacted")]
    pub after: Option<Postback>,
}

/// A postback as audit entries write it: with its signing secrets redacted.
fn signing_redacted<S: serde::Serializer>(p: &Option<Postback>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) if p.signing().is_some() => Some(p.signing_redacted()).serialize(s),
        _ => p.serialize(s),
    }
}

/// Decide whether `actor` may do `op` to `target` under `settings`.
pub fn authorize(
    settings: &Settings,
    actor: Actor,
    op: Operation,
    target: &Postback,
) -> Result<(), AccessError> {
    let partner = match actor {
        Actor::Network(_) => return Ok(()),
        Actor::Partner(p) => p,
    };
    if !settings.partners_may_edit {
        return Err(AccessError::PartnerEditingOff(op));
    }
    if target.level() == Level::OfferGlobal {
        return Err(AccessError::NetworkOnly(op));
    }
    if matches!(op, Operation::Create | Operation::Edit) {
        if let Some(m) = target
            .template()
            .macros()
            .find(|m| settings.network_only_macros.contains(m))
        {
            return Err(AccessError::NetworkOnlyMacro {
                name: target.template().macro_name(m),
            });
        }
    }
    match target.partner() {
        Some(owner) if owner == partner => Ok(()),
        owner => Err(AccessError::NotOwner {
            actor: partner,
            owner: owner.map_or_else(|| "the network".to_owned(), |o| format!("partner {o}")),
            postback: target.id(),
            operation: op,
        }),
    }
}

/// A postback read back from an audit entry has no secrets to sign with: whoever asks, it is not
/// created or made the new version of a postback until its secrets are set again.
fn refuse_redacted(p: &Postback) -> Result<(), AccessError> {
    if p.signing().is_some_and(|s| s.is_redacted()) {
        return Err(AccessError::RedactedSecrets(p.id()));
    }
    Ok(())
}

/// Applies changes to a [`Registry`] on behalf of an actor, after [`authorize`], and returns the
/// audit entry of each change. Nothing changes when the answer is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gatekeeper {
    /// The network's settings.
    pub settings: Settings,
}

impl Gatekeeper {
    /// A gatekeeper with these settings.
    pub fn new(settings: Settings) -> Gatekeeper {
        Gatekeeper { settings }
    }

    /// Add a postback.
    pub fn create(
        &self,
        registry: &mut Registry,
        actor: Actor,
        now: DateTime<Utc>,
        postback: Postback,
    ) -> Result<AuditEntry, AccessError> {
        authorize(&self.settings, actor, Operation::Create, &postback)?;
        refuse_redacted(&postback)?;
        if let Some(partner) = postback.partner() {
            let max = self.settings.max_postbacks_per_partner;
            if registry.count_of_partner(partner) >= max {
                return Err(AccessError::TooManyPostbacks { partner, max });
            }
        }
        let id = postback.id();
        registry.insert(postback.clone())?;
        Ok(AuditEntry {
            actor,
            operation: Operation::Create,
            postback: id,
            at: now,
            before: None,
            after: Some(postback),
        })
    }

    /// Replace a postback with a changed version of itself (same id). The actor must be allowed
    /// to edit both the old and the new version, so a partner cannot hand a postback to someone
    /// else or turn it offer-global. The status is kept as it is in the registry: use
    /// [`pause`](Self::pause), [`resume`](Self::resume) and [`enable`](Self::enable) to change it.
    pub fn edit(
        &self,
        registry: &mut Registry,
        actor: Actor,
        now: DateTime<Utc>,
        postback: Postback,
    ) -> Result<AuditEntry, AccessError> {
        let id = postback.id();
        let mut postback = postback;
        let before = registry.get(id).ok_or(RegistryError::NotFound(id))?;
        authorize(&self.settings, actor, Operation::Edit, before)?;
        authorize(&self.settings, actor, Operation::Edit, &postback)?;
        refuse_redacted(&postback)?;
        // An edit changes configuration, never status: an edit made from a copy loaded before an
        // automatic disable must not switch the postback back on. Status changes go through
        // pause, resume and enable.
        postback.set_status(before.status().clone());
        let before = registry.update(postback.clone())?;
        Ok(AuditEntry {
            actor,
            operation: Operation::Edit,
            postback: id,
            at: now,
            before: Some(before),
            after: Some(postback),
        })
    }

    /// Pause a postback.
    pub fn pause(
        &self,
        registry: &mut Registry,
        actor: Actor,
        now: DateTime<Utc>,
        id: PostbackId,
    ) -> Result<AuditEntry, AccessError> {
        self.change_status(registry, actor, now, id, Operation::Pause)
    }

    /// Resume a paused postback.
    pub fn resume(
        &self,
        registry: &mut Registry,
        actor: Actor,
        now: DateTime<Utc>,
        id: PostbackId,
    ) -> Result<AuditEntry, AccessError> {
        self.change_status(registry, actor, now, id, Operation::Resume)
    }

    /// Enable a postback again after the automatic disable.
    pub fn enable(
        &self,
        registry: &mut Registry,
        actor: Actor,
        now: DateTime<Utc>,
        id: PostbackId,
    ) -> Result<AuditEntry, AccessError> {
        self.change_status(registry, actor, now, id, Operation::Enable)
    }

    /// Allow a test fire of a postback, whatever its status; changes nothing. The entry records
    /// who fired it.
    pub fn test_fire(
        &self,
        registry: &Registry,
        actor: Actor,
        now: DateTime<Utc>,
        id: PostbackId,
    ) -> Result<AuditEntry, AccessError> {
        let target = registry.get(id).ok_or(RegistryError::NotFound(id))?;
        authorize(&self.settings, actor, Operation::TestFire, target)?;
        Ok(AuditEntry {
            actor,
            operation: Operation::TestFire,
            postback: id,
            at: now,
            before: Some(target.clone()),
            after: Some(target.clone()),
        })
    }

    /// Remove a postback.
    pub fn delete(
        &self,
        registry: &mut Registry,
        actor: Actor,
        now: DateTime<Utc>,
        id: PostbackId,
    ) -> Result<AuditEntry, AccessError> {
        let target = registry.get(id).ok_or(RegistryError::NotFound(id))?;
        authorize(&self.settings, actor, Operation::Delete, target)?;
        let before = registry.remove(id)?;
        Ok(AuditEntry {
            actor,
            operation: Operation::Delete,
            postback: id,
            at: now,
            before: Some(before),
            after: None,
        })
    }

    fn change_status(
        &self,
        registry: &mut Registry,
        actor: Actor,
        now: DateTime<Utc>,
        id: PostbackId,
        op: Operation,
    ) -> Result<AuditEntry, AccessError> {
        let target = registry.get(id).ok_or(RegistryError::NotFound(id))?;
        authorize(&self.settings, actor, op, target)?;
        let before = target.clone();
        match op {
            Operation::Pause => registry.pause(id)?,
            Operation::Resume => registry.resume(id)?,
            _ => registry.enable(id)?,
        };
        let after = registry.get(id).cloned();
        Ok(AuditEntry {
            actor,
            operation: op,
            postback: id,
            at: now,
            before: Some(before),
            after,
        })
    }
}
