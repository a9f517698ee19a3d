//! Where expansion gets its values: a trait a caller's own conversion type implements, and a
//! ready map-backed implementation.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Macro};
use super::money::{Amount, Currency};
use crate::hash::IdMap;

/// A value for one macro. Text is encoded for the position it lands in; the other variants are
/// formatted locale-free first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value<'a> {
    /// Arbitrary text; percent-encoded (and HTML-escaped in pixels) on the way out.
    Text(&'a str),
    /// Text already percent-encoded by the caller; written as-is, never encoded twice.
    Encoded(Encoded<'a>),
    /// A signed integer.
    Int(i64),
    /// An amount of money: `.` decimal, no grouping, no exponent.
    Amount(Amount),
    /// An ISO 4217 currency code.
    Currency(Currency),
    /// A point in time, written as unix seconds.
    Time(DateTime<Utc>),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Text(s)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Self {
        Value::Text(s)
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<Amount> for Value<'_> {
    fn from(a: Amount) -> Self {
        Value::Amount(a)
    }
}

impl From<Currency> for Value<'_> {
    fn from(c: Currency) -> Self {
        Value::Currency(c)
    }
}

impl<'a> From<Encoded<'a>> for Value<'a> {
    fn from(e: Encoded<'a>) -> Self {
        Value::Encoded(e)
    }
}

/// The values of one trigger, looked up by bound macro id (no hashing of names).
///
/// Implement it on your own conversion type to expand without building a map; `None` means "no
/// value" and is treated by the template's [`EmptyPolicy`](super::EmptyPolicy).
pub trait MacroValues {
    /// The value of `m`, if there is one.
    fn value(&self, m: Macro) -> Option<Value<'_>>;
}

impl<T: MacroValues + ?Sized> MacroValues for &T {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        (**self).value(m)
    }
}

/// Text that is already percent-encoded: only unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// and well-formed `%XX` escapes. Such text can neither add a parameter nor break out of an HTML
/// attribute, so it is written as-is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encoded<'a>(pub(super) &'a str);

/// Text that claims to be encoded but is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not percent-encoded (byte {at} is `{found}`): pass it as plain text and let the template encode it, or encode every reserved character"
)]
pub struct NotEncoded {
    /// The text given.
    pub text: String,
    /// Byte offset of the first offending character.
    pub at: usize,
    /// The offending character.
    pub found: char,
}

impl<'a> Encoded<'a> {
    /// Check `s` and view it as encoded text.
    pub fn new(s: &'a str) -> Result<Encoded<'a>, NotEncoded> {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'%' {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if hex(i + 1) && hex(i + 2) {
                    i += 3;
                    continue;
                }
            } else if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                i += 1;
                continue;
            }
            return Err(NotEncoded {
                text: s.to_owned(),
                at: i,
                found: s[i..].chars().next().unwrap_or('?'),
            });
        }
        Ok(Encoded(s))
    }

    /// The encoded text.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl fmt::Debug for Encoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encoded({:?})", self.0)
    }
}

impl fmt::Display for Encoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// An owned value, for [`ValueMap`] and for values that travel with a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OwnedValue {
    /// Plain text.
    Text(String),
    /// Checked percent-encoded text.
    #[serde(deserialize_with = "de_encoded")]
    Encoded(String),
    /// An integer.
    Int(i64),
    /// Money.
    Amount(Amount),
    /// A currency code.
    Currency(Currency),
    /// A time.
    Time(DateTime<Utc>),
}

fn de_encoded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    Encoded::new(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

impl OwnedValue {
    /// Pre-encoded text, checked.
    pub fn encoded(s: impl Into<String>) -> Result<OwnedValue, NotEncoded> {
        let s = s.into();
        Encoded::new(&s)?;
        Ok(OwnedValue::Encoded(s))
    }

    /// Borrow as a [`Value`].
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Text(s) => Value::Text(s),
            // Checked on construction and on deserialization.
            OwnedValue::Encoded(s) => Value::Encoded(Encoded(s)),
            OwnedValue::Int(n) => Value::Int(*n),
            OwnedValue::Amount(a) => Value::Amount(*a),
            OwnedValue::Currency(c) => Value::Currency(*c),
            OwnedValue::Time(t) => Value::Time(*t),
        }
    }
}

