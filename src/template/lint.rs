//! Warnings a partner-facing "test your postback" screen shows, sample values for previews, and
//! redaction of secrets in URLs.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use chrono::DateTime;

use super::Piece;
use super::catalog::Macro;
use super::money::{Amount, Currency};
use super::syntax::Dialect;
use super::values::{MacroValues, Value};

/// URLs longer than this after a typical expansion are flagged: some receivers and proxies cut
/// request lines near 2 KB.
pub(crate) const LONG_URL: usize = 2048;

/// A warning about a template that parses but may not do what the partner means.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lint {
    /// The URL is plain `http`: the conversion travels unencrypted.
    PlainHttp,
    /// The URL is long after a typical expansion.
    LongUrl {
        /// Length with sample values.
        typical_len: usize,
        /// The threshold.
        limit: usize,
    },
    /// A token of another dialect, which would be sent literally.
    ForeignDialect {
        /// The token as written.
        token: String,
        /// The dialect it belongs to.
        dialect: Dialect,
        /// The macro name inside.
        name: String,
        /// Byte offset in the template.
        at: usize,
    },
    /// The currency parameter was moved to the front of the query.
    CurrencyMoved {
        /// Its written position (1-based).
        from: usize,
    },
    /// The currency parameter is not first, and the options keep the written order.
    CurrencyNotFirst {
        /// Its position (1-based).
        position: usize,
    },
    /// A query parameter appears more than once.
    DuplicateParam {
        /// The parameter name.
        key: String,
    },
    /// An unknown macro kept (as text or as nothing) under a lenient policy.
    UnknownMacroKept {
        /// The name.
        name: String,
        /// Byte offset.
        at: usize,
    },
}

impl fmt::Display for Lint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lint::PlainHttp => write!(
                f,
                "the URL uses plain http: use https if the partner's server supports it"
            ),
            Lint::LongUrl { typical_len, limit } => write!(
                f,
                "the URL is about {typical_len} bytes with typical values, over {limit}: some servers cut long URLs; drop unused parameters"
            ),
            Lint::ForeignDialect {
                token,
                dialect,
                name,
                at,
            } => {
                let (o, c) = Dialect::Brace.delimiters();
                write!(
                    f,
                    "`{token}` at byte {at} is written in the {dialect} dialect and would be sent literally: write it as `{o}{name}{c}`"
                )
            }
            Lint::CurrencyMoved { from } => write!(
                f,
                "the currency parameter (written at position {from}) is sent first, so that symbols cannot break the postback"
            ),
            Lint::CurrencyNotFirst { position } => write!(
                f,
                "the currency parameter is at position {position}: place it first so that symbols cannot break the postback"
            ),
            Lint::DuplicateParam { key } => {
                write!(
                    f,
                    "parameter `{key}` appears more than once: receivers read only one of them"
                )
            }
            Lint::UnknownMacroKept { name, at } => write!(
                f,
                "`{name}` at byte {at} is not a known macro and will not be filled: check its spelling"
            ),
        }
    }
}

