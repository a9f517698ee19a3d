//! Validation at configuration time (DESIGN.md, "Decisions: Validation"): every refusal of
//! `PostbackBuilder::build`, the defaults it chooses, its messages, and the JSON shape of a
//! postback.

use std::time::Duration;

use chrono::DateTime;
use postback::model::{
    ConfigError, EventId, HttpMethod, Kind, Level, MAX_DELAY, Method, OfferId, PartnerId, Postback,
    PostbackBuilder, PostbackId, Scope, Status,
};
use postback::template::TemplateError;

const PARTNER: PartnerId = PartnerId::new(7);
const OFFER: OfferId = OfferId::new(42);
const URL: &str = "https://t.example/pb?cid={sub1}&payout={payout}";

fn builder() -> PostbackBuilder {
    Postback::builder(PostbackId::new(1)).url(URL)
}

/// A valid specific conversion postback, to spoil one setting at a time.
fn specific() -> PostbackBuilder {
    builder().partner(PARTNER).offer(OFFER)
}

fn template_error(url: &str) -> ConfigError {
    specific().url(url).build().unwrap_err()
}

// ---------------------------------------------------------------------------------------------
// Refusals, one per ConfigError variant.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cpc_postback_that_is_not_specific_is_refused() {
    assert_eq!(
        builder()
            .partner(PARTNER)
            .kind(Kind::Cpc)
            .level(Level::PartnerGlobal)
            .build(),
        Err(ConfigError::CpcNotSpecific(Level::PartnerGlobal))
    );
    assert_eq!(
        builder()
            .offer(OFFER)
            .kind(Kind::Cpc)
            .level(Level::OfferGlobal)
            .build(),
        Err(ConfigError::CpcNotSpecific(Level::OfferGlobal))
    );
}

#[test]
fn a_cpc_postback_that_is_not_server_to_server_is_refused() {
    for method in [Method::ImagePixel, Method::IframePixel, Method::HtmlCode] {
        assert_eq!(
            specific().kind(Kind::Cpc).method(method).build(),
            Err(ConfigError::CpcNotServerToServer(method)),
            "{method}"
        );
    }
}

#[test]
fn a_postback_with_neither_partner_nor_offer_is_refused() {
    assert_eq!(builder().build(), Err(ConfigError::MissingScope));
}

#[test]
fn a_partner_global_or_specific_postback_without_a_partner_is_refused() {
    assert_eq!(
        builder().level(Level::PartnerGlobal).build(),
        Err(ConfigError::MissingPartner(Level::PartnerGlobal))
    );
    assert_eq!(
        builder().offer(OFFER).level(Level::PartnerGlobal).build(),
        Err(ConfigError::MissingPartner(Level::PartnerGlobal))
    );
    assert_eq!(
        builder().offer(OFFER).level(Level::Specific).build(),
        Err(ConfigError::MissingPartner(Level::Specific))
    );
    // A CPC postback is Specific when unset, so it needs a partner too.
    assert_eq!(
        builder().offer(OFFER).kind(Kind::Cpc).build(),
        Err(ConfigError::MissingPartner(Level::Specific))
    );
}

#[test]
fn an_offer_global_or_specific_postback_without_an_offer_is_refused() {
    assert_eq!(
        builder().level(Level::OfferGlobal).build(),
        Err(ConfigError::MissingOffer(Level::OfferGlobal))
    );
    assert_eq!(
        builder().partner(PARTNER).level(Level::Specific).build(),
        Err(ConfigError::MissingOffer(Level::Specific))
    );
    assert_eq!(
        builder().partner(PARTNER).kind(Kind::Cpc).build(),
        Err(ConfigError::MissingOffer(Level::Specific))
    );
}

#[test]
fn an_offer_global_postback_with_a_partner_is_refused() {
    assert_eq!(
        specific().level(Level::OfferGlobal).build(),
        Err(ConfigError::UnexpectedPartner)
    );
    assert_eq!(
        builder().partner(PARTNER).level(Level::OfferGlobal).build(),
        Err(ConfigError::UnexpectedPartner)
    );
}

#[test]
fn a_partner_global_postback_with_an_offer_is_refused() {
    assert_eq!(
        specific().level(Level::PartnerGlobal).build(),
        Err(ConfigError::UnexpectedOffer)
    );
}

