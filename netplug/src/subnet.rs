//! IPv4 subnets (`198.18.0.0/24`): parsing, host ranges, overlap.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// An IPv4 network: address with the host bits cleared, and a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// A subnet for VPCs: prefix 8..=30, host bits zero.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, &'static str> {
        if !(8..=30).contains(&prefix) {
            return Err("prefix must be between /8 and /30");
        }
        let s = Subnet { network, prefix };
        if u32::from(network) & !s.mask() != 0 {
            return Err("host bits are set (give the network address)");
        }
        Ok(s)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix as u32)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The first host address: the default gateway.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Number of host addresses (network and broadcast excluded).
    pub fn host_count(&self) -> u32 {
        (!self.mask()) - 1
    }

    /// Host addresses in order.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.network) + 1;
        let last = u32::from(self.broadcast());
        (first..last).map(Ipv4Addr::from)
    }

    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = |reason| Error::InvalidSubnet {
            text: text.to_string(),
            reason,
        };
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        Subnet::new(addr, prefix).map_err(bad)
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_ranges() {
        let s: Subnet = "198.18.4.0/24".parse().unwrap();
        assert_eq!(s.first_host(), Ipv4Addr::new(198, 18, 4, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(198, 18, 4, 255));
        assert_eq!(s.host_count(), 254);
        assert_eq!(s.hosts().count(), 254);
        assert!(s.is_host(Ipv4Addr::new(198, 18, 4, 254)));
        assert!(!s.is_host(Ipv4Addr::new(198, 18, 4, 255)));
        assert_eq!(s.to_string(), "198.18.4.0/24");
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Subnet>(&j).unwrap(), s);
    }

    #[test]
    fn rejects_bad_subnets() {
        for bad in [
            "198.18.4.1/24",
            "198.18.4.0",
            "198.18.4.0/31",
            "x/24",
            "198.18.0.0/7",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap() {
        let a: Subnet = "198.18.0.0/16".parse().unwrap();
        let b: Subnet = "198.18.7.0/24".parse().unwrap();
        let c: Subnet = "198.19.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&b));
    }
}
