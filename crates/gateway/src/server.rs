//! The modem listener: accept, then each connection's TLS handshake and connection in a task of
//! its own, under a timeout and a cap, so a stalled or hostile peer delays nobody else.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use callhome_ca::tls::{ClientAuth, SharedServerConfig};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::connection::{self, PeerIdentity};
use crate::{GatewayError, Shared};

/// Builds the rustls config from the current CRL.
pub(crate) fn build_tls(shared: &Shared) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
    let auth = if shared.cfg.allow_password_auth {
        ClientAuth::Optional
    } else {
        ClientAuth::Required
    };
    Ok(shared.certs.server_tls(&shared.identity, auth)?)
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
        match shared
            .store
            .list_revoked_certificates(OffsetDateTime::now_utc())
            .await
        {
            Ok(revoked) => {
                let serials: HashSet<String> = revoked.into_iter().map(|c| c.serial).collect();
                for imei in shared.hub.kill_serials(&serials) {
                    warn!(%imei, "certificate revoked: live connection closed");
                    metrics::counter!("callhome_mqtt_revoked_disconnects_total").increment(1);
                }
            }
            Err(e) => error!(error = %e, "could not list revoked certificates"),
        }
    }
}

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<SharedServerConfig>,
) {
    let connections = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let handshakes = Arc::new(Semaphore::new(shared.cfg.max_handshakes));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, never spin.
                warn!(error = %e, "accept failed; retrying");
                metrics::counter!("callhome_mqtt_accept_errors_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(conn_permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("callhome_mqtt_rejected_total", "reason" => "max_connections")
                .increment(1);
            debug!(%peer, "connection limit reached; closing");
            drop(tcp);
            continue;
        };
        let Ok(hs_permit) = handshakes.clone().try_acquire_owned() else {
            metrics::counter!("callhome_mqtt_rejected_total", "reason" => "max_handshakes")
                .increment(1);
            debug!(%peer, "too many handshakes in progress; closing");
            drop(tcp);
            continue;
        };
        let shared = shared.clone();
        let acceptor = TlsAcceptor::from(tls.load());
        tokio::spawn(async move {
            let _conn_permit = conn_permit;
            let _ = tcp.set_nodelay(true);
            let stream = match handshake(&shared, acceptor, tcp).await {
                Some(s) => s,
                None => return,
            };
            drop(hs_permit);
            let identity = peer_identity(&stream);
            connection::run(shared, stream, peer, identity).await;
        });
    }
    info!("modem listener stopped accepting");
}

async fn handshake(
    shared: &Shared,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(shared.cfg.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            let reason = tls_failure_label(&e);
            metrics::counter!("callhome_mqtt_handshake_failures_total", "reason" => reason)
                .increment(1);
            debug!(error = %e, reason, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("callhome_mqtt_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            debug!("TLS handshake timed out");
            None
        }
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

fn peer_identity(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> PeerIdentity {
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    match leaf.map(|der| callhome_ca::inspect_certificate_der(der.as_ref())) {
        Some(Ok(info)) => PeerIdentity {
            cert_cn: info.common_name,
            cert_serial: Some(info.serial),
        },
        _ => PeerIdentity {
            cert_cn: None,
            cert_serial: None,
        },
    }
}
