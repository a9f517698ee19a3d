//! Signed postbacks: an HMAC-SHA256 signature over the delivery key, the time of the send and the
//! exact request, so a partner can prove that a postback came from the network and is not a
//! replay. The scheme is the symmetric one of the [Standard Webhooks] specification; this module
//! also holds the receiver's side (`verify`, `verify_request`, `verify_url`, with the feature),
//! so partners written in Rust check signatures with the same code that makes them.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/
//!
//! # Configuration and the `signing` feature
//!
//! A postback asks for signing with [`PostbackBuilder::signing`](crate::model::PostbackBuilder::signing)
//! and a [`Signing`]: a [`Style`] and one to [`MAX_SIGNING_SECRETS`] [`Secret`]s (several at a
//! time, for rotation). These types exist with or without the crate's `signing` feature, so a
//! postback's shape and serialized form never change with features. The cryptography (signing a
//! send, `sign`, `verify` and its helpers) needs the feature, which brings in RustCrypto's
//! `hmac` and `sha2` and the `base64` crate; no cryptography is written here. Without the feature,
//! building a postback that asks for signing fails with
//! [`SigningError::Unavailable`] (inside [`ConfigError::Signing`](crate::model::ConfigError::Signing)):
//! a postback that asks for a signature is never sent without one.
//!
//! # What is signed
//!
//! Every send is signed anew when the delivery is polled
//! ([`Delivery::poll`](crate::delivery::Delivery::poll), which the engine and the stores' worker
//! call), with the send's `now`: a retry carries a fresh timestamp and signature, the key stays.
//!
//! - **id**: the delivery key as text ([`DeliveryKey::to_text`](crate::model::DeliveryKey::to_text),
//!   e.g. `1001.7.conversion.0`), the same for every attempt of a delivery. It holds only
//!   `A-Z a-z 0-9 - . _ ~`.
//! - **timestamp**: the send's `now` in whole unix seconds, in decimal.
//! - **payload** ([`payload`]): the URL exactly as sent (the expanded template without its
//!   `#fragment`: scheme, host, port if written, path and query, byte for byte as the request
//!   carries it); for a `POST`, the URL, one line feed (`0x0A`), then the body bytes (today's POST
//!   postbacks have an empty body, so the payload is the URL and `\n`). A URL never holds a raw
//!   line feed, so the layout reads back unambiguously.
//! - **signed content** ([`content`]): `{id}.{timestamp}.{payload}`, as Standard Webhooks defines.
//! - **signature**: `v1,` and the standard base64 (with padding) of HMAC-SHA256 over the signed
//!   content, keyed with the secret's decoded bytes. With several secrets, one `v1,<base64>` per
//!   secret, in the order configured, separated by single spaces.
//!
//! # Styles
//!
//! [`Style::Headers`], the Standard Webhooks headers, added to the request:
//!
//! ```text
//! webhook-id: 1001.7.conversion.0
//! webhook-timestamp: 1767225600
//! webhook-signature: v1,<base64> v1,<base64>
//! ```
//!
//! [`Style::Query`], for receivers that read only the URL, with parameter names the postback
//! gives ([`QueryNames`]). To the URL as expanded, the send appends `{timestamp name}={timestamp}`
//! and, when the postback names one, `&{id name}={id}` (after `&`, or `?` when the URL has no
//! query, nothing when it ends in `?` or `&`). That URL is the one signed (its payload, as above;
//! the id of the signed content is the id parameter's value, or empty when the postback names no
//! id parameter). Then `&{signature name}=` and the signature value, percent-encoded (`,` is
//! `%2C`, space `%20`, `+` `%2B`, `/` `%2F`, `=` `%3D`), is appended last. A receiver cuts the
//! URL it received before the `&` of the signature parameter, which must be the last one, and
//! checks that prefix (`verify_url` does all of it).
//!
//! ```text
//! https://t.example/pb?cid=abc&ts=1767225600&did=1001.7.conversion.0&sig=v1%2C...%3D
//! signed: 1001.7.conversion.0.1767225600.https://t.example/pb?cid=abc&ts=1767225600&did=1001.7.conversion.0
//! ```
//!
//! # Secrets
//!
//! A [`Secret`] is written as Standard Webhooks writes it: `whsec_` and the base64 of 24 to 64
//! random bytes. The crate draws no randomness: make the bytes elsewhere and pass them to
//! `Secret::from_bytes`, or parse a secret issued before with [`Secret::parse`].
//!
//! Secrets are redacted everywhere they could be shown: the `Debug` of a [`Secret`], a
//! [`Signing`], a postback and its builder, errors, and the serialized form of audit entries
//! ([`AuditEntry`](crate::access::AuditEntry)), whose postbacks read back with their secrets
//! redacted ([`Secret::is_redacted`]; such a postback is refused when created or edited, and never
//! sent). They never reach a request, an attempt record, an event or a log line. The serialized
//! form of a [`Postback`](crate::model::Postback) itself **does** carry them: stores (the
//! `postbacks` tables of SQLite and PostgreSQL) and [`Engine`](crate::engine::Engine) snapshots
//! rebuild postbacks from it after a restart, so protect those as you protect the secrets.
//!
//! # Verifying, for partners
//!
//! ```
//! # #[cfg(feature = "signing")] {
//! use chrono::DateTime;
//! use postback::signing::{self, Secret, DEFAULT_TOLERANCE};
//!
//! // The official test vector of the Standard Webhooks libraries.
//! let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! let now = DateTime::from_timestamp(1_614_265_330, 0).unwrap();
//! signing::verify(
//!     "msg_p5jXN8AQM9LWM0D4loKWxJek",
//!     "1614265330",
//!     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
//!     br#"{"test": 2432232314}"#,
//!     &[secret],
//!     now,
//!     DEFAULT_TOLERANCE,
//! )?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::Duration;

#[cfg(feature = "signing")]
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{HttpMethod, Method};
use crate::template::Template;

/// The most secrets one postback signs with at a time: the current one and old ones still in
/// rotation. Each costs one HMAC per send.
pub const MAX_SIGNING_SECRETS: usize = 4;

/// The prefix of a Standard Webhooks symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The fewest bytes a secret may have (Standard Webhooks: 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;

