//! Macro dialects and the tokenizer that splits raw template text into literal and macro tokens,
//! before anything else looks at it (a URL parser would mangle `{x}` into `%7Bx%7D`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::catalog::{is_name_byte, is_name_start};

/// How macros are written in a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Dialect {
    /// `{sub1}`: Everflow, TUNE, Voluum, Keitaro, Binom, RedTrack and most others.
    #[default]
    Brace,
    /// `{{sub1}}`: GoAffPro and template engines.
    DoubleBrace,
    /// `#sub1#`: CAKE.
    Hash,
    /// `[[sub1]]`: Prosper202 and offerwalls.
    DoubleBracket,
    /// `(sub1)`: AppsFlyer.
    Paren,
    /// `${SUB1}`: PropellerAds; names are written in capitals and matched case-insensitively.
    Dollar,
}

impl Dialect {
    /// Every dialect.
    pub const ALL: [Dialect; 6] = [
        Dialect::Brace,
        Dialect::DoubleBrace,
        Dialect::Hash,
        Dialect::DoubleBracket,
        Dialect::Paren,
        Dialect::Dollar,
    ];

    /// Opening and closing delimiters.
    pub const fn delimiters(self) -> (&'static str, &'static str) {
        match self {
            Dialect::Brace => ("{", "}"),
            Dialect::DoubleBrace => ("{{", "}}"),
            Dialect::Hash => ("#", "#"),
            Dialect::DoubleBracket => ("[[", "]]"),
            Dialect::Paren => ("(", ")"),
            Dialect::Dollar => ("${", "}"),
        }
    }

    /// Whether an opened but unclosed token is an error. `#` and `(` occur in ordinary URLs
    /// (fragments, text), so there an unclosed token is just text.
    const fn strict(self) -> bool {
        !matches!(self, Dialect::Hash | Dialect::Paren)
    }

    /// Write `name` as a token of this dialect.
    pub fn write_token(self, name: &str, out: &mut String) {
        let (open, close) = self.delimiters();
        out.push_str(open);
        if self == Dialect::Dollar {
            out.extend(name.chars().map(|c| c.to_ascii_uppercase()));
        } else {
            out.push_str(name);
        }
        out.push_str(close);
    }

    /// The name used in the catalogue for a name written in this dialect.
    pub(crate) fn canonical_name(self, written: &str) -> std::borrow::Cow<'_, str> {
        if self == Dialect::Dollar {
            written.to_ascii_lowercase().into()
        } else {
            written.into()
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Dialect::Brace => "brace",
            Dialect::DoubleBrace => "double_brace",
            Dialect::Hash => "hash",
            Dialect::DoubleBracket => "double_bracket",
            Dialect::Paren => "paren",
            Dialect::Dollar => "dollar",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (o, c) = self.delimiters();
        write!(f, "{}x{}", o, c)
    }
}

/// A dialect name that is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown dialect `{0}`: use one of brace, double_brace, hash, double_bracket, paren, dollar"
)]
pub struct UnknownDialect(pub String);

impl FromStr for Dialect {
    type Err = UnknownDialect;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.as_str() == s || d.to_string() == s)
            .ok_or_else(|| UnknownDialect(s.to_owned()))
    }
}

/// One piece of raw template text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// Text taken as written.
    Lit(&'a str),
    /// A macro: the name as written, the whole token, and its byte offset.
    Macro {
        name: &'a str,
        raw: &'a str,
        at: usize,
    },
}

/// A token opened but never closed, in a dialect where that is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unclosed {
    pub at: usize,
}

