//! The registry of live modem connections on this node: who is connected, how to reach its
//! connection task, and how to end it.

use std::collections::HashMap;
use std::sync::Mutex;

use callhome_core::Imei;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

/// A frame for a connection's writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Publish a command on the device's command topic.
    Command { text: String },
}

/// What the hub keeps per live connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionEntry {
    /// Unique per connection.
    pub session_id: String,
    /// Cancelled to end the connection (takeover, revocation, shutdown).
    pub kill: CancellationToken,
    /// Wakes the connection's command dispatcher.
    pub notify: Arc<Notify>,
    /// Serial of the client certificate, if any.
    pub cert_serial: Option<String>,
    /// To the connection writer (bounded).
    pub outbound: mpsc::Sender<Outbound>,
}

#[derive(Debug, Default)]
struct Inner {
    connections: HashMap<Imei, ConnectionEntry>,
    last_seen: HashMap<Imei, OffsetDateTime>,
}

/// Live connections, by IMEI.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent (each
        // operation is a single insert/remove), so recover from poisoning.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a connection, returning the one it replaces (which the caller ends).
    pub fn register(&self, imei: &Imei, entry: ConnectionEntry) -> Option<ConnectionEntry> {
        self.lock().connections.insert(imei.clone(), entry)
    }

    /// Removes the connection if it is still `session_id`'s.
    pub fn unregister(&self, imei: &Imei, session_id: &str) -> bool {
        let mut inner = self.lock();
        if inner
            .connections
            .get(imei)
            .is_some_and(|e| e.session_id == session_id)
        {
            inner.connections.remove(imei);
            true
        } else {
            false
        }
    }

    /// The live connection of a device.
    pub fn get(&self, imei: &Imei) -> Option<ConnectionEntry> {
        self.lock().connections.get(imei).cloned()
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.lock().connections.len()
    }

    /// Ends every connection whose certificate serial is in `serials`. Returns the IMEIs.
    pub fn kill_serials(&self, serials: &std::collections::HashSet<String>) -> Vec<Imei> {
        let inner = self.lock();
        let mut killed = Vec::new();
        for (imei, e) in &inner.connections {
            if e.cert_serial.as_ref().is_some_and(|s| serials.contains(s)) {
                e.kill.cancel();
                killed.push(imei.clone());
            }
        }
        killed
    }

    /// Ends every connection.
    pub fn kill_all(&self) {
        for e in self.lock().connections.values() {
            e.kill.cancel();
        }
    }

    /// Records activity of a device (flushed to the store periodically).
    pub fn seen(&self, imei: &Imei, at: OffsetDateTime) {
        self.lock().last_seen.insert(imei.clone(), at);
    }

    /// Takes the activity recorded since the last call.
    pub fn drain_seen(&self) -> Vec<(Imei, OffsetDateTime)> {
        self.lock().last_seen.drain().collect()
    }
}