/// Flag parameters whose literal names repeat: one lint per name, at its second occurrence.
/// O(n log n) in the number of parameters (a B-tree of the names seen, whether each was flagged).
pub(crate) fn duplicate_params(params: &[Vec<Piece<'_>>], lints: &mut Vec<Lint>) {
    let mut seen: BTreeMap<&str, bool> = BTreeMap::new();
    for p in params {
        // Only a key written wholly as text can be compared.
        let Some(Piece::Lit(first)) = p.first() else {
            continue;
        };
        let key = match first.split_once('=') {
            Some((k, _)) => k,
            None if p.len() == 1 => first,
            None => continue,
        };
        if key.is_empty() {
            continue;
        }
        // The first occurrence records the name, the second flags it, later ones pass.
        match seen.entry(key) {
            Entry::Vacant(e) => {
                e.insert(false);
            }
            Entry::Occupied(mut e) => {
                if !std::mem::replace(e.get_mut(), true) {
                    lints.push(Lint::DuplicateParam {
                        key: key.to_owned(),
                    });
                }
            }
        }
    }
}

/// Realistic values for every macro: used for previews and for the long-URL lint.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleValues;

/// The conversion id of [`SampleValues`], also the trigger id of previews.
pub const SAMPLE_CONVERSION_ID: &str = "c0ffee00-1234-4abc-9def-0123456789ab";

/// `{delivery_id}` in [`SampleValues`]: the delivery key of postback 1 for the sample conversion.
pub const SAMPLE_DELIVERY_ID: &str = "c0ffee00-1234-4abc-9def-0123456789ab.1.conversion.0";

impl MacroValues for SampleValues {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        const SUBS: [&str; 10] = [
            "s1-9f8e7d6c5b4a",
            "s2-campaign",
            "s3-creative",
            "s4",
            "s5",
            "s6",
            "s7",
            "s8",
            "s9",
            "s10",
        ];
        const ADVS: [&str; 10] = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10"];
        let v = match m {
            Macro::TRANSACTION_ID => Value::Text("4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a99"),
            Macro::PAYOUT | Macro::PAYOUT_AMOUNT => Value::Amount(Amount::new(1250, 2)),
            Macro::REVENUE => Value::Amount(Amount::new(1500, 2)),
            Macro::SALE_AMOUNT => Value::Amount(Amount::new(4999, 2)),
            Macro::CURRENCY => Value::Currency(Currency::new("USD").ok()?),
            Macro::AFFILIATE_ID => Value::Int(1024),
            Macro::OFFER_ID => Value::Int(42),
            Macro::SOURCE_ID => Value::Text("src-7"),
            Macro::CONVERSION_ID => Value::Text(SAMPLE_CONVERSION_ID),
            Macro::EVENT_ID => Value::Int(3),
            Macro::EVENT_NAME => Value::Text("purchase"),
            Macro::ORDER_ID => Value::Text("ORD-100234"),
            Macro::TIMESTAMP | Macro::CLICK_TIMESTAMP => {
                Value::Time(DateTime::from_timestamp(1_767_225_600, 0)?)
            }
            Macro::CONVERSION_STATUS => Value::Text("approved"),
            Macro::COUPON_CODE => Value::Text("SAVE10"),
            Macro::COUNTRY => Value::Text("US"),
            Macro::DEVICE_TYPE => Value::Text("mobile"),
            Macro::SESSION_IP => Value::Text("203.0.113.7"),
            // The key of postback 1 for the sample conversion, as a send writes it
            // (`Postback::preview` writes the postback's own id).
            Macro::DELIVERY_ID => Value::Text(SAMPLE_DELIVERY_ID),
            m => {
                let n = m.id();
                match n {
                    10..=19 => Value::Text(SUBS[usize::from(n - 10)]),
                    20..=29 => Value::Text(ADVS[usize::from(n - 20)]),
                    _ => Value::Text("sample"),
                }
            }
        };
        Some(v)
    }
}

/// Parts of parameter names that mark a secret value.
const SECRET_NAMES: [&str; 13] = [
    "token", "key", "secret", "pass", "pwd", "sig", "auth", "hash", "hmac", "jwt", "bearer",
    "session", "nonce",
];

/// For each byte, the [`SECRET_NAMES`] that start with it in either case (bit `i` for name
/// `i`), so most positions of a name are passed over with one table read and a match is tried
/// only against the names it can be.
const SECRET_BY_FIRST: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < SECRET_NAMES.len() {
        let first = SECRET_NAMES[i].as_bytes()[0];
        t[first as usize] |= 1 << i;
        t[first.to_ascii_uppercase() as usize] |= 1 << i;
        i += 1;
    }
    t
};

/// Whether a parameter name suggests a secret. The name is read percent-decoded, so `to%6Ben`
/// is `token` too, and case-insensitively. It runs for every parameter of every send.
fn is_secret_key(key: &str) -> bool {
    if key.bytes().any(|b| b == b'%') {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(key).collect();
        has_secret_name(&decoded)
    } else {
        has_secret_name(key.as_bytes())
    }
}

/// Whether one of [`SECRET_NAMES`] occurs in `name`, ignoring ASCII case.
fn has_secret_name(name: &[u8]) -> bool {
    (0..name.len()).any(|i| {
        let mut candidates = SECRET_BY_FIRST[usize::from(name[i])];
        while candidates != 0 {
            let n = SECRET_NAMES[candidates.trailing_zeros() as usize].as_bytes();
            if name[i..].len() >= n.len() && name[i..i + n.len()].eq_ignore_ascii_case(n) {
                return true;
            }
            candidates &= candidates - 1;
        }
        false
    })
}

/// The position of the first `b` in `s` at or after `from`, or `s.len()`: a plain loop, cheaper
/// than a vectorised search over the few bytes of one parameter.
fn next_byte(s: &str, from: usize, b: u8) -> usize {
    s.as_bytes()[from..]
        .iter()
        .position(|&c| c == b)
        .map_or(s.len(), |i| from + i)
}

