//! Signed postbacks through the engine: the Standard Webhooks headers, the query style, retries,
//! rotation, snapshots, and secrets kept out of everything that is shown. The partner's side is
//! `postback::signing::verify*`, as a partner on Rust would call it.
#![cfg(feature = "signing")]

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use postback::access::{AccessError, Actor, AuditEntry};
use postback::delivery::{Failure, RenderError, RetryPolicy};
use postback::engine::{Engine, EngineConfig, EngineError, Event, FireError, Transmit};
use postback::model::{
    ConfigError, HttpMethod, ManagerId, Method, OfferId, PartnerId, Postback, PostbackId,
};
use postback::registry::{Registry, Trigger};
use postback::signing::{
    self, DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, QueryNames, Secret,
    Signing, SigningError, VerifyError,
};
use postback::template::{Macro, SampleValues, ValueMap};

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const PB: PostbackId = PostbackId::new(1);
const MANAGER: Actor = Actor::Network(ManagerId::new(1));
const ORIGIN: &str = "https://tracker.example";
/// The official Standard Webhooks test secret, and a second one for rotations.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEXT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// What must never be shown: the base64 part of each secret.
const SHOWN_NEVER: [&str; 2] = [
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
];

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

fn secret(text: &str) -> Secret {
    Secret::parse(text).unwrap()
}

fn headers(secrets: &[&str]) -> Signing {
    Signing::headers(secrets.iter().map(|s| secret(s))).unwrap()
}

fn signed(signing: Signing) -> Postback {
    Postback::builder(PB)
        .partner(PARTNER)
        .url(format!("{ORIGIN}/pb?cid={{sub1}}&payout={{payout}}"))
        .signing(signing)
        .build()
        .unwrap()
}

fn engine(pb: Postback) -> Engine {
    let mut reg = Registry::new();
    reg.insert(pb).unwrap();
    let retry = RetryPolicy::default()
        .jitter(0, 0)
        .schedule(vec![Duration::from_secs(3600)]);
    Engine::new(EngineConfig::default().retry(retry), reg)
}

fn convert(e: &mut Engine, id: u64, now: DateTime<Utc>) {
    let values = ValueMap::new()
        .with(Macro::SUB1, "click 1/2")
        .with(Macro::PAYOUT, "1.50");
    let fired = e.handle_trigger(now, &Trigger::conversion(id, PARTNER, OFFER), &values);
    assert_eq!(fired.deliveries.len(), 1, "{:?}", fired.errors);
}

fn status(code: u16) -> Result<http::Response<Vec<u8>>, Failure> {
    Ok(http::Response::builder()
        .status(code)
        .body(Vec::new())
        .unwrap())
}

fn header<'a>(tx: &'a Transmit, name: &str) -> &'a str {
    tx.request
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// The request as the partner's server receives it: origin-form target, same headers and body.
fn as_received(tx: &Transmit) -> http::Request<Vec<u8>> {
    let target = tx.request.uri().path_and_query().unwrap().as_str();
    let mut b = http::Request::builder()
        .method(tx.request.method().clone())
        .uri(target);
    for (k, v) in tx.request.headers() {
        b = b.header(k, v);
    }
    b.body(tx.request.body().clone()).unwrap()
}

fn verify_received(
    tx: &Transmit,
    secrets: &[Secret],
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    signing::verify_request(&as_received(tx), ORIGIN, secrets, now, DEFAULT_TOLERANCE)
}

