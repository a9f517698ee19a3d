//! The postback model: ids, what triggers a postback, at which level it applies, how it is
//! delivered, its status, and the validated [`Postback`] with its builder.
//!
//! ```
//! use postback::model::{Kind, Level, OfferId, PartnerId, Postback, PostbackId};
//!
//! let pb = Postback::builder(PostbackId::new(1))
//!     .partner(PartnerId::new(7))
//!     .offer(OfferId::new(42))
//!     .url("https://tracker.example/postback?cid={sub1}&payout={payout}")
//!     .build()?;
//! assert_eq!(pb.level(), Level::Specific);
//! assert_eq!(pb.kind(), Kind::Conversion);
//! # Ok::<(), postback::model::ConfigError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::signing::{Signing, SigningError};
use crate::template::{Catalog, Context, ExpandError, Options, Template, TemplateError};

mod correction;
mod key;

pub use correction::{
    ConversionStatus, Correction, Corrections, MAX_STATUS_WORD, StatusWordError, StatusWords,
};
pub use key::{
    DeliveryKey, KeyParseError, MAX_TRIGGER_ID, Purpose, TriggerId, TriggerIdError, TriggerKind,
};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wrap a raw id.
            pub const fn new(id: u64) -> Self {
                Self(id)
            }
            /// The raw id.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl From<u64> for $name {
            fn from(id: u64) -> Self {
                Self(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

id_type! {
    /// A partner (publisher, media buyer, affiliate).
    PartnerId
}
id_type! {
    /// An offer. Smartlinks are offers too.
    OfferId
}
id_type! {
    /// An event other than the base conversion (install, deposit, ...).
    EventId
}
id_type! {
    /// A configured postback.
    PostbackId
}
id_type! {
    /// A person at the network (an affiliate or network manager), for audit entries.
    ManagerId
}

/// What fires a postback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// The base conversion.
    #[default]
    Conversion,
    /// An event other than the base conversion: one event, or every event when `event` is `None`.
    Event {
        /// The event this postback is for; `None` for all events.
        event: Option<EventId>,
    },
    /// A valid click on an offer paid per click. Always Specific and server-to-server; CPC
    /// postbacks do not show in the postback report.
    Cpc,
}

impl Kind {
    /// An event postback for one event.
    pub const fn event(id: EventId) -> Kind {
        Kind::Event { event: Some(id) }
    }

    /// An event postback for every event.
    pub const fn any_event() -> Kind {
        Kind::Event { event: None }
    }
}

/// How widely a postback applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Level {
    /// One partner, every offer (Everflow's `global`).
    PartnerGlobal,
    /// One offer, every partner (Everflow's `global_offer`).
    OfferGlobal,
    /// One partner on one offer (Everflow's `specific`).
    Specific,
}

impl Level {
    /// Levels from most to least specific: the order of precedence.
    pub const BY_PRECEDENCE: [Level; 3] =
        [Level::Specific, Level::OfferGlobal, Level::PartnerGlobal];
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::PartnerGlobal => "partner-global",
            Level::OfferGlobal => "offer-global",
            Level::Specific => "specific",
        })
    }
}

/// The level together with the ids it needs: a Specific postback cannot lack its offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "level", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Scope {
    /// One partner, every offer.
    PartnerGlobal {
        /// The partner.
        partner: PartnerId,
    },
    /// One offer, every partner.
    OfferGlobal {
        /// The offer.
        offer: OfferId,
    },
    /// One partner on one offer.
    Specific {
        /// The partner.
        partner: PartnerId,
        /// The offer.
        offer: OfferId,
    },
}

impl Scope {
    /// The level.
    pub const fn level(&self) -> Level {
        match self {
            Scope::PartnerGlobal { .. } => Level::PartnerGlobal,
            Scope::OfferGlobal { .. } => Level::OfferGlobal,
            Scope::Specific { .. } => Level::Specific,
        }
    }

    /// The partner, for partner-global and specific postbacks.
    pub const fn partner(&self) -> Option<PartnerId> {
        match self {
            Scope::PartnerGlobal { partner } | Scope::Specific { partner, .. } => Some(*partner),
            Scope::OfferGlobal { .. } => None,
        }
    }

