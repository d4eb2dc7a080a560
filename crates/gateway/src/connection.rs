//! One modem connection after its TLS handshake: CONNECT and identity, then the packet loop
//! with the topic ACL, keepalive, QoS 0/1/2, and hand-off of replies and status.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callhome_core::{ActorKind, AuditOutcome, Imei};
use callhome_store::{Device, NewAuditEntry, NewStatus, OnlineRecord, StoreError};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, PubRel, Publish, SubAck,
    Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::Shared;
use crate::codec::{FrameError, PacketReader, PacketWriter};
use crate::dispatch::Dispatcher;
use crate::events::{DeviceOffline, DeviceOnline, EventPayload, StatusReceived};
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

/// Runs one connection to its end. `stream` has completed its TLS handshake; `handshake`
/// (the listener's slot for logins in progress) is held through CONNECT and its credential
/// check, and released once the connection is accepted or refused.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    identity: PeerIdentity,
    handshake: callhome_net::HandshakePermit,
) where
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

    // A production batch's claim certificate: an enrolment-only connection.
    if let Some(claim) = crate::claim::identify(&shared, &identity).await {
        handshake.release();
        crate::claim::run(shared, reader, writer, connect, claim, peer).await;
        return;
    }
    let authenticated = authenticate(&shared, &connect, &identity, peer).await;
    handshake.release();
    let device = match authenticated {
        Ok(d) => d,
        Err(code) => {
            writer.refuse(code).await;
            return;
        }
    };
    let span = tracing::info_span!("modem", imei = %device.imei, %peer);
    async move {
        let accepted = Connection::open(
            shared,
            reader,
            writer,
            &device,
            peer,
            identity,
            connect.keep_alive,
        )
        .await;
        if let Some(connection) = accepted {
            connection.run().await;
        }
    }
    .instrument(span)
    .await;
}

/// One accepted connection: the device it authenticated as, the halves of its stream, the
/// channels to and from its dispatcher, and the packet loop's state. Made by
/// [`Connection::open`] once CONNECT is authenticated; [`Connection::run`] runs the packet
/// loop and ends it ([`Connection::end`]).
struct Connection<S> {
    /// The gateway's state shared by every connection (store, hub, events, configuration).
    shared: Arc<Shared>,
    /// Packets from the modem.
    reader: PacketReader<ReadHalf<S>>,
    /// Packets to the modem.
    writer: PacketWriter<WriteHalf<S>>,
    /// The device the connection authenticated as.
    imei: Imei,
    /// The device's topics: the only ones it may subscribe (`command`) and publish
    /// (`reply`, `status`) on.
    topics: Topics,
    /// Identifies this connection (node id and a UUID): in the hub, presence and events.
    session_id: String,
    /// Cancelled to end the connection (takeover, revocation, shutdown); also ends the
    /// dispatcher.
    kill: CancellationToken,
    /// Commands from the dispatcher, to publish on the command topic (its sender is in the
    /// hub's entry).
    outbound: mpsc::Receiver<Outbound>,
    /// Replies from the modem, to the dispatcher. Closed first when the connection ends, so
    /// the dispatcher handles what is still in it, then stops.
    replies: mpsc::Sender<String>,
    /// The QoS of the modem's subscription to its command topic, for the dispatcher (which
    /// sends nothing while it is `None`).
    subscribed: watch::Sender<Option<QoS>>,
    /// The dispatcher's task.
    dispatcher: JoinHandle<()>,
    /// How long the connection may stay silent: 1.5 times the keepalive the modem asked
    /// for, at most the configured maximum.
    keepalive: Duration,
    /// The next packet id for a QoS 1 command publish (1..=65535, wrapping).
    next_pkid: u16,
    /// The QoS granted on the command topic, if subscribed.
    sub_qos: Option<QoS>,
    /// Packet ids of QoS 2 publishes taken and not yet released (PUBREL).
    pending_qos2: HashSet<u16>,
    /// Subscription filters refused so far on this connection.
    denied_filters: usize,
    /// The QoS granted on the certificate topic, if subscribed.
    cert_qos: Option<QoS>,
    /// When the last certificate request was answered (one per [`crate::csr::MIN_INTERVAL`]).
    last_csr: Option<std::time::Instant>,
    /// The serial of the client certificate the connection authenticated with.
    cert_serial: Option<String>,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Accepts an authenticated CONNECT: registers the connection in the hub (ending the
    /// device's previous one), answers CONNACK, records presence, and starts the
    /// dispatcher. `None` if the CONNACK could not be sent.
    async fn open(
        shared: Arc<Shared>,
        reader: PacketReader<ReadHalf<S>>,
        mut writer: PacketWriter<WriteHalf<S>>,
        device: &Device,
        peer: SocketAddr,
        identity: PeerIdentity,
        keep_alive: u16,
    ) -> Option<Self> {
        let imei = device.imei.clone();
        let topics = Topics::for_device(device);
        let session_id = format!("{}-{}", shared.cfg.node_id, uuid::Uuid::now_v7().simple());
        let kill = shared.shutdown.child_token();
        let notify = Arc::new(Notify::new());
        let (out_tx, out_rx) = mpsc::channel::<Outbound>(8);
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
            .send(&Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                false,
            )))
            .await
            .is_err()
        {
            shared.hub.unregister(&imei, &session_id);
            return None;
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
            Some(&imei),
            EventPayload::DeviceOnline(DeviceOnline {
                remote_addr: peer.to_string(),
                cert_serial: identity.cert_serial.clone(),
                session_id: session_id.clone(),
            }),
        );
        info!(keepalive = keep_alive, "modem connected");

