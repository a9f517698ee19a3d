//! One firing of one postback as a sans-IO state machine: when to send, what a response means,
//! when to retry, and when to give up. The caller owns the clock and the socket.
//!
//! Call order (quinn-proto style):
//!
//! 1. [`Delivery::new`] with its key, the trigger's values, `now` and the postback's delay. A
//!    delivery keeps the values, not an expanded URL.
//! 2. [`Delivery::poll`]`(now, &ctx)`, with the postback as it is now ([`SendContext`]):
//!    [`Action::Send`] a request expanded from the postback's current template,
//!    [`Action::Unsendable`], [`Action::Wait`] until a time, [`Action::AwaitResponse`],
//!    [`Action::Held`] or [`Action::Finished`].
//! 3. After a `Send`, exactly one [`Delivery::handle_response`]`(now, result, &policy)` with the
//!    response or the transport's [`Failure`] (after an `Unsendable`, its failure); it says what
//!    happens next ([`Progress`]).
//! 4. Back to 2.
//!
//! ```
//! use chrono::{DateTime, Duration as Td};
//! use postback::delivery::{Action, Delivery, DeliveryId, Progress, RetryPolicy, SendContext};
//! use postback::model::{Postback, PartnerId, PostbackId};
//! use postback::registry::Trigger;
//! use postback::template::{Macro, MacroValues, ValueMap};
//!
//! let pb = Postback::builder(PostbackId::new(9)).partner(PartnerId::new(7))
//!     .url("https://t.example/pb?cid={sub1}").build()?;
//! let key = Trigger::conversion(1001, PartnerId::new(7), 42.into()).key(pb.id());
//! let values = ValueMap::new().with(Macro::SUB1, "1").to_stored(&[]);
//! let policy = RetryPolicy::default().jitter(0, 0);
//! let now = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
//! let mut d = Delivery::new(DeliveryId::new(1), key, values, now, std::time::Duration::ZERO);
//!
//! let Action::Send(request) = d.poll(now, &SendContext::new(&pb)) else { unreachable!() };
//! assert_eq!(request.uri(), "https://t.example/pb?cid=1");
//! let response = http::Response::builder().status(503).body(Vec::new())?;
//! let Progress::Retry { at, .. } = d.handle_response(now, Ok(response), &policy)? else { unreachable!() };
//! assert_eq!(at, now + Td::seconds(10));
//! assert!(matches!(d.poll(now, &SendContext::new(&pb)), Action::Wait(t) if t == at));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod health;
mod outcome;
mod policy;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{
    DeliveryKey, HttpMethod, Method, Postback, PostbackId, Purpose, ResponseCheck, TriggerKind,
};
use crate::signing::Signed;
use crate::template::{
    ExpandError, StoredValues, WithDeliveryId, redact_for_record, redact_url_with, scrub_text,
};

pub use health::Health;
pub use outcome::{Next, Outcome, on_operation, settle};
pub(crate) use policy::add;
pub use policy::{Classifier, DEFAULT_SCHEDULE, DisablePolicy, OnFailure, RetryPolicy};

/// How much of a response body an attempt record keeps.
pub const BODY_PREFIX: usize = 4096;

/// The handle of one delivery in the place that keeps it (the engine, a store's row id): what
/// [`Engine::handle_response`](crate::engine::Engine::handle_response) takes back. Receivers never
/// see it; they see the [`DeliveryKey`], which is the same in every process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(u64);

impl DeliveryId {
    /// Wrap a raw id.
    pub const fn new(id: u64) -> Self {
        DeliveryId(id)
    }
    /// The raw id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeliveryId({})", self.0)
    }
}

/// How a transport failed to get a response, as the transport reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Failure {
    /// No response in time.
    Timeout,
    /// The connection could not be made or broke.
    Connect(String),
    /// The name did not resolve.
    Dns(String),
    /// The TLS handshake failed.
    Tls(String),
    /// Refused locally: the address is forbidden by the network policy. Never counted.
    Forbidden(String),
    /// Our own error (client misconfigured, request could not be built). Never counted.
    Local(String),
    /// No result came back: the sender stopped (a crash, a restart) or the request outlived its
    /// lease. Never counted; the delivery is due again at once.
    Interrupted,
}

impl Failure {
    /// The class recorded for it.
    pub fn class(&self) -> FailureClass {
        match self {
            Failure::Timeout => FailureClass::Timeout,
            Failure::Connect(_) => FailureClass::Connect,
            Failure::Dns(_) => FailureClass::Dns,
            Failure::Tls(_) => FailureClass::Tls,
            Failure::Forbidden(_) => FailureClass::Forbidden,
            Failure::Local(_) => FailureClass::Local,
            Failure::Interrupted => FailureClass::Interrupted,
        }
    }

    fn detail(&self) -> &str {
        match self {
            Failure::Timeout => "timed out",
            Failure::Interrupted => "no result came back (sender stopped or lease ran out)",
            Failure::Connect(s)
            | Failure::Dns(s)
            | Failure::Tls(s)
            | Failure::Forbidden(s)
            | Failure::Local(s) => s,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class(), self.detail())
    }
}

impl std::error::Error for Failure {}

