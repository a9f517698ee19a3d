//! The identity of what happened and of each delivery it causes: [`TriggerId`] (the caller's
//! conversion, event or click id) and [`DeliveryKey`], derived from it, which receivers use to
//! drop duplicates.
//!
//! A key is a pure function of (trigger id, postback, kind, revision), so it is the same in every
//! process and after every restart, and two different conversions never share one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{EventId, PostbackId};

/// The longest trigger id, in bytes.
pub const MAX_TRIGGER_ID: usize = 64;

/// The caller's id of a conversion, event or click: 1 to 64 characters from `A-Z a-z 0-9 - . _ ~`
/// (the URL-unreserved set, so a key made from it is safe in a URL and in a header as it is).
///
/// Stored inline, so a [`Trigger`](crate::registry::Trigger) stays `Copy` and resolving one
/// allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TriggerId {
    len: u8,
    bytes: [u8; MAX_TRIGGER_ID],
}

/// A trigger id that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerIdError {
    /// Empty.
    #[error("a trigger id is empty: pass the conversion, event or click id")]
    Empty,
    /// Longer than [`MAX_TRIGGER_ID`].
    #[error(
        "a trigger id is {0} bytes; the limit is 64: pass a shorter id (a UUID, or a hash of a longer one)"
    )]
    TooLong(usize),
    /// A character outside the unreserved set.
    #[error(
        "a trigger id may hold only `A-Z a-z 0-9 - . _ ~`, found `{found}` at byte {at}: pass the id in that alphabet (hex, base64url or a UUID)"
    )]
    Character {
        /// Byte offset.
        at: usize,
        /// The character.
        found: char,
    },
}

impl TriggerId {
    /// Check `id` and keep it.
    pub fn new(id: &str) -> Result<TriggerId, TriggerIdError> {
        let b = id.as_bytes();
        if b.is_empty() {
            return Err(TriggerIdError::Empty);
        }
        if b.len() > MAX_TRIGGER_ID {
            return Err(TriggerIdError::TooLong(b.len()));
        }
        if let Some(at) = b.iter().position(|&c| !is_unreserved(c)) {
            return Err(TriggerIdError::Character {
                at,
                found: id[at..].chars().next().unwrap_or('?'),
            });
        }
        let mut bytes = [0; MAX_TRIGGER_ID];
        bytes[..b.len()].copy_from_slice(b);
        Ok(TriggerId {
            len: b.len() as u8,
            bytes,
        })
    }

    /// The id previews use: the sample conversion id of
    /// [`SampleValues`](crate::template::SampleValues).
    pub fn sample() -> TriggerId {
        TriggerId::new(crate::template::SAMPLE_CONVERSION_ID).unwrap_or(TriggerId::from(1))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::hash::Hash for TriggerId {
    // Only the bytes in use: the padding is always zero, so equal ids hash equally.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write(&self.bytes[..usize::from(self.len)]);
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

impl From<u64> for TriggerId {
    /// A numeric id, written in decimal.
    fn from(n: u64) -> Self {
        let mut buf = [0u8; 20];
        let digits = decimal(&mut buf, n);
        let mut bytes = [0; MAX_TRIGGER_ID];
        bytes[..digits.len()].copy_from_slice(digits);
        TriggerId {
            len: digits.len() as u8,
            bytes,
        }
    }
}

impl FromStr for TriggerId {
    type Err = TriggerIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TriggerId::new(s)
    }
}

impl TryFrom<&str> for TriggerId {
    type Error = TriggerIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        TriggerId::new(s)
    }
}

impl fmt::Display for TriggerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TriggerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TriggerId({})", self.as_str())
    }
}

impl Serialize for TriggerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TriggerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TriggerId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TriggerKind {
    /// A base conversion.
    Conversion,
    /// An event other than the base conversion.
    Event {
        /// Which event.
        event: EventId,
    },
    /// A valid click on an offer paid per click.
    CpcClick,
}

