//! The registry of live modem sessions on this node: who is connected, how to reach its
//! session task, and how to end it.

use std::collections::HashMap;
use std::sync::Mutex;

use callhome_core::Imei;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

/// A frame for a session's writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Publish a command on the device's command topic.
    Command { text: String },
}

/// What the hub keeps per live session.
#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    /// Unique per connection.
    pub session_id: String,
    /// Cancelled to end the session (takeover, revocation, shutdown).
    pub kill: CancellationToken,
    /// Wakes the session's command dispatcher.
    pub notify: Arc<Notify>,
    /// Serial of the client certificate, if any.
    pub cert_serial: Option<String>,
    /// To the session writer (bounded).
    pub outbound: mpsc::Sender<Outbound>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<Imei, SessionEntry>,
    last_seen: HashMap<Imei, OffsetDateTime>,
}

/// Live sessions, by IMEI.
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

    /// Registers a session, returning the one it replaces (which the caller ends).
    pub fn register(&self, imei: &Imei, entry: SessionEntry) -> Option<SessionEntry> {
        self.lock().sessions.insert(imei.clone(), entry)
    }

    /// Removes the session if it is still `session_id`'s.
    pub fn unregister(&self, imei: &Imei, session_id: &str) -> bool {
        let mut inner = self.lock();
        if inner
            .sessions
            .get(imei)
            .is_some_and(|e| e.session_id == session_id)
        {
            inner.sessions.remove(imei);
            true
        } else {
            false
        }
    }

    /// The live session of a device.
    pub fn get(&self, imei: &Imei) -> Option<SessionEntry> {
        self.lock().sessions.get(imei).cloned()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Ends every session whose certificate serial is in `serials`. Returns the IMEIs.
    pub fn kill_serials(&self, serials: &std::collections::HashSet<String>) -> Vec<Imei> {
        let inner = self.lock();
        let mut killed = Vec::new();
        for (imei, e) in &inner.sessions {
            if e.cert_serial.as_ref().is_some_and(|s| serials.contains(s)) {
                e.kill.cancel();
                killed.push(imei.clone());
            }
        }
        killed
    }

    /// Ends every session.
    pub fn kill_all(&self) {
        for e in self.lock().sessions.values() {
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
