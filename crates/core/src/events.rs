//! Platform events: what happened, to which device, and when. The gateway, the tunnel and the
//! job engine publish them on the event bus; the API streams them as Server-Sent Events.
//!
//! On the wire an [`Event`] is one JSON object, `{"id", "type", "imei", "at", "data"}`: `type`
//! is the dotted name of its [`EventPayload`] variant (`device.online`, `command.succeeded`,
//! `session.closed`, `job.device.failed`, ...) and `data` that variant's payload struct.
//! Command text and replies in payloads are masked ([`crate::secrets`]) by whoever builds them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::jobs::{ExecState, JobState};
use crate::{CloseReason, CommandState, Imei, SessionMode};

/// One event as published and streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing id within the publishing process (the SSE `id:`).
    pub id: u64,
    /// What happened: `type` and `data` on the wire.
    #[serde(flatten)]
    pub payload: EventPayload,
    /// The device concerned, if any.
    pub imei: Option<Imei>,
    /// When it was published.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event {
    /// The dotted type name, e.g. `command.sent`.
    pub fn kind(&self) -> &'static str {
        self.payload.kind()
    }
}

/// Declares [`EventPayload`]: each variant with its wire name, spelt once.
macro_rules! payloads {
    ($( $(#[$vmeta:meta])* $wire:literal => $variant:ident($data:ty), )+) => {
        /// What happened, with its detail. Serialised as `{"type": <name>, "data": <payload>}`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "data")]
        pub enum EventPayload {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant($data), )+
        }

        impl EventPayload {
            /// Every type name, in declaration order.
            pub const KINDS: &'static [&'static str] = &[$($wire),+];

            /// The dotted type name.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( EventPayload::$variant(_) => $wire, )+
                }
            }
        }
    };
}

payloads! {
    /// A modem connected to the command channel.
    "device.online" => DeviceOnline(DeviceOnline),
    /// A modem's command-channel connection ended.
    "device.offline" => DeviceOffline(DeviceOffline),
    /// A modem sent a status message.
    "status.received" => StatusReceived(StatusReceived),
    /// A command was queued for a device.
    "command.queued" => CommandQueued(CommandQueued),
    /// A command was published to its device.
    "command.sent" => CommandSent(CommandSent),
    /// A command timed out and will be sent again.
    "command.retrying" => CommandRetrying(CommandRetrying),
    /// A command's final result was `OK`.
    "command.succeeded" => CommandSucceeded(CommandFinished),
    /// A command's final result was an error.
    "command.failed" => CommandFailed(CommandFinished),
    /// A command got no reply after its last attempt.
    "command.timed_out" => CommandTimedOut(CommandFinished),
    /// A queued command was cancelled.
    "command.cancelled" => CommandCancelled(CommandFinished),
    /// A command was never delivered before its expiry.
    "command.expired" => CommandExpired(CommandFinished),
    /// A reply came after its command had timed out.
    "command.late_reply" => CommandLateReply(CommandLateReply),
    /// A meter-reading session was asked for.
    "session.requested" => SessionRequested(SessionRequested),
    /// The modem of a rendezvous session reached the tunnel.
    "session.modem_connected" => SessionModemConnected(SessionRef),
    /// The reader of a rendezvous session connected.
    "session.reader_connected" => SessionReaderConnected(SessionRef),
    /// A session's bytes flow.
    "session.active" => SessionActive(SessionActive),
    /// A session ended.
    "session.closed" => SessionClosed(SessionClosed),
    /// A job was created.
    "job.created" => JobCreated(JobCreated),
    /// A job opened its next wave.
    "job.wave" => JobWave(JobWave),
    /// A job was resumed (or started running again).
    "job.running" => JobRunning(JobStateChanged),
    /// A job was paused.
    "job.paused" => JobPaused(JobStateChanged),
    /// Every device of a job finished.
    "job.completed" => JobCompleted(JobStateChanged),
    /// A job was stopped by its abort rule.
    "job.aborted" => JobAborted(JobStateChanged),
    /// A job was cancelled by an operator.
    "job.cancelled" => JobCancelled(JobStateChanged),
    /// A job's expiry passed with devices not done.
    "job.expired" => JobExpired(JobStateChanged),
    /// A device's execution of a job started.
    "job.device.started" => JobDeviceStarted(JobDeviceStarted),
    /// A device's execution of a job succeeded.
    "job.device.succeeded" => JobDeviceSucceeded(JobDeviceFinished),
    /// A device's execution of a job failed.
    "job.device.failed" => JobDeviceFailed(JobDeviceFinished),
    /// A device's execution of a job was skipped (it did not qualify).
    "job.device.skipped" => JobDeviceSkipped(JobDeviceFinished),
    /// A device reported another firmware version or model than before.
    "device.firmware" => DeviceFirmware(DeviceFirmware),
    /// A firmware was added to the repository.
    "firmware.uploaded" => FirmwareUploaded(FirmwareRef),
    /// A firmware was removed from the repository.
    "firmware.deleted" => FirmwareDeleted(FirmwareRef),
    /// A device's active certificate crossed an expiry threshold (published once per
    /// certificate and threshold, across all nodes).
    "certificate.expiring" => CertificateExpiring(CertificateExpiring),
    /// An enrolment made with a claim is held for an operator's approval.
    "enrollment.pending" => EnrollmentPending(EnrollmentChanged),
    /// An enrolment made with a claim got its device certificate.
    "enrollment.issued" => EnrollmentIssued(EnrollmentChanged),
    /// An operator rejected an enrolment made with a claim.
    "enrollment.rejected" => EnrollmentRejected(EnrollmentChanged),
}

