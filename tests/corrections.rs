//! Corrections through the engine: a conversion's later status changes reach the postbacks that
//! opted in, as new deliveries keyed by revision, each sent only after the earlier ones of the
//! same conversion to the same postback finished.

use std::num::NonZeroU32;

use chrono::{DateTime, TimeDelta, Utc};
use postback::access::Actor;
use postback::delivery::{Classifier, Failure, RetryPolicy, State};
use postback::engine::{Engine, EngineConfig, Event, Snapshot};
use postback::model::{
    ConfigError, ConversionStatus, Corrections, Kind, ManagerId, Method, OfferId, PartnerId,
    Postback, PostbackId, StatusWords,
};
use postback::presets::{PresetParams, Tracker};
use postback::registry::{FireReason, Outcome, Registry, SkipReason, Trigger};
use postback::template::{Amount, Macro, ValueMap};
use proptest::prelude::*;

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const PB: PostbackId = PostbackId::new(1);
const GLOBAL: PostbackId = PostbackId::new(2);
const MANAGER: Actor = Actor::Network(ManagerId::new(100));
const URL: &str = "https://t.example/pb?cid={sub1}&status={conversion_status}&payout={payout}";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

fn rev(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn ok() -> Result<http::Response<Vec<u8>>, Failure> {
    Ok(http::Response::builder()
        .status(200)
        .body(Vec::new())
        .unwrap())
}

fn fail() -> Result<http::Response<Vec<u8>>, Failure> {
    Ok(http::Response::builder()
        .status(503)
        .body(Vec::new())
        .unwrap())
}

fn postback(id: PostbackId, corrections: Corrections) -> Postback {
    Postback::builder(id)
        .partner(PARTNER)
        .offer(OFFER)
        .url(URL)
        .corrections(corrections)
        .build()
        .unwrap()
}

fn engine(postbacks: Vec<Postback>) -> Engine {
    let config = EngineConfig::default().retry(RetryPolicy::default().jitter(0, 0));
    let mut e = Engine::new(config, Registry::new());
    for p in postbacks {
        e.create(t0(), MANAGER, p).unwrap();
    }
    e
}

fn values(payout_cents: i64) -> ValueMap {
    ValueMap::new()
        .with(Macro::SUB1, "click-1")
        .with(Macro::CONVERSION_STATUS, "approved")
        .with(Macro::PAYOUT, Amount::new(payout_cents, 2))
}

fn conversion(id: u64) -> Trigger {
    Trigger::conversion(id, PARTNER, OFFER)
}

/// Every request due at `now`: its URL and key, answered by `answer`.
fn send_due(
    e: &mut Engine,
    now: DateTime<Utc>,
    mut answer: impl FnMut(&str) -> Result<http::Response<Vec<u8>>, Failure>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(t) = e.poll_transmit(now) {
        let url = t.request.uri().to_string();
        let result = answer(&url);
        out.push((t.key.to_string(), url));
        e.handle_response(now, t.delivery, result).unwrap();
    }
    out
}

fn keys(sent: &[(String, String)]) -> Vec<&str> {
    sent.iter().map(|(k, _)| k.as_str()).collect()
}

#[test]
fn a_postback_that_did_not_opt_in_hears_nothing_of_a_status_change() {
    let mut e = engine(vec![postback(PB, Corrections::none())]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    assert_eq!(
        keys(&send_due(&mut e, t0(), |_| ok())),
        ["1001.1.conversion.0"]
    );
    let fired = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(1), ConversionStatus::Rejected),
        &values(0),
    );
    assert!(fired.deliveries.is_empty() && fired.held.is_empty());
    assert_eq!(
        fired.resolution.decision(PB).unwrap().outcome,
        Outcome::Skipped {
            why: SkipReason::CorrectionsOff
        }
    );
    assert!(
        fired
            .resolution
            .to_string()
            .contains("takes no corrections")
    );
}

