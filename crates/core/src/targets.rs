//! Where a direct meter-reading session may send a modem: the allow-list of reading-platform
//! endpoints ([`TargetRule`]: a [`Cidr`], a [`PortRange`], optionally only for some users or
//! API keys), and the address classes that are refused unless a rule names them explicitly
//! ([`Reserved`]: loopback, link-local, multicast, unspecified, broadcast, cloud metadata).
//!
//! A reserved address is allowed only by a rule whose network lies wholly inside the reserved
//! range the address belongs to (the most specific one): `0.0.0.0/0` does not open
//! `127.0.0.1`, `127.0.0.0/8` does; `169.254.0.0/16` opens link-local addresses but not the
//! metadata address `169.254.169.254`, which needs `169.254.169.254/32`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use uuid::Uuid;

use crate::{ActorKind, ValidationError};

/// An IP network in CIDR notation (`10.20.0.0/16`, `2001:db8::/32`); a bare address is a
/// single-address network. IPv4-mapped IPv6 addresses are taken as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let full = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let host = u32::from(width - prefix);
    (full >> host) << host
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address, naming `field` on failure. Host bits must be
    /// zero (`10.1.2.3/8` is refused, naming `10.0.0.0/8`).
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            ValidationError::new(
                field,
                format!("{s:?} is not an IP network (e.g. 10.20.0.0/16 or 192.0.2.7)"),
            )
        })?;
        let (addr, prefix) = match (addr, canonical(addr)) {
            // ::ffff:a.b.c.d/n: the IPv4 part's prefix is n - 96.
            (IpAddr::V6(_), IpAddr::V4(v4)) => {
                let p = match prefix {
                    Some(p) => p
                        .parse::<u8>()
                        .ok()
                        .filter(|p| (96..=128).contains(p))
                        .map(|p| p - 96)
                        .ok_or_else(|| {
                            ValidationError::new(
                                field,
                                format!(
                                    "prefix of {s:?} must be 96-128 for an IPv4-mapped address"
                                ),
                            )
                        })?,
                    None => 32,
                };
                (IpAddr::V4(v4), p)
            }
            (a, _) => {
                let width = bits(a).1;
                let p = match prefix {
                    Some(p) => p
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= width)
                        .ok_or_else(|| {
                            ValidationError::new(
                                field,
                                format!("prefix of {s:?} must be 0-{width}"),
                            )
                        })?,
                    None => width,
                };
                (a, p)
            }
        };
        let (value, width) = bits(addr);
        let network = value & mask(prefix, width);
        if network != value {
            let net = Self::from_bits(addr, network, prefix);
            return Err(ValidationError::new(
                field,
                format!("{s:?} has host bits set; the network is {net}"),
            ));
        }
        Ok(Self { addr, prefix })
    }

    fn from_bits(like: IpAddr, value: u128, prefix: u8) -> Self {
        let addr = match like {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(0))),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
        };
        Self { addr, prefix }
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let (net, width) = bits(self.addr);
        let (value, w) = bits(ip);
        w == width && value & mask(self.prefix, width) == net
    }

    /// Whether every address of `self` is in `outer`.
    pub fn within(&self, outer: &Cidr) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.addr)
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    const fn v4(a: [u8; 4], prefix: u8) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Self {
        let s = segments;
        Self {
            addr: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse("network", s)
    }
}

/// An inclusive range of TCP ports (`502`, `10000-10100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// `first..=last`, both 1-65535, `first <= last`, naming `field` on failure.
    pub fn new(field: &str, first: u16, last: u16) -> Result<Self, ValidationError> {
        if first == 0 || last == 0 {
            return Err(ValidationError::new(field, "ports must be 1-65535"));
        }
        if first > last {
            return Err(ValidationError::new(
                field,
                format!("the range {first}-{last} is empty (first > last)"),
            ));
        }
        Ok(Self { first, last })
    }

    /// Parses `PORT` or `FIRST-LAST`.
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let bad = || {
            ValidationError::new(
                field,
                format!("{s:?} is not a port or a port range (e.g. 502 or 10000-10100)"),
            )
        };
        let (a, b) = s.trim().split_once('-').unwrap_or((s.trim(), s.trim()));
        let first = a.trim().parse::<u16>().map_err(|_| bad())?;
        let last = b.trim().parse::<u16>().map_err(|_| bad())?;
        Self::new(field, first, last)
    }

    /// First port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// Last port.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Address classes a modem is never sent to unless a rule names them explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// `127.0.0.0/8`, `::1`: the modem's own host (or Callhome's, through a gateway).
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `255.255.255.255`.
    Broadcast,
    /// Cloud instance metadata and platform endpoints (AWS/GCP/Azure/OpenStack
    /// `169.254.169.254`, AWS `169.254.170.2` and `fd00:ec2::254`, Alibaba
    /// `100.100.100.200`, Azure `168.63.129.16`).
    Metadata,
}

