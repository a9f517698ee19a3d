//! Which postbacks fire for a trigger: the precedence rules of DESIGN.md ("Decisions:
//! Precedence"), each pinned to the exact list of decisions a resolution reports.

use chrono::{DateTime, Utc};
use postback::model::{
    EventId, Kind, Level, OfferId, PartnerId, Postback, PostbackBuilder, PostbackId, Status,
};
use postback::registry::{
    Decision, FireReason, Outcome, Precedence, Registry, RegistryError, Resolution, SkipReason,
    Trigger,
};

const PARTNER: PartnerId = PartnerId::new(7);
const OTHER_PARTNER: PartnerId = PartnerId::new(8);
const OFFER: OfferId = OfferId::new(42);
const OTHER_OFFER: OfferId = OfferId::new(43);
const EVENT: EventId = EventId::new(3);
const OTHER_EVENT: EventId = EventId::new(4);

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn disabled() -> Status {
    Status::Disabled {
        reason: "25 failed deliveries".to_owned(),
        at: at(),
    }
}

fn builder(id: u64) -> PostbackBuilder {
    Postback::builder(PostbackId::new(id)).url(format!("https://t.example/pb/{id}?cid={{sub1}}"))
}

/// Partner-global for `PARTNER`.
fn partner_global(id: u64) -> PostbackBuilder {
    builder(id).partner(PARTNER)
}

/// Offer-global for `OFFER`.
fn offer_global(id: u64) -> PostbackBuilder {
    builder(id).offer(OFFER)
}

/// Specific for `PARTNER` on `OFFER`.
fn specific(id: u64) -> PostbackBuilder {
    builder(id).partner(PARTNER).offer(OFFER)
}

fn registry(precedence: Precedence, postbacks: Vec<PostbackBuilder>) -> Registry {
    let mut reg = Registry::with_precedence(precedence);
    for b in postbacks {
        reg.insert(b.build().unwrap()).unwrap();
    }
    reg
}

fn fires(id: u64, level: Level) -> Decision {
    Decision {
        postback: PostbackId::new(id),
        level,
        outcome: Outcome::Fires {
            why: FireReason::WinningLevel,
        },
    }
}

fn fires_as_match(id: u64, level: Level) -> Decision {
    Decision {
        postback: PostbackId::new(id),
        level,
        outcome: Outcome::Fires {
            why: FireReason::AllMatch,
        },
    }
}

fn skipped(id: u64, level: Level, why: SkipReason) -> Decision {
    Decision {
        postback: PostbackId::new(id),
        level,
        outcome: Outcome::Skipped { why },
    }
}

fn shadowed(id: u64, level: Level, by: Level) -> Decision {
    skipped(id, level, SkipReason::Shadowed { by })
}

fn conversion() -> Trigger {
    Trigger::conversion(1, PARTNER, OFFER)
}

fn ids(ids: &[u64]) -> Vec<PostbackId> {
    ids.iter().copied().map(PostbackId::new).collect()
}

#[test]
fn specific_postback_overrides_offer_global_and_partner_global() {
    let reg = registry(
        Precedence::Override,
        vec![partner_global(1), offer_global(2), specific(3)],
    );
    let r = reg.resolve(&conversion());
    assert_eq!(
        r,
        Resolution {
            trigger: conversion(),
            precedence: Precedence::Override,
            decisions: vec![
                fires(3, Level::Specific),
                shadowed(2, Level::OfferGlobal, Level::Specific),
                shadowed(1, Level::PartnerGlobal, Level::Specific),
            ],
        }
    );
    assert_eq!(r.firing().collect::<Vec<_>>(), ids(&[3]));
}

#[test]
fn offer_global_postback_overrides_partner_global_when_there_is_no_specific() {
    let reg = registry(
        Precedence::Override,
        vec![partner_global(1), offer_global(2)],
    );
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            fires(2, Level::OfferGlobal),
            shadowed(1, Level::PartnerGlobal, Level::OfferGlobal),
        ]
    );
}

#[test]
fn an_inactive_specific_postback_lets_the_offer_global_level_serve() {
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1),
            offer_global(2),
            specific(3).status(Status::Paused),
        ],
    );
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            skipped(3, Level::Specific, SkipReason::Paused),
            fires(2, Level::OfferGlobal),
            shadowed(1, Level::PartnerGlobal, Level::OfferGlobal),
        ]
    );
}