/// The most bytes a secret may have.
pub const MAX_SECRET_BYTES: usize = 64;

/// The header that carries the id (the delivery key).
pub const HEADER_ID: &str = "webhook-id";

/// The header that carries the timestamp (unix seconds).
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";

/// The header that carries the signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// [`HEADER_ID`], parsed once (at compile time).
pub(crate) const ID_NAME: http::HeaderName = http::HeaderName::from_static(HEADER_ID);
/// [`HEADER_TIMESTAMP`], parsed once.
pub(crate) const TIMESTAMP_NAME: http::HeaderName = http::HeaderName::from_static(HEADER_TIMESTAMP);
/// [`HEADER_SIGNATURE`], parsed once.
pub(crate) const SIGNATURE_NAME: http::HeaderName = http::HeaderName::from_static(HEADER_SIGNATURE);

/// How far a timestamp may be from the receiver's clock, either way, by default (Standard
/// Webhooks' libraries use five minutes).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The longest query parameter name for signing.
const MAX_NAME: usize = 64;

/// How a redacted secret is written.
const REDACTED: &str = "***";

#[cfg(feature = "signing")]
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A signing secret in the Standard Webhooks form, `whsec_` and base64. `Debug` never shows it;
/// [`expose`](Self::expose) does, for handing it to the partner once.
///
/// With the `signing` feature, [`parse`](Self::parse) checks the base64 and the length (24 to 64
/// bytes) and keeps the HMAC keyed, so a send does not decode it again. Without the feature it
/// checks only the prefix and keeps the text: a postback that uses it is refused when built.
#[derive(Clone)]
pub struct Secret {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Key {
        text: String,
        #[cfg(feature = "signing")]
        mac: HmacSha256,
    },
    /// Read from a record that had it redacted (an audit entry): it cannot sign.
    Redacted,
}

/// A signing secret that cannot be used. No message shows the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error(
        "a signing secret is `whsec_` followed by base64 (the Standard Webhooks form): copy it whole, prefix included"
    )]
    Prefix,
    /// Nothing follows the prefix.
    #[error("the signing secret is empty after `whsec_`: copy it whole")]
    Empty,
    /// What follows the prefix is not standard base64 (with padding).
    #[error(
        "the signing secret after `whsec_` is not standard base64: copy it exactly as it was issued"
    )]
    Base64,
    /// The decoded secret is too short or too long.
    #[error(
        "the signing secret is {0} bytes; Standard Webhooks secrets are 24 to 64 bytes: issue a new one of 32 random bytes"
    )]
    Length(usize),
}

impl Secret {
    /// Read a secret written as `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let body = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        if body.is_empty() {
            return Err(SecretError::Empty);
        }
        #[cfg(feature = "signing")]
        {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| SecretError::Base64)?;
            Secret::keyed(text.to_owned(), &bytes)
        }
        #[cfg(not(feature = "signing"))]
        {
            Ok(Secret {
                inner: Inner::Key {
                    text: text.to_owned(),
                },
            })
        }
    }

    /// A secret of these bytes (24 to 64 of them, drawn from a cryptographic random source by the
    /// caller: the crate draws no randomness), written as `whsec_<base64>`.
    #[cfg(feature = "signing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "signing")))]
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, SecretError> {
        use base64::Engine as _;
        let text = format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        Secret::keyed(text, bytes)
    }

    #[cfg(feature = "signing")]
    fn keyed(text: String, bytes: &[u8]) -> Result<Secret, SecretError> {
        use hmac::KeyInit as _;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(SecretError::Length(bytes.len()));
        }
        let mac =
            HmacSha256::new_from_slice(bytes).map_err(|_| SecretError::Length(bytes.len()))?;
        Ok(Secret {
            inner: Inner::Key { text, mac },
        })
    }

    /// A secret that was redacted from a record: it reads back, and cannot sign or verify.
    fn redacted() -> Secret {
        Secret {
            inner: Inner::Redacted,
        }
    }

    /// The secret as `whsec_<base64>`, to show the partner once; `None` when it was redacted.
    pub fn expose(&self) -> Option<&str> {
        match &self.inner {
            Inner::Key { text, .. } => Some(text),
            Inner::Redacted => None,
        }
    }

    /// Whether it was redacted from a record (an audit entry): it cannot sign.
    pub fn is_redacted(&self) -> bool {
        matches!(self.inner, Inner::Redacted)
    }

    /// The keyed HMAC, ready for the signed content.
    #[cfg(feature = "signing")]
    fn mac(&self) -> Option<&HmacSha256> {
        match &self.inner {
            Inner::Key { mac, .. } => Some(mac),
            Inner::Redacted => None,
        }
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_redacted() {
            "Secret(redacted)"
        } else {
            "Secret(***)"
        })
    }
}

impl std::str::FromStr for Secret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Secret::parse(s)
    }
}

impl Serialize for Secret {
    /// The secret as `whsec_<base64>` (or `***` when redacted): the form stores rebuild from.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose().unwrap_or(REDACTED))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == REDACTED {
            return Ok(Secret::redacted());
        }
        Secret::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The names of the query parameters of [`Style::Query`]: the signature's and the timestamp's,
/// and optionally the id's (the delivery key). Each is 1 to 64 characters of
/// `A-Z a-z 0-9 - . _ ~`, checked when the [`Signing`] is made.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueryNames {
    signature: String,
    timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

impl QueryNames {
    /// The signature in `signature`, the timestamp in `timestamp`, no id parameter.
    pub fn new(signature: impl Into<String>, timestamp: impl Into<String>) -> QueryNames {
        QueryNames {
            signature: signature.into(),
            timestamp: timestamp.into(),
            id: None,
        }
    }

    /// Send the id (the delivery key) in parameter `name` too, and sign it.
    #[must_use]
    pub fn id(mut self, name: impl Into<String>) -> QueryNames {
        self.id = Some(name.into());
        self
    }

    /// The signature's parameter.
    pub fn signature_name(&self) -> &str {
        &self.signature
    }

    /// The timestamp's parameter.
    pub fn timestamp_name(&self) -> &str {
        &self.timestamp
    }

