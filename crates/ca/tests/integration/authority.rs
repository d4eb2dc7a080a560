//! Loading and creating the CA on disk.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use callhome_ca::{
    Authority, CA_CERT_FILE, CA_KEY_FILE, CHAIN_FILE, CaError, CaParams, ROOT_CERT_FILE,
    ROOT_KEY_FILE, generate_key_and_csr, inspect_certificate, write_secret_file,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::common::{IMEI, ca_dir, new_ca, new_ca_with, with_cert};

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_then_reload_gives_byte_identical_ca_certificate() {
    let (tmp, ca) = new_ca();
    let dir = ca_dir(&tmp);
    let pem1 = ca.ca_certificate_pem().to_string();
    let fp1 = ca.fingerprint_sha256();
    let key1 = fs::read(dir.join(CA_KEY_FILE)).unwrap();
    drop(ca);

    let again = Authority::load_or_init(&dir, &CaParams::default()).unwrap();
    assert_eq!(again.ca_certificate_pem(), pem1);
    assert_eq!(again.fingerprint_sha256(), fp1);
    assert_eq!(fs::read(dir.join(CA_KEY_FILE)).unwrap(), key1);
    assert_eq!(fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(), pem1);

    // Different creation parameters do not change an existing CA.
    let other_params = CaParams {
        common_name: "Something Else".into(),
        organization: Some("Other".into()),
        ..CaParams::default()
    };
    let third = Authority::load_or_init(&dir, &other_params).unwrap();
    assert_eq!(third.ca_certificate_pem(), pem1);
    let loaded = Authority::load(&dir, &CaParams::default()).unwrap();
    assert_eq!(loaded.ca_certificate_pem(), pem1);

    // A certificate issued after the reload still chains to the same CA.
    let (_, csr) = generate_key_and_csr(IMEI).unwrap();
    let issued = loaded.sign_csr(&csr, IMEI, None).unwrap();
    crate::common::assert_signed_by(&again, &issued.certificate_pem);
}

#[test]
fn ca_files_have_restrictive_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("ca");
    let _ca = Authority::load_or_init(&dir, &CaParams::default()).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
    assert_eq!(mode(&dir.join(ROOT_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(ROOT_CERT_FILE)), 0o644);
    assert_eq!(mode(&dir.join(CHAIN_FILE)), 0o644);
    // No temporary files left behind.
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            CA_CERT_FILE.to_string(),
            CA_KEY_FILE.to_string(),
            CHAIN_FILE.to_string(),
            ROOT_CERT_FILE.to_string(),
            ROOT_KEY_FILE.to_string(),
        ]
    );
}

#[test]
fn loose_key_permissions_are_fixed_on_load() {
    let (tmp, ca) = new_ca();
    let dir = ca_dir(&tmp);
    let key = dir.join(CA_KEY_FILE);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let again = Authority::load_or_init(&dir, &CaParams::default()).unwrap();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(again.ca_certificate_pem(), ca.ca_certificate_pem());
}

#[test]
fn ca_certificate_has_expected_fields() {
    let params = CaParams {
        common_name: "Test Root".into(),
        organization: Some("Callhome Test".into()),
        validity_days: 100,
        ..CaParams::default()
    };
    let before = OffsetDateTime::now_utc();
    let (_tmp, ca) = new_ca_with(&params);
    let info = inspect_certificate(ca.ca_certificate_pem()).unwrap();
    // The issuing CA, named after the root that signed it.
    assert_eq!(info.common_name.as_deref(), Some("Test Root Issuing CA"));
    assert_eq!(info.issuer_cn.as_deref(), Some("Test Root"));
    assert_eq!(info.fingerprint_sha256, ca.fingerprint_sha256());
    assert_eq!(info.fingerprint_sha256.len(), 64);
    assert!(info.not_before <= before - Duration::minutes(59));
    assert!(info.not_before >= before - Duration::minutes(61));
    let validity = info.not_after - OffsetDateTime::now_utc();
    assert!(validity > Duration::days(99) && validity <= Duration::days(100));
    assert_eq!(ca.not_after(), info.not_after);

    with_cert(ca.ca_certificate_pem(), |cert| {
        let org: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap().to_string())
            .collect();
        assert_eq!(org, vec!["Callhome Test".to_string()]);
        let bc = cert
            .basic_constraints()
            .unwrap()
            .expect("basic constraints")
            .value;
        assert!(bc.ca);
        assert!(bc.path_len_constraint.is_none_or(|n| n == 0));
        let ku = cert.key_usage().unwrap().expect("key usage").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert!(!ku.key_encipherment());
        // Signed by the root, positive serial, has a subject key identifier.
        let root_der = pem::parse(ca.root_pem()).unwrap().into_contents();
        let (_, root) = x509_parser::certificate::X509Certificate::from_der(&root_der).unwrap();
        cert.verify_signature(Some(root.public_key())).unwrap();
        assert!(cert.raw_serial()[0] & 0x80 == 0);
        assert!(cert.raw_serial().len() >= 15);
        assert!(cert.iter_extensions().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::SubjectKeyIdentifier(_)
        )));
        // ECDSA P-256 key.
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
    });
}

#[test]
fn corrupt_key_file_is_an_error_naming_the_path() {
    let (tmp, _ca) = new_ca();
    let dir = ca_dir(&tmp);
    let key = dir.join(CA_KEY_FILE);
    fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = Authority::load_or_init(&dir, &CaParams::default()).unwrap_err();
    assert!(matches!(err, CaError::CorruptFile { .. }), "{err:?}");
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    // Not regenerated.
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    );

    fs::write(&key, "not pem at all").unwrap();
    let err = Authority::load_or_init(&dir, &CaParams::default()).unwrap_err();
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
}

