//! Every tracker preset expands to the exact documented URL (with `{currency}` moved first).

use postback::model::{PostbackId, ResponseCheck};
use postback::presets::{PresetError, PresetParams, Tracker};
use postback::template::{Amount, Currency, Lint, Macro, MacroValues, Value};

/// One conversion, as a network would hold it.
struct Conversion;

impl MacroValues for Conversion {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        Some(match m {
            Macro::SUB1 => Value::Text("clk-1"),
            Macro::SUB2 => Value::Text("clk 2"),
            Macro::PAYOUT => Value::Amount(Amount::new(1250, 2)),
            Macro::SALE_AMOUNT => Value::Amount(Amount::new(4999, 2)),
            Macro::CURRENCY => Value::Currency(Currency::new("EUR").ok()?),
            Macro::CONVERSION_ID => Value::Text("cv-9"),
            Macro::CONVERSION_STATUS => Value::Text("approved"),
            Macro::EVENT_NAME => Value::Text("first deposit"),
            _ => return None,
        })
    }
}

fn expand(tracker: Tracker, params: &PresetParams) -> String {
    let preset = tracker.preset(params).unwrap();
    preset.template().unwrap().expand(&Conversion).unwrap()
}

#[test]
fn voluum_preset_sends_cid_payout_txid_currency_and_event() {
    let p = PresetParams::new("vol.example.com");
    assert_eq!(
        Tracker::Voluum.preset(&p).unwrap().url(),
        "https://vol.example.com/postback?cid={sub1}&payout={payout}&txid={conversion_id}&currency={currency}&et={event_name}"
    );
    assert_eq!(
        expand(Tracker::Voluum, &p),
        "https://vol.example.com/postback?currency=EUR&cid=clk-1&payout=12.50&txid=cv-9&et=first%20deposit"
    );
}

#[test]
fn binom_preset_uses_click_php_and_cnv_parameters() {
    assert_eq!(
        expand(Tracker::Binom, &PresetParams::new("b.example")),
        "https://b.example/click.php?cnv_currency=EUR&cnv_id=clk-1&payout=12.50&cnv_status=approved"
    );
}

#[test]
fn binom_v2_preset_uses_the_click_path() {
    assert_eq!(
        expand(Tracker::BinomV2, &PresetParams::new("b.example")),
        "https://b.example/click?cnv_currency=EUR&cnv_id=clk-1&payout=12.50&cnv_status=approved"
    );
}

#[test]
fn keitaro_preset_puts_the_key_in_the_path() {
    assert_eq!(
        expand(
            Tracker::Keitaro,
            &PresetParams::new("k.example").key("a1b2c3")
        ),
        "https://k.example/a1b2c3/postback?currency=EUR&subid=clk-1&payout=12.50&tid=cv-9&status=approved"
    );
}

#[test]
fn keitaro_preset_without_a_key_is_refused() {
    assert_eq!(
        Tracker::Keitaro.preset(&PresetParams::new("k.example")),
        Err(PresetError::MissingKey {
            tracker: Tracker::Keitaro,
            what: "postback key"
        })
    );
}

#[test]
fn redtrack_preset_sends_sum_type_status_and_event_id() {
    assert_eq!(
        expand(Tracker::RedTrack, &PresetParams::new("r.example")),
        "https://r.example/postback?clickid=clk-1&sum=12.50&type=first%20deposit&status=approved&rdtk_event_id=cv-9"
    );
}

#[test]
fn bemob_preset_sends_cid_payout_txid_status() {
    assert_eq!(
        expand(Tracker::BeMob, &PresetParams::new("bm.example")),
        "https://bm.example/postback?cid=clk-1&payout=12.50&txid=cv-9&status=approved"
    );
}

#[test]
fn funnelflux_preset_sends_hit_tx_rev() {
    assert_eq!(
        expand(Tracker::FunnelFluxPro, &PresetParams::new("ff.example")),
        "https://ff.example/pb/?hit=clk-1&tx=cv-9&rev=12.50"
    );
}

#[test]
fn peerclick_preset_defaults_to_its_own_domain() {
    assert_eq!(
        expand(Tracker::PeerClick, &PresetParams::default_domain()),
        "https://pstb.peerclick.com/postback?currency=EUR&cid=clk-1&payout=12.50&txid=cv-9&status=approved"
    );
}

#[test]
fn clickflare_preset_sends_click_id_and_event_type() {
    assert_eq!(
        expand(Tracker::ClickFlare, &PresetParams::new("cf.example")),
        "https://cf.example/cf/cv?click_id=clk-1&payout=12.50&txid=cv-9&ct=first%20deposit"
    );
}