impl Reserved {
    /// In words, for refusals.
    pub fn describe(self) -> &'static str {
        match self {
            Reserved::Loopback => "a loopback address",
            Reserved::LinkLocal => "a link-local address",
            Reserved::Multicast => "a multicast address",
            Reserved::Unspecified => "an unspecified address",
            Reserved::Broadcast => "the broadcast address",
            Reserved::Metadata => "a cloud metadata address",
        }
    }
}

/// The reserved ranges, the most specific first.
const RESERVED: &[(Reserved, Cidr)] = &[
    (Reserved::Metadata, Cidr::v4([169, 254, 169, 254], 32)),
    (Reserved::Metadata, Cidr::v4([169, 254, 170, 2], 32)),
    (Reserved::Metadata, Cidr::v4([100, 100, 100, 200], 32)),
    (Reserved::Metadata, Cidr::v4([168, 63, 129, 16], 32)),
    (
        Reserved::Metadata,
        Cidr::v6([0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254], 128),
    ),
    (Reserved::Broadcast, Cidr::v4([255, 255, 255, 255], 32)),
    (Reserved::Unspecified, Cidr::v6([0; 8], 128)),
    (Reserved::Loopback, Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128)),
    (Reserved::Unspecified, Cidr::v4([0, 0, 0, 0], 8)),
    (Reserved::Loopback, Cidr::v4([127, 0, 0, 0], 8)),
    (Reserved::LinkLocal, Cidr::v4([169, 254, 0, 0], 16)),
    (Reserved::Multicast, Cidr::v4([224, 0, 0, 0], 4)),
    (
        Reserved::LinkLocal,
        Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    ),
    (
        Reserved::Multicast,
        Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    ),
];

/// The most specific reserved range `ip` is in, if any.
pub fn reserved(ip: IpAddr) -> Option<(Reserved, Cidr)> {
    RESERVED.iter().find(|(_, c)| c.contains(ip)).copied()
}

/// Who asks for a direct session, as far as target rules care.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// User or API key.
    pub kind: ActorKind,
    /// The user's or key's id.
    pub id: Uuid,
    /// User name (for users).
    pub name: &'a str,
}

/// One allow-list entry.
#[derive(Debug, Clone)]
pub struct TargetRule {
    /// Addresses.
    pub network: Cidr,
    /// Ports.
    pub ports: PortRange,
    /// Only these users (by name) ...
    pub users: Vec<String>,
    /// ... or these API keys (by id); both empty: anyone allowed to open sessions.
    pub api_keys: Vec<Uuid>,
}

impl TargetRule {
    fn applies_to(&self, who: &Requester<'_>) -> bool {
        if self.users.is_empty() && self.api_keys.is_empty() {
            return true;
        }
        match who.kind {
            ActorKind::User => self.users.iter().any(|u| u == who.name),
            ActorKind::ApiKey => self.api_keys.contains(&who.id),
            _ => false,
        }
    }

    /// Whether this rule allows `who` to send a modem to `ip:port` (reserved addresses only
    /// when the rule's network lies inside their reserved range).
    pub fn allows(&self, who: &Requester<'_>, ip: IpAddr, port: u16) -> bool {
        self.network.contains(ip)
            && self.ports.contains(port)
            && self.applies_to(who)
            && reserved(ip).is_none_or(|(_, range)| self.network.within(&range))
    }
}

