//! One expansion, repeated, for counting instructions with callgrind (issue 15): the templates
//! and values of `benches/expand.rs`, expanded N times with a caller's struct (`struct`), a
//! prepared `ValueMap` built once (`map`), a prepared `ValueMap` built and expanded in every round
//! (`set`), a plain `ValueMap` built and expanded in every round (`plainset`), or the
//! `push_str` floor of pre-encoded pieces (`floor`).
//!
//! ```text
//! cargo build --release --example expand_instructions
//! for n in 1000 3000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/expand_instructions typical $n map
//! done
//! ```
//!
//! One expansion is the difference of the two totals over 2,000: set-up and start-up cancel.

use std::hint::black_box;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use postback::template::{
    Amount, Catalog, Currency, Macro, MacroValues, OwnedValue, Template, Value, ValueMap,
};

/// The WHATWG component percent-encode set, as the crate uses for query values.
const COMPONENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'^')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'|')
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

fn raw_text(v: Value<'_>) -> String {
    match v {
        Value::Text(s) => s.to_owned(),
        Value::Int(n) => n.to_string(),
        Value::Amount(a) => a.to_string(),
        Value::Currency(c) => c.to_string(),
        other => panic!("not used here: {other:?}"),
    }
}

fn owned(v: Value<'_>) -> OwnedValue {
    match v {
        Value::Text(s) => s.into(),
        Value::Int(n) => n.into(),
        Value::Amount(a) => a.into(),
        Value::Currency(c) => c.into(),
        other => panic!("not used here: {other:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: expand_instructions short|typical|long N struct|map|set|floor";
    let (Some(which), Some(n), Some(mode)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let src = match which.as_str() {
        "short" => SHORT,
        "typical" => TYPICAL,
        "long" => LONG,
        _ => panic!("{usage}"),
    };
    let conv = conversion();
    let t = Template::parse(src).expect("the template parses");
    let mut used = Vec::new();
    for m in t.macros() {
        if !used.contains(&m) {
            used.push(m);
        }
    }
    let mut map = ValueMap::prepared();
    for &m in &used {
        map.set(m, owned(conv.value(m).expect("a value for every macro")));
    }
    // The floor's pieces: the source split at its tokens, values encoded here.
    let catalog = Catalog::standard();
    let mut pieces = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("closed token");
        pieces.push(rest[..open].to_owned());
        let m = catalog.lookup(&rest[open + 1..close]).expect("known macro");
        let raw = raw_text(conv.value(m).expect("a value for every macro"));
        pieces.push(utf8_percent_encode(&raw, COMPONENT).to_string());
        rest = &rest[close + 1..];
    }
    pieces.push(rest.to_owned());
    let mut expected = String::new();
    t.expand_into(&mut expected, &conv).expect("expands");
    assert_eq!(pieces.concat(), expected, "the floor sends the same bytes");

    let mut out = String::with_capacity(4096);
    for _ in 0..n {
        out.clear();
        match mode.as_str() {
            "struct" => t.expand_into(&mut out, black_box(&conv)).expect("expands"),
            "map" => t.expand_into(&mut out, black_box(&map)).expect("expands"),
            "plainset" => {
                let mut m = ValueMap::new();
                for &mac in &used {
                    m.set(mac, owned(black_box(&conv).value(mac).expect("a value")));
                }
                t.expand_into(&mut out, &m).expect("expands");
            }
            "set" => {
                let mut m = ValueMap::prepared();
                for &mac in &used {
                    m.set(mac, owned(black_box(&conv).value(mac).expect("a value")));
                }
                t.expand_into(&mut out, &m).expect("expands");
            }
            "floor" => {
                for p in black_box(&pieces) {
                    out.push_str(p);
                }
            }
            _ => panic!("{usage}"),
        }
        black_box(out.len());
    }
    if n > 0 {
        assert_eq!(out, expected, "{mode} sends the same bytes");
    }
}
