//! Claim connections: a modem connecting with a production batch's claim certificate (its
//! serial is a claim's) may only enrol.
//!
//! Its CONNECT client id must be an IMEI the claim allows; it may SUBSCRIBE only
//! `{IMEI}/cert` and PUBLISH only `{IMEI}/csr` (a PEM PKCS#10 whose CN is that IMEI).
//! Anything else is refused, audited and ends the connection. There is no presence, no
//! command and no status on a claim connection. Each CSR goes through the same enrolment as
//! EST ([`callhome_pki::CertificateService::enroll_with_claim`]) and is answered on
//! `{IMEI}/cert`: the PEM chain (device certificate first, then the CA chain) when issued,
//! `PENDING <enrollment-id> <retry-after-s>` while held for approval, `REFUSED <reason>`
//! when refused. A revoked claim's connections end when the new CRL is in force.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callhome_core::{ActorKind, AuditOutcome, Imei};
use callhome_pki::{ClaimCsr, ClaimError, EnrollOutcome};
use callhome_store::{ClaimRecord, NewAuditEntry};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode,
};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tracing::{info, warn};

use crate::Shared;
use crate::codec::{PacketReader, PacketWriter};
use crate::connection::PeerIdentity;

/// Most CSRs one claim connection may publish; one more ends it.
const MAX_CSRS_PER_CONNECTION: usize = 5;

/// The claim whose certificate the peer presented, if it is one: a certificate whose CN is
/// not an IMEI and whose serial is a claim's. A store failure is logged and treated as "not
/// a claim" (the connection is then refused as a device would be).
pub(crate) async fn identify(shared: &Shared, identity: &PeerIdentity) -> Option<ClaimRecord> {
    let cn = identity.cert_cn.as_deref()?;
    if Imei::parse(cn).is_ok() {
        return None;
    }
    let serial = identity.cert_serial.as_deref()?;
    match shared.certs.claim_for_serial(serial).await {
        Ok(found) => found,
        Err(e) => {
            warn!(error = %e, "could not look up a claim certificate");
            None
        }
    }
}

/// Runs a claim connection to its end (CONNECT already read).
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    reader: PacketReader<ReadHalf<S>>,
    mut writer: PacketWriter<WriteHalf<S>>,
    connect: Connect,
    claim: ClaimRecord,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = ClaimConnection {
        shared,
        claim,
        peer,
        imei: None,
        cert_topic: String::new(),
        csr_topic: String::new(),
        sub_qos: None,
        csrs: 0,
        next_pkid: 1,
    };
    let imei = match conn.accept(&connect).await {
        Ok(imei) => imei,
        Err(code) => {
            writer.refuse(code).await;
            return;
        }
    };
    conn.cert_topic = format!("{imei}/cert");
    conn.csr_topic = format!("{imei}/csr");
    conn.imei = Some(imei.clone());
    if writer
        .send(&Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
        .await
        .is_err()
    {
        return;
    }
    metrics::counter!("callhome_mqtt_claim_connects_total").increment(1);
    info!(%imei, claim = %conn.claim.name, %peer, "claim connection accepted");
    let end = conn
        .packet_loop(reader, &mut writer, connect.keep_alive)
        .await;
    writer.shutdown().await;
    info!(%imei, claim = %conn.claim.name, reason = end, "claim connection closed");
}

/// The state of one claim connection.
struct ClaimConnection {
    shared: Arc<Shared>,
    claim: ClaimRecord,
    peer: SocketAddr,
    /// The IMEI of the CONNECT (set once accepted).
    imei: Option<Imei>,
    /// `{IMEI}/cert`: the only subscription granted, where answers go.
    cert_topic: String,
    /// `{IMEI}/csr`: the only topic it may publish on.
    csr_topic: String,
    /// QoS granted on the answer topic.
    sub_qos: Option<QoS>,
    /// CSRs published so far.
    csrs: usize,
    next_pkid: u16,
}

