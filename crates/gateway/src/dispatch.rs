//! The per-device command dispatcher: one task per live connection that sends the device's
//! queued commands in FIFO order with exactly one in flight, and matches replies to it.
//!
//! MTX replies carry no correlation id, so correlation is by order: the reply that arrives
//! while a command is in flight is that command's. After a timeout the dispatcher waits a
//! grace period before sending the next command; a reply arriving then, or while nothing is
//! in flight, is recorded as the timed-out command's *late reply* and never matched to
//! another command.

use std::sync::Arc;
use std::time::Duration;

use callhome_core::Imei;
use callhome_core::dialect::FinalResult;
use callhome_store::{CommandOutcome, CommandRecord, CommandState, StoreError};
use rumqttc::mqttbytes::QoS;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::Shared;
use crate::events::{CommandLateReply, CommandSent, EventPayload};
use crate::hub::Outbound;

/// How long after a timeout an unsolicited reply is still taken as the late reply.
const LATE_REPLY_WINDOW: Duration = Duration::from_secs(600);

/// The dispatcher of one connection: the device's queue, the replies its connection hands
/// over, and the command that last timed out (for late replies). Made by the connection
/// once it is accepted; [`Dispatcher::run`] is its task.
pub(crate) struct Dispatcher {
    /// The gateway's state shared by every connection (store, hub, events, configuration).
    shared: Arc<Shared>,
    /// The device.
    imei: Imei,
    /// Woken when a command is queued for the device (the hub entry's `notify`).
    notify: Arc<Notify>,
    /// The connection's kill token: cancelled when the connection ends.
    kill: CancellationToken,
    /// Replies from the modem; closed by the connection when it ends.
    replies: mpsc::Receiver<String>,
    /// The QoS of the modem's subscription to its command topic: nothing is sent while it
    /// is `None`.
    subscribed: watch::Receiver<Option<QoS>>,
    /// The command that last timed out, and when: a reply with no command in flight within
    /// [`LATE_REPLY_WINDOW`] of it is its late reply.
    last_timed_out: Option<(Uuid, Instant)>,
}

enum Wait {
    /// The command reached a final state or was re-queued.
    Done,
    /// The connection ended while waiting.
    ConnectionGone,
}

