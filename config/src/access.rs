//! A listener's access rules (`listener.<proto>.<name>.access.N = allow|deny CIDR`),
//! as EMQX 4 (esockd) writes them: `allow all`, `deny 192.168.1.0/24`,
//! `allow 10.0.0.1` (one address), IPv6 too. Checked in the order of N, the first
//! rule that matches decides; no rule matching allows (EMQX's default is
//! `access.1 = allow all`).

use std::fmt;
use std::net::IpAddr;

/// One `allow|deny <cidr|all>` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRule {
    pub allow: bool,
    /// None: `all`.
    pub net: Option<Cidr>,
}

/// An address block: the address with its host bits cleared, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl AccessRule {
    /// Whether this rule is about `peer` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn matches(&self, peer: IpAddr) -> bool {
        self.net.is_none_or(|net| net.contains(peer))
    }
}

/// Whether `peer` may connect: the first matching rule decides, none matching allows.
pub fn allowed(rules: &[AccessRule], peer: IpAddr) -> bool {
    rules
        .iter()
        .find(|rule| rule.matches(peer))
        .is_none_or(|rule| rule.allow)
}

impl Cidr {
    pub fn contains(&self, peer: IpAddr) -> bool {
        match (self.addr, peer.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask128(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

impl fmt::Display for AccessRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.allow { "allow" } else { "deny" };
        match self.net {
            None => write!(f, "{verb} all"),
            Some(net) => write!(f, "{verb} {}/{}", net.addr, net.prefix),
        }
    }
}

/// `allow all`, `deny 10.0.0.0/8`, `allow 127.0.0.1`, `deny ::1/128`.
pub(crate) fn access_rule(text: &str) -> Result<AccessRule, String> {
    const EXPECTED: &str = "`allow` or `deny` followed by `all` or an address block like \
                            192.168.0.0/24 (an address alone is one host)";
    let mut words = text.split_whitespace();
    let (Some(verb), Some(what), None) = (words.next(), words.next(), words.next()) else {
        return Err(EXPECTED.to_string());
    };
    let allow = match verb {
        "allow" => true,
        "deny" => false,
        _ => return Err(EXPECTED.to_string()),
    };
    if what == "all" {
        return Ok(AccessRule { allow, net: None });
    }
    let net = Cidr::parse(what).map_err(|e| match e {
        CidrError::Address => EXPECTED.to_string(),
        CidrError::Prefix(max) => format!("a prefix length of 0..={max} after the '/'"),
    })?;
    Ok(AccessRule {
        allow,
        net: Some(net),
    })
}

/// Why an address block did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrError {
    /// Not an IP address before the `/`.
    Address,
    /// The prefix length is not 0..= this.
    Prefix(u8),
}

impl Cidr {
    /// `10.0.0.0/8`, `192.168.1.7` (one host), `::1/128`.
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| CidrError::Address)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(CidrError::Prefix(max)),
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(mask32(u32::from(a), prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask128(u128::from(a), prefix).into()),
        };
        Ok(Cidr { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rules(texts: &[&str]) -> Vec<AccessRule> {
        texts.iter().map(|t| access_rule(t).unwrap()).collect()
    }

    #[test]
    fn the_first_matching_rule_decides_and_none_matching_allows() {
        let r = rules(&["deny 127.0.0.5", "allow 127.0.0.0/8", "deny all"]);
        assert!(!allowed(&r, ip("127.0.0.5")));
        assert!(allowed(&r, ip("127.0.0.6")));
        assert!(!allowed(&r, ip("10.1.2.3")));
        assert!(allowed(&[], ip("10.1.2.3")));
        assert!(allowed(&rules(&["deny 10.0.0.0/8"]), ip("11.0.0.1")));
    }

    #[test]
    fn blocks_match_by_prefix_and_mapped_ipv6_counts_as_ipv4() {
        let r = access_rule("deny 192.168.1.77/24").unwrap();
        assert_eq!(r.to_string(), "deny 192.168.1.0/24");
        assert!(r.matches(ip("192.168.1.200")));
        assert!(!r.matches(ip("192.168.2.1")));
        assert!(r.matches(ip("::ffff:192.168.1.9")));
        let v6 = access_rule("allow 2001:db8::/32").unwrap();
        assert!(v6.matches(ip("2001:db8:1::1")));
        assert!(!v6.matches(ip("2001:db9::1")));
        assert!(!v6.matches(ip("192.168.1.1")));
        assert!(access_rule("deny 0.0.0.0/0")
            .unwrap()
            .matches(ip("8.8.8.8")));
    }

    #[test]
    fn bad_rules_say_what_was_expected() {
        for bad in [
            "",
            "allow",
            "permit all",
            "allow 10.0.0.0/33",
            "deny ::1/129",
            "allow 10.0.0/8",
            "allow all now",
        ] {
            assert!(access_rule(bad).is_err(), "{bad:?}");
        }
        assert!(access_rule("allow 10.0.0.0/33")
            .unwrap_err()
            .contains("0..=32"));
    }
}