    /// The offer, for offer-global and specific postbacks.
    pub const fn offer(&self) -> Option<OfferId> {
        match self {
            Scope::OfferGlobal { offer } | Scope::Specific { offer, .. } => Some(*offer),
            Scope::PartnerGlobal { .. } => None,
        }
    }
}

/// The HTTP method of a server-to-server postback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HttpMethod {
    /// `GET`: the values travel in the URL (the norm).
    #[default]
    #[serde(rename = "GET")]
    Get,
    /// `POST`: the same URL, sent with `POST` and an empty body.
    #[serde(rename = "POST")]
    Post,
}

impl HttpMethod {
    /// The `http` crate's method.
    pub fn as_http(self) -> http::Method {
        match self {
            HttpMethod::Get => http::Method::GET,
            HttpMethod::Post => http::Method::POST,
        }
    }
}

/// How a postback is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Method {
    /// Server-to-server: the network's server requests the URL.
    ServerToServer {
        /// GET or POST.
        http: HttpMethod,
    },
    /// An `<img>` pixel rendered into the conversion page.
    ImagePixel,
    /// An `<iframe>` pixel rendered into the conversion page.
    IframePixel,
    /// HTML or JavaScript code rendered into the conversion page.
    HtmlCode,
}

impl Method {
    /// Server-to-server with GET.
    pub const S2S: Method = Method::ServerToServer {
        http: HttpMethod::Get,
    };

    /// Whether the network's server sends it.
    pub const fn is_server_to_server(&self) -> bool {
        matches!(self, Method::ServerToServer { .. })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::ServerToServer {
                http: HttpMethod::Get,
            } => "server-to-server GET",
            Method::ServerToServer {
                http: HttpMethod::Post,
            } => "server-to-server POST",
            Method::ImagePixel => "image pixel",
            Method::IframePixel => "iframe pixel",
            Method::HtmlCode => "HTML code",
        })
    }
}

/// Whether a postback fires.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Fires.
    #[default]
    Active,
    /// Paused by a person ([`Status::pause`]); takes no new triggers until resumed.
    #[serde(alias = "inactive")]
    Paused,
    /// Switched off automatically after repeated delivery failures.
    Disabled {
        /// Why, in words a network manager reads.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// A status change that does not apply to the status a postback has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// `enable` on a paused postback.
    #[error("the postback is paused by a person, not disabled: resume it instead")]
    Paused,
    /// `resume` or `pause` on an automatically disabled postback.
    #[error(
        "the postback was disabled automatically after delivery failures ({reason}): enable it once the partner's server answers again"
    )]
    Disabled {
        /// Why it was disabled.
        reason: String,
    },
}

impl Status {
    /// Whether it fires.
    pub const fn is_active(&self) -> bool {
        matches!(self, Status::Active)
    }

    /// Whether it was switched off automatically.
    pub const fn is_disabled(&self) -> bool {
        matches!(self, Status::Disabled { .. })
    }

    /// A person pauses it (a paused postback stays paused). An automatically disabled one is
    /// refused: it is off already, and pausing it would let a resume switch a failing partner
    /// back on without the enable that says its server answers again.
    pub fn pause(&self) -> Result<Status, StatusError> {
        match self {
            Status::Disabled { reason, .. } => Err(StatusError::Disabled {
                reason: reason.clone(),
            }),
            _ => Ok(Status::Paused),
        }
    }

    /// A person resumes it after a pause. An automatic disable is undone with
    /// [`enable`](Self::enable), so that resuming never switches a failing partner back on by
    /// accident.
    pub fn resume(&self) -> Result<Status, StatusError> {
        match self {
            Status::Disabled { reason, .. } => Err(StatusError::Disabled {
                reason: reason.clone(),
            }),
            _ => Ok(Status::Active),
        }
    }

    /// A person enables it again after an automatic disable (once the partner fixed its server).
    pub fn enable(&self) -> Result<Status, StatusError> {
        match self {
            Status::Paused => Err(StatusError::Paused),
            _ => Ok(Status::Active),
        }
    }

    /// The automatic disable applies only to an active postback: one already off is not
    /// disabled (or announced) twice. `None` when nothing changes.
    pub fn disable_automatically(&self, reason: String, at: DateTime<Utc>) -> Option<Status> {
        self.is_active().then_some(Status::Disabled { reason, at })
    }
}

