//! Where expansion gets its values: a trait a caller's own conversion type implements, and a
//! ready map-backed implementation.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Macro};
use super::encode::{self, Position};
use super::money::{Amount, Currency};
use super::writer::Out;
use super::{CURRENCY, Fill, Generic, MONEY, NOT_COMPONENT, Seg, write_checked, write_plain};
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

    /// Copy every value this trigger has (each built-in macro, and `extra` for a catalogue's
    /// own macros) into the compact form a delivery keeps, so that a later send can expand the
    /// postback's template as it is then. `{delivery_id}` is never kept: it derives from the
    /// delivery's key.
    fn to_stored(&self, extra: &[Macro]) -> StoredValues {
        StoredValues::capture(self, Macro::builtins().chain(extra.iter().copied()))
    }

    /// These values as a [`ValueMap`], if they are one. Expansion then writes the text the map
    /// prepared when each value was set (classified and encoded once) instead of asking
    /// [`MacroValues::value`] and encoding on every expansion. Keep the default (`None`) unless
    /// the map answers exactly as `value` does.
    #[inline(always)]
    fn as_value_map(&self) -> Option<&ValueMap> {
        None
    }
}

impl<T: MacroValues + ?Sized> MacroValues for &T {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        (**self).value(m)
    }

    fn to_stored(&self, extra: &[Macro]) -> StoredValues {
        (**self).to_stored(extra)
    }

    #[inline(always)]
    fn as_value_map(&self) -> Option<&ValueMap> {
        (**self).as_value_map()
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

/// A ready [`MacroValues`]: values by macro, owned. Serializes as `{"values": {id: value}}`.
///
/// Built-in macros (ids below `DENSE`) are held in a slot per id, so expansion finds a value
/// with one index and no hash; a network's own macros are in a map.
///
/// A map made with [`ValueMap::prepared`] also classifies and writes out each built-in value
/// when it is set (text percent-encoded for a query, amounts and numbers formatted, whether it
/// fits a money or currency macro), so that expanding a template copies prepared text instead of
/// encoding again: about half the instructions of an expansion, for setting values that cost
/// about twice as much. It pays off for a map expanded three times or more (a preview page, one
/// conversion rendered for many postbacks). A [`ValueMap::new`] map does not prepare: the engine
/// and the stores capture a trigger's values into [`StoredValues`] and expand those, so a map
/// handed to them is read once, and preparing it would be work thrown away.
#[derive(Clone, Default)]
pub struct ValueMap {
    /// Slot `i` holds the value of the macro with id `i`; no trailing empty slots.
    dense: Vec<Option<OwnedValue>>,
    /// Every other macro.
    sparse: IdMap<Macro, OwnedValue>,
    /// How expansion writes slot `i`, as many as `dense`.
    prep: Vec<Prep>,
    /// The prepared text of the slots (ASCII), followed by [`TEXT_PAD`].
    text: String,
    /// Bytes of `text` no slot uses any more (values replaced or removed).
    dead: usize,
    /// Whether `set` prepares built-in values ([`ValueMap::prepared`]).
    prepares: bool,
}

/// A slot's value as expansion writes it: `text[start..start + len]` of its [`ValueMap`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Prep {
    start: u32,
    len: u16,
    /// [`PREP_SET`] and the positions and checks its text fits.
    flags: u8,
}

/// The slot has prepared text (for a query component: `ValueMap::prep_value`).
const PREP_SET: u8 = 128;
/// The text is the same in every position (a path segment and HTML code too); the bit a
/// macro outside a query asks for.
const PREP_ANY_POS: u8 = NOT_COMPONENT;
/// The text is what a money macro writes for the value (the value fits one).
const PREP_MONEY: u8 = MONEY;
/// The text is what `{currency}` writes for the value (the value fits it).
const PREP_CURRENCY: u8 = CURRENCY;

/// Spaces after the prepared text, so that a short value can be copied as a fixed 16 or 32
/// bytes.
const TEXT_PAD: &str = "                                ";

/// The most bytes a slot's prepared text may hold; longer values are written as they are
/// asked for.
const MAX_PREPARED: usize = u16::MAX as usize;

