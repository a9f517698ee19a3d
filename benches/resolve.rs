//! Resolving a trigger against a registry of 1,000,000 postbacks (issue #2), and what each stored
//! postback costs in heap memory.
//!
//! The registry: 10,000 partners with 100 postbacks each.
//!
//! | per partner `p` | level | kind | scope |
//! | --- | --- | --- | --- |
//! | 1 | partner-global | conversion | partner `p` |
//! | 1 | partner-global | every event | partner `p` |
//! | 96 | specific | conversion | partner `p` on 96 of 100,000 offers |
//! | 1 | specific | event 2 | partner `p` on one more offer |
//! | 1 | offer-global | conversion | offer `p` (offers 0..10,000 have one) |
//!
//! Each postback has its own URL (partner host, offer in the query), parsed when it is built.
//! Four triggers are timed: a conversion with a specific postback (which shadows the
//! offer-global and partner-global ones), a conversion that falls through to partner-global, an
//! event with a specific event postback (shadowing the partner's every-event one), and a
//! conversion of an unknown partner on an unknown offer (nothing matches).
//!
//! Memory: the binary's global allocator (`stats_alloc`) counts live heap bytes; the registry's share is the
//! difference before and after building it, divided by the number of postbacks, printed when the
//! benchmark runs.
//!
//! Run: `cargo bench --bench resolve`.

use std::alloc::System;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use postback::model::{EventId, Kind, Level, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};

/// Counts heap use (`stats_alloc`: the crate forbids unsafe code, so it cannot wrap `System`
/// itself).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes and allocations still live out of those counted in `s` (`stats_alloc` books a
/// reallocation's growth or shrinkage under allocated or deallocated bytes).
fn live(s: Stats) -> (isize, isize) {
    (
        s.bytes_allocated as isize - s.bytes_deallocated as isize,
        s.allocations as isize - s.deallocations as isize,
    )
}

const PARTNERS: u64 = 10_000;
const PER_PARTNER: u64 = 100;
const OFFERS: u64 = 100_000;
/// Postbacks 2..=97 of a partner are specific conversion postbacks.
const SPECIFIC: std::ops::RangeInclusive<u64> = 2..=97;
const EVENT: EventId = EventId::new(2);

/// The offer of a partner's `k`-th specific postback: 100 distinct offers per partner, spread
/// over all offers.
fn offer_of(partner: u64, k: u64) -> OfferId {
    OfferId::new((partner * 97 + k * 1009) % OFFERS)
}

fn postback(partner: u64, k: u64) -> Postback {
    let p = PartnerId::new(partner);
    let id = PostbackId::new(partner * PER_PARTNER + k);
    let host = format!("https://t{}.partner.example/pb", partner % 1000);
    let b = Postback::builder(id);
    let b = match k {
        0 => b.partner(p).url(format!(
            "{host}?pid={partner}&cid={{sub1}}&payout={{payout}}&oid={{offer_id}}"
        )),
        1 => b.partner(p).kind(Kind::any_event()).url(format!(
            "{host}/event?pid={partner}&cid={{sub1}}&ev={{event_name}}"
        )),
        98 => {
            let o = offer_of(partner, k);
            b.partner(p).offer(o).kind(Kind::event(EVENT)).url(format!(
                "{host}/deposit?o={o}&cid={{sub1}}&amount={{sale_amount}}"
            ))
        }
        99 => b.offer(OfferId::new(partner)).url(format!(
            "https://network.example/offer/{partner}?tx={{transaction_id}}"
        )),
        _ => {
            let o = offer_of(partner, k);
            b.partner(p).offer(o).url(format!(
                "{host}?o={o}&cid={{sub1}}&payout={{payout}}&cur={{currency}}"
            ))
        }
    };
    b.build().expect("benchmark postbacks are valid")
}

