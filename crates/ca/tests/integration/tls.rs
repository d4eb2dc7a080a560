//! Real mutual-TLS handshakes over loopback with tokio-rustls.

use std::io;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use callhome_ca::tls::{ClientAuth, SharedServerConfig, client_config, server_config};
use callhome_ca::{
    Authority, CaError, CertificateRevocationListDer, Crl, IssuedCertificate, RevocationReason,
    RevokedEntry, ServerIdentity, generate_key_and_csr,
};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, Error as TlsError, ServerConfig};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::common::{IMEI, new_ca, openssl_available};

const LIMIT: StdDuration = StdDuration::from_secs(10);

/// What the server saw: the client's certificate CN (None if anonymous), or the
/// handshake/IO error.
type ServerOutcome = Result<Option<String>, io::Error>;

/// One connection: the server accepts, reads "hello" and echoes it; the client
/// connects to "localhost", sends "hello" and reads the echo.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (ServerOutcome, Result<(), io::Error>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let cn = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|der| {
                let pem_text = crate::common::to_pem("CERTIFICATE", der);
                callhome_ca::inspect_certificate(&pem_text)
                    .ok()
                    .and_then(|i| i.common_name)
                    .unwrap_or_default()
            });
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        tls.write_all(&buf).await?;
        tls.shutdown().await?;
        Ok::<_, io::Error>(cn)
    });

    let connector = TlsConnector::from(client);
    let client_result = timeout(LIMIT, async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");
        Ok::<_, io::Error>(())
    })
    .await
    .expect("client finished in time");
    let server_result = timeout(LIMIT, server_task)
        .await
        .expect("server finished in time")
        .expect("server task did not panic");
    (server_result, client_result)
}

/// The rustls error inside an I/O error from tokio-rustls.
fn tls_error(e: &io::Error) -> Option<&TlsError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
}

struct Setup {
    _tmp: tempfile::TempDir,
    ca: Authority,
    identity: ServerIdentity,
}

fn setup() -> Setup {
    let (tmp, ca) = new_ca();
    let identity = ca
        .ensure_server_identity(&tmp.path().join("server"), &["localhost".to_string()])
        .unwrap();
    Setup {
        _tmp: tmp,
        ca,
        identity,
    }
}

/// A device key + certificate from `ca`.
fn device(ca: &Authority, cn: &str) -> (String, IssuedCertificate) {
    let (key, csr) = generate_key_and_csr(cn).unwrap();
    (key, ca.sign_csr(&csr, cn, None).unwrap())
}

fn crl_revoking(ca: &Authority, serials: &[&str]) -> Crl {
    let entries: Vec<RevokedEntry> = serials
        .iter()
        .map(|s| RevokedEntry {
            serial: s.to_string(),
            revoked_at: OffsetDateTime::now_utc(),
            reason: Some(RevocationReason::KeyCompromise),
        })
        .collect();
    ca.build_crl(&entries, 1, Duration::days(1)).unwrap()
}

fn server(
    s: &Setup,
    crls: Vec<CertificateRevocationListDer<'static>>,
    auth: ClientAuth,
) -> Arc<ServerConfig> {
    server_config(
        &s.identity,
        &[s.ca.ca_certificate_der().clone()],
        crls,
        auth,
    )
    .unwrap()
}

fn client(s: &Setup, dev: Option<&(String, IssuedCertificate)>) -> Arc<ClientConfig> {
    match dev {
        Some((key, cert)) => client_config(
            s.ca.ca_certificate_pem(),
            Some(&cert.certificate_pem),
            Some(key),
        ),
        None => client_config(s.ca.ca_certificate_pem(), None, None),
    }
    .unwrap()
}