#[test]
fn an_automatically_disabled_specific_postback_lets_the_next_level_serve() {
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1),
            offer_global(2),
            specific(3).status(disabled()),
        ],
    );
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            skipped(3, Level::Specific, SkipReason::Disabled),
            fires(2, Level::OfferGlobal),
            shadowed(1, Level::PartnerGlobal, Level::OfferGlobal),
        ]
    );
}

#[test]
fn fall_through_passes_several_levels_until_an_active_postback_serves() {
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1),
            offer_global(2).status(disabled()),
            offer_global(3).status(Status::Paused),
            specific(4).status(Status::Paused),
            specific(5).status(disabled()),
        ],
    );
    let r = reg.resolve(&conversion());
    assert_eq!(
        r.decisions,
        [
            skipped(4, Level::Specific, SkipReason::Paused),
            skipped(5, Level::Specific, SkipReason::Disabled),
            skipped(2, Level::OfferGlobal, SkipReason::Disabled),
            skipped(3, Level::OfferGlobal, SkipReason::Paused),
            fires(1, Level::PartnerGlobal),
        ]
    );
    assert_eq!(
        r.skipped().collect::<Vec<_>>(),
        [
            (PostbackId::new(4), SkipReason::Paused),
            (PostbackId::new(5), SkipReason::Disabled),
            (PostbackId::new(2), SkipReason::Disabled),
            (PostbackId::new(3), SkipReason::Paused),
        ]
    );
}

#[test]
fn every_active_postback_on_the_winning_level_fires_in_id_order() {
    // Inserted out of order: the resolution still lists them by id within a level.
    let reg = registry(
        Precedence::Override,
        vec![
            specific(5),
            offer_global(2),
            specific(3),
            specific(4).status(Status::Paused),
            partner_global(1),
        ],
    );
    let r = reg.resolve(&conversion());
    assert_eq!(
        r.decisions,
        [
            fires(3, Level::Specific),
            skipped(4, Level::Specific, SkipReason::Paused),
            fires(5, Level::Specific),
            shadowed(2, Level::OfferGlobal, Level::Specific),
            shadowed(1, Level::PartnerGlobal, Level::Specific),
        ]
    );
    assert_eq!(r.firing().collect::<Vec<_>>(), ids(&[3, 5]));
}

#[test]
fn precedence_all_fires_every_active_match_and_still_skips_inactive_and_disabled() {
    let reg = registry(
        Precedence::All,
        vec![
            partner_global(1),
            offer_global(2).status(disabled()),
            offer_global(3),
            specific(4),
            specific(5).status(Status::Paused),
        ],
    );
    let r = reg.resolve(&conversion());
    assert_eq!(
        r,
        Resolution {
            trigger: conversion(),
            precedence: Precedence::All,
            decisions: vec![
                fires_as_match(4, Level::Specific),
                skipped(5, Level::Specific, SkipReason::Paused),
                skipped(2, Level::OfferGlobal, SkipReason::Disabled),
                fires_as_match(3, Level::OfferGlobal),
                fires_as_match(1, Level::PartnerGlobal),
            ],
        }
    );
    assert_eq!(r.firing().collect::<Vec<_>>(), ids(&[4, 3, 1]));
}

#[test]
fn switching_the_precedence_of_a_registry_changes_its_resolutions() {
    let mut reg = registry(Precedence::Override, vec![partner_global(1), specific(2)]);
    assert_eq!(reg.precedence(), Precedence::Override);
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            fires(2, Level::Specific),
            shadowed(1, Level::PartnerGlobal, Level::Specific),
        ]
    );
    reg.set_precedence(Precedence::All);
    assert_eq!(reg.precedence(), Precedence::All);
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            fires_as_match(2, Level::Specific),
            fires_as_match(1, Level::PartnerGlobal),
        ]
    );
}

#[test]
fn a_new_registry_uses_override_precedence() {
    assert_eq!(Registry::new().precedence(), Precedence::Override);
    assert_eq!(Precedence::default(), Precedence::Override);
}

#[test]
fn a_conversion_fires_neither_event_nor_cpc_postbacks() {
    // Event and CPC postbacks on more specific levels neither fire nor shadow the conversion
    // postback.
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1),
            specific(2).kind(Kind::event(EVENT)),
            offer_global(3).kind(Kind::any_event()),
            specific(4).kind(Kind::Cpc),
        ],
    );
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [fires(1, Level::PartnerGlobal)]
    );
}