/// `k=v&k=v` with the values of secret-looking names replaced by `***`, appended to `out`;
/// each value replaced goes to `found`, if given. The text between redactions is copied in one
/// piece: most sends have no secret parameter at all.
fn redact_pairs(out: &mut String, pairs: &str, mut found: Option<&mut Vec<String>>) {
    let mut copied = 0;
    let mut start = 0;
    while start <= pairs.len() {
        let end = next_byte(pairs, start, b'&');
        let eq = next_byte(&pairs[..end], start, b'=');
        if eq + 1 < end {
            let (k, v) = (&pairs[start..eq], &pairs[eq + 1..end]);
            if is_secret_key(k) {
                let value_start = eq + 1;
                out.push_str(&pairs[copied..value_start]);
                out.push_str("***");
                copied = end;
                if let Some(found) = found.as_deref_mut() {
                    let decoded = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                    if decoded != v {
                        found.push(decoded.into_owned());
                    }
                    found.push(v.to_owned());
                }
            }
        }
        start = end + 1;
    }
    out.push_str(&pairs[copied..]);
}

/// The URL with the values of secret-looking parameters (`token`, `key`, `secret`, `hmac`,
/// `session`, ..., also percent-encoded) replaced by `***`, in the query and in the fragment, for
/// logs and debug info.
pub fn redact_url(url: &str) -> String {
    redact_collecting(url, None)
}

fn redact_collecting(url: &str, mut found: Option<&mut Vec<String>>) -> String {
    let (before, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match before.split_once('?') {
        Some((head, query)) => {
            out.push_str(head);
            out.push('?');
            redact_pairs(&mut out, query, found.as_deref_mut());
        }
        None => out.push_str(before),
    }
    if let Some(f) = fragment {
        out.push('#');
        redact_pairs(&mut out, f, found);
    }
    out
}

/// [`redact_url`], and every occurrence of the given secrets (as written or percent-encoded)
/// replaced by `***`: for secrets that sit where no parameter name gives them away, such as
/// Keitaro's postback key in the path.
pub fn redact_url_with(url: &str, secrets: &[String]) -> String {
    scrub(redact_url(url), &literal_forms(secrets))
}

/// Each secret as written and percent-encoded.
fn literal_forms(secrets: &[String]) -> Vec<String> {
    let mut forms = Vec::with_capacity(secrets.len() * 2);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let encoded: String =
            percent_encoding::utf8_percent_encode(secret, crate::template::COMPONENT_SET).collect();
        if encoded != *secret {
            forms.push(encoded);
        }
        forms.push(secret.clone());
    }
    forms
}

/// A request's URL as records show it ([`redact_url_with`]), and what must never appear in a
/// record of it: the values of its secret-looking parameters (as sent and decoded) and the
/// literal secrets (as written and encoded), longest first so a secret that contains another
/// is replaced whole. One pass over the parameters: it runs on every send.
pub(crate) fn redact_for_record(url: &str, secrets: &[String]) -> (String, Vec<String>) {
    let literal = literal_forms(secrets);
    let mut parts = Vec::new();
    let shown = scrub(redact_collecting(url, Some(&mut parts)), &literal);
    parts.extend(literal);
    parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
    parts.dedup();
    (shown, parts)
}

/// `text` with every occurrence of `parts` replaced by `***`, and every URL in it redacted
/// ([`redact_url`]): for response bodies and transport error text, which may echo the request.
pub(crate) fn scrub_text(text: String, parts: &[String]) -> String {
    let mut out = scrub(text, parts);
    if !may_hold_url(&out) {
        return out;
    }
    for scheme in ["https://", "http://"] {
        let mut from = 0;
        while let Some(i) = out[from..].find(scheme) {
            let start = from + i;
            let end = out[start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')'))
                .map_or(out.len(), |j| start + j);
            let redacted = redact_url(&out[start..end]);
            from = start + redacted.len();
            out.replace_range(start..end, &redacted);
        }
    }
    out
}

/// Whether `text` contains `http://` or `https://`, found by its `:` (a short body such as `OK`
/// has none, and is passed over with one byte search).
fn may_hold_url(text: &str) -> bool {
    text.match_indices(':').any(|(i, _)| {
        text[i..].starts_with("://")
            && (text[..i].ends_with("http") || text[..i].ends_with("https"))
    })
}

