//! Percent-encoding sets by position, and the HTML escaping used for pixels.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::writer::Out;

/// WHATWG query set: what a browser encodes in a query.
const QUERY: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'<').add(b'>');
/// WHATWG path set.
const PATH: &AsciiSet = &QUERY.add(b'?').add(b'`').add(b'{').add(b'}').add(b'^');
/// WHATWG userinfo set.
const USERINFO: &AsciiSet = &PATH
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'|');
/// WHATWG component set: for values in a query key or value. `& = + # ? /` are all encoded, so
/// a value can never add, end or alter a parameter.
pub(crate) const COMPONENT: &AsciiSet = &USERINFO.add(b'$').add(b'%').add(b'&').add(b'+').add(b',');
/// The path-segment set: everything but RFC 3986 `pchar` (unreserved, sub-delims
/// `!$&'()*+,;=`, `:` and `@`). So `/`, `\\` (which URL parsers read as `/`), `%`, `?`, `#`,
/// `[`, `]`, `|` and the rest are encoded, and a value stays one valid segment.
#[cfg_attr(not(test), allow(dead_code))] // the oracle for `ESCAPE`
pub(crate) const PATH_SEGMENT: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');
/// Everything but the unreserved characters: safe in HTML text, either kind of quoted attribute,
/// a JavaScript string and a URL at once, for HTML/JS code whose context we cannot know.
#[cfg_attr(not(test), allow(dead_code))] // the oracle for `ESCAPE`
pub(crate) const STRICT: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// What is normalized in literal text a partner wrote: characters that may not appear raw in an
/// HTTP request target. `%`, `&`, `=` and the rest keep their meaning.
const LITERAL: &AsciiSet = &QUERY
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^');

/// Where a value lands, and so how it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Position {
    /// A query key or value, or the fragment.
    Component,
    /// Inside a path segment.
    PathSegment,
    /// HTML or JavaScript code.
    Strict,
}

impl Position {
    #[cfg(test)]
    fn set(self) -> &'static AsciiSet {
        match self {
            Position::Component => COMPONENT,
            Position::PathSegment => PATH_SEGMENT,
            Position::Strict => STRICT,
        }
    }

    /// This position's bit in [`ESCAPE`].
    #[inline]
    fn bit(self) -> u8 {
        match self {
            Position::Component => 1,
            Position::PathSegment => 2,
            Position::Strict => 4,
        }
    }
}

/// For every byte, a bit per [`Position`] set when the byte is percent-encoded there: one load
/// and one test per byte in the hot loop. Built at compile time from the byte lists below; a unit
/// test checks it against the `AsciiSet`s above, so the two cannot drift apart.
const ESCAPE: [u8; 256] = {
    const QUERY_BYTES: &[u8] = b" \"#<>";
    const PATH_BYTES: &[u8] = b"?`{}^";
    const USERINFO_BYTES: &[u8] = b"/:;=@[\\]|";
    const COMPONENT_BYTES: &[u8] = b"$%&+,";
    /// RFC 3986 `pchar` apart from the alphanumerics: all a path value may keep raw.
    const PCHAR_BYTES: &[u8] = b"-._~!$&'()*+,;=:@";
    const fn has(list: &[u8], b: u8) -> bool {
        let mut i = 0;
        while i < list.len() {
            if list[i] == b {
                return true;
            }
            i += 1;
        }
        false
    }
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        // Controls, DEL and every non-ASCII byte are encoded everywhere.
        let always = b < 0x20 || b >= 0x7f;
        let path = always || has(QUERY_BYTES, b) || has(PATH_BYTES, b);
        let component = path || has(USERINFO_BYTES, b) || has(COMPONENT_BYTES, b);
        let segment = !(b.is_ascii_alphanumeric() || has(PCHAR_BYTES, b));
        let strict =
            !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' || b == b'~');
        t[i] = (component as u8) | ((segment as u8) << 1) | ((strict as u8) << 2);
        i += 1;
    }
    t
};

