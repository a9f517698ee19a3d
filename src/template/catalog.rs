//! The macro catalogue: which names a template may use, bound to small ids at parse time so that
//! expansion never hashes a name.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A macro, bound to a number when a template is parsed.
///
/// Built-in macros are associated constants; a network's own macros get ids from
/// [`Catalog::register`]. Match on them in a [`MacroValues`](super::MacroValues) impl:
///
/// ```
/// use postback::template::{Macro, MacroValues, Value};
///
/// struct Conversion { click: String, payout_cents: i64 }
///
/// impl MacroValues for Conversion {
///     fn value(&self, m: Macro) -> Option<Value<'_>> {
///         match m {
///             Macro::SUB1 => Some(Value::Text(&self.click)),
///             Macro::PAYOUT => Some(Value::Amount(postback::template::Amount::new(self.payout_cents, 2))),
///             _ => None,
///         }
///     }
/// }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Macro(u16);

/// The built-in macros sorted by id, at compile time: captured values come out sorted.
const BUILTINS_BY_ID: [Macro; BUILTINS.len()] = {
    let mut out = [Macro(0); BUILTINS.len()];
    let mut i = 0;
    while i < BUILTINS.len() {
        out[i] = BUILTINS[i].1;
        i += 1;
    }
    // Insertion sort: a few dozen entries, once, in the compiler.
    let mut i = 1;
    while i < out.len() {
        let mut j = i;
        while j > 0 && out[j - 1].0 > out[j].0 {
            let t = out[j - 1];
            out[j - 1] = out[j];
            out[j] = t;
            j -= 1;
        }
        i += 1;
    }
    out
};

/// First id handed to a network's own macros; everything below is reserved for built-ins.
const FIRST_CUSTOM: u16 = 1024;

