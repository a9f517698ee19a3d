//! The HTTP transport you plug in, and drivers that run the engine loop over it.
//!
//! The crate depends on no HTTP client. A transport is anything that turns an
//! `http::Request<Vec<u8>>` into an `http::Response<Vec<u8>>` or an error that says which
//! [`Failure`] it was; a closure will do. The workspace's `postback-http` crate implements both
//! traits for `ureq` (blocking) and `reqwest` (async), keeping the contract below.
//!
//! # The contract every transport must keep
//!
//! - **Never follow redirects.** A 3xx is returned as a response; the engine counts it as a
//!   failure. Following one would let a partner's server steer postbacks to internal hosts.
//! - **Time out.** Bound connect and the whole exchange (5–30 s is usual), and report
//!   [`Failure::Timeout`].
//! - **Resolve, check, then connect to the checked address.** Resolve the host, refuse with
//!   [`Failure::Forbidden`] if any resolved address fails [`NetPolicy::is_forbidden`], and connect
//!   only to an address that passed, so DNS rebinding has no window. Check IP-literal hosts too:
//!   some clients (reqwest) skip their resolver for them.
//! - Classify errors honestly: connection refused is [`Failure::Connect`], a resolution failure
//!   [`Failure::Dns`], and only your own mistakes are [`Failure::Local`] (which never count).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use chrono::{DateTime, Utc};

use crate::delivery::{DeliveryId, Failure};
use crate::engine::{Engine, Event};

pub use crate::net::{IpRange, NetError, NetPolicy};

/// A transport error that knows which [`Failure`] it is.
pub trait Classify {
    /// The failure, for the delivery's taxonomy.
    fn failure(&self) -> Failure;
}

impl Classify for Failure {
    fn failure(&self) -> Failure {
        self.clone()
    }
}

/// A blocking HTTP transport. See the [module docs](self) for the contract.
pub trait Transport {
    /// The error, which classifies itself.
    type Error: Classify;

    /// Send one request; return the response whatever its status.
    fn send(&self, request: http::Request<Vec<u8>>)
    -> Result<http::Response<Vec<u8>>, Self::Error>;
}