/// Append `s` encoded for `pos`.
#[inline(always)]
pub(super) fn encode_into<O: Out>(out: &mut O, s: &str, pos: Position) {
    let bit = pos.bit();
    let clean = clean_prefix(s.as_bytes(), bit);
    // Most values (ids, numbers, countries) need nothing and are copied in one piece. The clean
    // prefix is ASCII: every non-ASCII byte is encoded.
    out.ascii_prefix(s, clean);
    if clean < s.len() {
        encode_rest(out, s.as_bytes().get(clean..).unwrap_or_default(), bit);
    }
}

/// How many leading bytes need no encoding. Eight bytes are judged per step with one test, so an
/// id of 24 clean bytes costs three branches instead of 24.
#[inline(always)]
fn clean_prefix(bytes: &[u8], bit: u8) -> usize {
    let t: &[u8; 256] = &ESCAPE;
    let mut i = 0;
    for c in bytes.chunks_exact(8) {
        let any = t[usize::from(c[0])]
            | t[usize::from(c[1])]
            | t[usize::from(c[2])]
            | t[usize::from(c[3])]
            | t[usize::from(c[4])]
            | t[usize::from(c[5])]
            | t[usize::from(c[6])]
            | t[usize::from(c[7])];
        if any & bit != 0 {
            break;
        }
        i += 8;
    }
    while i < bytes.len() && t[usize::from(bytes[i])] & bit == 0 {
        i += 1;
    }
    i
}

/// Encode `bytes`, the first of which needs it: each escape appended as one 3-byte piece.
/// Not inlined: the common clean value stays a short path in the caller's loop.
#[inline(never)]
fn encode_rest<O: Out>(out: &mut O, bytes: &[u8], bit: u8) {
    let t: &[u8; 256] = &ESCAPE;
    for &b in bytes {
        if t[usize::from(b)] & bit != 0 {
            out.escape(ESCAPE_STR[usize::from(b)]);
        } else {
            // A byte kept as is is ASCII: every non-ASCII byte is encoded.
            out.ascii(b);
        }
    }
}

/// Whether `s` encodes to the same text in every position: each of its bytes is kept in all of
/// them or escaped in all of them.
pub(crate) fn same_in_every_position(s: &str) -> bool {
    // Per byte, `(ESCAPE[b] + 1) & 6` is 0 exactly for 0 (kept everywhere) and 7 (escaped
    // everywhere); eight bytes are judged per test.
    let t: &[u8; 256] = &ESCAPE;
    let mixed = |b: u8| t[usize::from(b)].wrapping_add(1) & 6;
    let bytes = s.as_bytes();
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let any = mixed(c[0])
            | mixed(c[1])
            | mixed(c[2])
            | mixed(c[3])
            | mixed(c[4])
            | mixed(c[5])
            | mixed(c[6])
            | mixed(c[7]);
        if any != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| mixed(b) == 0)
}

/// `%00%01...%FF`: the escape of byte `b` is `ESCAPES[3 * b..3 * b + 3]`.
const ESCAPES: &str = {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    const BYTES: [u8; 768] = {
        let mut t = [0u8; 768];
        let mut b = 0;
        while b < 256 {
            t[3 * b] = b'%';
            t[3 * b + 1] = HEX[b >> 4];
            t[3 * b + 2] = HEX[b & 15];
            b += 1;
        }
        t
    };
    match std::str::from_utf8(&BYTES) {
        Ok(s) => s,
        Err(_) => panic!("escapes are ASCII"),
    }
};

/// The escape of every byte as its own `&str`, so that pushing one takes no slicing (and no
/// character-boundary check).
const ESCAPE_STR: [&str; 256] = {
    let mut t = [""; 256];
    let mut b = 0;
    while b < 256 {
        let (_, rest) = ESCAPES.as_bytes().split_at(3 * b);
        let (e, _) = rest.split_at(3);
        t[b] = match std::str::from_utf8(e) {
            Ok(e) => e,
            Err(_) => panic!("escapes are ASCII"),
        };
        b += 1;
    }
    t
};

/// Append literal template text with characters that may not be sent raw percent-encoded. A `%`
/// that does not start an escape is encoded too, so the result is always a valid request target.
pub(crate) fn normalize_literal(out: &mut String, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let lone_percent = c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit));
        if lone_percent {
            out.extend(utf8_percent_encode(&s[start..i], LITERAL));
            out.push_str("%25");
            start = i + 1;
        }
    }
    out.extend(utf8_percent_encode(&s[start..], LITERAL));
}