    /// The id's parameter, if the id is sent.
    pub fn id_name(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.signature.as_str()),
            Some(&self.timestamp),
            self.id.as_deref(),
        ]
        .into_iter()
        .flatten()
    }

    fn check(&self) -> Result<(), SigningError> {
        let mut seen: Vec<&str> = Vec::with_capacity(3);
        for name in self.names() {
            let valid = !name.is_empty()
                && name.len() <= MAX_NAME
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'));
            if !valid {
                return Err(SigningError::InvalidParameterName(name.to_owned()));
            }
            if seen.contains(&name) {
                return Err(SigningError::SameParameterName(name.to_owned()));
            }
            seen.push(name);
        }
        Ok(())
    }
}

/// Where the signature travels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "style", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Style {
    /// The Standard Webhooks headers `webhook-id`, `webhook-timestamp` and `webhook-signature`.
    Headers,
    /// Query parameters of the URL, for receivers that read only the URL.
    Query(QueryNames),
}

/// A postback's signing settings: the [`Style`] and 1 to [`MAX_SIGNING_SECRETS`] secrets, each
/// signing every send (the partner's verifier accepts any one, so an old and a new secret can
/// overlap during a rotation). `Debug` shows the style and how many secrets, never them.
///
/// Serialized as `{"style": "headers", "secrets": ["whsec_..."]}` or
/// `{"style": "query", "signature": "sig", "timestamp": "ts", "id": "did", "secrets": [...]}`,
/// secrets included (see the [module docs](self)).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SigningData", into = "SigningData")]
pub struct Signing {
    style: Style,
    secrets: Vec<Secret>,
}

#[derive(Serialize, Deserialize)]
struct SigningData {
    #[serde(flatten)]
    style: Style,
    #[serde(deserialize_with = "secrets_at_most")]
    secrets: Vec<Secret>,
}

fn secrets_at_most<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    crate::template::AtMost::<Secret, MAX_SIGNING_SECRETS>::deserialize_as(d, "signing secrets")
        .map(|v| v.0)
}

impl From<Signing> for SigningData {
    fn from(s: Signing) -> Self {
        SigningData {
            style: s.style,
            secrets: s.secrets,
        }
    }
}

impl TryFrom<SigningData> for Signing {
    type Error = SigningError;
    fn try_from(d: SigningData) -> Result<Self, Self::Error> {
        Signing::new(d.style, d.secrets)
    }
}

impl fmt::Debug for Signing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signing")
            .field("style", &self.style)
            .field("secrets", &format_args!("{} redacted", self.secrets.len()))
            .finish()
    }
}

/// Signing settings that cannot be used, or a signed send that cannot be made. Each message says
/// what to do; none shows a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The crate was built without its `signing` feature.
    #[error(
        "this postback asks for signed requests, but the postback crate was built without its `signing` feature: enable it (postback = {{ features = [\"signing\"] }}); a postback that asks for signing is never sent unsigned"
    )]
    Unavailable,
    /// No secret.
    #[error("signing needs at least one secret: add the partner's `whsec_` secret")]
    NoSecrets,
    /// More than [`MAX_SIGNING_SECRETS`].
    #[error(
        "signing lists {count} secrets; the limit is {max}: keep the current secret and the ones still in rotation"
    )]
    TooManySecrets {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// One secret listed twice.
    #[error("a signing secret is listed twice: list each secret once")]
    DuplicateSecret,
    /// A query parameter name that is empty, too long, or outside `A-Z a-z 0-9 - . _ ~`.
    #[error("`{0}` cannot name a signing parameter: use 1 to 64 characters of A-Z a-z 0-9 - . _ ~")]
    InvalidParameterName(String),
    /// Two signing parameters with one name.
    #[error(
        "two signing parameters are named `{0}`: give the signature, timestamp and id parameters different names"
    )]
    SameParameterName(String),
    /// The postback's URL already has a parameter of that name.
    #[error(
        "the postback URL already has a parameter `{0}`, which signing appends: choose another name for the signing parameter"
    )]
    ParameterInUrl(String),
    /// Signing on a pixel or HTML postback.
    #[error(
        "signing applies to server-to-server postbacks, not to {0} postbacks: remove the signing or deliver server-to-server"
    )]
    NotServerToServer(Method),
    /// The secrets were redacted from the record the postback was read from.
    #[error(
        "the postback's signing secrets were redacted (it was read from an audit entry): set its secrets again; it is never sent unsigned"
    )]
    RedactedSecret,
}

impl Signing {
    /// Sign in `style` with `secrets` (1 to [`MAX_SIGNING_SECRETS`], each once).
    pub fn new(
        style: Style,
        secrets: impl IntoIterator<Item = Secret>,
    ) -> Result<Signing, SigningError> {
        let mut list: Vec<Secret> = Vec::new();
        for s in secrets {
            // Past the limit, stop comparing: the count is refused below.
            if list.len() <= MAX_SIGNING_SECRETS && !s.is_redacted() && list.contains(&s) {
                return Err(SigningError::DuplicateSecret);
            }
            list.push(s);
        }
        if list.is_empty() {
            return Err(SigningError::NoSecrets);
        }
        if list.len() > MAX_SIGNING_SECRETS {
            return Err(SigningError::TooManySecrets {
                count: list.len(),
                max: MAX_SIGNING_SECRETS,
            });
        }
        if let Style::Query(names) = &style {
            names.check()?;
        }
        Ok(Signing {
            style,
            secrets: list,
        })
    }

    /// Sign in the Standard Webhooks headers.
    pub fn headers(secrets: impl IntoIterator<Item = Secret>) -> Result<Signing, SigningError> {
        Signing::new(Style::Headers, secrets)
    }

    /// Sign in query parameters named by `names`.
    pub fn query(
        names: QueryNames,
        secrets: impl IntoIterator<Item = Secret>,
    ) -> Result<Signing, SigningError> {
        Signing::new(Style::Query(names), secrets)
    }

    /// The style.
    pub fn style(&self) -> &Style {
        &self.style
    }

    /// The secrets, in the order their signatures are sent.
    pub fn secrets(&self) -> &[Secret] {
        &self.secrets
    }

    /// Whether its secrets were redacted (read from an audit entry): it cannot sign.
    pub fn is_redacted(&self) -> bool {
        self.secrets.iter().any(Secret::is_redacted)
    }

