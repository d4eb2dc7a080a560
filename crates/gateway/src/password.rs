//! Legacy MQTT passwords, checked off the async threads.

/// Whether `password` matches `hash` (see [`callhome_core::password::verify`]).
pub(crate) async fn verify(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || callhome_core::password::verify(&password, hash.as_deref()))
        .await
        .unwrap_or(false)
}
