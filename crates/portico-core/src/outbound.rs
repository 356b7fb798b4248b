//! Which addresses Portico may open a connection to on someone else's behalf (SSRF
//! protection). Every outbound URL that a provider or consumer can set — upstreams today;
//! webhooks, JWKS and import-by-URL when they come — is judged here by the IP address it
//! resolves to, at connect time (the gateway's connector) and when it is saved (the control
//! plane).
//!
//! Refused unless an `outbound.allow_cidrs` network holds the address: loopback, unspecified,
//! private (RFC 1918, unique local), link-local (cloud metadata included), shared address space
//! (CGNAT), IETF protocol assignments, benchmarking, multicast, broadcast and reserved ranges.
//! IPv6 forms that carry an IPv4 address — IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
//! (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) — are judged by the IPv4
//! address they carry, so `[::ffff:127.0.0.1]` is loopback. Documentation ranges stay allowed.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused; its [`fmt::Display`] is the short reason used in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Loopback,
    Unspecified,
    Private,
    LinkLocal,
    /// `169.254.169.254` and `fd00:ec2::254`: cloud instance metadata services.
    Metadata,
    SharedAddressSpace,
    ProtocolAssignments,
    Benchmarking,
    Multicast,
    Broadcast,
    Reserved,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Loopback => "loopback",
            Refusal::Unspecified => "unspecified",
            Refusal::Private => "private",
            Refusal::LinkLocal => "link-local",
            Refusal::Metadata => "link-local (cloud metadata)",
            Refusal::SharedAddressSpace => "shared address space (CGNAT)",
            Refusal::ProtocolAssignments => "IETF protocol assignments",
            Refusal::Benchmarking => "benchmarking",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "broadcast",
            Refusal::Reserved => "reserved",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outbound policy: the special-purpose ranges above are refused unless one of `allow`'s
/// networks holds the address (or the IPv4 address it carries). Set by a platform admin only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allow: Vec<IpNet>,
}

impl OutboundPolicy {
    /// A policy that also permits these networks (e.g. `127.0.0.0/8` for a local upstream).
    pub fn new(allow: Vec<IpNet>) -> Self {
        OutboundPolicy { allow }
    }

    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// Whether a connection to `ip` may be opened.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }

    /// `Ok` when a connection to `ip` may be opened; otherwise why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let carried = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6),
            IpAddr::V4(_) => None,
        };
        let allowed = |a: IpAddr| self.allow.iter().any(|n| n.contains(&a));
        if allowed(ip) || carried.is_some_and(|v4| allowed(IpAddr::V4(v4))) {
            return Ok(());
        }
        match refusal(ip) {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }
}

/// Why `ip` is special-purpose, ignoring any allow list; `None` for an ordinary public address.
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => refusal_v4(v4),
            None => refusal_v6(v6),
        },
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<Refusal> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => Refusal::Metadata,
        _ if ip.is_broadcast() => Refusal::Broadcast,
        (0, ..) => Refusal::Unspecified,
        (127, ..) => Refusal::Loopback,
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => Refusal::Private,
        (169, 254, _) => Refusal::LinkLocal,
        (100, 64..=127, _) => Refusal::SharedAddressSpace,
        (192, 0, 0) => Refusal::ProtocolAssignments,
        (198, 18..=19, _) => Refusal::Benchmarking,
        (224..=239, ..) => Refusal::Multicast,
        (240..=255, ..) => Refusal::Reserved,
        _ => return None,
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<Refusal> {
    let s = ip.segments();
    Some(match s {
        _ if ip.is_loopback() => Refusal::Loopback,
        _ if ip.is_unspecified() => Refusal::Unspecified,
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] => Refusal::Metadata,
        // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): where the IPv4 address sits is local.
        [0x64, 0xff9b, 1, ..] => Refusal::Private,
        [x, ..] if x & 0xfe00 == 0xfc00 => Refusal::Private,
        [x, ..] if x & 0xffc0 == 0xfe80 => Refusal::LinkLocal,
        // fec0::/10, site-local (deprecated, but still routed privately where it is used).
        [x, ..] if x & 0xffc0 == 0xfec0 => Refusal::Private,
        [x, ..] if x & 0xff00 == 0xff00 => Refusal::Multicast,
        // 100::/64, the discard-only prefix.
        [0x100, 0, 0, 0, ..] => Refusal::Reserved,
        _ => return None,
    })
}

/// The address a URL's host names when it is an IP literal (`10.0.0.1`, `[::1]` or `::1`),
/// read as hyper's connector reads it; `None` for a name that must be resolved.
/// Whether key material or credentials may go over plain `http://` to this URL: only on the
/// machine itself (`localhost`, a loopback address). Anywhere else an attacker on the path
/// could swap the keys or read the secret, so such URLs must be `https://`.
pub fn plain_http_allowed(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || literal_ip(host).is_some_and(|ip| ip.is_loopback())
}

pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d` (but not `::` or `::1`), NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::/48`.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low()),
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(low()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in ["http://127.0.0.1:9/jwks", "http://localhost/x", "http://[::1]:80/", "http://a.localhost"] {
            assert!(plain_http_allowed(ok), "{ok}");
        }
        for no in [
            "http://idp.example/jwks",
            "http://10.0.0.1/",
            "http://127.0.0.1.evil.example/",
            "https://x",
            "http://[::ffff:10.0.0.1]/",
        ] {
            assert!(!plain_http_allowed(no), "{no}");
        }
    }

    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn strict(s: &str) -> Option<Refusal> {
        OutboundPolicy::default().check(ip(s)).err()
    }

    #[test]
    fn special_ipv4_ranges_are_refused_with_their_reason() {
        use Refusal::*;
        for (addr, why) in [
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.0.1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("192.0.0.170", ProtocolAssignments),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Broadcast),
        ] {
            assert_eq!(strict(addr), Some(why), "{addr}");
        }
        assert_eq!(Metadata.to_string(), "link-local (cloud metadata)");
    }

    #[test]
    fn public_and_documentation_addresses_are_permitted() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.17.255.255",
            "2001:db8::1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(OutboundPolicy::default().permits(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn special_ipv6_ranges_are_refused() {
        use Refusal::*;
        for (addr, why) in [
            ("::1", Loopback),
            ("::", Unspecified),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fd00:ec2::254", Metadata),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("64:ff9b:1::a00:1", Private),
            ("100::1", Reserved),
        ] {
            assert_eq!(strict(addr), Some(why), "{addr}");
        }
    }

    #[test]
    fn ipv6_forms_are_judged_by_the_ipv4_address_they_carry() {
        use Refusal::*;
        for (addr, why) in [
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", Metadata),
            ("::127.0.0.1", Loopback),
            ("::10.1.2.3", Private),
            ("::0.0.0.2", Unspecified),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("2002:7f00:1::", Loopback),
            ("2002:c0a8:101::1", Private),
            ("2002:a9fe:a9fe:1:2:3:4:5", Metadata),
        ] {
            assert_eq!(strict(addr), Some(why), "{addr}");
        }
    }

    #[test]
    fn literals_are_read_with_or_without_brackets() {
        assert_eq!(literal_ip("10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(literal_ip("[::ffff:127.0.0.1]"), Some(ip("::ffff:127.0.0.1")));
        assert_eq!(literal_ip("::1"), Some(ip("::1")));
        for name in ["localhost", "api.example.com", "127.0.0.1.", "2130706433", "[::1", ""] {
            assert_eq!(literal_ip(name), None, "{name}");
        }
    }

    #[test]
    fn the_allow_list_opens_a_network_in_every_form() {
        let p = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        for addr in ["127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"] {
            assert!(p.permits(ip(addr)), "{addr}");
        }
        for addr in ["::1", "10.0.0.1", "169.254.169.254", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(!p.permits(ip(addr)), "{addr}");
        }
        let v6 = OutboundPolicy::new(vec!["::1/128".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        assert!(v6.permits(ip("::1")));
        assert!(v6.permits(ip("fd12::1")));
        assert!(!v6.permits(ip("127.0.0.1")));
    }

    proptest! {
        #[test]
        fn a_mapped_address_is_judged_like_its_ipv4(a: u32) {
            let v4 = Ipv4Addr::from(a);
            let p = OutboundPolicy::default();
            prop_assert_eq!(p.check(IpAddr::V6(v4.to_ipv6_mapped())), p.check(IpAddr::V4(v4)));
            let nat64 = Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(a));
            prop_assert_eq!(p.check(IpAddr::V6(nat64)), p.check(IpAddr::V4(v4)));
            let sixtofour = Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(a) << 80) | 1);
            prop_assert_eq!(p.check(IpAddr::V6(sixtofour)), p.check(IpAddr::V4(v4)));
        }

        #[test]
        fn an_allowed_network_permits_every_address_in_it(a: u32, len in 0u8..=32) {
            let net = ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            let p = OutboundPolicy::new(vec![IpNet::V4(net)]);
            prop_assert!(p.permits(IpAddr::V4(Ipv4Addr::from(a))));
            prop_assert!(p.permits(IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())));
        }

        #[test]
        fn check_never_panics(a: u128) {
            let _ = OutboundPolicy::default().check(IpAddr::V6(Ipv6Addr::from(a)));
        }
    }
}