#[test]
fn an_event_fires_postbacks_for_that_event_and_for_all_events_but_not_for_another_event() {
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1).kind(Kind::any_event()),
            partner_global(2).kind(Kind::event(EVENT)),
            partner_global(3).kind(Kind::event(OTHER_EVENT)),
            partner_global(4),
            specific(5).kind(Kind::Cpc),
        ],
    );
    // That event's postbacks first, then those for every event.
    assert_eq!(
        reg.resolve(&Trigger::event(1, PARTNER, OFFER, EVENT))
            .decisions,
        [
            fires(2, Level::PartnerGlobal),
            fires(1, Level::PartnerGlobal),
        ]
    );
    assert_eq!(
        reg.resolve(&Trigger::event(1, PARTNER, OFFER, OTHER_EVENT))
            .decisions,
        [
            fires(3, Level::PartnerGlobal),
            fires(1, Level::PartnerGlobal),
        ]
    );
    assert_eq!(
        reg.resolve(&Trigger::event(1, PARTNER, OFFER, EventId::new(99)))
            .decisions,
        [fires(1, Level::PartnerGlobal)]
    );
}

#[test]
fn an_all_events_postback_on_a_more_specific_level_overrides_one_for_that_event() {
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1).kind(Kind::event(EVENT)),
            specific(2).kind(Kind::any_event()),
        ],
    );
    assert_eq!(
        reg.resolve(&Trigger::event(1, PARTNER, OFFER, EVENT))
            .decisions,
        [
            fires(2, Level::Specific),
            shadowed(1, Level::PartnerGlobal, Level::Specific),
        ]
    );
}

#[test]
fn a_cpc_click_fires_only_cpc_postbacks() {
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1),
            offer_global(2).kind(Kind::any_event()),
            specific(3),
            specific(4).kind(Kind::Cpc),
            specific(5).kind(Kind::event(EVENT)),
        ],
    );
    assert_eq!(
        reg.resolve(&Trigger::cpc_click(1, PARTNER, OFFER))
            .decisions,
        [fires(4, Level::Specific)]
    );
    // And the CPC postback does not fire for a conversion.
    assert_eq!(
        reg.resolve(&conversion()).firing().collect::<Vec<_>>(),
        ids(&[3])
    );
}

#[test]
fn postbacks_of_other_partners_and_other_offers_do_not_match() {
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1),
            builder(2).partner(OTHER_PARTNER),
            builder(3).offer(OTHER_OFFER),
            builder(4).partner(OTHER_PARTNER).offer(OFFER),
            builder(5).partner(PARTNER).offer(OTHER_OFFER),
        ],
    );
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [fires(1, Level::PartnerGlobal)]
    );
    assert_eq!(
        reg.resolve(&Trigger::conversion(1, OTHER_PARTNER, OTHER_OFFER))
            .decisions,
        [
            fires(3, Level::OfferGlobal),
            shadowed(2, Level::PartnerGlobal, Level::OfferGlobal),
        ]
    );
}

#[test]
fn a_trigger_that_matches_no_postback_resolves_to_nothing() {
    let reg = registry(
        Precedence::Override,
        vec![builder(1).partner(OTHER_PARTNER)],
    );
    let r = reg.resolve(&conversion());
    assert_eq!(
        r,
        Resolution {
            trigger: conversion(),
            precedence: Precedence::Override,
            decisions: vec![],
        }
    );
    assert_eq!(r.firing().count(), 0);
    assert_eq!(r.decision(PostbackId::new(1)), None);
    assert_eq!(
        r.to_string(),
        "conversion of partner 7 on offer 42: no postback matches"
    );
}

#[test]
fn the_display_of_a_resolution_names_the_reason_for_every_decision() {
    let mut reg = registry(
        Precedence::Override,
        vec![
            partner_global(1),
            offer_global(2).status(disabled()),
            specific(3),
            specific(4).status(Status::Paused),
        ],
    );
    assert_eq!(
        reg.resolve(&conversion()).to_string(),
        "conversion of partner 7 on offer 42:\n\
         \x20 postback 3 (specific): fires (most specific level with an active postback)\n\
         \x20 postback 4 (specific): skipped: paused\n\
         \x20 postback 2 (offer-global): skipped: disabled after delivery failures\n\
         \x20 postback 1 (partner-global): skipped: overridden by the specific postback"
    );
    reg.set_precedence(Precedence::All);
    assert_eq!(
        reg.resolve(&conversion()).to_string(),
        "conversion of partner 7 on offer 42:\n\
         \x20 postback 3 (specific): fires (precedence `all` fires every active match)\n\
         \x20 postback 4 (specific): skipped: paused\n\
         \x20 postback 2 (offer-global): skipped: disabled after delivery failures\n\
         \x20 postback 1 (partner-global): fires (precedence `all` fires every active match)"
    );
}

