//! The life of an AT command sent to a modem.

crate::wire_enum! {
    /// Where a command is in its life.
    pub enum CommandState("state") {
        /// Waiting for the device (offline, or behind another command).
        Queued = "queued",
        /// Published to the device; waiting for its reply.
        Sent = "sent",
        /// Final result `OK`.
        Succeeded = "succeeded",
        /// Final result `ERROR`, `+CME ERROR`, `+CMS ERROR` or another error.
        Failed = "failed",
        /// No reply within the timeout (after the last attempt).
        TimedOut = "timed_out",
        /// Cancelled while queued.
        Cancelled = "cancelled",
        /// Never delivered before its expiry.
        Expired = "expired",
    }
}

impl CommandState {
    /// Whether the command can change no more.
    pub fn is_final(self) -> bool {
        !matches!(self, CommandState::Queued | CommandState::Sent)
    }
}