#[test]
fn a_correction_is_a_new_delivery_with_its_revision_the_new_status_and_amounts() {
    let mut e = engine(vec![postback(PB, Corrections::all())]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    let first = send_due(&mut e, t0(), |_| ok());
    assert_eq!(
        first[0].1,
        "https://t.example/pb?cid=click-1&status=approved&payout=12.50"
    );
    let later = t0() + TimeDelta::days(3);
    let fired = e.handle_trigger(
        later,
        &conversion(1001).corrected(rev(1), ConversionStatus::Reversed),
        &values(0),
    );
    assert_eq!(fired.deliveries.len(), 1);
    let sent = send_due(&mut e, later, |_| ok());
    assert_eq!(
        sent,
        [(
            "1001.1.conversion.1".to_owned(),
            "https://t.example/pb?cid=click-1&status=reversed&payout=0.00".to_owned()
        )]
    );
    // The original's record is as it was.
    let records: Vec<_> = std::iter::from_fn(|| e.poll_event())
        .filter_map(|ev| match ev {
            Event::Delivered { record } => Some(record),
            _ => None,
        })
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].key().revision(), 0);
    assert!(records[0].attempts()[0].url.contains("status=approved"));
    assert!(records[1].key().is_correction());
}

#[test]
fn the_same_correction_twice_creates_nothing_new() {
    let mut e = engine(vec![postback(PB, Corrections::all())]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    let c = conversion(1001).corrected(rev(1), ConversionStatus::Approved);
    assert_eq!(
        e.handle_trigger(t0(), &c, &values(1300)).deliveries.len(),
        1
    );
    let again = e.handle_trigger(t0(), &c, &values(1300));
    assert!(again.deliveries.is_empty());
    assert_eq!(again.duplicates.len(), 1);
}

#[test]
fn a_revision_that_arrives_after_a_later_one_is_skipped_so_the_partner_keeps_the_latest_status() {
    let mut e = engine(vec![postback(PB, Corrections::all())]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    let _ = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(2), ConversionStatus::Reversed),
        &values(0),
    );
    let mut sent = send_due(&mut e, t0(), |_| ok());
    // Revision 1 comes late, after revision 2 went out: sending it would end on "approved".
    let late = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(1), ConversionStatus::Approved),
        &values(1250),
    );
    assert!(late.deliveries.is_empty() && late.held.is_empty());
    assert_eq!(
        late.resolution.decision(PB).unwrap().outcome,
        Outcome::Skipped {
            why: SkipReason::Superseded
        }
    );
    sent.extend(send_due(&mut e, t0(), |_| ok()));
    assert!(sent.last().unwrap().1.contains("status=reversed"));
    assert_eq!(keys(&sent), ["1001.1.conversion.0", "1001.1.conversion.2"]);
}

#[test]
fn a_correction_waits_behind_an_original_that_is_still_retrying() {
    let mut e = engine(vec![postback(PB, Corrections::all())]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    // The original fails; the approval comes in while it waits for its retry.
    assert_eq!(
        keys(&send_due(&mut e, t0(), |_| fail())),
        ["1001.1.conversion.0"]
    );
    let _ = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(1), ConversionStatus::Rejected),
        &values(0),
    );
    assert_eq!(keys(&send_due(&mut e, t0(), |_| ok())), Vec::<&str>::new());
    let retry = e.poll_timeout().unwrap();
    // The original goes first; the correction follows it in the same round.
    assert_eq!(
        keys(&send_due(&mut e, retry, |_| ok())),
        ["1001.1.conversion.0", "1001.1.conversion.1"]
    );
    assert!(e.is_idle());
}