#[test]
fn adsbridge_preset_sends_tid_amt_txid() {
    assert_eq!(
        expand(Tracker::AdsBridge, &PresetParams::new("sub.adsbtrk.com")),
        "https://sub.adsbtrk.com/trackpixel/track?tid=clk-1&amt=12.50&txid=cv-9"
    );
}

#[test]
fn everflow_preset_sends_nid_transaction_amount_and_order() {
    assert_eq!(
        expand(
            Tracker::Everflow,
            &PresetParams::new("ef.example").key("77")
        ),
        "https://ef.example/?nid=77&transaction_id=clk-1&amount=49.99&order_id=cv-9"
    );
}

#[test]
fn tune_preset_needs_offer_and_token_and_checks_the_body() {
    let p = PresetParams::new("net.go2cloud.org")
        .offer("12")
        .key("s3cr&t");
    let preset = Tracker::Tune.preset(&p).unwrap();
    assert_eq!(
        preset.template().unwrap().expand(&Conversion).unwrap(),
        "https://net.go2cloud.org/aff_lsr?offer_id=12&transaction_id=clk-1&amount=49.99&security_token=s3cr%26t"
    );
    let check = preset.response_check().unwrap();
    assert_eq!(
        check,
        &ResponseCheck::MustNotContain("success=false".into())
    );
    assert!(!check.accepts(b"success=false; err_msg=Invalid transaction"));
    assert!(check.accepts(b"success=true;"));
    assert!(
        !format!("{preset:?}").contains("s3cr"),
        "the token must not show in Debug"
    );
    assert_eq!(
        Tracker::Tune.preset(&PresetParams::new("net.go2cloud.org").key("t")),
        Err(PresetError::MissingKey {
            tracker: Tracker::Tune,
            what: "offer id"
        })
    );
}

#[test]
fn the_click_id_can_travel_in_another_macro() {
    let p = PresetParams::new("vol.example.com").click_id(Macro::SUB2);
    assert_eq!(
        expand(Tracker::Voluum, &p),
        "https://vol.example.com/postback?currency=EUR&cid=clk%202&payout=12.50&txid=cv-9&et=first%20deposit"
    );
}

#[test]
fn currency_is_moved_first_and_the_lint_says_so() {
    let t = Tracker::Voluum
        .preset(&PresetParams::new("v.example"))
        .unwrap()
        .template()
        .unwrap();
    assert_eq!(t.lints(), [Lint::CurrencyMoved { from: 4 }]);
}

#[test]
fn a_domain_with_a_scheme_or_path_is_refused() {
    for bad in [
        "https://v.example",
        "v.example/x",
        "v.example?x",
        "us er@v.example",
        "{sub1}.example",
    ] {
        assert_eq!(
            Tracker::Voluum.preset(&PresetParams::new(bad)),
            Err(PresetError::InvalidDomain(bad.to_owned())),
            "{bad}"
        );
    }
    assert_eq!(
        Tracker::Voluum.preset(&PresetParams::new(" ")),
        Err(PresetError::MissingDomain(Tracker::Voluum))
    );
}

#[test]
fn every_preset_builds_a_valid_server_to_server_postback() {
    for t in Tracker::ALL {
        let params = PresetParams::new("t.example").key("k").offer("1");
        let pb = t
            .preset(&params)
            .unwrap()
            .postback(PostbackId::new(1))
            .partner(1.into())
            .build();
        let pb = pb.unwrap_or_else(|e| panic!("{t}: {e}"));
        assert!(pb.template().has_click_id(), "{t}");
        assert_eq!(pb.response_check().is_some(), t == Tracker::Tune, "{t}");
    }
}

#[test]
fn a_keitaro_key_in_the_path_is_kept_out_of_debug_output() {
    let preset = Tracker::Keitaro
        .preset(&PresetParams::new("k.example").key("Sup3rS3cret"))
        .unwrap();
    assert!(!format!("{preset:?}").contains("Sup3rS3cret"));
    let pb = preset
        .postback(PostbackId::new(1))
        .partner(1.into())
        .build()
        .unwrap();
    assert_eq!(pb.secrets(), ["Sup3rS3cret".to_owned()]);
    let shown = format!("{pb:?}");
    assert!(!shown.contains("Sup3rS3cret"), "{shown}");
    assert!(shown.contains("https://k.example/***/postback"), "{shown}");
}
