//! `Template::expand_into` allocates nothing when the buffer has room, whether the values come
//! from a caller's own `MacroValues` type or from a `ValueMap`.
//!
//! The binary's global allocator counts every allocation (`stats_alloc`: the crate forbids
//! unsafe code, so it cannot wrap `System` itself). The count is process-wide, so the file holds
//! a single test: no other test thread allocates while it measures.

use std::alloc::System;
use std::hint::black_box;

use postback::template::{Amount, Currency, Macro, MacroValues, Template, Value, ValueMap};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// How many times `f` allocated or reallocated.
fn allocations_in(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    let change = region.change();
    change.allocations + change.reallocations
}

/// The typical template of `benches/expand.rs`: 12 macros, values that need encoding.
const TYPICAL: &str = "https://tracker.example.com/postback?currency={currency}\
    &clickid={transaction_id}&sub1={sub1}&sub2={sub2}&sub3={sub3}&offer={offer_id}\
    &aff={affiliate_id}&payout={payout}&sale={sale_amount}&order={order_id}&geo={country}\
    &event={event_name}";

const EXPECTED: &str = "https://tracker.example.com/postback?currency=EUR\
    &clickid=102af3e5c0b84c3f9f2a7e61&sub1=fb_ads%26campaign%3Dspring%20sale\
    &sub2=summer%20%E2%82%AC5%20off&sub3=&offer=1234&aff=77&payout=12.50&sale=99.99\
    &order=ORD-2024%2F0001&geo=DE&event=first%20deposit";

/// A caller's own conversion type.
struct Conversion {
    transaction_id: String,
    sub1: String,
    sub2: String,
    sub3: String,
    offer_id: i64,
    affiliate_id: i64,
    payout: Amount,
    sale_amount: Amount,
    currency: Currency,
    order_id: String,
    country: String,
    event_name: String,
}

impl MacroValues for Conversion {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        Some(match m {
            Macro::TRANSACTION_ID => Value::Text(&self.transaction_id),
            Macro::SUB1 => Value::Text(&self.sub1),
            Macro::SUB2 => Value::Text(&self.sub2),
            Macro::SUB3 => Value::Text(&self.sub3),
            Macro::OFFER_ID => Value::Int(self.offer_id),
            Macro::AFFILIATE_ID => Value::Int(self.affiliate_id),
            Macro::PAYOUT => Value::Amount(self.payout),
            Macro::SALE_AMOUNT => Value::Amount(self.sale_amount),
            Macro::CURRENCY => Value::Currency(self.currency),
            Macro::ORDER_ID => Value::Text(&self.order_id),
            Macro::COUNTRY => Value::Text(&self.country),
            Macro::EVENT_NAME => Value::Text(&self.event_name),
            _ => return None,
        })
    }
}

fn conversion() -> Conversion {
    Conversion {
        transaction_id: "102af3e5c0b84c3f9f2a7e61".into(),
        sub1: "fb_ads&campaign=spring sale".into(),
        sub2: "summer €5 off".into(),
        sub3: String::new(),
        offer_id: 1234,
        affiliate_id: 77,
        payout: Amount::new(1250, 2),
        sale_amount: Amount::new(9999, 2),
        currency: Currency::new("EUR").expect("valid code"),
        order_id: "ORD-2024/0001".into(),
        country: "DE".into(),
        event_name: "first deposit".into(),
    }
}

fn value_map(c: &Conversion) -> ValueMap {
    ValueMap::new()
        .with(Macro::TRANSACTION_ID, c.transaction_id.as_str())
        .with(Macro::SUB1, c.sub1.as_str())
        .with(Macro::SUB2, c.sub2.as_str())
        .with(Macro::SUB3, c.sub3.as_str())
        .with(Macro::OFFER_ID, c.offer_id)
        .with(Macro::AFFILIATE_ID, c.affiliate_id)
        .with(Macro::PAYOUT, c.payout)
        .with(Macro::SALE_AMOUNT, c.sale_amount)
        .with(Macro::CURRENCY, c.currency)
        .with(Macro::ORDER_ID, c.order_id.as_str())
        .with(Macro::COUNTRY, c.country.as_str())
        .with(Macro::EVENT_NAME, c.event_name.as_str())
}

/// Expand into a buffer of exactly the output's length, three times, counting allocations.
fn assert_allocation_free<V: MacroValues>(t: &Template, values: &V, what: &str) {
    let mut out = String::with_capacity(EXPECTED.len());
    for round in 0..3 {
        out.clear();
        let n = allocations_in(|| {
            t.expand_into(&mut out, black_box(values))
                .expect("the typical template expands");
        });
        assert_eq!(out, EXPECTED, "{what}, round {round}");
        assert_eq!(
            n, 0,
            "{what}, round {round}: expand_into allocated {n} times"
        );
        assert_eq!(
            out.capacity(),
            EXPECTED.len(),
            "{what}: the buffer was grown"
        );
    }
}

#[test]
fn expand_into_a_buffer_with_room_allocates_nothing() {
    // The counter works: otherwise the assertions below would pass vacuously.
    let n = allocations_in(|| drop(black_box(String::with_capacity(black_box(64)))));
    assert_eq!(n, 1);
    let mut s = String::with_capacity(4);
    let n = allocations_in(|| s.push_str(black_box("longer than four bytes")));
    assert_eq!(n, 1, "growing a buffer counts");

    let t = Template::parse(TYPICAL).expect("the typical template parses");
    assert_eq!(t.macros().count(), 12);
    let c = conversion();
    assert_allocation_free(&t, &c, "MacroValues struct");
    let map = value_map(&c);
    assert_allocation_free(&t, &map, "ValueMap");
}