#[test]
fn two_corrections_in_a_row_arrive_in_order_after_the_original() {
    let mut e = engine(vec![postback(PB, Corrections::all())]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    // Revision 2 is handled before revision 1 (the caller's queue reordered them).
    for (r, s) in [
        (2, ConversionStatus::Reversed),
        (1, ConversionStatus::Approved),
    ] {
        let _ = e.handle_trigger(t0(), &conversion(1001).corrected(rev(r), s), &values(0));
    }
    let mut order = Vec::new();
    let mut now = t0();
    // Every first attempt fails, so each waits for its own retry.
    let mut tried = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let sent = send_due(&mut e, now, |url| {
            if tried.insert(url.to_owned()) {
                fail()
            } else {
                ok()
            }
        });
        order.extend(sent.into_iter().map(|(k, _)| k));
        match e.poll_timeout() {
            Some(t) => now = t,
            None => break,
        }
    }
    let delivered: Vec<_> = std::iter::from_fn(|| e.poll_event())
        .filter_map(|ev| match ev {
            Event::Delivered { record } => Some(record.key().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        [
            "1001.1.conversion.0",
            "1001.1.conversion.1",
            "1001.1.conversion.2"
        ]
    );
    // No correction was ever sent before an earlier revision was delivered.
    let first_send = |k: &str| order.iter().position(|o| o == k).unwrap();
    assert!(
        first_send("1001.1.conversion.1")
            > order
                .iter()
                .rposition(|o| o == "1001.1.conversion.0")
                .unwrap()
    );
    assert!(
        first_send("1001.1.conversion.2")
            > order
                .iter()
                .rposition(|o| o == "1001.1.conversion.1")
                .unwrap()
    );
}

#[test]
fn a_correction_goes_once_the_original_gave_up() {
    let retry = RetryPolicy::default()
        .jitter(0, 0)
        .classifier(Classifier::default().client_errors_terminal());
    let mut e = Engine::new(EngineConfig::default().retry(retry), Registry::new());
    e.create(t0(), MANAGER, postback(PB, Corrections::all()))
        .unwrap();
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    let _ = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(1), ConversionStatus::Rejected),
        &values(0),
    );
    // The original meets a 404, which ends it at once: the correction may go.
    let mut first = true;
    let sent = send_due(&mut e, t0(), |_| {
        if std::mem::take(&mut first) {
            Ok(http::Response::builder()
                .status(404)
                .body(Vec::new())
                .unwrap())
        } else {
            ok()
        }
    });
    assert_eq!(keys(&sent), ["1001.1.conversion.0", "1001.1.conversion.1"]);
    let ends: Vec<_> = std::iter::from_fn(|| e.poll_event())
        .filter_map(|ev| match ev {
            Event::GaveUp { record } => Some(("gave_up", record.key().revision())),
            Event::Delivered { record } => Some(("delivered", record.key().revision())),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [("gave_up", 0), ("delivered", 1)]);
}

#[test]
fn a_reversal_of_a_conversion_still_held_is_held_too_and_follows_it_when_enabled() {
    let mut e = engine(vec![postback(PB, Corrections::all())]);
    // The partner's server is down: 25 failed attempts of one delivery disable the postback.
    let mut now = t0();
    let _ = e.handle_trigger(now, &conversion(999), &values(100));
    for _ in 0..25 {
        send_due(&mut e, now, |_| fail());
        now = e.poll_timeout().unwrap_or(now);
    }
    assert!(e.registry().get(PB).unwrap().status().is_disabled());
    // A conversion while it is off is held; so is its reversal, and neither is lost.
    let fired = e.handle_trigger(now, &conversion(1001), &values(1250));
    assert_eq!(fired.held.len(), 1);
    let fired = e.handle_trigger(
        now,
        &conversion(1001).corrected(rev(1), ConversionStatus::Reversed),
        &values(0),
    );
    assert_eq!(fired.held.len(), 1);
    assert!(matches!(
        e.delivery(fired.held[0].1).unwrap().state(),
        State::Held
    ));
    e.enable(now, MANAGER, PB).unwrap();
    let sent = send_due(&mut e, now, |_| ok());
    let ours: Vec<_> = sent
        .iter()
        .filter(|(k, _)| k.starts_with("1001."))
        .map(|(k, u)| (k.as_str(), u.contains("status=reversed")))
        .collect();
    // Both go: the partner's books show the conversion and then its reversal.
    assert_eq!(
        ours,
        [
            ("1001.1.conversion.0", false),
            ("1001.1.conversion.1", true)
        ]
    );
}

#[test]
fn a_correction_follows_the_conversion_to_a_paused_postback_instead_of_another_level() {
    let global = Postback::builder(GLOBAL)
        .partner(PARTNER)
        .url(URL)
        .corrections(Corrections::all())
        .build()
        .unwrap();
    let mut e = engine(vec![postback(PB, Corrections::all()), global]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    assert_eq!(
        keys(&send_due(&mut e, t0(), |_| ok())),
        ["1001.1.conversion.0"]
    );
    e.pause(t0(), MANAGER, PB).unwrap();
    // A new conversion now falls through to the partner-global postback...
    let fired = e.handle_trigger(t0(), &conversion(1002), &values(1250));
    assert_eq!(fired.deliveries[0].0, GLOBAL);
    // ...but 1001's reversal belongs where 1001 went: held until the pause ends.
    let fired = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(1), ConversionStatus::Reversed),
        &values(0),
    );
    assert!(fired.deliveries.is_empty());
    assert_eq!(fired.held.iter().map(|h| h.0).collect::<Vec<_>>(), [PB]);
    assert_eq!(
        fired.resolution.decision(GLOBAL).unwrap().outcome,
        Outcome::Skipped {
            why: SkipReason::OriginalElsewhere
        }
    );
    e.resume(t0(), MANAGER, PB).unwrap();
    let sent = send_due(&mut e, t0(), |_| ok());
    assert!(sent.iter().any(|(k, _)| k == "1001.1.conversion.1"));
}

