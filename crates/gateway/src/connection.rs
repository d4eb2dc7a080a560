//! One modem connection after its TLS handshake: CONNECT and identity, then the packet loop
//! with the topic ACL, keepalive, QoS 0/1/2, and hand-off of replies and status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callhome_core::Imei;
use callhome_store::{Device, NewAuditEntry, NewStatus, OnlineRecord, StoreError};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{Instrument as _, debug, info, warn};

use crate::Shared;
use crate::codec::{FrameError, PacketReader, PacketWriter};
use crate::dispatch::{self, DispatchCtx};
use crate::hub::{ConnectionEntry, Outbound};
use crate::topics::Topics;

/// What the TLS layer established about the peer.
pub(crate) use callhome_net::PeerIdentity;

/// Why a connection ended, for logs and metrics.
#[derive(Debug)]
enum End {
    ClientDisconnect,
    Eof,
    KeepaliveTimeout,
    Killed,
    Violation(&'static str),
    Frame(FrameError),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::ClientDisconnect => "disconnect",
            End::Eof => "eof",
            End::KeepaliveTimeout => "keepalive_timeout",
            End::Killed => "killed",
            End::Violation(v) => v,
            End::Frame(e) => e.label(),
        }
    }
}

/// Runs one connection to its end. `stream` has completed its TLS handshake.
pub(crate) async fn run<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr, identity: PeerIdentity)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = PacketReader::new(rd, shared.cfg.max_packet_bytes);
    let mut writer = PacketWriter::new(wr, shared.cfg.write_timeout);

    // CONNECT must come first, and soon.
    let connect = match tokio::time::timeout(shared.cfg.handshake_timeout, reader.next()).await {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => {
            reject_metric("not_connect");
            debug!(%peer, packet = ?packet_kind(&other), "first packet is not CONNECT; closing");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            reject_metric(e.label());
            debug!(%peer, error = %e, "bad first packet; closing");
            return;
        }
        Err(_) => {
            reject_metric("connect_timeout");
            debug!(%peer, "no CONNECT in time; closing");
            return;
        }
    };

    let device = match authenticate(&shared, &connect, &identity, peer).await {
        Ok(d) => d,
        Err(code) => {
            let _ = writer
                .send(&Packet::ConnAck(ConnAck::new(code, false)))
                .await;
            writer.shutdown().await;
            return;
        }
    };
    let imei = device.imei.clone();
    let span = tracing::info_span!("modem", %imei, %peer);
    async move {
        let topics = Topics::for_device(&device);
        let session_id = format!("{}-{}", shared.cfg.node_id, uuid::Uuid::now_v7().simple());
        let kill = shared.shutdown.child_token();
        let notify = Arc::new(Notify::new());
        let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(8);
        let (reply_tx, reply_rx) = mpsc::channel::<String>(32);
        let (subscribed_tx, subscribed_rx) = watch::channel::<Option<QoS>>(None);

        if let Some(old) = shared.hub.register(
            &imei,
            ConnectionEntry {
                session_id: session_id.clone(),
                kill: kill.clone(),
                notify: notify.clone(),
                cert_serial: identity.cert_serial.clone(),
                outbound: out_tx,
            },
        ) {
            info!(old_session = %old.session_id, "new connection takes over the previous session");
            metrics::counter!("callhome_mqtt_takeovers_total").increment(1);
            old.kill.cancel();
        }
        if writer
            .send(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)))
            .await
            .is_err()
        {
            shared.hub.unregister(&imei, &session_id);
            return;
        }
        let now = OffsetDateTime::now_utc();
        if let Err(e) = shared
            .store
            .mark_online(
                &imei,
                &OnlineRecord {
                    session_id: session_id.clone(),
                    at: now,
                    remote_addr: peer.to_string(),
                    cert_serial: identity.cert_serial.clone(),
                },
            )
            .await
        {
            warn!(error = %e, "could not record presence");
        }
        metrics::gauge!("callhome_mqtt_connections").increment(1.0);
        metrics::counter!("callhome_mqtt_connects_total").increment(1);
        shared.events.publish(
            "device.online",
            Some(imei.as_str()),
            serde_json::json!({"remote_addr": peer.to_string(), "cert_serial": identity.cert_serial, "session_id": session_id}),
        );
        info!(keepalive = connect.keep_alive, "modem connected");

        let dispatcher = tokio::spawn(
            dispatch::run(DispatchCtx {
                shared: shared.clone(),
                imei: imei.clone(),
                notify,
                kill: kill.clone(),
                reply_rx,
                subscribed: subscribed_rx,
            })
            .in_current_span(),
        );

        let keepalive = if connect.keep_alive == 0 {
            shared.cfg.max_idle
        } else {
            (Duration::from_secs(u64::from(connect.keep_alive)) * 3 / 2).min(shared.cfg.max_idle)
        };
        let mut state = LoopState {
            next_pkid: 1,
            sub_qos: None,
            pending_qos2: std::collections::HashSet::new(),
        };

        let end = loop {
            tokio::select! {
                () = kill.cancelled() => break End::Killed,
                frame = tokio::time::timeout(keepalive, reader.next()) => {
                    let packet = match frame {
                        Err(_) => break End::KeepaliveTimeout,
                        Ok(Err(e)) => break End::Frame(e),
                        Ok(Ok(None)) => break End::Eof,
                        Ok(Ok(Some(p))) => p,
                    };
                    shared.hub.seen(&imei, OffsetDateTime::now_utc());
                    match handle_packet(&shared, &imei, &topics, &mut state, &mut writer, &reply_tx, &subscribed_tx, packet).await {
                        Ok(None) => {}
                        Ok(Some(end)) => break end,
                        Err(e) => break End::Frame(e),
                    }
                }
                out = out_rx.recv() => {
                    let Some(Outbound::Command { text }) = out else { continue };
                    let qos = state.sub_qos.unwrap_or(QoS::AtMostOnce);
                    let mut publish = Publish::new(topics.command.clone(), qos, text.into_bytes());
                    if qos != QoS::AtMostOnce {
                        publish.pkid = state.take_pkid();
                    }
                    if let Err(e) = writer.send(&Packet::Publish(publish)).await {
                        break End::Frame(e);
                    }
                }
            }
        };

        // Close the reply channel first: the dispatcher handles what is still in it, then
        // stops.
        drop(reply_tx);
        kill.cancel();
        let _ = dispatcher.await;
        writer.shutdown().await;
        metrics::gauge!("callhome_mqtt_connections").decrement(1.0);
        metrics::counter!("callhome_mqtt_disconnects_total", "reason" => end.label()).increment(1);
        match &end {
            End::Violation(_) | End::Frame(FrameError::TooLarge(_) | FrameError::Malformed(_)) => {
                warn!(reason = ?end, "connection closed")
            }
            _ => info!(reason = end.label(), "modem disconnected"),
        }
        match shared.store.mark_offline(&imei, &session_id, OffsetDateTime::now_utc()).await {
            Ok(true) => {
                shared.events.publish(
                    "device.offline",
                    Some(imei.as_str()),
                    serde_json::json!({"reason": end.label(), "session_id": session_id}),
                );
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "could not record disconnection"),
        }
        // Leave the hub last: shutdown waits for the hub to empty before closing the store,
        // so the disconnection above is always recorded.
        shared.hub.unregister(&imei, &session_id);
    }
    .instrument(span)
    .await;
}