/// A check of the response body, for receivers that answer 200 when they reject a postback
/// (TUNE answers `success=false; err_msg=...`). A failed check counts as a delivery failure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "text", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResponseCheck {
    /// The body must contain this text.
    MustContain(String),
    /// The body must not contain this text.
    MustNotContain(String),
}

impl ResponseCheck {
    /// Whether `body` passes.
    pub fn accepts(&self, body: &[u8]) -> bool {
        let contains = |needle: &str| {
            let n = needle.as_bytes();
            n.is_empty() || body.windows(n.len()).any(|w| w == n)
        };
        match self {
            ResponseCheck::MustContain(t) => contains(t),
            ResponseCheck::MustNotContain(t) => !contains(t),
        }
    }
}

/// The longest firing delay: five minutes, as Everflow allows.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The most literal secrets one postback may carry ([`PostbackBuilder::secret`]). Every send
/// redacts each of them from its records, so the cost of a send grows with their number; a URL
/// holds a key or two, not hundreds.
pub const MAX_SECRETS: usize = 16;

/// A postback that cannot be configured. Each message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A CPC postback at a level other than Specific.
    #[error(
        "a CPC postback must be Specific (one partner on one offer), not {0}: set the level to Specific or leave it unset"
    )]
    CpcNotSpecific(Level),
    /// A CPC postback not delivered server-to-server.
    #[error(
        "a CPC postback must be server-to-server, not {0}: choose server-to-server or leave the method unset"
    )]
    CpcNotServerToServer(Method),
    /// Neither partner nor offer given.
    #[error("a postback needs a partner, an offer, or both: set at least one")]
    MissingScope,
    /// The level needs a partner.
    #[error("a postback at the {0} level needs a partner: set the partner")]
    MissingPartner(Level),
    /// The level needs an offer.
    #[error("a postback at the {0} level needs an offer: set the offer")]
    MissingOffer(Level),
    /// A partner given for an offer-global postback.
    #[error(
        "an offer-global postback fires for every partner: remove the partner, or choose Specific for one partner"
    )]
    UnexpectedPartner,
    /// An offer given for a partner-global postback.
    #[error(
        "a partner-global postback fires on every offer: remove the offer, or choose Specific for one offer"
    )]
    UnexpectedOffer,
    /// No URL or code.
    #[error(
        "the postback has no URL: set the partner's postback URL (or the HTML code for an HTML postback)"
    )]
    MissingUrl,
    /// The template is invalid.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A server-to-server postback without a click id.
    #[error(
        "the postback URL carries no click id, so the partner cannot credit conversions: add one of {0}, mapped to the partner's click id parameter"
    )]
    MissingClickId(String),
    /// Delay over [`MAX_DELAY`].
    #[error("a firing delay of {0:?} is too long: shorten it to 5 minutes or less")]
    DelayTooLong(Duration),
    /// A delay on a pixel.
    #[error(
        "a firing delay applies only to server-to-server postbacks, not to {0} postbacks: remove the delay"
    )]
    DelayOnPixel(Method),
    /// Description over 1,000 characters.
    #[error("the description is {0} characters; the limit is 1000: shorten it")]
    DescriptionTooLong(usize),
    /// The click id stands only in the `#fragment`, which is never sent to a server.
    #[error(
        "the click id macro {0} stands only in the `#fragment`, which is never sent to the partner's server: move it into the query"
    )]
    ClickIdInFragment(String),
    /// Corrections asked of a postback that is not server-to-server (a pixel renders on the
    /// conversion page; a later status change has no page).
    #[error(
        "corrections are sent server-to-server only, and this postback is a {0} postback: turn corrections off, or make it server-to-server"
    )]
    CorrectionsNotServerToServer(Method),
    /// Corrections asked of a CPC postback: a click has no status to change.
    #[error("a CPC postback cannot take corrections (a click has no status): turn corrections off")]
    CorrectionsOnCpc,
    /// Corrections asked of a URL that does not send the status, so a rejection would read as
    /// the same conversion sent again.
    #[error(
        "the postback takes corrections but its URL does not send {{conversion_status}}, so the partner could not tell a rejection from a repeat: add the partner's status parameter, such as `&status={{conversion_status}}`"
    )]
    CorrectionsWithoutStatus,
    /// More literal secrets than [`MAX_SECRETS`].
    #[error(
        "the postback marks {count} secrets; the limit is {max}: mark only the literal keys its URL carries"
    )]
    TooManySecrets {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The signing settings cannot be used (among them: the crate lacks its `signing` feature).
    #[error(transparent)]
    Signing(#[from] SigningError),
}

/// A validated postback. Build one with [`Postback::builder`]; change one with
/// [`Postback::to_builder`], which validates again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PostbackData", into = "PostbackData")]
pub struct Postback {
    id: PostbackId,
    scope: Scope,
    kind: Kind,
    method: Method,
    status: Status,
    description: String,
    delay: Duration,
    /// Carries the postback's literal secrets too, so its own `Debug` redacts them.
    template: Template,
    response_check: Option<ResponseCheck>,
    corrections: Corrections,
    /// Signed requests ([`crate::signing`]); its `Debug` redacts the secrets.
    signing: Option<Signing>,
}

impl fmt::Debug for Postback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postback")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("kind", &self.kind)
            .field("method", &self.method)
            .field("status", &self.status)
            .field("template", &self.template)
            .field("signing", &self.signing)
            .finish_non_exhaustive()
    }
}