#[test]
fn a_correction_with_no_original_on_record_goes_where_a_trigger_would() {
    let mut e = engine(vec![postback(
        PB,
        Corrections::none().with(ConversionStatus::Approved),
    )]);
    let fired = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(1), ConversionStatus::Approved),
        &values(1250),
    );
    assert_eq!(fired.deliveries.len(), 1);
    assert_eq!(
        fired.resolution.decision(PB).unwrap().outcome,
        Outcome::Fires {
            why: FireReason::WinningLevel
        }
    );
    // A status it did not opt in to goes nowhere.
    let fired = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(2), ConversionStatus::Rejected),
        &values(0),
    );
    assert!(fired.deliveries.is_empty());
}

#[test]
fn a_restored_engine_still_sends_corrections_in_order() {
    let mut e = engine(vec![postback(PB, Corrections::all())]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    send_due(&mut e, t0(), |_| fail());
    let _ = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(1), ConversionStatus::Rejected),
        &values(0),
    );
    let json = serde_json::to_string(&e).unwrap();
    let snapshot: Snapshot = serde_json::from_str(&json).unwrap();
    let config = EngineConfig::default().retry(RetryPolicy::default().jitter(0, 0));
    let mut e = Engine::restore(config, snapshot).unwrap();
    assert_eq!(keys(&send_due(&mut e, t0(), |_| ok())), Vec::<&str>::new());
    let retry = e.poll_timeout().unwrap();
    assert_eq!(
        keys(&send_due(&mut e, retry, |_| ok())),
        ["1001.1.conversion.0", "1001.1.conversion.1"]
    );
}

#[test]
fn a_tracker_preset_sends_the_status_in_the_trackers_own_words() {
    let preset = Tracker::Keitaro
        .preset(&PresetParams::new("k.example").key("KEY"))
        .unwrap();
    assert_eq!(Tracker::Keitaro.status_param(), Some("status"));
    assert_eq!(Tracker::Binom.status_param(), Some("cnv_status"));
    let pb = preset
        .postback(PB)
        .partner(PARTNER)
        .offer(OFFER)
        .corrections(preset.corrections(Corrections::all()))
        .build()
        .unwrap();
    let mut e = engine(vec![pb]);
    let _ = e.handle_trigger(t0(), &conversion(1001), &values(1250));
    send_due(&mut e, t0(), |_| ok());
    let _ = e.handle_trigger(
        t0(),
        &conversion(1001).corrected(rev(1), ConversionStatus::Approved),
        &values(1250),
    );
    let sent = send_due(&mut e, t0(), |_| ok());
    assert!(sent[0].1.contains("status=sale"), "{}", sent[0].1);
    // Every preset that takes a status sends it in its parameter; the others cannot opt in.
    for tracker in Tracker::ALL {
        let params = PresetParams::new("t.example").key("KEY").offer("9");
        let preset = tracker.preset(&params).unwrap();
        let built = preset
            .postback(PB)
            .partner(PARTNER)
            .offer(OFFER)
            .corrections(preset.corrections(Corrections::all()))
            .build();
        match tracker.status_param() {
            Some(param) => {
                assert!(
                    preset
                        .url()
                        .contains(&format!("{param}={{conversion_status}}"))
                );
                assert!(built.is_ok(), "{tracker}: {built:?}");
            }
            None => assert_eq!(
                built,
                Err(ConfigError::CorrectionsWithoutStatus),
                "{tracker}"
            ),
        }
    }
}

