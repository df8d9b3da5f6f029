//! The outbound network policy (SSRF guard), shared by `observer_create` (URLs whose host is a
//! literal address) and the worker (every address a host name resolves to, checked in the HTTP
//! client's resolver, so DNS rebinding cannot slip past a check made earlier).
//!
//! Refused unless an allowlist entry covers the address: loopback, private (RFC 1918, IPv6 ULA),
//! link-local (cloud metadata endpoints live there), CGNAT, multicast, unspecified and "this
//! network", broadcast, reserved and documentation ranges, and IPv6 forms that carry or reach an
//! IPv4 address (IPv4-mapped, IPv4-compatible and NAT64 are judged by the embedded address; 6to4
//! likewise; Teredo and local-use NAT64 are refused). Odd IPv4 spellings (`127.1`, `2130706433`,
//! `0x7f.1`) are normalised by the URL parser before they get here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A CIDR block of an allowlist, e.g. `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why an allowlist entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address block such as 127.0.0.0/8, ::1/128 or 10.1.2.3")]
pub struct CidrError(pub String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_string());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Does the block contain `ip`? (An IPv4 block also matches the IPv4-mapped form.)
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; everything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Why an address is refused, or None when it may be contacted.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space, CGNAT (100.64.0.0/10)",
        (127, _, _) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local, cloud metadata (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast (224.0.0.0/4)",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // IPv4-compatible ::a.b.c.d (deprecated) and NAT64 64:ff9b::/96: judged by the IPv4 inside.
    if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return forbidden_v4(v4).map(|_| "an IPv6 form of a forbidden IPv4 address");
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return forbidden_v4(v4).map(|_| "6to4 (2002::/16) of a forbidden IPv4 address");
    }
    Some(match s[0] {
        0x0064 if s[1] == 0xff9b && s[2] == 1 => "local-use NAT64 (64:ff9b:1::/48)",
        0x2001 if s[1] == 0 => "Teredo (2001::/32)",
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        x if x & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        x if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        x if x & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        _ => return None,
    })
}

/// The policy decision for `ip`: Ok, or the reason it is refused. An allowlist entry that covers
/// the address lets it through.
pub fn check(ip: IpAddr, allow: &[Cidr]) -> Result<(), &'static str> {
    match forbidden(ip) {
        Some(reason) if !allow.iter().any(|c| c.contains(ip)) => Err(reason),
        _ => Ok(()),
    }
}

/// Parse a comma- or space-separated allowlist.
pub fn parse_allowlist(text: &str) -> Result<Vec<Cidr>, CidrError> {
    text.split([',', ' ', '\n', '\t'])
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

/// The literal address of a URL's host, if it has one (after WHATWG normalisation, so `127.1`
/// and `2130706433` are 127.0.0.1 here).
pub fn literal_host(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        // The parser leaves the host of a non-special scheme (`nats://`, `redis://`) opaque:
        // read it as a special scheme's host would be, odd IPv4 spellings included.
        url::Host::Domain(d) => match url::Host::parse(d).ok()? {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        },
    }
}

/// [`literal_host`] of a URL string (None if it does not parse).
pub fn literal_host_of(url: &str) -> Option<IpAddr> {
    url::Url::parse(url).ok().as_ref().and_then(literal_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn every_forbidden_form_is_refused() {
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(forbidden(ip(s)).is_some(), "{s} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(forbidden(ip(s)), None, "{s} must pass");
        }
    }

    #[test]
    fn odd_spellings_normalise_to_the_address() {
        for (url, expected) in [
            ("http://127.1/", "127.0.0.1"),
            ("http://2130706433/", "127.0.0.1"),
            ("http://0x7f.0.0.1/", "127.0.0.1"),
            ("http://0177.0.0.1/", "127.0.0.1"),
            ("http://[::ffff:7f00:1]/", "::ffff:127.0.0.1"),
            ("nats://127.0.0.1:4222", "127.0.0.1"),
            ("redis://127.1:6379/0", "127.0.0.1"),
            ("tls://0x7f.0.0.1", "127.0.0.1"),
            ("rediss://[::1]:6379", "::1"),
        ] {
            let parsed = url::Url::parse(url).expect("url");
            let host = literal_host(&parsed).expect("literal");
            assert_eq!(host, ip(expected), "{url}");
            assert!(forbidden(host).is_some(), "{url}");
        }
    }

    #[test]
    fn allowlists_let_covered_addresses_through() {
        let allow = parse_allowlist("127.0.0.0/8, ::1/128 10.9.8.7").expect("allowlist");
        assert_eq!(check(ip("127.0.0.1"), &allow), Ok(()));
        assert_eq!(check(ip("::ffff:127.0.0.2"), &allow), Ok(()));
        assert_eq!(check(ip("::1"), &allow), Ok(()));
        assert_eq!(check(ip("10.9.8.7"), &allow), Ok(()));
        assert!(check(ip("10.9.8.6"), &allow).is_err());
        assert!(check(ip("169.254.169.254"), &allow).is_err());
        assert!(parse_allowlist("127.0.0.0/33").is_err());
        assert!(parse_allowlist("localhost").is_err());
    }
}