impl Postback {
    /// Start building a postback.
    pub fn builder(id: PostbackId) -> PostbackBuilder {
        PostbackBuilder::new(id)
    }

    /// A builder holding this postback's settings, to change and build again.
    pub fn to_builder(&self) -> PostbackBuilder {
        let level = self.scope.level();
        PostbackBuilder {
            id: self.id,
            partner: self.scope.partner(),
            offer: self.scope.offer(),
            level: Some(level),
            kind: self.kind,
            method: Some(self.method),
            status: self.status.clone(),
            description: self.description.clone(),
            delay: self.delay,
            source: Some(self.template.as_str().to_owned()),
            options: self.template.options(),
            // Keep the custom macros the template was bound with, so a rebuilt URL may use them.
            catalog: Some(rebuild_catalog(&self.template)),
            template: Some(self.template.clone()),
            response_check: self.response_check.clone(),
            secrets: self.secrets().to_vec(),
            corrections: self.corrections.clone(),
            signing: self.signing.clone(),
        }
    }

    /// Its id.
    pub fn id(&self) -> PostbackId {
        self.id
    }
    /// Level and ids.
    pub fn scope(&self) -> Scope {
        self.scope
    }
    /// The level.
    pub fn level(&self) -> Level {
        self.scope.level()
    }
    /// The partner, unless offer-global.
    pub fn partner(&self) -> Option<PartnerId> {
        self.scope.partner()
    }
    /// The offer, unless partner-global.
    pub fn offer(&self) -> Option<OfferId> {
        self.scope.offer()
    }
    /// What fires it.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// How it is delivered.
    pub fn method(&self) -> Method {
        self.method
    }
    /// Whether it fires.
    pub fn status(&self) -> &Status {
        &self.status
    }
    /// Change the status. Any status is valid for any postback, so no rebuild is needed.
    pub fn set_status(&mut self, status: Status) {
        self.status = status;
    }
    /// The description.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// How long after the trigger a server-to-server postback fires.
    pub fn delay(&self) -> Duration {
        self.delay
    }
    /// The parsed URL or HTML template.
    pub fn template(&self) -> &Template {
        &self.template
    }
    /// The check applied to response bodies, if any.
    pub fn response_check(&self) -> Option<&ResponseCheck> {
        self.response_check.as_ref()
    }
    /// Which status changes it is told of ([`Corrections`]; none by default).
    pub fn corrections(&self) -> &Corrections {
        &self.corrections
    }
    /// Literal parts of the URL that are secrets (a tracker's key in the path, say): redacted
    /// from debug output and attempt records.
    pub fn secrets(&self) -> &[String] {
        self.template.secrets()
    }
    /// How its requests are signed, if they are ([`crate::signing`]).
    pub fn signing(&self) -> Option<&Signing> {
        self.signing.as_ref()
    }
    /// This postback with its signing secrets redacted: what audit entries record.
    pub(crate) fn signing_redacted(&self) -> Postback {
        let mut p = self.clone();
        p.signing = p.signing.as_ref().map(Signing::redacted);
        p
    }
    /// The URL (or code) expanded with [`SampleValues`](crate::template::SampleValues), with
    /// `{delivery_id}` written exactly as a send writes it: the key of a sample trigger for this
    /// postback.
    pub fn preview(&self) -> Result<String, ExpandError> {
        let key = DeliveryKey::new(TriggerId::sample(), self.id, self.sample_purpose(), 0);
        let id = key.to_string();
        self.template.expand(&crate::template::WithDeliveryId::new(
            &crate::template::SampleValues,
            &id,
        ))
    }