#[test]
fn the_display_of_a_resolution_names_the_trigger() {
    let reg = Registry::new();
    assert_eq!(
        reg.resolve(&Trigger::event(1, PARTNER, OFFER, EVENT))
            .to_string(),
        "event 3 of partner 7 on offer 42: no postback matches"
    );
    assert_eq!(
        reg.resolve(&Trigger::cpc_click(1, PARTNER, OFFER))
            .to_string(),
        "CPC click of partner 7 on offer 42: no postback matches"
    );
}

#[test]
fn updating_a_postback_to_another_level_moves_it_in_the_resolution() {
    let mut reg = registry(Precedence::Override, vec![partner_global(1), specific(2)]);
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            fires(2, Level::Specific),
            shadowed(1, Level::PartnerGlobal, Level::Specific),
        ]
    );

    // Specific -> partner-global: both now fire on the partner-global level.
    let two = reg.get(PostbackId::new(2)).unwrap().to_builder();
    let old = reg
        .update(two.no_offer().level(Level::PartnerGlobal).build().unwrap())
        .unwrap();
    assert_eq!(old.level(), Level::Specific);
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            fires(1, Level::PartnerGlobal),
            fires(2, Level::PartnerGlobal),
        ]
    );

    // Partner-global -> offer-global: 1 now overrides 2.
    let one = reg.get(PostbackId::new(1)).unwrap().to_builder();
    reg.update(
        one.no_partner()
            .offer(OFFER)
            .level(Level::OfferGlobal)
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            fires(1, Level::OfferGlobal),
            shadowed(2, Level::PartnerGlobal, Level::OfferGlobal),
        ]
    );

    // To another offer, and to another kind: neither matches a conversion any more.
    let one = reg.get(PostbackId::new(1)).unwrap().to_builder();
    reg.update(one.offer(OTHER_OFFER).build().unwrap()).unwrap();
    let two = reg.get(PostbackId::new(2)).unwrap().to_builder();
    reg.update(two.kind(Kind::any_event()).build().unwrap())
        .unwrap();
    assert_eq!(reg.resolve(&conversion()).decisions, []);
    assert_eq!(
        reg.resolve(&Trigger::event(1, PARTNER, OFFER, EVENT))
            .decisions,
        [fires(2, Level::PartnerGlobal)]
    );
    assert_eq!(
        reg.resolve(&Trigger::conversion(1, OTHER_PARTNER, OTHER_OFFER))
            .decisions,
        [fires(1, Level::OfferGlobal)]
    );
    assert_eq!(reg.len(), 2);
}

#[test]
fn updating_a_postback_that_does_not_exist_is_refused() {
    let mut reg = Registry::new();
    assert_eq!(
        reg.update(specific(9).build().unwrap()),
        Err(RegistryError::NotFound(PostbackId::new(9)))
    );
    assert!(reg.is_empty());
    assert_eq!(reg.resolve(&conversion()).decisions, []);
}

#[test]
fn inserting_a_postback_with_a_taken_id_is_refused_and_changes_nothing() {
    let mut reg = registry(Precedence::Override, vec![specific(1)]);
    assert_eq!(
        reg.insert(partner_global(1).build().unwrap()),
        Err(RegistryError::Duplicate(PostbackId::new(1)))
    );
    assert_eq!(reg.len(), 1);
    assert_eq!(
        reg.get(PostbackId::new(1)).unwrap().level(),
        Level::Specific
    );
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [fires(1, Level::Specific)]
    );
}

#[test]
fn removing_the_winning_postback_lets_the_next_level_serve() {
    let mut reg = registry(
        Precedence::Override,
        vec![partner_global(1), offer_global(2), specific(3)],
    );
    let removed = reg.remove(PostbackId::new(3)).unwrap();
    assert_eq!(removed, specific(3).build().unwrap());
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            fires(2, Level::OfferGlobal),
            shadowed(1, Level::PartnerGlobal, Level::OfferGlobal),
        ]
    );
    assert_eq!(
        reg.remove(PostbackId::new(3)),
        Err(RegistryError::NotFound(PostbackId::new(3)))
    );
    reg.remove(PostbackId::new(2)).unwrap();
    reg.remove(PostbackId::new(1)).unwrap();
    assert!(reg.is_empty());
    assert_eq!(reg.resolve(&conversion()).decisions, []);
}