/// The failure taxonomy recorded on attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "class", content = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureClass {
    /// A non-2xx status; 3xx included, since redirects are never followed.
    Status(u16),
    /// No response in time.
    Timeout,
    /// Connection failed.
    Connect,
    /// Name resolution failed.
    Dns,
    /// TLS failed.
    Tls,
    /// A 2xx whose body failed the postback's response check.
    BodyCheck,
    /// Refused by the network policy. Never counted.
    Forbidden,
    /// Our own error. Never counted.
    Local,
    /// No result came back (our sender stopped). Never counted.
    Interrupted,
    /// The partner's server refused the request itself as too large (413, 414 or 431): a value
    /// of ours caused it. Never counted; the delivery ends.
    Rejected(u16),
}

impl FailureClass {
    /// Whether it was caused by the receiving side and so counts toward the limits.
    pub const fn counts(&self) -> bool {
        !matches!(
            self,
            FailureClass::Forbidden
                | FailureClass::Local
                | FailureClass::Interrupted
                | FailureClass::Rejected(_)
        )
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureClass::Status(s) => write!(f, "HTTP {s}"),
            FailureClass::Timeout => f.write_str("timeout"),
            FailureClass::Connect => f.write_str("connect"),
            FailureClass::Dns => f.write_str("dns"),
            FailureClass::Tls => f.write_str("tls"),
            FailureClass::BodyCheck => f.write_str("response body check failed"),
            FailureClass::Forbidden => f.write_str("refused by network policy"),
            FailureClass::Local => f.write_str("local error"),
            FailureClass::Interrupted => f.write_str("interrupted"),
            FailureClass::Rejected(s) => write!(f, "HTTP {s}: request refused as too large"),
        }
    }
}

/// One attempt, as a support screen shows it ("View Debug Info").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The URL that actually went out (the request's URI), with secrets redacted.
    pub url: String,
    /// The response status, if a response came.
    pub status: Option<u16>,
    /// The first [`BODY_PREFIX`] bytes of the response body (lossy UTF-8), or the transport's
    /// error text.
    pub body: String,
    /// From send to response, by the caller's clock.
    pub duration: Duration,
    /// Why it failed, if it did.
    pub failure: Option<FailureClass>,
    /// Whether the failure counted toward the limits.
    pub counted: bool,
}

/// One request of a delivery as plain data, checked when made (and when deserialized), so
/// building its `http::Request` cannot fail. [`Delivery::request`] makes it anew for every send.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OutboundData")]
pub struct Outbound {
    method: HttpMethod,
    url: String,
    headers: Vec<(String, String)>,
    /// Literal secrets of the URL, redacted from records and debug output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<String>,
}

/// The serialized form of [`Outbound`], checked on the way in.
#[derive(Deserialize)]
struct OutboundData {
    method: HttpMethod,
    url: String,
    headers: Vec<(String, String)>,
    #[serde(default, deserialize_with = "crate::model::secrets_at_most")]
    secrets: Vec<String>,
}

impl TryFrom<OutboundData> for Outbound {
    type Error = RequestError;
    fn try_from(d: OutboundData) -> Result<Self, Self::Error> {
        let mut out = Outbound::new(d.method, d.url)?.with_secrets(d.secrets);
        for (k, v) in &d.headers {
            out = out.header(k, v)?;
        }
        Ok(out)
    }
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("method", &self.method)
            .field("url", &self.redacted_url())
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a delivery's request could not be made from the postback and the delivery's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// A value did not fit its macro.
    #[error(transparent)]
    Expand(#[from] ExpandError),
    /// The expanded request is not sendable.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A value is longer than the network allows: a partner's server would refuse the request
    /// (414), and the failure is ours, not the partner's.
    #[error(
        "the value of {{{name}}} is {len} bytes, over the limit of {max}: shorten it at the source, or raise the limit"
    )]
    ValueTooLong {
        /// The macro.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The postback is a pixel or HTML code: the page renders it, no server sends it.
    #[error(
        "postback {0} is a pixel or HTML code: render it in the page; only server-to-server postbacks are sent"
    )]
    NotServerToServer(PostbackId),
    /// The postback signs its requests and this one cannot be signed (the crate lacks its
    /// `signing` feature, or the secrets were redacted): it is not sent unsigned.
    #[error(transparent)]
    Signing(#[from] crate::signing::SigningError),
}

/// What a send needs besides the delivery: the postback as it is now, and the network's settings.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SendContext<'a> {
    /// The postback, as it is at the moment of sending.
    pub postback: &'a Postback,
    /// Send the delivery key in this header too (e.g. `Idempotency-Key`).
    pub idempotency_header: Option<&'a str>,
    /// Refuse to send a value longer than this many bytes (see
    /// [`EngineConfig::max_value_len`](crate::engine::EngineConfig::max_value_len)).
    pub max_value_len: Option<usize>,
}

impl<'a> SendContext<'a> {
    /// Send for `postback`, no idempotency header.
    pub fn new(postback: &'a Postback) -> Self {
        SendContext {
            postback,
            idempotency_header: None,
            max_value_len: None,
        }
    }

    /// Refuse values longer than `max` bytes.
    #[must_use]
    pub fn max_value_len(mut self, max: Option<usize>) -> Self {
        self.max_value_len = max;
        self
    }

