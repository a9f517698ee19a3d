//! A build without the `tls` feature meeting an `https` URL: our own error, never counted against
//! the partner, and nothing sent. Runs only in a build without `tls` (`.ci/run` makes one:
//! `cargo test -p postback-http --no-default-features --features ureq,reqwest,test-support`).

#![cfg(all(feature = "ureq", feature = "reqwest", feature = "test-support"))]
#![cfg(not(feature = "tls"))]

use std::time::Duration;

use postback::delivery::{Failure, FailureClass};
use postback::transport::{AsyncTransport, NetPolicy, Transport};
use postback_http::testing::{Receiver, Response};
use postback_http::{Config, ReqwestTransport, UreqTransport};

fn config() -> Config {
    Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5))
}

fn https_request(receiver: &Receiver) -> http::Request<Vec<u8>> {
    let url = format!("https://{}/pb?cid=1", receiver.addr());
    http::Request::get(url).body(Vec::new()).unwrap()
}

fn is_our_own_error(reply: &Result<http::Response<Vec<u8>>, Failure>) -> bool {
    matches!(reply, Err(f @ Failure::Local(why)) if why.contains("without TLS") && f.class() == FailureClass::Local)
}

#[test]
fn the_blocking_transport_without_tls_refuses_an_https_url_as_our_own_error() {
    let receiver = Receiver::start(|_, _| Response::ok());
    let transport = UreqTransport::new(config()).unwrap();

    let reply = transport.send(https_request(&receiver));

    assert!(is_our_own_error(&reply), "{reply:?}");
    assert_eq!(receiver.connections(), 0);
}

#[tokio::test]
async fn the_async_transport_without_tls_refuses_an_https_url_as_our_own_error() {
    let receiver = Receiver::start(|_, _| Response::ok());
    let transport = ReqwestTransport::new(config()).unwrap();

    let reply = transport.send(https_request(&receiver)).await;

    assert!(is_our_own_error(&reply), "{reply:?}");
    assert_eq!(receiver.connections(), 0);
}