    /// The same settings with every secret redacted: what audit entries record.
    pub(crate) fn redacted(&self) -> Signing {
        Signing {
            style: self.style.clone(),
            secrets: self.secrets.iter().map(|_| Secret::redacted()).collect(),
        }
    }

    /// The build-time check of a postback with these settings: the feature is on, the postback
    /// is server-to-server, and no parameter of the URL has a signing parameter's name.
    pub(crate) fn check_for(
        &self,
        method: Method,
        template: &Template,
    ) -> Result<(), SigningError> {
        if cfg!(not(feature = "signing")) {
            return Err(SigningError::Unavailable);
        }
        if !method.is_server_to_server() {
            return Err(SigningError::NotServerToServer(method));
        }
        if let Style::Query(names) = &self.style {
            let src = template.as_str();
            let src = src.split_once('#').map_or(src, |(b, _)| b);
            if let Some((_, query)) = src.split_once('?') {
                for pair in query.split('&') {
                    let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                    if let Some(n) = names.names().find(|n| *n == key) {
                        return Err(SigningError::ParameterInUrl(n.to_owned()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a send can be signed now: the feature is on and no secret is redacted.
    pub(crate) fn ready(&self) -> Result<(), SigningError> {
        if cfg!(not(feature = "signing")) {
            return Err(SigningError::Unavailable);
        }
        if self.is_redacted() {
            return Err(SigningError::RedactedSecret);
        }
        Ok(())
    }

    /// Sign a send of `url` with `method` (and an empty body) at `timestamp`, for the delivery
    /// with key `id`: the headers to add, or the URL to send instead.
    #[cfg(feature = "signing")]
    pub(crate) fn apply(
        &self,
        id: &str,
        timestamp: i64,
        method: HttpMethod,
        url: String,
    ) -> Result<Signed, SigningError> {
        self.ready()?;
        let method = method.as_http();
        let ts = timestamp.to_string();
        match &self.style {
            Style::Headers => {
                let signature = signature_value(&self.secrets, id, &ts, &method, &url, &[])?;
                Ok(Signed::Headers {
                    url,
                    timestamp: ts,
                    signature,
                })
            }
            Style::Query(names) => {
                let mut url = url;
                let sep = match url.find('?') {
                    None => "?",
                    Some(_) if url.ends_with('?') || url.ends_with('&') => "",
                    Some(_) => "&",
                };
                url.reserve(128);
                url.push_str(sep);
                url.push_str(&names.timestamp);
                url.push('=');
                url.push_str(&ts);
                let signed_id = match &names.id {
                    Some(n) => {
                        url.push('&');
                        url.push_str(n);
                        url.push('=');
                        url.push_str(id);
                        id
                    }
                    None => "",
                };
                let value = signature_value(&self.secrets, signed_id, &ts, &method, &url, &[])?;
                url.push('&');
                url.push_str(&names.signature);
                url.push('=');
                url.extend(percent_encoding::utf8_percent_encode(
                    &value,
                    crate::template::COMPONENT_SET,
                ));
                Ok(Signed::Url(url))
            }
        }
    }

    /// Without the `signing` feature nothing can be signed (a built postback never gets here).
    #[cfg(not(feature = "signing"))]
    pub(crate) fn apply(
        &self,
        _id: &str,
        _timestamp: i64,
        _method: HttpMethod,
        _url: String,
    ) -> Result<Signed, SigningError> {
        Err(SigningError::Unavailable)
    }
}

/// What signing a send made.
#[cfg_attr(not(feature = "signing"), allow(dead_code))]
pub(crate) enum Signed {
    /// The URL as it was, and the values of the timestamp and signature headers (the id header
    /// is the key).
    Headers {
        url: String,
        timestamp: String,
        signature: String,
    },
    /// The URL with the signing parameters appended.
    Url(String),
}

/// The payload of a request as signed: the URL exactly as sent, and for `POST` a line feed and
/// the body (see the [module docs](self)).
pub fn payload(method: &http::Method, url: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(url.len() + 1 + body.len());
    out.extend_from_slice(url.as_bytes());
    if method == http::Method::POST {
        out.push(b'\n');
        out.extend_from_slice(body);
    }
    out
}

/// The signed content, `{id}.{timestamp}.{payload}`, as Standard Webhooks defines it.
pub fn content(id: &str, timestamp: i64, payload: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut out = Vec::with_capacity(id.len() + ts.len() + 2 + payload.len());
    out.extend_from_slice(id.as_bytes());
    out.push(b'.');
    out.extend_from_slice(ts.as_bytes());
    out.push(b'.');
    out.extend_from_slice(payload);
    out
}

/// The `webhook-signature` value of a request: one `v1,<base64>` per secret, space-separated.
#[cfg(feature = "signing")]
fn signature_value(
    secrets: &[Secret],
    id: &str,
    ts: &str,
    method: &http::Method,
    url: &str,
    body: &[u8],
) -> Result<String, SigningError> {
    // The signed content, fed in pieces: `{id}.{ts}.{url}` and, for POST, `\n{body}`.
    let pieces: [&[u8]; 7] = [
        id.as_bytes(),
        b".",
        ts.as_bytes(),
        b".",
        url.as_bytes(),
        b"\n",
        body,
    ];
    let n = if method == http::Method::POST { 7 } else { 5 };
    sign_pieces(secrets, &pieces[..n])
}

/// One `v1,<base64>` per secret over the concatenation of `pieces`, space-separated.
#[cfg(feature = "signing")]
fn sign_pieces(secrets: &[Secret], pieces: &[&[u8]]) -> Result<String, SigningError> {
    use base64::Engine as _;
    use hmac::Mac as _;
    if secrets.is_empty() {
        return Err(SigningError::NoSecrets);
    }
    let mut out = String::with_capacity(secrets.len() * 48);
    for (i, secret) in secrets.iter().enumerate() {
        let mut mac = secret.mac().ok_or(SigningError::RedactedSecret)?.clone();
        for p in pieces {
            mac.update(p);
        }
        if i > 0 {
            out.push(' ');
        }
        out.push_str("v1,");
        base64::engine::general_purpose::STANDARD
            .encode_string(mac.finalize().into_bytes(), &mut out);
    }
    Ok(out)
}

/// The signature header value (`v1,<base64>`, one per secret, space-separated) of the signed
/// content `{id}.{timestamp}.{payload}`: what a send puts in `webhook-signature`. For senders
/// outside the engine, and tests.
#[cfg(feature = "signing")]
#[cfg_attr(docsrs, doc(cfg(feature = "signing")))]
pub fn sign(
    id: &str,
    timestamp: i64,
    payload: &[u8],
    secrets: &[Secret],
) -> Result<String, SigningError> {
    let ts = timestamp.to_string();
    let pieces: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", payload];
    sign_pieces(secrets, &pieces)
}

/// Why a signature was refused. None of the messages shows a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No secret to verify with.
    #[error(
        "no secret to verify with: pass the postback's signing secret (or secrets, during a rotation)"
    )]
    NoSecrets,
    /// A secret was redacted.
    #[error("a signing secret is redacted and cannot verify: pass the secret as it was issued")]
    RedactedSecret,
    /// A header is missing.
    #[error("the request has no `{0}` header: it is not signed, or not in the headers style")]
    MissingHeader(&'static str),
    /// A header is not visible ASCII.
    #[error("the `{0}` header is not visible ASCII text: the request was altered")]
    InvalidHeader(&'static str),
    /// A query parameter is missing.
    #[error("the URL has no `{0}` parameter: it is not signed, or the parameter names differ")]
    MissingParameter(String),
    /// The signature parameter is not the last parameter of the URL.
    #[error(
        "the signature parameter `{0}` is not the last parameter of the URL: pass the URL exactly as received"
    )]
    SignatureNotLast(String),
    /// The id is empty, or holds characters outside `A-Z a-z 0-9 - . _ ~`.
    #[error(
        "the id is empty or holds characters a delivery key never has: the request was altered"
    )]
    InvalidId,
    /// The timestamp is not a decimal count of seconds.
    #[error("the timestamp is not a whole number of unix seconds: the request was altered")]
    InvalidTimestamp,
    /// The timestamp is older than the tolerance allows: a replay, or a slow clock.
    #[error(
        "the timestamp {timestamp} is {age} s before now, over the tolerance of {tolerance} s: a replay, or a clock far off"
    )]
    TooOld {
        /// The timestamp received.
        timestamp: i64,
        /// How many seconds before now.
        age: i64,
        /// The tolerance, in seconds.
        tolerance: u64,
    },
    /// The timestamp is further in the future than the tolerance allows.
    #[error(
        "the timestamp {timestamp} is {ahead} s after now, over the tolerance of {tolerance} s: a clock far off, or a forged request"
    )]
    TooNew {
        /// The timestamp received.
        timestamp: i64,
        /// How many seconds after now.
        ahead: i64,
        /// The tolerance, in seconds.
        tolerance: u64,
    },
    /// The signature value is empty or has no `v1,<base64>` entry.
    #[error(
        "the signature holds no `v1,<base64>` entry: the request is not signed with HMAC-SHA256"
    )]
    NoSignature,
    /// An entry of the signature value is not `version,signature`.
    #[error("the signature is malformed: entries are `v1,<base64>`, separated by spaces")]
    MalformedSignature,
    /// No signature matches any secret.
    #[error(
        "no signature matches the secrets: check the secret, and check the URL and body exactly as received"
    )]
    Mismatch,
}

