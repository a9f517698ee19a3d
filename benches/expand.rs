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
use postback::template::{Amount, Currency, Macro, MacroValues, Template, Value, ValueMap};
use regex::{Captures, Regex};

/// The WHATWG component percent-encode set, as the crate uses for query values.
const COMPONENT: &AsciiSet = &CONTROLS
    // query set
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    // path set
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'^')
    // userinfo set
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'|')
    // component set
    .add(b'$')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b',');

/// 61 bytes, 2 macros.
const SHORT: &str = "https://t.example.com/pb?cid={transaction_id}&payout={payout}";

/// 238 bytes, 12 macros.
const TYPICAL: &str = "https://tracker.example.com/postback?currency={currency}\
    &clickid={transaction_id}&sub1={sub1}&sub2={sub2}&sub3={sub3}&offer={offer_id}\
    &aff={affiliate_id}&payout={payout}&sale={sale_amount}&order={order_id}&geo={country}\
    &event={event_name}";

/// 992 bytes, 38 macros (32 distinct).
const LONG: &str = "https://postback.tracker-example.com/api/v2/conversion/postback?currency={currency}\
    &clickid={transaction_id}&txid={transaction_id}&aff_sub={sub1}&aff_sub2={sub2}\
    &aff_sub3={sub3}&aff_sub4={sub4}&aff_sub5={sub5}&sub6={sub6}&sub7={sub7}&sub8={sub8}\
    &adv_sub={adv1}&adv_sub2={adv2}&adv_sub3={adv3}&offer_id={offer_id}&aff_id={affiliate_id}\
    &payout={payout}&amount={payout_amount}&revenue={revenue}&sale_amount={sale_amount}\
    &order_id={order_id}&conversion_id={conversion_id}&status={conversion_status}&geo={country}\
    &device={device_type}&ip={session_ip}&source={source_id}&coupon={coupon_code}\
    &event_id={event_id}&event={event_name}&ts={timestamp}&click_ts={click_timestamp}\
    &dedup={delivery_id}&cb={transaction_id}-{sub1}&ref={offer_id}.{affiliate_id}&p2={payout}\
    &utm_source=network&utm_medium=server_to_server\
    &utm_campaign=postback_long_template_for_benchmarks&utm_content=conversion_postback\
    &utm_term=affiliate_network_partner&lang=en&fmt=plain&v=2&mode=live&region=eu-central\
    &channel=affiliate_s2s";

/// One conversion, as a network's own code would hold it.
struct Conversion {
    transaction_id: String,
    subs: [String; 10],
    advs: [String; 5],
    offer_id: i64,
    affiliate_id: i64,
    payout: Amount,
    revenue: Amount,
    sale_amount: Amount,
    currency: Currency,
    order_id: String,
    conversion_id: String,
    conversion_status: String,
    country: String,
    device_type: String,
    session_ip: String,
    source_id: String,
    coupon_code: String,
    event_id: i64,
    event_name: String,
    timestamp: i64,
    click_timestamp: i64,
    delivery_id: String,
}

impl MacroValues for Conversion {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        Some(match m {
            Macro::TRANSACTION_ID => Value::Text(&self.transaction_id),
            Macro::SUB1 => Value::Text(&self.subs[0]),
            Macro::SUB2 => Value::Text(&self.subs[1]),
            Macro::SUB3 => Value::Text(&self.subs[2]),
            Macro::SUB4 => Value::Text(&self.subs[3]),
            Macro::SUB5 => Value::Text(&self.subs[4]),
            Macro::SUB6 => Value::Text(&self.subs[5]),
            Macro::SUB7 => Value::Text(&self.subs[6]),
            Macro::SUB8 => Value::Text(&self.subs[7]),
            Macro::SUB9 => Value::Text(&self.subs[8]),
            Macro::SUB10 => Value::Text(&self.subs[9]),
            Macro::ADV1 => Value::Text(&self.advs[0]),
            Macro::ADV2 => Value::Text(&self.advs[1]),
            Macro::ADV3 => Value::Text(&self.advs[2]),
            Macro::ADV4 => Value::Text(&self.advs[3]),
            Macro::ADV5 => Value::Text(&self.advs[4]),
            Macro::OFFER_ID => Value::Int(self.offer_id),
            Macro::AFFILIATE_ID => Value::Int(self.affiliate_id),
            Macro::PAYOUT | Macro::PAYOUT_AMOUNT => Value::Amount(self.payout),
            Macro::REVENUE => Value::Amount(self.revenue),
            Macro::SALE_AMOUNT => Value::Amount(self.sale_amount),
            Macro::CURRENCY => Value::Currency(self.currency),
            Macro::ORDER_ID => Value::Text(&self.order_id),
            Macro::CONVERSION_ID => Value::Text(&self.conversion_id),
            Macro::CONVERSION_STATUS => Value::Text(&self.conversion_status),
            Macro::COUNTRY => Value::Text(&self.country),
            Macro::DEVICE_TYPE => Value::Text(&self.device_type),
            Macro::SESSION_IP => Value::Text(&self.session_ip),
            Macro::SOURCE_ID => Value::Text(&self.source_id),
            Macro::COUPON_CODE => Value::Text(&self.coupon_code),
            Macro::EVENT_ID => Value::Int(self.event_id),
            Macro::EVENT_NAME => Value::Text(&self.event_name),
            Macro::TIMESTAMP => Value::Int(self.timestamp),
            Macro::CLICK_TIMESTAMP => Value::Int(self.click_timestamp),
            Macro::DELIVERY_ID => Value::Text(&self.delivery_id),
            _ => return None,
        })
    }
}

fn conversion() -> Conversion {
    Conversion {
        transaction_id: "102af3e5c0b84c3f9f2a7e61".into(),
        subs: [
            "fb_ads&campaign=spring sale".into(), // `&`, `=`, space
            "summer €5 off".into(),               // non-ASCII, space
            String::new(),                        // empty: sent as `aff_sub3=`
            "adset_17".into(),
            "creative-3".into(),
            "placement feed".into(),
            "v2.1".into(),
            "a+b".into(),
            "50% off".into(),
            "k=v;x".into(),
        ],
        advs: [
            "adv-1".into(),
            "adv 2".into(),
            "Ünïcödé".into(),
            "adv_4".into(),
            "x/y".into(),
        ],
        offer_id: 1234,
        affiliate_id: 77,
        payout: Amount::new(1250, 2),
        revenue: Amount::new(1999, 2),
        sale_amount: Amount::new(9999, 2),
        currency: Currency::new("EUR").expect("valid code"),
        order_id: "ORD-2024/0001".into(),
        conversion_id: "c-7f3a9b".into(),
        conversion_status: "approved".into(),
        country: "DE".into(),
        device_type: "mobile".into(),
        session_ip: "203.0.113.7".into(),
        source_id: "src:news/feed".into(),
        coupon_code: "SAVE 10%".into(),
        event_id: 3,
        event_name: "first deposit".into(),
        timestamp: 1_718_000_000,
        click_timestamp: 1_717_990_000,
        delivery_id: "d-000042".into(),
    }
}

/// The raw text of a value, as the peers get it: amounts and integers already formatted.
fn raw_text(v: Value<'_>) -> String {
    match v {
        Value::Text(s) => s.to_owned(),
        Value::Int(n) => n.to_string(),
        Value::Amount(a) => a.to_string(),
        Value::Currency(c) => c.to_string(),
        other => panic!("not used in this benchmark: {other:?}"),
    }
}

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