impl fmt::Debug for ValueMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueMap")
            .field("dense", &self.dense)
            .field("sparse", &self.sparse)
            .finish()
    }
}

/// Ids below this have a slot: every built-in macro.
const DENSE: usize = 128;

impl PartialEq for ValueMap {
    fn eq(&self, other: &ValueMap) -> bool {
        // Slots are trimmed on removal, so equal maps have equal slots.
        self.dense == other.dense && self.sparse == other.sparse
    }
}

impl Eq for ValueMap {}

/// The serialized form, as it was when the map was one `HashMap` field.
#[derive(Serialize)]
#[serde(rename = "ValueMap")]
struct ValueMapRef<'a> {
    values: Pairs<'a>,
}

struct Pairs<'a>(&'a ValueMap);

impl Serialize for Pairs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

#[derive(Deserialize)]
#[serde(rename = "ValueMap")]
struct ValueMapOwned {
    values: IdMap<Macro, OwnedValue>,
}

impl Serialize for ValueMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ValueMapRef {
            values: Pairs(self),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ValueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = ValueMap::new();
        for (m, v) in ValueMapOwned::deserialize(d)?.values {
            map.set(m, v);
        }
        Ok(map)
    }
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

    /// An empty map that prepares each built-in value when it is set, for a map expanded many
    /// times (see [`ValueMap`]). It holds, compares and serializes as any other map.
    pub fn prepared() -> ValueMap {
        ValueMap {
            prepares: true,
            ..ValueMap::default()
        }
    }

    /// Set a value, builder style.
    #[must_use]
    pub fn with(mut self, m: Macro, v: impl Into<OwnedValue>) -> ValueMap {
        self.set(m, v);
        self
    }

    /// Set a value.
    pub fn set(&mut self, m: Macro, v: impl Into<OwnedValue>) -> &mut ValueMap {
        let v = v.into();
        let i = usize::from(m.id());
        if i < DENSE {
            if self.dense.len() <= i {
                // Room by powers of two: a map filled in any order grows a few times at most.
                let room = (i + 1).next_power_of_two().clamp(16, DENSE);
                self.dense.reserve_exact(room - self.dense.len());
                self.dense.resize_with(i + 1, || None);
                if self.prepares {
                    self.prep.reserve_exact(room - self.prep.len());
                    self.prep.resize_with(i + 1, Prep::default);
                }
            }
            if self.prepares {
                self.forget(i);
                self.prep[i] = self.prepare(&v);
            }
            self.dense[i] = Some(v);
            self.compact_if_wasteful();
        } else {
            self.sparse.insert(m, v);
        }
        self
    }

    /// Append the text of `v` for a query component to `text` and classify it.
    fn prepare(&mut self, v: &OwnedValue) -> Prep {
        if self.text.is_empty() {
            self.text.reserve(256);
            self.text.push_str(TEXT_PAD);
        }
        let start = self.text.len() - TEXT_PAD.len();
        self.text.truncate(start);
        let flags = prep_value(&mut self.text, v.as_value());
        let len = self.text.len() - start;
        self.text.push_str(TEXT_PAD);
        match (u32::try_from(start), u16::try_from(len)) {
            (Ok(start), Ok(len)) if usize::from(len) <= MAX_PREPARED => Prep { start, len, flags },
            // Written as it is asked for; the text stays until the next compaction.
            _ => {
                self.dead += len;
                Prep::default()
            }
        }
    }

    /// Slot `i`'s prepared text is no longer used.
    fn forget(&mut self, i: usize) {
        if let Some(p) = self.prep.get_mut(i) {
            if p.flags & PREP_SET != 0 {
                self.dead += usize::from(p.len);
            }
            *p = Prep::default();
        }
    }

    /// Rebuild `text` once most of it is text no slot uses, so that setting the same macro
    /// again and again does not grow the map.
    #[inline]
    fn compact_if_wasteful(&mut self) {
        if self.dead > 4096 && self.dead * 2 > self.text.len() {
            self.compact();
        }
    }

    #[cold]
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.text);
        let mut text = String::with_capacity(old.len() - self.dead.min(old.len()));
        self.dead = 0;
        for p in &mut self.prep {
            if p.flags & PREP_SET != 0 {
                let (start, end) = (p.start as usize, p.start as usize + usize::from(p.len));
                p.start = text.len() as u32;
                text.push_str(&old[start..end]);
            }
        }
        text.push_str(TEXT_PAD);
        self.text = text;
    }

    /// The prepared text of `m`, when it has some.
    #[inline(always)]
    fn prep_of(&self, m: Macro) -> Prep {
        match self.prep.get(usize::from(m.id())) {
            Some(p) if p.flags != 0 => *p,
            // One value serves both spellings of the payout.
            _ if m == Macro::PAYOUT_AMOUNT && self.get(m).is_none() => self
                .prep
                .get(usize::from(Macro::PAYOUT.id()))
                .copied()
                .unwrap_or_default(),
            _ => Prep::default(),
        }
    }

    /// Append the prepared text `p`, as a fixed 16 or 32 bytes where it is that short
    /// (reaching into the next slot's text or [`TEXT_PAD`]).
    #[inline(always)]
    fn push_prepared<O: Out>(&self, out: &mut O, p: Prep) {
        let (start, len) = (p.start as usize, usize::from(p.len));
        if len <= 16 {
            out.piece::<16>(&self.text, start, len);
        } else {
            out.piece::<32>(&self.text, start, len);
        }
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
    #[inline]
    pub fn get(&self, m: Macro) -> Option<&OwnedValue> {
        let i = usize::from(m.id());
        if i < DENSE {
            self.dense.get(i)?.as_ref()
        } else {
            self.sparse.get(&m)
        }
    }

    /// Remove a value.
    pub fn remove(&mut self, m: Macro) -> Option<OwnedValue> {
        let i = usize::from(m.id());
        if i >= DENSE {
            return self.sparse.remove(&m);
        }
        let v = self.dense.get_mut(i)?.take();
        self.forget(i);
        while self.dense.last().is_some_and(Option::is_none) {
            self.dense.pop();
            self.prep.pop();
        }
        self.compact_if_wasteful();
        v
    }

    /// Every value with its macro: slots in id order, then the others.
    fn iter(&self) -> impl Iterator<Item = (Macro, &OwnedValue)> {
        self.dense
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((Macro::from_id(i as u16), v.as_ref()?)))
            .chain(self.sparse.iter().map(|(m, v)| (*m, v)))
    }
}

