//! Macro templates: parse a postback URL (or HTML/JS code) once into literal and macro segments,
//! then expand it many times, every value encoded for the position it lands in.
//!
//! ```
//! use postback::template::{Amount, Currency, Macro, Template, ValueMap};
//!
//! let t = Template::parse("https://tracker.example/pb?cid={sub1}&payout={payout}&cur={currency}")?;
//! let values = ValueMap::new()
//!     .with(Macro::SUB1, "abc&payout=999")
//!     .with(Macro::PAYOUT, Amount::new(1250, 2))
//!     .with(Macro::CURRENCY, Currency::new("EUR")?);
//! // The currency parameter moved to the front; the `&` in the click id cannot add a parameter.
//! assert_eq!(
//!     t.expand(&values)?,
//!     "https://tracker.example/pb?cur=EUR&cid=abc%26payout%3D999&payout=12.50"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod catalog;
mod encode;
mod lint;
mod money;
mod syntax;
mod values;
mod writer;

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use catalog::{Catalog, CatalogError, Macro};
pub(crate) use encode::COMPONENT as COMPONENT_SET;
pub use lint::{
    Lint, SAMPLE_CONVERSION_ID, SAMPLE_DELIVERY_ID, SampleValues, redact_url, redact_url_with,
};
pub(crate) use lint::{redact_for_record, scrub_text};
pub use money::{Amount, AmountError, Currency, CurrencyError};
pub use syntax::{Dialect, UnknownDialect};
pub use values::{
    Encoded, MacroValues, NotEncoded, OwnedValue, StoredValues, UnknownName, Value, ValueMap,
    WithDeliveryId,
};

use encode::Position;
use syntax::Token;
use writer::{Bytes, Out};

/// The longest template accepted, in bytes. An HTTP request target tops out near 64 KiB, and a
/// template must leave room for its values.
pub const MAX_TEMPLATE_LEN: usize = 32 * 1024;

/// The most macros a template can hold: the shortest token (`{a}`, `#a#`, `(a)`) is three bytes.
/// A stored template listing more custom or click-id macros than this is refused.
pub const MAX_MACROS: usize = MAX_TEMPLATE_LEN / 3;

/// What a template is: a URL (server-to-server postbacks and image/iframe pixels) or HTML/JS code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Context {
    /// An absolute http(s) URL; values are percent-encoded for their part of the URL.
    #[default]
    Url,
    /// HTML or JavaScript code; values are encoded down to unreserved characters, which are safe
    /// in text, attributes, script strings and URLs alike.
    Html,
}

/// What to do with a macro the catalogue does not know, at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnknownMacroPolicy {
    /// Refuse the template, naming the macro and the nearest known name (default).
    #[default]
    Refuse,
    /// Expand it to nothing.
    Empty,
    /// Keep the token as literal text (percent-encoded where a URL requires it).
    KeepLiteral,
}

/// What to do when a macro has no value, or an empty one, at expansion time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EmptyPolicy {
    /// Send the parameter with an empty value (`sub2=`), as the networks do (default).
    #[default]
    SendEmpty,
    /// Refuse to expand.
    Refuse,
}

/// How a template is parsed and expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Options {
    /// How macros are written.
    pub dialect: Dialect,
    /// Unknown macros at parse time.
    pub unknown: UnknownMacroPolicy,
    /// Missing or empty values at expansion time.
    pub empty: EmptyPolicy,
    /// Move the parameter that carries `{currency}` to the front of the query (default `true`).
    pub currency_first: bool,
    /// Refuse to expand when every click-id macro of the template is empty (default `true`):
    /// without a click id the partner cannot credit the conversion.
    pub require_click_id: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dialect: Dialect::Brace,
            unknown: UnknownMacroPolicy::Refuse,
            empty: EmptyPolicy::SendEmpty,
            currency_first: true,
            require_click_id: true,
        }
    }
}

impl Options {
    /// Set the dialect.
    #[must_use]
    pub fn dialect(mut self, d: Dialect) -> Self {
        self.dialect = d;
        self
    }
    /// Set the unknown-macro policy.
    #[must_use]
    pub fn unknown(mut self, p: UnknownMacroPolicy) -> Self {
        self.unknown = p;
        self
    }
    /// Set the empty-value policy.
    #[must_use]
    pub fn empty(mut self, p: EmptyPolicy) -> Self {
        self.empty = p;
        self
    }
    /// Keep the currency parameter where it was written instead of moving it first.
    #[must_use]
    pub fn keep_param_order(mut self) -> Self {
        self.currency_first = false;
        self
    }
    /// Allow expansion with every click-id macro empty.
    #[must_use]
    pub fn allow_empty_click_id(mut self) -> Self {
        self.require_click_id = false;
        self
    }
}

/// A template that cannot be used. Each message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// Nothing but white space.
    #[error("the template is empty: enter the partner's postback URL")]
    Empty,
    /// Over [`MAX_TEMPLATE_LEN`].
    #[error("the template is {len} bytes; the limit is {max}: shorten it")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A macro opened and never closed.
    #[error("the macro opened at byte {at} is never closed: add `{close}` after its name")]
    Unclosed {
        /// Byte offset of the opening delimiter.
        at: usize,
        /// The closing delimiter expected.
        close: &'static str,
    },
    /// A macro the catalogue does not know.
    #[error("unknown macro `{name}` at byte {at}{}", hint(suggestion))]
    UnknownMacro {
        /// The name as written.
        name: String,
        /// Byte offset of the token.
        at: usize,
        /// The nearest known name.
        suggestion: Option<String>,
    },
    /// Not an absolute URL.
    #[error("the postback URL must be absolute: start it with https:// or http://")]
    NotAbsolute,
    /// A scheme other than http or https.
    #[error("the postback URL uses `{0}`: only http and https postbacks can be sent")]
    Scheme(String),
    /// A macro in the scheme, host or port.
    #[error(
        "macro `{name}` at byte {at} is in the scheme, host or port: write the host literally (macros belong in the path or query) so the network can check where postbacks go"
    )]
    MacroInAuthority {
        /// The macro.
        name: String,
        /// Byte offset.
        at: usize,
    },
    /// Credentials in the URL.
    #[error(
        "the postback URL carries a user name or password: remove it; credentials in URLs end up in logs"
    )]
    UserInfo,
    /// The URL does not parse.
    #[error("the postback URL is not valid ({0}): check the host and port")]
    InvalidUrl(String),
    /// Converting to another dialect would change the meaning.
    #[error(
        "the template's literal text contains `{0}` delimiters, which would read as macros: keep the current dialect"
    )]
    DialectConflict(Dialect),
}

