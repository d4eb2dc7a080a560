//! The modem and meter simulator, and the fleet load generator behind `callhome sim` and
//! `callhome bench`.
//!
//! Owns (as the command-channel and meter-reading issues fill it in): simulated modems with
//! their own keys and certificates enrolled through the REST API, an MQTT client per modem,
//! an in-memory Config.txt, AT command answers, periodic status, TEMPORALCLIENT sockets, and
//! simulated meters behind them.
//!
//! Must not know: server internals. It talks to Callhome only the way a modem or an operator
//! does: over the REST API, MQTT/TLS and the tunnel.
