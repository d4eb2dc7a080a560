//! What one node tells the others sharing its database, so that they act at once instead
//! of at their next poll. Only identifiers travel; each node reads the rest itself.

use std::fmt;
use std::str::FromStr;

use crate::Imei;

/// A change another node must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChange {
    /// A certificate was revoked: rebuild the CRL and end the connections it revokes.
    Crl,
    /// A device was disabled or deleted: end everything it has open.
    DeviceAccess(Imei),
    /// Announcements may have been missed (the listening connection was lost): re-read
    /// what they would have said.
    Resync,
}

impl fmt::Display for ClusterChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterChange::Crl => f.write_str("crl"),
            ClusterChange::DeviceAccess(imei) => write!(f, "device:{imei}"),
            ClusterChange::Resync => f.write_str("resync"),
        }
    }
}

impl FromStr for ClusterChange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "crl" => Ok(ClusterChange::Crl),
            "resync" => Ok(ClusterChange::Resync),
            other => match other.strip_prefix("device:") {
                Some(imei) => Imei::parse(imei)
                    .map(ClusterChange::DeviceAccess)
                    .map_err(|e| format!("cluster change {other:?}: {e}")),
                None => Err(format!("unknown cluster change {other:?}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_garbage_is_refused() {
        let imei = Imei::parse("490154203237518").unwrap();
        for c in [
            ClusterChange::Crl,
            ClusterChange::Resync,
            ClusterChange::DeviceAccess(imei),
        ] {
            assert_eq!(c.to_string().parse::<ClusterChange>().unwrap(), c);
        }
        for bad in [
            "",
            "CRL",
            "device:",
            "device:123",
            "device:490154203237519",
            "x",
        ] {
            assert!(bad.parse::<ClusterChange>().is_err(), "{bad}");
        }
    }
}
