//! Templates (DESIGN.md, "Encoding" and "Currency first"; REFERENCE.md sections 2, 6 and 7):
//! every dialect, dialect conversion, every policy, every lint, encoding by position, money and
//! currency, literal and origin normalization, serde, and the buffer contract of `expand_into`.

use chrono::DateTime;
use postback::template::{
    Amount, Catalog, Context, Currency, CurrencyError, Dialect, EmptyPolicy, Encoded, ExpandError,
    Lint, Macro, MacroValues, NotEncoded, Options, OwnedValue, Pixel, Template, TemplateError,
    UnknownMacroPolicy, Value, ValueMap,
};

/// A URL template with every choice explicit and the standard catalogue.
fn compile(src: &str, options: Options) -> Result<Template, TemplateError> {
    Template::compile(src, Context::Url, &Catalog::standard(), options)
}

fn in_dialect(src: &str, dialect: Dialect) -> Template {
    compile(src, Options::default().dialect(dialect)).unwrap()
}

/// Values with the partner's click id in `{sub1}`.
fn click(id: &str) -> ValueMap {
    ValueMap::new().with(Macro::SUB1, id)
}

fn encoded(s: &str) -> OwnedValue {
    OwnedValue::encoded(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Dialects

#[test]
fn brace_dialect_expands_to_an_exact_url() {
    let t = in_dialect("https://t.example/pb?cid={sub1}&p={payout}", Dialect::Brace);
    let v = click("abc 1").with(Macro::PAYOUT, Amount::new(1250, 2));
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc%201&p=12.50"
    );
}

#[test]
fn double_brace_dialect_expands_to_an_exact_url() {
    let t = in_dialect(
        "https://t.example/pb?cid={{sub1}}&order={{order_id}}",
        Dialect::DoubleBrace,
    );
    let v = click("abc").with(Macro::ORDER_ID, "#1001");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc&order=%231001"
    );
}

#[test]
fn hash_dialect_expands_to_an_exact_url_with_concatenated_tokens() {
    let t = in_dialect(
        "https://t.example/pb?cid=#sub1#&s=#sub2##sub3#",
        Dialect::Hash,
    );
    let v = click("abc").with(Macro::SUB2, "x").with(Macro::SUB3, "y&z");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc&s=xy%26z"
    );
}

#[test]
fn double_bracket_dialect_expands_to_an_exact_url() {
    let t = in_dialect(
        "https://t.example/pb?cid=[[sub1]]&rev=[[revenue]]",
        Dialect::DoubleBracket,
    );
    let v = click("abc").with(Macro::REVENUE, Amount::new(15, 1));
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc&rev=1.5"
    );
}

#[test]
fn paren_dialect_expands_to_an_exact_url() {
    let t = in_dialect(
        "https://t.example/pb?cid=(sub1)&country=(country)",
        Dialect::Paren,
    );
    let v = click("abc").with(Macro::COUNTRY, "DE");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc&country=DE"
    );
}

#[test]
fn dollar_dialect_matches_capital_names_and_expands_to_an_exact_url() {
    let t = in_dialect(
        "https://t.example/pb?subid=${SUB1}&payout=${PAYOUT}",
        Dialect::Dollar,
    );
    let v = click("abc").with(Macro::PAYOUT, Amount::new(5, 0));
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?subid=abc&payout=5"
    );
    assert_eq!(t.macros().collect::<Vec<_>>(), [Macro::SUB1, Macro::PAYOUT]);
}

#[test]
fn dialects_parse_from_their_names_and_display_as_a_token() {
    let names = [
        ("brace", "{x}"),
        ("double_brace", "{{x}}"),
        ("hash", "#x#"),
        ("double_bracket", "[[x]]"),
        ("paren", "(x)"),
        ("dollar", "${x}"),
    ];
    for (d, (name, shown)) in Dialect::ALL.into_iter().zip(names) {
        assert_eq!(name.parse::<Dialect>().unwrap(), d);
        assert_eq!(shown.parse::<Dialect>().unwrap(), d);
        assert_eq!(d.to_string(), shown);
    }
    assert!("mustache".parse::<Dialect>().is_err());
}

// ---------------------------------------------------------------------------------------------
// Dialect conversion

const CONVERTIBLE: &str = "https://t.example/pb/{sub2}?cid={sub1}&p={payout}&cur={currency}";

#[test]
fn conversion_from_brace_to_each_dialect_and_back_round_trips() {
    let expected = [
        (Dialect::Brace, CONVERTIBLE),
        (
            Dialect::DoubleBrace,
            "https://t.example/pb/{{sub2}}?cid={{sub1}}&p={{payout}}&cur={{currency}}",
        ),
        (
            Dialect::Hash,
            "https://t.example/pb/#sub2#?cid=#sub1#&p=#payout#&cur=#currency#",
        ),
        (
            Dialect::DoubleBracket,
            "https://t.example/pb/[[sub2]]?cid=[[sub1]]&p=[[payout]]&cur=[[currency]]",
        ),
        (
            Dialect::Paren,
            "https://t.example/pb/(sub2)?cid=(sub1)&p=(payout)&cur=(currency)",
        ),
        (
            Dialect::Dollar,
            "https://t.example/pb/${SUB2}?cid=${SUB1}&p=${PAYOUT}&cur=${CURRENCY}",
        ),
    ];
    let brace = Template::parse(CONVERTIBLE).unwrap();
    let v = click("abc")
        .with(Macro::SUB2, "x y")
        .with(Macro::PAYOUT, Amount::new(1250, 2))
        .with(Macro::CURRENCY, Currency::new("EUR").unwrap());
    let url = "https://t.example/pb/x%20y?cur=EUR&cid=abc&p=12.50";
    assert_eq!(brace.expand(&v).unwrap(), url);
    for (d, text) in expected {
        let converted = brace.to_dialect(d).unwrap();
        assert_eq!(converted, text, "to {d}");
        let t = in_dialect(&converted, d);
        assert_eq!(t.expand(&v).unwrap(), url, "expanded in {d}");
        assert_eq!(
            t.to_dialect(Dialect::Brace).unwrap(),
            CONVERTIBLE,
            "back from {d}"
        );
    }
}

