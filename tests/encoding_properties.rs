//! Encoding properties (DESIGN.md, "Encoding"; REFERENCE.md sections 6 and 7): whatever the
//! values, an expanded URL parses, keeps exactly the template's parameters in their order, and
//! gives back every value exactly; pixels stay one closed tag; HTML code gains nothing but
//! unreserved characters and percent escapes.

use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use postback::template::{
    Amount, Currency, ExpandError, Macro, OwnedValue, Pixel, Template, ValueMap,
};
use proptest::prelude::*;

/// What HTML code keeps of a value: the unreserved characters.
const STRICT: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Path `a{sub2}b` (part of a segment) and `{sub3}` (a whole one), a macro in a key, the currency
/// written third (so it moves first), and a fragment.
const URL: &str = "https://t.example/p/a{sub2}b/{sub3}/end?cid={sub1}&k{sub4}=v&cur={currency}&pay={payout}&t={sub5}#frag-{sub6}";

/// The click-id macros of [`URL`] in expansion order (the currency parameter moved first).
const CLICK_IDS: &str = "sub2, sub3, sub1, sub4, sub5, sub6";

/// Characters that break naive encoders, and some that do not.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => prop::sample::select(vec![
            '&', '=', '#', '%', '+', '?', '/', '\\', '\n', '\r', '\t', ' ', '"', '\'', '<', '>',
            '.', ';', ':', '@', '[', ']', '{', '}', '|', '^', '`', '$', ',', '!', '*', '(', ')',
            '~', '-', '_', '\0', '\u{7f}',
        ]),
        2 => prop::char::range('a', 'z'),
        1 => prop::sample::select(vec!['é', '€', '😀', '\u{200b}', '\u{fffd}', '\u{85}']),
        1 => any::<char>(),
    ]
}

/// Any Unicode text, weighted towards separators, escapes and markup.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(nasty_char(), 0..16).prop_map(String::from_iter),
        1 => any::<String>(),
        1 => prop::sample::select(vec![
            "", ".", "..", "...", "%", "%2e", "%2E%2e", "%%", "%zz", "a&b=c", "&payout=999",
            "#", "?x=1", "a+b", "\"><script>", "'", "..\\..\\etc",
        ])
        .prop_map(str::to_owned),
    ]
}

fn amount() -> impl Strategy<Value = Amount> {
    (any::<i64>(), 0u8..=14).prop_map(|(units, scale)| Amount::new(units, scale))
}

fn currency() -> impl Strategy<Value = Currency> {
    "[A-Z]{3}".prop_map(|c| Currency::new(&c).unwrap())
}

/// The values of the six sub macros, the amount and the currency.
#[derive(Debug, Clone)]
struct Values {
    subs: [String; 6],
    payout: Amount,
    currency: Currency,
}

fn values() -> impl Strategy<Value = Values> {
    (
        [value(), value(), value(), value(), value(), value()],
        amount(),
        currency(),
    )
        .prop_map(|(subs, payout, currency)| Values {
            subs,
            payout,
            currency,
        })
}

impl Values {
    fn sub(&self, n: usize) -> &str {
        &self.subs[n - 1]
    }

    fn map(&self) -> ValueMap {
        let mut m = ValueMap::new()
            .with(Macro::PAYOUT, self.payout)
            .with(Macro::CURRENCY, self.currency);
        for (i, s) in self.subs.iter().enumerate() {
            m.set(Macro::sub(i as u8 + 1).unwrap(), s.as_str());
        }
        m
    }

