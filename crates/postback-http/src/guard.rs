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
        let checked = match literal_ip(host) {
            // A strict dotted quad or a bracketed IPv6 address: what the URL standard reads it as,
            // without its host parser (which runs IDNA first).
            Some(ip) => policy.check_ip(ip),
            None => match Host::parse(host) {
                Ok(Host::Ipv4(a)) => policy.check_ip(a.into()),
                Ok(Host::Ipv6(a)) => policy.check_ip(a.into()),
                Ok(Host::Domain(_)) => Ok(()), // a name after all: the resolver's turn
                Err(_) => {
                    return Err(Failure::Local(
                        "the request's URL has a host that is not valid".to_owned(),
                    ));
                }
            },
        };
        checked.map_err(|e| forbidden(&e))?;
    }
    Ok(Target {
        key: host_key(scheme, host, port),
    })
}

/// `scheme://host:port` with the host lower-cased, built in one allocation (it runs on every
/// send).
fn host_key(scheme: &str, host: &str, port: u16) -> String {
    let mut key = String::with_capacity(scheme.len() + host.len() + 9);
    key.push_str(scheme);
    key.push_str("://");
    key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    key.push(':');
    let mut digits = [0u8; 5];
    let mut n = port;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    key.extend(digits[i..].iter().map(|&d| char::from(d)));
    key
}

/// The address of a host written the one way every parser agrees on: a dotted quad of decimal
/// numbers without leading zeros (the standard library refuses any other IPv4 spelling), or an
/// IPv6 address in brackets. Anything else (`0x7f.1`, `2130706433`, a trailing dot) is `None`,
/// for the URL standard's parser to judge.
fn literal_ip(host: &str) -> Option<std::net::IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(Into::into),
        None => host.parse::<std::net::Ipv4Addr>().ok().map(Into::into),
    }
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
    fn the_fast_literal_reading_agrees_with_the_url_standard() {
        for host in [
            "127.0.0.1",
            "10.1.2.3",
            "93.184.215.14",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[2001:db8::8a2e:370:7334]",
        ] {
            let fast = literal_ip(host).unwrap();
            let standard = match Host::parse(host).unwrap() {
                Host::Ipv4(a) => std::net::IpAddr::from(a),
                Host::Ipv6(a) => std::net::IpAddr::from(a),
                Host::Domain(d) => panic!("{host} read as the name {d}"),
            };
            assert_eq!(fast, standard, "{host}");
        }
        for host in [
            "0177.0.0.1",
            "0x7f.1",
            "127.1",
            "2130706433",
            "127.0.0.1.",
            "t.example",
        ] {
            assert_eq!(literal_ip(host), None, "{host}");
        }
    }

    #[test]
    fn the_host_key_is_scheme_lower_cased_host_and_port() {
        assert_eq!(host_key("http", "T.Example", 8080), "http://t.example:8080");
        assert_eq!(host_key("https", "[::1]", 443), "https://[::1]:443");
        assert_eq!(host_key("http", "a", 0), "http://a:0");
        assert_eq!(host_key("http", "a", 65535), "http://a:65535");
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