#[test]
fn a_fragment_that_would_read_as_a_hash_macro_refuses_conversion() {
    let t = Template::parse("https://t.example/pb?cid={sub1}#ref{sub2}").unwrap();
    assert_eq!(
        t.to_dialect(Dialect::Hash),
        Err(TemplateError::DialectConflict(Dialect::Hash))
    );
    // Without the second macro the `#` never closes a token, so the meaning survives.
    let t = Template::parse("https://t.example/pb?cid={sub1}#top").unwrap();
    assert_eq!(
        t.to_dialect(Dialect::Hash).unwrap(),
        "https://t.example/pb?cid=#sub1##top"
    );
}

#[test]
fn literal_parentheses_that_would_read_as_a_macro_refuse_conversion() {
    let t = Template::parse("https://t.example/(promo)/pb?cid={sub1}").unwrap();
    assert_eq!(
        t.to_dialect(Dialect::Paren),
        Err(TemplateError::DialectConflict(Dialect::Paren))
    );
}

#[test]
fn a_custom_name_with_capitals_cannot_be_written_in_the_dollar_dialect() {
    let mut catalog = Catalog::standard();
    catalog.register("clickRef").unwrap();
    let t = Template::compile(
        "https://t.example/pb?cid={sub1}&r={clickRef}",
        Context::Url,
        &catalog,
        Options::default(),
    )
    .unwrap();
    assert_eq!(
        t.to_dialect(Dialect::Dollar),
        Err(TemplateError::DialectConflict(Dialect::Dollar))
    );
    assert_eq!(
        t.to_dialect(Dialect::DoubleBrace).unwrap(),
        "https://t.example/pb?cid={{sub1}}&r={{clickRef}}"
    );
}

#[test]
fn unknown_macros_expanded_to_nothing_convert_as_macros() {
    let opts = Options::default().unknown(UnknownMacroPolicy::Empty);
    let t = compile("https://t.example/pb?cid={sub1}&x={foo}", opts).unwrap();
    let hash = t.to_dialect(Dialect::Hash).unwrap();
    assert_eq!(hash, "https://t.example/pb?cid=#sub1#&x=#foo#");
    let back = compile(&hash, opts.dialect(Dialect::Hash)).unwrap();
    assert_eq!(
        back.expand(&click("abc")).unwrap(),
        "https://t.example/pb?cid=abc&x="
    );
}

#[test]
fn unknown_macros_kept_as_text_convert_as_the_same_text() {
    let opts = Options::default().unknown(UnknownMacroPolicy::KeepLiteral);
    let t = compile("https://t.example/pb?cid={sub1}&x={foo}", opts).unwrap();
    assert_eq!(
        t.to_dialect(Dialect::Paren).unwrap(),
        "https://t.example/pb?cid=(sub1)&x={foo}"
    );
}

#[test]
fn conversion_keeps_the_click_ids_of_a_custom_catalogue() {
    let mut catalog = Catalog::standard();
    let clickref = catalog.register("clickref").unwrap();
    catalog.set_click_id_macros([clickref]);
    // `{sub1}` is no click id in this catalogue.
    let t = Template::compile(
        "https://t.example/pb?s={sub1}",
        Context::Url,
        &catalog,
        Options::default(),
    )
    .unwrap();
    assert!(!t.has_click_id());
    assert_eq!(
        t.to_dialect(Dialect::Hash).unwrap(),
        "https://t.example/pb?s=#sub1#"
    );
}

// ---------------------------------------------------------------------------------------------
// Policies

#[test]
fn unknown_macro_policy_refuse_names_the_macro_and_the_nearest_known_name() {
    assert_eq!(
        Template::parse("https://t.example/pb?cid={sub1}&s={SUB2}").unwrap_err(),
        TemplateError::UnknownMacro {
            name: "SUB2".to_owned(),
            at: 34,
            suggestion: Some("sub2".to_owned()),
        }
    );
    let e = Template::parse("https://t.example/pb?cid={sub1}&s={qqqqqqqq}").unwrap_err();
    assert_eq!(
        e,
        TemplateError::UnknownMacro {
            name: "qqqqqqqq".to_owned(),
            at: 34,
            suggestion: None,
        }
    );
    assert_eq!(
        e.to_string(),
        "unknown macro `qqqqqqqq` at byte 34: register it in the catalogue, or choose a known macro"
    );
    assert_eq!(
        Template::parse("https://t.example/pb?cid={transacton_id}")
            .unwrap_err()
            .to_string(),
        "unknown macro `transacton_id` at byte 25: did you mean `transaction_id`? (macro names are case-sensitive)"
    );
}

#[test]
fn unknown_macro_policy_empty_expands_to_nothing() {
    let t = compile(
        "https://t.example/pb?cid={sub1}&s={foo}",
        Options::default().unknown(UnknownMacroPolicy::Empty),
    )
    .unwrap();
    assert_eq!(
        t.expand(&click("abc")).unwrap(),
        "https://t.example/pb?cid=abc&s="
    );
}

#[test]
fn unknown_macro_policy_keep_literal_sends_the_token_percent_encoded() {
    let t = compile(
        "https://t.example/pb?cid={sub1}&s={foo}",
        Options::default().unknown(UnknownMacroPolicy::KeepLiteral),
    )
    .unwrap();
    assert_eq!(
        t.expand(&click("abc")).unwrap(),
        "https://t.example/pb?cid=abc&s=%7Bfoo%7D"
    );
}

