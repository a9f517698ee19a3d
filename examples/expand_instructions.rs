//! One expansion, repeated, for counting instructions with callgrind (issue 15): the templates
//! and values of `benches/expand.rs`, expanded N times with a caller's struct (`struct`), a
//! prepared `ValueMap` built once (`map`), a prepared `ValueMap` built and expanded in every round
//! (`set`), a plain `ValueMap` built and expanded in every round (`plainset`), the values a
//! delivery keeps with its key, as the engine and the stores expand them (`stored`), or the
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
    WithDeliveryId,
};

include!("../benches/support/expand_fixture.rs");

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
    let usage =
        "usage: expand_instructions short|typical|long N struct|map|set|plainset|stored|floor";
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

    // What the engine and the stores expand: the values a delivery keeps, and its key.
    let stored = conv.to_stored(&[]);
    let stored = WithDeliveryId::new(&stored, &conv.delivery_id);

    let mut out = String::with_capacity(4096);
    for _ in 0..n {
        out.clear();
        match mode.as_str() {
            "struct" => t.expand_into(&mut out, black_box(&conv)).expect("expands"),
            "map" => t.expand_into(&mut out, black_box(&map)).expect("expands"),
            "stored" => t
                .expand_into(&mut out, black_box(&stored))
                .expect("expands"),
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
