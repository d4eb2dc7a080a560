//! The CA hierarchy: root and issuing CA, CRL distribution points, importing a
//! utility's issuing CA, rollover with both CAs trusted, and retiring the old one.

use std::fs;

use callhome_ca::{
    Authority, CA_CERT_FILE, CA_KEY_FILE, CaError, CaParams, CertificateDer,
    CertificateRevocationListDer, PENDING_KEY_FILE, RETIRED_DIR, ROOT_KEY_FILE, RevocationReason,
    RevokedEntry, generate_key_and_csr,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};

use crate::common::{IMEI, ca_dir, new_ca, pem_to_der, with_cert};

/// Verifies a device certificate (sent alone, as modems do) the way our listeners do:
/// anchored at the issuing CAs, with every issuing CA's CRL.
fn listener_verify(
    ca: &Authority,
    crls: Vec<CertificateRevocationListDer<'static>>,
    cert_pem: &str,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    for anchor in ca.client_trust_anchors() {
        roots.add(anchor).unwrap();
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(crls)
    .only_check_end_entity_revocation()
    .build()
    .unwrap();
    verifier
        .verify_client_cert(
            &CertificateDer::from(pem_to_der(cert_pem)),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

fn device(ca: &Authority, cn: &str) -> callhome_ca::IssuedCertificate {
    let (_key, csr) = generate_key_and_csr(cn).unwrap();
    ca.sign_csr(&csr, cn, None).unwrap()
}

fn revoking(serial: &str) -> Vec<RevokedEntry> {
    vec![RevokedEntry {
        serial: serial.to_owned(),
        revoked_at: OffsetDateTime::now_utc(),
        reason: Some(RevocationReason::KeyCompromise),
    }]
}

/// A utility's PKI made with rcgen: a root and an issuing CA (path length 0) under it.
struct UtilityPki {
    root_pem: String,
    root: Issuer<'static, KeyPair>,
    issuing_pem: String,
    issuing_key_pem: String,
}

fn ca_cert_params(cn: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    p
}

fn utility_pki(name: &str) -> UtilityPki {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_cert_params(&format!("{name} Root"), 1);
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);
    let issuing_key = KeyPair::generate().unwrap();
    let issuing = ca_cert_params(&format!("{name} Issuing"), 0)
        .signed_by(&issuing_key, &root)
        .unwrap();
    UtilityPki {
        root_pem: root_cert.pem(),
        root,
        issuing_pem: issuing.pem(),
        issuing_key_pem: issuing_key.serialize_pem(),
    }
}

#[test]
fn a_new_installation_is_a_root_and_an_issuing_ca() {
    let (tmp, ca) = new_ca();
    let chain = ca.chain_der();
    assert_eq!(chain.len(), 2, "issuing CA then root");
    assert_eq!(&chain[0], ca.ca_certificate_der());
    assert_eq!(pem_to_der(&ca.root_pem()), chain[1].to_vec());
    with_cert(&ca.root_pem(), |root| {
        root.verify_signature(None)
            .expect("the root is self-signed");
        let bc = root.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(1));
        with_cert(ca.ca_certificate_pem(), |issuing| {
            assert_eq!(issuing.issuer().as_raw(), root.subject().as_raw());
            issuing.verify_signature(Some(root.public_key())).unwrap();
            let bc = issuing.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca && bc.path_len_constraint == Some(0));
        });
    });
    // Devices are signed by the issuing CA and verify as our listeners verify them.
    let dev = device(&ca, IMEI);
    crate::common::assert_signed_by(&ca, &dev.certificate_pem);
    let crls = ca.build_crls(&[], 1, Duration::days(1)).unwrap();
    listener_verify(&ca, crls.ders(), &dev.certificate_pem).unwrap();
    // Modems and readers trust the root; clients verify devices at the issuing CA only.
    assert_eq!(ca.trust_bundle_pem(), ca.root_pem());
    assert_eq!(
        ca.client_trust_anchors(),
        vec![ca.ca_certificate_der().clone()]
    );

    // The root key is only needed to make a new issuing CA: taken offline, the CA runs.
    let dir = ca_dir(&tmp);
    fs::remove_file(dir.join(ROOT_KEY_FILE)).unwrap();
    let again = Authority::load(&dir, &CaParams::default()).unwrap();
    assert_eq!(again.chain_pem(), ca.chain_pem());
    let dev2 = device(&again, "490154203237518");
    listener_verify(&again, crls.ders(), &dev2.certificate_pem).unwrap();
}