#[test]
fn an_unknown_macro_in_the_host_is_refused_under_every_policy() {
    for unknown in [
        UnknownMacroPolicy::Refuse,
        UnknownMacroPolicy::Empty,
        UnknownMacroPolicy::KeepLiteral,
    ] {
        let opts = Options::default().unknown(unknown);
        let e = compile("https://t.example{foo}.evil.example/pb?cid={sub1}", opts).unwrap_err();
        let expected = match unknown {
            UnknownMacroPolicy::Refuse => TemplateError::UnknownMacro {
                name: "foo".to_owned(),
                at: 17,
                suggestion: None,
            },
            _ => TemplateError::MacroInAuthority {
                name: "foo".to_owned(),
                at: 17,
            },
        };
        assert_eq!(e, expected, "{unknown:?}");
    }
    let opts = Options::default().unknown(UnknownMacroPolicy::Empty);
    assert_eq!(
        compile("{foo}https://t.example/pb?cid={sub1}", opts).unwrap_err(),
        TemplateError::MacroInAuthority {
            name: "foo".to_owned(),
            at: 0,
        }
    );
}

#[test]
fn empty_policy_send_empty_sends_the_parameter_with_no_value() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&s2={sub2}&s3={sub3}").unwrap();
    let v = click("abc").with(Macro::SUB3, "");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc&s2=&s3="
    );
}

#[test]
fn empty_policy_refuse_names_the_missing_or_empty_macro() {
    let t = compile(
        "https://t.example/pb?cid={sub1}&s2={sub2}",
        Options::default().empty(EmptyPolicy::Refuse),
    )
    .unwrap();
    assert_eq!(
        t.expand(&click("abc")),
        Err(ExpandError::Missing("sub2".to_owned()))
    );
    assert_eq!(
        t.expand(&click("abc").with(Macro::SUB2, "")),
        Err(ExpandError::Missing("sub2".to_owned()))
    );
    assert_eq!(
        t.expand(&click("abc").with(Macro::SUB2, "x")).unwrap(),
        "https://t.example/pb?cid=abc&s2=x"
    );
}

#[test]
fn require_click_id_refuses_when_every_click_id_macro_is_empty() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&tx={transaction_id}").unwrap();
    assert!(t.options().require_click_id);
    let e = t
        .expand(&ValueMap::new().with(Macro::SUB1, ""))
        .unwrap_err();
    assert_eq!(e, ExpandError::NoClickId("sub1, transaction_id".to_owned()));
    assert_eq!(
        e.to_string(),
        "no click id: every click-id macro of this postback (sub1, transaction_id) is empty, so the partner could not credit the conversion; pass the partner's click id"
    );
    // One click id is enough.
    let v = ValueMap::new().with(Macro::TRANSACTION_ID, "tx9");
    assert_eq!(t.expand(&v).unwrap(), "https://t.example/pb?cid=&tx=tx9");
}

#[test]
fn require_click_id_off_sends_without_a_click_id() {
    let t = compile(
        "https://t.example/pb?cid={sub1}&p={payout}",
        Options::default().allow_empty_click_id(),
    )
    .unwrap();
    assert!(!t.options().require_click_id);
    let v = ValueMap::new().with(Macro::PAYOUT, Amount::new(3, 0));
    assert_eq!(t.expand(&v).unwrap(), "https://t.example/pb?cid=&p=3");
}

#[test]
fn a_template_without_click_id_macros_expands_even_when_click_ids_are_required() {
    let t = Template::parse("https://t.example/pixel?p={payout}").unwrap();
    assert!(!t.has_click_id());
    let v = ValueMap::new().with(Macro::PAYOUT, Amount::new(3, 0));
    assert_eq!(t.expand(&v).unwrap(), "https://t.example/pixel?p=3");
}

#[test]
fn currency_first_on_moves_the_currency_parameter_to_the_front() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&p={payout}&cur={currency}#f").unwrap();
    let v = click("abc")
        .with(Macro::PAYOUT, Amount::new(1250, 2))
        .with(Macro::CURRENCY, Currency::new("EUR").unwrap());
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cur=EUR&cid=abc&p=12.50#f"
    );
    assert_eq!(t.lints(), [Lint::CurrencyMoved { from: 3 }]);
    // The template as written is kept for display.
    assert_eq!(
        t.to_string(),
        "https://t.example/pb?cid={sub1}&p={payout}&cur={currency}#f"
    );
}

#[test]
fn currency_first_off_keeps_the_written_order() {
    let t = compile(
        "https://t.example/pb?cid={sub1}&p={payout}&cur={currency}",
        Options::default().keep_param_order(),
    )
    .unwrap();
    let v = click("abc")
        .with(Macro::PAYOUT, Amount::new(1250, 2))
        .with(Macro::CURRENCY, Currency::new("EUR").unwrap());
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc&p=12.50&cur=EUR"
    );
    assert_eq!(t.lints(), [Lint::CurrencyNotFirst { position: 3 }]);
}

#[test]
fn a_currency_parameter_already_first_is_left_alone() {
    let t = Template::parse("https://t.example/pb?cur={currency}&cid={sub1}").unwrap();
    assert_eq!(t.lints(), []);
    let v = click("abc").with(Macro::CURRENCY, Currency::new("USD").unwrap());
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cur=USD&cid=abc"
    );
}

// ---------------------------------------------------------------------------------------------
// Lints

