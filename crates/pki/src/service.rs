//! The CA as a service: signing recorded in the inventory, revocation that regenerates the
//! CRL at once, and the current CRL for HTTP and for the TLS listeners.
//!
//! [`Authority`] does the cryptography and knows nothing of the database; this module is
//! where issued and revoked certificates meet the store.

use callhome_ca::tls::{ClientAuth, SharedServerConfig, server_config};

use callhome_ca::{Authority, CaError, CrlSet, RevocationReason, RevokedEntry, ServerIdentity};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use callhome_core::Imei;
use callhome_store::{CertificateRecord, Revocation, Store};
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};

use crate::PkiError;

/// How long a published CRL stays current. It is rebuilt on every revocation and at least
/// daily (see [`CertificateService::spawn_refresh`]).
pub const CRL_VALIDITY: time::Duration = time::Duration::days(7);

/// The certificate authority with its inventory and CRL.
pub struct CertificateService {
    authority: Authority,
    store: Arc<dyn Store>,
    crl: ArcSwap<CrlSet>,
    /// The serials the CRLs in force list, read with them: what every listener's watcher
    /// ends live connections by, without a query of its own.
    revoked: ArcSwap<HashSet<String>>,
    /// Serialises CRL rebuilds so that a newer CRL is never replaced by an older one.
    rebuild: Mutex<()>,
    /// Announces each new CRL's number, and each renewed server certificate, to whoever
    /// builds TLS configurations from them.
    changes: watch::Sender<u64>,
    /// The server's own TLS certificate, renewed while running.
    identity: ArcSwap<ServerIdentity>,
    /// Where the server certificate lives and the names it must cover.
    server: ServerTlsFiles,
}

/// Where the server's TLS certificate and key live, and the host names and addresses it
/// must cover.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// The directory of `server.crt.pem` and `server.key.pem`.
    pub dir: PathBuf,
    /// Host names and addresses for its subject alternative names.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for CertificateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateService")
            .field("ca_fingerprint", &self.authority.fingerprint_sha256())
            .field("crl_number", &self.crl.load().current.crl_number)
            .finish_non_exhaustive()
    }
}

impl CertificateService {
    /// Wraps `authority`, building the first CRL from the store's revoked certificates and
    /// loading (or issuing) the server's TLS certificate in `server.dir`.
    pub async fn new(
        authority: Authority,
        store: Arc<dyn Store>,
        server: ServerTlsFiles,
    ) -> Result<Self, PkiError> {
        let identity = authority.ensure_server_identity(&server.dir, &server.hosts)?;
        let (crl, revoked) = build(&authority, &*store).await?;
        let (changes, _) = watch::channel(crl.current.crl_number);
        Ok(Self {
            authority,
            store,
            crl: ArcSwap::from_pointee(crl),
            revoked: ArcSwap::from_pointee(revoked),
            rebuild: Mutex::new(()),
            changes,
            identity: ArcSwap::from_pointee(identity),
            server,
        })
    }

    /// The server's TLS certificate chain and key in force.
    pub fn server_identity(&self) -> Arc<ServerIdentity> {
        self.identity.load_full()
    }

    /// Checks the server certificate on disk and renews it if it expires within its
    /// renewal margin (or was removed, or no longer covers the names): when it changed,
    /// every TLS listener gets a configuration with the new one for its next handshakes
    /// (live connections keep theirs). Returns whether it changed.
    pub fn renew_server_identity(&self) -> Result<bool, PkiError> {
        let fresh = self
            .authority
            .ensure_server_identity(&self.server.dir, &self.server.hosts)?;
        let current = self.identity.load();
        if fresh.cert_chain == current.cert_chain {
            return Ok(false);
        }
        tracing::info!(
            old_not_after = %current.not_after,
            not_after = %fresh.not_after,
            "server certificate renewed while running"
        );
        self.identity.store(Arc::new(fresh));
        self.changes.send_modify(|_| {});
        Ok(true)
    }