#[test]
fn device_certificates_name_their_crl_and_the_published_crl_names_itself() {
    let (_tmp, ca) = new_ca();
    let before = device(&ca, IMEI);
    assert!(ca.set_crl_base_url("https://dev.example.net:8443/crl/"));
    assert!(!ca.set_crl_base_url("https://elsewhere/crl"), "set once");
    let key_id = ca.issuing_cas()[0].key_id.clone();
    let url = format!("https://dev.example.net:8443/crl/{key_id}.crl");
    assert_eq!(ca.crl_url(&key_id).as_deref(), Some(url.as_str()));

    let dev = device(&ca, "490154203237518");
    let cdp_uris = |pem: &str| {
        with_cert(pem, |c| {
            c.iter_extensions()
                .filter_map(|e| match e.parsed_extension() {
                    ParsedExtension::CRLDistributionPoints(points) => Some(
                        points
                            .points
                            .iter()
                            .filter_map(|p| match &p.distribution_point {
                                Some(DistributionPointName::FullName(names)) => Some(names),
                                _ => None,
                            })
                            .flatten()
                            .filter_map(|n| match n {
                                GeneralName::URI(u) => Some(u.to_string()),
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .flatten()
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(cdp_uris(&dev.certificate_pem), vec![url.clone()]);
    assert!(cdp_uris(&before.certificate_pem).is_empty());

    let crls = ca
        .build_crls(&revoking(&dev.serial), 7, Duration::days(1))
        .unwrap();
    let crl = &crls.current;
    assert_eq!(crl.issuer_key_id, key_id);
    let published = crl
        .published_der
        .clone()
        .expect("a published CRL once the URL is set");
    let idp = x509_parser::revocation_list::CertificateRevocationList::from_der_helper(&published);
    assert!(
        idp.iter().any(|i| i.contains(&url)),
        "the published CRL names {url}: {idp:?}"
    );
    // Both encodings revoke the device and accept the others, old and new.
    for der in [crl.der.clone(), published] {
        let err = listener_verify(&ca, vec![der.clone()], &dev.certificate_pem).unwrap_err();
        assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
        listener_verify(&ca, vec![der.clone()], &before.certificate_pem).unwrap();
        let other = device(&ca, "352099001761481");
        listener_verify(&ca, vec![der], &other.certificate_pem).unwrap();
    }
}

/// The distribution point URIs an x509-parser CRL names, as text (test helper).
trait IdpText {
    fn from_der_helper(der: &[u8]) -> Vec<String>;
}

impl IdpText for x509_parser::revocation_list::CertificateRevocationList<'_> {
    fn from_der_helper(der: &[u8]) -> Vec<String> {
        use x509_parser::prelude::FromDer;
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
            .expect("CRL DER");
        crl.extensions()
            .iter()
            .filter_map(|e| match e.parsed_extension() {
                ParsedExtension::IssuingDistributionPoint(idp) => Some(format!("{idp:?}")),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn an_imported_issuing_ca_takes_over_and_the_old_one_stays_trusted_until_removed() {
    let (tmp, ca) = new_ca();
    let dir = ca_dir(&tmp);
    let old_dev = device(&ca, IMEI);
    let old_fp = ca.fingerprint_sha256();
    let utility = utility_pki("Utility");

    let out = Authority::import_issuing_ca(
        &dir,
        &utility.issuing_pem,
        Some(&utility.issuing_key_pem),
        Some(&utility.root_pem),
    )
    .unwrap();
    assert_eq!(out.retired_fingerprint_sha256, old_fp);
    assert!(out.subject.contains("Utility Issuing"), "{out:?}");
    assert!(out.root_subject.contains("Utility Root"), "{out:?}");

    let ca = Authority::load(&dir, &CaParams::default()).unwrap();
    let cas = ca.issuing_cas();
    assert_eq!(cas.len(), 2);
    assert!(cas[0].current && !cas[1].current);
    assert_eq!(cas[1].fingerprint_sha256, old_fp);
    assert_eq!(pem_to_der(&ca.root_pem()), pem_to_der(&utility.root_pem));
    // Both roots are in the trust bundle during the rollover, the new one first.
    let bundle = ca.trust_bundle_pem();
    assert_eq!(pem::parse_many(&bundle).unwrap().len(), 2);
    assert!(bundle.starts_with(&utility.root_pem));

    let new_dev = device(&ca, "490154203237518");
    with_cert(&new_dev.certificate_pem, |c| {
        assert!(c.issuer().to_string().contains("Utility Issuing"));
    });
    // Old and new devices both connect; each CA's CRL revokes its own.
    let crls = ca.build_crls(&[], 2, Duration::days(1)).unwrap();
    assert_eq!(crls.retired.len(), 1);
    listener_verify(&ca, crls.ders(), &old_dev.certificate_pem).unwrap();
    listener_verify(&ca, crls.ders(), &new_dev.certificate_pem).unwrap();
    let crls = ca
        .build_crls(&revoking(&old_dev.serial), 3, Duration::days(1))
        .unwrap();
    let err = listener_verify(&ca, crls.ders(), &old_dev.certificate_pem).unwrap_err();
    assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
    listener_verify(&ca, crls.ders(), &new_dev.certificate_pem).unwrap();

    // Retiring the old CA for good: its devices are refused, new ones still connect.
    let err = Authority::remove_retired(&dir, "zz").unwrap_err();
    assert!(err.to_string().contains("fingerprint"), "{err}");
    let full = Authority::remove_retired(&dir, &old_fp[..12]).unwrap();
    assert_eq!(full, old_fp);
    let ca = Authority::load(&dir, &CaParams::default()).unwrap();
    assert_eq!(ca.issuing_cas().len(), 1);
    let crls = ca.build_crls(&[], 4, Duration::days(1)).unwrap();
    let err = listener_verify(&ca, crls.ders(), &old_dev.certificate_pem).unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    listener_verify(&ca, crls.ders(), &new_dev.certificate_pem).unwrap();
    assert!(dir.join("archive").read_dir().unwrap().count() == 1);
}

#[test]
fn a_csr_for_the_utility_root_to_sign_then_import_without_a_key() {
    let (tmp, _ca) = new_ca();
    let dir = ca_dir(&tmp);
    let csr =
        Authority::issuing_ca_csr(&dir, "Utility Callhome Issuing CA", Some("Utility")).unwrap();
    assert!(dir.join(PENDING_KEY_FILE).exists());
    // The utility's root signs it as a CA.
    let utility = utility_pki("Utility");
    let mut req = CertificateSigningRequestParams::from_pem(&csr).unwrap();
    req.params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    req.params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    req.params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    req.params.not_after = OffsetDateTime::now_utc() + Duration::days(1000);
    let signed = req.signed_by(&utility.root).unwrap().pem();

    let out = Authority::import_issuing_ca(&dir, &signed, None, Some(&utility.root_pem)).unwrap();
    assert!(out.subject.contains("Utility Callhome Issuing CA"));
    assert!(
        !dir.join(PENDING_KEY_FILE).exists(),
        "the pending key became the CA key"
    );
    let ca = Authority::load(&dir, &CaParams::default()).unwrap();
    let dev = device(&ca, IMEI);
    let crls = ca.build_crls(&[], 1, Duration::days(1)).unwrap();
    listener_verify(&ca, crls.ders(), &dev.certificate_pem).unwrap();
}

#[test]
fn bad_imports_are_refused_by_name_and_change_nothing() {
    let (tmp, ca) = new_ca();
    let dir = ca_dir(&tmp);
    let before = fs::read(dir.join(CA_CERT_FILE)).unwrap();
    let utility = utility_pki("Utility");
    let other = utility_pki("Other");
    let leaf_der = pem_to_der(&device(&ca, IMEI).certificate_pem);
    let leaf_pem = crate::common::to_pem("CERTIFICATE", &leaf_der);

    let cases: Vec<(&str, String, Option<String>, Option<String>)> = vec![
        (
            "does not match",
            utility.issuing_pem.clone(),
            Some(other.issuing_key_pem.clone()),
            Some(utility.root_pem.clone()),
        ),
        (
            "is not the issuer",
            utility.issuing_pem.clone(),
            Some(utility.issuing_key_pem.clone()),
            Some(other.root_pem.clone()),
        ),
        (
            "not self-signed",
            utility.issuing_pem.clone(),
            Some(utility.issuing_key_pem.clone()),
            None,
        ),
        (
            "not a CA certificate",
            leaf_pem,
            Some(utility.issuing_key_pem.clone()),
            None,
        ),
        (
            "no private key",
            utility.issuing_pem.clone(),
            None,
            Some(utility.root_pem.clone()),
        ),
        (
            "PEM",
            "garbage".into(),
            Some(utility.issuing_key_pem.clone()),
            None,
        ),
    ];
    for (needle, cert, key, chain) in cases {
        let err = Authority::import_issuing_ca(&dir, &cert, key.as_deref(), chain.as_deref())
            .expect_err(needle);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(!matches!(err, CaError::Io { .. }));
    }
    // The CA itself, imported again, is refused too.
    let key = fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
    let err = Authority::import_issuing_ca(
        &dir,
        ca.ca_certificate_pem(),
        Some(&key),
        Some(&ca.root_pem()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("already"), "{err}");
    assert_eq!(fs::read(dir.join(CA_CERT_FILE)).unwrap(), before);
    assert!(!dir.join(RETIRED_DIR).exists());
}