#[test]
fn lint_plain_http_flags_an_unencrypted_url_in_any_case() {
    for src in [
        "http://t.example/pb?cid={sub1}",
        "HTTP://T.EXAMPLE/pb?cid={sub1}",
    ] {
        let t = Template::parse(src).unwrap();
        assert_eq!(t.lints(), [Lint::PlainHttp], "{src}");
        assert!(t.is_plain_http());
        assert_eq!(
            t.expand(&click("abc")).unwrap(),
            "http://t.example/pb?cid=abc"
        );
    }
    let t = Template::parse("https://t.example/pb?cid={sub1}").unwrap();
    assert_eq!(t.lints(), []);
    assert!(!t.is_plain_http());
}

#[test]
fn lint_long_url_flags_a_url_over_2048_bytes_with_sample_values() {
    // 18 + 2100 + 5 bytes of text, and 15 of the sample click id.
    let src = format!("https://t.example/{}?cid={{sub1}}", "a".repeat(2100));
    let t = Template::parse(&src).unwrap();
    assert_eq!(
        t.lints(),
        [Lint::LongUrl {
            typical_len: 2138,
            limit: 2048
        }]
    );
    // Exactly 2048 bytes is not over the limit.
    let src = format!("https://t.example/{}?cid={{sub1}}", "a".repeat(2010));
    let t = Template::parse(&src).unwrap();
    assert_eq!(t.preview().unwrap().len(), 2048);
    assert_eq!(t.lints(), []);
}

#[test]
fn lint_foreign_dialect_flags_a_token_of_each_other_dialect() {
    let cases = [
        (
            Dialect::Brace,
            "https://t.example/pb?cid={sub1}&s={{sub2}}",
            "{{sub2}}",
            Dialect::DoubleBrace,
        ),
        (
            Dialect::Brace,
            "https://t.example/pb?cid={sub1}&s=[[sub2]]",
            "[[sub2]]",
            Dialect::DoubleBracket,
        ),
        (
            Dialect::Brace,
            "https://t.example/pb?cid={sub1}&s=(sub2)",
            "(sub2)",
            Dialect::Paren,
        ),
        (
            Dialect::Brace,
            "https://t.example/pb?cid={sub1}&s=#sub2#",
            "#sub2#",
            Dialect::Hash,
        ),
        (
            Dialect::Hash,
            "https://t.example/pb?cid=#sub1#&s=${SUB2}",
            "${SUB2}",
            Dialect::Dollar,
        ),
        (
            Dialect::DoubleBrace,
            "https://t.example/pb?cid={{sub1}}&s={sub2}",
            "{sub2}",
            Dialect::Brace,
        ),
    ];
    for (own, src, token, dialect) in cases {
        let t = in_dialect(src, own);
        assert_eq!(
            t.lints(),
            [Lint::ForeignDialect {
                token: token.to_owned(),
                dialect,
                name: "sub2".to_owned(),
                at: src.find(token).unwrap(),
            }],
            "{src} in {own}"
        );
    }
}

#[test]
fn lint_foreign_dialect_ignores_tokens_with_unknown_names() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&s=(promo)&u=[[x]]").unwrap();
    assert_eq!(t.lints(), []);
}

#[test]
fn a_dollar_token_in_the_brace_dialect_is_read_as_a_brace_macro() {
    // `{SUB1}` inside `${SUB1}` is a brace token: refused with the right spelling suggested.
    assert_eq!(
        Template::parse("https://t.example/pb?cid=${SUB1}").unwrap_err(),
        TemplateError::UnknownMacro {
            name: "SUB1".to_owned(),
            at: 26,
            suggestion: Some("sub1".to_owned()),
        }
    );
}

#[test]
fn lint_currency_moved_gives_the_written_position() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&cur={currency}").unwrap();
    assert_eq!(t.lints(), [Lint::CurrencyMoved { from: 2 }]);
    assert_eq!(
        t.lints()[0].to_string(),
        "the currency parameter (written at position 2) is sent first, so that symbols cannot break the postback"
    );
}

#[test]
fn lint_currency_not_first_gives_the_position() {
    let t = compile(
        "https://t.example/pb?cid={sub1}&a=1&cur={currency}",
        Options::default().keep_param_order(),
    )
    .unwrap();
    assert_eq!(t.lints(), [Lint::CurrencyNotFirst { position: 3 }]);
}

#[test]
fn lint_duplicate_param_names_a_repeated_key_once() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&a=1&a=2&b&a=3&b").unwrap();
    assert_eq!(
        t.lints(),
        [
            Lint::DuplicateParam {
                key: "a".to_owned()
            },
            Lint::DuplicateParam {
                key: "b".to_owned()
            }
        ]
    );
}

#[test]
fn lint_unknown_macro_kept_under_each_lenient_policy() {
    for unknown in [UnknownMacroPolicy::Empty, UnknownMacroPolicy::KeepLiteral] {
        let t = compile(
            "https://t.example/pb?cid={sub1}&x={foo}",
            Options::default().unknown(unknown),
        )
        .unwrap();
        assert_eq!(
            t.lints(),
            [Lint::UnknownMacroKept {
                name: "foo".to_owned(),
                at: 34,
            }]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding by position

#[test]
fn a_query_value_encodes_every_separator() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&n=1").unwrap();
    assert_eq!(
        t.expand(&click("a b&c=d+e#f?g/h%é'\"<>\\")).unwrap(),
        "https://t.example/pb?cid=a%20b%26c%3Dd%2Be%23f%3Fg%2Fh%25%C3%A9'%22%3C%3E%5C&n=1"
    );
    assert_eq!(
        t.expand(&click("abc&payout=999")).unwrap(),
        "https://t.example/pb?cid=abc%26payout%3D999&n=1"
    );
}

#[test]
fn a_query_key_encodes_every_separator() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&k_{sub2}=1&{sub3}").unwrap();
    let v = click("abc")
        .with(Macro::SUB2, "x=y&z")
        .with(Macro::SUB3, "a b");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc&k_x%3Dy%26z=1&a%20b"
    );
}