impl MacroValues for ValueMap {
    #[inline]
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        let v = self.get(m).or_else(|| match m {
            // One value serves both spellings of the payout.
            Macro::PAYOUT_AMOUNT => self.get(Macro::PAYOUT),
            _ => None,
        });
        v.map(OwnedValue::as_value)
    }

    fn to_stored(&self, _extra: &[Macro]) -> StoredValues {
        // Every value of the map, custom macros included, without probing the catalogue.
        StoredValues::from_pairs(
            self.iter()
                .filter(|(m, _)| *m != Macro::DELIVERY_ID)
                .map(|(m, v)| (m, v.as_value())),
        )
    }

    #[inline(always)]
    fn as_value_map(&self) -> Option<&ValueMap> {
        Some(self)
    }
}

/// Write `v` as a macro in a query component writes it, and say where else that text is what
/// expansion would write: in every position, for a money macro, for `{currency}`. A claim about
/// a check is made only after writing the value the way expansion does and comparing (past the
/// end of `out`, then cut back), so a prepared value cannot differ from one written when asked
/// for; cheap tests first keep that off the common path (and its errors' allocations with it).
fn prep_value(out: &mut String, v: Value<'_>) -> u8 {
    let start = out.len();
    write_plain(out, v, Position::Component);
    let s = match v {
        // Written by the same code whatever the position, and by the same code for a money
        // macro (amounts and integers) or `{currency}` (a code) as for any other.
        Value::Int(_) | Value::Amount(_) => return PREP_SET | PREP_ANY_POS | PREP_MONEY,
        Value::Currency(_) => return PREP_SET | PREP_ANY_POS | PREP_CURRENCY,
        Value::Time(_) => return PREP_SET | PREP_ANY_POS,
        Value::Encoded(e) => e.as_str(),
        // Encoding decides byte by byte, so the text is the same everywhere exactly when each
        // byte is kept everywhere or escaped everywhere.
        Value::Text(s) if encode::same_in_every_position(s) => s,
        Value::Text(_) => return PREP_SET,
    };
    let mut flags = PREP_SET | PREP_ANY_POS;
    let end = out.len();
    // Only a plain decimal (or nothing) fits a money macro, only three letters (or nothing)
    // `{currency}`: other text is not tried.
    let decimal = s
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    let code = s.len() == 3 || s.is_empty();
    for (check, maybe) in [(PREP_MONEY, decimal), (PREP_CURRENCY, code)] {
        if maybe {
            if write_checked(out, v, check, Position::Component) && out[end..] == out[start..end] {
                flags |= check;
            }
            out.truncate(end);
        }
    }
    flags
}