/// Build the registry, reporting time and heap bytes per postback.
#[allow(clippy::disallowed_methods)] // a benchmark may read the clock
fn build() -> Registry {
    let region = Region::new(GLOBAL);
    let started = std::time::Instant::now();
    let n = (PARTNERS * PER_PARTNER) as usize;
    let mut all = Vec::with_capacity(n);
    for partner in 0..PARTNERS {
        for k in 0..PER_PARTNER {
            all.push(postback(partner, k));
        }
    }
    // What the postbacks own on the heap (templates, descriptions), without the vector itself.
    let struct_size = std::mem::size_of::<Postback>();
    let owned = live(region.change()).0 - (all.capacity() * struct_size) as isize;
    let mut reg = Registry::new();
    for p in all {
        reg.insert(p).expect("ids are unique");
    }
    let took = started.elapsed();
    assert_eq!(reg.len(), n);
    let (total, allocations) = live(region.change());
    let per = |x: isize| x as f64 / n as f64;
    eprintln!(
        "resolve: built {n} postbacks in {:.1} s; live heap +{:.1} MiB in {:.2} allocations per \
         postback",
        took.as_secs_f64(),
        total as f64 / (1024.0 * 1024.0),
        per(allocations),
    );
    eprintln!(
        "resolve: {:.1} bytes per stored postback = {:.1} owned by the postback (template, \
         description) + {struct_size} size_of::<Postback>() + {:.1} registry tables and index",
        per(total),
        per(owned),
        per(total - owned) - struct_size as f64,
    );
    reg
}

fn bench(c: &mut Criterion) {
    let reg = build();

    let partner = 1234;
    let p = PartnerId::new(partner);
    // A specific postback whose offer also has an offer-global one: all three levels match.
    let k = SPECIFIC
        .clone()
        .find(|&k| offer_of(partner, k).get() < PARTNERS)
        .expect("some offer of the partner has an offer-global postback");
    let unknown_offer = OfferId::new(OFFERS + 1);
    // (name, trigger, the postback that fires, how many postbacks match)
    let cases = [
        (
            "specific",
            Trigger::conversion(1, p, offer_of(partner, k)),
            Some(partner * PER_PARTNER + k),
            3,
        ),
        (
            "partner_global_fallthrough",
            Trigger::conversion(1, p, unknown_offer),
            Some(partner * PER_PARTNER),
            1,
        ),
        (
            "event",
            Trigger::event(1, p, offer_of(partner, 98), EVENT),
            Some(partner * PER_PARTNER + 98),
            2,
        ),
        (
            "miss",
            Trigger::conversion(1, PartnerId::new(PARTNERS + 1), unknown_offer),
            None,
            0,
        ),
    ];

    let mut g = c.benchmark_group("resolve");
    g.throughput(Throughput::Elements(1));
    for (name, trigger, fires, matching) in cases {
        let r = reg.resolve(&trigger);
        let firing: Vec<u64> = r.firing().map(PostbackId::get).collect();
        assert_eq!(firing, Vec::from_iter(fires), "{name}:\n{r}");
        assert_eq!(r.decisions.len(), matching, "{name}:\n{r}");
        g.bench_function(name, |b| b.iter(|| reg.resolve(black_box(&trigger))));
    }
    g.finish();

    // The peer: what hand-written tracker code does, a scan over every postback for those that
    // match the trigger's partner, offer and kind, keeping the most specific active level.
    let trigger = cases[0].1;
    let mut peer = c.benchmark_group("resolve_peer");
    peer.sample_size(10);
    peer.bench_function("naive_scan_specific", |b| {
        b.iter(|| {
            let mut best: Option<(Level, PostbackId)> = None;
            for pb in reg.iter() {
                let matches = pb.kind() == Kind::Conversion
                    && pb.status().is_active()
                    && pb.partner().is_none_or(|p| p == trigger.partner)
                    && pb.offer().is_none_or(|o| o == trigger.offer);
                if matches && best.is_none_or(|(l, _)| pb.level() > l) {
                    best = Some((pb.level(), pb.id()));
                }
            }
            black_box(best)
        })
    });
    peer.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
