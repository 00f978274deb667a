//! Which IP addresses an outgoing call written in a journey may reach. Pure: the compiler warns
//! about a literal private address with it, and `channels::http` checks every resolved address
//! with it before connecting, so a host name that resolves to an internal address (DNS
//! rebinding) is refused like the address itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why an address is not on the public internet, or `None` if it is.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (127, ..) => "a loopback address",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "a private address",
        (169, 254, _) => "a link-local address (cloud metadata lives there)",
        (100, 64..=127, _) => "a carrier-grade NAT address",
        (0, ..) => "an unspecified address",
        (192, 0, 0) | (198, 18..=19, _) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a reserved address",
        (224..=255, ..) => "a multicast or reserved address",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // IPv4 written as IPv6 (`::ffff:10.0.0.1`, NAT64 `64:ff9b::a00:1`) is judged as IPv4.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, hi, lo] = segments;
        return special_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    Some(match segments[0] {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() => "an unspecified address",
        0xfc00..=0xfdff => "a private address",
        0xfe80..=0xfebf => "a link-local address",
        0xff00..=0xffff => "a multicast address",
        _ => return None,
    })
}

/// A network written as `10.1.2.0/24`, `fd00::/8` or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.address, ip) {
            // A v4 network also covers the same addresses written as v4-mapped v6.
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix(u128::from(net), u128::from(ip), 128, self.prefix),
            _ => false,
        }
    }
}

fn same_prefix(net: u128, ip: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix);
    prefix == 0 || (net >> shift) == (ip >> shift)
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an address or a network like 10.0.0.0/8"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Network { address, prefix })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// The networks calls may reach although they are not public (from `nurture.toml`).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub allowed: Vec<Network>,
}

impl Policy {
    /// `Err(why)` when `ip` is internal and no allowed network covers it.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        match special_range(ip) {
            Some(why) if !self.allowed.iter().any(|network| network.contains(ip)) => Err(why),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_named_and_public_ones_pass() {
        for (address, why) in [
            ("127.0.0.1", "a loopback address"),
            ("10.20.30.40", "a private address"),
            ("172.31.255.1", "a private address"),
            ("192.168.1.1", "a private address"),
            ("169.254.169.254", "a link-local address (cloud metadata lives there)"),
            ("0.0.0.0", "an unspecified address"),
            ("::1", "a loopback address"),
            ("fd12::1", "a private address"),
            ("fe80::1", "a link-local address"),
            ("::ffff:10.0.0.1", "a private address"),
            ("::ffff:127.0.0.1", "a loopback address"),
            (
                "64:ff9b::a9fe:a9fe",
                "a link-local address (cloud metadata lives there)",
            ),
        ] {
            assert_eq!(special_range(ip(address)), Some(why), "{address}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(special_range(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn allowed_networks_open_exactly_their_range() {
        let policy = Policy {
            allowed: vec!["10.1.2.0/24".parse().unwrap(), "::1".parse().unwrap()],
        };
        assert!(policy.check(ip("10.1.2.200")).is_ok());
        assert!(policy.check(ip("::ffff:10.1.2.3")).is_ok());
        assert_eq!(policy.check(ip("10.1.3.1")), Err("a private address"));
        assert!(policy.check(ip("::1")).is_ok());
        assert_eq!(policy.check(ip("127.0.0.1")), Err("a loopback address"));
        assert!(policy.check(ip("8.8.8.8")).is_ok());
        assert!("0.0.0.0/0".parse::<Network>().unwrap().contains(ip("127.0.0.1")));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("intranet".parse::<Network>().is_err());
    }
}
