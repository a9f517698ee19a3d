//! The blocking transport over ureq 3.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};

use postback::delivery::Failure;
use postback::transport::{NetPolicy, Transport};
use ureq::Error;
use ureq::config::Config as UreqConfig;
use ureq::http::{Request, Response, Uri};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::guard::{chain_text, forbidden, precheck, scrub};
use crate::limit::BlockingSlots;
use crate::{BuildError, Config};

/// Idle connections ureq keeps overall (per host: [`Config::idle_per_host`]).
const IDLE_OVERALL: usize = 256;

/// Sends postbacks with a ureq agent: blocking, pooled keep-alive connections, the contract of
/// the [crate docs](crate#the-contract-both-transports-keep). Cheap to share by reference across
/// threads (`Sync`); clones share the pool and the per-host limits.
#[derive(Clone)]
pub struct UreqTransport {
    agent: ureq::Agent,
    policy: NetPolicy,
    slots: std::sync::Arc<BlockingSlots>,
    config: std::sync::Arc<Config>,
}

impl std::fmt::Debug for UreqTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UreqTransport")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl UreqTransport {
    /// A transport with this configuration.
    pub fn new(config: Config) -> Result<UreqTransport, BuildError> {
        let builder = UreqConfig::builder()
            .max_redirects(0) // a 3xx comes back as a response, and the engine counts it
            .max_redirects_will_error(false)
            .http_status_as_error(false) // so does a 4xx or 5xx
            .proxy(None) // a proxy would resolve the partner's host itself, unchecked
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.connect_timeout_capped()))
            .max_idle_connections(if config.idle_per_host == 0 {
                0
            } else {
                IDLE_OVERALL
            })
            .max_idle_connections_per_host(config.idle_per_host)
            .max_idle_age(config.idle_timeout);
        #[cfg(feature = "tls")]
        let builder = {
            use ureq::tls::{Certificate, RootCerts, TlsConfig};
            crate::tls::root_store(&config.roots)?; // refuse bad roots now, not at send time
            let roots = match &config.roots {
                crate::Roots::Only(certs) => RootCerts::Specific(std::sync::Arc::new(
                    certs
                        .iter()
                        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                        .collect(),
                )),
                _ => RootCerts::WebPki,
            };
            let tls = TlsConfig::builder()
                .root_certs(roots)
                .unversioned_rustls_crypto_provider(crate::tls::provider())
                .build();
            builder.tls_config(tls)
        };
        // The check sits in ureq's resolver hook: ureq connects only to what it returns (no
        // second lookup for DNS rebinding to use), while the URI keeps the host name for the
        // Host header and the TLS name check.
        let agent = ureq::Agent::with_parts(
            builder.build(),
            DefaultConnector::default(),
            Checked(config.policy.clone()),
        );
        Ok(UreqTransport {
            agent,
            policy: config.policy.clone(),
            slots: std::sync::Arc::new(BlockingSlots::new(config.max_connections_per_host)),
            config: std::sync::Arc::new(config),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Transport for UreqTransport {
    type Error = Failure;

    fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, Failure> {
        let uri = request.uri().clone();
        let target = precheck(&self.policy, &uri)?;
        let _slot = self.slots.acquire(&target.key, self.config.timeout)?;
        let (head, body) = request.into_parts();
        // A GET (or HEAD, DELETE, OPTIONS) without a body goes out as one, with no
        // `Content-Length: 0` (ureq adds it for any body it is given, empty or not); a method
        // that carries a body keeps it, empty or not.
        let bodiless = body.is_empty()
            && matches!(
                head.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::DELETE
                    | http::Method::OPTIONS
            );
        let sent = if bodiless {
            self.agent.run(Request::from_parts(head, ()))
        } else {
            self.agent.run(Request::from_parts(head, body))
        };
        let (parts, body) = sent.map_err(|e| classify(&e, &uri))?.into_parts();
        let mut bytes = Vec::new();
        let limit = u64::try_from(self.config.body_limit).unwrap_or(u64::MAX);
        body.into_reader()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| classify(&Error::from(e), &uri))?;
        Ok(Response::from_parts(parts, bytes))
    }
}

/// The resolver: ureq's own lookup, refused if any address is forbidden.
#[derive(Debug)]
struct Checked(NetPolicy);

/// The resolver's answer when it refuses, carried in `ureq::Error::Other`.
#[derive(Debug)]
struct Refused(Failure);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {}

impl Resolver for Checked {
    fn resolve(
        &self,
        uri: &Uri,
        c: &UreqConfig,
        t: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let refuse = |f| Err(Error::Other(Box::new(Refused(f))));
        // An IP literal needs no lookup: check it and answer at once. (ureq resolves for every
        // request, pooled or not, and its resolver spawns a thread per lookup when a timeout is
        // set, which costs more than the rest of a loopback exchange.)
        if let Some(authority) = uri.authority() {
            let literal = authority.host().trim_matches(['[', ']']).parse::<IpAddr>();
            if let Ok(ip) = literal {
                if let Err(e) = self.0.check_ip(ip) {
                    return refuse(forbidden(&e));
                }
                let default_port = if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                };
                let port = authority.port_u16().unwrap_or(default_port);
                let mut addrs = self.empty();
                addrs.push(SocketAddr::new(ip, port));
                return Ok(addrs);
            }
        }
        let addrs = match DefaultResolver::default().resolve(uri, c, t) {
            Err(Error::Io(e)) => return refuse(Failure::Dns(e.to_string())),
            other => other?,
        };
        match addrs.iter().find_map(|a| self.0.check_ip(a.ip()).err()) {
            Some(e) => refuse(forbidden(&e)),
            None => Ok(addrs),
        }
    }
}

/// Which `Failure` a ureq error is, with the URL taken out of its text.
fn classify(error: &Error, uri: &http::Uri) -> Failure {
    let text = || scrub(&chain_text(error), uri);
    match error {
        Error::Other(e) if e.is::<Refused>() => match e.downcast_ref::<Refused>() {
            Some(Refused(f)) => f.clone(),
            None => Failure::Local(text()),
        },
        Error::Timeout(_) => Failure::Timeout,
        Error::Io(e) if e.kind() == ErrorKind::TimedOut => Failure::Timeout,
        Error::HostNotFound => Failure::Dns(text()),
        #[cfg(feature = "tls")]
        Error::Rustls(_) => Failure::Tls(text()),
        Error::Tls(_) => Failure::Tls(text()),
        #[cfg(feature = "tls")]
        Error::Io(e) if crate::tls::is_tls(e) => Failure::Tls(text()),
        // Ours: a request ureq cannot send as given, a client without TLS for https.
        Error::BadUri(_)
        | Error::Http(_)
        | Error::RequireHttpsOnly(_)
        | Error::TlsRequired
        | Error::InvalidProxyUrl
        | Error::LargeResponseHeader(..) => Failure::Local(text()),
        // Refused, reset, garbled HTTP: the receiving side.
        _ => Failure::Connect(text()),
    }
}