    /// Send the key in header `name` as well.
    #[must_use]
    pub fn idempotency_header(mut self, name: Option<&'a str>) -> Self {
        self.idempotency_header = name;
        self
    }
}

/// A request that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The URL is not a valid request target.
    #[error(
        "the expanded URL is not a valid request target ({0}): check the template and the values"
    )]
    InvalidUrl(String),
    /// A header name or value is invalid.
    #[error("header `{0}` is invalid: use a token name and a visible ASCII value")]
    InvalidHeader(String),
}

impl Outbound {
    /// A request with no headers. The URL is checked now, so sending cannot fail later.
    pub fn new(method: HttpMethod, url: impl Into<String>) -> Result<Outbound, RequestError> {
        let url = url.into();
        http::Uri::try_from(url.as_str()).map_err(|e| RequestError::InvalidUrl(e.to_string()))?;
        Ok(Outbound {
            method,
            url,
            headers: Vec::new(),
            secrets: Vec::new(),
        })
    }

    /// Add a header, checked.
    pub fn header(mut self, name: &str, value: &str) -> Result<Outbound, RequestError> {
        http::HeaderName::try_from(name)
            .map_err(|_| RequestError::InvalidHeader(name.to_owned()))?;
        http::HeaderValue::try_from(value)
            .map_err(|_| RequestError::InvalidHeader(name.to_owned()))?;
        self.headers.push((name.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// Literal parts of the URL to redact from records and debug output (see
    /// [`Postback::secrets`](crate::model::Postback::secrets)).
    #[must_use]
    pub fn with_secrets(mut self, secrets: Vec<String>) -> Outbound {
        self.secrets = secrets;
        self
    }

    /// The URL with secrets redacted: secret-looking query values and the named secrets.
    pub fn redacted_url(&self) -> String {
        redact_url_with(&self.url, &self.secrets)
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The method.
    pub fn method(&self) -> HttpMethod {
        self.method
    }

    /// Build the `http` request.
    pub fn to_request(&self) -> Result<http::Request<Vec<u8>>, RequestError> {
        let mut b = http::Request::builder()
            .method(self.method.as_http())
            .uri(self.url.as_str());
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(Vec::new())
            .map_err(|e| RequestError::InvalidUrl(e.to_string()))
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// The next attempt is due at `at`.
    Scheduled {
        /// When.
        at: DateTime<Utc>,
    },
    /// Sent at `since`; waiting for [`Delivery::handle_response`].
    InFlight {
        /// When it was handed to the transport.
        since: DateTime<Utc>,
        /// The URL that went out, secrets redacted: what the attempt records.
        #[serde(default)]
        url: String,
    },
    /// Its postback is disabled or paused: kept, not sent, until released.
    Held,
    /// The partner accepted it.
    Delivered {
        /// When.
        at: DateTime<Utc>,
    },
    /// No more attempts.
    GaveUp {
        /// When.
        at: DateTime<Utc>,
        /// Why.
        reason: GiveUpReason,
    },
}

/// Why a delivery stopped trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The policy's counted failures were used up.
    MaxAttempts {
        /// How many counted failures.
        failures: u32,
    },
    /// A failure the classifier marks as terminal.
    Terminal {
        /// The failure.
        failure: FailureClass,
    },
    /// Too many local refusals (network policy, own errors) since creation or the last release.
    LocalRefusals {
        /// How many.
        refusals: u32,
    },
    /// A test fire is attempted once.
    TestFire,
    /// The postback was deleted.
    PostbackDeleted,
}

/// What the caller should do now.
// `Send` is the large variant, and it is handed to the caller at once; boxing it would cost an
// allocation per attempt.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
#[must_use]
#[non_exhaustive]
pub enum Action {
    /// Send this request through the transport, then call [`Delivery::handle_response`].
    Send(Outgoing),
    /// The request could not be made (the postback's current template does not expand with
    /// this delivery's values, or the postback is no longer server-to-server): pass this
    /// failure to [`Delivery::handle_response`] now. It never counts toward disabling.
    Unsendable(Failure),
    /// Nothing is due before this time.
    Wait(DateTime<Utc>),
    /// A request is out; waiting for its result.
    AwaitResponse,
    /// Held until released.
    Held,
    /// Done; see [`Delivery::state`].
    Finished,
}

/// A request to send, with the URL as records and `Debug` show it (secret-looking parameters
/// and the postback's literal secrets redacted). Reads as the `http::Request` it holds.
#[derive(Clone)]
pub struct Outgoing {
    request: http::Request<Vec<u8>>,
    shown: String,
}

impl Outgoing {
    /// The request.
    pub fn request(&self) -> &http::Request<Vec<u8>> {
        &self.request
    }
    /// The request, to hand to a transport.
    pub fn into_request(self) -> http::Request<Vec<u8>> {
        self.request
    }
    /// The URL with its secrets redacted: what the attempt records.
    pub fn redacted_url(&self) -> &str {
        &self.shown
    }
    /// The request and the redacted URL, without a copy of either.
    pub(crate) fn into_parts(self) -> (http::Request<Vec<u8>>, String) {
        (self.request, self.shown)
    }
}

impl std::ops::Deref for Outgoing {
    type Target = http::Request<Vec<u8>>;
    fn deref(&self) -> &Self::Target {
        &self.request
    }
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.request.method(), self.shown)
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Send(r) => write!(f, "Send({r:?})"),
            Action::Unsendable(e) => write!(f, "Unsendable({e})"),
            Action::Wait(t) => write!(f, "Wait({t})"),
            Action::AwaitResponse => f.write_str("AwaitResponse"),
            Action::Held => f.write_str("Held"),
            Action::Finished => f.write_str("Finished"),
        }
    }
}

/// What a result did to the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[must_use]
#[non_exhaustive]
pub enum Progress {
    /// Accepted by the partner.
    Delivered {
        /// Attempts it took.
        attempts: u32,
    },
    /// Failed; the next attempt is due at `at`.
    Retry {
        /// When.
        at: DateTime<Utc>,
        /// Why the attempt failed.
        failure: FailureClass,
        /// Whether it counted.
        counted: bool,
        /// Counted failures so far.
        failures: u32,
    },
    /// Failed, and no attempt follows.
    GaveUp {
        /// Why.
        reason: GiveUpReason,
        /// The last failure.
        failure: FailureClass,
    },
}

/// A result given to a delivery that was not waiting for one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// No request is out.
    #[error(
        "delivery {0} has no request in flight: pass each response once, after the Send that produced it"
    )]
    NotInFlight(DeliveryId),
    /// Only held deliveries can be released.
    #[error("delivery {0} is not held: only held deliveries can be released")]
    NotHeld(DeliveryId),
    /// Only a delivery that gave up on its attempts, a terminal failure or local refusals can be
    /// replayed.
    #[error(
        "delivery {0} cannot be replayed: only deliveries that gave up (attempts used, a terminal failure, local refusals) can; test fires and deliveries of deleted postbacks cannot"
    )]
    NotReplayable(DeliveryId),
}