fn hint(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(": did you mean `{s}`? (macro names are case-sensitive)"),
        None => ": register it in the catalogue, or choose a known macro".to_owned(),
    }
}

/// A value that cannot be expanded. The template is fine; the trigger's values are not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpandError {
    /// A macro without a value under [`EmptyPolicy::Refuse`].
    #[error("macro `{0}` has no value, and this template refuses empty values: supply it")]
    Missing(String),
    /// Every click-id macro is empty.
    #[error(
        "no click id: every click-id macro of this postback ({0}) is empty, so the partner could not credit the conversion; pass the partner's click id"
    )]
    NoClickId(String),
    /// A currency that is not an ISO 4217 code.
    #[error(transparent)]
    Currency(#[from] CurrencyError),
    /// A money macro given text that is not a plain decimal.
    #[error(
        "macro `{name}` needs an amount such as 12.50 but got `{value}`: pass an Amount, or text with `.` as the decimal mark and no grouping"
    )]
    NotAnAmount {
        /// The macro.
        name: String,
        /// The value given.
        value: String,
    },
    /// A value of the wrong kind for its macro.
    #[error("macro `{name}` needs {expected}")]
    WrongKind {
        /// The macro.
        name: String,
        /// What it needs.
        expected: &'static str,
    },
    /// The value would make a path segment `.` or `..` (or an escaped form such as `%2e`), which
    /// would change the path.
    #[error(
        "macro `{0}` would make a path segment `.` or `..`, which would change the path: send another value"
    )]
    DotSegment(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Seg {
    /// End of the literal text before this macro, in `lits`.
    lit_end: u32,
    mac: Macro,
    pos: Position,
    flags: u8,
}

/// Spaces after the literal text, so that a literal of up to 32 bytes can be copied as a fixed
/// 16 or 32 ([`push_literal`]).
const PAD: &str = "                                ";

/// The last macro of a path segment whose literal text is only dots: after it, check that the
/// segment as expanded is not `.` or `..`.
const DOT_CHECK: u8 = 1;
const CLICK_ID: u8 = 2;
/// The macro is `{currency}`: only ISO 4217 codes.
const CURRENCY: u8 = 4;
/// The macro is an amount of money: only plain decimals.
const MONEY: u8 = 8;
/// The macro stands in the `#fragment`, which a browser keeps and a server never receives.
const FRAGMENT: u8 = 16;
/// The macro needs a check at expansion (money, currency, dot segment, a click id the rule
/// counts, or an empty value refused); set when the template is compiled, so that the others
/// take the plain path.
const CHECKED: u8 = 32;
/// The macro stands outside a query component (in a path segment or HTML code): text a
/// [`ValueMap`] prepared for a query fits it only if it is the same in every position.
const NOT_COMPONENT: u8 = 64;
/// An empty value is refused ([`EmptyPolicy::Refuse`]): in the flags, so the loop reads no
/// options.
const REFUSE_EMPTY: u8 = 128;

/// Which HTML element a pixel postback is rendered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pixel {
    /// `<img>`.
    Image,
    /// `<iframe>`.
    Iframe,
}