    /// Runs [`CertificateService::renew_server_identity`] every `every` until `shutdown`.
    pub async fn renew_server_identity_periodically(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.renew_server_identity() {
                        tracing::error!(error = %e, "server certificate check failed; keeping the current one");
                    }
                }
            }
        }
    }

    /// The inventory.
    pub(crate) fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The key material and signing operations.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The issuing CA's certificate, PEM.
    pub fn ca_certificate_pem(&self) -> &str {
        self.authority.ca_certificate_pem()
    }

    /// The roots of the current and retired issuing CAs, PEM: what modems and readers
    /// trust to verify our servers, through a CA rollover.
    pub fn trust_bundle_pem(&self) -> String {
        self.authority.trust_bundle_pem()
    }

    /// The CA chain (issuing CA first, root last), PEM: what `ca_chain` fields, EST
    /// `cacerts` and trust bundles serve.
    pub fn ca_chain_pem(&self) -> String {
        self.authority.chain_pem()
    }

    /// [`CertificateService::ca_chain_pem`] in DER.
    pub fn ca_chain_der(&self) -> Vec<callhome_ca::CertificateDer<'static>> {
        self.authority.chain_der()
    }

    /// The CRLs in force, one per issuing CA (the current one first).
    pub fn crl(&self) -> Arc<CrlSet> {
        self.crl.load_full()
    }

    /// A rustls server configuration for a TLS listener: the server certificate in force,
    /// clients verified against the issuing CAs and the CRLs in force now.
    pub fn server_tls(
        &self,
        client_auth: ClientAuth,
    ) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let crl = self.crl();
        server_config(
            &self.identity.load(),
            &self.authority.client_trust_anchors(),
            crl.ders(),
            client_auth,
        )
    }

    /// Keeps `target` built from the CRL and server certificate in force: rebuilt (and
    /// swapped atomically) on every new CRL or renewed certificate until `shutdown`. A
    /// failed rebuild keeps the previous configuration.
    pub fn keep_tls_current(
        self: &Arc<Self>,
        client_auth: ClientAuth,
        target: Arc<SharedServerConfig>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let mut changes = self.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                match this.server_tls(client_auth) {
                    Ok(cfg) => target.store(cfg),
                    Err(e) => {
                        tracing::error!(error = %e, "could not rebuild a TLS configuration; keeping the previous one")
                    }
                }
            }
        })
    }

    /// Notified with the CRL number whenever a new CRL is in force.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Signs `csr_pem` for the device `imei` and records the certificate in the inventory.
    pub async fn sign_device_csr(
        &self,
        imei: &Imei,
        csr_pem: &str,
        validity_days: Option<u32>,
        issued_by: &str,
    ) -> Result<CertificateRecord, PkiError> {
        let issued = self
            .authority
            .sign_csr(csr_pem, imei.as_str(), validity_days)?;
        let record = CertificateRecord {
            serial: issued.serial,
            imei: imei.clone(),
            common_name: issued.common_name,
            fingerprint_sha256: issued.fingerprint_sha256,
            certificate_pem: issued.certificate_pem,
            not_before: issued.not_before,
            not_after: issued.not_after,
            issued_by: issued_by.to_owned(),
            created_at: OffsetDateTime::now_utc(),
            revocation: None,
        };
        self.store.insert_certificate(&record).await?;
        // For the shared_key audit check; a miss is back-filled by the expiry watch.
        if let Err(e) = crate::watch::ExpiryWatch::record_public_key(
            &*self.store,
            &record.serial,
            &record.certificate_pem,
        )
        .await
        {
            tracing::warn!(serial = %record.serial, error = %e, "public-key hash not recorded");
        }
        tracing::info!(%imei, serial = %record.serial, %issued_by, "device certificate issued");
        Ok(record)
    }

    /// Revokes the certificate `serial` and puts a new CRL in force before returning.
    pub async fn revoke(
        &self,
        serial: &str,
        reason: Option<RevocationReason>,
        by: &str,
    ) -> Result<CertificateRecord, PkiError> {
        let revocation = Revocation {
            at: OffsetDateTime::now_utc(),
            reason: reason.map(|r| r.as_str().to_owned()),
            by: by.to_owned(),
        };
        let record = self.store.revoke_certificate(serial, &revocation).await?;
        tracing::warn!(serial, imei = %record.imei, %by, "certificate revoked");
        self.refresh_crl().await?;
        // The other nodes rebuild their CRL and end its connections now, not at their next
        // periodic refresh.
        if let Err(e) = self
            .store
            .announce(&callhome_core::ClusterChange::Crl)
            .await
        {
            tracing::warn!(error = %e, "could not announce the revocation to the other nodes");
        }
        Ok(record)
    }

    /// The serials of every certificate the CRLs in force list (revoked, not yet expired:
    /// devices' and claims'), for ending live connections that use one: read with the
    /// CRLs, so the watchers of every listener share one read per rebuild.
    pub fn revoked_serials(&self) -> Arc<HashSet<String>> {
        self.revoked.load_full()
    }

    /// Rebuilds the CRL from the store and puts it in force.
    pub async fn refresh_crl(&self) -> Result<Arc<CrlSet>, PkiError> {
        let _guard = self.rebuild.lock().await;
        let (crl, revoked) = build(&self.authority, &*self.store).await?;
        let crl = Arc::new(crl);
        self.revoked.store(Arc::new(revoked));
        self.crl.store(crl.clone());
        self.changes.send_replace(crl.current.crl_number);
        Ok(crl)
    }

    /// Rebuilds the CRL every `every` until `shutdown` is cancelled, so it never goes stale
    /// even when nothing is revoked (and picks up revocations made by other nodes).
    pub async fn refresh_periodically(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh_crl().await {
                        tracing::error!(error = %e, "CRL refresh failed");
                    }
                }
            }
        }
    }
}

/// The CRLs of the certificates revoked and not expired, and their serials.
async fn build(
    authority: &Authority,
    store: &dyn Store,
) -> Result<(CrlSet, HashSet<String>), PkiError> {
    let now = OffsetDateTime::now_utc();
    let revoked = store.list_revoked_certificates(now).await?;
    let entries = revoked
        .into_iter()
        .filter_map(|c| {
            let rev = c.revocation?;
            Some(RevokedEntry {
                serial: c.serial,
                revoked_at: rev.at,
                reason: rev.reason.as_deref().and_then(|r| r.parse().ok()),
            })
        })
        .chain(
            // Revoked claims' certificates (issued by us, not in the device inventory).
            store
                .revoked_claims(now)
                .await?
                .into_iter()
                .filter_map(|c| {
                    Some(RevokedEntry {
                        serial: c.serial?,
                        revoked_at: c.revoked_at?,
                        reason: None,
                    })
                }),
        )
        .collect::<Vec<_>>();
    let serials = entries.iter().map(|e| e.serial.clone()).collect();
    // CRL numbers must increase: milliseconds since the epoch do, across restarts and nodes.
    let crl_number = u64::try_from((now.unix_timestamp_nanos() / 1_000_000).max(0)).unwrap_or(0);
    Ok((
        authority.build_crls(&entries, crl_number, CRL_VALIDITY)?,
        serials,
    ))
}
