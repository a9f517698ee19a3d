//! Malformed templates: every parser entry point, in every dialect and context, over a corpus of
//! broken, hostile and oversized inputs, answers `Ok` or `Err` without panicking, with the exact
//! error where the input determines it. Whatever it accepts previews, renders, converts and
//! survives serde.

use postback::template::{
    Catalog, Context, Dialect, MAX_TEMPLATE_LEN, Macro, Options, Pixel, Template, TemplateError,
    UnknownMacroPolicy, ValueMap,
};
use proptest::prelude::*;

const POLICIES: [UnknownMacroPolicy; 3] = [
    UnknownMacroPolicy::Refuse,
    UnknownMacroPolicy::Empty,
    UnknownMacroPolicy::KeepLiteral,
];

/// Values that break naive encoders, for every sub macro.
fn hostile_values() -> ValueMap {
    let mut m = ValueMap::new();
    let nasty = [
        "a&b=c",
        "..",
        ".",
        "\"><script>",
        "%",
        "#x?y/z",
        "\\..\\",
        "é €",
        "",
        "'",
    ];
    for (n, v) in (1..=10).zip(nasty) {
        m.set(Macro::sub(n).unwrap(), v);
    }
    m
}

/// Use an accepted template every way there is; none of it may panic, and what is promised
/// must hold.
fn exercise(t: &Template) {
    // Sample values fill every built-in macro with ordinary text, so the preview always works,
    // and a URL preview is a URL.
    let preview = t.preview().unwrap();
    if t.context() == Context::Url {
        url::Url::parse(&preview).unwrap();
        http::Uri::try_from(preview.as_str()).unwrap();
    }
    let values = hostile_values();
    if let Ok(expanded) = t.expand(&values) {
        if t.context() == Context::Url {
            url::Url::parse(&expanded).unwrap();
            http::Uri::try_from(expanded.as_str()).unwrap();
        }
    }
    let mut buf = String::from("x");
    if t.expand_into(&mut buf, &ValueMap::new()).is_err() {
        assert_eq!(buf, "x");
    }
    for pixel in [Pixel::Image, Pixel::Iframe] {
        let _ = t.render_pixel(pixel, &values);
    }
    for d in Dialect::ALL {
        if let Ok(converted) = t.to_dialect(d) {
            let again = Template::compile(&converted, t.context(), &Catalog::standard(), {
                let mut o = t.options();
                o.dialect = d;
                o
            })
            .unwrap();
            assert_eq!(again.preview().unwrap(), preview, "{converted:?} in {d}");
        }
    }
    let json = serde_json::to_string(t).unwrap();
    let back: Template = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, t);
    let _ = (format!("{t:?}"), t.to_string());
    for lint in t.lints() {
        let _ = lint.to_string();
    }
}

