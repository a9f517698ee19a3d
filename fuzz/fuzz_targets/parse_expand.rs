//! Parse arbitrary bytes as a template with options chosen by the first byte, then use what is
//! accepted every way there is, checking the promises the crate makes:
//!
//! - parsing and expansion never panic;
//! - a URL template's preview, and any successful expansion, parse with `url` and `http`;
//! - a pixel's `src` attribute holds no `"`, `<` or `>`;
//! - a template converted to another dialect means the same;
//! - a template survives a serde round trip.
//!
//! Input layout: `[options byte] template bytes [0x00 value bytes, split by 0x01]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postback::template::{
    Catalog, Context, Dialect, EmptyPolicy, Lint, Macro, Options, Pixel, Template,
    UnknownMacroPolicy, ValueMap,
};

fuzz_target!(|data: &[u8]| run(data));

fn options(b: u8) -> (Context, Options) {
    let dialect = Dialect::ALL[usize::from(b % 6)];
    let context = if b & 0x08 != 0 {
        Context::Html
    } else {
        Context::Url
    };
    let unknown = match (b >> 4) % 3 {
        0 => UnknownMacroPolicy::Refuse,
        1 => UnknownMacroPolicy::Empty,
        _ => UnknownMacroPolicy::KeepLiteral,
    };
    let mut o = Options::default().dialect(dialect).unknown(unknown);
    if b & 0x40 != 0 {
        o = o.empty(EmptyPolicy::Refuse).keep_param_order();
    }
    if b & 0x80 != 0 {
        o = o.allow_empty_click_id();
    }
    (context, o)
}

fn run(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (context, opts) = options(first);
    let (src, vals) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let src = String::from_utf8_lossy(src);

    let mut catalog = Catalog::standard();
    let clickref = catalog.register("clickref").expect("a valid name");
    let t = match Template::compile(&src, context, &catalog, opts) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };

    let mut values = ValueMap::new();
    let macros = (1..=10).filter_map(Macro::sub).chain([
        clickref,
        Macro::TRANSACTION_ID,
        Macro::PAYOUT,
        Macro::CURRENCY,
    ]);
    for (m, v) in macros.zip(vals.split(|&b| b == 1)) {
        values.set(m, String::from_utf8_lossy(v).into_owned());
    }

    // Sample values are ordinary, non-empty text for every macro, so every template previews.
    let preview = t.preview().expect("a preview");
    check_url(&t, &preview);
    if let Ok(expanded) = t.expand(&values) {
        check_url(&t, &expanded);
    }
    for pixel in [Pixel::Image, Pixel::Iframe] {
        if let Ok(html) = t.render_pixel(pixel, &values) {
            let src = html.split_once("src=\"").expect("a src attribute").1;
            let src = &src[..src.find('"').expect("a closing quote")];
            assert!(!src.contains(['<', '>']), "{html}");
        }
    }
    let mut buf = String::from("x");
    if t.expand_into(&mut buf, &values).is_err() {
        assert_eq!(buf, "x");
    }
    let sample = t.expand(&values);
    // A template knows the custom macros it uses, not the rest of the catalogue: a conversion
    // means the same against that.
    let own = if t.macros().any(|m| m == clickref) {
        catalog.clone()
    } else {
        Catalog::standard()
    };
    for d in Dialect::ALL {
        if let Ok(converted) = t.to_dialect(d) {
            let mut o = t.options();
            o.dialect = d;
            let again = Template::compile(&converted, t.context(), &own, o)
                .expect("a converted template parses");
            assert_eq!(again.expand(&values), sample, "{converted}");
        }
    }
    let json = serde_json::to_string(&t).expect("serializes");
    let back: Template = serde_json::from_str(&json).expect("deserializes");
    // Equal but for lints about tokens of other dialects named after custom macros that the
    // template does not use: the stored form keeps only the custom macros it uses.
    assert_eq!(back.as_str(), t.as_str());
    assert_eq!((back.context(), back.options()), (t.context(), t.options()));
    assert!(back.macros().eq(t.macros()));
    assert_eq!(back.expand(&values), sample);
    assert!(back.lints().iter().all(|l| t.lints().contains(l)));
    if !t
        .lints()
        .iter()
        .any(|l| matches!(l, Lint::ForeignDialect { .. }))
    {
        assert_eq!(back, t);
    }
    let _ = (format!("{t:?}"), t.to_string());
    for lint in t.lints() {
        let _ = lint.to_string();
    }
}

fn check_url(t: &Template, s: &str) {
    if t.context() == Context::Url {
        url::Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        http::Uri::try_from(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}
