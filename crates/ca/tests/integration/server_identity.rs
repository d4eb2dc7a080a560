//! The server's TLS identity: issued once, reused, re-issued when unsuitable.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;

use callhome_ca::{CaError, SERVER_CERT_FILE, SERVER_KEY_FILE, inspect_certificate};
use x509_parser::extensions::GeneralName;

use crate::common::{assert_signed_by, new_ca, with_cert};

fn sans(cert_pem: &str) -> Vec<String> {
    with_cert(cert_pem, |c| {
        c.subject_alternative_name()
            .unwrap()
            .expect("SAN")
            .value
            .general_names
            .iter()
            .map(|g| match g {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                }
                GeneralName::IPAddress(b) => {
                    IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
                }
                other => format!("{other:?}"),
            })
            .collect()
    })
}

fn leaf_pem(identity: &callhome_ca::ServerIdentity) -> String {
    crate::common::to_pem("CERTIFICATE", &identity.cert_chain[0])
}

#[test]
fn server_identity_is_issued_then_reused() {
    let (tmp, ca) = new_ca();
    let dir = tmp.path().join("server");
    let hosts = vec!["callhome.example.com".to_string(), "192.0.2.10".to_string()];
    let id = ca.ensure_server_identity(&dir, &hosts).unwrap();

    assert_eq!(
        fs::metadata(dir.join(SERVER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(id.cert_chain.len(), 2);
    assert_eq!(&id.cert_chain[1], ca.ca_certificate_der());
    assert!(id.cert_chain_pem.ends_with(ca.ca_certificate_pem()));
    let leaf = leaf_pem(&id);
    assert_eq!(
        id.cert_chain_pem,
        format!("{leaf}{}", ca.ca_certificate_pem())
    );
    assert_signed_by(&ca, &leaf);
    let info = inspect_certificate(&id.cert_chain_pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("callhome.example.com"));
    assert_eq!(info.not_after, id.not_after);
    let days = (info.not_after - info.not_before).whole_days();
    assert_eq!(days, 397);
    let mut names = sans(&leaf);
    names.sort();
    assert_eq!(
        names,
        vec![
            "127.0.0.1",
            "192.0.2.10",
            "::1",
            "callhome.example.com",
            "localhost"
        ]
    );
    with_cert(&leaf, |c| {
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!c.is_ca());
    });

    // Second call: same certificate and key, files untouched.
    let key_before = fs::read(dir.join(SERVER_KEY_FILE)).unwrap();
    let again = ca.ensure_server_identity(&dir, &hosts).unwrap();
    assert_eq!(again.cert_chain, id.cert_chain);
    assert_eq!(again.cert_chain_pem, id.cert_chain_pem);
    assert_eq!(
        fs::read_to_string(dir.join(SERVER_CERT_FILE)).unwrap(),
        id.cert_chain_pem
    );
    assert_eq!(again.key.secret_der(), id.key.secret_der());
    assert_eq!(fs::read(dir.join(SERVER_KEY_FILE)).unwrap(), key_before);
    // A subset of the hosts is still covered.
    let subset = ca.ensure_server_identity(&dir, &hosts[..1]).unwrap();
    assert_eq!(subset.cert_chain, id.cert_chain);
    // Clone keeps the key.
    let cloned = id.clone();
    assert_eq!(cloned.key.secret_der(), id.key.secret_der());
}

#[test]
fn server_identity_is_reissued_when_hosts_change() {
    let (tmp, ca) = new_ca();
    let dir = tmp.path().join("server");
    let first = ca
        .ensure_server_identity(&dir, &["a.example".to_string()])
        .unwrap();
    let second = ca
        .ensure_server_identity(
            &dir,
            &["b.example".to_string(), "[2001:db8::1]".to_string()],
        )
        .unwrap();
    assert_ne!(first.cert_chain[0], second.cert_chain[0]);
    let names = sans(&leaf_pem(&second));
    assert!(names.contains(&"b.example".to_string()));
    assert!(names.contains(&"2001:db8::1".to_string()));
    assert!(!names.contains(&"a.example".to_string()));
}

#[test]
fn server_identity_from_another_ca_or_corrupt_is_replaced() {
    let (tmp, ca) = new_ca();
    let (tmp2, other) = new_ca();
    let dir = tmp.path().join("server");
    let dir2 = tmp2.path().join("server");
    let hosts = vec!["localhost".to_string()];
    let foreign = other.ensure_server_identity(&dir2, &hosts).unwrap();
    fs::create_dir_all(&dir).unwrap();
    fs::copy(dir2.join(SERVER_KEY_FILE), dir.join(SERVER_KEY_FILE)).unwrap();
    fs::copy(dir2.join(SERVER_CERT_FILE), dir.join(SERVER_CERT_FILE)).unwrap();
    let ours = ca.ensure_server_identity(&dir, &hosts).unwrap();
    assert_ne!(ours.cert_chain[0], foreign.cert_chain[0]);
    assert_signed_by(&ca, &leaf_pem(&ours));

    fs::write(dir.join(SERVER_CERT_FILE), "garbage").unwrap();
    let fresh = ca.ensure_server_identity(&dir, &hosts).unwrap();
    assert_signed_by(&ca, &leaf_pem(&fresh));
    fs::write(dir.join(SERVER_KEY_FILE), "garbage").unwrap();
    let fresh2 = ca.ensure_server_identity(&dir, &hosts).unwrap();
    assert_ne!(fresh2.cert_chain[0], fresh.cert_chain[0]);
}

#[test]
fn server_identity_defaults_and_bad_hosts() {
    let (tmp, ca) = new_ca();
    let dir = tmp.path().join("server");
    let id = ca.ensure_server_identity(&dir, &[]).unwrap();
    let info = inspect_certificate(&id.cert_chain_pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("callhome"));
    let mut names = sans(&leaf_pem(&id));
    names.sort();
    assert_eq!(names, vec!["127.0.0.1", "::1", "localhost"]);

    for bad in ["bad host", "ünïcode.example", "a/b"] {
        let err = ca
            .ensure_server_identity(&dir, &[bad.to_string()])
            .unwrap_err();
        assert!(matches!(err, CaError::InvalidInput(_)), "{bad}: {err:?}");
    }
}