#[tokio::test]
async fn mutual_tls_accepts_valid_device_certificate() {
    let s = setup();
    let good = device(&s.ca, IMEI);
    let other = device(&s.ca, "490154203237518");
    // The CRL revokes another device; ours is issued by the same CA and not listed.
    let crl = crl_revoking(&s.ca, &[&other.1.serial]);
    let (srv, cli) = handshake(
        server(&s, vec![crl.der], ClientAuth::Required),
        client(&s, Some(&good)),
    )
    .await;
    assert_eq!(srv.unwrap(), Some(IMEI.to_string()));
    cli.unwrap();
}

#[tokio::test]
async fn mutual_tls_rejects_revoked_device_certificate() {
    let s = setup();
    let revoked = device(&s.ca, IMEI);
    let crl = crl_revoking(&s.ca, &[&revoked.1.serial]);
    let (srv, cli) = handshake(
        server(&s, vec![crl.der], ClientAuth::Required),
        client(&s, Some(&revoked)),
    )
    .await;
    let err = srv.unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(&TlsError::InvalidCertificate(CertificateError::Revoked)),
        "{err:?}"
    );
    assert!(cli.is_err());
}

#[tokio::test]
async fn mutual_tls_rejects_missing_client_certificate() {
    let s = setup();
    let crl = crl_revoking(&s.ca, &[]);
    let (srv, cli) = handshake(
        server(&s, vec![crl.der], ClientAuth::Required),
        client(&s, None),
    )
    .await;
    let err = srv.unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(&TlsError::NoCertificatesPresented),
        "{err:?}"
    );
    assert!(cli.is_err());
}

#[tokio::test]
async fn mutual_tls_rejects_certificate_from_another_ca() {
    let s = setup();
    let (_tmp2, other_ca) = crate::common::other_ca();
    let foreign = device(&other_ca, IMEI);
    let crl = crl_revoking(&s.ca, &[]);
    let (srv, cli) = handshake(
        server(&s, vec![crl.der.clone()], ClientAuth::Required),
        client(&s, Some(&foreign)),
    )
    .await;
    let err = srv.unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(&TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer
        )),
        "{err:?}"
    );
    assert!(cli.is_err());

    // Another CA with the very same name (e.g. another Callhome installation with the
    // default CA name): webpki matches the issuer by name, then the signature fails.
    let (_tmp3, twin_ca) = new_ca();
    let twin = device(&twin_ca, IMEI);
    let (srv, cli) = handshake(
        server(&s, vec![crl.der], ClientAuth::Required),
        client(&s, Some(&twin)),
    )
    .await;
    let err = srv.unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(&TlsError::InvalidCertificate(
            CertificateError::BadSignature
        )),
        "{err:?}"
    );
    assert!(cli.is_err());
}

#[tokio::test]
async fn optional_client_auth_allows_anonymous_but_checks_presented_certificates() {
    let s = setup();
    let revoked = device(&s.ca, IMEI);
    let good = device(&s.ca, "490154203237518");
    let crl = crl_revoking(&s.ca, &[&revoked.1.serial]);
    let cfg = server(&s, vec![crl.der], ClientAuth::Optional);

    let (srv, cli) = handshake(cfg.clone(), client(&s, None)).await;
    assert_eq!(srv.unwrap(), None);
    cli.unwrap();

    let (srv, _) = handshake(cfg.clone(), client(&s, Some(&good))).await;
    assert_eq!(srv.unwrap(), Some("490154203237518".to_string()));

    let (srv, _) = handshake(cfg, client(&s, Some(&revoked))).await;
    let err = srv.unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(&TlsError::InvalidCertificate(CertificateError::Revoked))
    );
}

#[tokio::test]
async fn no_client_auth_ignores_client_certificates() {
    let s = setup();
    let good = device(&s.ca, IMEI);
    let cfg = server(&s, vec![], ClientAuth::None);
    let (srv, cli) = handshake(cfg.clone(), client(&s, None)).await;
    assert_eq!(srv.unwrap(), None);
    cli.unwrap();
    // A client configured with a certificate is not asked for it.
    let (srv, cli) = handshake(cfg, client(&s, Some(&good))).await;
    assert_eq!(srv.unwrap(), None);
    cli.unwrap();
}