struct LoopState {
    next_pkid: u16,
    sub_qos: Option<QoS>,
    pending_qos2: std::collections::HashSet<u16>,
}

impl LoopState {
    fn take_pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = if self.next_pkid == u16::MAX {
            1
        } else {
            self.next_pkid + 1
        };
        id
    }
}

fn reject_metric(reason: &'static str) {
    metrics::counter!("callhome_mqtt_rejected_total", "reason" => reason).increment(1);
}

fn packet_kind(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

async fn audit_violation(shared: &Shared, imei: &Imei, action: &str, detail: serde_json::Value) {
    metrics::counter!("callhome_mqtt_acl_violations_total", "action" => action.to_owned())
        .increment(1);
    let entry = NewAuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: imei.to_string(),
        actor_kind: "device".to_owned(),
        action: action.to_owned(),
        target: Some(imei.to_string()),
        outcome: "failure".to_owned(),
        status: None,
        detail: Some(detail.to_string()),
        remote_addr: None,
        request_id: None,
    };
    if let Err(e) = shared.store.append_audit(&entry).await {
        warn!(error = %e, "could not write audit row");
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_packet<W: AsyncWrite + Unpin>(
    shared: &Shared,
    imei: &Imei,
    topics: &Topics,
    state: &mut LoopState,
    writer: &mut PacketWriter<W>,
    reply_tx: &mpsc::Sender<String>,
    subscribed: &watch::Sender<Option<QoS>>,
    packet: Packet,
) -> Result<Option<End>, FrameError> {
    match packet {
        Packet::PingReq => writer.send(&Packet::PingResp).await?,
        Packet::Disconnect => return Ok(Some(End::ClientDisconnect)),
        Packet::Connect(_) => {
            warn!("second CONNECT on one connection");
            return Ok(Some(End::Violation("second_connect")));
        }
        Packet::Subscribe(sub) => {
            let mut codes = Vec::with_capacity(sub.filters.len());
            for f in &sub.filters {
                if f.path == topics.command {
                    let qos = match f.qos {
                        QoS::AtMostOnce => QoS::AtMostOnce,
                        _ => QoS::AtLeastOnce,
                    };
                    state.sub_qos = Some(qos);
                    codes.push(SubscribeReasonCode::Success(qos));
                } else {
                    warn!(filter = %f.path, allowed = %topics.command, "subscription refused by ACL");
                    audit_violation(
                        shared,
                        imei,
                        "mqtt.subscribe.denied",
                        serde_json::json!({"filter": f.path, "allowed": topics.command}),
                    )
                    .await;
                    codes.push(SubscribeReasonCode::Failure);
                }
            }
            writer
                .send(&Packet::SubAck(SubAck::new(sub.pkid, codes)))
                .await?;
            if let Some(q) = state.sub_qos {
                subscribed.send_replace(Some(q));
            }
        }
        Packet::Unsubscribe(u) => {
            if u.topics.contains(&topics.command) {
                state.sub_qos = None;
                subscribed.send_replace(None);
            }
            writer
                .send(&Packet::UnsubAck(UnsubAck::new(u.pkid)))
                .await?;
        }
        Packet::Publish(p) => {
            let allowed = p.topic == topics.reply || p.topic == topics.status;
            if !allowed {
                warn!(topic = %p.topic, "publish refused by ACL; disconnecting");
                audit_violation(
                    shared,
                    imei,
                    "mqtt.publish.denied",
                    serde_json::json!({"topic": p.topic, "allowed": [topics.reply, topics.status]}),
                )
                .await;
                return Ok(Some(End::Violation("acl_publish")));
            }
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => writer.send(&Packet::PubAck(PubAck::new(p.pkid))).await?,
                QoS::ExactlyOnce => {
                    writer.send(&Packet::PubRec(PubRec::new(p.pkid))).await?;
                    if !state.pending_qos2.insert(p.pkid) {
                        // A retransmission of a QoS 2 message already taken: not again.
                        return Ok(None);
                    }
                }
            }
            deliver(shared, imei, topics, reply_tx, &p).await;
        }
        Packet::PubRel(rel) => {
            state.pending_qos2.remove(&rel.pkid);
            writer
                .send(&Packet::PubComp(PubComp::new(rel.pkid)))
                .await?;
        }
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
            // Acknowledgements of our command publishes; nothing to do (clean connections).
            if let Packet::PubRec(rec) = packet {
                writer
                    .send(&Packet::PubRel(rumqttc::mqttbytes::v4::PubRel::new(
                        rec.pkid,
                    )))
                    .await?;
            }
        }
        other => {
            warn!(
                packet = packet_kind(&other),
                "unexpected packet from a client"
            );
            return Ok(Some(End::Violation("unexpected_packet")));
        }
    }
    Ok(None)
}