/// One firing of one postback. See the [module docs](self) for the call order.
///
/// It keeps the values it was made from ([`StoredValues`]) and its [`DeliveryKey`]; every send
/// expands the postback's template as it is then, so a retry or a replay after the partner fixed
/// its URL goes to the new one. `Debug` shows which macros it holds, never their values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    id: DeliveryId,
    key: DeliveryKey,
    #[serde(default, skip_serializing_if = "StoredValues::is_empty")]
    values: StoredValues,
    created: DateTime<Utc>,
    state: State,
    /// Counted failures since creation or the last release.
    failures: u32,
    /// Local refusals since creation or the last release.
    refusals: u32,
    /// Attempts made before the last release: the retry schedule restarts after a release.
    #[serde(default, skip_serializing_if = "is_zero")]
    released_after: u32,
    attempts: Vec<Attempt>,
    /// The response check of the postback when the request in flight was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    check: Option<ResponseCheck>,
    /// The secret parts of the request in flight, scrubbed from what its attempt records.
    #[serde(skip)]
    scrub: Scrub,
}

/// Secret parts of a request in flight: kept in memory only, never serialized or shown, and not
/// part of a delivery's identity (a restored delivery is equal without them).
#[derive(Clone, Default)]
struct Scrub(Vec<String>);

impl PartialEq for Scrub {
    fn eq(&self, _: &Scrub) -> bool {
        true
    }
}