#[tokio::test]
async fn shared_config_swap_applies_a_new_crl() {
    let s = setup();
    let dev = device(&s.ca, IMEI);
    let shared = SharedServerConfig::new(server(
        &s,
        vec![crl_revoking(&s.ca, &[]).der],
        ClientAuth::Required,
    ));

    let (srv, _) = handshake(shared.load(), client(&s, Some(&dev))).await;
    assert_eq!(srv.unwrap(), Some(IMEI.to_string()));

    shared.store(server(
        &s,
        vec![crl_revoking(&s.ca, &[&dev.1.serial]).der],
        ClientAuth::Required,
    ));
    let (srv, _) = handshake(shared.load(), client(&s, Some(&dev))).await;
    let err = srv.unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(&TlsError::InvalidCertificate(CertificateError::Revoked))
    );
}

#[tokio::test]
async fn client_rejects_server_from_another_ca() {
    let s = setup();
    let (_tmp2, other_ca) = crate::common::other_ca();
    let cfg = server(&s, vec![], ClientAuth::None);
    let untrusting = client_config(other_ca.ca_certificate_pem(), None, None).unwrap();
    let (_, cli) = handshake(cfg, untrusting).await;
    let err = cli.unwrap_err();
    assert_eq!(
        tls_error(&err),
        Some(&TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer
        )),
        "{err:?}"
    );
}

#[tokio::test]
async fn rsa_device_key_made_by_openssl_completes_mutual_tls() {
    if !openssl_available() {
        eprintln!("/usr/bin/openssl not present; skipping the RSA handshake");
        return;
    }
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("/usr/bin/openssl")
        .args([
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj",
        ])
        .arg(format!("/CN={IMEI}"))
        .arg("-keyout")
        .arg(tmp.path().join("key.pem"))
        .arg("-out")
        .arg(tmp.path().join("req.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = std::fs::read_to_string(tmp.path().join("key.pem")).unwrap();
    let csr = std::fs::read_to_string(tmp.path().join("req.pem")).unwrap();
    let cert = s.ca.sign_csr(&csr, IMEI, None).unwrap();
    let dev = (key, cert);
    let crl = crl_revoking(&s.ca, &[]);
    let (srv, cli) = handshake(
        server(&s, vec![crl.der], ClientAuth::Required),
        client(&s, Some(&dev)),
    )
    .await;
    assert_eq!(srv.unwrap(), Some(IMEI.to_string()));
    cli.unwrap();
}

#[test]
fn config_builders_reject_bad_input() {
    let s = setup();
    let (key, cert) = device(&s.ca, IMEI);
    let ca_pem = s.ca.ca_certificate_pem();
    assert!(matches!(
        client_config(ca_pem, Some(&cert.certificate_pem), None),
        Err(CaError::InvalidInput(_))
    ));
    assert!(matches!(
        client_config(ca_pem, None, Some(&key)),
        Err(CaError::InvalidInput(_))
    ));
    assert!(matches!(
        client_config("junk", None, None),
        Err(CaError::InvalidCertificate(_))
    ));
    assert!(client_config(ca_pem, Some(&cert.certificate_pem), Some("junk")).is_err());
    // A key that does not match the certificate.
    let (other_key, _) = generate_key_and_csr(IMEI).unwrap();
    assert!(client_config(ca_pem, Some(&cert.certificate_pem), Some(&other_key)).is_err());
    // Client auth without any root cannot be built.
    let err = server_config(&s.identity, &[], vec![], ClientAuth::Required).unwrap_err();
    assert!(matches!(err, CaError::Tls(_)), "{err:?}");
    // A garbage CRL is refused when the config is built, not at handshake time.
    let err = server_config(
        &s.identity,
        &[s.ca.ca_certificate_der().clone()],
        vec![CertificateRevocationListDer::from(vec![0x30, 0x00])],
        ClientAuth::Required,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::Tls(_)), "{err:?}");
}
