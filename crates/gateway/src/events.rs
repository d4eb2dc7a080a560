//! Platform events (`device.online`, `command.succeeded`, `status.received`, ...), fanned out
//! to Server-Sent Events subscribers and anything else that listens.
//!
//! A bounded broadcast channel: a slow subscriber misses events (and is told how many) rather
//! than holding memory or slowing the gateway.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::broadcast;

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
        // No subscribers is fine.
        let _ = self.tx.send(event.clone());
        event
    }

    /// A new subscription, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