impl Fill for ValueMap {
    #[inline(always)]
    fn plain<O: Out>(&self, out: &mut O, seg: &Seg) {
        let p = self.prep_of(seg.mac);
        let need = seg.flags & PREP_ANY_POS | PREP_SET;
        if p.flags & need == need {
            self.push_prepared(out, p);
        } else {
            Generic(self).plain(out, seg);
        }
    }

    #[inline(always)]
    fn checked<O: Out>(&self, out: &mut O, seg: &Seg) -> bool {
        let p = self.prep_of(seg.mac);
        let need = seg.flags & (PREP_ANY_POS | PREP_MONEY | PREP_CURRENCY) | PREP_SET;
        if p.flags & need == need {
            self.push_prepared(out, p);
            true
        } else {
            Generic(self).checked(out, seg)
        }
    }

    fn value_of(&self, m: Macro) -> Option<Value<'_>> {
        MacroValues::value(self, m)
    }
}

/// Values of a trigger plus a delivery's id (its key as text) for `{delivery_id}`.
#[derive(Debug, Clone, Copy)]
pub struct WithDeliveryId<'a, V: ?Sized> {
    inner: &'a V,
    id: &'a str,
}

impl<'a, V: ?Sized> WithDeliveryId<'a, V> {
    /// `inner`'s values, with `{delivery_id}` as `id`.
    pub fn new(inner: &'a V, id: &'a str) -> Self {
        WithDeliveryId { inner, id }
    }
}

impl<V: MacroValues + ?Sized> MacroValues for WithDeliveryId<'_, V> {
    #[inline]
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        if m == Macro::DELIVERY_ID {
            Some(Value::Text(self.id))
        } else {
            self.inner.value(m)
        }
    }
}

/// The values a delivery keeps: every value of its trigger, so that each send, retry and replay
/// expands the postback's template as it is at that moment (a partner who fixes a broken URL gets
/// the held conversions at the new one).
///
/// Compact and immutable: one text buffer and one slot per macro, sorted by macro. Serializes
/// like [`ValueMap`]. `Debug` shows which macros it holds, never their values, since a value may
/// land in a secret parameter.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredValues {
    text: Box<str>,
    slots: Box<[(Macro, Slot)]>,
    /// Which built-ins have a slot, to find theirs without a search (a branch per halving, on
    /// every macro of every send).
    low: Builtins,
}

/// The built-in macros (ids below 128) that have a slot. Slots are sorted by id, so a
/// built-in's slot is the number of set bits below its own: the set bits of the bytes before
/// its byte, counted when the set is made, plus those below it in its byte, from a table
/// (a machine without a population-count instruction, the portable build's target, counts a
/// `u128` in some forty instructions).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Builtins {
    bits: [u8; 16],
    before: [u8; 16],
}

/// The number of set bits of each byte.
const ONES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).count_ones() as u8;
        i += 1;
    }
    t
};

impl Builtins {
    fn new(ids: impl Iterator<Item = u16>) -> Builtins {
        let mut b = Builtins::default();
        for id in ids.filter(|id| *id < 128) {
            b.bits[usize::from(id / 8)] |= 1 << (id % 8);
        }
        let mut n = 0u8;
        for (before, bits) in b.before.iter_mut().zip(b.bits) {
            *before = n;
            n += ONES[usize::from(bits)];
        }
        b
    }

