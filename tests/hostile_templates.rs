//! Hostile templates and stored records: the worst 32 KiB templates for each lint compile with
//! exactly the lints they earn, stored lists longer than a template can use are refused while
//! reading, a postback carries a bounded number of secrets, path values keep to RFC 3986
//! `pchar`, and local-use NAT64 addresses are judged by the IPv4 address inside. (Compile times
//! of these templates are measured outside the test suite: see the CHANGELOG.)

use postback::model::{ConfigError, MAX_SECRETS, OfferId, PartnerId, Postback, PostbackId};
use postback::net::{NetError, NetPolicy};
use postback::template::{
    Catalog, Context, Dialect, Lint, MAX_MACROS, MAX_TEMPLATE_LEN, Macro, Options, Template,
    ValueMap,
};

/// `prefix` followed by as many pieces as fit in [`MAX_TEMPLATE_LEN`]; the number of pieces.
fn fill(prefix: &str, piece: impl Fn(usize) -> String) -> (String, usize) {
    let mut s = prefix.to_owned();
    let mut n = 0;
    loop {
        let p = piece(n);
        if s.len() + p.len() > MAX_TEMPLATE_LEN {
            return (s, n);
        }
        s.push_str(&p);
        n += 1;
    }
}

fn key(i: usize) -> String {
    format!("k{i:x}")
}

#[test]
fn a_full_template_of_repeated_parameters_flags_each_name_once_in_written_order() {
    let (src, n) = fill("https://t.example/pb?cid={sub1}", |i| {
        format!("&{0}=&{0}=", key(i))
    });
    assert!(n > 2000, "{n}");
    let t = Template::parse(&src).unwrap();
    let expected: Vec<Lint> = (0..n)
        .map(|i| Lint::DuplicateParam { key: key(i) })
        .collect();
    let duplicates: Vec<Lint> = t
        .lints()
        .iter()
        .filter(|l| matches!(l, Lint::DuplicateParam { .. }))
        .cloned()
        .collect();
    assert_eq!(duplicates, expected);
}

#[test]
fn a_full_template_of_distinct_parameters_has_no_duplicate_lint() {
    let (src, n) = fill("https://t.example/pb?cid={sub1}", |i| {
        format!("&{}=", key(i))
    });
    assert!(n > 4000, "{n}");
    let t = Template::parse(&src).unwrap();
    assert!(
        !t.lints()
            .iter()
            .any(|l| matches!(l, Lint::DuplicateParam { .. })),
        "{:?}",
        &t.lints()[..3]
    );
}

#[test]
fn a_literal_full_of_foreign_tokens_reports_each_outer_token_once_in_order() {
    let prefix = "https://t.example/pb?cid=#sub1#&x=";
    let (src, n) = fill(prefix, |i| {
        if i % 2 == 0 { "(sub2)" } else { "${SUB3}" }.to_owned()
    });
    assert!(n > 4000, "{n}");
    let t = Template::compile(
        &src,
        Context::Url,
        &Catalog::standard(),
        Options::default().dialect(Dialect::Hash),
    )
    .unwrap();
    let mut at = prefix.len();
    let mut expected = Vec::new();
    for i in 0..n {
        let (token, dialect, name) = if i % 2 == 0 {
            ("(sub2)", Dialect::Paren, "sub2")
        } else {
            ("${SUB3}", Dialect::Dollar, "sub3")
        };
        expected.push(Lint::ForeignDialect {
            token: token.to_owned(),
            dialect,
            name: name.to_owned(),
            at,
        });
        at += token.len();
    }
    let foreign: Vec<&Lint> = t
        .lints()
        .iter()
        .filter(|l| matches!(l, Lint::ForeignDialect { .. }))
        .collect();
    assert_eq!(foreign, expected.iter().collect::<Vec<_>>());
}

#[test]
fn a_full_template_of_distinct_custom_macros_lists_each_once_and_round_trips() {
    let mut catalog = Catalog::standard();
    let ids: Vec<Macro> = (0..6000)
        .map(|i| catalog.register(&format!("c{i:x}")).unwrap())
        .collect();
    // Every custom macro twice, the later ones first.
    let (src, n) = fill("https://t.example/pb?cid={sub1}&x=", |i| {
        format!("{{c{:x}}}{{c{:x}}}", 5999 - i, 5999 - i)
    });
    assert!(n > 2000, "{n}");
    let t = Template::compile(&src, Context::Url, &catalog, Options::default()).unwrap();
    let used: Vec<Macro> = t.custom_macros().collect();
    assert_eq!(used, ids.iter().rev().take(n).copied().collect::<Vec<_>>());
    let json = serde_json::to_string(&t).unwrap();
    let back: Template = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn a_stored_template_listing_more_click_id_macros_than_a_template_can_hold_is_refused() {
    let stored = |n: usize| {
        let ids = vec!["10"; n].join(",");
        format!(r#"{{"source":"https://t.example/pb?cid={{sub1}}","click_id_macros":[{ids}]}}"#)
    };
    let t: Template = serde_json::from_str(&stored(MAX_MACROS)).unwrap();
    assert!(t.has_click_id());
    let err = serde_json::from_str::<Template>(&stored(1_000_000))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("more than {MAX_MACROS} click-id macros")),
        "{err}"
    );
}