macro_rules! builtins {
    ($( $(#[$doc:meta])* $konst:ident = $id:literal, $name:literal; )*) => {
        impl Macro {
            $( $(#[$doc])* pub const $konst: Macro = Macro($id); )*
        }
        /// Built-in names sorted for binary search (checked by a unit test).
        const BUILTINS: &[(&str, Macro)] = &[ $( ($name, Macro::$konst), )* ];
    };
}

builtins! {
    /// `{adv1}`: a value the advertiser passed.
    ADV1 = 20, "adv1";
    /// `{adv10}`.
    ADV10 = 29, "adv10";
    /// `{adv2}`.
    ADV2 = 21, "adv2";
    /// `{adv3}`.
    ADV3 = 22, "adv3";
    /// `{adv4}`.
    ADV4 = 23, "adv4";
    /// `{adv5}`.
    ADV5 = 24, "adv5";
    /// `{adv6}`.
    ADV6 = 25, "adv6";
    /// `{adv7}`.
    ADV7 = 26, "adv7";
    /// `{adv8}`.
    ADV8 = 27, "adv8";
    /// `{adv9}`.
    ADV9 = 28, "adv9";
    /// `{affiliate_id}`: the partner's id at the network.
    AFFILIATE_ID = 40, "affiliate_id";
    /// `{click_timestamp}`: unix seconds of the click.
    CLICK_TIMESTAMP = 57, "click_timestamp";
    /// `{conversion_id}`: the network's conversion id.
    CONVERSION_ID = 50, "conversion_id";
    /// `{conversion_status}`: approved, pending, rejected.
    CONVERSION_STATUS = 58, "conversion_status";
    /// `{country}`: ISO 3166 country of the conversion.
    COUNTRY = 60, "country";
    /// `{coupon_code}`.
    COUPON_CODE = 59, "coupon_code";
    /// `{currency}`: ISO 4217 code of the amounts; placed first in the query by default.
    CURRENCY = 45, "currency";
    /// `{delivery_id}`: the stable id of one delivery, the same on every retry, for de-duplication.
    DELIVERY_ID = 70, "delivery_id";
    /// `{device_type}`.
    DEVICE_TYPE = 61, "device_type";
    /// `{event_id}`: the id of the event that fired.
    EVENT_ID = 51, "event_id";
    /// `{event_name}`.
    EVENT_NAME = 52, "event_name";
    /// `{offer_id}`.
    OFFER_ID = 41, "offer_id";
    /// `{order_id}`: the advertiser's order id.
    ORDER_ID = 53, "order_id";
    /// `{payout}`: what the network pays the partner.
    PAYOUT = 42, "payout";
    /// `{payout_amount}`: an alias some partners use for `{payout}`; filled from the same value.
    PAYOUT_AMOUNT = 46, "payout_amount";
    /// `{revenue}`: what the advertiser pays the network.
    REVENUE = 43, "revenue";
    /// `{sale_amount}`: the order value.
    SALE_AMOUNT = 44, "sale_amount";
    /// `{session_ip}`.
    SESSION_IP = 62, "session_ip";
    /// `{source_id}`.
    SOURCE_ID = 47, "source_id";
    /// `{sub1}`: a value the partner put on the tracking link, usually its own click id.
    SUB1 = 10, "sub1";
    /// `{sub10}`.
    SUB10 = 19, "sub10";
    /// `{sub2}`.
    SUB2 = 11, "sub2";
    /// `{sub3}`.
    SUB3 = 12, "sub3";
    /// `{sub4}`.
    SUB4 = 13, "sub4";
    /// `{sub5}`.
    SUB5 = 14, "sub5";
    /// `{sub6}`.
    SUB6 = 15, "sub6";
    /// `{sub7}`.
    SUB7 = 16, "sub7";
    /// `{sub8}`.
    SUB8 = 17, "sub8";
    /// `{sub9}`.
    SUB9 = 18, "sub9";
    /// `{timestamp}`: unix seconds of the conversion.
    TIMESTAMP = 56, "timestamp";
    /// `{transaction_id}`: the network's click id.
    TRANSACTION_ID = 1, "transaction_id";
}

impl Macro {
    /// `sub1` .. `sub10` by number; `None` outside 1..=10.
    pub const fn sub(n: u8) -> Option<Macro> {
        if n >= 1 && n <= 10 {
            Some(Macro(Macro::SUB1.0 + n as u16 - 1))
        } else {
            None
        }
    }

    /// `adv1` .. `adv10` by number; `None` outside 1..=10.
    pub const fn adv(n: u8) -> Option<Macro> {
        if n >= 1 && n <= 10 {
            Some(Macro(Macro::ADV1.0 + n as u16 - 1))
        } else {
            None
        }
    }

    /// The raw id: stable for built-ins across versions, registration order for custom macros.
    pub const fn id(self) -> u16 {
        self.0
    }

    /// The macro with this raw id (stored values read back; ids are not checked here).
    pub(crate) const fn from_id(id: u16) -> Macro {
        Macro(id)
    }

    /// Every built-in macro, in id order.
    pub fn builtins() -> impl Iterator<Item = Macro> {
        BUILTINS_BY_ID.iter().copied()
    }

    /// Whether this is one of the crate's built-in macros.
    pub const fn is_builtin(self) -> bool {
        self.0 < FIRST_CUSTOM
    }

    /// The built-in name, or `None` for a custom macro (ask the [`Catalog`]).
    pub fn builtin_name(self) -> Option<&'static str> {
        BUILTINS.iter().find(|(_, m)| *m == self).map(|(n, _)| *n)
    }

    /// Whether the value of this macro is an amount of money (formatted locale-free).
    pub const fn is_money(self) -> bool {
        matches!(
            self,
            Macro::PAYOUT | Macro::PAYOUT_AMOUNT | Macro::REVENUE | Macro::SALE_AMOUNT
        )
    }
}

impl fmt::Debug for Macro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.builtin_name() {
            Some(n) => write!(f, "Macro({n})"),
            None => write!(f, "Macro(custom #{})", self.0),
        }
    }
}

/// Error registering a custom macro.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The name is not a valid macro name.
    #[error(
        "`{0}` is not a valid macro name: use letters, digits, `_`, `.` or `-`, starting with a letter or `_`"
    )]
    InvalidName(String),
    /// The name is already known.
    #[error("macro `{0}` already exists: use the existing one instead of registering it again")]
    Duplicate(String),
    /// Too many custom macros.
    #[error("too many custom macros (the limit is {0}): reuse or retire some")]
    Full(usize),
}

/// The names a template may use: the built-ins plus a network's own.
///
/// Also says which macros carry a click id: a server-to-server postback must contain one, or the
/// partner cannot credit the conversion.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CatalogData", into = "CatalogData")]
pub struct Catalog {
    custom: Vec<Box<str>>,
    /// `custom` by name, for lookups in O(log n) (a B-tree: names are text, and no hash seed).
    by_name: BTreeMap<Box<str>, u16>,
    click_ids: Vec<Macro>,
    /// `click_ids` sorted and deduplicated, for [`Catalog::is_click_id`] by binary search.
    click_sorted: Vec<Macro>,
}

/// The serialized form of a [`Catalog`]: its custom names and click-id macros.
#[derive(Serialize, Deserialize)]
struct CatalogData {
    custom: Vec<Box<str>>,
    click_ids: Vec<Macro>,
}

impl From<Catalog> for CatalogData {
    fn from(c: Catalog) -> Self {
        CatalogData {
            custom: c.custom,
            click_ids: c.click_ids,
        }
    }
}

