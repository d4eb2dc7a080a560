//! Platform events (`device.online`, `command.succeeded`, `status.received`, ...), fanned out
//! to Server-Sent Events subscribers and anything else that listens.
//!
//! A bounded broadcast channel: a slow subscriber misses events (and is told how many) rather
//! than holding memory or slowing the gateway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Notify, broadcast};

/// Events kept for subscribers that fall behind.
pub const EVENT_BUFFER: usize = 4096;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increasing id within this process (the SSE `id:`).
    pub id: u64,
    /// Dotted type, e.g. `device.online`, `command.sent`, `command.succeeded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The device concerned, if any.
    pub imei: Option<String>,
    /// RFC 3339.
    pub at: String,
    /// Type-specific detail.
    pub data: serde_json::Value,
}

/// The in-process event bus.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
    /// Waiters on one command (`command:<id>`, woken by its `command.*` events) or one
    /// device (`device:<imei>`, woken by its `device.*` events), so that waiting on one costs
    /// nothing when others change.
    waiters: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
}

/// A registration to be woken when a command or a device changes; unregisters when dropped.
#[derive(Debug)]
pub struct Watch<'a> {
    bus: &'a EventBus,
    id: String,
    notify: Arc<Notify>,
}

impl Watch<'_> {
    /// Waits for the next change (a change since the watch began counts).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut w = self
            .bus
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(list) = w.get_mut(&self.id) {
            list.retain(|n| !Arc::ptr_eq(n, &self.notify));
            if list.is_empty() {
                w.remove(&self.id);
            }
        }
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus with [`EVENT_BUFFER`] slots.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            tx,
            seq: AtomicU64::new(1),
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an event; returns it (with its id).
    pub fn publish(&self, kind: &str, imei: Option<&str>, data: serde_json::Value) -> Event {
        let now = OffsetDateTime::now_utc();
        let event = Event {
            id: self.seq.fetch_add(1, Ordering::Relaxed),
            kind: kind.to_owned(),
            imei: imei.map(str::to_owned),
            at: now.format(&Rfc3339).unwrap_or_default(),
            data,
        };
        metrics::counter!("callhome_events_total", "type" => kind.to_owned()).increment(1);
        let key = if kind.starts_with("command.") {
            event
                .data
                .get("id")
                .and_then(|v| v.as_str())
                .map(|id| format!("command:{id}"))
        } else if kind.starts_with("device.") {
            imei.map(|i| format!("device:{i}"))
        } else {
            None
        };
        if let Some(key) = key {
            let w = self
                .waiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for n in w.get(&key).into_iter().flatten() {
                n.notify_one();
            }
        }
        // No subscribers is fine.
        let _ = self.tx.send(event.clone());
        event
    }

    /// Watches one command (by id) for its next events.
    pub fn watch_command(&self, id: &str) -> Watch<'_> {
        self.watch(format!("command:{id}"))
    }

    /// Watches one device (by IMEI) for its next `device.*` events (online, offline).
    pub fn watch_device(&self, imei: &str) -> Watch<'_> {
        self.watch(format!("device:{imei}"))
    }

    fn watch(&self, key: String) -> Watch<'_> {
        let notify = Arc::new(Notify::new());
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .push(notify.clone());
        Watch {
            bus: self,
            id: key,
            notify,
        }
    }

    /// A new subscription, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