/// What a delivery is for: a trigger of some kind, or a manager's test fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Purpose {
    /// A trigger of this kind.
    Trigger(TriggerKind),
    /// A test fire, never counted and never mixed up with a real delivery.
    Test,
}

impl From<TriggerKind> for Purpose {
    fn from(k: TriggerKind) -> Self {
        Purpose::Trigger(k)
    }
}

/// The stable identity of one delivery: (trigger id, postback, purpose, revision). Sent as the
/// `{delivery_id}` macro and, when configured, as the idempotency header; receivers drop
/// duplicates by it.
///
/// Written as `{trigger}.{postback}.{purpose}.{revision}`, with purpose `conversion`,
/// `event-{id}`, `cpc` or `test`. The trigger id may itself hold dots; the last three parts
/// never do, so the text reads back unambiguously ([`FromStr`]).
///
/// ```
/// use postback::model::{DeliveryKey, PostbackId, TriggerId, TriggerKind};
///
/// let key = DeliveryKey::new(TriggerId::new("c-1001")?, PostbackId::new(7), TriggerKind::Conversion, 0);
/// assert_eq!(key.to_string(), "c-1001.7.conversion.0");
/// assert_eq!("c-1001.7.conversion.0".parse::<DeliveryKey>()?, key);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryKey {
    trigger: TriggerId,
    postback: PostbackId,
    purpose: Purpose,
    revision: u32,
}

impl DeliveryKey {
    /// The key of `postback` fired by trigger `trigger`; `revision` is 0 for the first firing.
    pub fn new(
        trigger: TriggerId,
        postback: PostbackId,
        purpose: impl Into<Purpose>,
        revision: u32,
    ) -> DeliveryKey {
        DeliveryKey {
            trigger,
            postback,
            purpose: purpose.into(),
            revision,
        }
    }

    /// The trigger id.
    pub fn trigger(&self) -> TriggerId {
        self.trigger
    }
    /// The postback.
    pub fn postback(&self) -> PostbackId {
        self.postback
    }
    /// What it is for.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }
    /// The revision (0 for the first firing).
    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// Whether it is a correction ([`Correction`](super::Correction)): a revision above zero.
    pub fn is_correction(&self) -> bool {
        self.revision > 0
    }

    /// The key of the original firing this one revises (revision 0; itself for an original).
    pub fn original(&self) -> DeliveryKey {
        DeliveryKey {
            revision: 0,
            ..*self
        }
    }

    /// Whether this delivery must wait while `earlier` is unfinished: `earlier` is an earlier
    /// revision of the same trigger to the same postback. The order rule of corrections, which
    /// the engine and every store apply: a correction is sent only after each earlier revision
    /// was delivered or gave up.
    pub fn waits_behind(&self, earlier: &DeliveryKey) -> bool {
        earlier.revision < self.revision
            && earlier.trigger == self.trigger
            && earlier.postback == self.postback
            && earlier.purpose == self.purpose
    }
}

impl DeliveryKey {
    /// The key as text, as [`Display`](fmt::Display) writes it, without the formatting
    /// machinery: every send writes it once.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(usize::from(self.trigger.len) + 48);
        out.push_str(self.trigger.as_str());
        out.push('.');
        push_decimal(&mut out, self.postback.get());
        out.push('.');
        match self.purpose {
            Purpose::Trigger(TriggerKind::Conversion) => out.push_str("conversion"),
            Purpose::Trigger(TriggerKind::Event { event }) => {
                out.push_str("event-");
                push_decimal(&mut out, event.get());
            }
            Purpose::Trigger(TriggerKind::CpcClick) => out.push_str("cpc"),
            Purpose::Test => out.push_str("test"),
        }
        out.push('.');
        push_decimal(&mut out, u64::from(self.revision));
        out
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(buf: &mut [u8; 20], n: u64) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn push_decimal(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    for &b in decimal(&mut buf, n) {
        out.push(char::from(b));
    }
}

impl fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeliveryKey({self})")
    }
}