impl TryFrom<CatalogData> for Catalog {
    type Error = CatalogError;
    fn try_from(d: CatalogData) -> Result<Self, Self::Error> {
        if d.custom.len() > CUSTOM_LIMIT {
            return Err(CatalogError::Full(CUSTOM_LIMIT));
        }
        let mut c = Catalog {
            custom: Vec::with_capacity(d.custom.len()),
            by_name: BTreeMap::new(),
            click_ids: Vec::new(),
            click_sorted: Vec::new(),
        };
        for (i, name) in d.custom.iter().enumerate() {
            // In the limit, so the id fits.
            c.register_at(name, Macro(FIRST_CUSTOM + i as u16));
        }
        c.set_click_id_macros(d.click_ids);
        Ok(c)
    }
}

/// How many custom macros a catalogue can hold: the ids above the built-ins.
const CUSTOM_LIMIT: usize = (u16::MAX - FIRST_CUSTOM) as usize;

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("custom", &self.custom)
            .field("click_ids", &self.click_ids)
            .finish()
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::standard()
    }
}

pub(crate) fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

impl Catalog {
    /// The built-in macros, with `transaction_id` and `sub1`..`sub10` as click-id carriers.
    pub fn standard() -> Catalog {
        let mut click_ids = vec![Macro::TRANSACTION_ID];
        click_ids.extend((1..=10).filter_map(Macro::sub));
        Catalog {
            custom: Vec::new(),
            by_name: BTreeMap::new(),
            // Already sorted: id 1, then 10..=19.
            click_sorted: click_ids.clone(),
            click_ids,
        }
    }

    /// Register a network's own macro; returns its id. Names are case-sensitive.
    pub fn register(&mut self, name: &str) -> Result<Macro, CatalogError> {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || !is_name_start(bytes[0])
            || !bytes.iter().all(|&b| is_name_byte(b))
            || bytes.len() > 64
        {
            return Err(CatalogError::InvalidName(name.to_owned()));
        }
        if self.lookup(name).is_some() {
            return Err(CatalogError::Duplicate(name.to_owned()));
        }
        if self.custom.len() >= CUSTOM_LIMIT {
            return Err(CatalogError::Full(CUSTOM_LIMIT));
        }
        let id = self.custom.len() as u16;
        self.custom.push(name.into());
        self.by_name.insert(name.into(), id);
        Ok(Macro(FIRST_CUSTOM + id))
    }

    /// Bind `name` to exactly `m` (restoring a serialized template). Holes left below `m` hold
    /// empty names, which never match a lookup.
    pub(crate) fn register_at(&mut self, name: &str, m: Macro) {
        if m.is_builtin() {
            return;
        }
        let id = m.0 - FIRST_CUSTOM;
        let i = usize::from(id);
        if self.custom.len() <= i {
            self.custom.resize(i + 1, Box::from(""));
        }
        let old = std::mem::replace(&mut self.custom[i], name.into());
        if self.by_name.get(&old) == Some(&id) {
            self.by_name.remove(&old);
        }
        // A name bound twice resolves to its lowest id, as a scan from the front would.
        if !name.is_empty() && self.by_name.get(name).is_none_or(|&j| j > id) {
            self.by_name.insert(name.into(), id);
        }
    }

    /// Replace the set of macros that count as carrying a click id.
    pub fn set_click_id_macros(&mut self, macros: impl IntoIterator<Item = Macro>) {
        self.click_ids = macros.into_iter().collect();
        self.click_sorted.clone_from(&self.click_ids);
        self.click_sorted.sort_unstable();
        self.click_sorted.dedup();
    }

    /// Whether `m` carries a click id.
    pub fn is_click_id(&self, m: Macro) -> bool {
        self.click_sorted.binary_search(&m).is_ok()
    }

    /// The macros that carry a click id.
    pub fn click_id_macros(&self) -> &[Macro] {
        &self.click_ids
    }

    /// Find a macro by its exact (case-sensitive) name.
    pub fn lookup(&self, name: &str) -> Option<Macro> {
        if let Ok(i) = BUILTINS.binary_search_by(|(n, _)| (*n).cmp(name)) {
            return Some(BUILTINS[i].1);
        }
        self.by_name.get(name).map(|&id| Macro(FIRST_CUSTOM + id))
    }

    /// The name of a macro, built-in or registered here.
    pub fn name(&self, m: Macro) -> Option<&str> {
        if m.is_builtin() {
            m.builtin_name()
        } else {
            self.custom.get((m.0 - FIRST_CUSTOM) as usize).map(|s| &**s)
        }
    }