    /// The error the template must give, if any.
    fn expected_error(&self) -> Option<ExpandError> {
        if matches!(self.sub(3), "." | "..") {
            Some(ExpandError::DotSegment("sub3".to_owned()))
        } else if self.subs.iter().all(String::is_empty) {
            Some(ExpandError::NoClickId(CLICK_IDS.to_owned()))
        } else {
            None
        }
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8().unwrap().into_owned()
}

/// Check the URL expanded from [`URL`] against the values it was given.
fn check_url(expanded: &str, v: &Values) -> Result<(), TestCaseError> {
    let url = url::Url::parse(expanded).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert!(http::Uri::try_from(expanded).is_ok(), "not an http::Uri");
    prop_assert_eq!(url.host_str(), Some("t.example"));

    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let expected = vec![
        ("cur".to_owned(), v.currency.to_string()),
        ("cid".to_owned(), v.sub(1).to_owned()),
        (format!("k{}", v.sub(4)), "v".to_owned()),
        ("pay".to_owned(), v.payout.to_string()),
        ("t".to_owned(), v.sub(5).to_owned()),
    ];
    prop_assert_eq!(pairs, expected);

    let segments: Vec<String> = url.path_segments().unwrap().map(decode).collect();
    let expected = vec![
        "p".to_owned(),
        format!("a{}b", v.sub(2)),
        v.sub(3).to_owned(),
        "end".to_owned(),
    ];
    prop_assert_eq!(segments, expected);

    let fragment = url.fragment().unwrap();
    prop_assert_eq!(decode(fragment), format!("frag-{}", v.sub(6)));
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_value_lands_in_its_own_parameter_and_decodes_to_itself(v in values()) {
        let t = Template::parse(URL).unwrap();
        match (t.expand(&v.map()), v.expected_error()) {
            (Ok(expanded), None) => check_url(&expanded, &v)?,
            (got, expected) => prop_assert_eq!(got.err(), expected),
        }
    }

    #[test]
    fn pre_encoded_values_are_sent_as_given_and_decode_to_the_original(v in values()) {
        let t = Template::parse(URL).unwrap();
        let mut m = v.map();
        for (i, s) in v.subs.iter().enumerate() {
            let e = utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
            m.set(Macro::sub(i as u8 + 1).unwrap(), OwnedValue::encoded(e).unwrap());
        }
        // Encoded, `.` and `..` are `%2E` and `%2E%2E`: still dot segments.
        match (t.expand(&m), v.expected_error()) {
            (Ok(expanded), None) => {
                for s in &v.subs {
                    let e = utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
                    prop_assert!(expanded.contains(&e));
                }
                check_url(&expanded, &v)?;
            }
            (got, expected) => prop_assert_eq!(got.err(), expected),
        }
    }

    #[test]
    fn a_pixel_is_one_closed_tag_whatever_the_values(v in values(), iframe in any::<bool>()) {
        let t = Template::parse(URL).unwrap();
        let (pixel, open, rest, quotes, angles) = if iframe {
            (
                Pixel::Iframe,
                "<iframe src=\"",
                "\" width=\"1\" height=\"1\" frameborder=\"0\" scrolling=\"no\" style=\"display:none\"></iframe>",
                12,
                2,
            )
        } else {
            (
                Pixel::Image,
                "<img src=\"",
                "\" width=\"1\" height=\"1\" alt=\"\" style=\"display:none\">",
                10,
                1,
            )
        };
        let html = match (t.render_pixel(pixel, &v.map()), v.expected_error()) {
            (Ok(html), None) => html,
            (got, expected) => {
                prop_assert_eq!(got.err(), expected);
                return Ok(());
            }
        };
        let src = html.strip_prefix(open).unwrap();
        let end = src.find('"').unwrap();
        prop_assert_eq!(&src[end..], rest);
        let src = &src[..end];
        prop_assert!(!src.contains(['"', '<', '>', '\'']), "{src}");
        prop_assert_eq!(html.matches('"').count(), quotes);
        prop_assert_eq!(html.matches('<').count(), angles);
        prop_assert_eq!(html.matches('>').count(), angles);
        // Unescaped, the attribute is the URL.
        let url = src.replace("&#39;", "'").replace("&amp;", "&");
        prop_assert_eq!(&url, &t.expand(&v.map()).unwrap());
        check_url(&url, &v)?;
    }

    #[test]
    fn html_code_gains_only_unreserved_characters_and_escapes(v in values()) {
        // Each macro is followed by literal text that starts with a character no value can
        // produce, so the value's span ends exactly there.
        let lits = [
            "<script>var c=\"",
            "\", d='",
            "';</script><img src=\"https://t.example/p?c=",
            "&amp;d=",
            "\" alt=\"",
            "\"><!-- ",
            " -->",
        ];
        let src = format!(
            "{}{{sub1}}{}{{sub2}}{}{{sub3}}{}{{sub4}}{}{{sub5}}{}{{sub6}}{}",
            lits[0], lits[1], lits[2], lits[3], lits[4], lits[5], lits[6]
        );
        let t = Template::parse_html(&src).unwrap();
        let m = v.map();
        let expected_error = if v.subs.iter().all(String::is_empty) {
            Some(ExpandError::NoClickId("sub1, sub2, sub3, sub4, sub5, sub6".to_owned()))
        } else {
            None
        };
        let out = match (t.expand(&m), expected_error) {
            (Ok(out), None) => out,
            (got, expected) => {
                prop_assert_eq!(got.err(), expected);
                return Ok(());
            }
        };
        let mut rest = out.as_str();
        for (i, lit) in lits.iter().enumerate() {
            rest = match rest.strip_prefix(lit) {
                Some(r) => r,
                None => return Err(TestCaseError::fail(format!("literal {i} moved in {out}"))),
            };
            if i == lits.len() - 1 {
                break;
            }
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "-._~%".contains(c)))
                .unwrap_or(rest.len());
            let span = &rest[..len];
            let b = span.as_bytes();
            for (j, _) in span.match_indices('%') {
                let hex = |k: usize| b.get(k).is_some_and(|x| x.is_ascii_digit() || (b'A'..=b'F').contains(x));
                prop_assert!(hex(j + 1) && hex(j + 2), "bad escape in {span}");
            }
            prop_assert_eq!(decode(span), v.sub(i + 1));
            rest = &rest[len..];
        }
        prop_assert_eq!(rest, "");
    }

    #[test]
    fn literal_text_either_is_refused_or_expands_to_a_sendable_url(
        path in prop::collection::vec(nasty_char(), 0..24).prop_map(String::from_iter),
        query in prop::collection::vec(nasty_char(), 0..24).prop_map(String::from_iter),
    ) {
        let src = format!("https://t.example/{path}?cid={{sub1}}&{query}");
        if let Ok(t) = Template::parse(&src) {
            let expanded = t.expand(&ValueMap::new().with(Macro::SUB1, "abc")).unwrap();
            prop_assert!(url::Url::parse(&expanded).is_ok(), "{expanded}");
            prop_assert!(http::Uri::try_from(expanded.as_str()).is_ok(), "{expanded}");
            prop_assert!(expanded.starts_with("https://t.example/"));
            let raw = [' ', '"', '<', '>', '\\', '|', '{', '}', '\n'];
            prop_assert!(!expanded.contains(raw), "{}", expanded);
        }
    }

    #[test]
    fn html_code_keeps_any_literal_text_byte_for_byte(
        lits in prop::collection::vec(
            prop::collection::vec(
                prop_oneof![
                    3 => prop::char::range(' ', '~').prop_filter("no braces", |c| *c != '{' && *c != '}'),
                    1 => prop::sample::select(vec!['é', '€', '😀', '日', '\u{85}', '\n']),
                ],
                0..40,
            )
            .prop_map(String::from_iter),
            2..9,
        ),
        sub1 in value(),
    ) {
        // Literal pieces of every length around 16 bytes, with multi-byte characters at any
        // offset: expansion copies short pieces in fixed 16-byte blocks, which must never cut a
        // character or carry bytes of the next piece. From two to eight macros, so into both of
        // expansion's buffers (a string up to four macros, its bytes from five).
        let mut src = String::from("<p>");
        for lit in &lits {
            src.push_str(lit);
            src.push_str("{sub1}");
        }
        src.push_str("</p>");
        let t = Template::parse_html(&src).unwrap();
        let encoded: String = utf8_percent_encode(&sub1, STRICT).collect();
        let mut expected = String::from("<p>");
        for lit in &lits {
            expected.push_str(lit);
            expected.push_str(&encoded);
        }
        expected.push_str("</p>");
        match t.expand(&ValueMap::new().with(Macro::SUB1, sub1.as_str())) {
            Ok(out) => prop_assert_eq!(out, expected),
            Err(e) => prop_assert!(sub1.is_empty(), "{e}"),
        }
    }
}