/// The final result line of a reply (its last non-empty line).
pub(crate) fn result_line(reply: &str) -> Option<String> {
    reply
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

impl Dispatcher {
    /// A dispatcher for the connection of `imei`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        imei: Imei,
        notify: Arc<Notify>,
        kill: CancellationToken,
        replies: mpsc::Receiver<String>,
        subscribed: watch::Receiver<Option<QoS>>,
    ) -> Self {
        Self {
            shared,
            imei,
            notify,
            kill,
            replies,
            subscribed,
            last_timed_out: None,
        }
    }

    /// Runs until the connection ends: awaits a command left in flight, then sends the
    /// queued ones, one at a time, whenever the modem is subscribed.
    pub(crate) async fn run(mut self) {
        let outbound = match self.shared.hub.get(&self.imei) {
            Some(e) => e.outbound,
            None => return,
        };

        // A command left in flight by an earlier connection (or node) is still awaited until
        // its deadline: its reply may come on this connection, even before it subscribes.
        match self.shared.store.in_flight_command(&self.imei).await {
            Ok(Some(cmd)) => {
                let deadline = deadline_of(&cmd);
                if let Wait::ConnectionGone = self.await_reply(&cmd, deadline).await {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "could not read the in-flight command"),
        }

        loop {
            if let Wait::ConnectionGone = self.send_queued(&outbound).await {
                return;
            }
            // Idle: wait for new work, or a stray reply. Replies already received are handled
            // before the connection's end is (biased), so a reply followed at once by
            // DISCONNECT is not lost.
            tokio::select! {
                biased;
                reply = self.replies.recv() => match reply {
                    None => return,
                    Some(text) => self.unsolicited(&text).await,
                },
                () = self.kill.cancelled() => return,
                () = self.notify.notified() => {}
                _ = self.subscribed.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }

    /// Sends everything queued, one at a time, once the modem listens on its command topic;
    /// `Done` when the queue is empty (or could not be read), or the modem unsubscribed.
    async fn send_queued(&mut self, outbound: &mpsc::Sender<Outbound>) -> Wait {
        while self.subscribed.borrow().is_some() && !self.kill.is_cancelled() {
            let next = match self
                .shared
                .store
                .next_queued_command(&self.imei, OffsetDateTime::now_utc())
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "could not read the command queue");
                    break;
                }
            };
            let Some(cmd) = next else { break };
            let sent = match self
                .shared
                .store
                .mark_command_sent(cmd.id, OffsetDateTime::now_utc())
                .await
            {
                Ok(s) => s,
                Err(StoreError::Conflict { .. }) => continue, // cancelled or taken meanwhile
                Err(e) => {
                    warn!(error = %e, "could not mark the command sent");
                    break;
                }
            };
            self.shared.events.publish(
                Some(&self.imei),
                EventPayload::CommandSent(CommandSent {
                    id: sent.id,
                    command: callhome_core::secrets::redact_command(&sent.command).into_owned(),
                    attempt: sent.attempts,
                }),
            );
            debug!(id = %sent.id, command = %callhome_core::secrets::redact_command(&sent.command), attempt = sent.attempts, "command sent");
            if outbound
                .send(Outbound::Command {
                    text: sent.command.clone(),
                })
                .await
                .is_err()
            {
                // The connection is gone; the sweeper or the next connection resolves the
                // command.
                return Wait::ConnectionGone;
            }
            let deadline =
                Instant::now() + Duration::from_millis(u64::try_from(sent.timeout_ms).unwrap_or(0));
            if let Wait::ConnectionGone = self.await_reply(&sent, deadline).await {
                return Wait::ConnectionGone;
            }
        }
        Wait::Done
    }

    /// Waits for the final result of `cmd` (in flight) until `deadline`, and records it; on
    /// timeout see [`Dispatcher::timed_out`].
    async fn await_reply(&mut self, cmd: &CommandRecord, deadline: Instant) -> Wait {
        let mut text = String::new();
        loop {
            tokio::select! {
                biased;
                reply = self.replies.recv() => {
                    let Some(chunk) = reply else { return Wait::ConnectionGone };
                    let sep = if !text.is_empty() && !text.ends_with('\n') { "\r\n" } else { "" };
                    let max = self.shared.cfg.max_reply_bytes;
                    if text.len() + sep.len() + chunk.len() > max {
                        return self.reply_too_large(cmd, text, &chunk, deadline).await;
                    }
                    text.push_str(sep);
                    text.push_str(&chunk);
                    let result = FinalResult::classify(&text);
                    if !result.is_final() {
                        continue; // an information line; the final result follows
                    }
                    let state = if result.is_ok() { CommandState::Succeeded } else { CommandState::Failed };
                    let outcome = CommandOutcome {
                        state,
                        result: result_line(&text),
                        error: (!result.is_ok()).then(|| format!("the modem answered {}", result_line(&text).unwrap_or_default())),
                        reply: Some(text),
                        at: OffsetDateTime::now_utc(),
                    };
                    self.finish(cmd, &outcome).await;
                    return Wait::Done;
                }
                () = self.kill.cancelled() => return Wait::ConnectionGone,
                () = tokio::time::sleep_until(deadline) => return self.timed_out(cmd, text).await,
            }
        }
    }

    /// The reply to `cmd` grew over [`crate::GatewayConfig::max_reply_bytes`] (`text` is
    /// what came before `chunk`): the command fails with the reason and keeps the reply's
    /// first bytes, up to the limit. The rest of that reply is discarded without being
    /// kept, until its final result line or the command's deadline, so that it is not taken
    /// as the next command's reply.
    async fn reply_too_large(
        &mut self,
        cmd: &CommandRecord,
        mut text: String,
        chunk: &str,
        deadline: Instant,
    ) -> Wait {
        let max = self.shared.cfg.max_reply_bytes;
        if !text.is_empty() && !text.ends_with('\n') && text.len() + 2 <= max {
            text.push_str("\r\n");
        }
        let mut room = max.saturating_sub(text.len()).min(chunk.len());
        while !chunk.is_char_boundary(room) {
            room -= 1;
        }
        text.push_str(&chunk[..room]);
        metrics::counter!("callhome_commands_reply_too_large_total").increment(1);
        warn!(id = %cmd.id, limit = max, "reply over the size limit; the command fails");
        let outcome = CommandOutcome {
            state: CommandState::Failed,
            result: None,
            error: Some(format!(
                "the reply exceeded the limit of {max} bytes per command (mqtt.max_reply_bytes); its first {} bytes are kept",
                text.len()
            )),
            reply: Some(text),
            at: OffsetDateTime::now_utc(),
        };
        self.finish(cmd, &outcome).await;
        if FinalResult::classify(chunk).is_final() {
            return Wait::Done;
        }
        loop {
            tokio::select! {
                biased;
                reply = self.replies.recv() => match reply {
                    None => return Wait::ConnectionGone,
                    Some(rest) => {
                        metrics::counter!("callhome_commands_reply_bytes_discarded_total")
                            .increment(rest.len() as u64);
                        if FinalResult::classify(&rest).is_final() {
                            return Wait::Done;
                        }
                    }
                },
                () = self.kill.cancelled() => return Wait::ConnectionGone,
                () = tokio::time::sleep_until(deadline) => return Wait::Done,
            }
        }
    }

    /// `cmd` got no final result in time (`text` is what came): re-queued while it has
    /// attempts left, else ended `timed_out`. Then a grace period in which any reply is the
    /// timed-out command's late reply.
    async fn timed_out(&mut self, cmd: &CommandRecord, text: String) -> Wait {
        let secs = cmd.timeout_ms as f64 / 1000.0;
        let error = if text.is_empty() {
            format!("no reply within {secs} s")
        } else {
            format!("no final result within {secs} s")
        };
        if cmd.attempts < cmd.max_attempts {
            match self.shared.store.requeue_command(cmd.id, &error).await {
                Ok(r) => {
                    info!(id = %cmd.id, attempt = r.attempts, "command timed out; it will be sent again");
                    self.shared
                        .events
                        .command_retrying(&self.imei, cmd.id, r.attempts, &error);
                }
                Err(e) => warn!(error = %e, "could not re-queue the command"),
            }
        } else {
            let outcome = CommandOutcome {
                state: CommandState::TimedOut,
                reply: (!text.is_empty()).then_some(text),
                result: None,
                error: Some(error),
                at: OffsetDateTime::now_utc(),
            };
            self.finish(cmd, &outcome).await;
        }
        self.last_timed_out = Some((cmd.id, Instant::now()));
        // Quarantine: a reply now belongs to the command that timed out.
        let grace = self.shared.cfg.late_reply_grace.min(Duration::from_millis(
            u64::try_from(cmd.timeout_ms).unwrap_or(0),
        ));
        let until = Instant::now() + grace;
        loop {
            tokio::select! {
                biased;
                reply = self.replies.recv() => match reply {
                    None => return Wait::ConnectionGone,
                    Some(t) => self.unsolicited(&t).await,
                },
                () = self.kill.cancelled() => return Wait::ConnectionGone,
                () = tokio::time::sleep_until(until) => return Wait::Done,
            }
        }
    }

    /// Records a command's final state and publishes it.
    async fn finish(&self, cmd: &CommandRecord, outcome: &CommandOutcome) {
        let rtt = cmd
            .sent_at
            .map(|s| (outcome.at - s).as_seconds_f64())
            .unwrap_or_default();
        match self.shared.store.complete_command(cmd.id, outcome).await {
            Ok(done) => {
                metrics::counter!("callhome_commands_total", "state" => done.state.as_str())
                    .increment(1);
                if done.state != CommandState::TimedOut {
                    metrics::histogram!("callhome_command_round_trip_seconds").record(rtt);
                }
                // A VERSION reply is what the modem runs: the inventory keeps it.
                if done.state == CommandState::Succeeded
                    && matches!(
                        callhome_core::dialect::parse_mtx_command(&done.command),
                        Some(callhome_core::dialect::MtxCommand::Version)
                    )
                    && let Some(v) = outcome
                        .reply
                        .as_deref()
                        .and_then(|r| callhome_core::dialect::parse_version_reply(r).ok())
                        .and_then(|l| callhome_core::firmware::Version::from_reported(&l).ok())
                {
                    self.shared
                        .report_firmware(&self.imei, None, Some(v.as_str()), "version")
                        .await;
                }
                self.shared.events.command_finished(&done);
            }
            Err(e) => warn!(id = %cmd.id, error = %e, "could not record the command's outcome"),
        }
    }

    /// A reply with no command in flight: the late reply of the command that last timed
    /// out (within [`LATE_REPLY_WINDOW`]), else ignored.
    async fn unsolicited(&self, text: &str) {
        match self.last_timed_out {
            Some((id, at)) if at.elapsed() < LATE_REPLY_WINDOW => {
                info!(id = %id, "late reply recorded on the timed-out command");
                metrics::counter!("callhome_commands_late_replies_total").increment(1);
                if let Err(e) = self
                    .shared
                    .store
                    .record_late_reply(id, text, OffsetDateTime::now_utc())
                    .await
                {
                    warn!(error = %e, "could not record the late reply");
                }
                self.shared.events.publish(
                    Some(&self.imei),
                    EventPayload::CommandLateReply(CommandLateReply {
                        id,
                        reply: callhome_core::secrets::redact_reply(text).into_owned(),
                    }),
                );
            }
            _ => {
                metrics::counter!("callhome_mqtt_unsolicited_replies_total").increment(1);
                info!(reply = %callhome_core::secrets::redact_reply(text), "reply with no command in flight; ignored");
            }
        }
    }
}

fn deadline_of(cmd: &CommandRecord) -> Instant {
    let sent_at = cmd.sent_at.unwrap_or(cmd.created_at);
    let deadline = sent_at + time::Duration::milliseconds(cmd.timeout_ms);
    let remaining = (deadline - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    Instant::now() + Duration::try_from(remaining).unwrap_or(Duration::ZERO)
}