#[test]
fn a_postback_without_a_url_is_refused() {
    assert_eq!(
        Postback::builder(PostbackId::new(1))
            .partner(PARTNER)
            .build(),
        Err(ConfigError::MissingUrl)
    );
    assert_eq!(
        specific().url(" \t\n ").build(),
        Err(ConfigError::MissingUrl)
    );
    assert_eq!(
        specific().method(Method::HtmlCode).code("").build(),
        Err(ConfigError::MissingUrl)
    );
}

#[test]
fn a_relative_url_is_refused() {
    for url in [
        "t.example/pb?cid={sub1}",
        "/pb?cid={sub1}",
        "//t.example/pb?cid={sub1}",
    ] {
        assert_eq!(
            template_error(url),
            ConfigError::Template(TemplateError::NotAbsolute),
            "{url}"
        );
    }
}

#[test]
fn a_url_with_a_scheme_other_than_http_or_https_is_refused() {
    assert_eq!(
        template_error("ftp://t.example/pb?cid={sub1}"),
        ConfigError::Template(TemplateError::Scheme("ftp".to_owned()))
    );
    assert_eq!(
        template_error("javascript:alert({sub1})"),
        ConfigError::Template(TemplateError::Scheme("javascript".to_owned()))
    );
}

#[test]
fn a_macro_in_the_host_is_refused() {
    let url = "https://{sub1}.t.example/pb?cid={sub1}";
    assert_eq!(
        template_error(url),
        ConfigError::Template(TemplateError::MacroInAuthority {
            name: "sub1".to_owned(),
            at: url.find('{').unwrap(),
        })
    );
    let url = "https://t.{offer_id}.example/pb?cid={sub1}";
    assert_eq!(
        template_error(url),
        ConfigError::Template(TemplateError::MacroInAuthority {
            name: "offer_id".to_owned(),
            at: url.find('{').unwrap(),
        })
    );
}

#[test]
fn a_macro_in_the_port_is_refused() {
    let url = "https://t.example:{sub2}/pb?cid={sub1}";
    assert_eq!(
        template_error(url),
        ConfigError::Template(TemplateError::MacroInAuthority {
            name: "sub2".to_owned(),
            at: url.find('{').unwrap(),
        })
    );
}

#[test]
fn a_macro_in_the_scheme_is_refused() {
    let url = "{sub2}://t.example/pb?cid={sub1}";
    assert_eq!(
        template_error(url),
        ConfigError::Template(TemplateError::MacroInAuthority {
            name: "sub2".to_owned(),
            at: 0,
        })
    );
}

#[test]
fn an_unknown_macro_is_refused_with_the_nearest_known_name() {
    let url = "https://t.example/pb?cid={sub1}&payout={payot}";
    assert_eq!(
        template_error(url),
        ConfigError::Template(TemplateError::UnknownMacro {
            name: "payot".to_owned(),
            at: url.find("{payot}").unwrap(),
            suggestion: Some("payout".to_owned()),
        })
    );
    // Names are case-sensitive; the suggestion shows the right case.
    let url = "https://t.example/pb?cid={Sub1}";
    assert_eq!(
        template_error(url),
        ConfigError::Template(TemplateError::UnknownMacro {
            name: "Sub1".to_owned(),
            at: url.find('{').unwrap(),
            suggestion: Some("sub1".to_owned()),
        })
    );
}

#[test]
fn an_unknown_macro_far_from_every_known_name_is_refused_without_a_suggestion() {
    let url = "https://t.example/pb?cid={sub1}&x={zzzzzzzzzzzz}";
    assert_eq!(
        template_error(url),
        ConfigError::Template(TemplateError::UnknownMacro {
            name: "zzzzzzzzzzzz".to_owned(),
            at: url.find("{zzz").unwrap(),
            suggestion: None,
        })
    );
}

#[test]
fn a_server_to_server_postback_without_a_click_id_is_refused() {
    let expected = ConfigError::MissingClickId(
        "{transaction_id}, {sub1}, {sub2}, {sub3}, {sub4}, {sub5}, {sub6}, {sub7}, {sub8}, \
         {sub9}, {sub10}"
            .to_owned(),
    );
    assert_eq!(
        specific()
            .url("https://t.example/pb?payout={payout}")
            .build(),
        Err(expected.clone())
    );
    assert_eq!(
        specific()
            .url("https://t.example/pb?payout={payout}")
            .method(Method::ServerToServer {
                http: HttpMethod::Post,
            })
            .build(),
        Err(expected.clone())
    );
    assert_eq!(
        specific()
            .kind(Kind::Cpc)
            .url("https://t.example/pb")
            .build(),
        Err(expected)
    );
}