/// Verify a signature for the receiver, in the headers style: `id`, `timestamp` and `signature`
/// are the values of `webhook-id`, `webhook-timestamp` and `webhook-signature`, `payload` the
/// request's payload ([`payload`]). Accepts when the timestamp is within `tolerance` of `now`
/// either way and any `v1` signature matches any of `secrets` (entries of other versions, such
/// as `v1a`, are passed over). Signatures are compared in constant time (the `hmac` crate's
/// `verify_slice`).
#[cfg(feature = "signing")]
#[cfg_attr(docsrs, doc(cfg(feature = "signing")))]
pub fn verify(
    id: &str,
    timestamp: &str,
    signature: &str,
    payload: &[u8],
    secrets: &[Secret],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if id.is_empty() {
        return Err(VerifyError::InvalidId);
    }
    verify_content(id, timestamp, signature, payload, secrets, now, tolerance)
}

/// [`verify`], the id allowed empty (the query style without an id parameter).
#[cfg(feature = "signing")]
fn verify_content(
    id: &str,
    timestamp: &str,
    signature: &str,
    payload: &[u8],
    secrets: &[Secret],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    use base64::Engine as _;
    use hmac::Mac as _;
    if secrets.is_empty() {
        return Err(VerifyError::NoSecrets);
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
    {
        return Err(VerifyError::InvalidId);
    }
    let ts = parse_timestamp(timestamp)?;
    let tol = tolerance.as_secs();
    let tol_i = i64::try_from(tol).unwrap_or(i64::MAX);
    let now_s = now.timestamp();
    let diff = now_s.saturating_sub(ts);
    if diff > tol_i {
        return Err(VerifyError::TooOld {
            timestamp: ts,
            age: diff,
            tolerance: tol,
        });
    }
    if diff < tol_i.saturating_neg() {
        return Err(VerifyError::TooNew {
            timestamp: ts,
            ahead: diff.saturating_neg(),
            tolerance: tol,
        });
    }
    let mut macs = Vec::with_capacity(secrets.len());
    for s in secrets {
        let mut mac = s.mac().ok_or(VerifyError::RedactedSecret)?.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(payload);
        macs.push(mac);
    }
    let mut any_v1 = false;
    for entry in signature.split(' ').filter(|e| !e.is_empty()) {
        let (version, sig) = entry
            .split_once(',')
            .ok_or(VerifyError::MalformedSignature)?;
        if version != "v1" {
            continue;
        }
        any_v1 = true;
        // A v1 entry that is not base64 matches nothing; another entry may still match.
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            continue;
        };
        if macs.iter().any(|m| m.clone().verify_slice(&sig).is_ok()) {
            return Ok(());
        }
    }
    if any_v1 {
        Err(VerifyError::Mismatch)
    } else {
        Err(VerifyError::NoSignature)
    }
}