/// Split `src` into tokens of `dialect`.
pub(crate) fn tokenize(src: &str, dialect: Dialect) -> Result<Vec<Token<'_>>, Unclosed> {
    let (open, close) = dialect.delimiters();
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut lit_start = 0;
    let mut i = 0;
    while i < b.len() {
        // Bytes, not `str` slices: `i` may sit inside a multi-byte character.
        if !b[i..].starts_with(open.as_bytes()) {
            i += 1;
            continue;
        }
        // In the single-brace dialect `{{x}}` is another dialect's token: keep it as text and
        // let the foreign-dialect lint report it, instead of expanding the inner `{x}`.
        if dialect == Dialect::Brace && b[i..].starts_with(b"{{") {
            i = skip_run(b, i, b'{');
            continue;
        }
        let name_start = i + open.len();
        let mut j = name_start;
        if j < b.len() && is_name_start(b[j]) {
            j += 1;
            while j < b.len() && is_name_byte(b[j]) {
                j += 1;
            }
        }
        if j > name_start && b[j..].starts_with(close.as_bytes()) {
            if lit_start < i {
                out.push(Token::Lit(&src[lit_start..i]));
            }
            let end = j + close.len();
            out.push(Token::Macro {
                name: &src[name_start..j],
                raw: &src[i..end],
                at: i,
            });
            lit_start = end;
            i = end;
        } else if j > name_start && dialect.strict() {
            return Err(Unclosed { at: i });
        } else {
            i += 1;
        }
    }
    if lit_start < b.len() {
        out.push(Token::Lit(&src[lit_start..]));
    }
    Ok(out)
}

fn skip_run(b: &[u8], mut i: usize, byte: u8) -> usize {
    while i < b.len() && b[i] == byte {
        i += 1;
    }
    i
}

/// A token of another dialect found in literal text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Foreign {
    pub dialect: Dialect,
    pub token: String,
    pub name: String,
    pub at: usize,
}

/// Tokens of dialects other than `own` inside a literal, whose names satisfy `known`.
/// `offset` is the literal's position in the source.
pub(crate) fn foreign_tokens(
    lit: &str,
    offset: usize,
    own: Dialect,
    known: &dyn Fn(&str) -> bool,
) -> Vec<Foreign> {
    let mut found = Vec::new();
    for d in Dialect::ALL {
        if d == own {
            continue;
        }
        let Ok(tokens) = tokenize(lit, d) else {
            continue;
        };
        for t in tokens {
            if let Token::Macro { name, raw, at } = t {
                let canonical = d.canonical_name(name);
                if known(&canonical) || known(&canonical.to_ascii_lowercase()) {
                    found.push(Foreign {
                        dialect: d,
                        token: raw.to_owned(),
                        name: canonical.into_owned(),
                        at: offset + at,
                    });
                }
            }
        }
    }
    // `${x}` also contains `{x}`: report the outer token only.
    let inner = contained(&found);
    let mut k = 0;
    found.retain(|_| {
        k += 1;
        !inner[k - 1]
    });
    found.sort_by_key(|f| f.at);
    found
}

