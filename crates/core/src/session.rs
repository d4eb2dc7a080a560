//! Meter-reading sessions: how the modem reaches the reader ([`SessionMode`]), where a
//! session is ([`SessionState`]) and why it ended ([`CloseReason`]).

crate::wire_enum! {
    /// How a meter-reading session reaches the reader.
    pub enum SessionMode("mode") {
        /// The modem dials the reading platform's own TLS server; Callhome is not in the
        /// data path.
        Direct = "direct",
        /// The modem dials Callhome's tunnel listener and is paired with a reader there.
        Rendezvous = "rendezvous",
    }
}

crate::wire_enum! {
    /// Where a meter-reading session is.
    pub enum SessionState("state") {
        /// Asked for; the TEMPORALCLIENT command is on its way to the modem.
        Requested = "requested",
        /// The modem is connected to the rendezvous; waiting for the reader.
        ModemConnected = "modem_connected",
        /// The reader is connected; waiting for the modem.
        ReaderConnected = "reader_connected",
        /// Bytes flow (rendezvous: both ends paired; direct: the modem acknowledged).
        Active = "active",
        /// Over; see the close reason.
        Closed = "closed",
    }
}

crate::wire_enum! {
    /// Why a meter-reading session closed.
    pub enum CloseReason("close_reason") {
        /// The reader closed its end (or its connection failed).
        ReaderClosed = "reader_closed",
        /// The modem closed its end (or its connection failed).
        ModemClosed = "modem_closed",
        /// No byte either way for the session's idle timeout.
        IdleTimeout = "idle_timeout",
        /// The two ends did not meet within the pairing timeout.
        PairingTimeout = "pairing_timeout",
        /// The TEMPORALCLIENT command failed, timed out or could not be queued.
        CommandFailed = "command_failed",
        /// The modem connected but did not send its `MTX_IDClient`.
        IdentityMismatch = "identity_mismatch",
        /// Closed through the API (DELETE).
        Cancelled = "cancelled",
        /// The server stopped while the session was open.
        ServerShutdown = "server_shutdown",
        /// The modem's certificate was revoked, or the device disabled or deleted.
        AccessRevoked = "access_revoked",
    }
}
