//! The modem listener's TLS side: the rustls configuration (rebuilt when the CRL changes) and
//! the [`Handler`] the shared listener (`callhome-net`) runs each connection with, which also
//! counts refusals in the `callhome_mqtt_*` metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use callhome_ca::tls::{ClientAuth, SharedServerConfig};
use callhome_net::{Handler, HandshakePermit, Refusal, TlsListenerConfig, TlsStream};
use tokio::net::TcpStream;
use tracing::{debug, error, warn};

use crate::connection::{self, PeerIdentity};
use crate::{GatewayConfig, GatewayError, Shared};

/// Builds the rustls config from the current CRL.
pub(crate) fn build_tls(shared: &Shared) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
    let auth = if shared.cfg.allow_password_auth {
        ClientAuth::Optional
    } else {
        ClientAuth::Required
    };
    Ok(shared.certs.server_tls(auth)?)
}

/// Rebuilds the TLS config whenever a new CRL is in force, and ends live connections whose
/// certificate it revokes.
pub(crate) async fn watch_crl(shared: Arc<Shared>, tls: Arc<SharedServerConfig>) {
    let mut changes = shared.certs.subscribe();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        match build_tls(&shared) {
            Ok(cfg) => {
                tls.store(cfg);
                debug!("TLS configuration rebuilt with the new CRL");
            }
            Err(e) => {
                error!(error = %e, "could not rebuild the TLS configuration; keeping the previous one")
            }
        }
        for imei in shared.hub.kill_serials(&shared.certs.revoked_serials()) {
            warn!(%imei, "certificate revoked: live connection closed");
            metrics::counter!("callhome_mqtt_revoked_disconnects_total").increment(1);
        }
    }
}

/// What the modem listener does with a connection: runs it as an MQTT connection.
#[derive(Clone)]
pub(crate) struct Modems {
    /// The gateway's shared state.
    pub(crate) shared: Arc<Shared>,
}

impl Handler for Modems {
    async fn handle(
        &self,
        stream: TlsStream<TcpStream>,
        peer: PeerIdentity,
        handshake: HandshakePermit,
    ) {
        connection::run(self.shared.clone(), stream, peer.addr, peer, handshake).await;
    }

    fn refused(&self, _peer: Option<SocketAddr>, why: &Refusal<'_>) {
        match why {
            Refusal::AcceptFailed(_) => {
                metrics::counter!("callhome_mqtt_accept_errors_total").increment(1);
            }
            Refusal::MaxConnections
            | Refusal::MaxHandshakes
            | Refusal::MaxConnectionsPerAddress
            | Refusal::MaxHandshakesPerAddress => {
                metrics::counter!("callhome_mqtt_rejected_total", "reason" => why.label())
                    .increment(1);
            }
            Refusal::HandshakeFailed(e) => {
                let reason = tls_failure_label(e);
                metrics::counter!("callhome_mqtt_handshake_failures_total", "reason" => reason)
                    .increment(1);
            }
            Refusal::HandshakeTimeout => {
                metrics::counter!("callhome_mqtt_handshake_failures_total", "reason" => "timeout")
                    .increment(1);
            }
        }
    }
}

/// The modem listener's settings.
pub(crate) fn listener_config(cfg: &GatewayConfig) -> TlsListenerConfig {
    TlsListenerConfig {
        name: "mqtt",
        handshake_timeout: cfg.handshake_timeout,
        max_connections: cfg.max_connections,
        max_handshakes: cfg.max_handshakes,
        max_connections_per_address: cfg.max_connections_per_address,
        max_handshakes_per_address: cfg.max_handshakes_per_address,
    }
}

fn tls_failure_label(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("Revoked") {
        "revoked"
    } else if text.contains("NoCertificatesPresented") || text.contains("peer sent no certificates")
    {
        "no_certificate"
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "unknown_issuer"
    } else if text.contains("Expired") {
        "expired"
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        "not_tls"
    } else {
        "other"
    }
}