#[test]
fn a_path_segment_value_stays_one_segment() {
    let t = Template::parse("https://t.example/pb/{sub2}/x?cid={sub1}").unwrap();
    let v = click("abc").with(Macro::SUB2, "a/b?c#d e\\f%g");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb/a%2Fb%3Fc%23d%20e%5Cf%25g/x?cid=abc"
    );
    // Backslashes are read as `/` by URL parsers: `..\` would climb a directory.
    let v = click("abc").with(Macro::SUB2, "..\\admin");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb/..%5Cadmin/x?cid=abc"
    );
}

#[test]
fn a_path_macro_that_is_part_of_a_segment_may_hold_dots() {
    let t = Template::parse("https://t.example/pb/id-{sub2}.json?cid={sub1}").unwrap();
    for (value, path) in [
        (".", "/pb/id-..json"),
        ("..", "/pb/id-...json"),
        ("../x", "/pb/id-..%2Fx.json"),
    ] {
        let v = click("abc").with(Macro::SUB2, value);
        assert_eq!(
            t.expand(&v).unwrap(),
            format!("https://t.example{path}?cid=abc")
        );
    }
}

#[test]
fn a_whole_path_segment_of_dot_or_dot_dot_is_refused() {
    let refused = ExpandError::DotSegment("sub2".to_owned());
    for src in [
        "https://t.example/pb/{sub2}/x?cid={sub1}",
        "https://t.example/pb/{sub2}?cid={sub1}",
        "https://t.example/pb/{sub2}#f",
    ] {
        let t = compile(src, Options::default().allow_empty_click_id()).unwrap();
        for value in [
            OwnedValue::from("."),
            OwnedValue::from(".."),
            encoded("%2e"),
            encoded("%2E%2e"),
            encoded(".%2E"),
        ] {
            let v = click("abc").with(Macro::SUB2, value.clone());
            assert_eq!(t.expand(&v), Err(refused.clone()), "{src} with {value:?}");
        }
    }
    // As text, `%2e` is encoded and means itself.
    let t = Template::parse("https://t.example/pb/{sub2}/x?cid={sub1}").unwrap();
    assert_eq!(
        t.expand(&click("abc").with(Macro::SUB2, "%2e")).unwrap(),
        "https://t.example/pb/%252e/x?cid=abc"
    );
    assert_eq!(
        t.expand(&click("abc").with(Macro::SUB2, "...")).unwrap(),
        "https://t.example/pb/.../x?cid=abc"
    );
}

#[test]
fn macros_that_together_make_a_dot_segment_are_refused() {
    let t = Template::parse("https://t.example/pb/{sub2}{sub3}/x?cid={sub1}").unwrap();
    let refused = Err(ExpandError::DotSegment("sub3".to_owned()));
    for (a, b) in [(".", "."), (".", ""), ("", "."), ("", "..")] {
        let v = click("abc").with(Macro::SUB2, a).with(Macro::SUB3, b);
        assert_eq!(t.expand(&v), refused, "{a:?} then {b:?}");
    }
    let v = click("abc").with(Macro::SUB2, "a").with(Macro::SUB3, ".");
    assert_eq!(t.expand(&v).unwrap(), "https://t.example/pb/a./x?cid=abc");
    // A literal dot and a value make `..` too.
    let t = Template::parse("https://t.example/pb/.{sub2}/x?cid={sub1}").unwrap();
    assert_eq!(
        t.expand(&click("abc").with(Macro::SUB2, ".")),
        Err(ExpandError::DotSegment("sub2".to_owned()))
    );
    assert_eq!(
        t.expand(&click("abc").with(Macro::SUB2, "x")).unwrap(),
        "https://t.example/pb/.x/x?cid=abc"
    );
}

#[test]
fn a_fragment_value_is_component_encoded() {
    let t = Template::parse("https://t.example/pb?cid={sub1}#f={sub2}").unwrap();
    let v = click("abc").with(Macro::SUB2, "a b#c&d");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc#f=a%20b%23c%26d"
    );
}

#[test]
fn html_code_encodes_values_down_to_unreserved_characters() {
    let t = Template::parse_html(
        r#"<img src="https://t.example/pb?cid={sub1}" alt='{sub2}'><script>var s="{sub3}";</script>"#,
    )
    .unwrap();
    assert_eq!(t.context(), Context::Html);
    let v = click("a&b")
        .with(Macro::SUB2, "x' onerror='alert(1)")
        .with(Macro::SUB3, "\"</script><script>alert(1)//");
    assert_eq!(
        t.expand(&v).unwrap(),
        r#"<img src="https://t.example/pb?cid=a%26b" alt='x%27%20onerror%3D%27alert%281%29'><script>var s="%22%3C%2Fscript%3E%3Cscript%3Ealert%281%29%2F%2F";</script>"#
    );
}

#[test]
fn an_image_pixel_is_exact_html_that_no_value_can_close() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&n='x'").unwrap();
    let v = click("\"><script>alert(1)</script>");
    assert_eq!(
        t.render_pixel(Pixel::Image, &v).unwrap(),
        r#"<img src="https://t.example/pb?cid=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E&amp;n=&#39;x&#39;" width="1" height="1" alt="" style="display:none">"#
    );
}

#[test]
fn an_iframe_pixel_is_exact_html_that_no_value_can_close() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&s2={sub2}").unwrap();
    let v = click("a\"b").with(Macro::SUB2, "</iframe>");
    assert_eq!(
        t.render_pixel(Pixel::Iframe, &v).unwrap(),
        r#"<iframe src="https://t.example/pb?cid=a%22b&amp;s2=%3C%2Fiframe%3E" width="1" height="1" frameborder="0" scrolling="no" style="display:none"></iframe>"#
    );
}

