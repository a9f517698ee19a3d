//! One firing of one postback as a sans-IO state machine: when to send, what a response means,
//! when to retry, and when to give up. The caller owns the clock and the socket.
//!
//! Call order (quinn-proto style):
//!
//! 1. [`Delivery::new`] with the expanded request, `now` and the postback's delay.
//! 2. [`Delivery::poll`]`(now)`: [`Action::Send`] a request, [`Action::Wait`] until a time,
//!    [`Action::AwaitResponse`], [`Action::Held`] or [`Action::Finished`].
//! 3. After a `Send`, exactly one [`Delivery::handle_response`]`(now, result, &policy)` with the
//!    response or the transport's [`Failure`]; it says what happens next ([`Progress`]).
//! 4. Back to 2.
//!
//! ```
//! use chrono::{DateTime, Duration as Td};
//! use postback::delivery::{Action, Delivery, DeliveryId, Outbound, Progress, RetryPolicy};
//! use postback::model::{HttpMethod, PostbackId};
//!
//! let policy = RetryPolicy::default().jitter(0, 0);
//! let now = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
//! let req = Outbound::new(HttpMethod::Get, "https://t.example/pb?cid=1")?;
//! let mut d = Delivery::new(DeliveryId::new(1), PostbackId::new(9), req, now, std::time::Duration::ZERO);
//!
//! let Action::Send(request) = d.poll(now) else { unreachable!() };
//! assert_eq!(request.uri(), "https://t.example/pb?cid=1");
//! let response = http::Response::builder().status(503).body(Vec::new())?;
//! let Progress::Retry { at, .. } = d.handle_response(now, Ok(response), &policy)? else { unreachable!() };
//! assert_eq!(at, now + Td::seconds(10));
//! assert!(matches!(d.poll(now), Action::Wait(t) if t == at));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod policy;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{HttpMethod, PostbackId, ResponseCheck};
use crate::template::{redact_url, redact_url_with};

pub(crate) use policy::add;
pub use policy::{Classifier, DEFAULT_SCHEDULE, DisablePolicy, OnFailure, RetryPolicy};

/// How much of a response body an attempt record keeps.
pub const BODY_PREFIX: usize = 4096;

/// The stable id of one delivery: the same on every attempt, so the receiver can drop
/// duplicates caused by late responses. Sent as `{delivery_id}` and, optionally, as an
/// `Idempotency-Key` header.
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
        }
    }

    fn detail(&self) -> &str {
        match self {
            Failure::Timeout => "timed out",
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
}

impl FailureClass {
    /// Whether it was caused by the receiving side and so counts toward the limits.
    pub const fn counts(&self) -> bool {
        !matches!(self, FailureClass::Forbidden | FailureClass::Local)
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
    /// The URL sent, with secret-looking parameters redacted.
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

/// The request a delivery sends, kept as plain data so that a delivery serializes. Checked when
/// made and again when deserialized, so building its `http::Request` cannot fail.
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
    #[serde(default)]
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
        let method = match self.method {
            HttpMethod::Get => http::Method::GET,
            HttpMethod::Post => http::Method::POST,
        };
        let mut b = http::Request::builder()
            .method(method)
            .uri(self.url.as_str());
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(Vec::new())
            .map_err(|e| RequestError::InvalidUrl(e.to_string()))
    }

    fn heap_bytes(&self) -> usize {
        self.url.capacity()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity() + 48)
                .sum::<usize>()
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
    Send(http::Request<Vec<u8>>),
    /// Nothing is due before this time.
    Wait(DateTime<Utc>),
    /// A request is out; waiting for its result.
    AwaitResponse,
    /// Held until released.
    Held,
    /// Done; see [`Delivery::state`].
    Finished,
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The URL can carry a partner's token: show it redacted.
            Action::Send(r) => {
                write!(
                    f,
                    "Send({} {})",
                    r.method(),
                    redact_url(&r.uri().to_string())
                )
            }
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
}

/// One firing of one postback. See the [module docs](self) for the call order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    id: DeliveryId,
    postback: PostbackId,
    request: Outbound,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    check: Option<ResponseCheck>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    test: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    hidden_from_reports: bool,
}

impl Delivery {
    /// A delivery whose first attempt is due at `now + delay`.
    pub fn new(
        id: DeliveryId,
        postback: PostbackId,
        request: Outbound,
        now: DateTime<Utc>,
        delay: Duration,
    ) -> Delivery {
        Delivery {
            id,
            postback,
            request,
            created: now,
            state: State::Scheduled {
                at: add(now, delay),
            },
            failures: 0,
            refusals: 0,
            released_after: 0,
            attempts: Vec::new(),
            check: None,
            test: false,
            hidden_from_reports: false,
        }
    }

