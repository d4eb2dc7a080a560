//! Sending a device's commands for one piece of work, with a journal so the work can resume
//! after a restart without sending any command twice.
//!
//! Every command is queued with `created_by` set to the work's key (`job:<id>` for a job's
//! execution). The command log is the journal: a journal resuming the same work first
//! replays the commands already queued under that key, in order. As long as the work asks
//! for the same commands in the same order (it is deterministic given the replies), each
//! request is answered from the journal (waiting for it if it is still queued or in flight)
//! instead of being sent again. The first request that differs ends the replay.

use std::collections::VecDeque;
use std::time::Duration;

use callhome_core::{AtCommand, Imei};
use callhome_gateway::{CommandRequest, Gateway};
use callhome_store::{CommandFilter, CommandRecord, Store};

use crate::Result;

/// Commands the journal of one piece of work may hold.
const MAX_JOURNAL: u32 = 1000;

/// Sends the commands of one piece of work on one device.
pub struct Journal {
    gateway: Gateway,
    imei: Imei,
    key: String,
    journal: VecDeque<CommandRecord>,
    sent: u32,
    replayed: u32,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("imei", &self.imei)
            .field("key", &self.key)
            .field("journal", &self.journal.len())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// A journal with an empty journal (work that is never resumed, e.g. an API request);
    /// `key` is recorded as the commands' `created_by`.
    pub fn fresh(gateway: Gateway, imei: Imei, key: String) -> Self {
        Self {
            gateway,
            imei,
            key,
            journal: VecDeque::new(),
            sent: 0,
            replayed: 0,
        }
    }

    /// A journal that first replays the commands already queued under `key`.
    pub async fn resume(
        store: &dyn Store,
        gateway: Gateway,
        imei: Imei,
        key: String,
    ) -> Result<Self> {
        let mut journal = VecDeque::new();
        let mut before = None;
        loop {
            let page = store
                .list_commands(&CommandFilter {
                    imei: Some(imei.to_string()),
                    created_by: Some(key.clone()),
                    before,
                    limit: MAX_JOURNAL,
                    ..Default::default()
                })
                .await?;
            for c in page.items {
                journal.push_front(c);
            }
            match page.next.and_then(|n| n.parse().ok()) {
                Some(n) if journal.len() < MAX_JOURNAL as usize * 10 => before = Some(n),
                _ => break,
            }
        }
        let mut r = Self::fresh(gateway, imei, key);
        r.journal = journal;
        Ok(r)
    }

    /// Commands sent (not replayed) so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Commands answered from the journal so far.
    pub fn replayed(&self) -> u32 {
        self.replayed
    }

    /// Sends `command` (or takes it from the journal) and waits for its final state:
    /// `timeout` for the reply once sent, `expires_in` to be delivered.
    pub async fn run(
        &mut self,
        command: AtCommand,
        timeout: Duration,
        expires_in: Duration,
    ) -> Result<CommandRecord> {
        let text = command.to_string();
        let id = match self.journal.pop_front() {
            Some(c) if c.command == text => {
                self.replayed += 1;
                tracing::debug!(imei = %self.imei, id = %c.id, "command taken from the journal");
                c.id
            }
            other => {
                if let Some(c) = other {
                    tracing::info!(imei = %self.imei, key = %self.key, id = %c.id,
                        "journal diverges from the work; sending new commands from here");
                    self.journal.clear();
                }
                let rec = self
                    .gateway
                    .enqueue(CommandRequest {
                        imei: self.imei.clone(),
                        command,
                        timeout,
                        expires_in,
                        max_attempts: 1,
                        created_by: self.key.clone(),
                    })
                    .await?;
                self.sent += 1;
                rec.id
            }
        };
        // The wait covers queueing, delivery and the reply, with margin for the sweeper.
        let wait = expires_in + timeout + Duration::from_secs(10);
        Ok(self.gateway.wait_final(id, wait).await?)
    }
}
