//! rustls on the ring provider: chosen because it builds with only a C compiler (`cc`) in
//! seconds, where aws-lc-rs needs cmake and a long C build.

#![allow(dead_code)] // each part is used by one transport

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};

use crate::{BuildError, Roots};

/// The crypto provider both transports use.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The root store for `roots`.
pub(crate) fn root_store(roots: &Roots) -> Result<RootCertStore, BuildError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::Mozilla => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::Only(certs) => {
            for (index, cert) in certs.iter().enumerate() {
                store.add(cert.clone()).map_err(|e| BuildError::Root {
                    index,
                    reason: e.to_string(),
                })?;
            }
        }
    }
    Ok(store)
}

/// A client configuration: TLS 1.2 and 1.3, the given roots, HTTP/1.1 by ALPN.
pub(crate) fn client_config(roots: &Roots) -> Result<ClientConfig, BuildError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls(e.to_string()))?
        .with_root_certificates(root_store(roots)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether `e` (anywhere in its chain) is a TLS failure.
pub(crate) fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    crate::guard::find::<rustls::Error>(e).is_some()
}
