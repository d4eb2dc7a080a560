//! Signing device CSRs: what is taken from the request, what is not, and rejections.

use std::collections::BTreeSet;
use std::process::Command;

use callhome_ca::{CaError, CaParams, generate_key_and_csr, inspect_certificate};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;

use crate::common::{
    IMEI, assert_signed_by, fixture, new_ca, new_ca_with, openssl_available, pem_to_der,
    webpki_verify, with_cert,
};

/// The extension OIDs a device certificate carries, and nothing else:
/// basicConstraints, keyUsage, extKeyUsage, subjectKeyIdentifier, authorityKeyIdentifier.
const DEVICE_EXTENSIONS: [&str; 5] = [
    "2.5.29.14",
    "2.5.29.15",
    "2.5.29.19",
    "2.5.29.35",
    "2.5.29.37",
];

/// Checks every CA-side property of a device certificate for `cn`.
fn assert_device_certificate(ca: &callhome_ca::Authority, pem: &str, cn: &str) {
    assert_signed_by(ca, pem);
    webpki_verify(ca, vec![], pem).expect("webpki accepts the device certificate as a client");
    let ca_ski = with_cert(ca.ca_certificate_pem(), |c| {
        c.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .expect("CA SKI")
    });
    with_cert(pem, |cert| {
        let cns: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cns, vec![cn.to_string()]);
        let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth && !eku.code_signing && !eku.any && eku.other.is_empty());
        let ku = cert.key_usage().unwrap().expect("key usage").value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign() && !ku.crl_sign());
        let bc = cert
            .basic_constraints()
            .unwrap()
            .expect("basic constraints")
            .value;
        assert!(!bc.ca);
        assert!(!cert.is_ca());
        assert!(cert.subject_alternative_name().unwrap().is_none());
        let oids: BTreeSet<String> = cert
            .extensions()
            .iter()
            .map(|e| e.oid.to_id_string())
            .collect();
        let expected: BTreeSet<String> = DEVICE_EXTENSIONS.iter().map(|s| s.to_string()).collect();
        assert_eq!(oids, expected);
        let aki = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .expect("AKI");
        assert_eq!(aki, ca_ski);
        let serial = cert.raw_serial();
        assert_eq!(serial.len(), 16, "16-byte serial");
        assert!(
            serial[0] != 0 && serial[0] & 0x80 == 0,
            "positive, no padding"
        );
    });
}

#[test]
fn signs_p256_csr_for_requested_imei_with_requested_validity() {
    let (_tmp, ca) = new_ca();
    let (_, csr) = generate_key_and_csr(IMEI).unwrap();
    let before = OffsetDateTime::now_utc();
    let issued = ca.sign_csr(&csr, IMEI, Some(30)).unwrap();
    assert_device_certificate(&ca, &issued.certificate_pem, IMEI);

    assert_eq!(issued.common_name, IMEI);
    assert_eq!(
        issued.not_after - issued.not_before,
        Duration::days(30) + Duration::minutes(5)
    );
    assert!((issued.not_before - (before - Duration::minutes(5))).abs() < Duration::seconds(5));
    assert_eq!(issued.serial.len(), 32);
    assert!(
        issued
            .serial
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
    );
    assert!(!issued.serial.starts_with("00"));

    let info = inspect_certificate(&issued.certificate_pem).unwrap();
    assert_eq!(info.serial, issued.serial);
    assert_eq!(
        (info.not_before, info.not_after),
        (issued.not_before, issued.not_after)
    );
    assert_eq!(info.fingerprint_sha256, issued.fingerprint_sha256);

    // The certificate carries the CSR's public key.
    let csr_spki = {
        let der = pem_to_der(&csr);
        let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&der).unwrap();
        req.certification_request_info.subject_pki.raw.to_vec()
    };
    with_cert(&issued.certificate_pem, |c| {
        assert_eq!(c.public_key().raw, csr_spki.as_slice())
    });

    // Two signings of the same CSR give distinct serials.
    let second = ca.sign_csr(&csr, IMEI, Some(30)).unwrap();
    assert_ne!(second.serial, issued.serial);
}

#[test]
fn default_validity_is_device_validity_days() {
    let params = CaParams {
        device_validity_days: 90,
        ..CaParams::default()
    };
    let (_tmp, ca) = new_ca_with(&params);
    let (_, csr) = generate_key_and_csr(IMEI).unwrap();
    let issued = ca.sign_csr(&csr, IMEI, None).unwrap();
    assert_eq!(
        issued.not_after - issued.not_before,
        Duration::days(90) + Duration::minutes(5)
    );
}

