//! The Worker's metrics in the Prometheus text format on a loopback port, read back.
//!
//! A Prometheus recorder (`metrics-exporter-prometheus`, no HTTP listener of its own) is installed
//! as the global recorder; a tiny HTTP endpoint on 127.0.0.1 serves what its handle renders; a
//! worker delivers three conversions to a partner on 127.0.0.1 that fails the first two
//! requests; then the endpoint is scraped and the `postback_` lines printed.
//!
//! ```text
//! cargo run -p postback-store --example metrics
//! ```

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use postback::access::Actor;
use postback::delivery::RetryPolicy;
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::Trigger;
use postback::template::{Macro, ValueMap};
use postback::transport::NetPolicy;
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport};
use postback_store::{Manage, MemoryStore, SystemClock, Worker, WorkerConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

const PARTNER: PartnerId = PartnerId::new(7);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    // The recorder, and the endpoint that serves its text (the test receiver answers each scrape
    // with what the handle renders then).
    let handle = PrometheusBuilder::new().install_recorder()?;
    let endpoint = {
        let handle = handle.clone();
        Receiver::start(move |_, _| {
            Response::ok()
                .header("content-type", "text/plain; version=0.0.4")
                .body(handle.render())
        })
    };
    println!("metrics on {}", endpoint.url("/metrics"));

    // A partner that fails the first two requests (numbered from 1).
    let partner = Receiver::start(|_, n| {
        if n <= 2 {
            Response::status(503)
        } else {
            Response::ok()
        }
    });
    let transport = ReqwestTransport::new(
        Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5)),
    )?;
    let config = WorkerConfig::new()
        .retry(
            RetryPolicy::default()
                .jitter(0, 0)
                .schedule(vec![Duration::from_millis(50)]),
        )
        .poll_interval(Duration::from_millis(50))
        .gauges_every(Duration::ZERO);
    let store = Arc::new(MemoryStore::new());
    let w = Worker::new(store, transport, SystemClock, config).start();
    let pb = Postback::builder(PostbackId::new(1))
        .partner(PARTNER)
        .url(partner.url("/pb?cid={sub1}"))
        .build()?;
    w.manage(Actor::Network(ManagerId::new(1)), Manage::Create(pb))
        .await?;
    for i in 1..=3 {
        let values = ValueMap::new().with(Macro::SUB1, format!("click-{i}"));
        let _ = w
            .trigger(Trigger::conversion(i, PARTNER, OfferId::new(42)), values)
            .await?;
    }
    for _ in 0..200 {
        if w.counts().await?.delivered == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // One more poll tick, so the gauges are read after the last completion.
    tokio::time::sleep(Duration::from_millis(120)).await;

    // Scrape it, as Prometheus would (a plain HTTP/1.1 GET over std's TcpStream).
    let addr = endpoint.addr();
    let text = tokio::task::spawn_blocking(move || scrape(addr)).await??;
    println!("\n== scraped");
    for line in text.lines().filter(|l| l.starts_with("postback_")) {
        println!("{line}");
    }
    let delivered = text
        .lines()
        .find(|l| l.starts_with("postback_deliveries_delivered_total "))
        .ok_or("the delivered counter is exported")?;
    if !delivered.ends_with(" 3") {
        return Err(format!("three delivered, read {delivered:?}").into());
    }
    if !text.contains("postback_attempts_failed_total{class=\"http_5xx\",counted=\"true\"} 2") {
        return Err("two failed attempts, by class".into());
    }
    w.shutdown(Duration::from_secs(5)).await;
    println!("\n== {} scrapes served", endpoint.count());
    Ok(())
}

/// `GET /metrics` on `addr`; the body.
fn scrape(addr: std::net::SocketAddr) -> Result<String, Error> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("the scrape failed: {head}").into());
    }
    Ok(body.to_owned())
}