/// Checks `ip:port` against `rules`: `Ok` if one allows it, else the reason in words.
pub fn check(
    rules: &[TargetRule],
    who: &Requester<'_>,
    ip: IpAddr,
    port: u16,
) -> Result<(), String> {
    let ip = canonical(ip);
    if rules.iter().any(|r| r.allows(who, ip, port)) {
        return Ok(());
    }
    if let Some((kind, range)) = reserved(ip) {
        return Err(format!(
            "{ip} is {} ({range}); it is refused unless a session target lists it explicitly (a network within {range})",
            kind.describe()
        ));
    }
    if rules.is_empty() {
        return Err(format!(
            "{ip}:{port} is not an allowed session target: no session targets are configured (an admin adds them at /api/v1/session-targets)"
        ));
    }
    let anyone = rules
        .iter()
        .any(|r| r.network.contains(ip) && r.ports.contains(port));
    Err(if anyone {
        format!("{ip}:{port} is a session target restricted to other users or API keys")
    } else {
        format!("{ip}:{port} is not an allowed session target")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(net: &str, ports: &str) -> TargetRule {
        TargetRule {
            network: net.parse().unwrap(),
            ports: PortRange::parse("ports", ports).unwrap(),
            users: vec![],
            api_keys: vec![],
        }
    }

    const WHO: Requester<'static> = Requester {
        kind: ActorKind::User,
        id: Uuid::nil(),
        name: "reader1",
    };

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            Cidr::parse("n", "10.20.0.0/16").unwrap().to_string(),
            "10.20.0.0/16"
        );
        assert_eq!(
            Cidr::parse("n", "192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            Cidr::parse("n", "::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(Cidr::parse("n", "0.0.0.0/0").unwrap().prefix(), 0);
        assert_eq!(
            Cidr::parse("n", "2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let e = Cidr::parse("n", "10.1.2.3/8").unwrap_err();
        assert!(e.reason.contains("10.0.0.0/8"), "{e}");
        assert!(Cidr::parse("n", "10.0.0.0/33").is_err());
        assert!(Cidr::parse("n", "example.com").is_err());
        assert!(Cidr::parse("n", "2001:db8::1/129").is_err());
        let c = Cidr::parse("n", "10.20.0.0/16").unwrap();
        assert!(c.contains("10.20.255.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.20.0.1".parse().unwrap()));
        assert!(!c.contains("10.21.0.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn port_ranges() {
        assert!(PortRange::parse("p", "502").unwrap().contains(502));
        let r = PortRange::parse("p", "10000-10100").unwrap();
        assert!(r.contains(10000) && r.contains(10100) && !r.contains(10101));
        assert!(PortRange::parse("p", "0").is_err());
        assert!(PortRange::parse("p", "9-3").is_err());
        assert!(PortRange::parse("p", "http").is_err());
    }

    #[test]
    fn reserved_addresses_need_an_explicit_rule() {
        let anywhere = [rule("0.0.0.0/0", "1-65535")];
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "169.254.1.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "100.100.100.200",
            "::1",
            "fe80::1",
            "ff02::1",
            "::",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut rules = anywhere.to_vec();
            rules.push(rule("::/0", "1-65535"));
            let err = check(&rules, &WHO, ip, 80).unwrap_err();
            assert!(err.contains("refused unless"), "{ip}: {err}");
        }
        assert!(check(&anywhere, &WHO, "203.0.113.9".parse().unwrap(), 80).is_ok());
        // Explicit entries open them.
        assert!(
            check(
                &[rule("127.0.0.0/8", "1-65535")],
                &WHO,
                "127.0.0.1".parse().unwrap(),
                80
            )
            .is_ok()
        );
        let link = [rule("169.254.0.0/16", "80")];
        assert!(check(&link, &WHO, "169.254.1.1".parse().unwrap(), 80).is_ok());
        let err = check(&link, &WHO, "169.254.169.254".parse().unwrap(), 80).unwrap_err();
        assert!(err.contains("cloud metadata"), "{err}");
        assert!(
            check(
                &[rule("169.254.169.254/32", "80")],
                &WHO,
                "169.254.169.254".parse().unwrap(),
                80
            )
            .is_ok()
        );
    }

    #[test]
    fn ports_and_principals() {
        let mut r = rule("10.0.0.0/8", "2000-2010");
        assert!(check(&[r.clone()], &WHO, "10.1.1.1".parse().unwrap(), 2005).is_ok());
        let err = check(&[r.clone()], &WHO, "10.1.1.1".parse().unwrap(), 80).unwrap_err();
        assert!(err.contains("not an allowed session target"), "{err}");
        r.users = vec!["someone-else".into()];
        let err = check(&[r.clone()], &WHO, "10.1.1.1".parse().unwrap(), 2005).unwrap_err();
        assert!(err.contains("restricted"), "{err}");
        r.users.push("reader1".into());
        assert!(check(&[r.clone()], &WHO, "10.1.1.1".parse().unwrap(), 2005).is_ok());
        let key = Requester {
            kind: ActorKind::ApiKey,
            id: Uuid::from_u128(7),
            name: "apikey:x",
        };
        assert!(check(&[r.clone()], &key, "10.1.1.1".parse().unwrap(), 2005).is_err());
        r.api_keys.push(Uuid::from_u128(7));
        assert!(check(&[r], &key, "10.1.1.1".parse().unwrap(), 2005).is_ok());
        let err = check(&[], &WHO, "10.1.1.1".parse().unwrap(), 2005).unwrap_err();
        assert!(err.contains("no session targets"), "{err}");
    }
}