#[test]
fn validity_never_exceeds_the_ca() {
    let params = CaParams {
        validity_days: 10,
        ..CaParams::default()
    };
    let (_tmp, ca) = new_ca_with(&params);
    let (_, csr) = generate_key_and_csr(IMEI).unwrap();
    let issued = ca.sign_csr(&csr, IMEI, Some(30)).unwrap();
    assert_eq!(issued.not_after, ca.not_after());
}

#[test]
fn signs_rsa_csr_from_fixture() {
    let (_tmp, ca) = new_ca();
    let issued = ca
        .sign_csr(&fixture("rsa2048.csr.pem"), IMEI, None)
        .unwrap();
    assert_device_certificate(&ca, &issued.certificate_pem, IMEI);
    with_cert(&issued.certificate_pem, |c| {
        assert_eq!(
            c.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION
        );
    });
}

#[test]
fn signs_rsa_csr_made_by_openssl_now() {
    if !openssl_available() {
        eprintln!("/usr/bin/openssl not present; covered by signs_rsa_csr_from_fixture");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let csr_path = tmp.path().join("req.pem");
    let status = Command::new("/usr/bin/openssl")
        .args([
            "req", "-new", "-newkey", "rsa:3072", "-nodes", "-sha256", "-subj",
        ])
        .arg(format!("/CN={IMEI}"))
        .arg("-keyout")
        .arg(tmp.path().join("key.pem"))
        .arg("-out")
        .arg(&csr_path)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (_tmp, ca) = new_ca();
    let issued = ca
        .sign_csr(&std::fs::read_to_string(&csr_path).unwrap(), IMEI, None)
        .unwrap();
    assert_device_certificate(&ca, &issued.certificate_pem, IMEI);
}

#[test]
fn signs_p384_and_ed25519_csrs() {
    let (_tmp, ca) = new_ca();
    for name in ["p384.csr.pem", "ed25519.csr.pem"] {
        let issued = ca
            .sign_csr(&fixture(name), IMEI, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_device_certificate(&ca, &issued.certificate_pem, IMEI);
    }
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, IMEI);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca.sign_csr(&csr, IMEI, None).unwrap();
        assert_device_certificate(&ca, &issued.certificate_pem, IMEI);
    }
}

#[test]
fn hostile_csr_contents_are_not_copied() {
    // The CSR asks for CA:TRUE, keyCertSign, serverAuth + codeSigning, SANs,
    // O=Evil Corp / OU=Takeover, a subject key identifier and a comment.
    let params = CaParams {
        organization: Some("Callhome Test".into()),
        ..CaParams::default()
    };
    let (_tmp, ca) = new_ca_with(&params);
    let issued = ca
        .sign_csr(&fixture("hostile-p256.csr.pem"), IMEI, None)
        .unwrap();
    assert_device_certificate(&ca, &issued.certificate_pem, IMEI);
    with_cert(&issued.certificate_pem, |cert| {
        let orgs: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            orgs,
            vec!["Callhome Test".to_string()],
            "the CA's O, not the CSR's"
        );
        assert_eq!(cert.subject().iter_organizational_unit().count(), 0);
        assert_eq!(cert.subject().iter_attributes().count(), 2, "CN and O only");
    });

    // Same with rcgen-built requests asking for CA / server auth.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, IMEI);
    p.distinguished_name
        .push(DnType::OrganizationName, "Evil Corp");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let issued = ca.sign_csr(&csr, IMEI, None).unwrap();
    assert_device_certificate(&ca, &issued.certificate_pem, IMEI);
}

#[test]
fn csr_without_common_name_gets_the_requested_one() {
    let (_tmp, ca) = new_ca();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let issued = ca.sign_csr(&csr, IMEI, None).unwrap();
    assert_device_certificate(&ca, &issued.certificate_pem, IMEI);
}

#[test]
fn common_name_mismatch_is_rejected() {
    let (_tmp, ca) = new_ca();
    let (_, csr) = generate_key_and_csr("111111111111111").unwrap();
    let err = ca.sign_csr(&csr, IMEI, None).unwrap_err();
    match &err {
        CaError::SubjectMismatch { expected, found } => {
            assert_eq!(expected, IMEI);
            assert_eq!(found, "111111111111111");
        }
        other => panic!("expected SubjectMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("111111111111111"));

    // Case and padding count: an exact match is required.
    let (_, csr) = generate_key_and_csr(&format!("{IMEI} ")).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, IMEI, None),
        Err(CaError::SubjectMismatch { .. })
    ));
}