/// Every entry point, dialect, context and unknown-macro policy. Returns what `parse` gave.
fn try_everything(src: &str) -> Result<Template, TemplateError> {
    let parsed = Template::parse(src);
    if let Ok(t) = &parsed {
        exercise(t);
    }
    if let Ok(t) = Template::parse_html(src) {
        exercise(&t);
    }
    for d in Dialect::ALL {
        for context in [Context::Url, Context::Html] {
            for unknown in POLICIES {
                let o = Options::default().dialect(d).unknown(unknown);
                match Template::compile(src, context, &Catalog::standard(), o) {
                    Ok(t) => exercise(&t),
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
        }
    }
    parsed
}

fn compile_in(src: &str, d: Dialect) -> Result<Template, TemplateError> {
    Template::compile(
        src,
        Context::Url,
        &Catalog::standard(),
        Options::default().dialect(d),
    )
}

fn expand(t: &Template) -> String {
    t.expand(&ValueMap::new().with(Macro::SUB1, "abc")).unwrap()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unclosed(at: usize, close: &'static str) -> TemplateError {
    TemplateError::Unclosed { at, close }
}

fn in_authority(at: usize) -> TemplateError {
    TemplateError::MacroInAuthority {
        name: "sub1".to_owned(),
        at,
    }
}

fn invalid(why: &str) -> TemplateError {
    TemplateError::InvalidUrl(why.to_owned())
}

/// Inputs and the error `Template::parse` (brace dialect, URL) must give.
fn refused() -> Vec<(String, TemplateError)> {
    let too_long = |len: usize| TemplateError::TooLong {
        len,
        max: MAX_TEMPLATE_LEN,
    };
    let mut v: Vec<(String, TemplateError)> = vec![
        // Nothing.
        ("".into(), TemplateError::Empty),
        (" \t\r\n ".into(), TemplateError::Empty),
        ("\u{3000}\u{a0}".into(), TemplateError::Empty),
        // Lone delimiters.
        ("{".into(), TemplateError::NotAbsolute),
        ("}".into(), TemplateError::NotAbsolute),
        ("{}".into(), TemplateError::NotAbsolute),
        ("{{".into(), TemplateError::NotAbsolute),
        ("#".into(), TemplateError::NotAbsolute),
        ("##".into(), TemplateError::NotAbsolute),
        ("((".into(), TemplateError::NotAbsolute),
        ("))".into(), TemplateError::NotAbsolute),
        ("[[".into(), TemplateError::NotAbsolute),
        ("]]".into(), TemplateError::NotAbsolute),
        ("$".into(), TemplateError::NotAbsolute),
        ("${".into(), TemplateError::NotAbsolute),
        ("${}".into(), TemplateError::NotAbsolute),
        // Unclosed and nested tokens.
        ("{sub1".into(), unclosed(0, "}")),
        ("https://t.example/pb?cid={sub1".into(), unclosed(25, "}")),
        (
            "https://t.example/pb?cid={sub1&p=1".into(),
            unclosed(25, "}"),
        ),
        ("{sub{sub1}}".into(), unclosed(0, "}")),
        ("{sub1{sub2}}".into(), unclosed(0, "}")),
        ("https://t.example/{sub{sub1}}".into(), unclosed(18, "}")),
        (
            "https://t.example/pb?cid={sub1:x}".into(),
            unclosed(25, "}"),
        ),
        ("https://t.example/pb?cid=${SUB1".into(), unclosed(26, "}")),
        ("{{{sub1}}}".into(), TemplateError::NotAbsolute),
        (
            "https://t.example/pb?cid={_sub1}".into(),
            TemplateError::UnknownMacro {
                name: "_sub1".to_owned(),
                at: 25,
                suggestion: Some("sub1".to_owned()),
            },
        ),
        (
            "https://t.example/pb?cid={order.number}".into(),
            TemplateError::UnknownMacro {
                name: "order.number".to_owned(),
                at: 25,
                suggestion: None,
            },
        ),
        // Not a URL, or not one we send to.
        ("https://".into(), invalid("empty host")),
        (
            "https:// t.example/".into(),
            invalid("invalid international domain name"),
        ),
        (
            "https://t example/".into(),
            invalid("invalid international domain name"),
        ),
        (
            "https://t.ex\0ample/".into(),
            invalid("invalid international domain name"),
        ),
        ("https://t.example@/".into(), invalid("empty host")),
        ("https://{sub1}.com".into(), in_authority(8)),
        ("https://host:{sub1}/".into(), in_authority(13)),
        ("https://t.example:{sub1}".into(), in_authority(18)),
        ("{sub1}".into(), in_authority(0)),
        ("http://[::1".into(), invalid("invalid IPv6 address")),
        (
            "http://[::1/pb?cid={sub1}".into(),
            invalid("invalid IPv6 address"),
        ),
        (
            "https://t.example:99999/".into(),
            invalid("invalid port number"),
        ),
        (
            "https://t.example:4294967296/".into(),
            invalid("invalid port number"),
        ),
        (
            "https://t.example:443:443/".into(),
            invalid("invalid port number"),
        ),
        (
            "https://user:pw@t.example/?c={sub1}".into(),
            TemplateError::UserInfo,
        ),
        (
            "javascript:alert(1)".into(),
            TemplateError::Scheme("javascript".to_owned()),
        ),
        (
            "JavaScript:alert(document.cookie)".into(),
            TemplateError::Scheme("javascript".to_owned()),
        ),
        (
            "data:text/html,<script>alert(1)</script>".into(),
            TemplateError::Scheme("data".to_owned()),
        ),
        (
            "file:///etc/passwd".into(),
            TemplateError::Scheme("file".to_owned()),
        ),
        (
            "//t.example/pb?cid={sub1}".into(),
            TemplateError::NotAbsolute,
        ),
        ("https:/t.example/pb".into(), TemplateError::NotAbsolute),
        ("t.example/pb?cid={sub1}".into(), TemplateError::NotAbsolute),
        // Control characters and broken UTF-8.
        ("\0".into(), TemplateError::NotAbsolute),
        ("\u{1b}[31m".into(), TemplateError::NotAbsolute),
        (lossy(&[0xff, 0xfe, b'{', 0xc3]), TemplateError::NotAbsolute),
        (
            lossy(b"https://t.ex\xffample/"),
            invalid("invalid international domain name"),
        ),
        // Size.
        ("a".repeat(100 * 1024), too_long(100 * 1024)),
        ("{".repeat(100 * 1024), too_long(100 * 1024)),
        (
            "#".repeat(MAX_TEMPLATE_LEN + 1),
            too_long(MAX_TEMPLATE_LEN + 1),
        ),
        ("{".repeat(MAX_TEMPLATE_LEN), TemplateError::NotAbsolute),
        // Within the limit, but three times longer once normalized: over what `http` takes.
        (
            format!("https://t.example/{}", "é".repeat(16_000)),
            invalid("uri too long"),
        ),
    ];
    v.shrink_to_fit();
    v
}

/// Inputs `Template::parse` accepts, and what they expand to with `{sub1}` = `abc`.
const ACCEPTED: &[(&str, &str)] = &[
    ("https://t.example/}{", "https://t.example/%7D%7B"),
    (
        "https://t.example/?a={{{sub1}}}",
        "https://t.example/?a=%7B%7B%7Bsub1%7D%7D%7D",
    ),
    (
        "https://t.example/?a={{sub1}",
        "https://t.example/?a=%7B%7Bsub1%7D",
    ),
    (
        "https://t.example/?a={sub1}}",
        "https://t.example/?a=abc%7D",
    ),
    (
        "https://t.example/pb?cid={ sub1 }",
        "https://t.example/pb?cid=%7B%20sub1%20%7D",
    ),
    (
        "https://t.example/pb?cid={1sub}",
        "https://t.example/pb?cid=%7B1sub%7D",
    ),
    (
        "https://t.example/\0?cid={sub1}",
        "https://t.example/%00?cid=abc",
    ),
    (
        "https://t.example/\u{202e}?c={sub1}",
        "https://t.example/%E2%80%AE?c=abc",
    ),
    (
        "https://T.EXAMPLE/%zz%?c={sub1}",
        "https://t.example/%25zz%25?c=abc",
    ),
    (
        "https://t.example:/pb?c={sub1}",
        "https://t.example/pb?c=abc",
    ),
    (
        "https://t.example:0/?c={sub1}",
        "https://t.example:0/?c=abc",
    ),
    ("https://t.example#{sub1}", "https://t.example/#abc"),
    ("https://t.example?{sub1}", "https://t.example/?abc"),
    (
        "https://t.example/pb?cid=#sub1##",
        "https://t.example/pb?cid=#sub1%23%23",
    ),
    // Decimal, hexadecimal and mapped addresses come out in their plain form.
    (
        "https://2852039166/?c={sub1}",
        "https://169.254.169.254/?c=abc",
    ),
    ("http://0x7f.1/?c={sub1}", "http://127.0.0.1/?c=abc"),
    (
        "https://[::ffff:127.0.0.1]/?c={sub1}",
        "https://[::ffff:7f00:1]/?c=abc",
    ),
    ("https://t%2eexample/?c={sub1}", "https://t.example/?c=abc"),
];

#[test]
fn malformed_inputs_give_the_determined_error_and_never_panic() {
    for (src, expected) in refused() {
        let got = try_everything(&src);
        let shown: String = src.chars().take(48).collect();
        assert_eq!(got.unwrap_err(), expected, "{shown:?}");
    }
}

#[test]
fn odd_but_valid_inputs_expand_exactly_and_never_panic() {
    for (src, url) in ACCEPTED {
        let t = try_everything(src).unwrap();
        assert_eq!(expand(&t), *url, "{src:?}");
    }
    let src = format!("https://t.example/{}?c={{sub1}}", lossy(b"\xff\xfe{\xc3"));
    assert_eq!(
        expand(&try_everything(&src).unwrap()),
        "https://t.example/%EF%BF%BD%EF%BF%BD%7B%EF%BF%BD?c=abc"
    );
}

#[test]
fn an_unclosed_token_is_refused_in_every_strict_dialect() {
    let cases = [
        (Dialect::Brace, "https://t.example/pb?cid={sub1", "}"),
        (
            Dialect::DoubleBrace,
            "https://t.example/pb?cid={{sub1}",
            "}}",
        ),
        (
            Dialect::DoubleBracket,
            "https://t.example/pb?cid=[[sub1]",
            "]]",
        ),
        (Dialect::Dollar, "https://t.example/pb?cid=${SUB1", "}"),
    ];
    for (d, src, close) in cases {
        let _ = try_everything(src);
        assert_eq!(compile_in(src, d).unwrap_err(), unclosed(25, close), "{d}");
    }
}

#[test]
fn an_unclosed_hash_or_paren_token_is_plain_text() {
    let t = compile_in("https://t.example/pb?cid=#sub1", Dialect::Hash).unwrap();
    assert_eq!(
        t.expand(&ValueMap::new()).unwrap(),
        "https://t.example/pb?cid=#sub1"
    );
    let t = compile_in("https://t.example/pb?cid=(sub1", Dialect::Paren).unwrap();
    assert_eq!(
        t.expand(&ValueMap::new()).unwrap(),
        "https://t.example/pb?cid=(sub1"
    );
    let t = compile_in("https://t.example/pb?cid=#sub1##", Dialect::Hash).unwrap();
    assert_eq!(expand(&t), "https://t.example/pb?cid=abc#");
}

#[test]
fn nested_tokens_of_other_dialects_read_as_one_token_and_text() {
    let t = compile_in("https://t.example/?a={{{sub1}}}", Dialect::DoubleBrace).unwrap();
    assert_eq!(expand(&t), "https://t.example/?a=%7Babc%7D");
    let t = compile_in("https://t.example/?a=[[[sub1]]]", Dialect::DoubleBracket).unwrap();
    assert_eq!(expand(&t), "https://t.example/?a=[abc]");
    let t = compile_in("https://t.example/?a=((sub1))", Dialect::Paren).unwrap();
    assert_eq!(expand(&t), "https://t.example/?a=(abc)");
}

#[test]
fn a_macro_before_the_host_is_refused_in_every_dialect() {
    let cases = [
        (Dialect::Brace, "{sub1}://t.example/"),
        (Dialect::DoubleBrace, "{{sub1}}://t.example/"),
        (Dialect::Hash, "#sub1#"),
        (Dialect::DoubleBracket, "[[sub1]]://t.example/"),
        (Dialect::Paren, "(sub1)://t.example/"),
        (Dialect::Dollar, "${SUB1}"),
    ];
    for (d, src) in cases {
        let _ = try_everything(src);
        assert_eq!(compile_in(src, d).unwrap_err(), in_authority(0), "{d}");
    }
}

#[test]
fn html_code_accepts_any_text_but_refuses_unclosed_tokens_and_oversize() {
    assert_eq!(
        Template::parse_html("https://")
            .unwrap()
            .expand(&ValueMap::new()),
        Ok("https://".to_owned())
    );
    assert_eq!(
        Template::parse_html("<p>{sub1</p>").unwrap_err(),
        unclosed(3, "}")
    );
    assert_eq!(
        Template::parse_html("  ").unwrap_err(),
        TemplateError::Empty
    );
    assert_eq!(
        Template::parse_html(&"<".repeat(MAX_TEMPLATE_LEN + 1)).unwrap_err(),
        TemplateError::TooLong {
            len: MAX_TEMPLATE_LEN + 1,
            max: MAX_TEMPLATE_LEN,
        }
    );
}

#[test]
fn a_template_at_the_size_limit_with_thousands_of_macros_works() {
    let mut src = String::from("https://t.example/pb?");
    while src.len() + 10 <= MAX_TEMPLATE_LEN {
        src.push_str("a={sub1}&");
    }
    // One parse: every dialect and policy over 32 KB is slow in a debug build.
    let t = Template::parse(&src).unwrap();
    exercise(&t);
    assert_eq!(t.macros().count(), (src.len() - 21) / 9);
    let url = expand(&t);
    assert_eq!(url.len(), src.len() - 3 * t.macros().count());
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Tokens of every dialect, delimiters alone, and URL punctuation.
const SOUP: &str = r"(\{sub1\}|\{\{sub2\}\}|#sub3#|\[\[sub4\]\]|\(sub5\)|\$\{SUB6\}|\{currency\}|\{payout\}|[{}#\[\]()$a-z0-9:/?&=%.@ \\\t\n]){0,24}";

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        let _ = try_everything(&s);
    }

    #[test]
    fn delimiter_soup_after_an_origin_never_panics(s in SOUP) {
        let _ = try_everything(&format!("https://t.example/{s}"));
    }

    #[test]
    fn delimiter_soup_anywhere_never_panics(s in SOUP, t in SOUP) {
        let _ = try_everything(&format!("{s}https://{t}"));
    }
}
