//! The modem and meter simulator, and the fleet load generator behind `callhome sim` and
//! `callhome bench`.
//!
//! Owns: simulated MTX modems ([`SimModem`], [`Fleet`]) with their own keys and
//! certificates enrolled through the REST API ([`Enroller`]), one MQTT client per modem
//! over mutual TLS (or plain TCP, to measure a reference broker), an in-memory
//! Config.txt ([`config`]), AT command answers ([`answer`]), periodic status, switches
//! for misbehaviour ([`Behaviour`]) and fleet counters ([`Counters`]); the modem side of
//! the meter-reading tunnel (`TEMPORALCLIENT`, [`tunnel`]) with a serial side behind it
//! ([`SerialSide`]): a built-in IEC 62056-21 meter ([`iec62056`]), a TCP server or a
//! serial device.
//!
//! Must not know: server internals. It talks to Callhome only the way a modem or an operator
//! does: over the REST API, MQTT/TLS and the tunnel.
//!
//! # What a simulated modem does on the wire
//!
//! - MQTT 3.1.1, client id = IMEI, clean session, keep-alive `MQTT_keepalive` (300 s).
//! - On CONNACK it subscribes to its command topic `MQTT_attopic1` (`{IMEI}/AT`) at
//!   QoS 1; it counts as connected once the SUBACK grants it.
//! - Each PUBLISH there is one AT command (payload = command text, surrounding
//!   whitespace and CR/LF ignored). The answer is published on `MQTT_atrtopic`
//!   (`{IMEI}/ATR`), QoS 1, not retained: the AT response text, `\r\n` line ends, final
//!   result code last (e.g. `+CSQ: 20,99\r\n\r\nOK`).
//! - Status JSON on `DNS_mqttTopic` (`{IMEI}/dns`), QoS 1, once subscribed and then
//!   every `DNS_period` seconds: `{"imei","ip","csq","rssi","model","fw","uptime"}`.
//! - Reconnects after any loss with jittered exponential backoff (cap 30 s).
//! - `AT^MTXTUNNEL=TEMPORALCLIENT,<host>,<port>,<timeout>` is answered `OK` at once
//!   (`ERROR` while a tunnel is in progress); the modem then opens mutual TLS to
//!   `host:port` (server name `host`), sends its `MTX_IDClient` value and relays bytes
//!   to and from its serial side until the platform closes, `<timeout>` seconds pass
//!   without traffic, or the modem stops. See [`tunnel`].
//! - `AT^MTXTUNNEL=FWUPDATE,<url>,<version>,<sha256>,<size>` and
//!   `AT^SJOTAP=...` (OTAP) are answered `OK` at once (`ERROR` while an update runs);
//!   the modem then downloads over HTTPS with its own certificate, verifies, POSTs a
//!   JSR-118 status and, on success, restarts onto the new version. See [`firmware`].
//! - `AT^MTXTUNNEL=REBOOT` is answered `OK`; about 100 ms later the modem drops its
//!   connection without DISCONNECT, stays offline for `ModemSettings::reboot_delay`
//!   (1 s by default) and connects again without backoff, with its topics, keep-alive
//!   and `DNS_period` read again from its Config.txt (`SETPARAM` changes survive; they
//!   take effect from this boot on).
//! - Certificate rotation ([`rotation`]): `AT^MTXTUNNEL=CERTREQ,<mode>,<csr_topic>,<cert_topic>`
//!   is answered `OK`; the modem subscribes to `<cert_topic>` and publishes a PEM CSR for a
//!   new key (`csr`) or the text `serverkeygen` (`server_keygen`) on `<csr_topic>`;
//!   `AT^MTXTUNNEL=CERTINSTALL,<serial>,<sha256>` is answered `OK` when the certificate
//!   received matches, and the modem reconnects with it about 100 ms later (not when told
//!   `never-confirm`).
//!
//! # Scale
//!
//! One tokio task per modem, driving one rumqttc event loop; bounded channels
//! everywhere (a full one drops and counts); the master Config.txt is shared and each
//! modem stores only its `SETPARAM` changes; one TLS root configuration is shared and
//! each modem's copy differs only by its certificate.

#![warn(missing_docs)]

pub mod answer;
pub mod config;
mod counters;
mod enroll;
mod error;
pub mod firmware;
mod fleet;
pub mod iec62056;
mod modem;
pub mod rotation;
mod tls;
pub mod tunnel;

pub use counters::{CounterSnapshot, Counters};
pub use enroll::{CA_FILE, ClaimWait, Enroller, est_claim_enroll};
pub use error::SimError;
pub use firmware::{DownloadSettings, FirmwareFault};
pub use fleet::{Fleet, FleetConfig, FleetTransport, fleet_imeis, is_picked};
pub use modem::{Backoff, Behaviour, ModemHandle, ModemSettings, ReplyMode, SimModem, Transport};
pub use tls::{Credentials, TlsBase, install_crypto_provider};
pub use tunnel::SerialSide;