/// A parsed template: literal and macro segments, ready to expand.
///
/// Parse once when the postback is configured; expand for every trigger. Expansion touches each
/// byte once and allocates nothing when given a buffer with room ([`Template::expand_into`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: Box<str>,
    context: Context,
    options: Options,
    /// The literal text between macros, followed by [`PAD`].
    lits: Box<str>,
    segs: Box<[Seg]>,
    custom: Box<[(Box<str>, Macro)]>,
    lints: Box<[Lint]>,
    /// Literal secrets of the source (set by the postback that owns it), redacted from `Debug`.
    secrets: Box<[String]>,
    /// The length of [`Template::origin`], found once: every send looks its host up.
    origin_len: usize,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The source may carry partner tokens in literal form; show its shape, not its secrets.
        f.debug_struct("Template")
            .field("source", &redact_url_with(&self.source, &self.secrets))
            .field("context", &self.context)
            .field("macros", &self.segs.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Template {
    /// The template as written (trimmed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A piece of a URL being assembled.
#[derive(Debug, Clone)]
enum Piece<'a> {
    Lit(&'a str),
    Mac { mac: Macro },
}

/// A macro resolved against the catalogue, or text.
enum Item<'a> {
    Lit(&'a str),
    Mac { mac: Macro, at: usize },
}

impl Template {
    /// Parse a URL template in the `{x}` dialect against the standard catalogue.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        Template::compile(src, Context::Url, &Catalog::standard(), Options::default())
    }

    /// Parse HTML/JS code in the `{x}` dialect against the standard catalogue.
    pub fn parse_html(src: &str) -> Result<Template, TemplateError> {
        Template::compile(src, Context::Html, &Catalog::standard(), Options::default())
    }

    /// Parse with every choice explicit.
    pub fn compile(
        src: &str,
        context: Context,
        catalog: &Catalog,
        options: Options,
    ) -> Result<Template, TemplateError> {
        let src = src.trim();
        if src.is_empty() {
            return Err(TemplateError::Empty);
        }
        if src.len() > MAX_TEMPLATE_LEN {
            return Err(TemplateError::TooLong {
                len: src.len(),
                max: MAX_TEMPLATE_LEN,
            });
        }
        let dialect = options.dialect;
        let tokens = syntax::tokenize(src, dialect).map_err(|u| TemplateError::Unclosed {
            at: u.at,
            close: dialect.delimiters().1,
        })?;

        // Where the scheme, host and port end, for macros the catalogue does not know.
        let authority_end = match context {
            Context::Url => src.find("://").map(|sep| {
                src[sep + 3..]
                    .find(['/', '?', '#'])
                    .map_or(src.len(), |i| sep + 3 + i)
            }),
            Context::Html => None,
        };
        let mut lints = Vec::new();
        let mut custom: Vec<(Box<str>, Macro)> = Vec::new();
        // The custom macros already in `custom`, so that each is listed once in O(log n).
        let mut custom_seen = std::collections::BTreeSet::new();
        let mut items = Vec::with_capacity(tokens.len());
        let known = |n: &str| catalog.lookup(n).is_some();
        for t in tokens {
            match t {
                Token::Lit(s) => {
                    let offset = s.as_ptr() as usize - src.as_ptr() as usize;
                    for f in syntax::foreign_tokens(s, offset, dialect, &known) {
                        lints.push(Lint::ForeignDialect {
                            token: f.token,
                            dialect: f.dialect,
                            at: f.at,
                            name: f.name,
                        });
                    }
                    items.push(Item::Lit(s));
                }
                Token::Macro { name, raw, at } => {
                    // `${sub1}` in the brace dialect would send `$` and the value: PropellerAds'
                    // dialect written where ours was meant.
                    if dialect == Dialect::Brace && at > 0 && src.as_bytes()[at - 1] == b'$' {
                        lints.push(Lint::ForeignDialect {
                            token: format!("${raw}"),
                            dialect: Dialect::Dollar,
                            at: at - 1,
                            name: name.to_ascii_lowercase(),
                        });
                    }
                    let canonical = dialect.canonical_name(name);
                    match catalog.lookup(&canonical) {
                        Some(mac) => {
                            if !mac.is_builtin() && custom_seen.insert(mac) {
                                custom.push((canonical.as_ref().into(), mac));
                            }
                            items.push(Item::Mac { mac, at });
                        }
                        None => match options.unknown {
                            UnknownMacroPolicy::Refuse => {
                                return Err(TemplateError::UnknownMacro {
                                    name: name.to_owned(),
                                    at,
                                    suggestion: catalog.suggest(&canonical),
                                });
                            }
                            // Kept or dropped, an unknown macro in the authority would still
                            // change where the postback goes.
                            _ if authority_end.is_some_and(|end| at < end) => {
                                return Err(TemplateError::MacroInAuthority {
                                    name: name.to_owned(),
                                    at,
                                });
                            }
                            UnknownMacroPolicy::Empty => {
                                lints.push(Lint::UnknownMacroKept {
                                    name: name.to_owned(),
                                    at,
                                });
                            }
                            UnknownMacroPolicy::KeepLiteral => {
                                lints.push(Lint::UnknownMacroKept {
                                    name: name.to_owned(),
                                    at,
                                });
                                items.push(Item::Lit(raw));
                            }
                        },
                    }
                }
            }
        }

        let mut t = Template {
            source: src.into(),
            context,
            options,
            lits: Box::default(),
            segs: Box::default(),
            custom: custom.into_boxed_slice(),
            lints: Box::default(),
            secrets: Box::default(),
            origin_len: 0,
        };
        let name_of = |m: Macro| t.name_in(m, catalog).into_owned();
        let (mut lits, segs) = match context {
            Context::Url => compile_url(&items, catalog, options, &mut lints, &name_of)?,
            Context::Html => compile_html(&items, catalog),
        };
        lits.push_str(PAD);
        let mut segs = segs;
        for seg in &mut segs {
            let click = options.require_click_id && seg.flags & (CLICK_ID | FRAGMENT) == CLICK_ID;
            if options.empty == EmptyPolicy::Refuse {
                seg.flags |= CHECKED | REFUSE_EMPTY;
            }
            if click || seg.flags & (DOT_CHECK | CURRENCY | MONEY) != 0 {
                seg.flags |= CHECKED;
            }
        }
        t.lits = lits.into_boxed_str();
        t.segs = segs.into_boxed_slice();
        t.origin_len = t.find_origin().len();
        if context == Context::Url {
            t.check_sample_url()?;
            if t.is_plain_http() {
                lints.push(Lint::PlainHttp);
            }
            let mut sample = String::new();
            if t.expand_into(&mut sample, &SampleValues).is_ok() && sample.len() > lint::LONG_URL {
                lints.push(Lint::LongUrl {
                    typical_len: sample.len(),
                    limit: lint::LONG_URL,
                });
            }
        }
        t.lints = lints.into_boxed_slice();
        Ok(t)
    }

    /// Expand with every macro set to `x`: the URL must parse with `url` and as an `http::Uri`,
    /// so that no real expansion can fail to become a request.
    fn check_sample_url(&self) -> Result<(), TemplateError> {
        let mut s = String::with_capacity(self.lits.len() + self.segs.len());
        let mut start = 0;
        for seg in self.segs.iter() {
            s.push_str(&self.lits[start..seg.lit_end as usize]);
            start = seg.lit_end as usize;
            s.push('x');
        }
        s.push_str(&self.text()[start..]);
        url::Url::parse(&s).map_err(|e| TemplateError::InvalidUrl(e.to_string()))?;
        http::Uri::try_from(s.as_str()).map_err(|e| TemplateError::InvalidUrl(e.to_string()))?;
        Ok(())
    }

    fn name_in<'c>(&'c self, m: Macro, catalog: &'c Catalog) -> Cow<'c, str> {
        match catalog.name(m) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(self.macro_name(m)),
        }
    }

    /// The name of a macro as this template knows it.
    pub fn macro_name(&self, m: Macro) -> String {
        if let Some(n) = m.builtin_name() {
            return n.to_owned();
        }
        match self.custom.iter().find(|(_, c)| *c == m) {
            Some((n, _)) => n.to_string(),
            None => format!("#{}", m.id()),
        }
    }

    /// The template as written, trimmed.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// URL or HTML code.
    pub fn context(&self) -> Context {
        self.context
    }

    /// The options it was parsed with.
    pub fn options(&self) -> Options {
        self.options
    }

    /// Warnings found at parse time: show them on a "test your postback" screen.
    pub fn lints(&self) -> &[Lint] {
        &self.lints
    }

    /// Literal secrets of the source, redacted from `Debug` and records (see
    /// [`PostbackBuilder::secret`](crate::model::PostbackBuilder::secret)).
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// The same template, with `secrets` marked as its literal secrets.
    #[must_use]
    pub fn with_secrets(mut self, secrets: Vec<String>) -> Template {
        self.secrets = secrets.into_boxed_slice();
        self
    }

    /// `scheme://host[:port]` of a URL template (always literal: macros in the authority are
    /// refused); empty for HTML code.
    pub fn origin(&self) -> &str {
        &self.text()[..self.origin_len]
    }

    fn find_origin(&self) -> &str {
        let text = self.text();
        match (self.context, text.find("://")) {
            (Context::Url, Some(i)) => {
                let rest = &text[i + 3..];
                let end = rest.find(['/', '?', '#']).map_or(text.len(), |j| i + 3 + j);
                &text[..end]
            }
            _ => "",
        }
    }

    /// The catalogue's own (non-built-in) macros this template uses.
    pub fn custom_macros(&self) -> impl Iterator<Item = Macro> + '_ {
        self.custom.iter().map(|(_, m)| *m)
    }

    /// The macros used, in expansion order (repeats included).
    pub fn macros(&self) -> impl Iterator<Item = Macro> + '_ {
        self.segs.iter().map(|s| s.mac)
    }

    /// Whether any macro of the template carries a click id (per the catalogue it was parsed
    /// with).
    /// A click id in the `#fragment` does not count: the fragment is never sent.
    pub fn has_click_id(&self) -> bool {
        self.segs
            .iter()
            .any(|s| s.flags & (CLICK_ID | FRAGMENT) == CLICK_ID)
    }

    /// A click-id macro that stands in the `#fragment`, if any.
    pub fn click_id_in_fragment(&self) -> Option<Macro> {
        self.segs
            .iter()
            .find(|s| s.flags & (CLICK_ID | FRAGMENT) == CLICK_ID | FRAGMENT)
            .map(|s| s.mac)
    }

    /// The scheme is plain `http`.
    pub fn is_plain_http(&self) -> bool {
        self.context == Context::Url && self.lits.starts_with("http://")
    }

    /// Expand into a new string.
    pub fn expand<V: MacroValues + ?Sized>(&self, values: &V) -> Result<String, ExpandError> {
        let mut out = String::with_capacity(self.text().len() + 16 * self.segs.len());
        self.expand_into(&mut out, values)?;
        Ok(out)
    }

    /// Expand by appending to `out`. On error `out` is left as it was.
    pub fn expand_into<V: MacroValues + ?Sized>(
        &self,
        out: &mut String,
        values: &V,
    ) -> Result<(), ExpandError> {
        if self.segs.len() > writer::BYTES_FROM {
            let mut bytes = Bytes::take(out);
            let r = self.expand_from(&mut bytes, values);
            bytes.finish(out);
            r
        } else {
            self.expand_from(out, values)
        }
    }

    /// Expand by appending to `out`, left as it was on error.
    #[inline(always)]
    fn expand_from<V: MacroValues + ?Sized, O: Out>(
        &self,
        out: &mut O,
        values: &V,
    ) -> Result<(), ExpandError> {
        let mark = out.len();
        let r = match values.as_value_map() {
            // Each value's text was worked out when it was set: no lookup by kind, no encoding.
            Some(map) => self.expand_with(out, map),
            None => self.expand_with(out, &Generic(values)),
        };
        if r.is_err() {
            out.truncate(mark);
        }
        r
    }

    /// The literal text without its padding.
    #[inline(always)]
    fn text(&self) -> &str {
        &self.lits[..self.lits.len() - PAD.len()]
    }

    #[inline(always)]
    fn expand_with<F: Fill + ?Sized, O: Out>(&self, out: &mut O, f: &F) -> Result<(), ExpandError> {
        let lits = &*self.lits;
        let mut start = 0;
        let mut click_id_filled = false;
        for seg in self.segs.iter() {
            let end = seg.lit_end as usize;
            push_literal(out, lits, start, end - start);
            start = end;
            if seg.flags & CHECKED == 0 {
                f.plain(out, seg);
                continue;
            }
            let before = out.len();
            if !f.checked(out, seg) {
                return Err(self.misfit(f.value_of(seg.mac), seg));
            }
            if seg.flags & DOT_CHECK != 0 {
                self.check_dot_segment(out.bytes(), seg)?;
            }
            let filled = out.len() != before;
            if seg.flags & REFUSE_EMPTY != 0 && !filled {
                return Err(ExpandError::Missing(self.macro_name(seg.mac)));
            }
            click_id_filled |= filled & (seg.flags & (CLICK_ID | FRAGMENT) == CLICK_ID);
        }
        let tail = self.text().len() - start;
        if tail > 0 {
            push_literal(out, lits, start, tail);
        }
        if !click_id_filled && self.options.require_click_id && self.has_click_id() {
            return Err(self.no_click_id());
        }
        Ok(())
    }

    /// After the last macro of a path segment whose literal text is only dots.
    #[cold]
    fn check_dot_segment(&self, out: &[u8], seg: &Seg) -> Result<(), ExpandError> {
        // Values never hold a raw `/`, so the segment starts after the last one.
        let seg_start = out.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        let rest = &self.text()[seg.lit_end as usize..];
        let tail = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if is_dot_segment(&out[seg_start..], tail) {
            return Err(ExpandError::DotSegment(self.macro_name(seg.mac)));
        }
        Ok(())
    }

    #[cold]
    fn no_click_id(&self) -> ExpandError {
        // Custom names by id, so that naming every click-id macro is not a scan per macro.
        let mut by_id: Vec<(Macro, &str)> = self.custom.iter().map(|(n, m)| (*m, &**n)).collect();
        by_id.sort_unstable();
        let names: Vec<String> = self
            .segs
            .iter()
            .filter(|s| s.flags & CLICK_ID != 0)
            .map(|s| match s.mac.builtin_name() {
                Some(n) => n.to_owned(),
                None => match by_id.binary_search_by_key(&s.mac, |(m, _)| *m) {
                    Ok(i) => by_id[i].1.to_owned(),
                    Err(_) => format!("#{}", s.mac.id()),
                },
            })
            .collect();
        ExpandError::NoClickId(names.join(", "))
    }

    /// Why `v` does not fit the macro of `seg`.
    #[cold]
    fn misfit(&self, v: Option<Value<'_>>, seg: &Seg) -> ExpandError {
        let name = self.macro_name(seg.mac);
        let Some(v) = v else {
            // Only a `MacroValues` whose answer changed between two questions gets here.
            return ExpandError::Missing(name);
        };
        match v {
            Value::Text(s) | Value::Encoded(Encoded(s)) if seg.flags & CURRENCY != 0 => {
                ExpandError::Currency(CurrencyError(s.to_owned()))
            }
            Value::Text(s) | Value::Encoded(Encoded(s)) if seg.flags & MONEY != 0 => {
                ExpandError::NotAnAmount {
                    name,
                    value: s.to_owned(),
                }
            }
            _ if seg.flags & CURRENCY != 0 => ExpandError::WrongKind {
                name,
                expected: "an ISO 4217 currency code such as USD",
            },
            _ => ExpandError::WrongKind {
                name,
                expected: "an amount such as 12.50",
            },
        }
    }

    /// Expand a URL template as an HTML pixel: the URL, attribute-escaped, inside an `<img>` or
    /// `<iframe>` that no value can close.
    pub fn render_pixel<V: MacroValues + ?Sized>(
        &self,
        pixel: Pixel,
        values: &V,
    ) -> Result<String, ExpandError> {
        let url = self.expand(values)?;
        let mut out = String::with_capacity(url.len() + 96);
        match pixel {
            Pixel::Image => {
                out.push_str("<img src=\"");
                encode::html_attr_escape(&mut out, &url);
                out.push_str("\" width=\"1\" height=\"1\" alt=\"\" style=\"display:none\">");
            }
            Pixel::Iframe => {
                out.push_str("<iframe src=\"");
                encode::html_attr_escape(&mut out, &url);
                out.push_str(
                    "\" width=\"1\" height=\"1\" frameborder=\"0\" scrolling=\"no\" style=\"display:none\"></iframe>",
                );
            }
        }
        Ok(out)
    }

    /// Expand with sample values ([`SampleValues`]), for a preview screen.
    pub fn preview(&self) -> Result<String, ExpandError> {
        self.expand(&SampleValues)
    }

    /// The same template written in another dialect. Refused if the literal text would read as
    /// macros in the new dialect (say, a `#fragment` in the hash dialect).
    pub fn to_dialect(&self, to: Dialect) -> Result<String, TemplateError> {
        let from = self.options.dialect;
        let tokens = syntax::tokenize(&self.source, from).map_err(|u| TemplateError::Unclosed {
            at: u.at,
            close: from.delimiters().1,
        })?;
        let mut catalog = self.catalog();
        // Exactly this template's click-id macros, so that the comparison below sees the same
        // flags even when it was parsed with a catalogue of its own.
        catalog.set_click_id_macros(
            self.segs
                .iter()
                .filter(|s| s.flags & CLICK_ID != 0)
                .map(|s| s.mac),
        );
        let mut out = String::with_capacity(self.source.len() + 8);
        for t in tokens {
            match t {
                Token::Lit(s) => out.push_str(s),
                Token::Macro { name, raw, .. } => {
                    let canonical = from.canonical_name(name);
                    // An unknown macro expanded to nothing stays a macro; one kept as text stays
                    // that text.
                    if catalog.lookup(&canonical).is_some()
                        || self.options.unknown == UnknownMacroPolicy::Empty
                    {
                        to.write_token(&canonical, &mut out);
                    } else {
                        out.push_str(raw);
                    }
                }
            }
        }
        let again = Template::compile(&out, self.context, &catalog, self.options.dialect(to))
            .map_err(|_| TemplateError::DialectConflict(to))?;
        if again.lits != self.lits || again.segs != self.segs {
            return Err(TemplateError::DialectConflict(to));
        }
        Ok(out)
    }

    /// A catalogue that binds this template's macros exactly as it was parsed.
    pub(crate) fn catalog(&self) -> Catalog {
        let mut c = Catalog::standard();
        for (name, m) in self.custom.iter() {
            c.register_at(name, *m);
        }
        let click = self.click_id_macros();
        if !click.is_empty() {
            c.set_click_id_macros(click);
        }
        c
    }

    /// The distinct macros of this template that carry a click id, sorted.
    fn click_id_macros(&self) -> Vec<Macro> {
        let mut click: Vec<Macro> = self
            .segs
            .iter()
            .filter(|s| s.flags & CLICK_ID != 0)
            .map(|s| s.mac)
            .collect();
        click.sort_unstable();
        click.dedup();
        click
    }

    /// Bytes held on the heap by this template (for capacity planning).
    pub fn heap_bytes(&self) -> usize {
        self.source.len()
            + self.lits.len()
            + self.segs.len() * std::mem::size_of::<Seg>()
            + self.custom.iter().map(|(n, _)| n.len() + 24).sum::<usize>()
            + self.lints.len() * std::mem::size_of::<Lint>()
    }
}

