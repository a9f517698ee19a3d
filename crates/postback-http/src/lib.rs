//! Guarded HTTP transports for the [`postback`] engine: depend on this crate instead of copying
//! an adapter into your project, so a fix to the guards reaches you with `cargo update`.
//!
//! - [`UreqTransport`] (feature `ureq`): blocking, for [`postback::transport::run_blocking`].
//! - [`ReqwestTransport`] (feature `reqwest`): async on tokio, for
//!   [`postback::transport::run_async`].
//! - [`clock`]: the wall clocks the drivers need ([`clock::SystemClock`], [`clock::TokioClock`]).
//! - [`testing`] (feature `test-support`): a loopback HTTP/HTTPS partner for your own tests.
//!
//! TLS (feature `tls`, on by default) is rustls on the *ring* crypto provider, trusting Mozilla's
//! roots (compiled in, from `webpki-roots`) or only the roots you give ([`Roots::Only`]).
//!
//! # The contract both transports keep
//!
//! The one documented on [`postback::transport`]:
//! - **The network policy, before connecting.** The URL's scheme and port are checked against
//!   the [`NetPolicy`]; an IP-literal host (in any spelling the URL parser accepts: `2130706433`,
//!   `0x7f.1`, `[::ffff:127.0.0.1]`) is checked as the address it is; a host name is resolved and
//!   refused if *any* address it resolves to is forbidden, and the client connects only to the
//!   addresses that were checked (no second lookup for DNS rebinding to use). A refusal is
//!   [`Failure::Forbidden`], which never counts towards disabling a postback.
//! - **No redirects.** A 3xx comes back as the response; the engine counts it.
//! - **No proxy from the environment** (`HTTP_PROXY` and friends are ignored: a proxy would
//!   resolve the partner's host itself, unchecked).
//! - **Timeouts**: connect and the whole exchange (body included), reported as
//!   [`Failure::Timeout`].
//! - **A body cap**: at most [`Config::body_limit`] bytes of a response body are read.
//! - **Our errors are ours**: a client built without TLS meeting an `https` URL, a request that
//!   cannot be sent as given, no tokio runtime, no free connection slot for the host in time:
//!   [`Failure::Local`], never counted against the partner.
//! - **No URL secrets in failure text**: the clients' error messages carry the whole URL; the
//!   transports drop it, and scrub what is left of the path and query.
//!
//! # Defaults
//!
//! | setting | default |
//! | --- | --- |
//! | [`Config::timeout`] (whole exchange) | 10 s |
//! | [`Config::connect_timeout`] | 5 s |
//! | [`Config::body_limit`] | 64 KiB |
//! | [`Config::max_connections_per_host`] (requests in flight per host) | 32 |
//! | [`Config::idle_per_host`] (keep-alive connections kept per host; 0: none) | 8 |
//! | [`Config::idle_timeout`] (an idle connection is closed after) | 60 s |
//! | [`Config::roots`] | [`Roots::Mozilla`] |
//! | network policy | [`NetPolicy::default()`]: public addresses only |
//!
//! ```no_run
//! # #[cfg(feature = "ureq")] {
//! use postback_http::{Config, UreqTransport};
//! use postback::transport::NetPolicy;
//!
//! let transport = UreqTransport::new(Config::new(NetPolicy::default())).unwrap();
//! # let _ = transport;
//! # }
//! ```
//!
//! [`Failure::Forbidden`]: postback::delivery::Failure::Forbidden
//! [`Failure::Timeout`]: postback::delivery::Failure::Timeout
//! [`Failure::Local`]: postback::delivery::Failure::Local
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::time::Duration;

use postback::transport::NetPolicy;

pub mod clock;
#[cfg(any(feature = "ureq", feature = "reqwest"))]
mod guard;
#[cfg(any(feature = "ureq", feature = "reqwest"))]
mod limit;
#[cfg(feature = "reqwest")]
mod reqwest_transport;
#[cfg(feature = "test-support")]
pub mod testing;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "ureq")]
mod ureq_transport;

