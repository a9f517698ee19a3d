//! Properties of signed postbacks: whatever the URL, body, key, time and secrets, what the engine
//! sends verifies on the partner's side; and any single changed byte of the payload, the id, the
//! timestamp or the signature fails the verification.
#![cfg(feature = "signing")]

use chrono::{DateTime, Utc};
use postback::engine::{Engine, EngineConfig};
use postback::model::{HttpMethod, Method, PartnerId, Postback, PostbackId, TriggerId};
use postback::registry::{Registry, Trigger};
use postback::signing::{
    self, DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, QueryNames, Secret,
    Signing, Style,
};
use postback::template::{Macro, ValueMap};
use proptest::prelude::*;

const ORIGIN: &str = "https://tracker.example";

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap()
}

/// 1 to 4 distinct secrets of 24 to 64 bytes.
fn secrets() -> impl Strategy<Value = Vec<Secret>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 24..=64), 1..=4).prop_map(|keys| {
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        keys.iter()
            .map(|k| Secret::from_bytes(k).unwrap())
            .collect()
    })
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![
        Just(Style::Headers),
        Just(Style::Query(QueryNames::new("sig", "ts"))),
        Just(Style::Query(QueryNames::new("signature", "t").id("id"))),
    ]
}

fn unreserved(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._~-]{{1,{max}}}")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn whatever_the_engine_sends_signed_verifies_with_each_of_its_secrets(
        path in "[a-z0-9]{1,12}",
        click in "\\PC{1,40}",
        trigger in unreserved(40),
        timestamp in 0i64..4_102_444_800,
        secrets in secrets(),
        style in style(),
        post in any::<bool>(),
    ) {
        let method = Method::ServerToServer {
            http: if post { HttpMethod::Post } else { HttpMethod::Get },
        };
        let signing = Signing::new(style.clone(), secrets.clone()).unwrap();
        let pb = Postback::builder(PostbackId::new(3))
            .partner(PartnerId::new(7))
            .url(format!("{ORIGIN}/{path}?cid={{sub1}}"))
            .method(method)
            .signing(signing)
            .build()
            .unwrap();
        let mut reg = Registry::new();
        reg.insert(pb).unwrap();
        let mut e = Engine::new(EngineConfig::default(), reg);
        let now = at(timestamp);
        let trigger = Trigger::conversion(TriggerId::new(&trigger).unwrap(), PartnerId::new(7), 1.into());
        let fired = e.handle_trigger(now, &trigger, &ValueMap::new().with(Macro::SUB1, click.as_str()));
        prop_assert_eq!(fired.deliveries.len(), 1);
        let tx = e.poll_transmit(now).unwrap();
        let url = tx.request.uri().to_string();
        for s in &secrets {
            let one = std::slice::from_ref(s);
            match &style {
                Style::Headers => {
                    let h = |n: &str| tx.request.headers()[n].to_str().unwrap().to_owned();
                    prop_assert_eq!(h(HEADER_ID), tx.key.to_text());
                    prop_assert_eq!(h(HEADER_TIMESTAMP), timestamp.to_string());
                    let payload = signing::payload(tx.request.method(), &url, tx.request.body());
                    prop_assert_eq!(
                        signing::verify(&h(HEADER_ID), &h(HEADER_TIMESTAMP), &h(HEADER_SIGNATURE), &payload, one, now, DEFAULT_TOLERANCE),
                        Ok(())
                    );
                }
                Style::Query(names) => {
                    prop_assert_eq!(
                        signing::verify_url(tx.request.method(), &url, tx.request.body(), names, one, now, DEFAULT_TOLERANCE),
                        Ok(())
                    );
                }
                _ => unreachable!("the strategy makes these two"),
            }
        }
    }

    #[test]
    fn any_single_changed_byte_of_payload_id_timestamp_or_signature_fails_verification(
        id in unreserved(48),
        timestamp in 0i64..4_102_444_800,
        payload in prop::collection::vec(any::<u8>(), 0..160),
        key in prop::collection::vec(any::<u8>(), 24..=64),
        target in 0usize..4,
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        ascii in 0x20u8..0x7f,
        skew in -300i64..=300,
    ) {
        let secrets = [Secret::from_bytes(&key).unwrap()];
        let ts = timestamp.to_string();
        let sig = signing::sign(&id, timestamp, &payload, &secrets).unwrap();
        let now = at(timestamp + skew);
        let verify = |id: &str, ts: &str, sig: &str, payload: &[u8]| {
            signing::verify(id, ts, sig, payload, &secrets, now, DEFAULT_TOLERANCE)
        };
        prop_assert_eq!(verify(&id, &ts, &sig, &payload), Ok(()));

        // Change one byte of one of them to a different byte (printable ASCII in the texts).
        let change = |text: &str| -> Option<String> {
            let mut b = text.as_bytes().to_vec();
            let i = position.index(b.len());
            (b[i] != ascii).then(|| {
                b[i] = ascii;
                String::from_utf8(b).unwrap()
            })
        };
        let refused = match target {
            0 if !payload.is_empty() => {
                let mut p = payload.clone();
                let i = position.index(p.len());
                p[i] = if p[i] == byte { byte.wrapping_add(1) } else { byte };
                Some(verify(&id, &ts, &sig, &p))
            }
            1 => change(&id).map(|id| verify(&id, &ts, &sig, &payload)),
            2 => change(&ts).map(|ts| verify(&id, &ts, &sig, &payload)),
            3 => change(&sig).map(|sig| verify(&id, &ts, &sig, &payload)),
            _ => None,
        };
        if let Some(result) = refused {
            prop_assert!(result.is_err(), "a changed byte verified: {:?}", result);
        }
    }

    #[test]
    fn a_timestamp_verifies_within_the_tolerance_either_way_and_never_beyond(
        timestamp in 1_000_000i64..4_102_444_800,
        skew in -1000i64..=1000,
    ) {
        let secrets = [Secret::from_bytes(&[9; 32]).unwrap()];
        let sig = signing::sign("k.1.conversion.0", timestamp, b"https://t.example/", &secrets).unwrap();
        let result = signing::verify(
            "k.1.conversion.0",
            &timestamp.to_string(),
            &sig,
            b"https://t.example/",
            &secrets,
            at(timestamp + skew),
            DEFAULT_TOLERANCE,
        );
        prop_assert_eq!(result.is_ok(), skew.abs() <= 300, "{:?}", result);
    }
}