    /// Every name in the catalogue: built-ins first, then custom ones.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        BUILTINS
            .iter()
            .map(|(n, _)| *n)
            .chain(self.custom.iter().map(|s| &**s).filter(|s| !s.is_empty()))
    }

    /// The known name nearest to `name` (case-insensitive match first, then edit distance at
    /// most 3), for "did you mean" messages.
    pub fn suggest(&self, name: &str) -> Option<String> {
        if let Some(n) = self.names().find(|n| n.eq_ignore_ascii_case(name)) {
            return Some(n.to_owned());
        }
        let lower = name.to_ascii_lowercase();
        // The edit distance is at least the difference in length: names further apart than the
        // limit are skipped unmeasured, so a long name costs no more than a short one.
        self.names()
            .filter(|n| n.len().abs_diff(lower.len()) <= 3)
            .map(|n| (edit_distance(&lower, n), n))
            .filter(|(d, _)| *d <= 3 && *d < lower.len())
            .min_by_key(|(d, _)| *d)
            .map(|(_, n)| n.to_owned())
    }
}

/// Levenshtein distance over bytes; names are ASCII.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_sorted_and_unique() {
        for w in BUILTINS.windows(2) {
            assert!(w[0].0 < w[1].0, "{} before {}", w[0].0, w[1].0);
        }
        let mut ids: Vec<u16> = BUILTINS.iter().map(|(_, m)| m.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), BUILTINS.len());
    }

    #[test]
    fn sub_and_adv_by_number() {
        assert_eq!(Macro::sub(1), Some(Macro::SUB1));
        assert_eq!(Macro::sub(10), Some(Macro::SUB10));
        assert_eq!(Macro::adv(7), Some(Macro::ADV7));
        assert_eq!(Macro::sub(0), None);
        assert_eq!(Macro::sub(11), None);
    }

    #[test]
    fn lookup_is_case_sensitive_and_suggests() {
        let c = Catalog::standard();
        assert_eq!(c.lookup("sub1"), Some(Macro::SUB1));
        assert_eq!(c.lookup("SUB1"), None);
        assert_eq!(c.suggest("SUB1").as_deref(), Some("sub1"));
        assert_eq!(
            c.suggest("transacton_id").as_deref(),
            Some("transaction_id")
        );
        assert_eq!(c.suggest("zzzzzzzzzz"), None);
    }

    #[test]
    fn catalogue_round_trips_and_refuses_more_customs_than_ids() {
        let mut c = Catalog::standard();
        let a = c.register("clickref").unwrap();
        c.set_click_id_macros([a, Macro::SUB2, a]);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"custom":["clickref"],"click_ids":[{},11,{}]}}"#,
                a.0, a.0
            )
        );
        let back: Catalog = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.lookup("clickref"), Some(a));
        assert!(back.is_click_id(a) && back.is_click_id(Macro::SUB2));
        assert!(!back.is_click_id(Macro::SUB1));
        assert_eq!(back.click_id_macros(), [a, Macro::SUB2, a]);
        let names: Vec<String> = (0..=CUSTOM_LIMIT).map(|i| format!("\"c{i}\"")).collect();
        let json = format!(r#"{{"custom":[{}],"click_ids":[]}}"#, names.join(","));
        let err = serde_json::from_str::<Catalog>(&json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too many custom macros"), "{err}");
    }

    #[test]
    fn rebinding_an_id_forgets_its_old_name() {
        let mut c = Catalog::standard();
        let a = c.register("old").unwrap();
        c.register_at("new", a);
        assert_eq!(c.lookup("old"), None);
        assert_eq!(c.lookup("new"), Some(a));
        c.register_at("later", Macro(a.0 + 3));
        assert_eq!(c.lookup(""), None);
        assert_eq!(c.name(Macro(a.0 + 1)), Some(""));
        assert_eq!(c.lookup("later"), Some(Macro(a.0 + 3)));
    }

    #[test]
    fn suggestions_skip_names_too_far_in_length() {
        let c = Catalog::standard();
        assert_eq!(c.suggest("sub1xyz").as_deref(), Some("sub1"));
        assert_eq!(c.suggest("sub1xyzw"), None);
        assert_eq!(c.suggest(&"a".repeat(30_000)), None);
    }

    #[test]
    fn custom_macros_get_stable_ids() {
        let mut c = Catalog::standard();
        let a = c.register("clickref").unwrap();
        let b = c.register("tier").unwrap();
        assert_ne!(a, b);
        assert_eq!(c.lookup("clickref"), Some(a));
        assert_eq!(c.name(b), Some("tier"));
        assert_eq!(
            c.register("sub1"),
            Err(CatalogError::Duplicate("sub1".into()))
        );
        assert!(matches!(
            c.register("9x"),
            Err(CatalogError::InvalidName(_))
        ));
    }
}