impl From<&str> for OwnedValue {
    fn from(s: &str) -> Self {
        OwnedValue::Text(s.to_owned())
    }
}

impl From<String> for OwnedValue {
    fn from(s: String) -> Self {
        OwnedValue::Text(s)
    }
}

impl From<i64> for OwnedValue {
    fn from(n: i64) -> Self {
        OwnedValue::Int(n)
    }
}

impl From<Amount> for OwnedValue {
    fn from(a: Amount) -> Self {
        OwnedValue::Amount(a)
    }
}

impl From<Currency> for OwnedValue {
    fn from(c: Currency) -> Self {
        OwnedValue::Currency(c)
    }
}

impl From<DateTime<Utc>> for OwnedValue {
    fn from(t: DateTime<Utc>) -> Self {
        OwnedValue::Time(t)
    }
}

/// A ready [`MacroValues`]: values by macro, owned. Serializes as a map from macro id to value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMap {
    values: IdMap<Macro, OwnedValue>,
}

/// A name given to [`ValueMap::set_named`] that the catalogue does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown macro `{name}`{}", suggestion.as_ref().map(|s| format!(": did you mean `{s}`?")).unwrap_or_default())]
pub struct UnknownName {
    /// The name given.
    pub name: String,
    /// The nearest known name.
    pub suggestion: Option<String>,
}

impl ValueMap {
    /// An empty map.
    pub fn new() -> ValueMap {
        ValueMap::default()
    }

    /// Set a value, builder style.
    #[must_use]
    pub fn with(mut self, m: Macro, v: impl Into<OwnedValue>) -> ValueMap {
        self.set(m, v);
        self
    }

    /// Set a value.
    pub fn set(&mut self, m: Macro, v: impl Into<OwnedValue>) -> &mut ValueMap {
        self.values.insert(m, v.into());
        self
    }

    /// Set a value by macro name, checked against `catalog`.
    pub fn set_named(
        &mut self,
        catalog: &Catalog,
        name: &str,
        v: impl Into<OwnedValue>,
    ) -> Result<&mut ValueMap, UnknownName> {
        match catalog.lookup(name) {
            Some(m) => Ok(self.set(m, v)),
            None => Err(UnknownName {
                name: name.to_owned(),
                suggestion: catalog.suggest(name),
            }),
        }
    }

    /// The value of `m`.
    pub fn get(&self, m: Macro) -> Option<&OwnedValue> {
        self.values.get(&m)
    }

    /// Remove a value.
    pub fn remove(&mut self, m: Macro) -> Option<OwnedValue> {
        self.values.remove(&m)
    }
}

impl MacroValues for ValueMap {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        let v = self.values.get(&m).or_else(|| match m {
            // One value serves both spellings of the payout.
            Macro::PAYOUT_AMOUNT => self.values.get(&Macro::PAYOUT),
            _ => None,
        });
        v.map(OwnedValue::as_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_accepts_only_unreserved_and_escapes() {
        assert!(Encoded::new("abc%20def-._~").is_ok());
        assert!(Encoded::new("").is_ok());
        let e = Encoded::new("a&b").unwrap_err();
        assert_eq!((e.at, e.found), (1, '&'));
        assert!(Encoded::new("%2").is_err());
        assert!(Encoded::new("%zz").is_err());
        assert!(Encoded::new("é").is_err());
    }

    #[test]
    fn value_map_answers_by_macro() {
        let m = ValueMap::new()
            .with(Macro::SUB1, "abc")
            .with(Macro::PAYOUT, Amount::new(150, 2));
        assert_eq!(m.value(Macro::SUB1), Some(Value::Text("abc")));
        assert_eq!(
            m.value(Macro::PAYOUT_AMOUNT),
            Some(Value::Amount(Amount::new(150, 2)))
        );
        assert_eq!(m.value(Macro::SUB2), None);
    }

    #[test]
    fn encoded_values_are_checked_on_deserialize() {
        let bad = r#"{"type":"encoded","value":"a&b"}"#;
        assert!(serde_json::from_str::<OwnedValue>(bad).is_err());
        let ok = r#"{"type":"encoded","value":"a%26b"}"#;
        assert_eq!(
            serde_json::from_str::<OwnedValue>(ok).unwrap(),
            OwnedValue::Encoded("a%26b".into())
        );
    }
}
