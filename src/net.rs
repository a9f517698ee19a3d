//! Where postbacks may go: the network policy against server-side request forgery.
//!
//! Partners paste their own postback URLs, so a URL can aim at the network's internal hosts
//! (cloud metadata at 169.254.169.254, admin ports, databases on private addresses). The policy
//! is checked twice: on the URL when a postback is configured ([`NetPolicy::check_url`], which
//! catches IP literals in every spelling the URL standard accepts, such as `http://2852039166/`),
//! and by the transport on every address a host name resolves to ([`NetPolicy::is_forbidden`]),
//! before connecting to that same checked address (no window for DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// A range of addresses: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpRange {
    /// The first address.
    pub addr: IpAddr,
    /// Leading bits that must match.
    pub prefix: u8,
}

impl IpRange {
    /// A range; the prefix is clamped to the address width.
    pub const fn new(addr: IpAddr, prefix: u8) -> IpRange {
        IpRange { addr, prefix }
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                prefix_eq(&a.octets(), &b.octets(), self.prefix.min(32))
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                prefix_eq(&a.octets(), &b.octets(), self.prefix.min(128))
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpRange {
    IpRange::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> IpRange {
    let [a, b, c, d, e, f, g, h] = segments;
    IpRange::new(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix)
}

/// IPv4 ranges no postback may reach (loopback is listed apart, so it can be allowed).
const FORBIDDEN_V4: [(IpRange, &str); 15] = [
    (v4(0, 0, 0, 0, 8), "unspecified / this network"),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT"),
    (v4(169, 254, 0, 0, 16), "link-local (cloud metadata)"),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(192, 0, 2, 0, 24), "documentation"),
    (v4(192, 88, 99, 0, 24), "6to4 relay"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation"),
    (v4(203, 0, 113, 0, 24), "documentation"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
    (v4(255, 255, 255, 255, 32), "broadcast"),
];

const LOOPBACK_V4: IpRange = v4(127, 0, 0, 0, 8);
const LOOPBACK_V6: IpRange = v6([0, 0, 0, 0, 0, 0, 0, 1], 128);

const FORBIDDEN_V6: [(IpRange, &str); 7] = [
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 96), "IPv4-compatible"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard"),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique-local"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Why a URL or address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Not a URL (the text is kept with secret-looking parameters redacted).
    #[error("`{0}` is not a URL: give an absolute http(s) URL")]
    InvalidUrl(String),
    /// A scheme the policy does not allow.
    #[error("scheme `{0}` is not allowed: postbacks go over http or https")]
    Scheme(String),
    /// A port the policy does not allow.
    #[error("port {0} is not allowed by the network policy: use one of the allowed ports")]
    Port(u16),
    /// An address in a forbidden range.
    #[error(
        "{addr} is a {range} address, which postbacks may not reach: use the partner's public host"
    )]
    Forbidden {
        /// The address.
        addr: IpAddr,
        /// What kind of range.
        range: &'static str,
    },
    /// A host name that always means this machine.
    #[error(
        "host `{0}` is this machine, which postbacks may not reach: use the partner's public host"
    )]
    LocalName(String),
}

/// The network policy: allowed schemes and ports, and forbidden address ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NetPolicy {
    /// Allowed schemes (default http and https).
    pub schemes: Vec<String>,
    /// Allowed ports; `None` allows any (default).
    pub ports: Option<Vec<u16>>,
    /// Allow loopback addresses and `localhost` (for development and tests only).
    pub allow_loopback: bool,
    /// Further ranges to refuse (the network's own public ranges, say).
    pub also_forbid: Vec<IpRange>,
}

impl Default for NetPolicy {
    fn default() -> Self {
        NetPolicy {
            schemes: vec!["http".into(), "https".into()],
            ports: None,
            allow_loopback: false,
            also_forbid: Vec::new(),
        }
    }
}

impl NetPolicy {
    /// Allow loopback, for development and tests on 127.0.0.1.
    #[must_use]
    pub fn allow_loopback(mut self) -> Self {
        self.allow_loopback = true;
        self
    }

