//! A blocking `postback` transport over `ureq` 3: copy this file into your project (keep ureq's
//! default `rustls` feature for https). Redirects are returned, never followed; exchanges time
//! out; ureq connects only to resolved addresses that passed the `NetPolicy`.

use std::io::{ErrorKind, Read};
use std::time::Duration;

use postback::delivery::Failure;
use postback::transport::{Classify, NetPolicy, Transport};
use ureq::Error;
use ureq::config::Config;
use ureq::http::{Request, Response, Uri};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

const BODY_LIMIT: u64 = 64 * 1024; // of a response body read (the engine keeps the first 4 KiB)

/// Sends postbacks with a ureq agent (pooled keep-alive connections).
#[derive(Debug, Clone)]
pub struct UreqTransport(ureq::Agent);

impl UreqTransport {
    /// Refuse what `policy` forbids; give up on an exchange after `timeout` (5–30 s is usual).
    pub fn new(policy: NetPolicy, timeout: Duration) -> UreqTransport {
        let config = Config::builder()
            .max_redirects(0) // a 3xx comes back as a response, and the engine counts it
            .http_status_as_error(false) // so does a 4xx or 5xx
            .proxy(None) // a proxy would resolve the partner's host itself, unchecked
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .build();
        // The check sits in ureq's resolver hook: ureq connects only to what it returns (no second
        // lookup for DNS rebinding to use), while the URI keeps the host name for the Host header
        // and the TLS name and certificate check (putting a bare IP in the URL would break those).
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), Checked(policy));
        UreqTransport(agent)
    }
}

impl Transport for UreqTransport {
    type Error = UreqError;

    fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, UreqError> {
        let (parts, body) = self.0.run(request).map_err(UreqError)?.into_parts();
        let mut bytes = Vec::new();
        let read = body.into_reader().take(BODY_LIMIT).read_to_end(&mut bytes);
        read.map_err(|e| UreqError(e.into()))?;
        Ok(Response::from_parts(parts, bytes))
    }
}

/// The resolver: ureq's own lookup, refused if any address is forbidden.
#[derive(Debug)]
struct Checked(NetPolicy);

/// The resolver's refusal, carried in `ureq::Error::Other`.
#[derive(Debug)]
struct Refused(Failure);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {}

impl Resolver for Checked {
    fn resolve(&self, uri: &Uri, c: &Config, t: NextTimeout) -> Result<ResolvedSocketAddrs, Error> {
        let refuse = |f| Err(Error::Other(Box::new(Refused(f))));
        let addrs = match DefaultResolver::default().resolve(uri, c, t) {
            Err(Error::Io(e)) => return refuse(Failure::Dns(format!("{uri}: {e}"))),
            other => other?,
        };
        match addrs.iter().find_map(|a| self.0.check_ip(a.ip()).err()) {
            Some(e) => refuse(Failure::Forbidden(e.to_string())),
            None => Ok(addrs),
        }
    }
}

/// A ureq error that knows which `Failure` it is.
#[derive(Debug)]
pub struct UreqError(pub Error);

impl Classify for UreqError {
    fn failure(&self) -> Failure {
        let text = self.0.to_string();
        match &self.0 {
            Error::Timeout(_) => Failure::Timeout,
            Error::Io(e) if e.kind() == ErrorKind::TimedOut => Failure::Timeout,
            Error::Other(e) if e.is::<Refused>() => e.downcast_ref::<Refused>().unwrap().0.clone(),
            Error::HostNotFound => Failure::Dns(text),
            Error::Tls(_) | Error::TlsRequired => Failure::Tls(text), // with rustls: Error::Rustls
            Error::BadUri(_) | Error::Http(_) | Error::RequireHttpsOnly(_) => Failure::Local(text),
            _ => Failure::Connect(text), // refused, reset, garbled HTTP: the receiving side
        }
    }
}