    /// Check 2xx bodies with `check` (a preset's, for receivers that answer 200 on rejection).
    #[must_use]
    pub fn with_response_check(mut self, check: Option<ResponseCheck>) -> Delivery {
        self.check = check;
        self
    }

    /// A test fire: attempted once, never retried, never counted toward disabling.
    #[must_use]
    pub fn as_test(mut self) -> Delivery {
        self.test = true;
        self
    }

    /// Mark as not shown in reporting (CPC postbacks).
    #[must_use]
    pub fn hidden_from_reports(mut self, hidden: bool) -> Delivery {
        self.hidden_from_reports = hidden;
        self
    }

    /// Its id.
    pub fn id(&self) -> DeliveryId {
        self.id
    }
    /// The postback it fires.
    pub fn postback(&self) -> PostbackId {
        self.postback
    }
    /// The request it sends.
    pub fn request(&self) -> &Outbound {
        &self.request
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
    /// Whether it is a test fire.
    pub fn is_test(&self) -> bool {
        self.test
    }
    /// Whether it is hidden from reporting (CPC).
    pub fn is_hidden_from_reports(&self) -> bool {
        self.hidden_from_reports
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

    /// What to do at `now`. A returned [`Action::Send`] moves the delivery in flight.
    pub fn poll(&mut self, now: DateTime<Utc>) -> Action {
        match self.state {
            State::Scheduled { at } if at <= now => match self.request.to_request() {
                Ok(req) => {
                    self.state = State::InFlight { since: now };
                    Action::Send(req)
                }
                Err(e) => {
                    // Unreachable: the request was checked when made or deserialized. Should it
                    // happen, record our own error rather than panic or lose the delivery.
                    self.state = State::InFlight { since: now };
                    let _ = self.handle_failure(
                        now,
                        Failure::Local(e.to_string()),
                        &RetryPolicy::default(),
                    );
                    self.poll(now)
                }
            },
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
        let failure = if !resp.status().is_success() {
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
        let text = body_prefix(body);
        self.settle(now, Some(status), text, failure, retry_after, policy)
    }

    fn handle_failure(&mut self, now: DateTime<Utc>, f: Failure, policy: &RetryPolicy) -> Progress {
        let text = f.detail().chars().take(BODY_PREFIX).collect();
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
        let since = match self.state {
            State::InFlight { since } => since,
            _ => now,
        };
        let counted = failure.is_some_and(|f| f.counts());
        let number = self.attempts.len() as u32 + 1;
        self.attempts.push(Attempt {
            number,
            at: since,
            url: self.request.redacted_url(),
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
        if self.test {
            return give_up(self, GiveUpReason::TestFire);
        }
        if counted {
            self.failures += 1;
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
            self.refusals += 1;
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
        let at = policy.next_attempt_at(now, step, self.id, retry_after);
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
        self.released_after = self.attempts.len() as u32;
        Ok(())
    }

    /// After a restart: a request that was in flight when the state was saved got no answer
    /// this process will see, so it is due again at the time it was sent. The receiver drops the
    /// duplicate by its delivery id. Returns whether anything changed.
    pub fn interrupted(&mut self) -> bool {
        match self.state {
            State::InFlight { since } => {
                self.state = State::Scheduled { at: since };
                true
            }
            _ => false,
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

    /// Bytes held on the heap (capacity planning).
    pub fn heap_bytes(&self) -> usize {
        self.request.heap_bytes()
            + self.attempts.capacity() * std::mem::size_of::<Attempt>()
            + self
                .attempts
                .iter()
                .map(|a| a.url.capacity() + a.body.capacity())
                .sum::<usize>()
    }
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

    fn delivery() -> Delivery {
        let req =
            Outbound::new(HttpMethod::Get, "https://t.example/pb?cid=1&token=s3cret").unwrap();
        Delivery::new(
            DeliveryId::new(1),
            PostbackId::new(2),
            req,
            t(0),
            Duration::ZERO,
        )
    }

    #[test]
    fn a_delay_postpones_the_first_attempt() {
        let req = Outbound::new(HttpMethod::Get, "https://t.example/").unwrap();
        let mut d = Delivery::new(
            DeliveryId::new(1),
            PostbackId::new(2),
            req,
            t(0),
            Duration::from_secs(60),
        );
        assert!(matches!(d.poll(t(59)), Action::Wait(at) if at == t(60)));
        assert!(matches!(d.poll(t(60)), Action::Send(_)));
    }

    #[test]
    fn a_response_twice_is_refused() {
        let p = RetryPolicy::default();
        let mut d = delivery();
        let _ = d.poll(t(0));
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
        let mut d = delivery();
        let _ = d.poll(t(0));
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