/// `text` with every occurrence of `parts` replaced by `***`.
fn scrub(mut text: String, parts: &[String]) -> String {
    for part in parts.iter().filter(|p| !p.is_empty()) {
        if text.contains(part.as_str()) {
            text = text.replace(part.as_str(), "***");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("https://x.com/a?cid=1&security_token=abc&api_key=z&k=v#f"),
            "https://x.com/a?cid=1&security_token=***&api_key=***&k=v#f"
        );
        assert_eq!(redact_url("https://x.com/a"), "https://x.com/a");
    }

    #[test]
    fn secret_names_cover_hmac_jwt_pwd_bearer_session_nonce_encoded_names_and_fragments() {
        for name in [
            "hmac", "JWT", "pwd", "bearer_x", "session", "nonce", "to%6Ben", "x_Sig",
        ] {
            let url = format!("https://x.com/a?{name}=v1&cid=1#{name}=v2&k=v");
            assert_eq!(
                redact_url(&url),
                format!("https://x.com/a?{name}=***&cid=1#{name}=***&k=v"),
                "{name}"
            );
        }
    }

    #[test]
    fn transport_error_text_loses_the_secrets_of_the_url_it_quotes() {
        let url = "https://x.com/K3Y/pb?cid=1&token=s3cr%20et";
        let (shown, parts) = redact_for_record(url, &["K3Y".to_owned()]);
        assert_eq!(shown, "https://x.com/***/pb?cid=1&token=***");
        let text = format!("error sending request for url ({url}): connection refused; s3cr et");
        let clean = scrub_text(text, &parts);
        assert_eq!(
            clean,
            "error sending request for url (https://x.com/***/pb?cid=1&token=***): connection refused; ***"
        );
        // Another URL the text quotes is redacted by parameter name.
        assert_eq!(
            scrub_text(
                "redirect to http://y.com/?auth=abc&q=1 refused".to_owned(),
                &[]
            ),
            "redirect to http://y.com/?auth=***&q=1 refused"
        );
    }

    /// The redaction as first written, one pair at a time: the oracle for the faster one.
    fn redact_pairs_oracle(pairs: &str) -> (String, Vec<String>) {
        let (mut out, mut found) = (String::new(), Vec::new());
        for (i, pair) in pairs.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, v)) if is_secret_key(k) && !v.is_empty() => {
                    out.push_str(k);
                    out.push_str("=***");
                    let decoded = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                    if decoded != v {
                        found.push(decoded.into_owned());
                    }
                    found.push(v.to_owned());
                }
                _ => out.push_str(pair),
            }
        }
        (out, found)
    }

    #[test]
    fn secret_names_are_found_in_any_case_anywhere_in_the_name() {
        for name in [
            "token",
            "X_TOKEN",
            "apiKey",
            "Sig",
            "to%6Ben",
            "%54oken",
            "my_session_id",
        ] {
            assert!(is_secret_key(name), "{name}");
        }
        for name in [
            "cid", "payout", "currency", "txid", "", "tok", "%zz", "t%6F",
        ] {
            assert!(!is_secret_key(name), "{name}");
        }
    }

    #[test]
    fn pairs_are_redacted_as_one_pair_at_a_time_would() {
        for pairs in [
            "",
            "&",
            "&&",
            "cid=1",
            "token=abc",
            "token=",
            "token",
            "=x",
            "cid=1&token=a%20b&api_key=z&k=v",
            "token=a=b&x=1&",
            "&token=1&&sig=2&",
            "a=1&b=2&c=3",
            "session=s&nonce=n&pass=p&cid=é&hmac=h",
        ] {
            let mut out = String::new();
            let mut found = Vec::new();
            redact_pairs(&mut out, pairs, Some(&mut found));
            assert_eq!((out, found), redact_pairs_oracle(pairs), "{pairs}");
        }
    }

    #[test]
    fn text_without_a_url_is_left_as_it_is_and_text_with_one_is_redacted() {
        assert_eq!(scrub_text("OK".to_owned(), &[]), "OK");
        assert_eq!(scrub_text("a: b http:/x".to_owned(), &[]), "a: b http:/x");
        assert_eq!(
            scrub_text(
                "see https://y.com/?token=1 and http://z.com/?sig=2".to_owned(),
                &[]
            ),
            "see https://y.com/?token=*** and http://z.com/?sig=***"
        );
    }

    #[test]
    fn named_secrets_are_redacted_anywhere() {
        let secrets = vec!["k3y/x".to_owned(), String::new()];
        assert_eq!(
            redact_url_with("https://x.com/k3y/x/pb?a=k3y%2Fx&cid=1", &secrets),
            "https://x.com/***/pb?a=***&cid=1"
        );
    }
}