#[test]
fn bad_arguments_are_rejected() {
    let (_tmp, ca) = new_ca();
    let (_, csr) = generate_key_and_csr(IMEI).unwrap();
    for days in [0, 1_000_000] {
        let err = ca.sign_csr(&csr, IMEI, Some(days)).unwrap_err();
        assert!(matches!(err, CaError::InvalidInput(_)), "{err:?}");
    }
    for cn in ["", "a\nb", &"9".repeat(65)] {
        let err = ca.sign_csr(&csr, cn, None).unwrap_err();
        assert!(matches!(err, CaError::InvalidInput(_)), "{err:?}");
    }
}

fn expect_invalid(ca: &callhome_ca::Authority, input: &str, needle: &str) {
    match ca.sign_csr(input, IMEI, None) {
        Err(CaError::InvalidCsr(msg)) => {
            assert!(
                msg.contains(needle),
                "message {msg:?} should mention {needle:?}"
            );
        }
        other => panic!("expected InvalidCsr({needle}), got {other:?}"),
    }
}

fn reencode(der: &[u8], label: &str) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

#[test]
fn garbage_inputs_are_invalid_csr_errors() {
    let (_tmp, ca) = new_ca();
    let (key_pem, csr) = generate_key_and_csr(IMEI).unwrap();
    let der = pem_to_der(&csr);

    expect_invalid(&ca, "", "empty");
    expect_invalid(&ca, " \n\t ", "empty");
    expect_invalid(&ca, "hello world", "not a PEM CERTIFICATE REQUEST");
    expect_invalid(
        &ca,
        "\u{0}\u{1}\u{7f}\u{fffd}garbage",
        "not a PEM CERTIFICATE REQUEST",
    );
    expect_invalid(
        &ca,
        ca.ca_certificate_pem(),
        "not a PEM CERTIFICATE REQUEST (found a PEM CERTIFICATE)",
    );
    expect_invalid(&ca, &key_pem, "found a PEM PRIVATE KEY");
    expect_invalid(&ca, &format!("{csr}{csr}"), "exactly one PEM block");
    expect_invalid(
        &ca,
        &format!("junk before\n{csr}"),
        "not a PEM CERTIFICATE REQUEST",
    );
    expect_invalid(
        &ca,
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----",
        "malformed PEM",
    );
    expect_invalid(&ca, &reencode(b"", "CERTIFICATE REQUEST"), "not valid DER");
    expect_invalid(
        &ca,
        &reencode(&[0x30, 0x03, 0x02, 0x01, 0x00], "CERTIFICATE REQUEST"),
        "not valid DER",
    );
    expect_invalid(
        &ca,
        &reencode(&der[..der.len() / 2], "CERTIFICATE REQUEST"),
        "not valid DER",
    );
    // A certificate's DER under the CSR label.
    expect_invalid(
        &ca,
        &reencode(ca.ca_certificate_der(), "CERTIFICATE REQUEST"),
        "not valid DER",
    );

    let mut trailing = der.clone();
    trailing.extend_from_slice(&[0, 0]);
    expect_invalid(
        &ca,
        &reencode(&trailing, "CERTIFICATE REQUEST"),
        "trailing data",
    );

    // Corrupted signature (last byte of the signature value).
    let mut bad_sig = der.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    expect_invalid(
        &ca,
        &reencode(&bad_sig, "CERTIFICATE REQUEST"),
        "CSR signature does not verify",
    );

    // Corrupted body: change one digit of the subject CN; the signature no longer matches.
    let pos = der
        .windows(IMEI.len())
        .position(|w| w == IMEI.as_bytes())
        .unwrap();
    let mut bad_body = der.clone();
    bad_body[pos] = b'9';
    expect_invalid(
        &ca,
        &reencode(&bad_body, "CERTIFICATE REQUEST"),
        "CSR signature does not verify",
    );

    // Oversize: a valid CSR padded past 16 KiB.
    let padded = format!("{csr}{}", " ".repeat(16 * 1024));
    expect_invalid(&ca, &padded, "limit of 16384 bytes");
    expect_invalid(&ca, &"A".repeat(1_000_000), "limit");

    // Weak RSA key.
    expect_invalid(&ca, &fixture("rsa1024.csr.pem"), "1024 bits is too small");

    // The valid CSR itself still works, with surrounding whitespace.
    assert!(
        ca.sign_csr(&format!("\r\n  {csr}  \r\n"), IMEI, None)
            .is_ok()
    );
}
