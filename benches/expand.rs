//! The headline benchmark (issue #3): expanding a postback template, against what trackers
//! usually do instead.
//!
//! Three templates (short: 61 bytes, 2 macros; typical: 238 bytes, 12 macros; long: 992 bytes,
//! 38 macros of which 32 distinct), and per template one criterion group comparing:
//!
//! 1. `ours_struct`: [`Template::expand_into`] into a reused `String`, values from a caller
//!    struct whose [`MacroValues`] impl is a `match` (the realistic use);
//!    `ours_value_map`: the same with a [`ValueMap`] built once, outside the loop: a map
//!    classifies, encodes and formats each value when it is set, so this measures what an
//!    expansion costs once the values are in a map (as the floor measures copying pieces
//!    encoded in advance); `ours_value_map_set`: the map built from the struct's values and
//!    then expanded, in every iteration (a map per conversion, its allocations included);
//!    `ours_stored`: the values a delivery keeps ([`StoredValues`], captured once) with its key
//!    for `{delivery_id}`, which is what the engine and the stores expand on every send;
//! 2. `naive_replace`: a `str::replace` chain, one call per macro of the value set;
//! 3. `regex`: `Regex::replace_all` with a closure looking the name up;
//! 4. `aho_corasick`: `AhoCorasick::replace_all_with` into a reused `String`;
//! 5. `floor`: `push_str` of pre-encoded literal and value pieces into a reused `String`, the
//!    least any approach can do;
//! 6. `hand_written` (typical only): straight-line code written for this one template, as a
//!    careful engineer would without a template engine: literals as constants, each value
//!    encoded with `percent-encoding` and amounts formatted with [`Amount::write_to`]. No
//!    parsing, no lookup, no dispatch: what is left of ours once the template is known at
//!    compile time.
//!
//! Fairness. Every approach produces the identical, correctly encoded URL (asserted once before
//! measuring). Every approach except the floor starts from the same raw values, built once
//! outside the timed loop, and encodes them in every iteration: ours with its own encoder, the
//! peers with `percent_encoding::utf8_percent_encode` over the same WHATWG component set
//! ([`COMPONENT`] below, identical to the crate's). Pre-encoding only for the peers would
//! measure them doing less work than ours; the floor gets pre-encoded pieces by definition.
//! The peers are given every advantage that keeps them honest: they see only the macros the
//! template uses (not a tracker's full macro list), amounts and integers reach them already
//! formatted as text (ours formats `Amount` and `i64` itself), their patterns are compiled
//! outside the loop, and values that need no encoding are borrowed, not copied (`Cow`). The
//! templates are written in the crate's normal form (currency parameter first, lower-case
//! host, nothing to normalize), so plain substitution yields exactly what the crate sends.
//!
//! Run: `cargo bench --bench expand`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hint::black_box;

use aho_corasick::{AhoCorasick, MatchKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use postback::template::{
    Amount, Currency, Macro, MacroValues, StoredValues, Template, Value, ValueMap, WithDeliveryId,
};
use regex::{Captures, Regex};

include!("support/expand_fixture.rs");

/// The value set of one template (the macros it uses), in every shape the approaches want.
struct Fixture {
    name: &'static str,
    src: &'static str,
    template: Template,
    /// The distinct macros of the template.
    used: Vec<Macro>,
    map: ValueMap,
    /// `{name}` tokens, for the replace chain and Aho-Corasick (pattern i is value i).
    tokens: Vec<String>,
    /// Raw values, in token order.
    raws: Vec<String>,
    /// Name to index into `raws`, for the regex closure.
    by_name: HashMap<String, usize>,
    /// Pre-encoded literal and value pieces, for the floor.
    pieces: Vec<String>,
    regex: Regex,
    aho: AhoCorasick,
}

fn fixture(name: &'static str, src: &'static str, conv: &Conversion) -> Fixture {
    let template = Template::parse(src).expect("benchmark template parses");
    assert_eq!(template.as_str(), src);
    let mut used: Vec<Macro> = Vec::new();
    for m in template.macros() {
        if !used.contains(&m) {
            used.push(m);
        }
    }
    let mut map = ValueMap::prepared();
    let mut tokens = Vec::new();
    let mut raws = Vec::new();
    let mut by_name = HashMap::new();
    for &m in &used {
        let v = conv.value(m).expect("the conversion has every macro");
        let n = m.builtin_name().expect("built-in macro");
        map.set(m, v_owned(v));
        by_name.insert(n.to_owned(), raws.len());
        tokens.push(format!("{{{n}}}"));
        raws.push(raw_text(v));
    }
    // Floor pieces: the source split at its tokens, values encoded once, here.
    let mut pieces = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("closed token");
        pieces.push(rest[..open].to_owned());
        let raw = &raws[by_name[&rest[open + 1..close]]];
        pieces.push(utf8_percent_encode(raw, COMPONENT).to_string());
        rest = &rest[close + 1..];
    }
    pieces.push(rest.to_owned());
    pieces.retain(|p| !p.is_empty());

    let regex = Regex::new(r"\{([A-Za-z_][A-Za-z0-9_.-]*)\}").expect("valid regex");
    let aho = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(&tokens)
        .expect("valid patterns");
    Fixture {
        name,
        src,
        template,
        used,
        map,
        tokens,
        raws,
        by_name,
        pieces,
        regex,
        aho,
    }
}