/// Append `lits[start..start + len]`: most literals between macros (`&sub1=`) fit 16 bytes, and
/// the start of a URL or a fixed parameter (`https://t.example/pb?cid=`, `&utm_source=network`)
/// often 32.
#[inline(always)]
fn push_literal<O: Out>(out: &mut O, lits: &str, start: usize, len: usize) {
    if len <= 16 {
        out.piece::<16>(lits, start, len);
    } else {
        out.piece::<32>(lits, start, len);
    }
}

/// Write one value of a checked macro; `false` when it does not fit its macro (the caller
/// builds the error on the cold path, so the hot loop carries no large error type).
#[inline(always)]
fn write_checked<O: Out>(out: &mut O, v: Value<'_>, flags: u8, pos: Position) -> bool {
    if flags & (CURRENCY | MONEY) == 0 {
        write_plain(out, v, pos);
        return true;
    }
    if flags & CURRENCY != 0 {
        let code = match v {
            Value::Currency(c) => c,
            Value::Text("") => return true,
            Value::Text(s) | Value::Encoded(Encoded(s)) => match Currency::new(s) {
                Ok(c) => c,
                Err(_) => return false,
            },
            _ => return false,
        };
        code.write_to(out);
        return true;
    }
    match v {
        Value::Amount(a) => a.write_out(out),
        Value::Int(n) => Amount::new(n, 0).write_out(out),
        Value::Text(s) | Value::Encoded(Encoded(s)) => {
            if !s.is_empty() && s.parse::<Amount>().is_err() {
                return false;
            }
            out.push_str(s);
        }
        _ => return false,
    }
    true
}