#[test]
fn a_delay_over_five_minutes_is_refused() {
    let delay = MAX_DELAY + Duration::from_millis(1);
    assert_eq!(
        specific().delay(delay).build(),
        Err(ConfigError::DelayTooLong(delay))
    );
    assert_eq!(
        specific().delay(Duration::from_secs(3600)).build(),
        Err(ConfigError::DelayTooLong(Duration::from_secs(3600)))
    );
}

#[test]
fn a_delay_on_a_pixel_or_html_postback_is_refused() {
    for method in [Method::ImagePixel, Method::IframePixel, Method::HtmlCode] {
        assert_eq!(
            specific()
                .method(method)
                .delay(Duration::from_secs(10))
                .build(),
            Err(ConfigError::DelayOnPixel(method)),
            "{method}"
        );
    }
}

#[test]
fn a_description_over_1000_characters_is_refused() {
    assert_eq!(
        specific().description("d".repeat(1001)).build(),
        Err(ConfigError::DescriptionTooLong(1001))
    );
    // Characters, not bytes: 1000 two-byte characters are fine, 1001 are not.
    let ok = specific().description("é".repeat(1000)).build().unwrap();
    assert_eq!(ok.description().chars().count(), 1000);
    assert_eq!(
        specific().description("é".repeat(1001)).build(),
        Err(ConfigError::DescriptionTooLong(1001))
    );
}

// ---------------------------------------------------------------------------------------------
// What build() chooses and accepts.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cpc_postback_with_unset_level_and_method_becomes_specific_and_server_to_server_get() {
    let pb = specific().kind(Kind::Cpc).build().unwrap();
    assert_eq!(pb.kind(), Kind::Cpc);
    assert_eq!(pb.level(), Level::Specific);
    assert_eq!(
        pb.scope(),
        Scope::Specific {
            partner: PARTNER,
            offer: OFFER
        }
    );
    assert_eq!(
        pb.method(),
        Method::ServerToServer {
            http: HttpMethod::Get
        }
    );
    // Explicit choices that agree are accepted too, POST included.
    let post = Method::ServerToServer {
        http: HttpMethod::Post,
    };
    let pb = specific()
        .kind(Kind::Cpc)
        .level(Level::Specific)
        .method(post)
        .build()
        .unwrap();
    assert_eq!((pb.level(), pb.method()), (Level::Specific, post));
}

#[test]
fn the_level_is_inferred_from_the_ids_given() {
    let pb = specific().build().unwrap();
    assert_eq!(
        pb.scope(),
        Scope::Specific {
            partner: PARTNER,
            offer: OFFER
        }
    );
    let pb = builder().partner(PARTNER).build().unwrap();
    assert_eq!(pb.scope(), Scope::PartnerGlobal { partner: PARTNER });
    assert_eq!((pb.partner(), pb.offer()), (Some(PARTNER), None));
    let pb = builder().offer(OFFER).build().unwrap();
    assert_eq!(pb.scope(), Scope::OfferGlobal { offer: OFFER });
    assert_eq!((pb.partner(), pb.offer()), (None, Some(OFFER)));
}

#[test]
fn an_unset_method_is_server_to_server_get_and_the_defaults_are_active_conversion() {
    let pb = specific().build().unwrap();
    assert_eq!(pb.method(), Method::S2S);
    assert_eq!(pb.kind(), Kind::Conversion);
    assert_eq!(pb.status(), &Status::Active);
    assert_eq!(pb.delay(), Duration::ZERO);
    assert_eq!(pb.description(), "");
}

#[test]
fn a_delay_of_exactly_five_minutes_is_accepted() {
    let pb = specific().delay(Duration::from_secs(300)).build().unwrap();
    assert_eq!(pb.delay(), Duration::from_secs(300));
    assert_eq!(MAX_DELAY, Duration::from_secs(300));
}

#[test]
fn html_code_is_accepted_without_a_click_id() {
    let code = "<script>var payout = '{payout}';</script>";
    let pb = specific()
        .method(Method::HtmlCode)
        .code(code)
        .build()
        .unwrap();
    assert_eq!(pb.method(), Method::HtmlCode);
    assert_eq!(pb.template().as_str(), code);
    assert!(!pb.template().has_click_id());
}

#[test]
fn an_image_pixel_is_accepted_without_a_click_id() {
    let pb = specific()
        .method(Method::ImagePixel)
        .url("https://t.example/px?payout={payout}")
        .build()
        .unwrap();
    assert_eq!(pb.method(), Method::ImagePixel);
    assert!(!pb.template().has_click_id());
}