fn v_owned(v: Value<'_>) -> postback::template::OwnedValue {
    match v {
        Value::Text(s) => s.into(),
        Value::Int(n) => n.into(),
        Value::Amount(a) => a.into(),
        Value::Currency(c) => c.into(),
        other => panic!("not used in this benchmark: {other:?}"),
    }
}

/// A map of the values of the macros `f`'s template uses, set from `conv`.
fn value_map(f: &Fixture, conv: &Conversion) -> ValueMap {
    let mut map = ValueMap::prepared();
    for &m in &f.used {
        if let Some(v) = conv.value(m) {
            map.set(m, v_owned(v));
        }
    }
    map
}

fn encode(raw: &str) -> Cow<'_, str> {
    utf8_percent_encode(raw, COMPONENT).into()
}

fn ours<V: MacroValues>(f: &Fixture, out: &mut String, values: &V) {
    out.clear();
    f.template.expand_into(out, values).expect("expands");
}

fn naive_replace(f: &Fixture) -> String {
    let mut s = f.src.to_owned();
    for (token, raw) in f.tokens.iter().zip(&f.raws) {
        s = s.replace(token.as_str(), &encode(raw));
    }
    s
}

fn regex_replace(f: &Fixture) -> Cow<'_, str> {
    f.regex
        .replace_all(f.src, |caps: &Captures<'_>| -> Cow<'_, str> {
            match f.by_name.get(&caps[1]) {
                Some(&i) => encode(&f.raws[i]),
                None => Cow::Owned(caps[0].to_owned()),
            }
        })
}

fn aho_corasick(f: &Fixture, out: &mut String) {
    out.clear();
    f.aho.replace_all_with(f.src, out, |m, _, dst| {
        dst.extend(utf8_percent_encode(
            &f.raws[m.pattern().as_usize()],
            COMPONENT,
        ));
        true
    });
}

fn floor(f: &Fixture, out: &mut String) {
    out.clear();
    for p in &f.pieces {
        out.push_str(p);
    }
}

/// The typical template, written out by hand for the [`Conversion`] type.
fn hand_written(c: &Conversion, out: &mut String) {
    out.clear();
    out.push_str("https://tracker.example.com/postback?currency=");
    out.push_str(c.currency.as_str());
    out.push_str("&clickid=");
    out.extend(utf8_percent_encode(&c.transaction_id, COMPONENT));
    out.push_str("&sub1=");
    out.extend(utf8_percent_encode(&c.subs[0], COMPONENT));
    out.push_str("&sub2=");
    out.extend(utf8_percent_encode(&c.subs[1], COMPONENT));
    out.push_str("&sub3=");
    out.extend(utf8_percent_encode(&c.subs[2], COMPONENT));
    out.push_str("&offer=");
    Amount::new(c.offer_id, 0).write_to(out);
    out.push_str("&aff=");
    Amount::new(c.affiliate_id, 0).write_to(out);
    out.push_str("&payout=");
    c.payout.write_to(out);
    out.push_str("&sale=");
    c.sale_amount.write_to(out);
    out.push_str("&order=");
    out.extend(utf8_percent_encode(&c.order_id, COMPONENT));
    out.push_str("&geo=");
    out.extend(utf8_percent_encode(&c.country, COMPONENT));
    out.push_str("&event=");
    out.extend(utf8_percent_encode(&c.event_name, COMPONENT));
}