#[test]
fn corrupt_certificate_file_is_an_error_naming_the_path() {
    let (tmp, ca) = new_ca();
    let dir = ca_dir(&tmp);
    let cert = dir.join(CA_CERT_FILE);
    for bad in [
        "garbage".to_string(),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
        ca.ca_certificate_pem().replace("CERTIFICATE", "X509 CRL"),
        format!("{0}{0}", ca.ca_certificate_pem()),
    ] {
        fs::write(&cert, &bad).unwrap();
        let err = Authority::load_or_init(&dir, &CaParams::default()).unwrap_err();
        assert!(matches!(err, CaError::CorruptFile { .. }), "{err:?}");
        assert!(err.to_string().contains(CA_CERT_FILE), "{err}");
        assert_eq!(
            fs::read_to_string(&cert).unwrap(),
            bad,
            "file must not be replaced"
        );
    }
}

#[test]
fn non_ca_certificate_in_ca_file_is_rejected() {
    // A leaf certificate with its own key placed as the CA: key matches, but not a CA.
    let (tmp, ca) = new_ca();
    let dir = ca_dir(&tmp);
    let (key_pem, csr) = generate_key_and_csr(IMEI).unwrap();
    let leaf = ca.sign_csr(&csr, IMEI, None).unwrap();
    fs::write(dir.join(CA_KEY_FILE), key_pem).unwrap();
    fs::write(dir.join(CA_CERT_FILE), leaf.certificate_pem).unwrap();
    let err = Authority::load_or_init(&dir, &CaParams::default()).unwrap_err();
    assert!(err.to_string().contains("not a CA certificate"), "{err}");
}

#[test]
fn mismatched_key_and_certificate_is_an_error() {
    let (tmp1, _ca1) = new_ca();
    let (tmp2, _ca2) = new_ca();
    let dir1 = ca_dir(&tmp1);
    fs::copy(ca_dir(&tmp2).join(CA_KEY_FILE), dir1.join(CA_KEY_FILE)).unwrap();
    let err = Authority::load_or_init(&dir1, &CaParams::default()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(CA_KEY_FILE) && msg.contains(CA_CERT_FILE),
        "{msg}"
    );
}

#[test]
fn half_present_ca_is_an_error_not_a_new_ca() {
    let (tmp, _ca) = new_ca();
    let dir = ca_dir(&tmp);
    let cert_backup = fs::read(dir.join(CA_CERT_FILE)).unwrap();
    fs::remove_file(dir.join(CA_CERT_FILE)).unwrap();
    let err = Authority::load_or_init(&dir, &CaParams::default()).unwrap_err();
    assert!(matches!(err, CaError::IncompleteCa { .. }), "{err:?}");
    assert!(err.to_string().contains(CA_CERT_FILE), "{err}");
    assert!(!dir.join(CA_CERT_FILE).exists());

    fs::write(dir.join(CA_CERT_FILE), cert_backup).unwrap();
    fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
    let err = Authority::load_or_init(&dir, &CaParams::default()).unwrap_err();
    assert!(matches!(err, CaError::IncompleteCa { .. }), "{err:?}");
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    assert!(!dir.join(CA_KEY_FILE).exists());
}

#[test]
fn load_without_ca_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Authority::load(tmp.path(), &CaParams::default()).unwrap_err();
    assert!(matches!(err, CaError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains("not found"), "{err}");
    // load() never creates anything.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn invalid_params_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    for params in [
        CaParams {
            common_name: String::new(),
            ..CaParams::default()
        },
        CaParams {
            validity_days: 0,
            ..CaParams::default()
        },
        CaParams {
            device_validity_days: 0,
            ..CaParams::default()
        },
        CaParams {
            organization: Some("a\u{0}b".into()),
            ..CaParams::default()
        },
    ] {
        let err = Authority::load_or_init(tmp.path(), &params).unwrap_err();
        assert!(matches!(err, CaError::InvalidInput(_)), "{err:?}");
    }
    assert!(!tmp.path().join(CA_KEY_FILE).exists());
}

#[test]
fn params_defaults() {
    let p = CaParams::default();
    assert_eq!(p.common_name, "Callhome Root CA");
    assert_eq!(p.organization, None);
    assert_eq!(
        (
            p.validity_days,
            p.device_validity_days,
            p.server_validity_days
        ),
        (3650, 825, 397)
    );
}

#[test]
fn write_secret_file_is_private_and_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("jwt.key");
    write_secret_file(&path, b"first").unwrap();
    assert_eq!(mode(&path), 0o600);
    write_secret_file(&path, b"second").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn inspect_certificate_reports_issued_fields_and_rejects_garbage() {
    let (_tmp, ca) = new_ca();
    let (_, csr) = generate_key_and_csr(IMEI).unwrap();
    let issued = ca.sign_csr(&csr, IMEI, Some(10)).unwrap();
    let info = inspect_certificate(&issued.certificate_pem).unwrap();
    assert_eq!(info.serial, issued.serial);
    assert_eq!(info.common_name.as_deref(), Some(IMEI));
    assert_eq!(info.issuer_cn.as_deref(), Some("Callhome Issuing CA"));
    assert_eq!(info.not_before, issued.not_before);
    assert_eq!(info.not_after, issued.not_after);
    assert_eq!(info.fingerprint_sha256, issued.fingerprint_sha256);

    // A chain: the leaf is inspected.
    let chain = format!("{}{}", issued.certificate_pem, ca.ca_certificate_pem());
    assert_eq!(inspect_certificate(&chain).unwrap().serial, issued.serial);

    for bad in [
        "",
        "junk",
        csr.as_str(),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
    ] {
        let err = inspect_certificate(bad).unwrap_err();
        assert!(
            matches!(err, CaError::InvalidCertificate(_)),
            "{bad}: {err:?}"
        );
    }
}
