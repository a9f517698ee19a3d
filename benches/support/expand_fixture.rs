// The templates, values and floor pieces shared by `benches/expand.rs` and
// `examples/expand_instructions.rs` (included into both, so they measure the same thing). The
// including file brings the `use` items.

/// The WHATWG component percent-encode set, as the crate uses for query values.
const COMPONENT: &AsciiSet = &CONTROLS
    // query set
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    // path set
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'^')
    // userinfo set
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'|')
    // component set
    .add(b'$')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b',');

/// 61 bytes, 2 macros.
const SHORT: &str = "https://t.example.com/pb?cid={transaction_id}&payout={payout}";

/// 238 bytes, 12 macros.
const TYPICAL: &str = "https://tracker.example.com/postback?currency={currency}\
    &clickid={transaction_id}&sub1={sub1}&sub2={sub2}&sub3={sub3}&offer={offer_id}\
    &aff={affiliate_id}&payout={payout}&sale={sale_amount}&order={order_id}&geo={country}\
    &event={event_name}";

/// 992 bytes, 38 macros (32 distinct).
const LONG: &str = "https://postback.tracker-example.com/api/v2/conversion/postback?currency={currency}\
    &clickid={transaction_id}&txid={transaction_id}&aff_sub={sub1}&aff_sub2={sub2}\
    &aff_sub3={sub3}&aff_sub4={sub4}&aff_sub5={sub5}&sub6={sub6}&sub7={sub7}&sub8={sub8}\
    &adv_sub={adv1}&adv_sub2={adv2}&adv_sub3={adv3}&offer_id={offer_id}&aff_id={affiliate_id}\
    &payout={payout}&amount={payout_amount}&revenue={revenue}&sale_amount={sale_amount}\
    &order_id={order_id}&conversion_id={conversion_id}&status={conversion_status}&geo={country}\
    &device={device_type}&ip={session_ip}&source={source_id}&coupon={coupon_code}\
    &event_id={event_id}&event={event_name}&ts={timestamp}&click_ts={click_timestamp}\
    &dedup={delivery_id}&cb={transaction_id}-{sub1}&ref={offer_id}.{affiliate_id}&p2={payout}\
    &utm_source=network&utm_medium=server_to_server\
    &utm_campaign=postback_long_template_for_benchmarks&utm_content=conversion_postback\
    &utm_term=affiliate_network_partner&lang=en&fmt=plain&v=2&mode=live&region=eu-central\
    &channel=affiliate_s2s";

/// One conversion, as a network's own code would hold it.
struct Conversion {
    transaction_id: String,
    subs: [String; 10],
    advs: [String; 5],
    offer_id: i64,
    affiliate_id: i64,
    payout: Amount,
    revenue: Amount,
    sale_amount: Amount,
    currency: Currency,
    order_id: String,
    conversion_id: String,
    conversion_status: String,
    country: String,
    device_type: String,
    session_ip: String,
    source_id: String,
    coupon_code: String,
    event_id: i64,
    event_name: String,
    timestamp: i64,
    click_timestamp: i64,
    delivery_id: String,
}

impl MacroValues for Conversion {
    fn value(&self, m: Macro) -> Option<Value<'_>> {
        Some(match m {
            Macro::TRANSACTION_ID => Value::Text(&self.transaction_id),
            Macro::SUB1 => Value::Text(&self.subs[0]),
            Macro::SUB2 => Value::Text(&self.subs[1]),
            Macro::SUB3 => Value::Text(&self.subs[2]),
            Macro::SUB4 => Value::Text(&self.subs[3]),
            Macro::SUB5 => Value::Text(&self.subs[4]),
            Macro::SUB6 => Value::Text(&self.subs[5]),
            Macro::SUB7 => Value::Text(&self.subs[6]),
            Macro::SUB8 => Value::Text(&self.subs[7]),
            Macro::SUB9 => Value::Text(&self.subs[8]),
            Macro::SUB10 => Value::Text(&self.subs[9]),
            Macro::ADV1 => Value::Text(&self.advs[0]),
            Macro::ADV2 => Value::Text(&self.advs[1]),
            Macro::ADV3 => Value::Text(&self.advs[2]),
            Macro::ADV4 => Value::Text(&self.advs[3]),
            Macro::ADV5 => Value::Text(&self.advs[4]),
            Macro::OFFER_ID => Value::Int(self.offer_id),
            Macro::AFFILIATE_ID => Value::Int(self.affiliate_id),
            Macro::PAYOUT | Macro::PAYOUT_AMOUNT => Value::Amount(self.payout),
            Macro::REVENUE => Value::Amount(self.revenue),
            Macro::SALE_AMOUNT => Value::Amount(self.sale_amount),
            Macro::CURRENCY => Value::Currency(self.currency),
            Macro::ORDER_ID => Value::Text(&self.order_id),
            Macro::CONVERSION_ID => Value::Text(&self.conversion_id),
            Macro::CONVERSION_STATUS => Value::Text(&self.conversion_status),
            Macro::COUNTRY => Value::Text(&self.country),
            Macro::DEVICE_TYPE => Value::Text(&self.device_type),
            Macro::SESSION_IP => Value::Text(&self.session_ip),
            Macro::SOURCE_ID => Value::Text(&self.source_id),
            Macro::COUPON_CODE => Value::Text(&self.coupon_code),
            Macro::EVENT_ID => Value::Int(self.event_id),
            Macro::EVENT_NAME => Value::Text(&self.event_name),
            Macro::TIMESTAMP => Value::Int(self.timestamp),
            Macro::CLICK_TIMESTAMP => Value::Int(self.click_timestamp),
            Macro::DELIVERY_ID => Value::Text(&self.delivery_id),
            _ => return None,
        })
    }
}

fn conversion() -> Conversion {
    Conversion {
        transaction_id: "102af3e5c0b84c3f9f2a7e61".into(),
        subs: [
            "fb_ads&campaign=spring sale".into(), // `&`, `=`, space
            "summer €5 off".into(),               // non-ASCII, space
            String::new(),                        // empty: sent as `aff_sub3=`
            "adset_17".into(),
            "creative-3".into(),
            "placement feed".into(),
            "v2.1".into(),
            "a+b".into(),
            "50% off".into(),
            "k=v;x".into(),
        ],
        advs: [
            "adv-1".into(),
            "adv 2".into(),
            "Ünïcödé".into(),
            "adv_4".into(),
            "x/y".into(),
        ],
        offer_id: 1234,
        affiliate_id: 77,
        payout: Amount::new(1250, 2),
        revenue: Amount::new(1999, 2),
        sale_amount: Amount::new(9999, 2),
        currency: Currency::new("EUR").expect("valid code"),
        order_id: "ORD-2024/0001".into(),
        conversion_id: "c-7f3a9b".into(),
        conversion_status: "approved".into(),
        country: "DE".into(),
        device_type: "mobile".into(),
        session_ip: "203.0.113.7".into(),
        source_id: "src:news/feed".into(),
        coupon_code: "SAVE 10%".into(),
        event_id: 3,
        event_name: "first deposit".into(),
        timestamp: 1_718_000_000,
        click_timestamp: 1_717_990_000,
        delivery_id: "d-000042".into(),
    }
}

/// The raw text of a value, as the peers get it: amounts and integers already formatted.
fn raw_text(v: Value<'_>) -> String {
    match v {
        Value::Text(s) => s.to_owned(),
        Value::Int(n) => n.to_string(),
        Value::Amount(a) => a.to_string(),
        Value::Currency(c) => c.to_string(),
        other => panic!("not used here: {other:?}"),
    }
}