#[cfg(feature = "reqwest")]
pub use reqwest_transport::ReqwestTransport;
pub use rustls_pki_types::CertificateDer;
#[cfg(feature = "ureq")]
pub use ureq_transport::UreqTransport;

/// Which certificate authorities a transport trusts for `https`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Roots {
    /// Mozilla's root program, compiled in (`webpki-roots`): the same on every machine, with no
    /// dependency on the system's certificate store. The default.
    #[default]
    Mozilla,
    /// Only these roots (DER): a partner behind a private CA, or a test's self-signed
    /// certificate.
    Only(Vec<CertificateDer<'static>>),
}

/// How a transport is built. Start from [`Config::new`] and change what you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The network policy checked on IP literals and after DNS (the engine's own check at
    /// configuration time cannot see what a name resolves to at send time).
    pub policy: NetPolicy,
    /// The whole exchange: connect, send, response head and body (default 10 s).
    pub timeout: Duration,
    /// Connecting, TLS handshake included where the client allows (default 5 s; never more than
    /// `timeout`).
    pub connect_timeout: Duration,
    /// Bytes of a response body read at most; the rest is dropped unread (default 64 KiB; the
    /// engine records the first 4 KiB).
    pub body_limit: usize,
    /// Requests in flight to one host (scheme, host, port) at once; a further request waits up to
    /// `timeout` for a slot, then fails with
    /// [`Failure::Local`](postback::delivery::Failure::Local) (default 32; 0 counts as 1).
    pub max_connections_per_host: usize,
    /// Idle keep-alive connections kept per host for reuse (default 8; 0 turns keep-alive
    /// pooling off).
    pub idle_per_host: usize,
    /// How long an idle connection is kept (default 60 s).
    pub idle_timeout: Duration,
    /// Whom to trust for `https` (default [`Roots::Mozilla`]).
    pub roots: Roots,
}

impl Config {
    /// The defaults (see the [crate docs](crate#defaults)) with this network policy.
    pub fn new(policy: NetPolicy) -> Config {
        Config {
            policy,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            body_limit: 64 * 1024,
            max_connections_per_host: 32,
            idle_per_host: 8,
            idle_timeout: Duration::from_secs(60),
            roots: Roots::Mozilla,
        }
    }

    /// Set [`Config::timeout`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Config {
        self.timeout = timeout;
        self
    }

    /// Set [`Config::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Config {
        self.connect_timeout = timeout;
        self
    }

    /// Set [`Config::body_limit`].
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Config {
        self.body_limit = bytes;
        self
    }

    /// Set [`Config::max_connections_per_host`].
    #[must_use]
    pub fn max_connections_per_host(mut self, n: usize) -> Config {
        self.max_connections_per_host = n;
        self
    }

    /// Set [`Config::idle_per_host`].
    #[must_use]
    pub fn idle_per_host(mut self, n: usize) -> Config {
        self.idle_per_host = n;
        self
    }

    /// Set [`Config::idle_timeout`].
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Config {
        self.idle_timeout = timeout;
        self
    }

    /// Set [`Config::roots`].
    #[must_use]
    pub fn roots(mut self, roots: Roots) -> Config {
        self.roots = roots;
        self
    }

    /// The connect timeout actually used: never more than the whole exchange's.
    #[cfg(any(feature = "ureq", feature = "reqwest"))]
    fn connect_timeout_capped(&self) -> Duration {
        self.connect_timeout.min(self.timeout)
    }
}

impl Default for Config {
    /// [`Config::new`] with [`NetPolicy::default()`].
    fn default() -> Config {
        Config::new(NetPolicy::default())
    }
}

/// Why a transport could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A root certificate of [`Roots::Only`] was refused.
    #[error("root certificate {index} was refused ({reason}): give DER-encoded CA certificates")]
    Root {
        /// Its position in the list.
        index: usize,
        /// What rustls said.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS could not be set up: {0}")]
    Tls(String),
    /// The HTTP client refused its configuration.
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}

/// Whether this build can speak `https` (the `tls` feature).
pub const TLS: bool = cfg!(feature = "tls");