/// Append `s` escaped for a double-quoted HTML attribute value.
pub(crate) fn html_attr_escape(out: &mut String, s: &str) {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let rep = match c {
            '&' => "&amp;",
            '"' => "&quot;",
            '\'' => "&#39;",
            '<' => "&lt;",
            '>' => "&gt;",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(rep);
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str, p: Position) -> String {
        let mut o = String::new();
        encode_into(&mut o, s, p);
        o
    }

    #[test]
    fn table_encoder_matches_percent_encoding() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        samples.extend(
            [
                "",
                "abc",
                "a b&c=d",
                "€",
                "x€y",
                "é%zz",
                "Ünïcödé 日本",
                "%%",
                "a\u{7f}b\u{0}",
            ]
            .map(String::from),
        );
        let all: String = samples.concat();
        samples.push(all.clone());
        samples.push(all.chars().rev().collect());
        for s in &samples {
            for pos in [Position::Component, Position::PathSegment, Position::Strict] {
                let expected: String = utf8_percent_encode(s, pos.set()).collect();
                assert_eq!(enc(s, pos), expected, "{s:?} at {pos:?}");
            }
        }
    }

    #[test]
    fn same_in_every_position_is_exactly_equal_encodings() {
        for b in 0u8..=0x7f {
            let s = format!("a{}b", char::from(b));
            let all = [Position::PathSegment, Position::Strict]
                .map(|p| enc(&s, p) == enc(&s, Position::Component));
            assert_eq!(same_in_every_position(&s), all == [true, true], "{s:?}");
        }
        for s in ["", "abc-._~", "a b", "€", "a:b", "a b€", "x'y"] {
            let all = [Position::PathSegment, Position::Strict]
                .map(|p| enc(s, p) == enc(s, Position::Component));
            assert_eq!(same_in_every_position(s), all == [true, true], "{s:?}");
        }
    }

    #[test]
    fn component_encodes_every_separator() {
        assert_eq!(
            enc("a b&c=d+e#f?g/h%", Position::Component),
            "a%20b%26c%3Dd%2Be%23f%3Fg%2Fh%25"
        );
        assert_eq!(enc("€", Position::Component), "%E2%82%AC");
        assert_eq!(enc("abc-._~", Position::Component), "abc-._~");
    }

    #[test]
    fn path_segment_keeps_one_segment() {
        assert_eq!(
            enc("a/b?c#d e\\f", Position::PathSegment),
            "a%2Fb%3Fc%23d%20e%5Cf"
        );
    }

    #[test]
    fn path_segment_encodes_what_rfc_3986_forbids_in_a_segment() {
        assert_eq!(
            enc("[a]|b\"<>^`{}%", Position::PathSegment),
            "%5Ba%5D%7Cb%22%3C%3E%5E%60%7B%7D%25"
        );
        // pchar stays as it is: unreserved, sub-delims, `:` and `@`.
        assert_eq!(
            enc("aZ9-._~!$&'()*+,;=:@", Position::PathSegment),
            "aZ9-._~!$&'()*+,;=:@"
        );
    }

    #[test]
    fn path_segment_keeps_exactly_the_pchar_bytes() {
        for b in 0u8..=255 {
            let pchar = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
            let escaped = ESCAPE[usize::from(b)] & Position::PathSegment.bit() != 0;
            assert_eq!(escaped, !pchar, "byte {b:#04x}");
        }
    }

    #[test]
    fn strict_leaves_only_unreserved() {
        assert_eq!(
            enc("'\"<>()!*", Position::Strict),
            "%27%22%3C%3E%28%29%21%2A"
        );
    }

    #[test]
    fn literals_are_made_sendable() {
        let mut o = String::new();
        normalize_literal(&mut o, "a b|%20%zz{x}é");
        assert_eq!(o, "a%20b%7C%20%25zz%7Bx%7D%C3%A9");
    }

    #[test]
    fn attributes_are_escaped() {
        let mut o = String::new();
        html_attr_escape(&mut o, r#"a&b"c'<d>"#);
        assert_eq!(o, "a&amp;b&quot;c&#39;&lt;d&gt;");
    }
}