#[test]
fn a_pixel_reports_the_expansion_error() {
    let t = Template::parse("https://t.example/pb?cid={sub1}").unwrap();
    assert_eq!(
        t.render_pixel(Pixel::Image, &ValueMap::new()),
        Err(ExpandError::NoClickId("sub1".to_owned()))
    );
}

// ---------------------------------------------------------------------------------------------
// Encoded values

#[test]
fn encoded_values_are_never_encoded_twice() {
    let t = Template::parse("https://t.example/pb/{sub2}?cid={sub1}#{sub3}").unwrap();
    let v = ValueMap::new()
        .with(Macro::SUB1, encoded("a%20b%2Fc"))
        .with(Macro::SUB2, encoded("x%2Fy"))
        .with(Macro::SUB3, encoded("%E2%82%AC"));
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb/x%2Fy?cid=a%20b%2Fc#%E2%82%AC"
    );
    // The same text, given as plain text, is encoded.
    assert_eq!(
        t.expand(&click("a%20b")).unwrap(),
        "https://t.example/pb/?cid=a%2520b#"
    );
    let html = Template::parse_html("<p>{sub1}</p>").unwrap();
    assert_eq!(
        html.expand(&ValueMap::new().with(Macro::SUB1, encoded("a%3Cb")))
            .unwrap(),
        "<p>a%3Cb</p>"
    );
}

#[test]
fn encoded_values_are_checked() {
    assert_eq!(
        Encoded::new("a&b").unwrap_err(),
        NotEncoded {
            text: "a&b".to_owned(),
            at: 1,
            found: '&',
        }
    );
    assert!(Encoded::new("50%").is_err());
    assert!(Encoded::new("a b").is_err());
    assert!(OwnedValue::encoded("é").is_err());
    assert_eq!(Encoded::new("a%2Bb-._~").unwrap().as_str(), "a%2Bb-._~");
}

// ---------------------------------------------------------------------------------------------
// Money and currency

fn money_template() -> Template {
    Template::parse("https://t.example/pb?cid={sub1}&p={payout}&pa={payout_amount}").unwrap()
}

#[test]
fn money_macros_take_amounts_integers_and_plain_decimal_text() {
    let t = money_template();
    let cases = [
        (OwnedValue::from(Amount::new(1250, 2)), "12.50"),
        (OwnedValue::from(Amount::new(-5, 2)), "-0.05"),
        (OwnedValue::from(7), "7"),
        (OwnedValue::from("12.50"), "12.50"),
        (OwnedValue::from("0.12345"), "0.12345"),
        (encoded("3.5"), "3.5"),
    ];
    for (value, text) in cases {
        let v = click("abc").with(Macro::PAYOUT, value);
        // `{payout_amount}` is filled from the same value.
        assert_eq!(
            t.expand(&v).unwrap(),
            format!("https://t.example/pb?cid=abc&p={text}&pa={text}")
        );
    }
}

#[test]
fn money_text_with_a_comma_is_refused_as_not_an_amount() {
    let t = money_template();
    for bad in ["12,50", "1,234.00", "€5", "1e5", "12.50 "] {
        let e = t
            .expand(&click("abc").with(Macro::PAYOUT, bad))
            .unwrap_err();
        assert_eq!(
            e,
            ExpandError::NotAnAmount {
                name: "payout".to_owned(),
                value: bad.to_owned(),
            }
        );
    }
    assert_eq!(
        t.expand(&click("abc").with(Macro::PAYOUT, "12,50"))
            .unwrap_err()
            .to_string(),
        "macro `payout` needs an amount such as 12.50 but got `12,50`: pass an Amount, or text with `.` as the decimal mark and no grouping"
    );
}

#[test]
fn money_macros_refuse_other_kinds_of_value() {
    let t = money_template();
    let v = click("abc").with(Macro::PAYOUT, Currency::new("USD").unwrap());
    assert_eq!(
        t.expand(&v),
        Err(ExpandError::WrongKind {
            name: "payout".to_owned(),
            expected: "an amount such as 12.50",
        })
    );
}

#[test]
fn currency_symbols_are_refused_and_codes_accepted() {
    let t = Template::parse("https://t.example/pb?cur={currency}&cid={sub1}").unwrap();
    for symbol in ["€", "$", "usd", "EURO"] {
        assert_eq!(Currency::new(symbol), Err(CurrencyError(symbol.to_owned())));
        assert_eq!(
            t.expand(&click("abc").with(Macro::CURRENCY, symbol)),
            Err(ExpandError::Currency(CurrencyError(symbol.to_owned()))),
        );
    }
    assert_eq!(
        t.expand(&click("abc").with(Macro::CURRENCY, "€"))
            .unwrap_err()
            .to_string(),
        "currency `€` is not an ISO 4217 code: send three capital letters such as USD or EUR, never a symbol"
    );
    for code in [
        OwnedValue::from("EUR"),
        OwnedValue::from(Currency::new("EUR").unwrap()),
        encoded("EUR"),
    ] {
        assert_eq!(
            t.expand(&click("abc").with(Macro::CURRENCY, code)).unwrap(),
            "https://t.example/pb?cur=EUR&cid=abc"
        );
    }
    assert_eq!(
        t.expand(&click("abc").with(Macro::CURRENCY, 978)),
        Err(ExpandError::WrongKind {
            name: "currency".to_owned(),
            expected: "an ISO 4217 currency code such as USD",
        })
    );
}

#[test]
fn integers_and_times_are_written_locale_free() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&o={offer_id}&ts={timestamp}").unwrap();
    let v = click("abc").with(Macro::OFFER_ID, -1_234_567).with(
        Macro::TIMESTAMP,
        DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
    );
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/pb?cid=abc&o=-1234567&ts=1767225600"
    );
}

