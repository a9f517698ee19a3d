//! Operating the Worker: its spans after the scripted run (see `ops_run`), seen by a subscriber
//! set for the test's thread (a current-thread runtime, so the worker's loop runs there too). In
//! a binary of its own: callsites' interest is cached process-wide, so a test running beside it
//! without a subscriber could hide its spans.

mod ops_run;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ops_run::{SECRET, scripted_run};

/// Every field of every span and event, as `name=value` texts.
#[derive(Clone, Default)]
struct Fields {
    seen: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicU64>,
}

struct Visit<'a>(&'a mut Vec<String>);

impl tracing::field::Visit for Visit<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.push(format!("{}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Fields {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut seen = self.seen.lock().expect("lock");
        seen.push(format!("span={}", span.metadata().name()));
        span.record(&mut Visit(&mut seen));
        tracing::span::Id::from_u64(self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Visit(&mut self.seen.lock().expect("lock")));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        event.record(&mut Visit(&mut self.seen.lock().expect("lock")));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn each_attempt_has_a_span_with_its_key_partner_host_and_class_and_the_secret_never_shows() {
    let fields = Fields::default();
    let _guard = tracing::subscriber::set_default(fields.clone());
    let run = scripted_run().await;
    let seen = fields.seen.lock().expect("lock").clone();
    let spans = seen
        .iter()
        .filter(|f| *f == "span=postback.attempt")
        .count();
    assert_eq!(spans, 28, "one span per attempt");
    let key = format!("key={}", run.failed);
    assert_eq!(
        seen.iter().filter(|f| **f == key).count(),
        21,
        "its 20 failures and the replay"
    );
    assert!(seen.iter().any(|f| f == "postback=1"));
    assert!(seen.iter().any(|f| f == "partner=7"));
    let host = format!("host={}", run.rx.url("").trim_end_matches('/'));
    assert!(seen.contains(&host), "the host: {host}");
    assert_eq!(
        seen.iter().filter(|f| *f == "class=\"http_5xx\"").count(),
        50,
        "on each failed attempt's span and its event"
    );
    assert!(seen.iter().any(|f| f.starts_with("duration_ms=")));
    let urls: Vec<&String> = seen.iter().filter(|f| f.starts_with("url=")).collect();
    assert_eq!(urls.len(), 28);
    for f in &seen {
        assert!(!f.contains(SECRET), "a secret in {f}");
    }
}
