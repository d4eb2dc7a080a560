//! Per-principal bounds of long-lived HTTP streams: how many Server-Sent Event streams one
//! user or API key may hold open, and the largest WebSocket frame and message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

use crate::error::ApiError;

/// Bounds of long-lived streams, and the streams open now. Cheap to clone (clones share the
/// counts).
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Most event streams (`GET /api/v1/events`) one principal may hold open at once.
    pub max_event_streams_per_principal: usize,
    /// Largest WebSocket frame, and message, a reader may send on a session stream, bytes.
    /// Frames and messages have the same limit, so a frame over it is refused from its header
    /// before its payload is read.
    pub ws_max_message_bytes: usize,
    /// Event streams open per principal id.
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl StreamLimits {
    /// The given bounds, no stream open.
    pub fn new(max_event_streams_per_principal: usize, ws_max_message_bytes: usize) -> Self {
        Self {
            max_event_streams_per_principal,
            ws_max_message_bytes,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A share of `principal`'s event streams, or 429 naming the limit.
    pub fn open_event_stream(&self, principal: Uuid, name: &str) -> Result<StreamGuard, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(principal).or_insert(0);
        if *n >= self.max_event_streams_per_principal {
            let held = *n;
            if held == 0 {
                open.remove(&principal);
            }
            metrics::counter!("callhome_http_rejected_total", "reason" => "max_event_streams_per_principal")
                .increment(1);
            return Err(ApiError::TooManyRequests {
                detail: format!(
                    "{name} already has {held} event streams open; the limit is {} \
                     (http.max_event_streams_per_principal)",
                    self.max_event_streams_per_principal
                ),
                retry_after_s: None,
            });
        }
        *n += 1;
        Ok(StreamGuard {
            open: self.open.clone(),
            principal,
        })
    }

    /// Event streams `principal` holds open now.
    pub fn event_streams(&self, principal: Uuid) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&principal).copied().unwrap_or(0)
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self::new(8, 1 << 20)
    }
}

/// One open event stream; gives its share back when dropped (when the client goes away).
#[derive(Debug)]
pub struct StreamGuard {
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
    principal: Uuid,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_counted_per_principal() {
        let limits = StreamLimits::new(2, 1024);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let g1 = limits.open_event_stream(a, "alice").unwrap();
        let _g2 = limits.open_event_stream(a, "alice").unwrap();
        let err = limits.open_event_stream(a, "alice").unwrap_err();
        assert!(matches!(err, ApiError::TooManyRequests { .. }));
        assert!(
            err.to_string()
                .contains("http.max_event_streams_per_principal"),
            "{err}"
        );
        let _h = limits
            .open_event_stream(b, "bob")
            .expect("another principal");
        drop(g1);
        assert_eq!(limits.event_streams(a), 1);
        let _g3 = limits
            .open_event_stream(a, "alice")
            .expect("a share came back");
    }
}
