//! The async transport over reqwest 0.13 on tokio.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use postback::delivery::Failure;
use postback::transport::{AsyncTransport, NetError, NetPolicy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::guard::{chain_text, find, forbidden, precheck, scrub};
use crate::limit::AsyncSlots;
use crate::{BuildError, Config};

type BoxError = Box<dyn Error + Send + Sync>;

/// Sends postbacks with a reqwest client on tokio: pooled keep-alive connections, HTTP/1.1, the
/// contract of the [crate docs](crate#the-contract-both-transports-keep). Clones share the pool
/// and the per-host limits. Send from inside a tokio runtime (anything else is a
/// [`Failure::Local`]).
#[derive(Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    slots: AsyncSlots,
}

impl std::fmt::Debug for ReqwestTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReqwestTransport")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl ReqwestTransport {
    /// A transport with this configuration.
    pub fn new(config: Config) -> Result<ReqwestTransport, BuildError> {
        // The check sits in the resolver, so reqwest connects only to addresses that passed (no
        // second lookup for DNS rebinding), while the URL keeps the host name for Host and TLS.
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none()) // a 3xx is returned; the engine counts it
            .no_proxy() // a proxy would resolve the partner's host itself, unchecked
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout_capped())
            .pool_max_idle_per_host(config.idle_per_host)
            .pool_idle_timeout(config.idle_timeout)
            .dns_resolver(Checked(Arc::new(config.policy.clone())));
        #[cfg(feature = "tls")]
        let builder = builder.tls_backend_preconfigured(crate::tls::client_config(&config.roots)?);
        let client = builder
            .build()
            .map_err(|e| BuildError::Client(chain_text(&e)))?;
        let slots = AsyncSlots::new(config.max_connections_per_host);
        Ok(ReqwestTransport {
            client,
            inner: Arc::new(Inner { config, slots }),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    async fn fetch(self, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, Failure> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Failure::Local(
                "the reqwest transport was polled outside a tokio runtime: run the async driver \
                 on tokio"
                    .to_owned(),
            ));
        }
        let config = &self.inner.config;
        let uri = request.uri().clone();
        let target = precheck(&config.policy, &uri)?;
        let _slot = self
            .inner
            .slots
            .acquire(&target.key, config.timeout)
            .await?;
        let request = reqwest::Request::try_from(request)
            .map_err(|e| Failure::Local(scrub(&chain_text(&e.without_url()), &uri)))?;
        let mut r = self
            .client
            .execute(request)
            .await
            .map_err(|e| classify(e, &uri))?;
        let limit = config.body_limit;
        let mut body = Vec::new();
        while body.len() < limit {
            let Some(chunk) = r.chunk().await.map_err(|e| classify(e, &uri))? else {
                break;
            };
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        let mut response = Response::new(body);
        *response.status_mut() = r.status();
        *response.version_mut() = r.version();
        *response.headers_mut() = std::mem::take(r.headers_mut());
        Ok(response)
    }
}

impl AsyncTransport for ReqwestTransport {
    type Error = Failure; // classified as it happens: `Failure` classifies itself

    fn send(
        &self,
        request: Request<Vec<u8>>,
    ) -> impl Future<Output = Result<Response<Vec<u8>>, Failure>> + Send {
        self.clone().fetch(request)
    }
}

/// The resolver: look the name up, and refuse it if any address is forbidden.
struct Checked(Arc<NetPolicy>);

/// A name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LookupFailed(std::io::Error);

impl Resolve for Checked {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let lookup = tokio::net::lookup_host((name.as_str(), 0)).await;
            let addrs: Vec<SocketAddr> = lookup.map_err(LookupFailed)?.collect();
            if addrs.is_empty() {
                let none = std::io::Error::other("the name has no addresses");
                return Err(Box::new(LookupFailed(none)) as BoxError);
            }
            if let Some(e) = addrs.iter().find_map(|a| policy.check_ip(a.ip()).err()) {
                return Err(Box::new(e) as BoxError);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Which `Failure` a reqwest error is, with the URL taken out of its text.
fn classify(error: reqwest::Error, uri: &http::Uri) -> Failure {
    let error = error.without_url();
    let e: &(dyn Error + 'static) = &error;
    // The policy's refusal travels as a `NetError` somewhere in the chain.
    if let Some(refused) = find::<NetError>(e) {
        return forbidden(refused);
    }
    let text = scrub(&chain_text(e), uri);
    if find::<LookupFailed>(e).is_some() {
        return Failure::Dns(text);
    }
    if error.is_timeout() {
        return Failure::Timeout;
    }
    #[cfg(feature = "tls")]
    if crate::tls::is_tls(e) {
        return Failure::Tls(text);
    }
    // The connection's task died with the runtime that spawned it: our process, not the partner.
    if error.is_builder() || text.contains("dispatch task is gone") {
        return Failure::Local(text);
    }
    // Refused, reset, garbled HTTP: the receiving side.
    Failure::Connect(text)
}