    /// The slot of built-in `id`: `Some(None)` when it has none, `None` when `id` is no
    /// built-in.
    #[inline(always)]
    fn slot(&self, id: u16) -> Option<Option<usize>> {
        let (byte, bit) = (usize::from(id / 8), id % 8);
        let bits = *self.bits.get(byte)?;
        Some(if bits & (1 << bit) == 0 {
            None
        } else {
            let below = bits & ((1u8 << bit) - 1);
            Some(usize::from(self.before[byte]) + usize::from(ONES[usize::from(below)]))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Text { start: u32, end: u32 },
    Encoded { start: u32, end: u32 },
    Int(i64),
    Amount(Amount),
    Currency(Currency),
    Time(DateTime<Utc>),
}

impl StoredValues {
    /// The values `values` has for `macros`.
    pub fn capture<V: MacroValues + ?Sized>(
        values: &V,
        macros: impl IntoIterator<Item = Macro>,
    ) -> StoredValues {
        StoredValues::from_pairs(
            macros
                .into_iter()
                .filter(|m| *m != Macro::DELIVERY_ID)
                .filter_map(|m| values.value(m).map(|v| (m, v))),
        )
    }

    fn from_pairs<'v>(pairs: impl Iterator<Item = (Macro, Value<'v>)>) -> StoredValues {
        // Sorted first, so equal values make equal bytes whatever order they came in; a repeated
        // macro keeps its first value, as a map keeps one.
        let mut pairs: Vec<(Macro, Value<'v>)> = pairs.collect();
        if !pairs.is_sorted_by_key(|(m, _)| *m) {
            pairs.sort_by_key(|(m, _)| *m);
        }
        pairs.dedup_by_key(|(m, _)| *m);
        let mut text = String::with_capacity(
            pairs
                .iter()
                .map(|(_, v)| match v {
                    Value::Text(s) => s.len(),
                    Value::Encoded(e) => e.as_str().len(),
                    _ => 0,
                })
                .sum(),
        );
        let mut slots: Vec<(Macro, Slot)> = Vec::with_capacity(pairs.len());
        for (m, v) in pairs {
            let mut span = |s: &str| {
                let start = text.len() as u32;
                text.push_str(s);
                (start, text.len() as u32)
            };
            let slot = match v {
                Value::Text(s) => {
                    let (start, end) = span(s);
                    Slot::Text { start, end }
                }
                Value::Encoded(e) => {
                    let (start, end) = span(e.as_str());
                    Slot::Encoded { start, end }
                }
                Value::Int(n) => Slot::Int(n),
                Value::Amount(a) => Slot::Amount(a),
                Value::Currency(c) => Slot::Currency(c),
                Value::Time(t) => Slot::Time(t),
            };
            slots.push((m, slot));
        }
        let low = Builtins::new(slots.iter().map(|(m, _)| m.id()));
        StoredValues {
            text: text.into_boxed_str(),
            slots: slots.into_boxed_slice(),
            low,
        }
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The macros that have a value, in id order.
    pub fn macros(&self) -> impl Iterator<Item = Macro> + '_ {
        self.slots.iter().map(|(m, _)| *m)
    }

    /// Bytes held on the heap (capacity planning).
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + std::mem::size_of_val(&*self.slots)
    }

    /// The length in bytes of `m`'s value if it is text (0 for none or a number).
    pub fn text_len(&self, m: Macro) -> usize {
        match self.value(m) {
            Some(Value::Text(t)) => t.len(),
            Some(Value::Encoded(e)) => e.as_str().len(),
            _ => 0,
        }
    }

    #[inline]
    fn get(&self, m: Macro) -> Option<Value<'_>> {
        let i = match self.low.slot(m.id()) {
            Some(slot) => slot?,
            None => self.slots.binary_search_by_key(&m, |(k, _)| *k).ok()?,
        };
        let text = |start: u32, end: u32| self.text.get(start as usize..end as usize);
        Some(match self.slots.get(i)?.1 {
            Slot::Text { start, end } => Value::Text(text(start, end)?),
            // Checked when captured (an `Encoded`) or deserialized.
            Slot::Encoded { start, end } => Value::Encoded(Encoded(text(start, end)?)),
            Slot::Int(n) => Value::Int(n),
            Slot::Amount(a) => Value::Amount(a),
            Slot::Currency(c) => Value::Currency(c),
            Slot::Time(t) => Value::Time(t),
        })
    }
}

