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

pub(crate) struct DispatchCtx {
    pub shared: Arc<Shared>,
    pub imei: Imei,
    pub notify: Arc<Notify>,
    pub kill: CancellationToken,
    pub reply_rx: mpsc::Receiver<String>,
    pub subscribed: watch::Receiver<Option<QoS>>,
}

enum Wait {
    /// The command reached a final state or was re-queued.
    Done,
    /// The connection ended while waiting.
    SessionGone,
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

pub(crate) async fn run(mut ctx: DispatchCtx) {
    let outbound = match ctx.shared.hub.get(&ctx.imei) {
        Some(e) => e.outbound,
        None => return,
    };
    let mut last_timed_out: Option<(Uuid, Instant)> = None;

    // A command left in flight by an earlier connection (or node) is still awaited until
    // its deadline: its reply may come on this connection, even before it subscribes.
    match ctx.shared.store.in_flight_command(&ctx.imei).await {
        Ok(Some(cmd)) => {
            let deadline = deadline_of(&cmd);
            if let Wait::SessionGone =
                await_reply(&mut ctx, &cmd, deadline, &mut last_timed_out).await
            {
                return;
            }
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "could not read the in-flight command"),
    }

    loop {
        // Send everything queued, one at a time, once the modem listens on its command topic.
        while ctx.subscribed.borrow().is_some() && !ctx.kill.is_cancelled() {
            let next = match ctx
                .shared
                .store
                .next_queued_command(&ctx.imei, OffsetDateTime::now_utc())
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "could not read the command queue");
                    break;
                }
            };
            let Some(cmd) = next else { break };
            let sent = match ctx
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
            ctx.shared.events.publish(
                Some(&ctx.imei),
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
                // The connection is gone; the sweeper or the next connection resolves the command.
                return;
            }
            let deadline =
                Instant::now() + Duration::from_millis(u64::try_from(sent.timeout_ms).unwrap_or(0));
            if let Wait::SessionGone =
                await_reply(&mut ctx, &sent, deadline, &mut last_timed_out).await
            {
                return;
            }
        }
        // Idle: wait for new work, or a stray reply. Replies already received are handled
        // before the connection's end is (biased), so a reply followed at once by DISCONNECT
        // is not lost.
        tokio::select! {
            biased;
            reply = ctx.reply_rx.recv() => match reply {
                None => return,
                Some(text) => unsolicited(&ctx, &text, &mut last_timed_out).await,
            },
            () = ctx.kill.cancelled() => return,
            () = ctx.notify.notified() => {}
            _ = ctx.subscribed.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

fn deadline_of(cmd: &CommandRecord) -> Instant {
    let sent_at = cmd.sent_at.unwrap_or(cmd.created_at);
    let deadline = sent_at + time::Duration::milliseconds(cmd.timeout_ms);
    let remaining = (deadline - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    Instant::now() + Duration::try_from(remaining).unwrap_or(Duration::ZERO)
}

async fn await_reply(
    ctx: &mut DispatchCtx,
    cmd: &CommandRecord,
    deadline: Instant,
    last_timed_out: &mut Option<(Uuid, Instant)>,
) -> Wait {
    let mut text = String::new();
    loop {
        tokio::select! {
            biased;
            reply = ctx.reply_rx.recv() => {
                let Some(chunk) = reply else { return Wait::SessionGone };
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push_str("\r\n");
                }
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
                finish(ctx, cmd, &outcome).await;
                return Wait::Done;
            }
            () = ctx.kill.cancelled() => return Wait::SessionGone,
            () = tokio::time::sleep_until(deadline) => {
                let secs = cmd.timeout_ms as f64 / 1000.0;
                let error = if text.is_empty() {
                    format!("no reply within {secs} s")
                } else {
                    format!("no final result within {secs} s")
                };
                if cmd.attempts < cmd.max_attempts {
                    match ctx.shared.store.requeue_command(cmd.id, &error).await {
                        Ok(r) => {
                            info!(id = %cmd.id, attempt = r.attempts, "command timed out; it will be sent again");
                            ctx.shared.events.command_retrying(&ctx.imei, cmd.id, r.attempts, &error);
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
                    finish(ctx, cmd, &outcome).await;
                }
                *last_timed_out = Some((cmd.id, Instant::now()));
                // Quarantine: a reply now belongs to the command that timed out.
                let grace = ctx.shared.cfg.late_reply_grace.min(Duration::from_millis(u64::try_from(cmd.timeout_ms).unwrap_or(0)));
                let until = Instant::now() + grace;
                loop {
                    tokio::select! {
                        biased;
                        reply = ctx.reply_rx.recv() => match reply {
                            None => return Wait::SessionGone,
                            Some(t) => unsolicited(ctx, &t, last_timed_out).await,
                        },
                        () = ctx.kill.cancelled() => return Wait::SessionGone,
                        () = tokio::time::sleep_until(until) => return Wait::Done,
                    }
                }
            }
        }
    }
}

async fn finish(ctx: &DispatchCtx, cmd: &CommandRecord, outcome: &CommandOutcome) {
    let rtt = cmd
        .sent_at
        .map(|s| (outcome.at - s).as_seconds_f64())
        .unwrap_or_default();
    match ctx.shared.store.complete_command(cmd.id, outcome).await {
        Ok(done) => {
            metrics::counter!("callhome_commands_total", "state" => done.state.as_str())
                .increment(1);
            if done.state != CommandState::TimedOut {
                metrics::histogram!("callhome_command_round_trip_seconds").record(rtt);
            }
            ctx.shared.events.command_finished(&done);
        }
        Err(e) => warn!(id = %cmd.id, error = %e, "could not record the command's outcome"),
    }
}

async fn unsolicited(ctx: &DispatchCtx, text: &str, last_timed_out: &mut Option<(Uuid, Instant)>) {
    match last_timed_out {
        Some((id, at)) if at.elapsed() < LATE_REPLY_WINDOW => {
            info!(id = %id, "late reply recorded on the timed-out command");
            metrics::counter!("callhome_commands_late_replies_total").increment(1);
            if let Err(e) = ctx
                .shared
                .store
                .record_late_reply(*id, text, OffsetDateTime::now_utc())
                .await
            {
                warn!(error = %e, "could not record the late reply");
            }
            ctx.shared.events.publish(
                Some(&ctx.imei),
                EventPayload::CommandLateReply(CommandLateReply {
                    id: *id,
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
