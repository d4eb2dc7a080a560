//! CRL building, checked with x509-parser and with webpki (as rustls uses it).

use callhome_ca::{CaError, RevocationReason, RevokedEntry, generate_key_and_csr};
use rustls::{CertificateError, Error as TlsError};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::common::{IMEI, new_ca, webpki_verify, with_cert};

fn device_cert(ca: &callhome_ca::Authority) -> callhome_ca::IssuedCertificate {
    let (_, csr) = generate_key_and_csr(IMEI).unwrap();
    ca.sign_csr(&csr, IMEI, None).unwrap()
}

#[test]
fn empty_crl_is_valid_and_accepted_by_webpki() {
    let (_tmp, ca) = new_ca();
    let crl = ca.build_crl(&[], 1, Duration::days(7)).unwrap();
    assert!(crl.pem.starts_with("-----BEGIN X509 CRL-----"));
    assert_eq!(crl.next_update - crl.this_update, Duration::days(7));
    assert_eq!(crl.crl_number, 1);

    let (rest, parsed) = CertificateRevocationList::from_der(&crl.der).unwrap();
    assert!(rest.is_empty());
    assert_eq!(parsed.iter_revoked_certificates().count(), 0);
    assert_eq!(
        parsed.crl_number().map(|n| n.to_string()),
        Some("1".to_string())
    );
    assert_eq!(parsed.last_update().to_datetime(), crl.this_update);
    assert_eq!(
        parsed.next_update().map(|t| t.to_datetime()),
        Some(crl.next_update)
    );
    with_cert(ca.ca_certificate_pem(), |ca_cert| {
        assert_eq!(parsed.issuer().as_raw(), ca_cert.subject().as_raw());
        parsed
            .verify_signature(ca_cert.public_key())
            .expect("CRL signed by the CA");
    });
    assert_eq!(pem::parse(&crl.pem).unwrap().contents(), crl.der.as_ref());

    // rustls parses it and a valid device certificate passes the revocation check.
    let cert = device_cert(&ca);
    webpki_verify(&ca, vec![crl.der.clone()], &cert.certificate_pem).unwrap();
}

#[test]
fn revoked_serial_is_listed_and_rejected_others_pass() {
    let (_tmp, ca) = new_ca();
    let revoked = device_cert(&ca);
    let kept = device_cert(&ca);
    let when = OffsetDateTime::now_utc() - Duration::hours(2);
    let entries = vec![
        RevokedEntry {
            serial: revoked.serial.clone(),
            revoked_at: when,
            reason: Some(RevocationReason::KeyCompromise),
        },
        // Lowercase with colons is the same serial: listed once.
        RevokedEntry {
            serial: revoked
                .serial
                .to_lowercase()
                .as_bytes()
                .chunks(2)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(":"),
            revoked_at: when,
            reason: None,
        },
        RevokedEntry {
            serial: "0A1B2C".into(),
            revoked_at: when,
            reason: Some(RevocationReason::Superseded),
        },
        RevokedEntry {
            serial: "7F".into(),
            revoked_at: when,
            reason: Some(RevocationReason::Unspecified),
        },
    ];
    let crl = ca.build_crl(&entries, 42, Duration::hours(1)).unwrap();

    let (_, parsed) = CertificateRevocationList::from_der(&crl.der).unwrap();
    let listed: Vec<(String, Option<u8>, OffsetDateTime)> = parsed
        .iter_revoked_certificates()
        .map(|r| {
            (
                callhome_ca_serial(r.raw_serial()),
                r.reason_code().map(|(_, rc)| rc.0),
                r.revocation_date.to_datetime(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[0].0, revoked.serial);
    assert_eq!(listed[0].1, Some(1), "keyCompromise");
    assert_eq!(
        listed[0].2,
        when - Duration::nanoseconds(i64::from(when.nanosecond()))
    );
    assert_eq!(listed[1].0, "0A1B2C");
    assert_eq!(listed[1].1, Some(4), "superseded");
    assert_eq!(listed[2].0, "7F");
    assert_eq!(
        listed[2].1, None,
        "unspecified is written as no reason code"
    );
    assert_eq!(
        parsed.crl_number().map(|n| n.to_string()),
        Some("42".to_string())
    );

    let crls = vec![crl.der.clone()];
    let err = webpki_verify(&ca, crls.clone(), &revoked.certificate_pem).unwrap_err();
    assert_eq!(err, TlsError::InvalidCertificate(CertificateError::Revoked));
    webpki_verify(&ca, crls.clone(), &kept.certificate_pem).unwrap();
    // A certificate issued after the CRL has a known (good) status.
    let later = device_cert(&ca);
    webpki_verify(&ca, crls, &later.certificate_pem).unwrap();
}

fn callhome_ca_serial(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    hex::encode_upper(&raw[start..])
}

#[test]
fn crl_from_another_ca_does_not_vouch_for_ours() {
    let (_t1, ca) = new_ca();
    let (_t2, other) = crate::common::other_ca();
    let cert = device_cert(&ca);
    let foreign = other.build_crl(&[], 1, Duration::days(1)).unwrap();
    // No CRL from our CA: the status is unknown, which is rejected.
    let err = webpki_verify(&ca, vec![foreign.der], &cert.certificate_pem).unwrap_err();
    assert_eq!(
        err,
        TlsError::InvalidCertificate(CertificateError::UnknownRevocationStatus)
    );
}

#[test]
fn bad_crl_inputs_are_rejected() {
    let (_tmp, ca) = new_ca();
    for d in [Duration::ZERO, Duration::seconds(-5)] {
        assert!(matches!(
            ca.build_crl(&[], 1, d),
            Err(CaError::InvalidInput(_))
        ));
    }
    for serial in ["", "zz", "00", &"AB".repeat(21)] {
        let e = RevokedEntry {
            serial: serial.to_string(),
            revoked_at: OffsetDateTime::now_utc(),
            reason: None,
        };
        let err = ca.build_crl(&[e], 1, Duration::days(1)).unwrap_err();
        assert!(matches!(err, CaError::InvalidInput(_)), "{serial}: {err:?}");
    }
    // crl_number 0 and u64::MAX are both representable.
    ca.build_crl(&[], 0, Duration::days(1)).unwrap();
    ca.build_crl(&[], u64::MAX, Duration::days(1)).unwrap();
}

#[test]
fn revocation_reason_strings() {
    for (s, r) in [
        ("key_compromise", RevocationReason::KeyCompromise),
        ("superseded", RevocationReason::Superseded),
        (
            "cessation_of_operation",
            RevocationReason::CessationOfOperation,
        ),
        ("affiliation_changed", RevocationReason::AffiliationChanged),
        ("unspecified", RevocationReason::Unspecified),
    ] {
        assert_eq!(s.parse::<RevocationReason>().unwrap(), r);
        assert_eq!(r.as_str(), s);
    }
    let err = "lost_it".parse::<RevocationReason>().unwrap_err();
    assert!(matches!(err, CaError::InvalidRevocationReason(ref s) if s == "lost_it"));
    assert!(err.to_string().contains("unknown revocation reason"));
}