/// RFC 3986 `pchar` apart from `pct-encoded`: unreserved, sub-delims, `:` and `@`.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// Whether a path segment holds only `pchar`: those bytes and well-formed `%XX` escapes.
fn only_pchar(seg: &str) -> bool {
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else if is_pchar(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_value_in_a_path_position_leaves_only_pchar_bytes_in_its_segment(
        whole in value(),
        part in value(),
    ) {
        let t = Template::parse("https://t.example/p/{sub2}/x{sub3}y/end?cid={sub1}").unwrap();
        let v = ValueMap::new()
            .with(Macro::SUB1, "c")
            .with(Macro::SUB2, whole.as_str())
            .with(Macro::SUB3, part.as_str());
        match t.expand(&v) {
            Ok(url) => {
                let path = url.strip_prefix("https://t.example/").unwrap();
                let (path, query) = path.split_once('?').unwrap();
                prop_assert_eq!(query, "cid=c");
                let segs: Vec<&str> = path.split('/').collect();
                prop_assert_eq!(segs.len(), 4, "{}", url);
                prop_assert_eq!((segs[0], segs[3]), ("p", "end"));
                let part = format!("x{part}y");
                for (seg, value) in [(segs[1], whole.as_str()), (segs[2], part.as_str())] {
                    prop_assert!(only_pchar(seg), "{:?} in {}", seg, url);
                    prop_assert_eq!(decode(seg), value);
                }
            }
            Err(e) => {
                prop_assert!(whole == "." || whole == "..", "{e}");
                prop_assert_eq!(e, ExpandError::DotSegment("sub2".into()));
            }
        }
    }
}

/// A [`ValueMap`] asked for its values one by one, as any caller's own type is: expansion cannot
/// use the text the map prepared when the values were set.
struct OneByOne<'a>(&'a ValueMap);