#[test]
fn to_builder_rebuilds_an_equal_postback_and_validates_changes_again() {
    let pb = specific()
        .kind(Kind::event(EventId::new(3)))
        .description("install")
        .delay(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(pb.to_builder().build(), Ok(pb.clone()));
    assert_eq!(
        pb.to_builder().method(Method::ImagePixel).build(),
        Err(ConfigError::DelayOnPixel(Method::ImagePixel))
    );
    assert_eq!(
        pb.to_builder().level(Level::OfferGlobal).build(),
        Err(ConfigError::UnexpectedPartner)
    );
}

// ---------------------------------------------------------------------------------------------
// Messages.
// ---------------------------------------------------------------------------------------------

#[test]
fn every_config_error_message_is_lowercase_led_and_says_what_to_do() {
    let http = |m: &str| -> ConfigError {
        match specific().url(m).build() {
            Err(e) => e,
            Ok(_) => panic!("{m} was accepted"),
        }
    };
    let cases: Vec<(ConfigError, &str)> = vec![
        (
            ConfigError::CpcNotSpecific(Level::PartnerGlobal),
            "not partner-global: set the level to Specific or leave it unset",
        ),
        (
            ConfigError::CpcNotServerToServer(Method::ImagePixel),
            "not image pixel: choose server-to-server or leave the method unset",
        ),
        (ConfigError::MissingScope, "set at least one"),
        (
            ConfigError::MissingPartner(Level::Specific),
            "needs a partner: set the partner",
        ),
        (
            ConfigError::MissingOffer(Level::OfferGlobal),
            "needs an offer: set the offer",
        ),
        (ConfigError::UnexpectedPartner, "remove the partner"),
        (ConfigError::UnexpectedOffer, "remove the offer"),
        (ConfigError::MissingUrl, "set the partner's postback URL"),
        (
            http("t.example/pb?cid={sub1}"),
            "start it with https:// or http://",
        ),
        (
            http("ftp://t.example/pb?cid={sub1}"),
            "uses `ftp`: only http and https",
        ),
        (
            http("https://{sub1}.t.example/pb"),
            "write the host literally",
        ),
        (
            http("https://t.example/pb?cid={sub1}&p={payot}"),
            "did you mean `payout`?",
        ),
        (
            http("https://t.example/pb?p={payout}"),
            "add one of {transaction_id}, {sub1},",
        ),
        (
            ConfigError::DelayTooLong(Duration::from_secs(301)),
            "shorten it to 5 minutes or less",
        ),
        (
            ConfigError::DelayOnPixel(Method::IframePixel),
            "remove the delay",
        ),
        (ConfigError::DescriptionTooLong(1001), "shorten it"),
    ];
    for (err, phrase) in cases {
        let msg = err.to_string();
        assert!(
            msg.starts_with(|c: char| c.is_lowercase()),
            "not lowercase-led: {msg}"
        );
        assert!(msg.contains(phrase), "{msg:?} lacks {phrase:?}");
    }
}

#[test]
fn error_messages_use_the_right_article_before_levels_and_methods() {
    let msgs = [
        ConfigError::MissingOffer(Level::OfferGlobal).to_string(),
        ConfigError::MissingPartner(Level::PartnerGlobal).to_string(),
        ConfigError::DelayOnPixel(Method::ImagePixel).to_string(),
        ConfigError::DelayOnPixel(Method::IframePixel).to_string(),
        ConfigError::DelayOnPixel(Method::HtmlCode).to_string(),
    ];
    for msg in &msgs {
        for bad in ["a offer", "a image", "a iframe", "a HTML"] {
            assert!(!msg.contains(bad), "{msg:?} contains {bad:?}");
        }
    }
    assert_eq!(
        msgs,
        [
            "a postback at the offer-global level needs an offer: set the offer",
            "a postback at the partner-global level needs a partner: set the partner",
            "a firing delay applies only to server-to-server postbacks, not to image pixel \
             postbacks: remove the delay",
            "a firing delay applies only to server-to-server postbacks, not to iframe pixel \
             postbacks: remove the delay",
            "a firing delay applies only to server-to-server postbacks, not to HTML code \
             postbacks: remove the delay",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// JSON.
// ---------------------------------------------------------------------------------------------

fn full() -> Postback {
    Postback::builder(PostbackId::new(5))
        .partner(PARTNER)
        .offer(OFFER)
        .kind(Kind::event(EventId::new(3)))
        .method(Method::ServerToServer {
            http: HttpMethod::Post,
        })
        .status(Status::Disabled {
            reason: "25 failed deliveries".to_owned(),
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        })
        .description("install postback")
        .delay(Duration::from_secs(30))
        .url(URL)
        .build()
        .unwrap()
}

fn full_json() -> serde_json::Value {
    serde_json::json!({
        "id": 5,
        "level": "specific",
        "partner": 7,
        "offer": 42,
        "kind": { "type": "event", "event": 3 },
        "method": { "type": "server_to_server", "http": "POST" },
        "status": {
            "state": "disabled",
            "reason": "25 failed deliveries",
            "at": "2023-11-14T22:13:20Z"
        },
        "description": "install postback",
        "delay_ms": 30000,
        "template": {
            "source": "https://t.example/pb?cid={sub1}&payout={payout}",
            "context": "url",
            "options": {
                "dialect": "brace",
                "unknown": "refuse",
                "empty": "send_empty",
                "currency_first": true,
                "require_click_id": true
            },
            "click_id_macros": [10]
        }
    })
}

#[test]
fn a_postback_serializes_to_the_pinned_json_shape() {
    assert_eq!(serde_json::to_value(full()).unwrap(), full_json());
}

#[test]
fn a_postback_deserializes_from_its_json_to_an_equal_postback() {
    let back: Postback = serde_json::from_value(full_json()).unwrap();
    assert_eq!(back, full());
    let text = serde_json::to_string(&full()).unwrap();
    let back: Postback = serde_json::from_str(&text).unwrap();
    assert_eq!(back, full());
}

#[test]
fn a_minimal_postback_omits_the_empty_description_and_round_trips() {
    let pb = builder().offer(OFFER).build().unwrap();
    let json = serde_json::to_value(&pb).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "id": 1,
            "level": "offer_global",
            "offer": 42,
            "kind": { "type": "conversion" },
            "method": { "type": "server_to_server", "http": "GET" },
            "status": { "state": "active" },
            "delay_ms": 0,
            "template": {
                "source": URL,
                "context": "url",
                "options": {
                    "dialect": "brace",
                    "unknown": "refuse",
                    "empty": "send_empty",
                    "currency_first": true,
                    "require_click_id": true
                },
                "click_id_macros": [10]
            }
        })
    );
    assert_eq!(serde_json::from_value::<Postback>(json).unwrap(), pb);
}

fn invalid(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut json = full_json();
    edit(&mut json);
    match serde_json::from_value::<Postback>(json) {
        Err(e) => e.to_string(),
        Ok(p) => panic!("accepted {p:?}"),
    }
}

#[test]
fn deserializing_a_cpc_postback_at_partner_global_level_fails() {
    let err = invalid(|j| {
        let o = j.as_object_mut().unwrap();
        o.insert("level".into(), "partner_global".into());
        o.remove("offer");
        o.insert("kind".into(), serde_json::json!({ "type": "cpc" }));
    });
    assert_eq!(
        err,
        ConfigError::CpcNotSpecific(Level::PartnerGlobal).to_string()
    );
}

#[test]
fn deserializing_a_url_with_an_unknown_macro_fails() {
    let err = invalid(|j| {
        j["template"]["source"] = "https://t.example/pb?cid={sub1}&p={payot}".into();
    });
    assert!(
        err.contains("unknown macro `payot`") && err.contains("did you mean `payout`?"),
        "{err}"
    );
}

#[test]
fn deserializing_other_invalid_postbacks_fails() {
    let err = invalid(|j| j["delay_ms"] = 300_001.into());
    assert_eq!(
        err,
        ConfigError::DelayTooLong(Duration::from_millis(300_001)).to_string()
    );
    let err = invalid(|j| {
        j.as_object_mut().unwrap().remove("partner");
    });
    assert!(err.contains("partner"), "{err}");
    let err = invalid(|j| j["template"]["source"] = "ftp://t.example/pb?cid={sub1}".into());
    assert!(err.contains("only http and https"), "{err}");
    let err = invalid(|j| j["template"]["source"] = "https://t.example/pb?p={payout}".into());
    assert!(err.contains("carries no click id"), "{err}");
    let err = invalid(|j| j["method"] = serde_json::json!({ "type": "image_pixel" }));
    assert_eq!(
        err,
        ConfigError::DelayOnPixel(Method::ImagePixel).to_string()
    );
}