/// For each token, whether another token with a different span contains it. A sweep over the
/// spans sorted by start (and longest first at one start): a token is contained exactly when an
/// earlier span in that order reaches as far as its end. O(n log n), where comparing every pair
/// would be quadratic in a literal full of tokens.
fn contained(found: &[Foreign]) -> Vec<bool> {
    let span = |f: &Foreign| (f.at, f.at + f.token.len());
    let mut order: Vec<usize> = (0..found.len()).collect();
    order.sort_unstable_by_key(|&i| {
        let (s, e) = span(&found[i]);
        (s, std::cmp::Reverse(e))
    });
    let mut inner = vec![false; found.len()];
    // The furthest end among the spans before the current group of equal spans.
    let mut reach: Option<usize> = None;
    let mut g = 0;
    while g < order.len() {
        let (s, e) = span(&found[order[g]]);
        let mut h = g;
        while h < order.len() && span(&found[order[h]]) == (s, e) {
            inner[order[h]] = reach.is_some_and(|r| r >= e);
            h += 1;
        }
        reach = Some(reach.map_or(e, |r| r.max(e)));
        g = h;
    }
    inner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(src: &str, d: Dialect) -> Vec<String> {
        tokenize(src, d)
            .unwrap()
            .into_iter()
            .filter_map(|t| match t {
                Token::Macro { name, .. } => Some(name.to_owned()),
                Token::Lit(_) => None,
            })
            .collect()
    }

    #[test]
    fn each_dialect_finds_its_tokens() {
        assert_eq!(
            names("a={sub1}&b={payout}", Dialect::Brace),
            ["sub1", "payout"]
        );
        assert_eq!(names("a={{sub1}}", Dialect::DoubleBrace), ["sub1"]);
        assert_eq!(names("a=#s2##s3#", Dialect::Hash), ["s2", "s3"]);
        assert_eq!(names("a=[[sub1]]", Dialect::DoubleBracket), ["sub1"]);
        assert_eq!(names("a=(sha1-idfa)", Dialect::Paren), ["sha1-idfa"]);
        assert_eq!(names("a=${SUBID}", Dialect::Dollar), ["SUBID"]);
    }

    #[test]
    fn unclosed_brace_is_an_error_but_hash_is_text() {
        assert_eq!(
            tokenize("a={sub1&b=2", Dialect::Brace),
            Err(Unclosed { at: 2 })
        );
        assert_eq!(
            names("https://x.com/#top", Dialect::Hash),
            Vec::<String>::new()
        );
        assert_eq!(names("a={ }", Dialect::Brace), Vec::<String>::new());
    }

    #[test]
    fn double_brace_in_brace_dialect_stays_text() {
        assert_eq!(names("a={{sub1}}&b={sub2}", Dialect::Brace), ["sub2"]);
    }

    fn foreign(at: usize, token: &str) -> Foreign {
        Foreign {
            dialect: Dialect::Brace,
            token: token.to_owned(),
            name: String::new(),
            at,
        }
    }

    /// The quadratic definition the sweep replaces.
    fn contained_by_pairs(found: &[Foreign]) -> Vec<bool> {
        found
            .iter()
            .map(|f| {
                let (s, e) = (f.at, f.at + f.token.len());
                found.iter().any(|o| {
                    let (os, oe) = (o.at, o.at + o.token.len());
                    os <= s && e <= oe && oe - os > e - s
                })
            })
            .collect()
    }

    #[test]
    fn containment_sweep_agrees_with_comparing_every_pair() {
        // Spans over a few bytes in every arrangement: nested, equal, touching, overlapping.
        let mut n = 0u32;
        while n < 4096 {
            let mut found = Vec::new();
            let mut x = n;
            for _ in 0..4 {
                let at = (x % 4) as usize;
                let len = 1 + ((x / 4) % 4) as usize;
                found.push(foreign(at, &"x".repeat(len)));
                x /= 16;
                if x == 0 {
                    break;
                }
            }
            assert_eq!(contained(&found), contained_by_pairs(&found), "{n}");
            n += 1;
        }
    }

    #[test]
    fn dollar_token_hides_the_brace_token_inside() {
        let known = |n: &str| n == "sub1";
        let f = foreign_tokens("a=${sub1}&b={sub1}", 0, Dialect::Hash, &known);
        let got: Vec<_> = f.iter().map(|f| (f.dialect, f.at)).collect();
        assert_eq!(got, [(Dialect::Dollar, 2), (Dialect::Brace, 12)]);
    }

    #[test]
    fn foreign_tokens_need_known_names() {
        let known = |n: &str| n == "sub1";
        let f = foreign_tokens("a=#sub1#&b=(foo)&c={{sub1}}", 0, Dialect::Brace, &known);
        let got: Vec<_> = f.iter().map(|f| (f.dialect, f.token.as_str())).collect();
        assert_eq!(
            got,
            [
                (Dialect::Hash, "#sub1#"),
                (Dialect::DoubleBrace, "{{sub1}}")
            ]
        );
    }
}