#[test]
fn pausing_resuming_and_enabling_through_the_registry_changes_the_resolution() {
    let mut reg = registry(Precedence::Override, vec![partner_global(1), specific(2)]);
    let two = PostbackId::new(2);

    assert_eq!(reg.pause(two), Ok(Status::Active));
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            skipped(2, Level::Specific, SkipReason::Paused),
            fires(1, Level::PartnerGlobal),
        ]
    );

    // Enabling is for the automatic disable; a pause is undone by resuming.
    assert!(matches!(
        reg.enable(two),
        Err(RegistryError::Status { id, .. }) if id == two
    ));
    assert_eq!(reg.resume(two), Ok(Status::Paused));
    assert_eq!(
        reg.disable_automatically(two, "25 failed deliveries", at()),
        Ok(true)
    );
    // Once off, a second automatic disable changes nothing (one notification, one reason).
    assert_eq!(reg.disable_automatically(two, "again", at()), Ok(false));
    assert!(matches!(
        reg.resume(two),
        Err(RegistryError::Status { id, .. }) if id == two
    ));
    assert_eq!(reg.get(two).unwrap().status(), &disabled());
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            skipped(2, Level::Specific, SkipReason::Disabled),
            fires(1, Level::PartnerGlobal),
        ]
    );

    assert_eq!(reg.enable(two), Ok(disabled()));
    assert_eq!(
        reg.resolve(&conversion()).decisions,
        [
            fires(2, Level::Specific),
            shadowed(1, Level::PartnerGlobal, Level::Specific),
        ]
    );
    assert_eq!(
        reg.enable(PostbackId::new(9)),
        Err(RegistryError::NotFound(PostbackId::new(9)))
    );
}

#[test]
fn a_resolution_serializes_with_serde_json() {
    let reg = registry(
        Precedence::Override,
        vec![
            partner_global(1).kind(Kind::any_event()),
            specific(2).kind(Kind::event(EVENT)),
            specific(3).kind(Kind::event(EVENT)).status(Status::Paused),
        ],
    );
    let r = reg.resolve(&Trigger::event(1, PARTNER, OFFER, EVENT));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "trigger": {
                "id": "1",
                "partner": 7,
                "offer": 42,
                "what": { "type": "event", "event": 3 }
            },
            "precedence": "override",
            "decisions": [
                {
                    "postback": 2,
                    "level": "specific",
                    "outcome": { "outcome": "fires", "why": "winning_level" }
                },
                {
                    "postback": 3,
                    "level": "specific",
                    "outcome": { "outcome": "skipped", "why": { "reason": "paused" } }
                },
                {
                    "postback": 1,
                    "level": "partner_global",
                    "outcome": {
                        "outcome": "skipped",
                        "why": { "reason": "shadowed", "by": "specific" }
                    }
                }
            ]
        })
    );
    let back: Resolution = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);

    let all = registry(Precedence::All, vec![partner_global(1).status(disabled())]);
    let r = all.resolve(&Trigger::cpc_click(1, PARTNER, OFFER));
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        serde_json::json!({
            "trigger": { "id": "1", "partner": 7, "offer": 42, "what": { "type": "cpc_click" } },
            "precedence": "all",
            "decisions": []
        })
    );
    let r = all.resolve(&conversion());
    assert_eq!(
        serde_json::to_value(&r).unwrap()["decisions"],
        serde_json::json!([{
            "postback": 1,
            "level": "partner_global",
            "outcome": { "outcome": "skipped", "why": { "reason": "disabled" } }
        }])
    );
    let r = registry(Precedence::All, vec![partner_global(1)]).resolve(&conversion());
    assert_eq!(
        serde_json::to_value(&r).unwrap()["decisions"][0]["outcome"],
        serde_json::json!({ "outcome": "fires", "why": "all_match" })
    );
    assert_eq!(
        serde_json::to_value(Trigger::conversion(1, PARTNER, OFFER)).unwrap()["what"],
        serde_json::json!({ "type": "conversion" })
    );
}
