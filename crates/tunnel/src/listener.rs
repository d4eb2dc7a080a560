//! The modem side of the rendezvous: the shared TLS listener (`callhome-net`: accept, caps, TLS
//! handshake with a client certificate in the connection's own task, under a timeout) runs
//! [`Modems`], which checks the `MTX_IDClient` preamble, then pairs.

use std::net::SocketAddr;

use callhome_core::{ActorKind, AuditOutcome, CloseReason, Imei};
use callhome_net::{Handler, HandshakePermit, PeerIdentity, Refusal, TlsListenerConfig, TlsStream};
use callhome_store::NewAuditEntry;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::Tunnel;

async fn audit(tunnel: &Tunnel, imei: &str, action: &str, addr: &str, detail: serde_json::Value) {
    metrics::counter!("callhome_tunnel_refused_total", "reason" => action.to_owned()).increment(1);
    let entry = NewAuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: imei.to_owned(),
        actor_kind: ActorKind::Device,
        action: action.to_owned(),
        target: Some(imei.to_owned()),
        outcome: AuditOutcome::Failure,
        status: None,
        detail: Some(detail.to_string()),
        remote_addr: Some(addr.to_owned()),
        request_id: None,
    };
    if let Err(e) = tunnel.inner().store.append_audit(&entry).await {
        warn!(error = %e, "could not write audit row");
    }
}

/// The tunnel listener's settings.
pub(crate) fn listener_config(cfg: &crate::TunnelConfig) -> TlsListenerConfig {
    TlsListenerConfig {
        name: "tunnel",
        handshake_timeout: cfg.handshake_timeout,
        max_connections: cfg.max_connections,
        max_handshakes: cfg.max_handshakes,
        max_connections_per_address: cfg.max_connections_per_address,
        max_handshakes_per_address: cfg.max_handshakes_per_address,
    }
}

/// What the tunnel listener does with a modem's connection.
#[derive(Clone)]
pub(crate) struct Modems {
    /// The tunnel service.
    pub(crate) tunnel: Tunnel,
}

impl Handler for Modems {
    async fn handle(
        &self,
        stream: TlsStream<TcpStream>,
        peer: PeerIdentity,
        handshake: HandshakePermit,
    ) {
        handshake.release();
        modem_connected(self.tunnel.clone(), stream, peer).await;
    }

    fn refused(&self, _peer: Option<SocketAddr>, why: &Refusal<'_>) {
        match why {
            // Not counted before the listener was shared; logged by the listener.
            Refusal::AcceptFailed(_) => {}
            Refusal::MaxConnections
            | Refusal::MaxHandshakes
            | Refusal::MaxConnectionsPerAddress
            | Refusal::MaxHandshakesPerAddress
            | Refusal::HandshakeFailed(_)
            | Refusal::HandshakeTimeout => {
                metrics::counter!("callhome_tunnel_refused_total", "reason" => why.label())
                    .increment(1);
            }
        }
    }
}

/// One modem after its TLS handshake: certificate CN -> IMEI, its pending session, the
/// `MTX_IDClient` check, then the modem joins its session.
async fn modem_connected(tunnel: Tunnel, mut stream: TlsStream<TcpStream>, peer: PeerIdentity) {
    let cfg = tunnel.inner().cfg.clone();
    let addr = peer.addr.to_string();
    let cn = peer.cert_cn;
    let serial = peer.cert_serial;
    let Some(imei) = cn.as_deref().and_then(|cn| Imei::parse(cn).ok()) else {
        audit(
            &tunnel,
            cn.as_deref().unwrap_or("unknown"),
            "tunnel.bad_certificate",
            &addr,
            serde_json::json!({}),
        )
        .await;
        return;
    };
    let Some((session_id, expected)) = tunnel.pending_for(&imei) else {
        warn!(%imei, %addr, "tunnel connection from a modem with no pending session; refused");
        audit(
            &tunnel,
            imei.as_str(),
            "tunnel.no_pending_session",
            &addr,
            serde_json::json!({}),
        )
        .await;
        return;
    };
    // Exactly as many bytes as the expected ID, quickly.
    let mut got = vec![0u8; expected.len()];
    let read = tokio::time::timeout(cfg.id_timeout, stream.read_exact(&mut got)).await;
    let ok = matches!(read, Ok(Ok(_)))
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            got.as_slice(),
            expected.as_slice(),
        ));
    if !ok {
        let shown = match read {
            Ok(Ok(_)) => String::from_utf8_lossy(&got).into_owned(),
            Ok(Err(_)) => "(connection closed before the ID)".to_owned(),
            Err(_) => "(no ID in time)".to_owned(),
        };
        warn!(%imei, %addr, received = %shown, "tunnel identity mismatch; refused");
        audit(
            &tunnel,
            imei.as_str(),
            "tunnel.identity_mismatch",
            &addr,
            serde_json::json!({"session": session_id, "received": shown}),
        )
        .await;
        tunnel
            .close(
                session_id,
                CloseReason::IdentityMismatch,
                Some(format!(
                    "the modem sent {shown:?} instead of its MTX_IDClient"
                )),
            )
            .await;
        return;
    }
    info!(%imei, %addr, session = %session_id, "modem connected to the tunnel");
    tunnel
        .attach_modem(session_id, Box::new(stream), addr, serial)
        .await;
}