impl Eq for Scrub {}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("values", &self.values)
            .field("created", &self.created)
            .field("state", &self.state)
            .field("failures", &self.failures)
            .field("refusals", &self.refusals)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery whose first attempt is due at `now + delay`. Its postback is
    /// [`key.postback()`](DeliveryKey::postback); a test fire is a key of purpose
    /// [`Purpose::Test`].
    pub fn new(
        id: DeliveryId,
        key: DeliveryKey,
        values: StoredValues,
        now: DateTime<Utc>,
        delay: Duration,
    ) -> Delivery {
        Delivery {
            id,
            key,
            values,
            created: now,
            state: State::Scheduled {
                at: add(now, delay),
            },
            failures: 0,
            refusals: 0,
            released_after: 0,
            attempts: Vec::new(),
            check: None,
            scrub: Scrub::default(),
        }
    }

    /// Its handle.
    pub fn id(&self) -> DeliveryId {
        self.id
    }
    /// Its stable key: `{delivery_id}`, and the idempotency header.
    pub fn key(&self) -> &DeliveryKey {
        &self.key
    }
    /// The postback it fires.
    pub fn postback(&self) -> PostbackId {
        self.key.postback()
    }
    /// The values it was made from.
    pub fn values(&self) -> &StoredValues {
        &self.values
    }
    /// When it was created.
    pub fn created(&self) -> DateTime<Utc> {
        self.created
    }
    /// Where it stands.
    pub fn state(&self) -> &State {
        &self.state
    }
    /// Every attempt so far: the debug info.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }
    /// Counted failures since creation or the last release.
    pub fn failures(&self) -> u32 {
        self.failures
    }
    /// Whether it is a test fire: attempted once, never retried, never counted.
    pub fn is_test(&self) -> bool {
        self.key.purpose() == Purpose::Test
    }
    /// Whether it is hidden from reporting (CPC clicks).
    pub fn is_hidden_from_reports(&self) -> bool {
        self.key.purpose() == Purpose::Trigger(TriggerKind::CpcClick)
    }
    /// Whether it has finished (delivered or gave up).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Delivered { .. } | State::GaveUp { .. })
    }
    /// When the next attempt is due, if one is scheduled.
    pub fn due(&self) -> Option<DateTime<Utc>> {
        match self.state {
            State::Scheduled { at } => Some(at),
            _ => None,
        }
    }

    /// The request a send makes now: the postback's current template expanded with this
    /// delivery's values and key, without the `#fragment` (never sent), plus the idempotency
    /// header. Pure: previews and stores call it too. It carries no signature, which depends on
    /// the time of the send: [`poll`](Self::poll) signs what it sends (see [`crate::signing`]).
    pub fn request(&self, ctx: &SendContext<'_>) -> Result<Outbound, RenderError> {
        render(&self.key, &self.values, ctx)
    }

    /// The `http` request of a send and the URL its attempt records: what [`request`]
    /// makes, built straight into an `http::Request` (the URL is parsed once).
    ///
    /// [`request`]: Self::request
    fn http_request(
        &self,
        now: DateTime<Utc>,
        ctx: &SendContext<'_>,
        rendered: Option<Rendered>,
    ) -> Result<(Outgoing, Vec<String>), RenderError> {
        let (method, url, uri, key) = match rendered {
            Some(r) => (r.method, r.url, Some(r.uri), r.key),
            None => {
                let (method, url, key) = render_url(&self.key, &self.values, ctx)?;
                (method, url, None, key)
            }
        };
        // Signed with this send's time, after the request is rendered (also when the plan
        // rendered it): a query-style signature changes the URL, the headers style adds headers.
        let (url, uri, signed) = match ctx.postback.signing() {
            None => (url, uri, None),
            Some(s) => match s.apply(&key, now.timestamp(), method, url)? {
                Signed::Headers {
                    url,
                    timestamp,
                    signature,
                } => (url, uri, Some((timestamp, signature))),
                Signed::Url(url) => (url, None, None),
            },
        };
        let (shown, parts) = redact_for_record(&url, ctx.postback.secrets());
        let b = http::Request::builder().method(method.as_http());
        let mut b = match uri {
            Some(uri) => b.uri(uri),
            None => b.uri(url),
        };
        if let Some(h) = ctx.idempotency_header {
            // The key is URL-unreserved text, always a valid value: only the name can be wrong.
            let name = http::HeaderName::try_from(h)
                .map_err(|_| RequestError::InvalidHeader(h.to_owned()))?;
            b = b.header(name, key.as_str());
        }
        if let Some((timestamp, signature)) = signed {
            // The key is URL-unreserved text, the timestamp digits and the signature base64:
            // always valid header values.
            use crate::signing::{ID_NAME, SIGNATURE_NAME, TIMESTAMP_NAME};
            b = b
                .header(ID_NAME, key.as_str())
                .header(TIMESTAMP_NAME, timestamp)
                .header(SIGNATURE_NAME, signature);
        }
        let req = b
            .body(Vec::new())
            .map_err(|e| RequestError::InvalidUrl(e.to_string()))?;
        Ok((
            Outgoing {
                request: req,
                shown,
            },
            parts,
        ))
    }

    /// What to do at `now`, with the postback as it is now. A returned [`Action::Send`] or
    /// [`Action::Unsendable`] moves the delivery in flight.
    pub fn poll(&mut self, now: DateTime<Utc>, ctx: &SendContext<'_>) -> Action {
        self.poll_rendered(now, ctx, None)
    }

    /// [`poll`](Self::poll), with the request [`check_rendered`] made for this delivery and
    /// `ctx`'s postback as it is now, if the caller kept it.
    pub(crate) fn poll_rendered(
        &mut self,
        now: DateTime<Utc>,
        ctx: &SendContext<'_>,
        rendered: Option<Rendered>,
    ) -> Action {
        match self.state {
            State::Scheduled { at } if at <= now => {
                let made = self.http_request(now, ctx, rendered);
                self.check = ctx.postback.response_check().cloned();
                match made {
                    Ok((out, parts)) => {
                        self.state = State::InFlight {
                            since: now,
                            url: out.shown.clone(),
                        };
                        self.scrub = Scrub(parts);
                        Action::Send(out)
                    }
                    Err(e) => {
                        let url = redact_url_with(
                            ctx.postback.template().as_str(),
                            ctx.postback.secrets(),
                        );
                        self.state = State::InFlight { since: now, url };
                        Action::Unsendable(Failure::Local(e.to_string()))
                    }
                }
            }
            State::Scheduled { at } => Action::Wait(at),
            State::InFlight { .. } => Action::AwaitResponse,
            State::Held => Action::Held,
            State::Delivered { .. } | State::GaveUp { .. } => Action::Finished,
        }
    }

    /// Give the result of the request last sent. `Ok` is any HTTP response (the delivery
    /// classifies it); `Err` is the transport's failure.
    pub fn handle_response(
        &mut self,
        now: DateTime<Utc>,
        result: Result<http::Response<Vec<u8>>, Failure>,
        policy: &RetryPolicy,
    ) -> Result<Progress, DeliveryError> {
        let State::InFlight { .. } = self.state else {
            return Err(DeliveryError::NotInFlight(self.id));
        };
        match result {
            Ok(resp) => Ok(self.handle_http(now, &resp, policy)),
            Err(f) => Ok(self.handle_failure(now, f, policy)),
        }
    }

    fn handle_http(
        &mut self,
        now: DateTime<Utc>,
        resp: &http::Response<Vec<u8>>,
        policy: &RetryPolicy,
    ) -> Progress {
        let status = resp.status().as_u16();
        let body = resp.body();
        let failure = if matches!(status, 413 | 414 | 431) {
            Some(FailureClass::Rejected(status))
        } else if !resp.status().is_success() {
            Some(FailureClass::Status(status))
        } else if self.check.as_ref().is_some_and(|c| !c.accepts(body)) {
            Some(FailureClass::BodyCheck)
        } else {
            None
        };
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        let text = scrub_text(body_prefix(body), &self.scrub.0);
        self.settle(now, Some(status), text, failure, retry_after, policy)
    }

    fn handle_failure(&mut self, now: DateTime<Utc>, f: Failure, policy: &RetryPolicy) -> Progress {
        let text: String = f.detail().chars().take(BODY_PREFIX).collect();
        let text = scrub_text(text, &self.scrub.0);
        self.settle(now, None, text, Some(f.class()), None, policy)
    }

    fn settle(
        &mut self,
        now: DateTime<Utc>,
        status: Option<u16>,
        body: String,
        failure: Option<FailureClass>,
        retry_after: Option<DateTime<Utc>>,
        policy: &RetryPolicy,
    ) -> Progress {
        let (since, url) = match &mut self.state {
            State::InFlight { since, url } => (*since, std::mem::take(url)),
            _ => (now, String::new()),
        };
        let counted = failure.is_some_and(|f| f.counts());
        let number = (self.attempts.len() as u32).saturating_add(1);
        // Most deliveries take one attempt: room for exactly one first, not the default four.
        if self.attempts.is_empty() {
            self.attempts.reserve_exact(1);
        }
        self.attempts.push(Attempt {
            number,
            at: since,
            url,
            status,
            body,
            duration: (now - since).to_std().unwrap_or_default(),
            failure,
            counted,
        });
        let Some(failure) = failure else {
            self.state = State::Delivered { at: now };
            return Progress::Delivered { attempts: number };
        };
        let give_up = |this: &mut Delivery, reason| {
            this.state = State::GaveUp { at: now, reason };
            Progress::GaveUp { reason, failure }
        };
        self.scrub = Scrub::default();
        if self.is_test() {
            return give_up(self, GiveUpReason::TestFire);
        }
        // Our request, not the partner's server, is what failed: this delivery ends, reported,
        // and the partner's postback is not blamed.
        if matches!(failure, FailureClass::Rejected(_)) {
            return give_up(self, GiveUpReason::Terminal { failure });
        }
        if counted {
            self.failures = self.failures.saturating_add(1);
            if policy.classifier.on(&failure) == OnFailure::GiveUp {
                return give_up(self, GiveUpReason::Terminal { failure });
            }
            if self.failures >= policy.max_attempts {
                return give_up(
                    self,
                    GiveUpReason::MaxAttempts {
                        failures: self.failures,
                    },
                );
            }
        } else {
            self.refusals = self.refusals.saturating_add(1);
            if self.refusals >= policy.max_local_refusals {
                return give_up(
                    self,
                    GiveUpReason::LocalRefusals {
                        refusals: self.refusals,
                    },
                );
            }
        }
        // The schedule advances with every attempt, counted or not, so a local fault cannot
        // turn into a tight loop.
        // `released_after` counts attempts before the last release, so this is 1 right after one
        // (saturating: a hand-edited state must not underflow).
        let step = number.saturating_sub(self.released_after);
        // An interrupted request is sent again at once: nothing was wrong with it or the partner.
        let at = if failure == FailureClass::Interrupted {
            now
        } else {
            policy.next_attempt_at(now, step, self.id, retry_after)
        };
        self.state = State::Scheduled { at };
        Progress::Retry {
            at,
            failure,
            counted,
            failures: self.failures,
        }
    }

    /// Hold: stop sending until [`release`](Self::release). Allowed when scheduled, and after
    /// giving up on attempts (so a disabled postback's last delivery is kept, not lost).
    /// Returns whether it is now held.
    pub fn hold(&mut self) -> bool {
        match self.state {
            State::Scheduled { .. }
            | State::Held
            | State::GaveUp {
                reason: GiveUpReason::MaxAttempts { .. },
                ..
            } => {
                self.state = State::Held;
                true
            }
            _ => false,
        }
    }

    /// Release a held delivery with a fresh attempt budget; its next attempt is due at `now`.
    pub fn release(&mut self, now: DateTime<Utc>) -> Result<(), DeliveryError> {
        if self.state != State::Held {
            return Err(DeliveryError::NotHeld(self.id));
        }
        self.state = State::Scheduled { at: now };
        self.failures = 0;
        self.refusals = 0;
        self.released_after = u32::try_from(self.attempts.len()).unwrap_or(u32::MAX);
        Ok(())
    }

    /// Send a delivery that gave up again (a manager's replay, once the partner is fixed), with a
    /// fresh attempt budget, due at `now`. Only a delivery that gave up on its attempts, on a
    /// terminal failure or on local refusals can be replayed: a test fire and a delivery of a
    /// deleted postback cannot.
    pub fn replay(&mut self, now: DateTime<Utc>) -> Result<(), DeliveryError> {
        match self.state {
            State::GaveUp {
                reason:
                    GiveUpReason::MaxAttempts { .. }
                    | GiveUpReason::Terminal { .. }
                    | GiveUpReason::LocalRefusals { .. },
                ..
            } => {
                self.state = State::Held;
                self.release(now)
            }
            _ => Err(DeliveryError::NotReplayable(self.id)),
        }
    }

    /// The request in flight will get no answer this process sees (a restart, a lost lease):
    /// recorded as an [`Interrupted`](FailureClass::Interrupted) attempt, which never counts, and
    /// due again at `now`. The receiver drops the duplicate by the key. A delivery interrupted
    /// `max_local_refusals` times gives up, so a request that crashes its sender ends. `None`
    /// when it was not in flight.
    pub fn interrupted(&mut self, now: DateTime<Utc>, policy: &RetryPolicy) -> Option<Progress> {
        match self.state {
            State::InFlight { .. } => Some(self.handle_failure(now, Failure::Interrupted, policy)),
            _ => None,
        }
    }

    /// End a delivery whose postback was deleted.
    pub fn abandon(&mut self, now: DateTime<Utc>) {
        if !self.is_finished() {
            self.state = State::GaveUp {
                at: now,
                reason: GiveUpReason::PostbackDeleted,
            };
        }
    }

    /// Drop the values once the delivery is only a record (finished): they may hold secrets,
    /// and nothing sends them again.
    pub fn forget_values(&mut self) {
        self.values = StoredValues::default();
    }

    /// Bytes held on the heap (capacity planning).
    pub fn heap_bytes(&self) -> usize {
        self.values.heap_bytes()
            + self.attempts.capacity() * std::mem::size_of::<Attempt>()
            + self
                .attempts
                .iter()
                .map(|a| a.url.capacity() + a.body.capacity())
                .sum::<usize>()
    }
}