        let dispatcher = tokio::spawn(
            Dispatcher::new(
                shared.clone(),
                imei.clone(),
                notify,
                kill.clone(),
                reply_rx,
                subscribed_rx,
            )
            .run()
            .in_current_span(),
        );

        let keepalive = if keep_alive == 0 {
            shared.cfg.max_idle
        } else {
            (Duration::from_secs(u64::from(keep_alive)) * 3 / 2).min(shared.cfg.max_idle)
        };
        Some(Self {
            shared,
            reader,
            writer,
            imei,
            topics,
            session_id,
            kill,
            outbound: out_rx,
            replies: reply_tx,
            subscribed: subscribed_tx,
            dispatcher,
            keepalive,
            next_pkid: 1,
            sub_qos: None,
            pending_qos2: HashSet::new(),
            denied_filters: 0,
            cert_qos: None,
            last_csr: None,
            cert_serial: identity.cert_serial,
        })
    }

    /// The packet loop: packets from the modem, commands from the dispatcher, until the
    /// modem leaves, breaks a rule or goes silent, or the connection is killed; then ends
    /// the connection.
    async fn run(mut self) {
        let end = loop {
            tokio::select! {
                () = self.kill.cancelled() => break End::Killed,
                frame = tokio::time::timeout(self.keepalive, self.reader.next()) => {
                    let packet = match frame {
                        Err(_) => break End::KeepaliveTimeout,
                        Ok(Err(e)) => break End::Frame(e),
                        Ok(Ok(None)) => break End::Eof,
                        Ok(Ok(Some(p))) => p,
                    };
                    self.shared.hub.seen(&self.imei, OffsetDateTime::now_utc());
                    match self.handle_packet(packet).await {
                        Ok(None) => {}
                        Ok(Some(end)) => break end,
                        Err(e) => break End::Frame(e),
                    }
                }
                out = self.outbound.recv() => {
                    let Some(Outbound::Command { text }) = out else { continue };
                    if let Err(e) = self.send_command(text).await {
                        break End::Frame(e);
                    }
                }
            }
        };
        self.end(end).await;
    }

    /// Publishes a command on the device's command topic, with the QoS of its subscription.
    async fn send_command(&mut self, text: String) -> Result<(), FrameError> {
        let qos = self.sub_qos.unwrap_or(QoS::AtMostOnce);
        let mut publish = Publish::new(self.topics.command.clone(), qos, text.into_bytes());
        if qos != QoS::AtMostOnce {
            publish.pkid = self.take_pkid();
        }
        self.writer.send(&Packet::Publish(publish)).await
    }

    /// Ends the connection: stops the dispatcher (after the replies already received),
    /// closes the stream, records the device offline (unless a newer connection took over)
    /// and leaves the hub.
    async fn end(self, end: End) {
        let Self {
            shared,
            mut writer,
            imei,
            session_id,
            kill,
            replies,
            dispatcher,
            ..
        } = self;
        // Close the reply channel first: the dispatcher handles what is still in it, then
        // stops.
        drop(replies);
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
        match shared
            .store
            .mark_offline(&imei, &session_id, OffsetDateTime::now_utc())
            .await
        {
            Ok(true) => {
                shared.events.publish(
                    Some(&imei),
                    EventPayload::DeviceOffline(DeviceOffline {
                        reason: end.label().to_owned(),
                        session_id: session_id.clone(),
                    }),
                );
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "could not record disconnection"),
        }
        // Leave the hub last: shutdown waits for the hub to empty before closing the store,
        // so the disconnection above is always recorded.
        shared.hub.unregister(&imei, &session_id);
    }

    fn take_pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = if self.next_pkid == u16::MAX {
            1
        } else {
            self.next_pkid + 1
        };
        id
    }

    /// Handles one packet from the modem; `Some` when it ends the connection.
    async fn handle_packet(&mut self, packet: Packet) -> Result<Option<End>, FrameError> {
        match packet {
            Packet::PingReq => self.writer.send(&Packet::PingResp).await?,
            Packet::Disconnect => return Ok(Some(End::ClientDisconnect)),
            Packet::Connect(_) => {
                warn!("second CONNECT on one connection");
                return Ok(Some(End::Violation("second_connect")));
            }
            Packet::Subscribe(sub) => return self.on_subscribe(sub).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u).await?,
            Packet::Publish(p) => return self.on_publish(p).await,
            Packet::PubRel(rel) => {
                self.pending_qos2.remove(&rel.pkid);
                self.writer
                    .send(&Packet::PubComp(PubComp::new(rel.pkid)))
                    .await?;
            }
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                // Acknowledgements of our command publishes; nothing to do (clean connections).
                if let Packet::PubRec(rec) = packet {
                    self.writer
                        .send(&Packet::PubRel(PubRel::new(rec.pkid)))
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

    /// SUBSCRIBE: only the device's command and certificate topics are granted (QoS 0, or
    /// 1 for 1 and 2);
    /// any other filter is refused and audited, up to
    /// [`crate::GatewayConfig::max_denied_filters`] per connection; one more ends the
    /// connection (`acl_subscribe`) without a further audit row.
    async fn on_subscribe(&mut self, sub: Subscribe) -> Result<Option<End>, FrameError> {
        let mut codes = Vec::with_capacity(sub.filters.len());
        for f in &sub.filters {
            if f.path == self.topics.command {
                let qos = match f.qos {
                    QoS::AtMostOnce => QoS::AtMostOnce,
                    _ => QoS::AtLeastOnce,
                };
                self.sub_qos = Some(qos);
                codes.push(SubscribeReasonCode::Success(qos));
            } else if f.path == self.topics.cert {
                let qos = match f.qos {
                    QoS::AtMostOnce => QoS::AtMostOnce,
                    _ => QoS::AtLeastOnce,
                };
                self.cert_qos = Some(qos);
                codes.push(SubscribeReasonCode::Success(qos));
            } else {
                self.denied_filters += 1;
                if self.denied_filters > self.shared.cfg.max_denied_filters {
                    warn!(
                        denied = self.denied_filters,
                        "too many denied subscription filters; disconnecting"
                    );
                    metrics::counter!("callhome_mqtt_acl_violations_total", "action" => "mqtt.subscribe.too_many_denied")
                        .increment(1);
                    return Ok(Some(End::Violation("acl_subscribe")));
                }
                warn!(filter = %f.path, allowed = %self.topics.command, "subscription refused by ACL");
                self.audit_violation(
                    "mqtt.subscribe.denied",
                    serde_json::json!({"filter": f.path, "allowed": [self.topics.command, self.topics.cert]}),
                )
                .await;
                codes.push(SubscribeReasonCode::Failure);
            }
        }
        self.writer
            .send(&Packet::SubAck(SubAck::new(sub.pkid, codes)))
            .await?;
        if let Some(q) = self.sub_qos {
            self.subscribed.send_replace(Some(q));
        }
        Ok(None)
    }

    /// UNSUBSCRIBE: leaving the command topic stops the dispatcher's sending.
    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), FrameError> {
        if u.topics.contains(&self.topics.cert) {
            self.cert_qos = None;
        }
        if u.topics.contains(&self.topics.command) {
            self.sub_qos = None;
            self.subscribed.send_replace(None);
        }
        self.writer
            .send(&Packet::UnsubAck(UnsubAck::new(u.pkid)))
            .await
    }

    /// PUBLISH: only on the device's reply, status and certificate-request topics
    /// (anything else is audited and ends the connection); acknowledged per its QoS, a
    /// QoS 2 retransmission taken once.
    async fn on_publish(&mut self, p: Publish) -> Result<Option<End>, FrameError> {
        let allowed = p.topic == self.topics.reply
            || p.topic == self.topics.status
            || p.topic == self.topics.csr;
        if !allowed {
            warn!(topic = %p.topic, "publish refused by ACL; disconnecting");
            self.audit_violation(
                "mqtt.publish.denied",
                serde_json::json!({"topic": p.topic, "allowed": [self.topics.reply, self.topics.status, self.topics.csr]}),
            )
            .await;
            return Ok(Some(End::Violation("acl_publish")));
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.writer
                    .send(&Packet::PubAck(PubAck::new(p.pkid)))
                    .await?
            }
            QoS::ExactlyOnce => {
                self.writer
                    .send(&Packet::PubRec(PubRec::new(p.pkid)))
                    .await?;
                if !self.pending_qos2.insert(p.pkid) {
                    // A retransmission of a QoS 2 message already taken: not again.
                    return Ok(None);
                }
            }
        }
        if p.topic == self.topics.csr
            && p.topic != self.topics.reply
            && p.topic != self.topics.status
        {
            self.on_certificate_request(&p).await?;
            return Ok(None);
        }
        self.deliver(&p).await;
        Ok(None)
    }

    /// A certificate request on `{IMEI}/csr` ([`crate::csr`]): answered on `{IMEI}/cert`
    /// with the QoS of the modem's subscription to it (QoS 0 if it has none: the modem
    /// asked, so it listens).
    async fn on_certificate_request(&mut self, p: &Publish) -> Result<(), FrameError> {
        let now = std::time::Instant::now();
        let answer = if self
            .last_csr
            .is_some_and(|at| now.duration_since(at) < crate::csr::MIN_INTERVAL)
        {
            crate::csr::too_soon()
        } else {
            self.last_csr = Some(now);
            crate::csr::answer(
                &self.shared,
                &self.imei,
                self.cert_serial.as_deref(),
                &p.payload,
            )
            .await
        };
        let qos = self.cert_qos.unwrap_or(QoS::AtMostOnce);
        let mut publish = Publish::new(self.topics.cert.clone(), qos, answer.to_vec());
        if qos != QoS::AtMostOnce {
            publish.pkid = self.take_pkid();
        }
        let sent = self.writer.send(&Packet::Publish(publish)).await;
        // The frame held the key (server_keygen); the writer has it on the wire now.
        drop(answer);
        sent
    }

    /// Hands an accepted publish on: a reply to the dispatcher, a status to the store.
    async fn deliver(&self, p: &Publish) {
        // The reply topic wins if a device has the same topic for both.
        if p.topic == self.topics.reply {
            let text = String::from_utf8_lossy(&p.payload).into_owned();
            metrics::counter!("callhome_mqtt_replies_total").increment(1);
            if self.replies.try_send(text).is_err() {
                metrics::counter!("callhome_mqtt_replies_dropped_total").increment(1);
                warn!("reply dropped: the dispatcher is not keeping up");
            }
            return;
        }
        self.store_status(p).await;
    }

    /// Stores a status message and publishes it.
    async fn store_status(&self, p: &Publish) {
        let (shared, imei) = (&self.shared, &self.imei);
        if !shared.status_limit.allow(imei) {
            metrics::counter!("callhome_mqtt_status_dropped_total").increment(1);
            debug!("status message over the device's rate; dropped");
            return;
        }
        let now = OffsetDateTime::now_utc();
        let parsed = crate::status::parse(&p.payload);
        metrics::counter!("callhome_status_messages_total").increment(1);
        if let Some(v) = &parsed {
            let (model, version) = crate::status::firmware_fields(v);
            shared
                .report_firmware(imei, model.as_deref(), version.as_deref(), "status")
                .await;
        }
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
                    Some(imei),
                    EventPayload::StatusReceived(StatusReceived {
                        id: rec.id,
                        fields: parsed,
                    }),
                );
            }
            Err(e) => warn!(error = %e, "could not store status"),
        }
    }

    /// Counts and audits a topic ACL violation by the device.
    async fn audit_violation(&self, action: &str, detail: serde_json::Value) {
        metrics::counter!("callhome_mqtt_acl_violations_total", "action" => action.to_owned())
            .increment(1);
        let entry = NewAuditEntry {
            at: OffsetDateTime::now_utc(),
            actor: self.imei.to_string(),
            actor_kind: ActorKind::Device,
            action: action.to_owned(),
            target: Some(self.imei.to_string()),
            outcome: AuditOutcome::Failure,
            status: None,
            detail: Some(detail.to_string()),
            remote_addr: None,
            request_id: None,
        };
        if let Err(e) = self.shared.store.append_audit(&entry).await {
            warn!(error = %e, "could not write audit row");
        }
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
                actor_kind: ActorKind::Device,
                action: "mqtt.connect.identity_mismatch".to_owned(),
                target: Some(connect.client_id.clone()),
                outcome: AuditOutcome::Failure,
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
        match shared.passwords.verify(login.password.clone(), hash).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(refuse(
                    "bad_password",
                    ConnectReturnCode::BadUserNamePassword,
                ));
            }
            // Every password-hashing slot stayed busy: try again later.
            Err(_) => {
                return Err(refuse(
                    "password_busy",
                    ConnectReturnCode::ServiceUnavailable,
                ));
            }
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
