//! Property tests: no input makes the CSR path (or certificate inspection) panic.

use std::sync::OnceLock;

use callhome_ca::{Authority, CaError, generate_key_and_csr, inspect_certificate};
use proptest::prelude::*;

use crate::common::{IMEI, assert_signed_by, pem_to_der};

struct Fixture {
    _tmp: tempfile::TempDir,
    ca: Authority,
    csr_der: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (tmp, ca) = crate::common::new_ca();
        let (_, csr) = generate_key_and_csr(IMEI).unwrap();
        Fixture {
            _tmp: tmp,
            ca,
            csr_der: pem_to_der(&csr),
        }
    })
}

fn csr_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes as text: always an InvalidCsr error, never a panic.
    #[test]
    fn random_text_is_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let text = String::from_utf8_lossy(&bytes);
        let result = fixture().ca.sign_csr(&text, IMEI, None);
        prop_assert!(matches!(result, Err(CaError::InvalidCsr(_))), "{result:?}");
        prop_assert!(inspect_certificate(&text).is_err());
    }

    /// Arbitrary DER-ish bytes inside a well-formed CSR PEM: rejected, never a panic.
    #[test]
    fn random_der_in_pem_is_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let result = fixture().ca.sign_csr(&csr_pem(&bytes), IMEI, None);
        prop_assert!(matches!(result, Err(CaError::InvalidCsr(_))), "{result:?}");
    }

    /// A valid CSR with random bytes changed or truncated: never a panic, and anything
    /// accepted is a proper certificate from our CA.
    #[test]
    fn mutated_csr_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let f = fixture();
        let mut der = f.csr_der.clone();
        for (idx, byte) in edits {
            let i = idx.index(der.len());
            der[i] = byte;
        }
        if truncate {
            der.truncate(cut.index(der.len()));
        }
        match f.ca.sign_csr(&csr_pem(&der), IMEI, None) {
            Ok(issued) => {
                // Possible only if the edits left the signed request intact (e.g. an
                // edit that wrote back the same byte); it must still be a proper
                // certificate from our CA for the requested name.
                assert_signed_by(&f.ca, &issued.certificate_pem);
                prop_assert_eq!(issued.common_name.as_str(), IMEI);
            }
            Err(CaError::InvalidCsr(_)) | Err(CaError::SubjectMismatch { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
        }
    }
}