/// Whole unix seconds, digits only (no sign, no spaces), at most 18 digits.
#[cfg(feature = "signing")]
fn parse_timestamp(t: &str) -> Result<i64, VerifyError> {
    if t.is_empty() || t.len() > 18 || !t.bytes().all(|c| c.is_ascii_digit()) {
        return Err(VerifyError::InvalidTimestamp);
    }
    t.parse().map_err(|_| VerifyError::InvalidTimestamp)
}

/// Verify a request signed in the headers style, as the receiver got it. `origin` is the scheme
/// and authority the postback's URL names (`https://tracker.example`, as the partner gave it to
/// the network): a server sees only the path and query of the request target, and a proxy in
/// front of it may change the scheme or host, so the URL signed is `origin` followed by the
/// request's path and query exactly as received. The body is the request's.
#[cfg(feature = "signing")]
#[cfg_attr(docsrs, doc(cfg(feature = "signing")))]
pub fn verify_request<B: AsRef<[u8]>>(
    request: &http::Request<B>,
    origin: &str,
    secrets: &[Secret],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let header = |name: &'static str| -> Result<String, VerifyError> {
        let mut values = request.headers().get_all(name).iter().peekable();
        if values.peek().is_none() {
            return Err(VerifyError::MissingHeader(name));
        }
        let mut out = String::new();
        for v in values {
            let v = v.to_str().map_err(|_| VerifyError::InvalidHeader(name))?;
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(v);
        }
        Ok(out)
    };
    let id = header(HEADER_ID)?;
    let timestamp = header(HEADER_TIMESTAMP)?;
    let signature = header(HEADER_SIGNATURE)?;
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let url = format!("{}{target}", origin.trim_end_matches('/'));
    let payload = payload(request.method(), &url, request.body().as_ref());
    verify(
        &id, &timestamp, &signature, &payload, secrets, now, tolerance,
    )
}

/// Verify a URL signed in the query style, as the receiver got it: `url` is the whole URL
/// (origin as the postback names it, then the path and query exactly as received, not decoded
/// or re-encoded), `method` and `body` the request's, `names` the postback's parameter names.
/// The signature parameter must be the last one.
#[cfg(feature = "signing")]
#[cfg_attr(docsrs, doc(cfg(feature = "signing")))]
pub fn verify_url(
    method: &http::Method,
    url: &str,
    body: &[u8],
    names: &QueryNames,
    secrets: &[Secret],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let missing = |n: &str| VerifyError::MissingParameter(n.to_owned());
    let (_, query) = url
        .split_once('?')
        .ok_or_else(|| missing(&names.signature))?;
    // The last parameter, and where its separator stands in `url`.
    let (cut, last) = match query.rfind('&') {
        Some(i) => (url.len() - query.len() + i, &query[i + 1..]),
        None => (url.len() - query.len() - 1, query),
    };
    let (key, value) = last.split_once('=').unwrap_or((last, ""));
    if key != names.signature {
        return Err(if query_value(query, &names.signature).is_some() {
            VerifyError::SignatureNotLast(names.signature.clone())
        } else {
            missing(&names.signature)
        });
    }
    let signed = &url[..cut];
    let signed_query = signed.split_once('?').map_or("", |(_, q)| q);
    let signature = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map_err(|_| VerifyError::MalformedSignature)?;
    let timestamp =
        query_value(signed_query, &names.timestamp).ok_or_else(|| missing(&names.timestamp))?;
    let id = match &names.id {
        Some(n) => {
            let id = query_value(signed_query, n).ok_or_else(|| missing(n))?;
            if id.is_empty() {
                return Err(VerifyError::InvalidId);
            }
            id
        }
        None => "",
    };
    let payload = payload(method, signed, body);
    verify_content(id, timestamp, &signature, &payload, secrets, now, tolerance)
}

