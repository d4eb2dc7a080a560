//! The live connections of devices, by certificate serial and identity, so that revoking
//! a certificate or disabling a device can end them at once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

/// Registry of live device connections on one listener. Each connection
/// [`register`](LiveDevices::register)s itself and ends when its token is cancelled.
#[derive(Debug, Default)]
pub struct LiveDevices {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    identity: Option<String>,
    serial: Option<String>,
    cancel: CancellationToken,
}

/// A registered connection: cancelled when access is revoked; unregisters when dropped.
#[derive(Debug)]
pub struct LiveGuard<'a> {
    owner: &'a LiveDevices,
    id: u64,
    cancel: CancellationToken,
}

impl LiveGuard<'_> {
    /// Cancelled when the connection's certificate is revoked or its device disabled.
    pub fn revoked(&self) -> &CancellationToken {
        &self.cancel
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut e) = self.owner.entries.lock() {
            e.remove(&self.id);
        }
    }
}

impl LiveDevices {
    /// Registers a connection of the device `identity` (its certificate CN) with the
    /// certificate `serial`.
    pub fn register(&self, identity: Option<String>, serial: Option<String>) -> LiveGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        if let Ok(mut e) = self.entries.lock() {
            e.insert(
                id,
                Entry {
                    identity,
                    serial,
                    cancel: cancel.clone(),
                },
            );
        }
        LiveGuard {
            owner: self,
            id,
            cancel,
        }
    }

    /// Ends every connection whose certificate serial is in `serials`, or whose identity
    /// is `identity`. Returns how many.
    pub fn revoke(&self, serials: &HashSet<String>, identity: Option<&str>) -> usize {
        let Ok(e) = self.entries.lock() else {
            return 0;
        };
        let mut n = 0;
        for entry in e.values() {
            let hit = entry.serial.as_ref().is_some_and(|s| serials.contains(s))
                || (identity.is_some() && entry.identity.as_deref() == identity);
            if hit && !entry.cancel.is_cancelled() {
                entry.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_cancels_by_serial_or_identity_and_guards_unregister() {
        let live = LiveDevices::default();
        let a = live.register(Some("490154203237518".into()), Some("AA".into()));
        let b = live.register(Some("356938035643809".into()), Some("BB".into()));
        let anonymous = live.register(None, None);
        assert_eq!(live.len(), 3);
        let serials: HashSet<String> = ["AA".to_owned()].into();
        assert_eq!(live.revoke(&serials, None), 1);
        assert!(a.revoked().is_cancelled() && !b.revoked().is_cancelled());
        assert_eq!(live.revoke(&HashSet::new(), Some("356938035643809")), 1);
        assert!(b.revoked().is_cancelled() && !anonymous.revoked().is_cancelled());
        assert_eq!(live.revoke(&serials, None), 0, "already ended");
        drop(a);
        drop(b);
        assert_eq!(live.len(), 1);
    }
}
