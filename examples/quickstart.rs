//! The main example: postbacks at the three levels, resolved for conversions, an event and a CPC
//! click, with what fires and why, and the exact URLs each would send.
//!
//! Run: `cargo run --example quickstart`

use postback::model::{EventId, Kind, Level, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::{Amount, Currency, Macro, ValueMap};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let partner = PartnerId::new(7);
    let other_partner = PartnerId::new(8);
    let offer = OfferId::new(42);
    let other_offer = OfferId::new(43);
    let deposit = EventId::new(3);

    let mut registry = Registry::new();
    // Partner 7, every offer.
    registry.insert(
        Postback::builder(PostbackId::new(1))
            .partner(partner)
            .url("https://tracker.partner.example/postback?cid={sub1}&payout={payout}&currency={currency}")
            .description("partner 7, all offers")
            .build()?,
    )?;
    // Offer 42, every partner (the network's).
    registry.insert(
        Postback::builder(PostbackId::new(2))
            .offer(offer)
            .url("https://tracker.partner.example/offer42?clickid={sub1}&txid={transaction_id}")
            .description("offer 42, all partners")
            .build()?,
    )?;
    // Partner 7 on offer 42: overrides both.
    registry.insert(
        Postback::builder(PostbackId::new(3))
            .partner(partner)
            .offer(offer)
            .url("https://tracker.partner.example/specific?cid={sub1}&sum={payout}&cur={currency}")
            .description("partner 7 on offer 42")
            .build()?,
    )?;
    // An event postback for deposits, and a CPC postback (Specific and S2S chosen for us).
    registry.insert(
        Postback::builder(PostbackId::new(4))
            .partner(partner)
            .kind(Kind::event(deposit))
            .url("https://tracker.partner.example/event?cid={sub1}&event={event_name}")
            .build()?,
    )?;
    let cpc = Postback::builder(PostbackId::new(5))
        .partner(partner)
        .offer(other_offer)
        .kind(Kind::Cpc)
        .url("https://tracker.partner.example/click?cid={sub1}")
        .build()?;
    assert_eq!(cpc.level(), Level::Specific);
    registry.insert(cpc)?;

    let values = ValueMap::new()
        .with(Macro::SUB1, "partner click #1 & more")
        .with(Macro::TRANSACTION_ID, "102a3f9c")
        .with(Macro::PAYOUT, Amount::new(1250, 2))
        .with(Macro::CURRENCY, Currency::new("EUR")?)
        .with(Macro::EVENT_NAME, "first deposit");

    let triggers = [
        Trigger::conversion(partner, offer),
        Trigger::conversion(partner, other_offer),
        Trigger::conversion(other_partner, offer),
        Trigger::event(partner, offer, deposit),
        Trigger::cpc_click(partner, other_offer),
    ];
    for trigger in &triggers {
        let resolution = registry.resolve(trigger);
        println!("{resolution}");
        for id in resolution.firing() {
            let pb = registry.get(id).expect("resolved from the registry");
            println!("    -> {}", pb.template().expand(&values)?);
        }
        println!();
    }

    // Pausing the specific postback lets the offer-global one serve.
    registry.disable(PostbackId::new(3))?;
    println!(
        "after pausing postback 3:\n{}",
        registry.resolve(&triggers[0])
    );
    Ok(())
}