/// Text that is not a delivery key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a delivery key: expected `{{trigger}}.{{postback}}.{{purpose}}.{{revision}}`, such as `c-1001.7.conversion.0`"
)]
pub struct KeyParseError(pub String);

impl FromStr for DeliveryKey {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KeyParseError(s.to_owned());
        let mut parts = s.rsplitn(4, '.');
        let revision = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        let purpose = match parts.next().ok_or_else(bad)? {
            "conversion" => Purpose::Trigger(TriggerKind::Conversion),
            "cpc" => Purpose::Trigger(TriggerKind::CpcClick),
            "test" => Purpose::Test,
            p => {
                let event = p
                    .strip_prefix("event-")
                    .and_then(|e| e.parse().ok())
                    .ok_or_else(bad)?;
                Purpose::Trigger(TriggerKind::Event { event })
            }
        };
        let postback = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let trigger = parts
            .next()
            .and_then(|t| TriggerId::new(t).ok())
            .ok_or_else(bad)?;
        let key = DeliveryKey {
            trigger,
            postback,
            purpose,
            revision,
        };
        // One key, one text: `+1` or `007` would name the same key as `1` and `7`.
        if key.to_text() != s {
            return Err(bad());
        }
        Ok(key)
    }
}

impl Serialize for DeliveryKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeliveryKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_ids_take_the_unreserved_set_only() {
        assert_eq!(
            TriggerId::new("c0ffee-1.2_3~x").unwrap().as_str(),
            "c0ffee-1.2_3~x"
        );
        assert_eq!(TriggerId::new(""), Err(TriggerIdError::Empty));
        assert_eq!(
            TriggerId::new(&"a".repeat(65)),
            Err(TriggerIdError::TooLong(65))
        );
        assert_eq!(
            TriggerId::new("a&b"),
            Err(TriggerIdError::Character { at: 1, found: '&' })
        );
        assert!(TriggerId::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn a_correction_waits_behind_earlier_revisions_of_its_own_trigger_and_postback_only() {
        let t = TriggerId::from(1001);
        let key = |pb, rev| DeliveryKey::new(t, PostbackId::new(pb), TriggerKind::Conversion, rev);
        let c = key(7, 2);
        assert!(c.is_correction() && !key(7, 0).is_correction());
        assert_eq!(c.original(), key(7, 0));
        assert!(c.waits_behind(&key(7, 0)) && c.waits_behind(&key(7, 1)));
        assert!(!c.waits_behind(&key(7, 2)) && !c.waits_behind(&key(7, 3)));
        assert!(!c.waits_behind(&key(8, 0)));
        let other = DeliveryKey::new(
            TriggerId::from(1002),
            PostbackId::new(7),
            TriggerKind::Conversion,
            0,
        );
        assert!(!c.waits_behind(&other));
    }

    #[test]
    fn numeric_trigger_ids_are_decimal() {
        assert_eq!(TriggerId::from(0).as_str(), "0");
        assert_eq!(TriggerId::from(u64::MAX).as_str(), "18446744073709551615");
    }

    #[test]
    fn keys_read_back_even_when_the_trigger_id_has_dots() {
        for purpose in [
            Purpose::Trigger(TriggerKind::Conversion),
            Purpose::Trigger(TriggerKind::Event {
                event: EventId::new(3),
            }),
            Purpose::Trigger(TriggerKind::CpcClick),
            Purpose::Test,
        ] {
            let key = DeliveryKey::new(
                TriggerId::new("a.b.1.conversion.0").unwrap(),
                PostbackId::new(u64::MAX),
                purpose,
                u32::MAX,
            );
            assert_eq!(key.to_string().parse::<DeliveryKey>(), Ok(key));
            assert_eq!(key.to_text(), key.to_string());
        }
        for bad in [
            "",
            "x",
            "1.conversion.0",
            "a.b.conversion.0",
            "a.1.nope.0",
            "a.1.cpc.-1",
        ] {
            assert!(bad.parse::<DeliveryKey>().is_err(), "{bad}");
        }
    }
}