/// `enrollment.pending`, `enrollment.issued`, `enrollment.rejected` (the device is the
/// event's `imei`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentChanged {
    /// The enrolment.
    pub id: Uuid,
    /// The claim's name.
    pub claim: String,
    /// The device certificate issued (`enrollment.issued`).
    pub certificate_serial: Option<String>,
    /// Who decided (`policy:auto` for an automatic approval).
    pub decided_by: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
}

impl EventPayload {
    /// The event of a command reaching the final `state`; `None` for a state that is not final.
    pub fn command_finished(state: CommandState, data: CommandFinished) -> Option<Self> {
        Some(match state {
            CommandState::Succeeded => Self::CommandSucceeded(data),
            CommandState::Failed => Self::CommandFailed(data),
            CommandState::TimedOut => Self::CommandTimedOut(data),
            CommandState::Cancelled => Self::CommandCancelled(data),
            CommandState::Expired => Self::CommandExpired(data),
            CommandState::Queued | CommandState::Sent => return None,
        })
    }

    /// The event of a job entering `state`.
    pub fn job_state(data: JobStateChanged) -> Self {
        match data.state {
            JobState::Running => Self::JobRunning(data),
            JobState::Paused => Self::JobPaused(data),
            JobState::Completed => Self::JobCompleted(data),
            JobState::Aborted => Self::JobAborted(data),
            JobState::Cancelled => Self::JobCancelled(data),
            JobState::Expired => Self::JobExpired(data),
        }
    }

    /// The event of a device's execution ending in `state` (`succeeded` or `failed`); `None`
    /// for any other state: devices that never started end together with their job
    /// (`cancelled`, `expired`), which has an event of its own.
    pub fn job_device_finished(state: ExecState, data: JobDeviceFinished) -> Option<Self> {
        match state {
            ExecState::Succeeded => Some(Self::JobDeviceSucceeded(data)),
            ExecState::Failed => Some(Self::JobDeviceFailed(data)),
            ExecState::Skipped => Some(Self::JobDeviceSkipped(data)),
            ExecState::Pending
            | ExecState::InProgress
            | ExecState::Cancelled
            | ExecState::Expired => None,
        }
    }

    /// The command this event is about (`command.*`), so a waiter on one command is woken
    /// by its events alone.
    pub fn command_id(&self) -> Option<Uuid> {
        match self {
            Self::CommandQueued(c) => Some(c.id),
            Self::CommandSent(c) => Some(c.id),
            Self::CommandRetrying(c) => Some(c.id),
            Self::CommandSucceeded(c)
            | Self::CommandFailed(c)
            | Self::CommandTimedOut(c)
            | Self::CommandCancelled(c)
            | Self::CommandExpired(c) => Some(c.id),
            Self::CommandLateReply(c) => Some(c.id),
            _ => None,
        }
    }

    /// Whether this is a change of a device's presence (`device.*`).
    pub fn is_presence(&self) -> bool {
        matches!(self, Self::DeviceOnline(_) | Self::DeviceOffline(_))
    }
}

/// `device.online`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOnline {
    /// The modem's address.
    pub remote_addr: String,
    /// Serial of the client certificate it authenticated with (none for password logins).
    pub cert_serial: Option<String>,
    /// The connection's id.
    pub session_id: String,
}

/// `device.offline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOffline {
    /// Why the connection ended (`disconnect`, `eof`, `keepalive_timeout`, `killed`, or the
    /// protocol violation or framing error that ended it).
    pub reason: String,
    /// The connection's id.
    pub session_id: String,
}

/// `status.received`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReceived {
    /// The stored status row.
    pub id: i64,
    /// The fields parsed from the modem's status JSON, if it was JSON.
    pub fields: Option<serde_json::Value>,
}

/// `command.queued`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandQueued {
    /// The command.
    pub id: Uuid,
    /// Its text, secrets masked.
    pub command: String,
}

/// `command.sent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSent {
    /// The command.
    pub id: Uuid,
    /// Its text, secrets masked.
    pub command: String,
    /// Which attempt this is (1 for the first).
    pub attempt: i64,
}

/// `command.retrying`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRetrying {
    /// The command.
    pub id: Uuid,
    /// Attempts made so far.
    pub attempts: i64,
    /// Why the last attempt ended.
    pub error: String,
}

