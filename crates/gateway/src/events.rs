//! The event bus: platform events ([`callhome_core::events`]: `device.online`,
//! `command.succeeded`, `status.received`, ...) fanned out to Server-Sent Events subscribers
//! and anything else that listens.
//!
//! A bounded broadcast channel: a slow subscriber misses events (and is told how many) rather
//! than holding memory or slowing the gateway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use callhome_core::Imei;
pub use callhome_core::events::*;
use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

/// Events kept for subscribers that fall behind.
pub const EVENT_BUFFER: usize = 4096;

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

    /// Publishes an event about `imei` (if any); returns it with its id and time.
    pub fn publish(&self, imei: Option<&Imei>, payload: EventPayload) -> Event {
        let event = Event {
            id: self.seq.fetch_add(1, Ordering::Relaxed),
            payload,
            imei: imei.cloned(),
            at: OffsetDateTime::now_utc(),
        };
        metrics::counter!("callhome_events_total", "type" => event.kind()).increment(1);
        let key = if let Some(id) = event.payload.command_id() {
            Some(command_key(id))
        } else if event.payload.is_presence() {
            imei.map(device_key)
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
    pub fn watch_command(&self, id: Uuid) -> Watch<'_> {
        self.watch(command_key(id))
    }

    /// Watches one device (by IMEI) for its next `device.*` events (online, offline).
    pub fn watch_device(&self, imei: &Imei) -> Watch<'_> {
        self.watch(device_key(imei))
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

fn command_key(id: Uuid) -> String {
    format!("command:{id}")
}

fn device_key(imei: &Imei) -> String {
    format!("device:{imei}")
}

impl EventBus {
    /// Publishes `command.queued` for a command just queued.
    pub(crate) fn command_queued(&self, rec: &callhome_store::CommandRecord) {
        self.publish(
            Some(&rec.imei),
            EventPayload::CommandQueued(CommandQueued {
                id: rec.id,
                command: callhome_core::secrets::redact_command(&rec.command).into_owned(),
            }),
        );
    }

    /// Publishes the `command.<state>` event of a command that reached a final state
    /// (nothing for one that has not).
    pub(crate) fn command_finished(&self, rec: &callhome_store::CommandRecord) {
        let data = CommandFinished {
            id: rec.id,
            command: callhome_core::secrets::redact_command(&rec.command).into_owned(),
            result: rec.result.clone(),
            error: rec.error.clone(),
        };
        if let Some(payload) = EventPayload::command_finished(rec.state, data) {
            self.publish(Some(&rec.imei), payload);
        }
    }

    /// Publishes `command.retrying` for a command re-queued after `error`.
    pub(crate) fn command_retrying(&self, imei: &Imei, id: Uuid, attempts: i64, error: &str) {
        self.publish(
            Some(imei),
            EventPayload::CommandRetrying(CommandRetrying {
                id,
                attempts,
                error: error.to_owned(),
            }),
        );
    }
}
