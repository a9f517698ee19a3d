//! The transport contract, kept by both clients against real receivers on 127.0.0.1 (plain HTTP,
//! and HTTPS with a self-signed certificate made for the test): every behaviour below runs once
//! over `UreqTransport` (module `ureq`) and once over `ReqwestTransport` (module `reqwest`).

#![cfg(all(feature = "ureq", feature = "reqwest", feature = "test-support"))]
#![cfg(feature = "tls")]

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use postback::access::Actor;
use postback::delivery::{Failure, FailureClass, RetryPolicy};
use postback::engine::{Engine, EngineConfig, Event};
use postback::model::{ManagerId, OfferId, PartnerId, Postback, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::{Macro, ValueMap};
use postback::transport::{AsyncTransport, NetPolicy, Transport};
use postback_http::testing::{Receiver, Response};
use postback_http::{CertificateDer, Config, ReqwestTransport, Roots, UreqTransport};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, Clone, Copy)]
enum Client {
    Ureq,
    Reqwest,
}

type Reply = Result<http::Response<Vec<u8>>, Failure>;

/// A transport of either client, sending blocking (reqwest on a runtime of its own).
enum Sender {
    Ureq(UreqTransport),
    Reqwest(ReqwestTransport, tokio::runtime::Runtime),
}

impl Sender {
    fn new(client: Client, config: Config) -> Sender {
        match client {
            Client::Ureq => Sender::Ureq(UreqTransport::new(config).unwrap()),
            Client::Reqwest => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                Sender::Reqwest(ReqwestTransport::new(config).unwrap(), rt)
            }
        }
    }

    fn send(&self, request: http::Request<Vec<u8>>) -> Reply {
        match self {
            Sender::Ureq(t) => t.send(request),
            Sender::Reqwest(t, rt) => rt.block_on(t.send(request)),
        }
    }

    fn get(&self, url: &str) -> Reply {
        self.send(get(url))
    }

    /// Send all of `urls` at once and wait for every reply.
    fn get_all(&self, urls: &[String]) -> Vec<Reply> {
        match self {
            Sender::Ureq(t) => std::thread::scope(|s| {
                let handles: Vec<_> = urls
                    .iter()
                    .map(|u| s.spawn(move || t.send(get(u))))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            }),
            Sender::Reqwest(t, rt) => rt.block_on(async {
                let tasks: Vec<_> = urls
                    .iter()
                    .map(|u| {
                        let (t, request) = (t.clone(), get(u));
                        tokio::spawn(async move { t.send(request).await })
                    })
                    .collect();
                let mut replies = Vec::new();
                for task in tasks {
                    replies.push(task.await.unwrap());
                }
                replies
            }),
        }
    }
}

fn get(url: &str) -> http::Request<Vec<u8>> {
    http::Request::get(url).body(Vec::new()).unwrap()
}

fn loopback() -> Config {
    Config::new(NetPolicy::default().allow_loopback()).timeout(Duration::from_secs(5))
}

/// A self-signed certificate for 127.0.0.1 and localhost, and its key.
fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    (made.cert.der().clone(), key.into())
}

/// One conversion to `url` through an engine, its result from `send`: the event it ends in.
fn through_the_engine(url: &str, send: impl FnOnce(http::Request<Vec<u8>>) -> Reply) -> Event {
    let now = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap();
    let config = EngineConfig::default()
        .net(NetPolicy::default().allow_loopback())
        .retry(RetryPolicy::compressed(1_000_000));
    let mut engine = Engine::new(config, Registry::new());
    let postback = Postback::builder(PostbackId::new(1))
        .partner(PartnerId::new(7))
        .url(url)
        .build()
        .unwrap();
    engine
        .create(now, Actor::Network(ManagerId::new(1)), postback)
        .unwrap();
    let values = ValueMap::new().with(Macro::SUB1, "clk-1");
    let trigger = Trigger::conversion(1, PartnerId::new(7), OfferId::new(42));
    let _ = engine.handle_trigger(now, &trigger, &values);
    let tx = engine.poll_transmit(now).unwrap();
    engine
        .handle_response(now, tx.delivery, send(tx.request))
        .unwrap();
    engine.poll_event().unwrap()
}