    /// Allow only these ports.
    #[must_use]
    pub fn only_ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports = Some(ports.into_iter().collect());
        self
    }

    /// Refuse another range too.
    #[must_use]
    pub fn forbid(mut self, range: IpRange) -> Self {
        self.also_forbid.push(range);
        self
    }

    /// Why `ip` is forbidden, if it is. IPv4-mapped, IPv4-compatible, NAT64 (`64:ff9b::/96`),
    /// local-use NAT64 (`64:ff9b:1::/48`, the IPv4 address in the last 32 bits) and 6to4 IPv6
    /// addresses are judged by the IPv4 address inside them.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), NetError> {
        let refuse = |range| Err(NetError::Forbidden { addr: ip, range });
        if self.also_forbid.iter().any(|r| r.contains(ip)) {
            return refuse("forbidden by the network's own list");
        }
        let (loopback, forbidden): (IpRange, &[(IpRange, &str)]) = match ip {
            IpAddr::V4(_) => (LOOPBACK_V4, &FORBIDDEN_V4),
            IpAddr::V6(a) => {
                if let Some(inner) = embedded_v4(a) {
                    return self.check_ip(IpAddr::V4(inner)).map_err(|e| match e {
                        NetError::Forbidden { range, .. } => {
                            NetError::Forbidden { addr: ip, range }
                        }
                        e => e,
                    });
                }
                (LOOPBACK_V6, &FORBIDDEN_V6)
            }
        };
        if loopback.contains(ip) {
            return if self.allow_loopback {
                Ok(())
            } else {
                refuse("loopback")
            };
        }
        match forbidden.iter().find(|(r, _)| r.contains(ip)) {
            Some((_, what)) => refuse(what),
            None => Ok(()),
        }
    }

    /// Whether a resolved address is forbidden: transports call this for every address a
    /// host resolves to, and connect only to an address that passed.
    pub fn is_forbidden(&self, ip: IpAddr) -> bool {
        self.check_ip(ip).is_err()
    }

    /// Check a URL's scheme, port and, when the host is an IP literal or `localhost`, its
    /// address. Host names are checked again after resolution by the transport.
    pub fn check_url(&self, url: &str) -> Result<(), NetError> {
        let u = url::Url::parse(url)
            .map_err(|_| NetError::InvalidUrl(crate::template::redact_url(url)))?;
        if !self.schemes.iter().any(|s| s == u.scheme()) {
            return Err(NetError::Scheme(u.scheme().to_owned()));
        }
        if let (Some(ports), Some(port)) = (&self.ports, u.port_or_known_default()) {
            if !ports.contains(&port) {
                return Err(NetError::Port(port));
            }
        }
        match u.host() {
            Some(url::Host::Ipv4(a)) => self.check_ip(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => self.check_ip(IpAddr::V6(a)),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.');
                let local = d == "localhost" || d.ends_with(".localhost");
                if local && !self.allow_loopback {
                    Err(NetError::LocalName(d.to_owned()))
                } else {
                    Ok(())
                }
            }
            None => Err(NetError::InvalidUrl(crate::template::redact_url(url))),
        }
    }
}

/// The IPv4 address carried inside an IPv6 one: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`, except `::` and `::1`), NAT64 (`64:ff9b::a.b.c.d`), local-use NAT64
/// (`64:ff9b:1:…:a.b.c.d`, the last 32 bits) or 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, 0, 0] | [0, 0, 0, 0, 0, 0, 0, 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        // Local-use NAT64 (RFC 8215). RFC 6052 would place the IPv4 address of a /48 prefix in
        // bits 48..56 and 64..88; deployments of this prefix use the /96 layout, so the last 32
        // bits are read as the address, whatever the bits between hold.
        [0x64, 0xff9b, 1, ..] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        NetPolicy::default().is_forbidden(s.parse().unwrap())
    }

    #[test]
    fn private_and_special_ranges_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::10.0.0.1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn local_use_nat64_is_judged_by_its_last_32_bits() {
        for ip in [
            "64:ff9b:1::7f00:1",
            "64:ff9b:1::127.0.0.1",
            "64:ff9b:1:0:0:0:a00:1",
            "64:ff9b:1::10.1.2.3",
            "64:FF9B:1::A9FE:A9FE",
            "0064:ff9b:0001:0000:0000:0000:a9fe:a9fe",
            "64:ff9b:1:ffff:ffff:ffff:a9fe:a9fe",
            "64:ff9b:1:2:3:4:192.168.0.1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
        for ip in ["64:ff9b:1::808:808", "64:ff9b:1:abcd::1.1.1.1"] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
        // Only 64:ff9b:1::/48: its neighbour is an ordinary address.
        assert!(!forbidden("64:ff9b:2::7f00:1"));
        let err = NetPolicy::default().check_ip("64:ff9b:1::a9fe:a9fe".parse().unwrap());
        assert_eq!(
            err,
            Err(NetError::Forbidden {
                addr: "64:ff9b:1::a9fe:a9fe".parse().unwrap(),
                range: "link-local (cloud metadata)",
            })
        );
        let dev = NetPolicy::default().allow_loopback();
        assert!(!dev.is_forbidden("64:ff9b:1::7f00:1".parse().unwrap()));
        assert!(dev.is_forbidden("64:ff9b:1::a00:1".parse().unwrap()));
    }

    #[test]
    fn loopback_can_be_allowed_for_development() {
        let p = NetPolicy::default().allow_loopback();
        assert!(!p.is_forbidden("127.0.0.1".parse().unwrap()));
        assert!(!p.is_forbidden("::1".parse().unwrap()));
        assert!(p.is_forbidden("10.0.0.1".parse().unwrap()));
        assert_eq!(p.check_url("http://localhost:8080/pb"), Ok(()));
    }

    #[test]
    fn ip_literals_in_every_spelling_are_caught() {
        let p = NetPolicy::default();
        for url in [
            "http://2852039166/",
            "http://0xA9FEA9FE/",
            "http://0251.0376.0251.0376/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:a9fe:a9fe]/",
            "http://127.1/",
        ] {
            assert!(
                matches!(p.check_url(url), Err(NetError::Forbidden { .. })),
                "{url}"
            );
        }
        assert_eq!(
            p.check_url("http://localhost/"),
            Err(NetError::LocalName("localhost".into()))
        );
        assert_eq!(
            p.check_url("ftp://x.example/"),
            Err(NetError::Scheme("ftp".into()))
        );
        assert_eq!(p.check_url("https://tracker.example/pb?x=1"), Ok(()));
    }

    #[test]
    fn ports_can_be_restricted() {
        let p = NetPolicy::default().only_ports([80, 443]);
        assert_eq!(p.check_url("https://t.example/"), Ok(()));
        assert_eq!(
            p.check_url("https://t.example:8443/"),
            Err(NetError::Port(8443))
        );
    }
}