impl ClaimConnection {
    /// Checks the CONNECT: the claim usable, the client id an IMEI it allows.
    async fn accept(&self, connect: &Connect) -> Result<Imei, ConnectReturnCode> {
        let claim = &self.claim;
        let now = OffsetDateTime::now_utc();
        let refusal = if claim.revoked_at.is_some() {
            Some((
                "claim_revoked",
                format!("the claim {} is revoked", claim.name),
            ))
        } else if claim.policy.expires_at <= now {
            Some((
                "claim_expired",
                format!("the claim {} has expired", claim.name),
            ))
        } else {
            None
        };
        if let Some((code, why)) = refusal {
            self.audit(
                "mqtt.claim.connect",
                &connect.client_id,
                false,
                serde_json::json!({"reason": why, "code": code}),
            )
            .await;
            metrics::counter!("callhome_mqtt_rejected_total", "reason" => code).increment(1);
            return Err(ConnectReturnCode::NotAuthorized);
        }
        let imei = match Imei::parse(&connect.client_id) {
            Ok(imei) if claim.policy.imeis.allows(&imei) => imei,
            parsed => {
                let why = match parsed {
                    Ok(imei) => format!("IMEI {imei} is not allowed by the claim {}", claim.name),
                    Err(e) => format!("the client id must be the device's IMEI ({})", e.reason),
                };
                self.audit(
                    "mqtt.claim.connect",
                    &connect.client_id,
                    false,
                    serde_json::json!({"reason": why, "code": "imei_not_allowed"}),
                )
                .await;
                metrics::counter!("callhome_mqtt_rejected_total", "reason" => "claim_imei_not_allowed")
                    .increment(1);
                warn!(peer = %self.peer, client_id = %connect.client_id, claim = %claim.name, "claim connection refused: {why}");
                return Err(ConnectReturnCode::NotAuthorized);
            }
        };
        Ok(imei)
    }

