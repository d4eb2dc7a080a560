//! The modem-facing command channel: an MQTT 3.1.1 endpoint over mutual TLS.
//!
//! Owns (as the command-channel issue fills it in): the modem listener, the TLS handshake
//! with client certificates checked against the CA and its CRL, binding the certificate CN
//! (the IMEI) to the MQTT client id, per-device topic ACLs, keepalive, presence, status
//! ingestion and the per-device AT command queue with reply correlation.
//!
//! Must not know: HTTP, SQL (it uses `callhome-store` traits), certificate cryptography
//! (it uses `callhome-ca`), or the meter-reading tunnel.
//!
//! Nothing is bound or served from here yet: `callhome serve` does not open the modem port
//! until this crate implements it.