#[test]
fn a_stored_template_listing_more_custom_macros_than_a_template_can_hold_is_refused() {
    let stored = |n: usize| {
        let custom: Vec<String> = (0..n)
            .map(|i| format!(r#"["c{i}",{}]"#, 1024 + i))
            .collect();
        format!(
            r#"{{"source":"https://t.example/pb?cid={{sub1}}","custom_macros":[{}]}}"#,
            custom.join(",")
        )
    };
    assert!(serde_json::from_str::<Template>(&stored(MAX_MACROS)).is_ok());
    let err = serde_json::from_str::<Template>(&stored(MAX_MACROS + 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("more than {MAX_MACROS} custom macros")),
        "{err}"
    );
}

#[test]
fn a_stored_template_binding_one_id_to_two_names_is_refused() {
    let json = r#"{"source":"https://t.example/pb?cid={sub1}&a={x}","custom_macros":[["x",1024],["y",1024]]}"#;
    let err = serde_json::from_str::<Template>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("custom macro `y` clashes"), "{err}");
}

fn postback() -> postback::model::PostbackBuilder {
    Postback::builder(PostbackId::new(1))
        .partner(PartnerId::new(7))
        .offer(OfferId::new(9))
        .url("https://t.example/pb/k3y?cid={sub1}")
}

#[test]
fn a_postback_with_more_secrets_than_the_limit_is_refused_at_build() {
    let mut b = postback();
    for i in 0..MAX_SECRETS {
        b = b.secret(format!("s{i}"));
    }
    // Repeats and empty text do not count.
    b = b.secret("s0").secret("");
    let pb = b.clone().build().unwrap();
    assert_eq!(pb.secrets().len(), MAX_SECRETS);
    assert_eq!(
        b.secret("one-too-many").build(),
        Err(ConfigError::TooManySecrets {
            count: MAX_SECRETS + 1,
            max: MAX_SECRETS
        })
    );
}

#[test]
fn a_stored_postback_with_a_million_secrets_is_refused_while_reading() {
    let pb = postback().secret("k3y").build().unwrap();
    let json = serde_json::to_string(&pb).unwrap();
    assert!(json.contains(r#""secrets":["k3y"]"#), "{json}");
    let back: Postback = serde_json::from_str(&json).unwrap();
    assert_eq!(back, pb);
    let many = vec![r#""k3y""#; 1_000_000].join(",");
    let hostile = json.replace(r#""secrets":["k3y"]"#, &format!(r#""secrets":[{many}]"#));
    let err = serde_json::from_str::<Postback>(&hostile)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("more than {MAX_SECRETS} secrets")),
        "{err}"
    );
}

#[test]
fn a_stored_postback_with_repeated_secrets_keeps_each_once() {
    let pb = postback().secret("k3y").build().unwrap();
    let json = serde_json::to_string(&pb)
        .unwrap()
        .replace(r#""secrets":["k3y"]"#, r#""secrets":["k3y","","k3y"]"#);
    let back: Postback = serde_json::from_str(&json).unwrap();
    assert_eq!(back.secrets(), ["k3y"]);
}

#[test]
fn path_values_encode_brackets_pipes_and_everything_else_a_segment_forbids() {
    let t = Template::parse("https://t.example/p/{sub2}/end?cid={sub1}").unwrap();
    let v = ValueMap::new()
        .with(Macro::SUB1, "c")
        .with(Macro::SUB2, "[a]|b\"<>^`{}%/\\?# :@!$&'()*+,;=");
    assert_eq!(
        t.expand(&v).unwrap(),
        "https://t.example/p/%5Ba%5D%7Cb%22%3C%3E%5E%60%7B%7D%25%2F%5C%3F%23%20:@!$&'()*+,;=/end?cid=c"
    );
}

#[test]
fn a_url_aimed_through_local_use_nat64_at_a_forbidden_address_is_refused_in_any_spelling() {
    let p = NetPolicy::default();
    for url in [
        "http://[64:ff9b:1::7f00:1]/pb",
        "http://[64:ff9b:1::127.0.0.1]/pb",
        "https://[64:FF9B:0001:0000:0000:0000:A9FE:A9FE]:8443/pb",
        "http://[64:ff9b:1:0:0:0:a00:1]/",
        "http://[64:ff9b:1:dead:beef:1:10.20.30.40]/",
        "http://[64:ff9b:1::a9fe:a9fe]/latest/meta-data",
    ] {
        assert!(
            matches!(p.check_url(url), Err(NetError::Forbidden { .. })),
            "{url}: {:?}",
            p.check_url(url)
        );
    }
    assert_eq!(p.check_url("https://[64:ff9b:1::808:808]/pb"), Ok(()));
    assert_eq!(p.check_url("https://[64:ff9b:1::1.1.1.1]/pb"), Ok(()));
    // Loopback follows the policy's own switch, as it does without NAT64.
    let dev = NetPolicy::default().allow_loopback();
    assert_eq!(dev.check_url("http://[64:ff9b:1::127.0.0.1]/pb"), Ok(()));
}