    /// The purpose of a delivery of this postback for a sample trigger.
    fn sample_purpose(&self) -> Purpose {
        Purpose::Trigger(match self.kind {
            Kind::Conversion => TriggerKind::Conversion,
            Kind::Cpc => TriggerKind::CpcClick,
            Kind::Event { event } => TriggerKind::Event {
                event: event.unwrap_or(EventId::new(3)),
            },
        })
    }

    /// Bytes this postback holds on the heap (capacity planning).
    pub fn heap_bytes(&self) -> usize {
        self.description.len() + self.template.heap_bytes()
    }
}

/// The catalogue for changing a postback: its template's custom macros, and as click ids the
/// standard ones plus any its catalogue added.
fn rebuild_catalog(template: &Template) -> Catalog {
    let mut catalog = template.catalog();
    let mut click: Vec<_> = Catalog::standard().click_id_macros().to_vec();
    let mut seen: std::collections::BTreeSet<_> = click.iter().copied().collect();
    for m in catalog.click_id_macros() {
        if seen.insert(*m) {
            click.push(*m);
        }
    }
    catalog.set_click_id_macros(click);
    catalog
}

/// Builds a [`Postback`], refusing invalid combinations with a [`ConfigError`].
///
/// Unset choices default as the seeds describe: a CPC postback becomes Specific and
/// server-to-server; otherwise the level follows from the ids given (partner and offer:
/// Specific; partner only: PartnerGlobal; offer only: OfferGlobal) and the method is
/// server-to-server GET.
#[derive(Clone)]
#[must_use]
pub struct PostbackBuilder {
    id: PostbackId,
    partner: Option<PartnerId>,
    offer: Option<OfferId>,
    level: Option<Level>,
    kind: Kind,
    method: Option<Method>,
    status: Status,
    description: String,
    delay: Duration,
    source: Option<String>,
    options: Options,
    catalog: Option<Catalog>,
    /// The already-parsed template, reused when the source and parsing inputs did not change.
    template: Option<Template>,
    response_check: Option<ResponseCheck>,
    secrets: Vec<String>,
    corrections: Corrections,
    signing: Option<Signing>,
}