fn an_https_postback_to_a_certificate_the_client_trusts_is_delivered_over_tls(client: Client) {
    let (cert, key) = certificate();
    let receiver = Receiver::start_tls(vec![cert.clone()], key, |_, _| Response::ok());
    let sender = Sender::new(client, loopback().roots(Roots::Only(vec![cert])));

    let event = through_the_engine(&receiver.url("/pb?cid={sub1}"), |r| sender.send(r));

    assert!(matches!(event, Event::Delivered { .. }), "{event:?}");
    assert!(receiver.url("").starts_with("https://"));
    let [request] = receiver.requests().try_into().unwrap();
    assert_eq!(request.target_str(), "/pb?cid=clk-1");
}

fn a_certificate_the_client_does_not_trust_is_a_counted_tls_failure(client: Client) {
    let (cert, key) = certificate();
    let (other, _) = certificate();
    let receiver = Receiver::start_tls(vec![cert], key, |_, _| Response::ok());
    let url = receiver.url("/k/PATHSECRET/pb?token=QUERYSECRET&cid={sub1}");

    for roots in [Roots::Mozilla, Roots::Only(vec![other])] {
        let sender = Sender::new(client, loopback().roots(roots.clone()));
        let mut failure = None;
        let event = through_the_engine(&url, |r| {
            let reply = sender.send(r);
            failure = reply.as_ref().err().cloned();
            reply
        });

        assert!(
            matches!(
                event,
                Event::RetryScheduled {
                    failure: FailureClass::Tls,
                    counted: true,
                    ..
                }
            ),
            "{roots:?}: {event:?}"
        );
        let Some(Failure::Tls(text)) = failure else {
            panic!("{failure:?}")
        };
        assert!(
            !text.contains("SECRET"),
            "the URL stays out of the text: {text}"
        );
    }
    assert_eq!(
        receiver.count(),
        0,
        "no request was sent over an untrusted connection"
    );
}

fn a_host_name_that_resolves_to_a_forbidden_address_is_refused_and_no_connection_arrives(
    client: Client,
) {
    let receiver = Receiver::start(|_, _| Response::ok());
    // `localhost` resolves to 127.0.0.1 (or ::1), which the default policy forbids.
    let url = format!("http://localhost:{}/pb?cid=1", receiver.addr().port());
    let sender = Sender::new(client, Config::new(NetPolicy::default()));

    let reply = sender.get(&url);

    assert!(
        matches!(&reply, Err(Failure::Forbidden(why)) if why.contains("loopback")),
        "{reply:?}"
    );
    assert_eq!(receiver.connections(), 0);
}

fn a_redirect_to_another_local_port_is_returned_and_never_followed(client: Client) {
    let internal = Receiver::start(|_, _| Response::ok());
    let location = internal.url("/admin");
    let partner = Receiver::start(move |_, _| Response::status(302).header("Location", &location));
    let sender = Sender::new(client, loopback());

    let event = through_the_engine(&partner.url("/pb?cid={sub1}"), |r| sender.send(r));

    assert!(
        matches!(
            event,
            Event::RetryScheduled {
                failure: FailureClass::Status(302),
                counted: true,
                ..
            }
        ),
        "{event:?}"
    );
    assert_eq!(partner.count(), 1);
    assert_eq!(internal.connections(), 0, "the Location was never followed");
}

fn an_ip_literal_in_any_spelling_is_refused_and_no_connection_arrives(client: Client) {
    let receiver = Receiver::start(|_, _| Response::ok());
    let port = receiver.addr().port();
    let sender = Sender::new(client, Config::new(NetPolicy::default()));

    for host in [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ] {
        let reply = sender.get(&format!("http://{host}:{port}/pb?cid=1"));
        assert!(
            matches!(&reply, Err(Failure::Forbidden(_))),
            "{host}: {reply:?}"
        );
    }
    assert_eq!(receiver.connections(), 0);
}

fn requests_in_flight_to_one_host_never_exceed_the_per_host_limit(client: Client) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (i, m) = (Arc::clone(&in_flight), Arc::clone(&most));
    let receiver = Receiver::start(move |_, _| {
        let now = i.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(now, Ordering::SeqCst);
        // Hold the request a moment, so that unlimited requests would overlap here.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(20));
        i.fetch_sub(1, Ordering::SeqCst);
        Response::ok()
    });
    let sender = Sender::new(client, loopback().max_connections_per_host(2));
    let urls: Vec<String> = (0..12)
        .map(|n| receiver.url(&format!("/pb?n={n}")))
        .collect();

    let replies = sender.get_all(&urls);

    assert!(
        replies
            .iter()
            .all(|r| matches!(r, Ok(r) if r.status() == 200)),
        "{replies:?}"
    );
    assert_eq!(receiver.count(), 12);
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} requests at once");
    assert!(receiver.connections() <= 2, "{}", receiver.connections());
}