// ---------------------------------------------------------------------------------------------
// Literal and origin normalization

#[test]
fn literal_text_is_made_sendable() {
    let t = Template::parse(
        "https://t.example/my path/a|b/é/100%/x^y?q=a b&r=50%&s=%41&t=a\"b<c>&cid={sub1}",
    )
    .unwrap();
    let url = t.expand(&click("abc")).unwrap();
    assert_eq!(
        url,
        "https://t.example/my%20path/a%7Cb/%C3%A9/100%25/x%5Ey?q=a%20b&r=50%25&s=%41&t=a%22b%3Cc%3E&cid=abc"
    );
    // Both URL parsers take it as it is.
    assert_eq!(url::Url::parse(&url).unwrap().as_str(), url);
    assert_eq!(http::Uri::try_from(url.as_str()).unwrap().to_string(), url);
}

#[test]
fn control_characters_in_literal_text_are_encoded() {
    let t = Template::parse("https://t.example/a\tb?x=1\u{7f}&cid={sub1}").unwrap();
    assert_eq!(
        t.expand(&click("abc")).unwrap(),
        "https://t.example/a%09b?x=1%7F&cid=abc"
    );
}

#[test]
fn an_idn_host_becomes_punycode_and_the_origin_is_lower_cased() {
    let t = Template::parse("HTTPS://Bücher.Example/pb?cid={sub1}").unwrap();
    assert_eq!(
        t.expand(&click("abc")).unwrap(),
        "https://xn--bcher-kva.example/pb?cid=abc"
    );
}

#[test]
fn a_default_port_is_dropped_and_another_kept() {
    for (src, url) in [
        (
            "https://t.example:443/pb?cid={sub1}",
            "https://t.example/pb?cid=abc",
        ),
        (
            "http://t.example:80/pb?cid={sub1}",
            "http://t.example/pb?cid=abc",
        ),
        (
            "https://t.example:8443/pb?cid={sub1}",
            "https://t.example:8443/pb?cid=abc",
        ),
        (
            "https://t.example:80/pb?cid={sub1}",
            "https://t.example:80/pb?cid=abc",
        ),
        ("https://[::1]:443?cid={sub1}", "https://[::1]/?cid=abc"),
    ] {
        let t = Template::parse(src).unwrap();
        assert_eq!(t.expand(&click("abc")).unwrap(), url, "{src}");
    }
}

#[test]
fn user_info_in_the_url_is_refused() {
    for src in [
        "https://user:pass@t.example/pb?cid={sub1}",
        "https://user@t.example/pb?cid={sub1}",
        "https://:pass@t.example/pb?cid={sub1}",
    ] {
        assert_eq!(
            Template::parse(src).unwrap_err(),
            TemplateError::UserInfo,
            "{src}"
        );
    }
}

#[test]
fn a_backslash_in_the_host_is_refused_rather_than_dropped() {
    assert_eq!(
        Template::parse("https://t.example\\evil/pb?cid={sub1}").unwrap_err(),
        TemplateError::InvalidUrl("a backslash in the host: start the path with `/`".to_owned())
    );
}

#[test]
fn a_macro_in_the_scheme_host_or_port_is_refused() {
    for (src, at) in [
        ("{sub1}://t.example/pb", 0),
        ("https://{sub1}.t.example/pb", 8),
        ("https://t.example{sub1}/pb", 17),
        ("https://t.example:{sub1}/pb", 18),
        ("https://{sub1}@t.example/pb", 8),
    ] {
        assert_eq!(
            Template::parse(src).unwrap_err(),
            TemplateError::MacroInAuthority {
                name: "sub1".to_owned(),
                at,
            },
            "{src}"
        );
    }
}

#[test]
fn only_absolute_http_and_https_urls_are_accepted() {
    for (src, e) in [
        ("t.example/pb?cid={sub1}", TemplateError::NotAbsolute),
        ("/pb?cid={sub1}", TemplateError::NotAbsolute),
        ("https:t.example/pb?cid={sub1}", TemplateError::NotAbsolute),
        (
            "ftp://t.example/pb?cid={sub1}",
            TemplateError::Scheme("ftp".to_owned()),
        ),
        (
            "javascript:alert({sub1})",
            TemplateError::Scheme("javascript".to_owned()),
        ),
        (
            "HTTPS://",
            TemplateError::InvalidUrl("empty host".to_owned()),
        ),
    ] {
        assert_eq!(Template::parse(src).unwrap_err(), e, "{src}");
    }
}

// ---------------------------------------------------------------------------------------------
// Serde

#[test]
fn a_template_survives_a_serde_round_trip() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&cur={currency}").unwrap();
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(
        json,
        r#"{"source":"https://t.example/pb?cid={sub1}&cur={currency}","context":"url","options":{"dialect":"brace","unknown":"refuse","empty":"send_empty","currency_first":true,"require_click_id":true},"click_id_macros":[10]}"#
    );
    let back: Template = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.lints(), t.lints());
}

#[test]
fn a_template_with_custom_macros_survives_a_serde_round_trip() {
    let mut catalog = Catalog::standard();
    let clickref = catalog.register("clickref").unwrap();
    let tier = catalog.register("tier").unwrap();
    catalog.set_click_id_macros([clickref]);
    // Only the second custom macro is used: its id must survive without the first.
    let t = Template::compile(
        "https://t.example/pb?t={tier}&s={sub1}",
        Context::Url,
        &catalog,
        Options::default().dialect(Dialect::Brace),
    )
    .unwrap();
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(
        json,
        r#"{"source":"https://t.example/pb?t={tier}&s={sub1}","context":"url","options":{"dialect":"brace","unknown":"refuse","empty":"send_empty","currency_first":true,"require_click_id":true},"custom_macros":[["tier",1025]],"click_id_macros":[]}"#
    );
    let back: Template = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    assert!(!back.has_click_id());
    assert_eq!(back.macro_name(tier), "tier");
    let v = ValueMap::new().with(tier, "gold").with(Macro::SUB1, "x");
    assert_eq!(back.expand(&v).unwrap(), "https://t.example/pb?t=gold&s=x");

    // A custom click id stays a click id.
    let t = Template::compile(
        "https://t.example/pb?r={clickref}",
        Context::Url,
        &catalog,
        Options::default(),
    )
    .unwrap();
    let back: Template = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
    assert!(back.has_click_id());
    assert_eq!(
        back.expand(&ValueMap::new()),
        Err(ExpandError::NoClickId("clickref".to_owned()))
    );
}