    /// Packets until the modem leaves, breaks a rule or goes silent, the claim is revoked,
    /// or the gateway shuts down; the reason, for the log.
    async fn packet_loop<S>(
        &mut self,
        mut reader: PacketReader<ReadHalf<S>>,
        writer: &mut PacketWriter<WriteHalf<S>>,
        keep_alive: u16,
    ) -> &'static str
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let keepalive = if keep_alive == 0 {
            self.shared.cfg.max_idle
        } else {
            (Duration::from_secs(u64::from(keep_alive)) * 3 / 2).min(self.shared.cfg.max_idle)
        };
        let mut crl = self.shared.certs.subscribe();
        let shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return "shutdown",
                changed = crl.changed() => {
                    if changed.is_err() {
                        return "shutdown";
                    }
                    if self.revoked_now() {
                        return "claim_revoked";
                    }
                }
                frame = tokio::time::timeout(keepalive, reader.next()) => {
                    let packet = match frame {
                        Err(_) => return "keepalive_timeout",
                        Ok(Err(e)) => return e.label(),
                        Ok(Ok(None)) => return "eof",
                        Ok(Ok(Some(p))) => p,
                    };
                    match self.handle(packet, writer).await {
                        Ok(None) => {}
                        Ok(Some(end)) => return end,
                        Err(e) => return e.label(),
                    }
                }
            }
        }
    }

    /// Whether the claim has been revoked since the connection was accepted: its
    /// certificate is in the CRLs now in force (an in-memory check, so a CRL change costs
    /// claim connections no query each).
    fn revoked_now(&self) -> bool {
        self.claim
            .serial
            .as_ref()
            .is_some_and(|serial| self.shared.certs.revoked_serials().contains(serial))
    }

    /// One packet; `Some(reason)` when it ends the connection.
    async fn handle<S>(
        &mut self,
        packet: Packet,
        writer: &mut PacketWriter<WriteHalf<S>>,
    ) -> Result<Option<&'static str>, crate::codec::FrameError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match packet {
            Packet::PingReq => writer.send(&Packet::PingResp).await?,
            Packet::Disconnect => return Ok(Some("disconnect")),
            Packet::Subscribe(sub) => {
                let mut codes = Vec::with_capacity(sub.filters.len());
                for f in &sub.filters {
                    if f.path != self.cert_topic {
                        self.violation(
                            "mqtt.claim.subscribe.denied",
                            serde_json::json!({"filter": f.path, "allowed": self.cert_topic}),
                        )
                        .await;
                        return Ok(Some("acl_subscribe"));
                    }
                    let qos = match f.qos {
                        QoS::AtMostOnce => QoS::AtMostOnce,
                        _ => QoS::AtLeastOnce,
                    };
                    self.sub_qos = Some(qos);
                    codes.push(SubscribeReasonCode::Success(qos));
                }
                writer
                    .send(&Packet::SubAck(SubAck::new(sub.pkid, codes)))
                    .await?;
            }
            Packet::Publish(p) => {
                if p.topic != self.csr_topic {
                    self.violation(
                        "mqtt.claim.publish.denied",
                        serde_json::json!({"topic": p.topic, "allowed": self.csr_topic}),
                    )
                    .await;
                    return Ok(Some("acl_publish"));
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => writer.send(&Packet::PubAck(PubAck::new(p.pkid))).await?,
                    QoS::ExactlyOnce => writer.send(&Packet::PubRec(PubRec::new(p.pkid))).await?,
                }
                self.csrs += 1;
                if self.csrs > MAX_CSRS_PER_CONNECTION {
                    self.violation(
                        "mqtt.claim.csr.too_many",
                        serde_json::json!({"max": MAX_CSRS_PER_CONNECTION}),
                    )
                    .await;
                    return Ok(Some("too_many_csrs"));
                }
                let answer = self.enroll(&p.payload).await;
                self.answer(writer, answer).await?;
            }
            Packet::PubRel(rel) => {
                writer
                    .send(&Packet::PubComp(PubComp::new(rel.pkid)))
                    .await?;
            }
            Packet::PubAck(_) | Packet::PubComp(_) => {}
            other => {
                self.violation(
                    "mqtt.claim.packet.denied",
                    serde_json::json!({"packet": format!("{other:?}").split(['(', ' ']).next().unwrap_or("?")}),
                )
                .await;
                return Ok(Some("unexpected_packet"));
            }
        }
        Ok(None)
    }

    /// Enrols the CSR `payload`; the text to publish on the answer topic. Every outcome is
    /// audited.
    async fn enroll(&self, payload: &[u8]) -> String {
        let Some(imei) = self.imei.clone() else {
            return "REFUSED not connected".to_owned();
        };
        let result = async {
            let text = std::str::from_utf8(payload)
                .map_err(|_| ClaimError::InvalidCsr("the payload is not PEM text".into()))?;
            let csr = ClaimCsr::parse(text)?;
            if csr.imei != imei {
                return Err(ClaimError::InvalidCsr(format!(
                    "the CSR is for {}, but this connection is {imei}",
                    csr.imei
                )));
            }
            self.shared
                .certs
                .enroll_with_claim(&self.claim, &csr, Some(self.peer.ip().to_string()))
                .await
        }
        .await;
        if let Ok(outcome) = &result
            && let Some(event) = outcome.event(&self.claim.name)
        {
            self.shared.events.publish(Some(&imei), event);
        }
        let (text, ok, detail) = match result {
            Ok(EnrollOutcome::Issued {
                enrollment,
                certificate,
                ..
            }) => (
                format!(
                    "{}{}",
                    certificate.certificate_pem,
                    self.shared.certs.ca_chain_pem()
                ),
                true,
                serde_json::json!({"outcome": "issued", "enrollment": enrollment.id, "serial": certificate.serial}),
            ),
            Ok(EnrollOutcome::Pending { enrollment, .. }) => (
                format!("PENDING {} {}", enrollment.id, callhome_pki::RETRY_AFTER_S),
                true,
                serde_json::json!({"outcome": "pending", "enrollment": enrollment.id}),
            ),
            Err(e) => {
                let reason = match &e {
                    ClaimError::Pki(inner) => {
                        warn!(error = %inner, "claim enrolment failed");
                        "internal error; try again later".to_owned()
                    }
                    other => other.to_string(),
                };
                (
                    format!("REFUSED {reason}"),
                    false,
                    serde_json::json!({"outcome": "refused", "code": e.code(), "reason": reason}),
                )
            }
        };
        self.audit("mqtt.claim.enroll", imei.as_str(), ok, detail)
            .await;
        text
    }

    /// Publishes `text` on the answer topic (QoS of the subscription; 0 if none).
    async fn answer<S>(
        &mut self,
        writer: &mut PacketWriter<WriteHalf<S>>,
        text: String,
    ) -> Result<(), crate::codec::FrameError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let qos = self.sub_qos.unwrap_or(QoS::AtMostOnce);
        let mut publish = Publish::new(self.cert_topic.clone(), qos, text.into_bytes());
        if qos != QoS::AtMostOnce {
            publish.pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        }
        writer.send(&Packet::Publish(publish)).await
    }

    /// Counts and audits a rule broken by a claim connection (which then ends).
    async fn violation(&self, action: &str, detail: serde_json::Value) {
        warn!(claim = %self.claim.name, peer = %self.peer, action, "claim connection broke a rule; disconnecting");
        metrics::counter!("callhome_mqtt_acl_violations_total", "action" => action.to_owned())
            .increment(1);
        let actor = self
            .imei
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default();
        self.audit(action, &actor, false, detail).await;
    }

    /// Writes an audit row (actor: the IMEI asked for; the claim is in the detail).
    async fn audit(&self, action: &str, actor: &str, ok: bool, mut detail: serde_json::Value) {
        detail["claim"] = serde_json::Value::String(self.claim.name.clone());
        let entry = NewAuditEntry {
            at: OffsetDateTime::now_utc(),
            actor: actor.chars().take(128).collect(),
            actor_kind: ActorKind::Device,
            action: action.to_owned(),
            target: Some(format!("claim {}", self.claim.name)),
            outcome: if ok {
                AuditOutcome::Success
            } else {
                AuditOutcome::Failure
            },
            status: None,
            detail: Some(detail.to_string()),
            remote_addr: Some(self.peer.to_string()),
            request_id: None,
        };
        if let Err(e) = self.shared.store.append_audit(&entry).await {
            warn!(error = %e, "could not write audit row");
        }
    }
}