/// `command.succeeded|failed|timed_out|cancelled|expired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFinished {
    /// The command.
    pub id: Uuid,
    /// Its text, secrets masked.
    pub command: String,
    /// The final result code (`OK`, `ERROR`, `+CME ERROR: 10`, ...), if a reply came.
    pub result: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// `command.late_reply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandLateReply {
    /// The timed-out command the reply was recorded on.
    pub id: Uuid,
    /// The reply, secrets masked.
    pub reply: String,
}

/// `session.requested`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequested {
    /// The session.
    pub id: Uuid,
    /// How the modem reaches the reader.
    pub mode: SessionMode,
    /// The TEMPORALCLIENT command.
    pub command_id: Uuid,
}

/// `session.modem_connected`, `session.reader_connected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The session.
    pub id: Uuid,
}

/// `session.active`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionActive {
    /// The session.
    pub id: Uuid,
    /// Its mode.
    pub mode: SessionMode,
}

/// `session.closed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClosed {
    /// The session.
    pub id: Uuid,
    /// Why it ended.
    pub reason: CloseReason,
    /// Bytes the modem sent to the reader.
    pub bytes_from_modem: i64,
    /// Bytes the reader sent to the modem.
    pub bytes_to_modem: i64,
}

/// `job.created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCreated {
    /// The job.
    pub id: Uuid,
    /// Its operator-given name.
    pub name: Option<String>,
    /// How many devices it targets.
    pub total: i64,
    /// Who created it.
    pub created_by: String,
}

/// `job.wave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWave {
    /// The job.
    pub id: Uuid,
    /// The wave now open (1-based).
    pub wave: i64,
}

/// `job.running|paused|completed|aborted|cancelled|expired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStateChanged {
    /// The job.
    pub id: Uuid,
    /// Its new state.
    pub state: JobState,
    /// Why, where a reason was given.
    pub reason: Option<String>,
}

/// `job.device.started`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDeviceStarted {
    /// The job.
    pub id: Uuid,
    /// Which attempt of this device's execution.
    pub attempt: i64,
}

/// `job.device.succeeded|failed|skipped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDeviceFinished {
    /// The job.
    pub id: Uuid,
    /// Why it failed or was skipped, if it was.
    pub error: Option<String>,
    /// How a firmware update ended (firmware campaigns only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<crate::firmware::UpdateOutcome>,
}

/// `device.firmware`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFirmware {
    /// The version now reported.
    pub version: Option<String>,
    /// The model now reported.
    pub model: Option<String>,
    /// The version reported before, if any.
    pub previous_version: Option<String>,
}

/// `firmware.uploaded|deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareRef {
    /// The firmware.
    pub id: Uuid,
    /// Its version.
    pub version: String,
}

/// `certificate.expiring`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateExpiring {
    /// The certificate's serial, uppercase hex.
    pub serial: String,
    /// The device it was issued to.
    pub imei: Imei,
    /// End of its validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whole days left when the check ran.
    pub days_left: i64,
    /// The threshold crossed, days.
    pub threshold_days: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
    }

    #[test]
    fn wire_format_is_id_type_imei_at_data() {
        let e = Event {
            id: 7,
            payload: EventPayload::SessionClosed(SessionClosed {
                id: Uuid::nil(),
                reason: CloseReason::ReaderClosed,
                bytes_from_modem: 32,
                bytes_to_modem: 5,
            }),
            imei: Some(Imei::parse("490154203237518").unwrap()),
            at: at(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": 7,
                "type": "session.closed",
                "imei": "490154203237518",
                "at": "2026-09-21T14:13:20Z",
                "data": {"id": Uuid::nil(), "reason": "reader_closed", "bytes_from_modem": 32, "bytes_to_modem": 5},
            })
        );
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.kind(), "session.closed");
    }

    #[test]
    fn every_kind_is_distinct_and_dotted() {
        let mut kinds = EventPayload::KINDS.to_vec();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), EventPayload::KINDS.len());
        assert!(kinds.iter().all(|k| k.contains('.')));
    }

    #[test]
    fn state_constructors_name_the_state() {
        let f = |id| CommandFinished {
            id,
            command: "AT".into(),
            result: None,
            error: None,
        };
        for s in CommandState::ALL {
            match EventPayload::command_finished(s, f(Uuid::nil())) {
                Some(p) => {
                    assert!(s.is_final());
                    assert_eq!(p.kind(), format!("command.{s}"));
                    assert_eq!(p.command_id(), Some(Uuid::nil()));
                }
                None => assert!(!s.is_final()),
            }
        }
        for s in JobState::ALL {
            let p = EventPayload::job_state(JobStateChanged {
                id: Uuid::nil(),
                state: s,
                reason: None,
            });
            assert_eq!(p.kind(), format!("job.{}", s.as_str()));
        }
        for s in ExecState::ALL {
            let d = JobDeviceFinished {
                id: Uuid::nil(),
                error: None,
                outcome: None,
            };
            match EventPayload::job_device_finished(s, d) {
                Some(p) => assert_eq!(p.kind(), format!("job.device.{}", s.as_str())),
                None => assert!(!matches!(
                    s,
                    ExecState::Succeeded | ExecState::Failed | ExecState::Skipped
                )),
            }
        }
    }
}