#[test]
fn a_signed_postback_sends_the_standard_webhooks_headers_and_the_partner_verifies_them() {
    let mut e = engine(signed(headers(&[SECRET])));
    convert(&mut e, 1001, t0());
    // The first send reuses the request the plan rendered: it is signed all the same.
    let tx = e.poll_transmit(t0()).unwrap();
    assert_eq!(header(&tx, HEADER_ID), tx.key.to_text());
    assert_eq!(header(&tx, HEADER_ID), "1001.1.conversion.0");
    assert_eq!(header(&tx, HEADER_TIMESTAMP), t0().timestamp().to_string());
    let sig = header(&tx, HEADER_SIGNATURE);
    assert!(sig.starts_with("v1,") && !sig.contains(' '), "{sig}");
    assert_eq!(verify_received(&tx, &[secret(SECRET)], t0()), Ok(()));

    // The bytes signed are the key, the time and the URL exactly as sent.
    let url = tx.request.uri().to_string();
    assert_eq!(
        url,
        "https://tracker.example/pb?cid=click%201%2F2&payout=1.50"
    );
    assert_eq!(
        signing::verify(
            &tx.key.to_text(),
            header(&tx, HEADER_TIMESTAMP),
            sig,
            url.as_bytes(),
            &[secret(SECRET)],
            t0(),
            DEFAULT_TOLERANCE
        ),
        Ok(())
    );
    assert_eq!(
        sig,
        signing::sign(
            &tx.key.to_text(),
            t0().timestamp(),
            url.as_bytes(),
            &[secret(SECRET)]
        )
        .unwrap()
    );
    // Another secret does not verify it.
    assert_eq!(
        verify_received(&tx, &[secret(NEXT_SECRET)], t0()),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn a_send_rendered_anew_is_signed_as_the_first_send_of_a_planned_one() {
    let mut planned = engine(signed(headers(&[SECRET])));
    let mut fresh = engine(signed(headers(&[SECRET])));
    convert(&mut planned, 1001, t0());
    convert(&mut fresh, 1001, t0());
    // Touching the registry drops the plan's rendered requests: this send renders again.
    let _ = fresh.registry_mut();
    let a = planned.poll_transmit(t0()).unwrap();
    let b = fresh.poll_transmit(t0()).unwrap();
    assert_eq!(a.request.uri(), b.request.uri());
    assert_eq!(a.request.headers(), b.request.headers());
    assert_eq!(verify_received(&b, &[secret(SECRET)], t0()), Ok(()));
}

#[test]
fn rotation_sends_one_signature_per_secret_and_either_secret_verifies() {
    let mut e = engine(signed(headers(&[SECRET, NEXT_SECRET])));
    convert(&mut e, 1001, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    let sig = header(&tx, HEADER_SIGNATURE);
    assert_eq!(sig.split(' ').count(), 2, "{sig}");
    for s in [SECRET, NEXT_SECRET] {
        assert_eq!(verify_received(&tx, &[secret(s)], t0()), Ok(()));
    }
    // A partner that has moved to the new secret, holding both while it rolls out.
    assert_eq!(
        verify_received(&tx, &[secret(NEXT_SECRET), secret(SECRET)], t0()),
        Ok(())
    );
}

#[test]
fn a_retry_is_signed_anew_with_its_own_timestamp_and_still_verifies() {
    let mut e = engine(signed(headers(&[SECRET])));
    convert(&mut e, 1001, t0());
    let first = e.poll_transmit(t0()).unwrap();
    e.handle_response(t0(), first.delivery, status(503))
        .unwrap();
    let later = t0() + TimeDelta::hours(1);
    assert_eq!(e.poll_timeout(), Some(later));
    let retry = e.poll_transmit(later).unwrap();

    assert_eq!(
        header(&retry, HEADER_ID),
        header(&first, HEADER_ID),
        "same key"
    );
    assert_eq!(
        header(&retry, HEADER_TIMESTAMP),
        later.timestamp().to_string()
    );
    assert_ne!(
        header(&retry, HEADER_SIGNATURE),
        header(&first, HEADER_SIGNATURE)
    );
    assert_eq!(verify_received(&retry, &[secret(SECRET)], later), Ok(()));
    // The first attempt's headers, replayed an hour later, are refused as stale.
    assert!(matches!(
        verify_received(&first, &[secret(SECRET)], later),
        Err(VerifyError::TooOld { age: 3600, .. })
    ));
}

#[test]
fn the_query_style_appends_timestamp_id_and_signature_and_the_received_url_verifies() {
    let names = QueryNames::new("sig", "ts").id("did");
    let signing = Signing::query(names.clone(), [secret(SECRET), secret(NEXT_SECRET)]).unwrap();
    let mut e = engine(signed(signing));
    convert(&mut e, 1001, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    assert!(tx.request.headers().get(HEADER_SIGNATURE).is_none());
    let url = tx.request.uri().to_string();
    let signed_part = format!(
        "{ORIGIN}/pb?cid=click%201%2F2&payout=1.50&ts={}&did=1001.1.conversion.0",
        t0().timestamp()
    );
    assert!(
        url.starts_with(&format!("{signed_part}&sig=v1%2C")),
        "{url}"
    );
    for s in [SECRET, NEXT_SECRET] {
        assert_eq!(
            signing::verify_url(
                &http::Method::GET,
                &url,
                b"",
                &names,
                &[secret(s)],
                t0(),
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
    }
    // One changed value in the URL and the signature no longer holds.
    let forged = url.replace("payout=1.50", "payout=9.50");
    assert_eq!(
        signing::verify_url(
            &http::Method::GET,
            &forged,
            b"",
            &names,
            &[secret(SECRET)],
            t0(),
            DEFAULT_TOLERANCE
        ),
        Err(VerifyError::Mismatch)
    );
    // The attempt records the URL that went out; the signature parameter is redacted there
    // like any secret-looking parameter.
    e.handle_response(t0(), tx.delivery, status(200)).unwrap();
    let Some(Event::Delivered { record }) = e.poll_event() else {
        panic!("delivered")
    };
    let recorded = &record.attempts()[0].url;
    assert!(recorded.starts_with(&signed_part), "{recorded}");
    assert!(recorded.ends_with("&sig=***"), "{recorded}");
}

#[test]
fn a_post_postback_signs_the_url_a_line_feed_and_its_body() {
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .url(format!("{ORIGIN}/pb?cid={{sub1}}"))
        .method(Method::ServerToServer {
            http: HttpMethod::Post,
        })
        .signing(headers(&[SECRET]))
        .build()
        .unwrap();
    let mut e = engine(pb);
    convert(&mut e, 1001, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    assert_eq!(tx.request.method(), http::Method::POST);
    assert_eq!(verify_received(&tx, &[secret(SECRET)], t0()), Ok(()));
    let url = tx.request.uri().to_string();
    let payload = format!("{url}\n").into_bytes();
    assert_eq!(signing::payload(&http::Method::POST, &url, b""), payload);
    assert_eq!(
        header(&tx, HEADER_SIGNATURE),
        signing::sign(
            &tx.key.to_text(),
            t0().timestamp(),
            &payload,
            &[secret(SECRET)]
        )
        .unwrap()
    );
    // The same request taken for a GET does not verify: the method is part of the payload.
    let mut as_get = as_received(&tx);
    *as_get.method_mut() = http::Method::GET;
    assert_eq!(
        signing::verify_request(&as_get, ORIGIN, &[secret(SECRET)], t0(), DEFAULT_TOLERANCE),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn a_test_fire_is_signed_too() {
    let mut e = engine(signed(headers(&[SECRET])));
    let fire = e.test_fire(t0(), MANAGER, PB, &SampleValues).unwrap();
    let tx = e.poll_transmit(t0()).unwrap();
    assert_eq!(tx.delivery, fire.delivery);
    assert_eq!(header(&tx, HEADER_ID), tx.key.to_text());
    assert_eq!(verify_received(&tx, &[secret(SECRET)], t0()), Ok(()));
}

#[test]
fn secrets_never_appear_in_debug_output_attempt_records_events_or_audit_entries() {
    let signing = headers(&[SECRET, NEXT_SECRET]);
    let pb = signed(signing.clone());
    let mut e = engine(pb.clone());
    let edited = pb.to_builder().description("rotated").build().unwrap();
    let audit = e.edit(t0(), MANAGER, edited.clone()).unwrap();
    convert(&mut e, 1001, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    e.handle_response(t0(), tx.delivery, status(503)).unwrap();
    let later = t0() + TimeDelta::hours(1);
    let tx2 = e.poll_transmit(later).unwrap();
    e.handle_response(later, tx2.delivery, status(200)).unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
    assert_eq!(events.len(), 2, "{events:?}");

    let shown = [
        format!("{pb:?}"),
        format!("{:?}", pb.to_builder()),
        format!("{signing:?}"),
        format!("{:?}", signing.secrets()),
        format!("{tx:?}"),
        format!("{tx2:?}"),
        format!("{events:?}"),
        serde_json::to_string(&events).unwrap(),
        format!("{audit:?}"),
        serde_json::to_string(&audit).unwrap(),
        format!("{e:?}"),
        format!("{:?}", e.finished_of(PB).collect::<Vec<_>>()),
        // Every error a signing setting can give.
        format!("{}", ConfigError::Signing(SigningError::DuplicateSecret)),
        format!("{}", Secret::parse("whsec_bad base64").unwrap_err()),
    ];
    for text in &shown {
        for s in SHOWN_NEVER {
            assert!(!text.contains(s), "a secret is shown in: {text}");
        }
    }
    // Nor is any secret sent: only the signatures travel.
    for t in [&tx, &tx2] {
        let sent = format!("{} {:?}", t.request.uri(), t.request.headers());
        for s in SHOWN_NEVER {
            assert!(!sent.contains(s), "{sent}");
        }
    }
    // Debug says that it signs, and with how many secrets.
    assert!(
        shown[0].contains("Headers") && shown[0].contains("2 redacted"),
        "{}",
        shown[0]
    );
}

#[test]
fn an_engine_snapshot_keeps_the_secrets_and_the_restored_engine_signs_with_them() {
    let mut e = engine(signed(headers(&[SECRET])));
    convert(&mut e, 1001, t0());
    let saved = serde_json::to_string(&e).unwrap();
    // The serialized postback carries its secrets (a snapshot must be protected as they are).
    assert!(saved.contains(SECRET));
    let mut restored =
        Engine::restore(e.config().clone(), serde_json::from_str(&saved).unwrap()).unwrap();
    assert_eq!(restored.registry().get(PB), e.registry().get(PB));
    let tx = restored.poll_transmit(t0()).unwrap();
    assert_eq!(verify_received(&tx, &[secret(SECRET)], t0()), Ok(()));
}

#[test]
fn a_postback_read_back_from_an_audit_entry_has_redacted_secrets_and_is_never_sent() {
    let mut e = engine(signed(headers(&[SECRET])));
    let edited = signed(headers(&[SECRET]))
        .to_builder()
        .description("edited")
        .build()
        .unwrap();
    let audit = e.edit(t0(), MANAGER, edited).unwrap();
    let json = serde_json::to_string(&audit).unwrap();
    assert!(!json.contains(SECRET), "{json}");
    let read: AuditEntry = serde_json::from_str(&json).unwrap();
    let after = read.after.expect("an edit records the postback after");
    let s = after.signing().expect("it still says it signs");
    assert!(s.is_redacted() && s.secrets().iter().all(Secret::is_redacted));
    assert_eq!(s.style(), headers(&[SECRET]).style());

    // Creating or editing it again is refused until the secrets are set again.
    assert_eq!(
        e.edit(t0(), MANAGER, after.clone()).unwrap_err(),
        EngineError::Access(AccessError::RedactedSecrets(PB))
    );
    // Put in the registry behind the gatekeeper's back, it is still never sent unsigned: the
    // trigger reports it.
    e.registry_mut().update(after.clone()).unwrap();
    let fired = e.handle_trigger(
        t0(),
        &Trigger::conversion(1002, PARTNER, OFFER),
        &ValueMap::new().with(Macro::SUB1, "c"),
    );
    assert!(fired.deliveries.is_empty());
    assert_eq!(
        fired.errors,
        [(
            PB,
            FireError::Render(RenderError::Signing(SigningError::RedactedSecret))
        )]
    );
    // Set the secrets again, and it signs.
    let fixed = after
        .to_builder()
        .signing(headers(&[SECRET]))
        .build()
        .unwrap();
    e.edit(t0(), MANAGER, fixed).unwrap();
    convert(&mut e, 1003, t0());
    let tx = e.poll_transmit(t0()).unwrap();
    assert_eq!(verify_received(&tx, &[secret(SECRET)], t0()), Ok(()));
}

#[test]
fn a_postback_keeps_its_signing_through_its_serialized_form() {
    let names = QueryNames::new("sig", "ts").id("did");
    let pb = signed(Signing::query(names, [secret(SECRET), secret(NEXT_SECRET)]).unwrap());
    let json = serde_json::to_value(&pb).unwrap();
    assert_eq!(json["signing"]["style"], "query");
    assert_eq!(json["signing"]["signature"], "sig");
    assert_eq!(json["signing"]["secrets"][1], NEXT_SECRET);
    let back: Postback = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, pb);
    // A stored list that breaks a rule is refused on the way in, as a built one is.
    let mut five = json.clone();
    five["signing"]["secrets"] = serde_json::json!(vec![SECRET; 5]);
    assert!(serde_json::from_value::<Postback>(five).is_err());
    let mut bad = json;
    bad["signing"]["secrets"] = serde_json::json!(["whsec_short"]);
    assert!(serde_json::from_value::<Postback>(bad).is_err());
}

#[test]
fn signing_a_pixel_or_naming_a_parameter_the_url_has_is_refused_when_built() {
    let pixel = Postback::builder(PB)
        .partner(PARTNER)
        .method(Method::ImagePixel)
        .url(format!("{ORIGIN}/px?cid={{sub1}}"))
        .signing(headers(&[SECRET]))
        .build();
    assert_eq!(
        pixel.unwrap_err(),
        ConfigError::Signing(SigningError::NotServerToServer(Method::ImagePixel))
    );
    let taken = Postback::builder(PB)
        .partner(PARTNER)
        .url(format!("{ORIGIN}/pb?cid={{sub1}}&ts={{timestamp}}"))
        .signing(Signing::query(QueryNames::new("sig", "ts"), [secret(SECRET)]).unwrap())
        .build();
    assert_eq!(
        taken.unwrap_err(),
        ConfigError::Signing(SigningError::ParameterInUrl("ts".into()))
    );
    // Clearing the signing builds it unsigned, as asked.
    let unsigned = signed(headers(&[SECRET]))
        .to_builder()
        .signing(None)
        .build()
        .unwrap();
    assert!(unsigned.signing().is_none());
}

#[test]
fn a_correction_is_signed_under_its_own_key_like_the_original() {
    use postback::model::{ConversionStatus, Corrections};
    let pb = Postback::builder(PB)
        .partner(PARTNER)
        .offer(OFFER)
        .url(format!(
            "{ORIGIN}/pb?cid={{sub1}}&status={{conversion_status}}"
        ))
        .corrections(Corrections::none().with(ConversionStatus::Rejected))
        .signing(headers(&[SECRET]))
        .build()
        .unwrap();
    let mut e = engine(pb);
    let values = |status: &str| {
        ValueMap::new()
            .with(Macro::SUB1, "c")
            .with(Macro::CONVERSION_STATUS, status)
    };
    let original = Trigger::conversion(1001, PARTNER, OFFER);
    let _ = e.handle_trigger(t0(), &original, &values("approved"));
    let first = e.poll_transmit(t0()).unwrap();
    e.handle_response(t0(), first.delivery, status(200))
        .unwrap();
    let revision = std::num::NonZeroU32::new(1).unwrap();
    let corrected = original.corrected(revision, ConversionStatus::Rejected);
    let later = t0() + TimeDelta::minutes(10);
    let fired = e.handle_trigger(later, &corrected, &values("rejected"));
    assert_eq!(fired.deliveries.len(), 1, "{:?}", fired.errors);
    let correction = e.poll_transmit(later).unwrap();
    assert_eq!(header(&correction, HEADER_ID), correction.key.to_text());
    assert_ne!(header(&correction, HEADER_ID), header(&first, HEADER_ID));
    assert_eq!(
        header(&correction, HEADER_TIMESTAMP),
        later.timestamp().to_string()
    );
    assert_eq!(
        verify_received(&correction, &[secret(SECRET)], later),
        Ok(())
    );
}
