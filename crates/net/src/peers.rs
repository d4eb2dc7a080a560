//! Counting what each peer address holds (connections, handshakes in progress), so that one
//! address cannot take every slot of a listener.
//!
//! Peers are counted by [`peer_key`]: an IPv4 address as is, an IPv6 address by its /64
//! (one subscriber usually holds a whole /64, so counting single IPv6 addresses would let
//! one host take 2^64 shares). An IPv4-mapped IPv6 address counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// The key `ip` is counted under: an IPv4 address itself, an IPv6 address's /64 prefix.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// At most `limit` holders per peer key at once. Cheap to clone (clones share the counts).
#[derive(Debug, Clone)]
pub struct PerAddressLimit {
    /// Holders per peer key; a key leaves the map when its count drops to zero, so the map
    /// is never larger than the number of permits out.
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Most holders per key.
    limit: usize,
}

impl PerAddressLimit {
    /// A limit of `limit` holders per peer key (0 refuses everything).
    pub fn new(limit: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(HashMap::new())),
            limit,
        }
    }

    /// The limit per peer key.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A permit for `ip`, or `None` if its key already holds `limit`. The permit gives its
    /// share back when dropped.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<AddressPermit> {
        let key = peer_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(key).or_insert(0);
        if *n >= self.limit {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(AddressPermit {
            counts: self.counts.clone(),
            key,
        })
    }

    /// How many permits `ip`'s key holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&peer_key(ip)).copied().unwrap_or(0)
    }

    /// How many peer keys hold at least one permit.
    pub fn addresses(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One share of a [`PerAddressLimit`]; given back on drop.
#[derive(Debug)]
pub struct AddressPermit {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_by_address_ipv6_by_64() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(peer_key(a), a);
        let v6a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(v6a), peer_key(v6b));
        assert_ne!(peer_key(v6a), peer_key(v6c));
        assert_eq!(peer_key(v6a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(peer_key(mapped), a);
    }

    #[test]
    fn permits_are_counted_per_key_and_given_back() {
        let limit = PerAddressLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = limit.try_acquire(a).unwrap();
        let p2 = limit.try_acquire(a).unwrap();
        assert!(
            limit.try_acquire(a).is_none(),
            "a third for the same address"
        );
        let q = limit
            .try_acquire(b)
            .expect("another address is not affected");
        assert_eq!(limit.held(a), 2);
        drop(p1);
        assert_eq!(limit.held(a), 1);
        let p3 = limit.try_acquire(a).expect("a share came back");
        drop((p2, p3, q));
        assert_eq!(limit.addresses(), 0, "empty keys leave the map");
        let zero = PerAddressLimit::new(0);
        assert!(zero.try_acquire(a).is_none());
        assert_eq!(zero.addresses(), 0);
    }

    #[test]
    fn one_ipv6_64_shares_one_count() {
        let limit = PerAddressLimit::new(1);
        let _p = limit.try_acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(limit.try_acquire("2001:db8::2".parse().unwrap()).is_none());
        assert!(
            limit
                .try_acquire("2001:db8:0:1::1".parse().unwrap())
                .is_some()
        );
    }
}