/// The request of a delivery with `key` and `values` for the postback as it is now (see
/// [`Delivery::request`]): pure, so a planner can check a trigger's values before any delivery
/// exists, and a store can build what it sends. Unsigned: a postback that signs its requests is
/// signed by [`Delivery::poll`], with the send's time.
pub fn render(
    key: &DeliveryKey,
    values: &StoredValues,
    ctx: &SendContext<'_>,
) -> Result<Outbound, RenderError> {
    let (http, url, key) = render_url(key, values, ctx)?;
    let mut out = Outbound::new(http, url)?.with_secrets(ctx.postback.secrets().to_vec());
    if let Some(h) = ctx.idempotency_header {
        out = out.header(h, &key)?;
    }
    Ok(out)
}

/// Whether a delivery with `key` and `values` could be sent to the postback as it is now: what
/// [`render`] checks, without building the request (a planner checks every new delivery).
pub fn check(
    key: &DeliveryKey,
    values: &StoredValues,
    ctx: &SendContext<'_>,
) -> Result<(), RenderError> {
    check_rendered(key, values, ctx).map(|_| ())
}

/// [`check`], keeping what it made: the request's method, URL (parsed) and key text, which the
/// delivery's first send can use instead of rendering and parsing them again.
pub(crate) fn check_rendered(
    key: &DeliveryKey,
    values: &StoredValues,
    ctx: &SendContext<'_>,
) -> Result<Rendered, RenderError> {
    let (method, url, key) = render_url(key, values, ctx)?;
    let uri =
        http::Uri::try_from(url.as_str()).map_err(|e| RequestError::InvalidUrl(e.to_string()))?;
    if let Some(s) = ctx.postback.signing() {
        s.ready()?;
    }
    if let Some(h) = ctx.idempotency_header {
        http::HeaderName::try_from(h).map_err(|_| RequestError::InvalidHeader(h.to_owned()))?;
    }
    Ok(Rendered {
        method,
        url,
        uri,
        key,
    })
}

