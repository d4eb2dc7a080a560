//! The audit log's closed vocabularies: who acted ([`ActorKind`]) and how it ended
//! ([`AuditOutcome`]).

crate::wire_enum! {
    /// What kind of principal an audit row's actor is.
    pub enum ActorKind("actor_kind") {
        /// A person signed in with a password.
        User = "user",
        /// A machine client with an API key.
        ApiKey = "api_key",
        /// Nobody authenticated (a refused request).
        Anonymous = "anonymous",
        /// Callhome itself (jobs, sweepers).
        System = "system",
        /// A modem, identified by its certificate or credentials.
        Device = "device",
    }
}

crate::wire_enum! {
    /// How the audited action ended.
    pub enum AuditOutcome("outcome") {
        /// It did what was asked.
        Success = "success",
        /// It was refused or failed.
        Failure = "failure",
    }
}