#[test]
fn corrections_need_a_server_to_server_postback_that_sends_the_status() {
    let base = || {
        Postback::builder(PB)
            .partner(PARTNER)
            .offer(OFFER)
            .corrections(Corrections::all())
    };
    assert_eq!(
        base().url("https://t.example/pb?cid={sub1}").build(),
        Err(ConfigError::CorrectionsWithoutStatus)
    );
    assert_eq!(
        base().url(URL).method(Method::ImagePixel).build(),
        Err(ConfigError::CorrectionsNotServerToServer(
            Method::ImagePixel
        ))
    );
    assert_eq!(
        base().url(URL).kind(Kind::Cpc).build(),
        Err(ConfigError::CorrectionsOnCpc)
    );
    // Custom words: refused when empty, read back from the stored form.
    let words = StatusWords::network()
        .set(ConversionStatus::Rejected, "declined")
        .unwrap();
    let pb = base()
        .url(URL)
        .corrections(Corrections::all().words(words))
        .build()
        .unwrap();
    let back: Postback = serde_json::from_str(&serde_json::to_string(&pb).unwrap()).unwrap();
    assert_eq!(back, pb);
    assert_eq!(
        back.corrections().word(ConversionStatus::Rejected),
        "declined"
    );
}

/// One step of the property test: a status change handled, or a round of sends.
#[derive(Debug, Clone)]
enum Step {
    /// Handle revision `rev` of conversion `conv` (each revision once, any order).
    Change { conv: u64, status: ConversionStatus },
    /// Send what is due; each request fails when its bit in `fails` is set.
    Send { fails: u64 },
    /// Move time on to the next timer.
    Advance,
    /// Serialize and restore the engine.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let status = prop::sample::select(ConversionStatus::ALL.to_vec());
    prop_oneof![
        3 => (0u64..3, status).prop_map(|(conv, status)| Step::Change { conv, status }),
        3 => any::<u64>().prop_map(|fails| Step::Send { fails }),
        2 => Just(Step::Advance),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any sequence of status changes arrives in order per conversion, and none is lost.
    #[test]
    fn any_sequence_of_status_changes_arrives_in_order_with_none_lost(
        steps in prop::collection::vec(step(), 1..60),
    ) {
        // Enough attempts that nothing gives up before the server recovers.
        let config = || {
            EngineConfig::default().retry(RetryPolicy::default().jitter(0, 0).max_attempts(10_000))
        };
        let mut e = Engine::new(config(), Registry::new());
        e.create(t0(), MANAGER, postback(PB, Corrections::all())).unwrap();
        let mut now = t0();
        let mut revisions = [0u32; 3];
        for conv in 0..3 {
            let _ = e.handle_trigger(now, &conversion(conv), &values(100));
        }
        // Per conversion: the revisions delivered, in the order the receiver accepted them.
        let mut accepted: Vec<Vec<u32>> = vec![Vec::new(); 3];
        let mut run = |e: &mut Engine, now, fails: u64| {
            let mut bit = 0;
            while let Some(t) = e.poll_transmit(now) {
                let fail_it = fails >> (bit % 64) & 1 == 1;
                bit += 1;
                let conv: usize = t.key.trigger().as_str().parse().unwrap();
                if !fail_it {
                    accepted[conv].push(t.key.revision());
                }
                e.handle_response(now, t.delivery, if fail_it { fail() } else { ok() }).unwrap();
            }
        };
        for s in steps {
            match s {
                Step::Change { conv, status } => {
                    let i = usize::try_from(conv).unwrap();
                    revisions[i] += 1;
                    let t = conversion(conv).corrected(rev(revisions[i]), status);
                    let fired = e.handle_trigger(now, &t, &values(0));
                    prop_assert_eq!(fired.deliveries.len(), 1);
                }
                Step::Send { fails } => run(&mut e, now, fails),
                Step::Advance => {
                    if let Some(t) = e.poll_timeout() {
                        now = now.max(t);
                    }
                }
                Step::Restart => {
                    let json = serde_json::to_string(&e).unwrap();
                    let snapshot: Snapshot = serde_json::from_str(&json).unwrap();
                    e = Engine::restore(config(), snapshot).unwrap();
                }
            }
        }
        // Then the partner's server recovers (and the manager enables the postback if 25
        // failures in a row disabled it meanwhile).
        if e.registry().get(PB).unwrap().status().is_disabled() {
            e.enable(now, MANAGER, PB).unwrap();
        }
        for _ in 0..200 {
            run(&mut e, now, 0);
            match e.poll_timeout() {
                Some(t) => now = now.max(t),
                None => break,
            }
        }
        prop_assert!(e.is_idle());
        for (conv, got) in accepted.iter().enumerate() {
            let want: Vec<u32> = (0..=revisions[conv]).collect();
            prop_assert_eq!(got, &want, "conversion {}", conv);
        }
    }
}