/// Where expansion gets the text of each macro: any [`MacroValues`] ([`Generic`]), or a
/// [`ValueMap`], which prepared the text of each value when it was set.
trait Fill {
    /// Write the value of a macro that needs no check (nothing if it has none).
    fn plain<O: Out>(&self, out: &mut O, seg: &Seg);
    /// Write the value of a checked macro; `false` when it does not fit.
    fn checked<O: Out>(&self, out: &mut O, seg: &Seg) -> bool;
    /// The value, for the error.
    fn value_of(&self, m: Macro) -> Option<Value<'_>>;
}

/// Values asked for one by one and written by kind.
struct Generic<'a, V: ?Sized>(&'a V);

impl<V: MacroValues + ?Sized> Fill for Generic<'_, V> {
    #[inline(always)]
    fn plain<O: Out>(&self, out: &mut O, seg: &Seg) {
        if let Some(v) = self.0.value(seg.mac) {
            write_plain(out, v, seg.pos);
        }
    }

    #[inline(always)]
    fn checked<O: Out>(&self, out: &mut O, seg: &Seg) -> bool {
        match self.0.value(seg.mac) {
            Some(v) => write_checked(out, v, seg.flags, seg.pos),
            None => true,
        }
    }

    fn value_of(&self, m: Macro) -> Option<Value<'_>> {
        self.0.value(m)
    }
}