fn bench(c: &mut Criterion) {
    let conv = conversion();
    for (name, src) in [("short", SHORT), ("typical", TYPICAL), ("long", LONG)] {
        let f = fixture(name, src, &conv);

        // Everyone sends the same bytes.
        let mut expected = String::new();
        ours(&f, &mut expected, &conv);
        let mut buf = String::new();
        ours(&f, &mut buf, &f.map);
        assert_eq!(buf, expected, "{name}: ValueMap");
        ours(&f, &mut buf, &value_map(&f, &conv));
        assert_eq!(buf, expected, "{name}: ValueMap built again");
        let stored: StoredValues = conv.to_stored(&[]);
        let stored = WithDeliveryId::new(&stored, &conv.delivery_id);
        ours(&f, &mut buf, &stored);
        assert_eq!(buf, expected, "{name}: StoredValues");
        assert_eq!(naive_replace(&f), expected, "{name}: str::replace");
        assert_eq!(regex_replace(&f), expected, "{name}: regex");
        aho_corasick(&f, &mut buf);
        assert_eq!(buf, expected, "{name}: aho-corasick");
        floor(&f, &mut buf);
        assert_eq!(buf, expected, "{name}: floor");
        if name == "typical" {
            hand_written(&conv, &mut buf);
            assert_eq!(buf, expected, "{name}: hand-written");
        }
        eprintln!(
            "expand/{}: template {} bytes, {} macros ({} distinct), output {} bytes",
            f.name,
            f.src.len(),
            f.template.macros().count(),
            f.tokens.len(),
            expected.len()
        );

        let mut g = c.benchmark_group(format!("expand/{}", f.name));
        g.throughput(Throughput::Bytes(expected.len() as u64));
        let cap = expected.len() * 2;
        g.bench_function("ours_struct", |b| {
            let mut out = String::with_capacity(cap);
            b.iter(|| {
                ours(&f, &mut out, black_box(&conv));
                black_box(out.len());
            })
        });
        g.bench_function("ours_value_map", |b| {
            let mut out = String::with_capacity(cap);
            b.iter(|| {
                ours(&f, &mut out, black_box(&f.map));
                black_box(out.len());
            })
        });
        g.bench_function("ours_value_map_set", |b| {
            let mut out = String::with_capacity(cap);
            b.iter(|| {
                let map = value_map(&f, black_box(&conv));
                ours(&f, &mut out, &map);
                black_box(out.len());
            })
        });
        g.bench_function("ours_stored", |b| {
            let mut out = String::with_capacity(cap);
            b.iter(|| {
                ours(&f, &mut out, black_box(&stored));
                black_box(out.len());
            })
        });
        g.bench_function("naive_replace", |b| {
            b.iter(|| black_box(naive_replace(black_box(&f))))
        });
        g.bench_function("regex", |b| {
            b.iter(|| black_box(regex_replace(black_box(&f)).len()))
        });
        g.bench_function("aho_corasick", |b| {
            let mut out = String::with_capacity(cap);
            b.iter(|| {
                aho_corasick(black_box(&f), &mut out);
                black_box(out.len());
            })
        });
        g.bench_function("floor", |b| {
            let mut out = String::with_capacity(cap);
            b.iter(|| {
                floor(black_box(&f), &mut out);
                black_box(out.len());
            })
        });
        if name == "typical" {
            g.bench_function("hand_written", |b| {
                let mut out = String::with_capacity(cap);
                b.iter(|| {
                    hand_written(black_box(&conv), &mut out);
                    black_box(out.len());
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