impl<F, E> Transport for F
where
    F: Fn(http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, E>,
    E: Classify,
{
    type Error = E;
    fn send(&self, request: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, E> {
        self(request)
    }
}

/// An async HTTP transport. See the [module docs](self) for the contract.
pub trait AsyncTransport {
    /// The error, which classifies itself.
    type Error: Classify + Send;

    /// Send one request; return the response whatever its status.
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> impl Future<Output = Result<http::Response<Vec<u8>>, Self::Error>> + Send;
}

impl<F, Fut, E> AsyncTransport for F
where
    F: Fn(http::Request<Vec<u8>>) -> Fut,
    Fut: Future<Output = Result<http::Response<Vec<u8>>, E>> + Send,
    E: Classify + Send,
{
    type Error = E;
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> impl Future<Output = Result<http::Response<Vec<u8>>, E>> + Send {
        self(request)
    }
}

/// Time for the blocking driver: the library itself never reads a clock or sleeps.
pub trait Clock {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Block until `t` (return at once if it has passed).
    fn sleep_until(&self, t: DateTime<Utc>);
}

/// Time for the async driver.
pub trait AsyncClock {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Resolve at `t` (at once if it has passed).
    fn sleep_until(&self, t: DateTime<Utc>) -> impl Future<Output = ()> + Send;
}

/// What a driver run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// Requests handed to the transport.
    pub sent: u64,
    /// Results handed back to the engine.
    pub handled: u64,
    /// Events passed to the callback.
    pub events: u64,
    /// Whether the run ended because nothing was left to do before the deadline.
    pub idle: bool,
}

/// Send everything due now through `transport`, hand back the results, and pass every event to
/// `on_event`. Returns when the next attempt is due (`None`: nothing scheduled).
pub fn step_blocking<T: Transport>(
    engine: &mut Engine,
    transport: &T,
    now: impl Fn() -> DateTime<Utc>,
    report: &mut RunReport,
    on_event: &mut impl FnMut(Event),
) -> Option<DateTime<Utc>> {
    while let Some(tx) = engine.poll_transmit(now()) {
        report.sent += 1;
        let result = transport.send(tx.request).map_err(|e| e.failure());
        // The delivery was just handed out, so it is known and in flight.
        if engine.handle_response(now(), tx.delivery, result).is_ok() {
            report.handled += 1;
        }
    }
    while let Some(e) = engine.poll_event() {
        report.events += 1;
        on_event(e);
    }
    engine.poll_timeout()
}

/// Run the engine over a blocking transport until nothing is scheduled or `deadline` passes,
/// sleeping on `clock` between attempts. Held deliveries wait for an enable and do not keep the
/// run going.
pub fn run_blocking<T: Transport, C: Clock>(
    engine: &mut Engine,
    transport: &T,
    clock: &C,
    deadline: DateTime<Utc>,
    mut on_event: impl FnMut(Event),
) -> RunReport {
    let mut report = RunReport::default();
    loop {
        let next = step_blocking(
            engine,
            transport,
            || clock.now(),
            &mut report,
            &mut on_event,
        );
        match next {
            None => {
                report.idle = true;
                return report;
            }
            Some(t) if t > deadline || clock.now() >= deadline => return report,
            Some(t) => clock.sleep_until(t),
        }
    }
}

type InFlight<'a, E> =
    Pin<Box<dyn Future<Output = (DeliveryId, Result<http::Response<Vec<u8>>, E>)> + Send + 'a>>;

/// Run the engine over an async transport with at most `concurrency` requests in flight, until
/// nothing is scheduled or in flight, or `deadline` passes (in-flight requests are then still
/// awaited, so no result is lost). Needs no particular runtime.
pub async fn run_async<'a, T, C>(
    engine: &mut Engine,
    transport: &'a T,
    clock: &C,
    concurrency: usize,
    deadline: DateTime<Utc>,
    mut on_event: impl FnMut(Event),
) -> RunReport
where
    T: AsyncTransport + Sync,
    C: AsyncClock,
{
    let concurrency = concurrency.max(1);
    let mut report = RunReport::default();
    let mut inflight: Vec<InFlight<'a, T::Error>> = Vec::with_capacity(concurrency);
    loop {
        let now = clock.now();
        if now < deadline {
            while inflight.len() < concurrency {
                let Some(tx) = engine.poll_transmit(now) else {
                    break;
                };
                report.sent += 1;
                let id = tx.delivery;
                let fut = transport.send(tx.request);
                inflight.push(Box::pin(async move { (id, fut.await) }));
            }
        }
        while let Some(e) = engine.poll_event() {
            report.events += 1;
            on_event(e);
        }
        let next = engine.poll_timeout();
        if inflight.is_empty() {
            match next {
                None => {
                    report.idle = true;
                    return report;
                }
                Some(_) if now >= deadline => return report,
                Some(t) => {
                    clock.sleep_until(t.min(deadline)).await;
                    continue;
                }
            }
        }
        // Wait for a result, or for the next attempt to fall due while there is room for it.
        let wake = next.filter(|_| inflight.len() < concurrency && now < deadline);
        let mut sleep = wake.map(|t| Box::pin(clock.sleep_until(t.min(deadline))));
        let done = std::future::poll_fn(|cx| {
            for (i, f) in inflight.iter_mut().enumerate() {
                if let Poll::Ready(out) = f.as_mut().poll(cx) {
                    return Poll::Ready(Some((i, out)));
                }
            }
            if let Some(s) = sleep.as_mut() {
                if s.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await;
        if let Some((i, (id, result))) = done {
            drop(inflight.swap_remove(i));
            if engine
                .handle_response(clock.now(), id, result.map_err(|e| e.failure()))
                .is_ok()
            {
                report.handled += 1;
            }
        }
    }
}