fn keep_alive_pooling_reuses_one_connection_and_can_be_turned_off(client: Client) {
    for (idle, expected) in [(8, [0, 0, 0]), (0, [0, 1, 2])] {
        let receiver = Receiver::start(|_, _| Response::ok());
        let sender = Sender::new(client, loopback().idle_per_host(idle));
        for n in 0..3 {
            let reply = sender.get(&receiver.url(&format!("/pb?n={n}")));
            assert_eq!(reply.map(|r| r.status()).ok(), Some(http::StatusCode::OK));
        }
        let connections: Vec<usize> = receiver.requests().iter().map(|r| r.connection).collect();
        assert_eq!(connections, expected, "idle_per_host {idle}");
    }
}

fn a_response_body_is_read_only_up_to_the_cap(client: Client) {
    let receiver = Receiver::start(|_, _| Response::ok().body(vec![b'x'; 100_000]));
    let sender = Sender::new(client, loopback().body_limit(1000));

    let reply = sender.get(&receiver.url("/pb?cid=1")).unwrap();

    assert_eq!(reply.status(), 200);
    assert_eq!(reply.body().len(), 1000);
}

fn a_refused_connection_is_a_counted_connect_failure_whose_text_keeps_the_url_out(client: Client) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sender = Sender::new(client, loopback());
    let url = format!("http://127.0.0.1:{port}/k/PATHSECRET/pb?api_key=QUERYSECRET&cid={{sub1}}");
    let mut failure = None;

    let event = through_the_engine(&url, |r| {
        let reply = sender.send(r);
        failure = reply.as_ref().err().cloned();
        reply
    });

    assert!(
        matches!(
            event,
            Event::RetryScheduled {
                failure: FailureClass::Connect,
                counted: true,
                ..
            }
        ),
        "{event:?}"
    );
    let Some(Failure::Connect(text)) = failure else {
        panic!("{failure:?}")
    };
    assert!(!text.is_empty());
    assert!(!text.contains("SECRET"), "{text}");
}

fn a_request_the_client_cannot_send_is_our_own_error_and_never_counts(client: Client) {
    let sender = Sender::new(client, loopback());

    for uri in ["/pb?cid=1", "ftp://127.0.0.1/pb"] {
        let reply = sender.get(uri);
        assert!(matches!(&reply, Err(Failure::Local(_))), "{uri}: {reply:?}");
    }
}

macro_rules! for_both_clients {
    ($($behaviour:ident),* $(,)?) => {
        mod ureq {
            $(#[test] fn $behaviour() { super::$behaviour(super::Client::Ureq) })*
        }
        mod reqwest {
            $(#[test] fn $behaviour() { super::$behaviour(super::Client::Reqwest) })*
        }
    };
}

for_both_clients!(
    an_https_postback_to_a_certificate_the_client_trusts_is_delivered_over_tls,
    a_certificate_the_client_does_not_trust_is_a_counted_tls_failure,
    a_host_name_that_resolves_to_a_forbidden_address_is_refused_and_no_connection_arrives,
    a_redirect_to_another_local_port_is_returned_and_never_followed,
    an_ip_literal_in_any_spelling_is_refused_and_no_connection_arrives,
    requests_in_flight_to_one_host_never_exceed_the_per_host_limit,
    keep_alive_pooling_reuses_one_connection_and_can_be_turned_off,
    a_response_body_is_read_only_up_to_the_cap,
    a_refused_connection_is_a_counted_connect_failure_whose_text_keeps_the_url_out,
    a_request_the_client_cannot_send_is_our_own_error_and_never_counts,
);

/// A minimal executor that is not tokio: polls a future to completion on this thread.
fn block_on_without_tokio<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[test]
fn the_async_transport_polled_outside_tokio_is_our_own_error_and_sends_nothing() {
    let receiver = Receiver::start(|_, _| Response::ok());
    let transport = ReqwestTransport::new(loopback()).unwrap();

    let reply = block_on_without_tokio(transport.send(get(&receiver.url("/pb?cid=1"))));

    assert!(matches!(&reply, Err(Failure::Local(_))), "{reply:?}");
    assert_eq!(receiver.connections(), 0);
}