/// The raw value of the last parameter `name` in `query`.
#[cfg(feature = "signing")]
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .rsplit('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_of_secrets_and_settings_never_shows_a_secret() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let s = Secret::parse(secret).unwrap();
        let signing = Signing::headers([s.clone()]).unwrap();
        let shown = format!("{s:?} {signing:?} {:?}", signing.redacted());
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert!(shown.contains("1 redacted"), "{shown}");
    }

    #[test]
    fn a_secret_without_the_prefix_or_empty_is_refused() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::Prefix
        );
        assert_eq!(Secret::parse("whsec_").unwrap_err(), SecretError::Empty);
    }

    #[test]
    fn settings_need_one_to_four_distinct_secrets_and_valid_distinct_names() {
        let s = |n: u8| Secret::parse(&format!("whsec_{}", "A".repeat(31) + &n.to_string()));
        let s: Vec<Secret> = (0..5).map(|n| s(n).unwrap()).collect();
        assert_eq!(Signing::headers([]).unwrap_err(), SigningError::NoSecrets);
        assert_eq!(
            Signing::headers(s.clone()).unwrap_err(),
            SigningError::TooManySecrets { count: 5, max: 4 }
        );
        assert_eq!(
            Signing::headers([s[0].clone(), s[0].clone()]).unwrap_err(),
            SigningError::DuplicateSecret
        );
        assert!(Signing::headers(s[..4].to_vec()).is_ok());
        let q = |names: QueryNames| Signing::query(names, [s[0].clone()]);
        assert_eq!(
            q(QueryNames::new("sig", "sig")).unwrap_err(),
            SigningError::SameParameterName("sig".into())
        );
        assert_eq!(
            q(QueryNames::new("sig", "ts").id("a&b")).unwrap_err(),
            SigningError::InvalidParameterName("a&b".into())
        );
        assert_eq!(
            q(QueryNames::new("", "ts")).unwrap_err(),
            SigningError::InvalidParameterName(String::new())
        );
        assert!(q(QueryNames::new("sig", "ts").id("did")).is_ok());
    }

    #[test]
    fn the_payload_is_the_url_and_for_post_a_line_feed_and_the_body() {
        assert_eq!(
            payload(&http::Method::GET, "https://a/b?c=1", b"x"),
            b"https://a/b?c=1"
        );
        assert_eq!(
            payload(&http::Method::POST, "https://a/b?c=1", b"x"),
            b"https://a/b?c=1\nx"
        );
        assert_eq!(content("k.1", 5, b"p"), b"k.1.5.p");
    }

    #[cfg(not(feature = "signing"))]
    #[test]
    fn without_the_feature_a_signed_postback_is_refused_when_built_and_says_to_enable_it() {
        use crate::model::{ConfigError, PartnerId, Postback, PostbackId};
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let err = Postback::builder(PostbackId::new(1))
            .partner(PartnerId::new(7))
            .url("https://t.example/pb?cid={sub1}")
            .signing(Signing::headers([secret]).unwrap())
            .build()
            .unwrap_err();
        assert_eq!(err, ConfigError::Signing(SigningError::Unavailable));
        assert!(err.to_string().contains("`signing` feature"), "{err}");
        // A stored postback that asks for signing does not read back unsigned either.
        let unsigned = Postback::builder(PostbackId::new(1))
            .partner(PartnerId::new(7))
            .url("https://t.example/pb?cid={sub1}")
            .build()
            .unwrap();
        let mut stored = serde_json::to_value(&unsigned).unwrap();
        stored["signing"] = serde_json::json!({
            "style": "headers",
            "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        });
        let read = serde_json::from_value::<Postback>(stored);
        assert!(read.is_err_and(|e| e.to_string().contains("`signing` feature")));
    }

    #[cfg(feature = "signing")]
    mod crypto {
        use super::*;

        fn at(s: i64) -> DateTime<Utc> {
            DateTime::from_timestamp(s, 0).unwrap()
        }

        const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        const TS: i64 = 1_614_265_330;
        const PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;
        const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

        fn key() -> Secret {
            Secret::parse(KEY).unwrap()
        }

        fn other() -> Secret {
            Secret::from_bytes(&[7; 32]).unwrap()
        }

        #[test]
        fn the_standard_webhooks_test_vector_signs_and_verifies_exactly() {
            assert_eq!(sign(ID, TS, PAYLOAD, &[key()]).unwrap(), EXPECTED);
            assert_eq!(
                verify(
                    ID,
                    "1614265330",
                    EXPECTED,
                    PAYLOAD,
                    &[key()],
                    at(TS),
                    DEFAULT_TOLERANCE
                ),
                Ok(())
            );
            // The Rust library's vector of the same specification.
            let rust = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
            assert_eq!(
                sign(
                    "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                    1_649_367_553,
                    br#"{"email":"test@example.com","username":"test_user"}"#,
                    &[rust]
                )
                .unwrap(),
                "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
            );
        }

        #[test]
        fn two_secrets_give_two_signatures_and_either_secret_verifies() {
            let value = sign(ID, TS, PAYLOAD, &[key(), other()]).unwrap();
            let parts: Vec<&str> = value.split(' ').collect();
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0], EXPECTED);
            assert_ne!(parts[0], parts[1]);
            for s in [key(), other()] {
                assert_eq!(
                    verify(
                        ID,
                        "1614265330",
                        &value,
                        PAYLOAD,
                        &[s],
                        at(TS),
                        DEFAULT_TOLERANCE
                    ),
                    Ok(())
                );
            }
            // The receiver may hold both during the rotation, and the sender only the new one.
            let new_only = sign(ID, TS, PAYLOAD, &[other()]).unwrap();
            assert_eq!(
                verify(
                    ID,
                    "1614265330",
                    &new_only,
                    PAYLOAD,
                    &[key(), other()],
                    at(TS),
                    DEFAULT_TOLERANCE
                ),
                Ok(())
            );
        }

        #[test]
        fn a_stale_or_a_future_timestamp_is_refused_and_the_edges_are_accepted() {
            let v = |now: i64| {
                verify(
                    ID,
                    "1614265330",
                    EXPECTED,
                    PAYLOAD,
                    &[key()],
                    at(now),
                    DEFAULT_TOLERANCE,
                )
            };
            assert_eq!(v(TS + 300), Ok(()));
            assert_eq!(v(TS - 300), Ok(()));
            assert_eq!(
                v(TS + 301),
                Err(VerifyError::TooOld {
                    timestamp: TS,
                    age: 301,
                    tolerance: 300
                })
            );
            assert_eq!(
                v(TS - 301),
                Err(VerifyError::TooNew {
                    timestamp: TS,
                    ahead: 301,
                    tolerance: 300
                })
            );
        }

        #[test]
        fn a_wrong_secret_is_refused() {
            assert_eq!(
                verify(
                    ID,
                    "1614265330",
                    EXPECTED,
                    PAYLOAD,
                    &[other()],
                    at(TS),
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::Mismatch)
            );
        }

        #[test]
        fn malformed_headers_give_typed_errors() {
            let v = |id: &str, ts: &str, sig: &str| {
                verify(id, ts, sig, PAYLOAD, &[key()], at(TS), DEFAULT_TOLERANCE)
            };
            assert_eq!(v(ID, "1614265330", ""), Err(VerifyError::NoSignature));
            assert_eq!(
                v(ID, "1614265330", "v1a,abc"),
                Err(VerifyError::NoSignature)
            );
            assert_eq!(
                v(ID, "1614265330", "nocomma"),
                Err(VerifyError::MalformedSignature)
            );
            assert_eq!(v(ID, "1614265330", "v1,"), Err(VerifyError::Mismatch));
            assert_eq!(v(ID, "1614265330", "v1,!!!"), Err(VerifyError::Mismatch));
            assert_eq!(v(ID, "hello", EXPECTED), Err(VerifyError::InvalidTimestamp));
            assert_eq!(
                v(ID, "-1614265330", EXPECTED),
                Err(VerifyError::InvalidTimestamp)
            );
            assert_eq!(
                v(ID, " 1614265330", EXPECTED),
                Err(VerifyError::InvalidTimestamp)
            );
            assert_eq!(v("", "1614265330", EXPECTED), Err(VerifyError::InvalidId));
            assert_eq!(
                v("a/b", "1614265330", EXPECTED),
                Err(VerifyError::InvalidId)
            );
            // A bad entry does not hide a good one after it.
            assert_eq!(
                v(ID, "1614265330", &format!("v1,!!! v1a,xyz {EXPECTED}")),
                Ok(())
            );
            assert_eq!(
                verify(
                    ID,
                    "1614265330",
                    EXPECTED,
                    PAYLOAD,
                    &[],
                    at(TS),
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::NoSecrets)
            );
            assert_eq!(
                verify(
                    ID,
                    "1614265330",
                    EXPECTED,
                    PAYLOAD,
                    &[Secret::redacted()],
                    at(TS),
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::RedactedSecret)
            );
        }

        #[test]
        fn secrets_are_checked_for_base64_and_length() {
            assert_eq!(
                Secret::parse("whsec_not base64!").unwrap_err(),
                SecretError::Base64
            );
            assert_eq!(
                Secret::parse("whsec_c2hvcnQ=").unwrap_err(),
                SecretError::Length(5)
            );
            assert_eq!(
                Secret::from_bytes(&[1; 65]).unwrap_err(),
                SecretError::Length(65)
            );
            let s = Secret::from_bytes(&[1; 24]).unwrap();
            assert_eq!(Secret::parse(s.expose().unwrap()).unwrap(), s);
        }

        #[test]
        fn the_headers_style_signs_the_url_with_the_key_and_the_time() {
            let signing = Signing::headers([key()]).unwrap();
            let url = "https://t.example/pb?cid=1".to_owned();
            let Signed::Headers {
                url: sent,
                timestamp,
                signature,
            } = signing
                .apply("1.2.conversion.0", TS, HttpMethod::Get, url.clone())
                .unwrap()
            else {
                panic!("headers style")
            };
            assert_eq!(sent, url);
            assert_eq!(timestamp, "1614265330");
            assert_eq!(
                signature,
                sign("1.2.conversion.0", TS, url.as_bytes(), &[key()]).unwrap()
            );
            // POST signs the URL, a line feed and the (empty) body.
            let Signed::Headers {
                signature: post, ..
            } = signing
                .apply("1.2.conversion.0", TS, HttpMethod::Post, url.clone())
                .unwrap()
            else {
                panic!("headers style")
            };
            let p = payload(&http::Method::POST, &url, b"");
            assert_eq!(post, sign("1.2.conversion.0", TS, &p, &[key()]).unwrap());
        }

        #[test]
        fn the_query_style_appends_timestamp_id_and_signature_last_and_verifies() {
            let names = QueryNames::new("sig", "ts").id("did");
            let signing = Signing::query(names.clone(), [key(), other()]).unwrap();
            let Signed::Url(url) = signing
                .apply(
                    "1.2.conversion.0",
                    TS,
                    HttpMethod::Get,
                    "https://t.example/pb?cid=1".into(),
                )
                .unwrap()
            else {
                panic!("query style")
            };
            let signed = "https://t.example/pb?cid=1&ts=1614265330&did=1.2.conversion.0";
            assert!(url.starts_with(&format!("{signed}&sig=v1%2C")), "{url}");
            let expected =
                sign("1.2.conversion.0", TS, signed.as_bytes(), &[key(), other()]).unwrap();
            let encoded: String =
                percent_encoding::utf8_percent_encode(&expected, crate::template::COMPONENT_SET)
                    .collect();
            assert_eq!(url, format!("{signed}&sig={encoded}"));
            let get = http::Method::GET;
            for s in [key(), other()] {
                assert_eq!(
                    verify_url(&get, &url, b"", &names, &[s], at(TS), DEFAULT_TOLERANCE),
                    Ok(())
                );
            }
            // Without an id parameter the id signed is empty; a URL without a query gets `?`.
            let bare = QueryNames::new("sig", "ts");
            let signing = Signing::query(bare.clone(), [key()]).unwrap();
            let Signed::Url(url) = signing
                .apply(
                    "1.2.conversion.0",
                    TS,
                    HttpMethod::Get,
                    "https://t.example/pb/1".into(),
                )
                .unwrap()
            else {
                panic!("query style")
            };
            assert!(
                url.starts_with("https://t.example/pb/1?ts=1614265330&sig="),
                "{url}"
            );
            assert_eq!(
                verify_url(&get, &url, b"", &bare, &[key()], at(TS), DEFAULT_TOLERANCE),
                Ok(())
            );
            // Moved, missing or altered parameters are refused.
            let moved = url.replace("?ts=1614265330&sig=", "?sig=") + "&ts=1614265330";
            assert_eq!(
                verify_url(
                    &get,
                    &moved,
                    b"",
                    &bare,
                    &[key()],
                    at(TS),
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::SignatureNotLast("sig".into()))
            );
            assert_eq!(
                verify_url(
                    &get,
                    "https://t.example/pb/1?ts=1",
                    b"",
                    &bare,
                    &[key()],
                    at(TS),
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::MissingParameter("sig".into()))
            );
            let later = url.replace("ts=1614265330", "ts=1614265331");
            assert_eq!(
                verify_url(
                    &get,
                    &later,
                    b"",
                    &bare,
                    &[key()],
                    at(TS),
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::Mismatch)
            );
            assert_eq!(
                verify_url(&get, &url, b"", &names, &[key()], at(TS), DEFAULT_TOLERANCE),
                Err(VerifyError::MissingParameter("did".into()))
            );
        }

        #[test]
        fn a_request_verifies_from_its_headers_path_and_query_and_the_given_origin() {
            let target = "/pb?cid=1";
            let url = format!("https://t.example{target}");
            let sig = sign("1.2.conversion.0", TS, url.as_bytes(), &[key()]).unwrap();
            let req = http::Request::get(target)
                .header(HEADER_ID, "1.2.conversion.0")
                .header(HEADER_TIMESTAMP, "1614265330")
                .header(HEADER_SIGNATURE, sig.as_str())
                .body(Vec::<u8>::new())
                .unwrap();
            let v = |r: &http::Request<Vec<u8>>, origin: &str| {
                verify_request(r, origin, &[key()], at(TS), DEFAULT_TOLERANCE)
            };
            assert_eq!(v(&req, "https://t.example"), Ok(()));
            assert_eq!(v(&req, "https://t.example/"), Ok(()));
            assert_eq!(v(&req, "https://other.example"), Err(VerifyError::Mismatch));
            let mut unsigned = req.clone();
            unsigned.headers_mut().remove(HEADER_SIGNATURE);
            assert_eq!(
                v(&unsigned, "https://t.example"),
                Err(VerifyError::MissingHeader(HEADER_SIGNATURE))
            );
            let mut post = req.clone();
            *post.method_mut() = http::Method::POST;
            assert_eq!(v(&post, "https://t.example"), Err(VerifyError::Mismatch));
        }
    }
}
