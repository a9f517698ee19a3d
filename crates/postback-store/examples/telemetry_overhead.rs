//! The cost of the Worker's tracing and metrics on its throughput: the same end-to-end run (N
//! conversions through the handle into the SQLite store, sent to a loopback receiver, completed)
//! with a tracing subscriber and a Prometheus recorder installed, and without either, each in a
//! child process of its own (a global recorder cannot be taken back), alternating (ABBA), in one
//! run.
//! Prints each round's rate, the medians and their ratio.
//!
//! ```text
//! cargo run --release -p postback-store --example telemetry_overhead -- [conversions] [rounds]
//! ```
//!
//! The subscriber formats every field of every span and event at INFO and above into a string
//! and drops it (the work a log line costs, without the IO); the recorder is
//! `metrics-exporter-prometheus`'s, with nothing scraping it.
#![allow(clippy::disallowed_methods)] // a measurement reads the clock

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postback::access::{Actor, Settings};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{Manage, SqliteStore, Store, SystemClock, Worker, WorkerConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

const IN_FLIGHT: usize = 64;
const PARTNER: PartnerId = PartnerId::new(7);

/// Formats what it is given, as a log line would, and drops it.
struct Formatting {
    next: AtomicU64,
}

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Formatting {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::INFO
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut line = Line(String::with_capacity(256));
        span.record(&mut line);
        std::hint::black_box(line.0);
        tracing::span::Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = Line(String::new());
        values.record(&mut line);
        std::hint::black_box(line.0);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line(String::with_capacity(128));
        event.record(&mut line);
        std::hint::black_box(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// One run: a fresh store file, `n` conversions from 8 tasks, until delivered. Conversions per
/// second.
async fn run(n: u64, url: &str) -> Result<f64, Error> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(dir.path().join("run.sqlite"))?);
    let pb = Postback::builder(PostbackId::new(1))
        .partner(PARTNER)
        .url(url)
        .build()?;
    store.postback_manage(
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
        Actor::Network(ManagerId::new(1)),
        Manage::Create(pb),
        &Settings::default(),
    )?;
    let transport = ReqwestTransport::new(
        Config::new(NetPolicy::default().allow_loopback())
            .max_connections_per_host(IN_FLIGHT)
            .idle_per_host(IN_FLIGHT),
    )?;
    let config = WorkerConfig::new()
        .max_concurrency(IN_FLIGHT)
        .max_per_host(IN_FLIGHT)
        .batch_size(IN_FLIGHT);
    let start = Instant::now();
    let w = Worker::new(store, transport, SystemClock, config).start();
    let mut set = tokio::task::JoinSet::new();
    for part in 0..8u64 {
        let w = w.clone();
        set.spawn(async move {
            for i in (part..n).step_by(8) {
                let v = ValueMap::new().with(Macro::SUB1, format!("click-{i}").as_str());
                let t = Trigger::conversion(i + 1, PARTNER, OfferId::new(42));
                let _ = w.trigger(t, v).await?;
            }
            Ok::<(), postback_store::WorkerError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    while w.stats().delivered < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    w.shutdown(Duration::from_secs(5)).await;
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / took.as_secs_f64())
}

fn child(n: u64, with: bool) -> Result<(), Error> {
    if with {
        tracing::subscriber::set_global_default(Formatting {
            next: AtomicU64::new(0),
        })?;
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let receiver = Receiver::start(|_, _| Response::ok().body("OK"));
    let url = receiver.url("/pb?cid={sub1}&payout=1.00&did={delivery_id}");
    let rate = rt.block_on(run(n, &url))?;
    println!("{rate}");
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let n = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5_000);
        return child(n, args.get(3).map(String::as_str) == Some("with"));
    }
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let me = std::env::current_exe()?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // ABBA: neither mode always goes first.
        let order = if round % 2 == 0 {
            ["without", "with"]
        } else {
            ["with", "without"]
        };
        for mode in order {
            let out = std::process::Command::new(&me)
                .args(["--child", &n.to_string(), mode])
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "the {mode} run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            let rate: f64 = String::from_utf8(out.stdout)?.trim().parse()?;
            println!("round {round}: {mode:<7} {rate:>8.0} conversions/s");
            if mode == "with" {
                with.push(rate);
            } else {
                without.push(rate);
            }
        }
    }
    let pairs = median(with.iter().zip(&without).map(|(w, o)| w / o).collect());
    let (a, b) = (median(without), median(with));
    println!(
        "\n{n} conversions, {rounds} rounds: median without {a:.0}/s, with a subscriber and a recorder {b:.0}/s: ratio {:.3} (cost {:.1}%)",
        b / a,
        (1.0 - b / a) * 100.0
    );
    println!("median of the rounds' ratios (with / without, same round): {pairs:.3}");
    Ok(())
}