impl fmt::Debug for PostbackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostbackBuilder")
            .field("id", &self.id)
            .field("partner", &self.partner)
            .field("offer", &self.offer)
            .field("level", &self.level)
            .field("kind", &self.kind)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl PostbackBuilder {
    fn new(id: PostbackId) -> Self {
        PostbackBuilder {
            id,
            partner: None,
            offer: None,
            level: None,
            kind: Kind::Conversion,
            method: None,
            status: Status::Active,
            description: String::new(),
            delay: Duration::ZERO,
            source: None,
            options: Options::default(),
            catalog: None,
            template: None,
            response_check: None,
            secrets: Vec::new(),
            corrections: Corrections::none(),
            signing: None,
        }
    }

    /// The partner.
    pub fn partner(mut self, p: PartnerId) -> Self {
        self.partner = Some(p);
        self
    }
    /// Clear the partner.
    pub fn no_partner(mut self) -> Self {
        self.partner = None;
        self
    }
    /// The offer (or smartlink).
    pub fn offer(mut self, o: OfferId) -> Self {
        self.offer = Some(o);
        self
    }
    /// Clear the offer.
    pub fn no_offer(mut self) -> Self {
        self.offer = None;
        self
    }
    /// The level; unset, it follows from the ids (or is Specific for CPC).
    pub fn level(mut self, l: Level) -> Self {
        self.level = Some(l);
        self
    }
    /// What fires it (default: conversion).
    pub fn kind(mut self, k: Kind) -> Self {
        self.kind = k;
        self
    }
    /// How it is delivered (default: server-to-server GET).
    pub fn method(mut self, m: Method) -> Self {
        self.method = Some(m);
        self
    }
    /// The status (default: active).
    pub fn status(mut self, s: Status) -> Self {
        self.status = s;
        self
    }
    /// A description for people.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }
    /// Fire this long after the trigger (server-to-server only, at most 5 minutes).
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// The postback URL (or, for [`Method::HtmlCode`], the code).
    pub fn url(mut self, u: impl Into<String>) -> Self {
        self.source = Some(u.into());
        self.template = None;
        self
    }
    /// The HTML or JavaScript code of an HTML postback; same as [`url`](Self::url).
    pub fn code(self, c: impl Into<String>) -> Self {
        self.url(c)
    }
    /// Template options: dialect, unknown and empty policies, currency order.
    pub fn template_options(mut self, o: Options) -> Self {
        self.options = o;
        self.template = None;
        self
    }
    /// A catalogue with the network's own macros or click-id choice.
    pub fn catalog(mut self, c: Catalog) -> Self {
        self.catalog = Some(c);
        self.template = None;
        self
    }

    /// Check response bodies (for receivers that answer 200 on rejection).
    pub fn response_check(mut self, c: ResponseCheck) -> Self {
        self.response_check = Some(c);
        self
    }

    /// Tell the partner of these status changes of a conversion after it fired (off by
    /// default). Needs a server-to-server postback whose URL sends `{conversion_status}`.
    pub fn corrections(mut self, c: Corrections) -> Self {
        self.corrections = c;
        self
    }

    /// Mark literal text of the URL as a secret, to be redacted from debug output and attempt
    /// records (query values named like `token` or `key` are redacted anyway). At most
    /// [`MAX_SECRETS`]: [`build`](Self::build) refuses more.
    pub fn secret(mut self, s: impl Into<String>) -> Self {
        let s = s.into();
        // Past the limit the build refuses anyway: stop comparing, so a caller adding a million
        // secrets costs a million pushes, not a million scans.
        if !s.is_empty() && (self.secrets.len() > MAX_SECRETS || !self.secrets.contains(&s)) {
            self.secrets.push(s);
        }
        self
    }

    /// Sign every request ([`crate::signing`]), or not (`None`, the default). Without the crate's
    /// `signing` feature, [`build`](Self::build) refuses a postback that asks for signing.
    pub fn signing(mut self, s: impl Into<Option<Signing>>) -> Self {
        self.signing = s.into();
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Postback, ConfigError> {
        let (level, method) = if self.kind == Kind::Cpc {
            let level = self.level.unwrap_or(Level::Specific);
            if level != Level::Specific {
                return Err(ConfigError::CpcNotSpecific(level));
            }
            let method = self.method.unwrap_or(Method::S2S);
            if !method.is_server_to_server() {
                return Err(ConfigError::CpcNotServerToServer(method));
            }
            (level, method)
        } else {
            let level = match (self.level, self.partner, self.offer) {
                (Some(l), _, _) => l,
                (None, Some(_), Some(_)) => Level::Specific,
                (None, Some(_), None) => Level::PartnerGlobal,
                (None, None, Some(_)) => Level::OfferGlobal,
                (None, None, None) => return Err(ConfigError::MissingScope),
            };
            (level, self.method.unwrap_or(Method::S2S))
        };
        let scope = match (level, self.partner, self.offer) {
            (Level::PartnerGlobal, Some(partner), None) => Scope::PartnerGlobal { partner },
            (Level::PartnerGlobal, Some(_), Some(_)) => return Err(ConfigError::UnexpectedOffer),
            (Level::OfferGlobal, None, Some(offer)) => Scope::OfferGlobal { offer },
            (Level::OfferGlobal, Some(_), _) => return Err(ConfigError::UnexpectedPartner),
            (Level::Specific, Some(partner), Some(offer)) => Scope::Specific { partner, offer },
            (Level::OfferGlobal | Level::Specific, _, None) => {
                return Err(ConfigError::MissingOffer(level));
            }
            (Level::PartnerGlobal | Level::Specific, None, _) => {
                return Err(ConfigError::MissingPartner(level));
            }
        };
        if self.delay > MAX_DELAY {
            return Err(ConfigError::DelayTooLong(self.delay));
        }
        if !self.delay.is_zero() && !method.is_server_to_server() {
            return Err(ConfigError::DelayOnPixel(method));
        }
        let chars = self.description.chars().count();
        if chars > 1000 {
            return Err(ConfigError::DescriptionTooLong(chars));
        }
        if self.secrets.len() > MAX_SECRETS {
            return Err(ConfigError::TooManySecrets {
                count: self.secrets.len(),
                max: MAX_SECRETS,
            });
        }
        let context = if method == Method::HtmlCode {
            Context::Html
        } else {
            Context::Url
        };
        let template = match self.template {
            Some(t) if t.context() == context => t,
            _ => {
                let source = self.source.as_deref().filter(|s| !s.trim().is_empty());
                let source = source.ok_or(ConfigError::MissingUrl)?;
                let catalog = self.catalog.as_ref().cloned().unwrap_or_default();
                Template::compile(source, context, &catalog, self.options)?
            }
        };
        if method.is_server_to_server() && !template.has_click_id() {
            if let Some(m) = template.click_id_in_fragment() {
                return Err(ConfigError::ClickIdInFragment(format!(
                    "{{{}}}",
                    template.macro_name(m)
                )));
            }
            let catalog = self.catalog.unwrap_or_else(|| template.catalog());
            let names: Vec<String> = catalog
                .click_id_macros()
                .iter()
                .filter_map(|m| catalog.name(*m).map(|n| format!("{{{n}}}")))
                .collect();
            return Err(ConfigError::MissingClickId(names.join(", ")));
        }
        if self.corrections.is_on() {
            if self.kind == Kind::Cpc {
                return Err(ConfigError::CorrectionsOnCpc);
            }
            if !method.is_server_to_server() {
                return Err(ConfigError::CorrectionsNotServerToServer(method));
            }
            if !template
                .macros()
                .any(|m| m == crate::template::Macro::CONVERSION_STATUS)
            {
                return Err(ConfigError::CorrectionsWithoutStatus);
            }
        }
        if let Some(s) = &self.signing {
            s.check_for(method, &template)?;
        }
        Ok(Postback {
            id: self.id,
            scope,
            kind: self.kind,
            method,
            status: self.status,
            description: self.description,
            delay: self.delay,
            template: template.with_secrets(self.secrets),
            response_check: self.response_check,
            corrections: self.corrections,
            signing: self.signing,
        })
    }
}

/// The serialized shape of a [`Postback`]; deserializing validates through the builder.
#[derive(Serialize, Deserialize)]
struct PostbackData {
    id: PostbackId,
    #[serde(flatten)]
    scope: Scope,
    kind: Kind,
    method: Method,
    status: Status,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default)]
    delay_ms: u64,
    template: Template,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_check: Option<ResponseCheck>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "secrets_at_most"
    )]
    secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Corrections::is_default")]
    corrections: Corrections,
    /// With its secrets: stores and snapshots rebuild signing postbacks from this form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signing: Option<Signing>,
}

