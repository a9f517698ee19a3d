//! The names of the [`Worker`](crate::Worker)'s metrics and the values of their labels.
//!
//! The worker reports through the [`metrics`] facade: install any recorder (a Prometheus
//! exporter, a StatsD one, a test's) and they appear; without one they cost a branch. Its
//! `tracing` spans and events go to whatever subscriber is installed. The core stays free of
//! both: it hands the data out in its results.
//!
//! Every label has a bounded set of values: no URL, host, click id, key or postback id is ever a
//! label (per-postback and per-host figures are [`Store::stats`](crate::Store::stats)'s). The
//! table of names, kinds and labels is in the crate's README.

use postback::delivery::FailureClass;

/// Counter: deliveries created by triggers through a [`WorkerHandle`](crate::WorkerHandle).
/// Label `state`: `scheduled` or `held` (created held: the postback is disabled).
pub const DELIVERIES_CREATED: &str = "postback_deliveries_created_total";
/// Counter: deliveries delivered (a completion written).
pub const DELIVERIES_DELIVERED: &str = "postback_deliveries_delivered_total";
/// Counter: deliveries that ended without delivering (attempts used, a terminal failure, local
/// refusals, a failed test fire, a deleted postback).
pub const DELIVERIES_GAVE_UP: &str = "postback_deliveries_gave_up_total";
/// Counter: exhausted deliveries sent again through [`WorkerHandle::replay`](crate::WorkerHandle::replay).
pub const DELIVERIES_REPLAYED: &str = "postback_deliveries_replayed_total";
/// Counter: failed attempts. Labels `class` (see [`class_label`]) and `counted` (`true` or
/// `false`: whether it counted toward the retry and disable limits).
pub const ATTEMPTS_FAILED: &str = "postback_attempts_failed_total";
/// Histogram, seconds: from handing a request to the transport to its result (real time).
/// Label `outcome`: `success` or `failure`.
pub const ATTEMPT_DURATION: &str = "postback_attempt_duration_seconds";
/// Counter: postbacks disabled automatically by this worker's completions.
pub const POSTBACKS_DISABLED: &str = "postback_postbacks_disabled_total";
/// Counter: notifications handed to the sink and marked done.
pub const NOTIFICATIONS_SENT: &str = "postback_notifications_sent_total";
/// Counter: claims whose lease ran out without a completion (their claimant died or hung),
/// found when the delivery was claimed again ([`Claimed::interrupted`](crate::Claimed)).
pub const CLAIMS_EXPIRED: &str = "postback_claims_expired_total";
/// Counter: results dropped because the lease was lost meanwhile
/// ([`Completion::LeaseLost`](crate::Completion::LeaseLost)).
pub const RESULTS_LEASE_LOST: &str = "postback_results_lease_lost_total";
/// Gauge: deliveries scheduled (including those out under a lease), store-wide.
pub const PENDING: &str = "postback_deliveries_pending";
/// Gauge: deliveries held, store-wide.
pub const HELD: &str = "postback_deliveries_held";
/// Gauge: deliveries that gave up (exhausted), store-wide.
pub const EXHAUSTED: &str = "postback_deliveries_exhausted";
/// Gauge: pending deliveries claimed and not completed (out under a lease, or left by a
/// claimant that died), store-wide.
pub const LEASED: &str = "postback_deliveries_leased";
/// Gauge, seconds: how late the oldest due delivery is (0 when nothing is overdue).
pub const DUE_LAG: &str = "postback_due_lag_seconds";

/// The value of the `class` label of a failure: one of `http_3xx`, `http_4xx`, `http_5xx`,
/// `http_other`, `timeout`, `connect`, `dns`, `tls`, `body_check`, `forbidden`, `local`,
/// `interrupted`, `rejected`, `other`. HTTP statuses are grouped by hundred, so the label has
/// fourteen values at most.
pub fn class_label(c: &FailureClass) -> &'static str {
    match c {
        FailureClass::Status(s) => match s {
            300..=399 => "http_3xx",
            400..=499 => "http_4xx",
            500..=599 => "http_5xx",
            _ => "http_other",
        },
        FailureClass::Timeout => "timeout",
        FailureClass::Connect => "connect",
        FailureClass::Dns => "dns",
        FailureClass::Tls => "tls",
        FailureClass::BodyCheck => "body_check",
        FailureClass::Forbidden => "forbidden",
        FailureClass::Local => "local",
        FailureClass::Interrupted => "interrupted",
        FailureClass::Rejected(_) => "rejected",
        _ => "other",
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Describe every metric to the installed recorder (once, when a worker starts).
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(DELIVERIES_CREATED, "Deliveries created by triggers.");
    describe_counter!(DELIVERIES_DELIVERED, "Deliveries delivered.");
    describe_counter!(
        DELIVERIES_GAVE_UP,
        "Deliveries that ended without delivering."
    );
    describe_counter!(DELIVERIES_REPLAYED, "Exhausted deliveries sent again.");
    describe_counter!(ATTEMPTS_FAILED, "Failed attempts, by class and counted.");
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "From handing a request to the transport to its result."
    );
    describe_counter!(POSTBACKS_DISABLED, "Postbacks disabled automatically.");
    describe_counter!(NOTIFICATIONS_SENT, "Notifications handed to the sink.");
    describe_counter!(
        CLAIMS_EXPIRED,
        "Claims whose lease ran out without a completion."
    );
    describe_counter!(RESULTS_LEASE_LOST, "Results dropped: the lease was lost.");
    describe_gauge!(PENDING, "Deliveries scheduled.");
    describe_gauge!(HELD, "Deliveries held.");
    describe_gauge!(EXHAUSTED, "Deliveries that gave up.");
    describe_gauge!(LEASED, "Deliveries claimed and not completed.");
    describe_gauge!(
        DUE_LAG,
        Unit::Seconds,
        "How late the oldest due delivery is."
    );
}

/// A failed attempt.
pub(crate) fn failed(class: &FailureClass, counted: bool, n: u64) {
    metrics::counter!(ATTEMPTS_FAILED, "class" => class_label(class), "counted" => yes_no(counted))
        .increment(n);
}

/// Deliveries created by a trigger.
pub(crate) fn created(scheduled: usize, held: usize) {
    if scheduled > 0 {
        metrics::counter!(DELIVERIES_CREATED, "state" => "scheduled").increment(scheduled as u64);
    }
    if held > 0 {
        metrics::counter!(DELIVERIES_CREATED, "state" => "held").increment(held as u64);
    }
}

/// A counter without labels.
pub(crate) fn add(name: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(name).increment(n);
    }
}

/// An attempt's time.
pub(crate) fn duration(success: bool, d: std::time::Duration) {
    let outcome = if success { "success" } else { "failure" };
    metrics::histogram!(ATTEMPT_DURATION, "outcome" => outcome).record(d.as_secs_f64());
}

/// The store-wide gauges.
pub(crate) fn gauges(c: &crate::store::Counts, lag: std::time::Duration) {
    // Counts far past 2^53 lose precision as f64, which a gauge can afford.
    #[allow(clippy::cast_precision_loss)]
    let f = |n: u64| n as f64;
    metrics::gauge!(PENDING).set(f(c.pending));
    metrics::gauge!(HELD).set(f(c.held));
    metrics::gauge!(EXHAUSTED).set(f(c.gave_up));
    metrics::gauge!(LEASED).set(f(c.leased));
    metrics::gauge!(DUE_LAG).set(lag.as_secs_f64());
}
