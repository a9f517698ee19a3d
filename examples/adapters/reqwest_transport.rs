//! An async `postback` transport over `reqwest` on tokio: copy this file into your project (with
//! `reqwest`, `http` and tokio's `net` feature; add a reqwest TLS feature for https). Redirects
//! are returned, never followed; exchanges time out; connections go only to checked addresses.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use postback::delivery::Failure;
use postback::transport::{AsyncTransport, NetError, NetPolicy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

const BODY_LIMIT: usize = 64 * 1024; // of a response body read (the engine keeps the first 4 KiB)
type BoxError = Box<dyn Error + Send + Sync>;
type Reply = Result<Response<Vec<u8>>, Failure>;

/// Sends postbacks with a pooled reqwest client.
#[derive(Debug, Clone)]
pub struct ReqwestTransport(reqwest::Client, Arc<NetPolicy>);

impl ReqwestTransport {
    /// Refuse what `policy` forbids; give up on an exchange after `timeout` (5–30 s is usual).
    pub fn new(policy: NetPolicy, timeout: Duration) -> reqwest::Result<ReqwestTransport> {
        let policy = Arc::new(policy);
        // The check sits in the resolver, so reqwest connects only to addresses that passed (no
        // second lookup for DNS rebinding), while the URL keeps the host name for Host and TLS.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none()) // a 3xx is returned; the engine counts it
            .no_proxy() // a proxy would resolve the partner's host itself, unchecked
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .dns_resolver(Checked(Arc::clone(&policy)))
            .build()?;
        Ok(ReqwestTransport(client, policy))
    }

    async fn fetch(self, req: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, BoxError> {
        let req = reqwest::Request::try_from(req)?;
        // An IP literal (in any spelling the URL parser accepts) never reaches the resolver.
        let host = req.url().host_str().unwrap_or_default();
        if let Ok(ip) = host.trim_matches(['[', ']']).parse() {
            self.1.check_ip(ip)?;
        }
        let mut r = self.0.execute(req).await?;
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await?.filter(|_| body.len() < BODY_LIMIT) {
            body.extend(chunk.iter().take(BODY_LIMIT - body.len()));
        }
        let mut response = Response::new(body);
        *response.status_mut() = r.status();
        *response.headers_mut() = std::mem::take(r.headers_mut());
        Ok(response)
    }
}

impl AsyncTransport for ReqwestTransport {
    type Error = Failure; // classified as it happens: `Failure` classifies itself

    fn send(&self, req: Request<Vec<u8>>) -> impl Future<Output = Reply> + Send {
        let this = self.clone();
        async move { this.fetch(req).await.map_err(classify) }
    }
}

/// The resolver: look the name up, and refuse it if any address is forbidden.
struct Checked(Arc<NetPolicy>);

impl Resolve for Checked {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let addrs: Vec<_> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            addrs.iter().try_for_each(|a| policy.check_ip(a.ip()))?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Which `Failure` an error of `fetch` is.
fn classify(error: BoxError) -> Failure {
    // The policy's refusal travels as a `NetError` somewhere in the chain.
    let chain = std::iter::successors(Some(&*error as &(dyn Error + 'static)), |&e| e.source());
    if let Some(refused) = chain.filter_map(|e| e.downcast_ref::<NetError>()).next() {
        return Failure::Forbidden(refused.to_string());
    }
    let text = error.to_string();
    match error.downcast_ref::<reqwest::Error>() {
        Some(e) if e.is_timeout() => Failure::Timeout,
        Some(e) if e.is_dns() => Failure::Dns(text),
        Some(e) if e.is_builder() => Failure::Local(text),
        _ => Failure::Connect(text), // refused, reset, garbled HTTP: the receiving side
    }
}
