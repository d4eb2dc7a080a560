//! Long-lived streams by principal (the SSE event stream, session WebSockets), so that
//! disabling a user or revoking an API key ends its open streams at once: every stream holds
//! a [`StreamGuard`] from [`PrincipalStreams::open`] and stops when
//! [`StreamGuard::cancelled`] completes; the disable and revoke handlers call
//! [`PrincipalStreams::end_all`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use uuid::Uuid;

struct Entry {
    token: CancellationToken,
    open: usize,
}

/// The registry of open streams per user or API key id. Cheap to clone.
#[derive(Clone, Default)]
pub struct PrincipalStreams {
    inner: Arc<Mutex<HashMap<Uuid, Entry>>>,
}

impl std::fmt::Debug for PrincipalStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalStreams")
            .field("principals", &self.map().len())
            .finish()
    }
}

impl PrincipalStreams {
    fn map(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers one open stream of `principal`; it ends when the guard's token is cancelled.
    pub fn open(&self, principal: Uuid) -> StreamGuard {
        let mut map = self.map();
        let entry = map.entry(principal).or_insert_with(|| Entry {
            token: CancellationToken::new(),
            open: 0,
        });
        entry.open += 1;
        metrics::gauge!("callhome_http_streams_open").increment(1.0);
        StreamGuard {
            registry: self.clone(),
            principal,
            token: entry.token.clone(),
        }
    }

    /// Ends every open stream of `principal`. Returns how many there were.
    pub fn end_all(&self, principal: Uuid) -> usize {
        let removed = self.map().remove(&principal);
        match removed {
            Some(e) => {
                e.token.cancel();
                if e.open > 0 {
                    tracing::info!(%principal, streams = e.open, "open streams ended: credentials disabled or revoked");
                }
                e.open
            }
            None => 0,
        }
    }

    /// Open streams of `principal`.
    pub fn open_count(&self, principal: Uuid) -> usize {
        self.map().get(&principal).map_or(0, |e| e.open)
    }
}

/// One open stream of a principal; dropping it unregisters the stream.
pub struct StreamGuard {
    registry: PrincipalStreams,
    principal: Uuid,
    token: CancellationToken,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl StreamGuard {
    /// Completes when the principal's streams are ended.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        metrics::gauge!("callhome_http_streams_open").decrement(1.0);
        if self.token.is_cancelled() {
            return; // `end_all` removed the entry already
        }
        let mut map = self.registry.map();
        if let Some(e) = map.get_mut(&self.principal) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 {
                map.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn end_all_cancels_only_that_principals_streams() {
        let r = PrincipalStreams::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let a1 = r.open(a);
        let a2 = r.open(a);
        let b1 = r.open(b);
        assert_eq!(r.open_count(a), 2);
        assert_eq!(r.end_all(a), 2);
        a1.cancelled().await;
        a2.cancelled().await;
        assert!(!b1.token.is_cancelled());
        drop((a1, a2));
        // A new stream after the revocation is a new entry, not a cancelled one.
        let a3 = r.open(a);
        assert!(!a3.token.is_cancelled());
        drop(a3);
        drop(b1);
        assert_eq!(
            r.map().len(),
            0,
            "entries are removed with their last stream"
        );
    }
}