impl postback::template::MacroValues for OneByOne<'_> {
    fn value(&self, m: Macro) -> Option<postback::template::Value<'_>> {
        self.0.value(m)
    }
}

/// A value of any kind, as a caller might set it for any macro (money and currency included).
fn any_value() -> impl Strategy<Value = OwnedValue> {
    prop_oneof![
        4 => value().prop_map(OwnedValue::from),
        1 => prop::sample::select(vec!["", "12.50", "-3", "1,5", "EUR", "eur", "%41", "0.1e3"])
            .prop_map(OwnedValue::from),
        1 => prop::sample::select(vec!["", "EUR", "%41%42", "12.50", "a-b_c~d"])
            .prop_map(|s| OwnedValue::encoded(s).unwrap()),
        1 => any::<i64>().prop_map(OwnedValue::from),
        1 => amount().prop_map(OwnedValue::from),
        1 => currency().prop_map(OwnedValue::from),
        1 => (0i64..4_000_000_000).prop_map(|s| OwnedValue::from(
            chrono::DateTime::from_timestamp(s, 0).unwrap()
        )),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the values and wherever the macros stand (path, query, fragment, HTML code,
    /// money and currency macros, the payout under both names, a macro without a value), a
    /// `ValueMap` expands to exactly what the same values give when asked for one by one: the
    /// same text or the same error. Values are set more than once, so replaced text is too.
    #[test]
    fn a_value_map_expands_exactly_as_its_values_asked_one_by_one(
        first in prop::collection::vec(any_value(), 9),
        then in prop::collection::vec(prop::option::of(any_value()), 9),
        refuse_empty in any::<bool>(),
    ) {
        use postback::template::{Catalog, Context, EmptyPolicy, Options};
        let macros = [
            Macro::SUB1, Macro::SUB2, Macro::SUB3, Macro::SUB4, Macro::PAYOUT,
            Macro::SALE_AMOUNT, Macro::CURRENCY, Macro::SUB5, Macro::OFFER_ID,
        ];
        let mut map = ValueMap::prepared();
        for (m, v) in macros.iter().zip(&first) {
            map.set(*m, v.clone());
        }
        for (m, v) in macros.iter().zip(&then) {
            match v {
                Some(v) => { map.set(*m, v.clone()); }
                None => { map.remove(*m); }
            }
        }
        let mut options = Options::default();
        if refuse_empty {
            options = options.empty(EmptyPolicy::Refuse);
        }
        let url = "https://t.example/p/{sub2}/x{sub3}/{payout}?cid={sub1}&k{sub4}=v\
            &cur={currency}&pay={payout}&amt={payout_amount}&s={sale_amount}&o={offer_id}\
            &n={sub6}#f-{sub5}";
        let html = "<img src=\"https://t.example/?a={sub1}&b={sub2}\">{currency}{payout}{sub4}{offer_id}";
        for (src, context) in [(url, Context::Url), (html, Context::Html)] {
            let t = Template::compile(src, context, &Catalog::standard(), options).unwrap();
            let mut prepared = String::from("kept ");
            let mut asked = String::from("kept ");
            let a = t.expand_into(&mut prepared, &map);
            let b = t.expand_into(&mut asked, &OneByOne(&map));
            prop_assert_eq!(a, b, "{}", src);
            prop_assert_eq!(prepared, asked, "{}", src);
        }
    }
}