impl MacroValues for StoredValues {
    #[inline]
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        self.get(m).or_else(|| match m {
            Macro::PAYOUT_AMOUNT => self.get(Macro::PAYOUT),
            _ => None,
        })
    }

    fn to_stored(&self, _extra: &[Macro]) -> StoredValues {
        self.clone()
    }
}

impl fmt::Debug for StoredValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredValues")
            .field(
                "macros",
                &self.slots.iter().map(|(m, _)| m).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A borrowed [`OwnedValue`], serialized the same way.
#[derive(Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
enum ValueRef<'a> {
    Text(&'a str),
    Encoded(&'a str),
    Int(i64),
    Amount(Amount),
    Currency(Currency),
    Time(DateTime<Utc>),
}

impl Serialize for StoredValues {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.slots.len()))?;
        for (m, _) in self.slots.iter() {
            let v = match self.get(*m) {
                Some(Value::Text(t)) => ValueRef::Text(t),
                Some(Value::Encoded(e)) => ValueRef::Encoded(e.as_str()),
                Some(Value::Int(n)) => ValueRef::Int(n),
                Some(Value::Amount(a)) => ValueRef::Amount(a),
                Some(Value::Currency(c)) => ValueRef::Currency(c),
                Some(Value::Time(t)) => ValueRef::Time(t),
                None => continue,
            };
            map.serialize_entry(m, &v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StoredValues {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `OwnedValue` checks encoded text on the way in.
        let map = std::collections::BTreeMap::<MacroKey, OwnedValue>::deserialize(d)?;
        Ok(StoredValues::from_pairs(
            map.iter().map(|(m, v)| (m.0, v.as_value())),
        ))
    }
}

/// A macro id as a map key: a number, or a number in a string (JSON object keys, also when
/// buffered inside a tagged enum such as an event).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct MacroKey(Macro);

impl<'de> Deserialize<'de> for MacroKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MacroKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a macro id")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<MacroKey, E> {
                u16::try_from(n)
                    .map(|n| MacroKey(Macro::from_id(n)))
                    .map_err(|_| E::custom(format!("macro id {n} is out of range")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<MacroKey, E> {
                let n: u64 = s
                    .parse()
                    .map_err(|_| E::custom(format!("`{s}` is not a macro id")))?;
                self.visit_u64(n)
            }
        }
        d.deserialize_any(V)
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
    fn only_a_prepared_map_prepares_and_both_expand_alike() {
        let t = super::super::Template::parse("https://t.example/p/{sub2}?a={sub1}&pay={payout}")
            .unwrap();
        let fill = |m: ValueMap| {
            m.with(Macro::SUB1, "a b&c")
                .with(Macro::SUB2, "x/y")
                .with(Macro::PAYOUT, Amount::new(1250, 2))
        };
        let (plain, prepared) = (fill(ValueMap::new()), fill(ValueMap::prepared()));
        assert!(plain.text.is_empty());
        assert_ne!(prepared.prep_of(Macro::SUB1).flags, 0);
        assert_eq!(plain, prepared);
        assert_eq!(t.expand(&plain).unwrap(), t.expand(&prepared).unwrap());
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
    fn stored_values_answer_like_the_map_they_came_from_and_round_trip() {
        let map = ValueMap::new()
            .with(Macro::SUB1, "a b&c")
            .with(Macro::SUB2, OwnedValue::encoded("x%20y").unwrap())
            .with(Macro::PAYOUT, Amount::new(1250, 2))
            .with(Macro::CURRENCY, Currency::new("EUR").unwrap())
            .with(Macro::EVENT_ID, 7)
            .with(Macro::DELIVERY_ID, "never kept");
        let stored = map.to_stored(&[]);
        let generic = StoredValues::capture(&map, Macro::builtins());
        for m in Macro::builtins().filter(|m| *m != Macro::DELIVERY_ID) {
            assert_eq!(stored.value(m), map.value(m), "{m:?}");
            assert_eq!(generic.value(m), map.value(m), "{m:?}");
        }
        assert_eq!(stored.value(Macro::DELIVERY_ID), None);
        let json = serde_json::to_string(&stored).unwrap();
        assert_eq!(serde_json::from_str::<StoredValues>(&json).unwrap(), stored);
        assert!(!format!("{stored:?}").contains("a b&c"));
    }

    #[test]
    fn stored_values_find_each_slot_whatever_subset_of_macros_they_hold() {
        // Ids 0..128 and custom ones, every third, every other, and runs of set bits across
        // the bytes of the built-in set.
        let custom = [
            Macro::from_id(1024),
            Macro::from_id(1030),
            Macro::from_id(9000),
        ];
        for keep in [
            |i: u16| i % 3 == 0,
            |i: u16| i % 2 == 1,
            |i: u16| (6..20).contains(&i),
            |_| true,
        ] {
            let mut map = ValueMap::new();
            let ids = (0..128).chain(custom.iter().map(|m| m.id()));
            for id in ids.clone().filter(|id| keep(*id)) {
                map.set(Macro::from_id(id), format!("v{id}"));
            }
            let stored = map.to_stored(&[]);
            for id in ids.chain([128, 500, 1023]) {
                let m = Macro::from_id(id);
                let want = map.value(m).filter(|_| m != Macro::DELIVERY_ID);
                assert_eq!(stored.value(m), want, "id {id}");
            }
        }
    }

    #[test]
    fn value_map_keeps_its_serialized_form_and_equality() {
        let custom = Macro::from_id(1030);
        let mut map = ValueMap::new()
            .with(Macro::SUB1, "a")
            .with(Macro::PAYOUT, Amount::new(150, 2))
            .with(custom, "c");
        let json = serde_json::to_value(&map).unwrap();
        let expected = serde_json::json!({"values": {
            Macro::SUB1.id().to_string(): {"type": "text", "value": "a"},
            Macro::PAYOUT.id().to_string(): {"type": "amount", "value": {"units": 150, "scale": 2}},
            "1030": {"type": "text", "value": "c"},
        }});
        assert_eq!(json, expected);
        assert_eq!(serde_json::from_value::<ValueMap>(json).unwrap(), map);
        assert_eq!(map.get(custom), Some(&OwnedValue::from("c")));
        // Removing the highest slot compares equal to never having set it.
        map.set(Macro::EVENT_ID, 7);
        assert_eq!(map.remove(Macro::EVENT_ID), Some(OwnedValue::Int(7)));
        assert_eq!(map.remove(Macro::EVENT_ID), None);
        assert_eq!(
            map,
            ValueMap::new()
                .with(custom, "c")
                .with(Macro::PAYOUT, Amount::new(150, 2))
                .with(Macro::SUB1, "a")
        );
    }

    #[test]
    fn replaced_values_do_not_grow_the_prepared_text() {
        let mut map = ValueMap::prepared().with(Macro::SUB2, "stays & put");
        for i in 0..2_000 {
            map.set(Macro::SUB1, format!("value {i} with some length to it"));
            if i % 7 == 0 {
                map.remove(Macro::SUB3);
                map.set(Macro::SUB3, i64::from(i));
            }
        }
        // Live text is under 60 bytes; at most 4 KiB of replaced text waits for compaction.
        assert!(map.text.len() < 4096 * 2 + 128, "{} bytes", map.text.len());
        assert!(map.text.ends_with(TEXT_PAD));
        let t =
            super::super::Template::parse("https://t.example/?a={sub1}&b={sub2}&c={sub3}").unwrap();
        assert_eq!(
            t.expand(&map).unwrap(),
            "https://t.example/?a=value%201999%20with%20some%20length%20to%20it&b=stays%20%26%20put&c=1995"
        );
    }

    #[test]
    fn a_value_too_long_to_prepare_is_written_when_asked_for() {
        let long = "a&".repeat(40_000);
        let map = ValueMap::prepared()
            .with(Macro::SUB1, long.as_str())
            .with(Macro::SUB2, "b c");
        assert_eq!(map.prep_of(Macro::SUB1), Prep::default());
        assert_ne!(map.prep_of(Macro::SUB2).flags, 0);
        let t = super::super::Template::parse("https://t.example/?a={sub1}&b={sub2}").unwrap();
        let expected = format!("https://t.example/?a={}&b=b%20c", "a%26".repeat(40_000));
        assert_eq!(t.expand(&map).unwrap(), expected);
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