/// A delivery's request as [`check_rendered`] made it from the postback as it was then. Good
/// for a send only while that postback is unchanged and the send context is the same: whoever
/// holds one drops it when the registry changes. `Debug` never shows the URL (it may carry
/// secrets).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    method: HttpMethod,
    url: String,
    uri: http::Uri,
    key: String,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rendered(..)")
    }
}

/// The method, the URL without its fragment, and the key as text.
fn render_url(
    key: &DeliveryKey,
    values: &StoredValues,
    ctx: &SendContext<'_>,
) -> Result<(HttpMethod, String, String), RenderError> {
    let pb = ctx.postback;
    let Method::ServerToServer { http } = pb.method() else {
        return Err(RenderError::NotServerToServer(pb.id()));
    };
    if let Some(max) = ctx.max_value_len {
        for m in pb.template().macros() {
            let len = values.text_len(m);
            if len > max {
                return Err(RenderError::ValueTooLong {
                    name: pb.template().macro_name(m),
                    len,
                    max,
                });
            }
        }
    }
    let key = key.to_text();
    let mut url = pb.template().expand(&WithDeliveryId::new(values, &key))?;
    // Values never hold a raw `#`, so the first one starts the fragment.
    if let Some(i) = url.find('#') {
        url.truncate(i);
    }
    Ok((http, url, key))
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn body_prefix(body: &[u8]) -> String {
    let mut end = body.len().min(BODY_PREFIX);
    // Cut on a character boundary when the body is UTF-8.
    while end > 0 && end < body.len() && (body[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(add(now, Duration::from_secs(secs)));
    }
    DateTime::parse_from_rfc2822(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap()
    }

    fn resp(status: u16) -> Result<http::Response<Vec<u8>>, Failure> {
        Ok(http::Response::builder()
            .status(status)
            .body(b"body".to_vec())
            .unwrap())
    }

    fn postback(url: &str) -> Postback {
        Postback::builder(PostbackId::new(2))
            .partner(crate::model::PartnerId::new(7))
            .url(url)
            .build()
            .unwrap()
    }

    fn key() -> DeliveryKey {
        DeliveryKey::new(
            crate::model::TriggerId::from(1001),
            PostbackId::new(2),
            TriggerKind::Conversion,
            0,
        )
    }

    fn values() -> StoredValues {
        use crate::template::{Macro, MacroValues, ValueMap};
        ValueMap::new().with(Macro::SUB1, "1").to_stored(&[])
    }

    fn pb() -> Postback {
        postback("https://t.example/pb?cid={sub1}&token=s3cret")
    }

    fn delivery() -> Delivery {
        Delivery::new(DeliveryId::new(1), key(), values(), t(0), Duration::ZERO)
    }

    #[test]
    fn a_delay_postpones_the_first_attempt() {
        let pb = pb();
        let ctx = SendContext::new(&pb);
        let mut d = Delivery::new(
            DeliveryId::new(1),
            key(),
            values(),
            t(0),
            Duration::from_secs(60),
        );
        assert!(matches!(d.poll(t(59), &ctx), Action::Wait(at) if at == t(60)));
        assert!(matches!(d.poll(t(60), &ctx), Action::Send(_)));
    }

    #[test]
    fn the_fragment_is_never_sent_and_the_attempt_records_the_uri_that_was() {
        let pb = postback("https://t.example/pb?cid={sub1}&d={delivery_id}#frag-{sub1}");
        let mut d = delivery();
        let Action::Send(req) = d.poll(t(0), &SendContext::new(&pb)) else {
            panic!("not sent")
        };
        assert_eq!(
            req.uri().to_string(),
            "https://t.example/pb?cid=1&d=1001.2.conversion.0"
        );
        let _ = d.handle_response(t(1), resp(200), &RetryPolicy::default());
        assert_eq!(d.attempts()[0].url, req.uri().to_string());
    }

    #[test]
    fn an_interrupted_request_is_due_again_at_once_and_never_counts() {
        let pb = pb();
        let p = RetryPolicy::default();
        let mut d = delivery();
        let _ = d.poll(t(0), &SendContext::new(&pb));
        let progress = d.interrupted(t(5), &p).unwrap();
        assert!(matches!(
            progress,
            Progress::Retry { at, counted: false, failure: FailureClass::Interrupted, .. } if at == t(5)
        ));
        assert_eq!(d.failures(), 0);
        assert_eq!(d.interrupted(t(6), &p), None);
    }

    #[test]
    fn a_response_twice_is_refused() {
        let p = RetryPolicy::default();
        let pb = pb();
        let mut d = delivery();
        let _ = d.poll(t(0), &SendContext::new(&pb));
        assert_eq!(
            d.handle_response(t(1), resp(200), &p),
            Ok(Progress::Delivered { attempts: 1 })
        );
        assert_eq!(
            d.handle_response(t(1), resp(200), &p),
            Err(DeliveryError::NotInFlight(DeliveryId::new(1)))
        );
    }

    #[test]
    fn attempts_record_redacted_url_status_body_and_duration() {
        let p = RetryPolicy::default();
        let pb = pb();
        let mut d = delivery();
        let _ = d.poll(t(0), &SendContext::new(&pb));
        let _ = d.handle_response(t(3), resp(500), &p).unwrap();
        let a = &d.attempts()[0];
        assert_eq!(a.url, "https://t.example/pb?cid=1&token=***");
        assert_eq!(
            (a.status, a.body.as_str(), a.duration),
            (Some(500), "body", Duration::from_secs(3))
        );
        assert_eq!(
            (a.failure, a.counted),
            (Some(FailureClass::Status(500)), true)
        );
    }

    #[test]
    fn bodies_are_cut_at_4_kib_on_a_character_boundary() {
        let body = "é".repeat(3000).into_bytes();
        let s = body_prefix(&body);
        assert!(s.len() <= BODY_PREFIX && s.len() >= BODY_PREFIX - 1);
        assert!(!s.contains('\u{FFFD}'));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("120", t(0)), Some(t(120)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:02:00 GMT", t(0)),
            Some(t(120))
        );
        assert_eq!(parse_retry_after("soon", t(0)), None);
    }
}
