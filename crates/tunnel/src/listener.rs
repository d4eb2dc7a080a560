//! The modem side of the rendezvous: accept, TLS handshake with a client certificate (in the
//! connection's own task, under a timeout), then the `MTX_IDClient` preamble, then pairing.

use std::sync::Arc;

use callhome_ca::tls::SharedServerConfig;
use callhome_core::{ActorKind, AuditOutcome, CloseReason, Imei};
use callhome_store::NewAuditEntry;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

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

pub(crate) async fn accept_loop(
    tunnel: Tunnel,
    listener: TcpListener,
    tls: Arc<SharedServerConfig>,
) {
    let cfg = tunnel.inner().cfg.clone();
    let shutdown = tunnel.inner().shutdown.clone();
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let mut backoff = std::time::Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = std::time::Duration::from_millis(5);
                a
            }
            Err(e) => {
                warn!(error = %e, "tunnel accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("callhome_tunnel_refused_total", "reason" => "max_connections")
                .increment(1);
            continue;
        };
        let acceptor = TlsAcceptor::from(tls.load());
        let tunnel = tunnel.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let addr = peer.to_string();
            let mut stream = match tokio::time::timeout(cfg.handshake_timeout, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!("callhome_tunnel_refused_total", "reason" => "handshake")
                        .increment(1);
                    debug!(%addr, error = %e, "tunnel TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("callhome_tunnel_refused_total", "reason" => "handshake_timeout").increment(1);
                    return;
                }
            };
            let cn = {
                let (_, conn) = stream.get_ref();
                conn.peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|der| callhome_ca::inspect_certificate_der(der.as_ref()).ok())
                    .and_then(|i| i.common_name)
            };
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
                .attach_modem(session_id, Box::new(stream), addr)
                .await;
        });
    }
}