/// At most [`MAX_SECRETS`] secrets, refused while reading.
pub(crate) fn secrets_at_most<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    crate::template::AtMost::<String, MAX_SECRETS>::deserialize_as(d, "secrets").map(|v| v.0)
}

impl From<Postback> for PostbackData {
    fn from(p: Postback) -> Self {
        let secrets = p.secrets().to_vec();
        PostbackData {
            id: p.id,
            scope: p.scope,
            kind: p.kind,
            method: p.method,
            status: p.status,
            description: p.description,
            delay_ms: u64::try_from(p.delay.as_millis()).unwrap_or(u64::MAX),
            template: p.template,
            response_check: p.response_check,
            secrets,
            corrections: p.corrections,
            signing: p.signing,
        }
    }
}

impl TryFrom<PostbackData> for Postback {
    type Error = ConfigError;
    fn try_from(d: PostbackData) -> Result<Self, Self::Error> {
        let mut b = Postback::builder(d.id)
            .level(d.scope.level())
            .kind(d.kind)
            .method(d.method)
            .status(d.status)
            .description(d.description)
            .delay(Duration::from_millis(d.delay_ms));
        b.partner = d.scope.partner();
        b.offer = d.scope.offer();
        b.options = d.template.options();
        b.source = Some(d.template.as_str().to_owned());
        b.template = Some(d.template);
        b.response_check = d.response_check;
        b.corrections = d.corrections;
        b.signing = d.signing;
        // Through `secret`, so a stored list is cleaned as a built one is (no empty or repeated
        // entries).
        for secret in d.secrets {
            b = b.secret(secret);
        }
        b.build()
    }
}
