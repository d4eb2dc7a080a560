//! Meter-reading rendezvous: modem TLS sockets paired with readers, and the splice between
//! them.
//!
//! Owns (as the meter-reading issue fills it in): the tunnel listener, the modem's
//! `MTX_IDClient` preamble check, pairing with a pending session, the bidirectional splice
//! with backpressure, byte counts and idle timeouts.
//!
//! Must not know: HTTP or MQTT (sessions are requested through the gateway's command queue
//! by the API), SQL.
//!
//! Nothing is bound or served from here yet: `callhome serve` does not open the tunnel port
//! until this crate implements it.