async fn deliver(
    shared: &Shared,
    imei: &Imei,
    topics: &Topics,
    reply_tx: &mpsc::Sender<String>,
    p: &Publish,
) {
    // The reply topic wins if a device has the same topic for both.
    if p.topic == topics.reply {
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        metrics::counter!("callhome_mqtt_replies_total").increment(1);
        if reply_tx.try_send(text).is_err() {
            metrics::counter!("callhome_mqtt_replies_dropped_total").increment(1);
            warn!("reply dropped: the dispatcher is not keeping up");
        }
        return;
    }
    let now = OffsetDateTime::now_utc();
    let parsed = crate::status::parse(&p.payload);
    metrics::counter!("callhome_status_messages_total").increment(1);
    match shared
        .store
        .append_status(&NewStatus {
            imei: imei.clone(),
            received_at: now,
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            parsed: parsed.as_ref().map(|v| v.to_string()),
        })
        .await
    {
        Ok(rec) => {
            shared.events.publish(
                "status.received",
                Some(imei.as_str()),
                serde_json::json!({"id": rec.id, "fields": parsed}),
            );
        }
        Err(e) => warn!(error = %e, "could not store status"),
    }
}

/// Checks the CONNECT against the TLS identity and the registry.
async fn authenticate(
    shared: &Shared,
    connect: &rumqttc::mqttbytes::v4::Connect,
    identity: &PeerIdentity,
    peer: SocketAddr,
) -> Result<Device, ConnectReturnCode> {
    let refuse = |reason: &'static str, code: ConnectReturnCode| {
        reject_metric(reason);
        warn!(%peer, client_id = %connect.client_id, reason, "connection refused");
        code
    };
    let device = if let Some(cn) = &identity.cert_cn {
        let imei =
            Imei::parse(cn).map_err(|_| refuse("cn_not_imei", ConnectReturnCode::NotAuthorized))?;
        if connect.client_id != cn.as_str() {
            let entry = NewAuditEntry {
                at: OffsetDateTime::now_utc(),
                actor: cn.clone(),
                actor_kind: "device".to_owned(),
                action: "mqtt.connect.identity_mismatch".to_owned(),
                target: Some(connect.client_id.clone()),
                outcome: "failure".to_owned(),
                status: None,
                detail: Some(
                    serde_json::json!({"client_id": connect.client_id, "certificate_cn": cn})
                        .to_string(),
                ),
                remote_addr: Some(peer.to_string()),
                request_id: None,
            };
            let _ = shared.store.append_audit(&entry).await;
            return Err(refuse("client_id_mismatch", ConnectReturnCode::BadClientId));
        }
        match shared.store.get_device(&imei).await {
            Ok(d) => d,
            Err(StoreError::NotFound(_)) => {
                return Err(refuse("unknown_device", ConnectReturnCode::NotAuthorized));
            }
            Err(_) => return Err(refuse("store_error", ConnectReturnCode::ServiceUnavailable)),
        }
    } else {
        // No client certificate: only legacy username/password modems, when enabled.
        if !shared.cfg.allow_password_auth {
            return Err(refuse("no_certificate", ConnectReturnCode::NotAuthorized));
        }
        let Some(login) = &connect.login else {
            return Err(refuse("no_credentials", ConnectReturnCode::NotAuthorized));
        };
        let device = match shared
            .store
            .get_device_by_mqtt_username(&login.username)
            .await
        {
            Ok(d) => Some(d),
            Err(StoreError::NotFound(_)) => None,
            Err(_) => return Err(refuse("store_error", ConnectReturnCode::ServiceUnavailable)),
        };
        let hash = device.as_ref().and_then(|d| d.mqtt.password_hash.clone());
        if !crate::password::verify(login.password.clone(), hash).await {
            return Err(refuse(
                "bad_password",
                ConnectReturnCode::BadUserNamePassword,
            ));
        }
        let Some(device) = device else {
            return Err(refuse(
                "bad_password",
                ConnectReturnCode::BadUserNamePassword,
            ));
        };
        if connect.client_id != device.imei.as_str() {
            return Err(refuse("client_id_mismatch", ConnectReturnCode::BadClientId));
        }
        device
    };
    if device.disabled {
        return Err(refuse("device_disabled", ConnectReturnCode::NotAuthorized));
    }
    Ok(device)
}
