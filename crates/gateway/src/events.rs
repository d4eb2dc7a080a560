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
    /// Waiters on one command each, woken by any `command.*` event about it (so waiting
    /// on one command costs nothing when others change).
    command_waiters: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
}

/// A registration to be woken when a command changes; unregisters when dropped.
#[derive(Debug)]
pub struct CommandWatch<'a> {
    bus: &'a EventBus,
    id: String,
    notify: Arc<Notify>,
}

impl CommandWatch<'_> {
    /// Waits for the next change of the command (a change since the watch began counts).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for CommandWatch<'_> {
    fn drop(&mut self) {
        let mut w = self
            .bus
            .command_waiters
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
            command_waiters: Mutex::new(HashMap::new()),
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
        if kind.starts_with("command.")
            && let Some(id) = event.data.get("id").and_then(|v| v.as_str())
        {
            let w = self
                .command_waiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for n in w.get(id).into_iter().flatten() {
                n.notify_one();
            }
        }
        // No subscribers is fine.
        let _ = self.tx.send(event.clone());
        event
    }

    /// Watches one command (by id) for its next events.
    pub fn watch_command(&self, id: &str) -> CommandWatch<'_> {
        let notify = Arc::new(Notify::new());
        self.command_waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .push(notify.clone());
        CommandWatch {
            bus: self,
            id: id.to_owned(),
            notify,
        }
    }

    /// A new subscription, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