/// Write a value of a macro that needs no check.
#[inline(always)]
fn write_plain<O: Out>(out: &mut O, v: Value<'_>, pos: Position) {
    match v {
        Value::Text(s) => encode::encode_into(out, s, pos),
        Value::Encoded(e) => out.push_str(e.as_str()),
        Value::Int(n) => Amount::new(n, 0).write_out(out),
        Value::Amount(a) => a.write_out(out),
        Value::Currency(c) => c.write_to(out),
        Value::Time(t) => Amount::new(t.timestamp(), 0).write_out(out),
    }
}

/// Assemble a URL template: normalized authority, then path, query (currency first) and
/// fragment, with literal text made sendable.
fn compile_url(
    items: &[Item<'_>],
    catalog: &Catalog,
    options: Options,
    lints: &mut Vec<Lint>,
    name_of: &dyn Fn(Macro) -> String,
) -> Result<(String, Vec<Seg>), TemplateError> {
    // The authority must be literal: it is the first item, up to the first `/`, `?` or `#`
    // after `://`.
    let first = match items.first() {
        Some(Item::Lit(s)) => *s,
        Some(Item::Mac { mac, at }) => {
            return Err(TemplateError::MacroInAuthority {
                name: name_of(*mac),
                at: *at,
            });
        }
        None => return Err(TemplateError::Empty),
    };
    let Some(sep) = first.find("://") else {
        return Err(match first.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty()
                    && !scheme.contains(['/', '?', '.'])
                    && !scheme.eq_ignore_ascii_case("http")
                    && !scheme.eq_ignore_ascii_case("https") =>
            {
                TemplateError::Scheme(scheme.to_ascii_lowercase())
            }
            _ => TemplateError::NotAbsolute,
        });
    };
    let auth_end = first[sep + 3..].find(['/', '?', '#']).map(|i| sep + 3 + i);
    let auth_end = match (auth_end, items.get(1)) {
        (Some(e), _) => e,
        (None, Some(Item::Mac { mac, at })) => {
            return Err(TemplateError::MacroInAuthority {
                name: name_of(*mac),
                at: *at,
            });
        }
        (None, _) => first.len(),
    };
    let origin = normalize_origin(&first[..auth_end])?;

    // Split the rest into path, query parameters and fragment.
    #[derive(PartialEq)]
    enum Part {
        Path,
        Query,
        Fragment,
    }
    let mut part = Part::Path;
    let mut path: Vec<Piece<'_>> = Vec::new();
    let mut params: Vec<Vec<Piece<'_>>> = Vec::new();
    let mut has_query = false;
    let mut fragment: Option<Vec<Piece<'_>>> = None;
    let rest =
        std::iter::once(Item::Lit(&first[auth_end..])).chain(items[1..].iter().map(|i| match i {
            Item::Lit(s) => Item::Lit(s),
            Item::Mac { mac, at } => Item::Mac { mac: *mac, at: *at },
        }));
    for item in rest {
        match item {
            Item::Mac { mac, .. } => {
                let p = Piece::Mac { mac };
                match part {
                    Part::Path => path.push(p),
                    Part::Query => params.last_mut().expect("query has a parameter").push(p),
                    Part::Fragment => fragment.as_mut().expect("fragment started").push(p),
                }
            }
            Item::Lit(mut s) => {
                while !s.is_empty() {
                    let stop: &[char] = match part {
                        Part::Path => &['?', '#'],
                        Part::Query => &['&', '#'],
                        Part::Fragment => &[],
                    };
                    let (head, delim) = match s.find(stop) {
                        Some(i) => (&s[..i], Some(s.as_bytes()[i])),
                        None => (s, None),
                    };
                    if !head.is_empty() {
                        let p = Piece::Lit(head);
                        match part {
                            Part::Path => path.push(p),
                            Part::Query => {
                                params.last_mut().expect("query has a parameter").push(p)
                            }
                            Part::Fragment => fragment.as_mut().expect("fragment started").push(p),
                        }
                    }
                    match delim {
                        None => s = "",
                        Some(d) => {
                            s = &s[head.len() + 1..];
                            match d {
                                b'?' => {
                                    part = Part::Query;
                                    has_query = true;
                                    params.push(Vec::new());
                                }
                                b'&' => params.push(Vec::new()),
                                _ => {
                                    part = Part::Fragment;
                                    fragment = Some(Vec::new());
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // Currency first.
    let cur = params.iter().position(|p| {
        p.iter().any(|x| {
            matches!(
                x,
                Piece::Mac {
                    mac: Macro::CURRENCY,
                    ..
                }
            )
        })
    });
    if let Some(i) = cur.filter(|&i| i > 0) {
        if options.currency_first {
            let p = params.remove(i);
            params.insert(0, p);
            lints.push(Lint::CurrencyMoved { from: i + 1 });
        } else {
            lints.push(Lint::CurrencyNotFirst { position: i + 1 });
        }
    }
    lint::duplicate_params(&params, lints);

    // Assemble.
    let mut b = Builder {
        lits: String::with_capacity(items.len() * 16),
        segs: Vec::new(),
        catalog,
    };
    b.lits.push_str(&origin);
    if !path
        .first()
        .is_some_and(|p| matches!(p, Piece::Lit(s) if s.starts_with('/')))
    {
        b.lits.push('/');
    }
    for p in &path {
        match p {
            Piece::Lit(s) => encode::normalize_literal(&mut b.lits, s),
            Piece::Mac { mac, .. } => b.mac(*mac, Position::PathSegment, 0),
        }
    }
    // A segment whose literal text is only dots (or nothing) could become `.` or `..` with the
    // values of its macros: mark its last macro for a check at expansion. Macros add nothing to
    // `lits`, so the macros of one segment share its literal span.
    let path_end = b.lits.len();
    let mut k = 0;
    while k < b.segs.len() {
        let at = b.segs[k].lit_end as usize;
        let start = b.lits[..at].rfind('/').map_or(0, |i| i + 1);
        let end = b.lits[at..path_end].find('/').map_or(path_end, |i| at + i);
        let mut last = k;
        while b
            .segs
            .get(last + 1)
            .is_some_and(|s| (s.lit_end as usize) <= end)
        {
            last += 1;
        }
        if only_dots(&b.lits[start..end]) {
            b.segs[last].flags |= DOT_CHECK;
        }
        k = last + 1;
    }
    if has_query {
        b.lits.push('?');
        for (k, param) in params.iter().enumerate() {
            if k > 0 {
                b.lits.push('&');
            }
            b.pieces(param);
        }
    }
    if let Some(f) = &fragment {
        b.lits.push('#');
        let first = b.segs.len();
        b.pieces(f);
        for seg in &mut b.segs[first..] {
            seg.flags |= FRAGMENT;
        }
    }
    Ok((b.lits, b.segs))
}

/// Whether `head` followed by `tail` is a `.` or `..` path segment, escaped forms included.
fn is_dot_segment(head: &[u8], tail: &str) -> bool {
    let len = head.len() + tail.len();
    if len > 6 {
        return false;
    }
    let mut buf = [0u8; 6];
    buf[..head.len()].copy_from_slice(head);
    buf[head.len()..len].copy_from_slice(tail.as_bytes());
    let s = &buf[..len];
    let dot = |b: &[u8]| b == b"." || b.eq_ignore_ascii_case(b"%2e");
    dot(s) || (1..s.len()).any(|i| dot(&s[..i]) && dot(&s[i..]))
}

/// Whether `s` holds nothing but dots (plain or escaped as `%2e`).
fn only_dots(s: &str) -> bool {
    let mut b = s.as_bytes();
    while !b.is_empty() {
        if b[0] == b'.' {
            b = &b[1..];
        } else if b.len() >= 3 && b[..3].eq_ignore_ascii_case(b"%2e") {
            b = &b[3..];
        } else {
            return false;
        }
    }
    true
}

/// `scheme://host[:port]`, lower-cased, IDN hosts in punycode, default ports dropped.
fn normalize_origin(prefix: &str) -> Result<String, TemplateError> {
    // The URL parser reads `\` as `/`: the text after it would be a path, and dropped here.
    if prefix.contains('\\') {
        return Err(TemplateError::InvalidUrl(
            "a backslash in the host: start the path with `/`".to_owned(),
        ));
    }
    let u = url::Url::parse(prefix).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => TemplateError::NotAbsolute,
        e => TemplateError::InvalidUrl(e.to_string()),
    })?;
    match u.scheme() {
        "http" | "https" => {}
        other => return Err(TemplateError::Scheme(other.to_owned())),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(TemplateError::UserInfo);
    }
    if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
        return Err(TemplateError::InvalidUrl(format!(
            "`{prefix}` is more than a scheme, host and port"
        )));
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(TemplateError::NotAbsolute)?;
    Ok(match u.port() {
        Some(p) => format!("{}://{}:{}", u.scheme(), host, p),
        None => format!("{}://{}", u.scheme(), host),
    })
}

struct Builder<'c> {
    lits: String,
    segs: Vec<Seg>,
    catalog: &'c Catalog,
}

impl Builder<'_> {
    fn mac(&mut self, mac: Macro, pos: Position, flags: u8) {
        let kind = if mac == Macro::CURRENCY {
            CURRENCY
        } else if mac.is_money() {
            MONEY
        } else {
            0
        };
        let click = if self.catalog.is_click_id(mac) {
            CLICK_ID
        } else {
            0
        };
        let place = if pos == Position::Component {
            0
        } else {
            NOT_COMPONENT
        };
        self.segs.push(Seg {
            lit_end: self.lits.len() as u32,
            mac,
            pos,
            flags: flags | click | kind | place,
        });
    }

    fn pieces(&mut self, pieces: &[Piece<'_>]) {
        for p in pieces {
            match p {
                Piece::Lit(s) => encode::normalize_literal(&mut self.lits, s),
                Piece::Mac { mac, .. } => self.mac(*mac, Position::Component, 0),
            }
        }
    }
}

fn compile_html(items: &[Item<'_>], catalog: &Catalog) -> (String, Vec<Seg>) {
    let mut b = Builder {
        lits: String::new(),
        segs: Vec::new(),
        catalog,
    };
    for item in items {
        match item {
            Item::Lit(s) => b.lits.push_str(s),
            Item::Mac { mac, .. } => b.mac(*mac, Position::Strict, 0),
        }
    }
    (b.lits, b.segs)
}

/// The serialized form: the source and how to parse it. Deserializing parses again, so stored
/// templates are validated exactly like new ones.
#[derive(Serialize, Deserialize)]
struct TemplateSpec {
    source: String,
    #[serde(default)]
    context: Context,
    #[serde(default)]
    options: Options,
    /// Custom macros used, with the ids they were bound to.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "custom_macros_at_most"
    )]
    custom_macros: Vec<(String, Macro)>,
    /// The macros of this template that count as click ids; absent means the standard set.
    #[serde(default, deserialize_with = "click_id_macros_at_most")]
    click_id_macros: Option<Vec<Macro>>,
}

fn custom_macros_at_most<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, Macro)>, D::Error> {
    AtMost::<_, MAX_MACROS>::deserialize_as(d, "custom macros").map(|v| v.0)
}

fn click_id_macros_at_most<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Macro>>, D::Error> {
    Option::<ClickIds>::deserialize(d).map(|o| o.map(|c| c.0.0))
}

/// `click_id_macros` when present: at most [`MAX_MACROS`] entries.
struct ClickIds(AtMost<Macro, MAX_MACROS>);

impl<'de> Deserialize<'de> for ClickIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        AtMost::deserialize_as(d, "click-id macros").map(ClickIds)
    }
}

/// A list of at most `MAX` entries, refused at entry `MAX + 1` while reading, before a hostile
/// record of a million entries is held in memory.
pub(crate) struct AtMost<T, const MAX: usize>(pub(crate) Vec<T>);

impl<T, const MAX: usize> AtMost<T, MAX> {
    /// Read a sequence of at most `MAX` entries; `what` names them in the error.
    pub(crate) fn deserialize_as<'de, D>(d: D, what: &'static str) -> Result<Self, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct Visit<T, const MAX: usize>(&'static str, std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MAX: usize> serde::de::Visitor<'de> for Visit<T, MAX> {
            type Value = AtMost<T, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {MAX} {}", self.0)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX).min(64));
                while let Some(x) = seq.next_element()? {
                    if out.len() == MAX {
                        return Err(serde::de::Error::custom(format!(
                            "the record lists more than {MAX} {}, more than it can use: it is damaged or forged; configure the postback again from its URL",
                            self.0
                        )));
                    }
                    out.push(x);
                }
                Ok(AtMost(out))
            }
        }
        d.deserialize_seq(Visit::<T, MAX>(what, std::marker::PhantomData))
    }
}

impl Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TemplateSpec {
            source: self.source.to_string(),
            context: self.context,
            options: self.options,
            custom_macros: self
                .custom
                .iter()
                .map(|(n, m)| (n.to_string(), *m))
                .collect(),
            click_id_macros: Some(self.click_id_macros()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = TemplateSpec::deserialize(d)?;
        let mut catalog = Catalog::standard();
        for (name, m) in &spec.custom_macros {
            let id_taken = catalog.name(*m).is_some_and(|n| !n.is_empty());
            if m.is_builtin() || id_taken || catalog.lookup(name).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "custom macro `{name}` clashes with a built-in or repeated name or id: rename it in the stored template"
                )));
            }
            catalog.register_at(name, *m);
        }
        if let Some(click) = spec.click_id_macros {
            catalog.set_click_id_macros(click);
        }
        Template::compile(&spec.source, spec.context, &catalog, spec.options)
            .map_err(serde::de::Error::custom)
    }
}
