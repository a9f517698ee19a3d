//! The checks both transports share: the URL before anything is sent, and failure text with the
//! URL taken out.

use std::error::Error;

use postback::delivery::Failure;
use postback::transport::{NetError, NetPolicy};
use url::{Host, Url};

/// What the pre-check learned about a request's URL.
#[derive(Debug)]
pub(crate) struct Target {
    /// `scheme://host:port`, lower-cased: the key of the per-host connection limit.
    pub(crate) key: String,
}

/// Check the URL of a request before anything is sent: a URL we cannot send is ours
/// (`Local`); a scheme, port or IP literal the policy forbids is `Forbidden`. Host names are
/// left to the checked resolver, which sees what they resolve to.
pub(crate) fn precheck(policy: &NetPolicy, uri: &http::Uri) -> Result<Target, Failure> {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(Failure::Local(
            "the request's URL is not an absolute http(s) URL".to_owned(),
        ));
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => {
            return Err(Failure::Local(format!(
                "scheme `{scheme}` cannot be sent: postbacks go over http or https"
            )));
        }
    };
    if !policy.schemes.iter().any(|s| s == scheme) {
        return Err(forbidden(&NetError::Scheme(scheme.to_owned())));
    }
    if scheme == "https" && !crate::TLS {
        return Err(Failure::Local(
            "this transport was built without TLS and cannot send to an https URL: enable \
             postback-http's `tls` feature (on by default)"
                .to_owned(),
        ));
    }
    let port = authority.port_u16().unwrap_or(default_port);
    if let Some(ports) = &policy.ports {
        if !ports.contains(&port) {
            return Err(forbidden(&NetError::Port(port)));
        }
    }
    let host = authority.host();
    // Anything but a plain host name is parsed the way the URL standard does, so that every
    // spelling of an address (`2130706433`, `0x7f.1`, `127.1`, `[::ffff:7f00:1]`, a trailing
    // dot) is judged as the address it is.
    if !is_plain_name(host) {
        let checked = match Host::parse(host) {
            Ok(Host::Ipv4(a)) => policy.check_ip(a.into()),
            Ok(Host::Ipv6(a)) => policy.check_ip(a.into()),
            Ok(Host::Domain(_)) => Ok(()), // a name after all: the resolver's turn
            Err(_) => {
                return Err(Failure::Local(
                    "the request's URL has a host that is not valid".to_owned(),
                ));
            }
        };
        checked.map_err(|e| forbidden(&e))?;
    }
    let key = format!("{scheme}://{}:{port}", host.to_ascii_lowercase());
    Ok(Target { key })
}

/// Whether `host` is a host name as written (ASCII letters, digits, `-` and `.`) whose last
/// label cannot be a number, so that no URL parser reads it as an address.
fn is_plain_name(host: &str) -> bool {
    let plain = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    plain && last.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
}

/// A policy refusal as the engine records it.
pub(crate) fn forbidden(e: &NetError) -> Failure {
    Failure::Forbidden(e.to_string())
}

/// The first error of type `T` in the chain from `e`, looking inside `io::Error`s too (whose
/// `source` skips the error they wrap).
#[cfg_attr(not(any(feature = "tls", feature = "reqwest")), allow(dead_code))]
pub(crate) fn find<'a, T: Error + 'static>(e: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(t) = inner.downcast_ref::<T>() {
                return Some(t);
            }
            if let Some(t) = find::<T>(inner) {
                return Some(t);
            }
        }
        next = e.source();
    }
    None
}

/// The messages of the whole chain from `e`, joined with `: ` (a message already contained in the
/// text so far is not repeated).
pub(crate) fn chain_text(e: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let part = e.to_string();
        if !part.is_empty() && !out.contains(&part) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&part);
        }
        next = e.source();
    }
    out
}

/// `text` with every spelling of the request's URL, its path and its query taken out: the
/// clients put the whole URL into their messages, and a postback URL carries secrets (API keys,
/// tokens, a key in the path) that must not reach debug info or logs.
pub(crate) fn scrub(text: &str, uri: &http::Uri) -> String {
    let mut forms: Vec<String> = vec![uri.to_string()];
    if let Ok(url) = Url::parse(&uri.to_string()) {
        forms.push(url.to_string());
        forms.push(url[url::Position::BeforePath..].to_owned());
        if let Some(q) = url.query() {
            forms.push(q.to_owned());
        }
        forms.push(url.path().to_owned());
    }
    if let Some(pq) = uri.path_and_query() {
        forms.push(pq.as_str().to_owned());
        if let Some(q) = pq.query() {
            forms.push(q.to_owned());
        }
        forms.push(pq.path().to_owned());
    }
    // Longest first, so a URL is replaced whole before its path is looked for.
    forms.retain(|f| f.len() > 1);
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    let mut out = text.to_owned();
    for form in &forms {
        if out.contains(form.as_str()) {
            out = out.replace(form.as_str(), "<url>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap()
    }

    #[test]
    fn scrubbed_text_keeps_no_part_of_the_url_that_can_hold_a_secret() {
        let u = uri("https://t.example/k/SECRETKEY?token=abc&cid=1");
        let text = "error sending request for url (https://t.example/k/SECRETKEY?token=abc&cid=1): \
                    GET /k/SECRETKEY?token=abc&cid=1 failed; query token=abc&cid=1";
        let out = scrub(text, &u);
        assert!(!out.contains("SECRETKEY"), "{out}");
        assert!(!out.contains("abc"), "{out}");
        assert!(
            out.starts_with("error sending request for url (<url>)"),
            "{out}"
        );
    }

    #[test]
    fn an_ip_literal_in_any_spelling_is_judged_as_the_address_it_is() {
        let policy = NetPolicy::default();
        for host in [
            "127.0.0.1",
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
            "127.1",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::1]",
            "169.254.169.254",
            "127.0.0.1.",
        ] {
            let r = precheck(&policy, &uri(&format!("http://{host}:8080/pb")));
            assert!(matches!(r, Err(Failure::Forbidden(_))), "{host}: {r:?}");
        }
        assert!(precheck(&policy, &uri("http://93.184.215.14/pb")).is_ok());
        assert!(precheck(&policy, &uri("http://t.example/pb")).is_ok());
    }

    #[test]
    fn a_host_name_is_left_to_the_checked_resolver() {
        let target = precheck(&NetPolicy::default(), &uri("http://LOCALHOST:81/pb")).unwrap();
        assert_eq!(target.key, "http://localhost:81");
    }

    #[test]
    fn a_port_or_scheme_the_policy_does_not_allow_is_forbidden() {
        let policy = NetPolicy::default().only_ports([443]);
        let r = precheck(&policy, &uri("http://t.example:8080/pb"));
        assert!(matches!(r, Err(Failure::Forbidden(_))), "{r:?}");
        let r = precheck(&policy, &uri("http://t.example/pb"));
        assert!(matches!(r, Err(Failure::Forbidden(_))), "{r:?}");
        let mut https_only = NetPolicy::default();
        https_only.schemes = vec!["https".to_owned()];
        let r = precheck(&https_only, &uri("http://t.example/pb"));
        assert!(matches!(r, Err(Failure::Forbidden(_))), "{r:?}");
    }

    #[test]
    fn a_url_that_cannot_be_sent_is_our_own_error() {
        for u in ["/relative?cid=1", "ftp://t.example/pb"] {
            let r = precheck(&NetPolicy::default(), &uri(u));
            assert!(matches!(r, Err(Failure::Local(_))), "{u}: {r:?}");
        }
    }
}
