//! Operating the Worker: its metrics and the stats summary after a scripted run (see
//! `ops_run`). Each test runs on a current-thread runtime with its own recorder set for that
//! thread only (`metrics::set_default_local_recorder`): the worker's loop runs there too, so what
//! it reports is this test's alone.

mod ops_run;

use std::collections::BTreeMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use postback_store::telemetry;
use postback_store::{Filter, Store};

use ops_run::{PARTNER, PB, SECRET, scripted_run};

/// The snapshot by name and labels (`name{a=x,b=y}`).
fn snapshot(s: &Snapshotter) -> BTreeMap<String, DebugValue> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| {
            let key = k.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            (name, v)
        })
        .collect()
}

fn counter(m: &BTreeMap<String, DebugValue>, name: &str) -> u64 {
    match m.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        Some(other) => panic!("{name} is a counter, got {other:?}"),
    }
}

fn gauge(m: &BTreeMap<String, DebugValue>, name: &str) -> f64 {
    match m.get(name) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        other => panic!("{name} is a gauge, got {other:?}"),
    }
}

#[tokio::test]
async fn after_25_failures_a_disablement_and_a_replay_the_metrics_add_up() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let run = scripted_run().await;
    let m = snapshot(&snapshotter);

    assert_eq!(
        counter(&m, "postback_deliveries_created_total{state=scheduled}"),
        2
    );
    assert_eq!(
        counter(&m, "postback_deliveries_created_total{state=held}"),
        1
    );
    assert_eq!(
        counter(
            &m,
            "postback_attempts_failed_total{class=http_5xx,counted=true}"
        ),
        25,
        "every failure, by class and counted: {m:?}"
    );
    let failures: u64 = m
        .iter()
        .filter(|(k, _)| k.starts_with(telemetry::ATTEMPTS_FAILED))
        .map(|(k, _)| counter(&m, k))
        .sum();
    assert_eq!(failures, 25, "and no other failure");
    assert_eq!(counter(&m, telemetry::DELIVERIES_GAVE_UP), 1);
    assert_eq!(counter(&m, telemetry::POSTBACKS_DISABLED), 1);
    assert_eq!(counter(&m, telemetry::NOTIFICATIONS_SENT), 1);
    assert_eq!(counter(&m, telemetry::DELIVERIES_REPLAYED), 1);
    assert_eq!(
        counter(&m, telemetry::DELIVERIES_DELIVERED),
        3,
        "the two held ones and the replayed one"
    );
    assert_eq!(counter(&m, telemetry::CLAIMS_EXPIRED), 0);
    assert_eq!(counter(&m, telemetry::RESULTS_LEASE_LOST), 0);
    let samples = |name: &str| match m.get(name) {
        Some(DebugValue::Histogram(v)) => v.len(),
        other => panic!("{name} is a histogram, got {other:?}"),
    };
    assert_eq!(
        samples("postback_attempt_duration_seconds{outcome=failure}"),
        25
    );
    assert_eq!(
        samples("postback_attempt_duration_seconds{outcome=success}"),
        3
    );
    assert_eq!(run.rx.count(), 28, "one request per attempt");
    // Read at shutdown: nothing pending, held or overdue; the replayed one no longer exhausted.
    assert_eq!(gauge(&m, telemetry::PENDING), 0.0);
    assert_eq!(gauge(&m, telemetry::HELD), 0.0);
    assert_eq!(gauge(&m, telemetry::EXHAUSTED), 0.0);
    assert_eq!(gauge(&m, telemetry::LEASED), 0.0);
    assert_eq!(gauge(&m, telemetry::DUE_LAG), 0.0);
    assert_eq!(
        run.store
            .deliveries_of(PB, Filter::Delivered, 10)
            .expect("delivered")
            .len(),
        3
    );
}

#[tokio::test]
async fn no_metric_label_carries_a_secret_a_url_a_host_a_key_or_a_click_id() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let run = scripted_run().await;
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("state", &["scheduled", "held"][..]),
        (
            "class",
            &[
                "http_3xx",
                "http_4xx",
                "http_5xx",
                "http_other",
                "timeout",
                "connect",
                "dns",
                "tls",
                "body_check",
                "forbidden",
                "local",
                "interrupted",
                "rejected",
                "other",
            ][..],
        ),
        ("counted", &["true", "false"][..]),
        ("outcome", &["success", "failure"][..]),
    ]);
    let snap = snapshotter.snapshot().into_vec();
    assert!(!snap.is_empty(), "the run reported metrics");
    let host = run.rx.addr().to_string();
    for (k, _, _, _) in snap {
        let key = k.key();
        assert!(key.name().starts_with("postback_"), "{}", key.name());
        for l in key.labels() {
            let (name, value) = (l.key(), l.value());
            let ok = allowed.get(name).is_some_and(|v| v.contains(&value));
            assert!(
                ok,
                "{}: label {name}={value} is not a bounded one",
                key.name()
            );
            for bad in [
                SECRET,
                "click-",
                host.as_str(),
                "http://",
                &run.failed.to_text(),
            ] {
                assert!(!value.contains(bad), "{name}={value} carries {bad}");
            }
        }
    }
}

#[tokio::test]
async fn the_stats_summary_after_the_run_shows_the_last_success_and_failure_and_prints_a_table() {
    let run = scripted_run().await;
    let s = &run.summary;
    let p = s.postback(PB).expect("the postback's line");
    assert_eq!(p.partner, Some(PARTNER));
    assert_eq!(
        (
            p.counts.pending,
            p.counts.held,
            p.counts.exhausted,
            p.counts.stuck
        ),
        (0, 0, 0, 0)
    );
    assert!(p.last_success.is_some(), "the last success");
    let f = p.last_failure.as_ref().expect("the last failure");
    assert_eq!(f.class, postback::delivery::FailureClass::Status(500));
    assert_eq!(f.delivery, run.tipped, "the 25th failure");
    assert!(f.counted);
    assert_eq!(s.hosts.len(), 1);
    assert!(s.stuck.is_empty());
    let table = s.to_string();
    assert!(table.contains("postback"), "{table}");
    assert!(table.contains("HTTP 500"), "{table}");
    assert!(table.contains(&s.hosts[0].host), "{table}");
    assert!(!table.contains(SECRET), "{table}");
}