#[test]
fn deserialization_validates_the_template_again() {
    let err = |json: &str| {
        serde_json::from_str::<Template>(json)
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(r#"{"source":"ftp://t.example/pb?cid={sub1}"}"#)
            .starts_with(&TemplateError::Scheme("ftp".to_owned()).to_string())
    );
    assert!(
        err(r#"{"source":"https://t.example/pb?cid={clickref}"}"#).starts_with(
            &TemplateError::UnknownMacro {
                name: "clickref".to_owned(),
                at: 25,
                suggestion: None,
            }
            .to_string()
        )
    );
    assert!(
        err(r#"{"source":"https://t.example/?c={sub1}","custom_macros":[["sub1",1024]]}"#)
            .starts_with("custom macro `sub1` clashes")
    );
    assert!(
        err(r#"{"source":"https://t.example/?c={sub1}","custom_macros":[["x",7]]}"#)
            .starts_with("custom macro `x` clashes")
    );
    // What is left out takes its default.
    let t: Template = serde_json::from_str(
        r#"{"source":"https://t.example/pb?cid=#sub1#","options":{"dialect":"hash"}}"#,
    )
    .unwrap();
    assert_eq!(t.options(), Options::default().dialect(Dialect::Hash));
    assert_eq!(
        t.expand(&click("abc")).unwrap(),
        "https://t.example/pb?cid=abc"
    );
}

// ---------------------------------------------------------------------------------------------
// Expansion contract, preview, display

#[test]
fn expand_into_leaves_the_buffer_untouched_on_error() {
    let refuse = compile(
        "https://t.example/pb?cid={sub1}&s2={sub2}",
        Options::default().empty(EmptyPolicy::Refuse),
    )
    .unwrap();
    let mut buf = String::from("kept|");
    assert_eq!(
        refuse.expand_into(&mut buf, &click("abc")),
        Err(ExpandError::Missing("sub2".to_owned()))
    );
    assert_eq!(buf, "kept|");

    // The click-id check runs after the whole URL was written.
    let t = Template::parse("https://t.example/pb/{country}?cid={sub1}&p={payout}").unwrap();
    let v = ValueMap::new()
        .with(Macro::COUNTRY, "DE")
        .with(Macro::PAYOUT, Amount::new(1, 0));
    assert_eq!(
        t.expand_into(&mut buf, &v),
        Err(ExpandError::NoClickId("sub1".to_owned()))
    );
    assert_eq!(buf, "kept|");
    let v = click("abc").with(Macro::COUNTRY, "..");
    assert_eq!(
        t.expand_into(&mut buf, &v),
        Err(ExpandError::DotSegment("country".to_owned()))
    );
    assert_eq!(buf, "kept|");

    t.expand_into(&mut buf, &click("abc").with(Macro::COUNTRY, "DE"))
        .unwrap();
    assert_eq!(buf, "kept|https://t.example/pb/DE?cid=abc&p=");
}

#[test]
fn preview_expands_with_sample_values() {
    let t = Template::parse(
        "https://t.example/pb/{offer_id}?cid={sub1}&tx={transaction_id}&p={payout}&cur={currency}&ts={timestamp}&ev={event_name}&a={adv2}",
    )
    .unwrap();
    assert_eq!(
        t.preview().unwrap(),
        "https://t.example/pb/42?cur=USD&cid=s1-9f8e7d6c5b4a&tx=4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a99&p=12.50&ts=1767225600&ev=purchase&a=a2"
    );
}

#[test]
fn debug_output_redacts_secret_parameters() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&token=s3cr3t").unwrap();
    assert_eq!(
        format!("{t:?}"),
        r#"Template { source: "https://t.example/pb?cid={sub1}&token=***", context: Url, macros: 1, .. }"#
    );
    assert_eq!(
        t.to_string(),
        "https://t.example/pb?cid={sub1}&token=s3cr3t"
    );
}

/// A caller's own conversion type, answering by macro without a map.
struct Conversion<'a> {
    click: &'a str,
    cents: i64,
}

impl MacroValues for Conversion<'_> {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        match m {
            Macro::SUB1 => Some(Value::Text(self.click)),
            Macro::PAYOUT => Some(Value::Amount(Amount::new(self.cents, 2))),
            _ => None,
        }
    }
}

#[test]
fn a_callers_own_values_type_expands_like_a_map() {
    let t = Template::parse("https://t.example/pb?cid={sub1}&p={payout}").unwrap();
    let c = Conversion {
        click: "a/b",
        cents: 99,
    };
    assert_eq!(
        t.expand(&c).unwrap(),
        "https://t.example/pb?cid=a%2Fb&p=0.99"
    );
}

#[test]
fn a_dollar_brace_token_in_the_brace_dialect_is_flagged_as_foreign() {
    let t = Template::parse("https://t.example/pb?cid=${sub1}").unwrap();
    assert_eq!(
        t.lints(),
        [Lint::ForeignDialect {
            token: "${sub1}".into(),
            dialect: Dialect::Dollar,
            name: "sub1".into(),
            at: 25,
        }]
    );
}
