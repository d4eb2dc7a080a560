//! Firmware signatures: which configured key signed a firmware file.
//!
//! The signed message is the 32 raw bytes of the file's SHA-256 ([`Digest::as_bytes`]),
//! never the file itself, so a signature can be checked once the upload has been hashed:
//!
//! - Ed25519: the signature over those 32 bytes (`openssl pkeyutl -sign -rawin -inkey
//!   key.pem -in digest.bin`).
//! - ECDSA P-256: ECDSA-with-SHA-256 over those 32 bytes, i.e. exactly what
//!   `openssl dgst -sha256 -sign key.pem -out sig digest.bin` makes; the DER (ASN.1) form
//!   and the 64-byte fixed `r || s` form are both accepted.
//!
//! Keys are public keys in PEM `PUBLIC KEY` form (SubjectPublicKeyInfo, as
//! `openssl pkey -pubout` writes them).

use std::fmt;

use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey,
};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED448,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::{Digest, FirmwareError, Result};

/// Largest PEM text accepted for one key.
const MAX_KEY_PEM: usize = 16 * 1024;

/// The algorithm of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Ed25519 (RFC 8032).
    Ed25519,
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
}

impl KeyKind {
    /// `ed25519` or `ecdsa-p256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256 => "ecdsa-p256",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A public key that firmware may be signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    name: String,
    kind: KeyKind,
    /// Ed25519: the 32-byte key; P-256: the 65-byte uncompressed point.
    public: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) named `name` (the name shown in
    /// logs and answers, e.g. the key file's name). Private keys, RSA and other
    /// algorithms are rejected, naming what was found.
    pub fn from_pem(name: &str, pem_text: &str) -> Result<Self> {
        let bad = |why: String| FirmwareError::BadKey(format!("{name}: {why}"));
        if pem_text.len() > MAX_KEY_PEM {
            return Err(bad(format!(
                "PEM text is {} bytes, at most {MAX_KEY_PEM} are accepted",
                pem_text.len()
            )));
        }
        let pem = pem::parse(pem_text).map_err(|e| bad(format!("not a PEM file: {e}")))?;
        match pem.tag() {
            "PUBLIC KEY" => {}
            tag if tag.contains("PRIVATE KEY") => {
                return Err(bad(format!(
                    "is a private key ({tag}); configure the public key (openssl pkey -in key.pem -pubout)"
                )));
            }
            "RSA PUBLIC KEY" => {
                return Err(bad(
                    "is an RSA key; only Ed25519 and ECDSA P-256 keys are supported".into(),
                ));
            }
            "CERTIFICATE" => {
                return Err(bad(
                    "is a certificate; configure its public key (openssl x509 -in cert.pem -pubkey -noout)"
                        .into(),
                ));
            }
            tag => {
                return Err(bad(format!(
                    "PEM block is {tag:?}, expected \"PUBLIC KEY\""
                )));
            }
        }
        Self::from_spki_der(name, pem.contents())
    }

    /// Reads a DER SubjectPublicKeyInfo named `name`.
    pub fn from_spki_der(name: &str, der: &[u8]) -> Result<Self> {
        let bad = |why: String| FirmwareError::BadKey(format!("{name}: {why}"));
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| bad(format!("not a SubjectPublicKeyInfo: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} bytes of trailing data after the public key",
                rest.len()
            )));
        }
        let alg = &spki.algorithm.algorithm;
        let key: &[u8] = &spki.subject_public_key.data;
        if *alg == OID_SIG_ED25519 {
            if key.len() != 32 {
                return Err(bad(format!(
                    "an Ed25519 public key is 32 bytes, this one is {}",
                    key.len()
                )));
            }
            return Ok(Self {
                name: name.to_owned(),
                kind: KeyKind::Ed25519,
                public: key.to_vec(),
            });
        }
        if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| x509_parser::asn1_rs::Oid::try_from(p.clone()).ok());
            match curve {
                Some(c) if c == OID_EC_P256 => {}
                Some(c) => {
                    return Err(bad(format!(
                        "an EC key on curve {c}; only P-256 (prime256v1, 1.2.840.10045.3.1.7) is supported"
                    )));
                }
                None => return Err(bad("an EC key without a named curve".into())),
            }
            if key.len() != 65 || key[0] != 0x04 {
                return Err(bad(
                    "the P-256 public key is not an uncompressed point (65 bytes starting with 04)"
                        .into(),
                ));
            }
            return Ok(Self {
                name: name.to_owned(),
                kind: KeyKind::EcdsaP256,
                public: key.to_vec(),
            });
        }
        let what = if *alg == OID_PKCS1_RSAENCRYPTION {
            "an RSA key".to_owned()
        } else if *alg == OID_SIG_ED448 {
            "an Ed448 key".to_owned()
        } else {
            format!("a key of algorithm {alg}")
        };
        Err(bad(format!(
            "is {what}; only Ed25519 and ECDSA P-256 keys are supported"
        )))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's algorithm.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Whether `signature` is this key's signature of `digest`'s 32 raw bytes.
    pub fn verifies(&self, digest: &Digest, signature: &[u8]) -> bool {
        let msg = digest.as_bytes();
        match self.kind {
            KeyKind::Ed25519 => UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(msg, signature)
                .is_ok(),
            KeyKind::EcdsaP256 => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.public)
                    .verify(msg, signature)
                    .is_ok()
                    || (signature.len() == 64
                        && UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
                            .verify(msg, signature)
                            .is_ok())
            }
        }
    }
}

/// The keys firmware may be signed with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningKeys {
    keys: Vec<SigningKey>,
}

impl SigningKeys {
    /// The keys `keys`.
    pub fn new(keys: Vec<SigningKey>) -> Self {
        Self { keys }
    }

    /// Adds a key.
    pub fn push(&mut self, key: SigningKey) {
        self.keys.push(key);
    }

    /// The keys, in order.
    pub fn iter(&self) -> impl Iterator<Item = &SigningKey> {
        self.keys.iter()
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The first key whose signature of `digest` (its 32 raw bytes) `signature` is.
    /// [`FirmwareError::NoSigningKeys`] without keys, [`FirmwareError::BadSignature`]
    /// (with how many were tried) when none verifies it.
    pub fn verify(&self, digest: &Digest, signature: &[u8]) -> Result<&SigningKey> {
        if self.keys.is_empty() {
            return Err(FirmwareError::NoSigningKeys);
        }
        self.keys
            .iter()
            .find(|k| k.verifies(digest, signature))
            .ok_or(FirmwareError::BadSignature {
                tried: self.keys.len(),
            })
    }
}

impl FromIterator<SigningKey> for SigningKeys {
    fn from_iter<I: IntoIterator<Item = SigningKey>>(iter: I) -> Self {
        Self {
            keys: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair as _,
    };

    /// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
    const ED25519_SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    /// DER prefix of a P-256 SubjectPublicKeyInfo (RFC 5480), before the 65-byte point.
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];

    fn spki_pem(prefix: &[u8], key: &[u8]) -> String {
        let der = [prefix, key].concat();
        pem::encode(&pem::Pem::new("PUBLIC KEY", der))
    }

    fn ed25519() -> (Ed25519KeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pem = spki_pem(&ED25519_SPKI_PREFIX, pair.public_key().as_ref());
        (pair, pem)
    }

    fn p256(alg: &'static ring::signature::EcdsaSigningAlgorithm) -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let pem = spki_pem(&P256_SPKI_PREFIX, pair.public_key().as_ref());
        (pair, pem)
    }

    #[test]
    fn ed25519_signature_over_the_digest_bytes() {
        let (pair, pem) = ed25519();
        let key = SigningKey::from_pem("release", &pem).unwrap();
        assert_eq!(key.kind(), KeyKind::Ed25519);
        assert_eq!(key.name(), "release");
        let d = Digest::of(b"firmware image");
        let sig = pair.sign(d.as_bytes());
        let keys = SigningKeys::new(vec![key]);
        assert_eq!(keys.verify(&d, sig.as_ref()).unwrap().name(), "release");
        // A signature of the file itself, not of its digest, is not accepted.
        let wrong = pair.sign(b"firmware image");
        assert!(matches!(
            keys.verify(&d, wrong.as_ref()),
            Err(FirmwareError::BadSignature { tried: 1 })
        ));
        let other = Digest::of(b"another image");
        assert!(keys.verify(&other, sig.as_ref()).is_err());
    }

    #[test]
    fn ecdsa_der_and_fixed_signatures() {
        let rng = SystemRandom::new();
        let (pair, pem) = p256(&ECDSA_P256_SHA256_ASN1_SIGNING);
        let (ed_pair, ed_pem) = ed25519();
        let keys: SigningKeys = [
            SigningKey::from_pem("edkey", &ed_pem).unwrap(),
            SigningKey::from_pem("eckey", &pem).unwrap(),
        ]
        .into_iter()
        .collect();
        assert_eq!(keys.len(), 2);
        let d = Digest::of(b"jar bytes");
        let der_sig = pair.sign(&rng, d.as_bytes()).unwrap();
        assert_eq!(der_sig.as_ref()[0], 0x30, "DER SEQUENCE");
        let k = keys.verify(&d, der_sig.as_ref()).unwrap();
        assert_eq!((k.name(), k.kind()), ("eckey", KeyKind::EcdsaP256));
        let ed_sig = ed_pair.sign(d.as_bytes());
        assert_eq!(keys.verify(&d, ed_sig.as_ref()).unwrap().name(), "edkey");

        // The same key, signing in the fixed r||s form.
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let fixed =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap();
        let fixed_pem = spki_pem(&P256_SPKI_PREFIX, fixed.public_key().as_ref());
        let fixed_keys = SigningKeys::new(vec![SigningKey::from_pem("f", &fixed_pem).unwrap()]);
        let sig = fixed.sign(&rng, d.as_bytes()).unwrap();
        assert_eq!(sig.as_ref().len(), 64);
        assert!(fixed_keys.verify(&d, sig.as_ref()).is_ok());
        let mut tampered = sig.as_ref().to_vec();
        tampered[10] ^= 1;
        let e = fixed_keys.verify(&d, &tampered).unwrap_err();
        assert!(e.to_string().contains("1 key(s) tried"), "{e}");
        assert!(fixed_keys.verify(&d, b"").is_err());
        assert!(fixed_keys.verify(&d, &[0x30; 200]).is_err());
    }

    #[test]
    fn no_keys_is_its_own_error() {
        let e = SigningKeys::default()
            .verify(&Digest::of(b""), &[0; 64])
            .unwrap_err();
        assert!(matches!(e, FirmwareError::NoSigningKeys), "{e}");
    }

    #[test]
    fn unusable_keys_are_named() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let private = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        let e = SigningKey::from_pem("k", &private).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        assert!(e.to_string().starts_with("signing key: k:"), "{e}");

        let e = SigningKey::from_pem("k", "hello").unwrap_err();
        assert!(e.to_string().contains("not a PEM"), "{e}");

        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0]));
        let e = SigningKey::from_pem("k", &cert).unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");

        let garbage = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![1, 2, 3]));
        let e = SigningKey::from_pem("k", &garbage).unwrap_err();
        assert!(e.to_string().contains("SubjectPublicKeyInfo"), "{e}");

        // An EC key on P-384 (secp384r1, 1.3.132.0.34).
        let mut p384 = vec![
            0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00, 0x04,
        ];
        p384.extend([7u8; 96]);
        let e = SigningKey::from_spki_der("k", &p384).unwrap_err();
        assert!(e.to_string().contains("1.3.132.0.34"), "{e}");

        // An RSA SubjectPublicKeyInfo (algorithm rsaEncryption, key bits irrelevant).
        let rsa = [
            0x30, 0x13, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
            0x01, 0x05, 0x00, 0x03, 0x02, 0x00, 0x00,
        ];
        let e = SigningKey::from_spki_der("k", &rsa).unwrap_err();
        assert!(e.to_string().contains("RSA"), "{e}");

        // A truncated Ed25519 key.
        let mut short = ED25519_SPKI_PREFIX.to_vec();
        short[1] = 0x29;
        short[10] = 0x20;
        short.extend([1u8; 31]);
        let e = SigningKey::from_spki_der("k", &short).unwrap_err();
        assert!(e.to_string().contains("32 bytes"), "{e}");
    }

    /// A key pair and signatures made by the openssl CLI, when it is installed.
    #[test]
    fn openssl_made_keys_and_signatures() {
        use std::process::Command;
        if Command::new("openssl").arg("version").output().is_err() {
            println!("openssl not on PATH: skipping the openssl interoperability test");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let run = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        let d = Digest::of(b"the firmware");
        std::fs::write(p("digest.bin"), d.as_bytes()).unwrap();

        // ECDSA P-256: openssl dgst -sha256 -sign over the digest bytes (DER signature).
        run(&[
            &os("ecparam"),
            &os("-name"),
            &os("prime256v1"),
            &os("-genkey"),
            &os("-noout"),
            &os("-out"),
            p("ec.pem").as_os_str(),
        ]);
        run(&[
            &os("pkey"),
            &os("-in"),
            p("ec.pem").as_os_str(),
            &os("-pubout"),
            &os("-out"),
            p("ec.pub").as_os_str(),
        ]);
        run(&[
            &os("dgst"),
            &os("-sha256"),
            &os("-sign"),
            p("ec.pem").as_os_str(),
            &os("-out"),
            p("ec.sig").as_os_str(),
            p("digest.bin").as_os_str(),
        ]);
        let ec =
            SigningKey::from_pem("ec.pub", &std::fs::read_to_string(p("ec.pub")).unwrap()).unwrap();
        assert_eq!(ec.kind(), KeyKind::EcdsaP256);
        let sig = std::fs::read(p("ec.sig")).unwrap();
        let keys = SigningKeys::new(vec![ec]);
        assert_eq!(keys.verify(&d, &sig).unwrap().name(), "ec.pub");
        assert!(keys.verify(&Digest::of(b"other"), &sig).is_err());

        // Ed25519: openssl pkeyutl -sign -rawin over the digest bytes.
        run(&[
            &os("genpkey"),
            &os("-algorithm"),
            &os("ed25519"),
            &os("-out"),
            p("ed.pem").as_os_str(),
        ]);
        run(&[
            &os("pkey"),
            &os("-in"),
            p("ed.pem").as_os_str(),
            &os("-pubout"),
            &os("-out"),
            p("ed.pub").as_os_str(),
        ]);
        let ed =
            SigningKey::from_pem("ed.pub", &std::fs::read_to_string(p("ed.pub")).unwrap()).unwrap();
        assert_eq!(ed.kind(), KeyKind::Ed25519);
        let signed = Command::new("openssl")
            .args([os("pkeyutl"), os("-sign"), os("-rawin"), os("-inkey")])
            .arg(p("ed.pem"))
            .arg("-in")
            .arg(p("digest.bin"))
            .arg("-out")
            .arg(p("ed.sig"))
            .output()
            .unwrap();
        if signed.status.success() {
            let sig = std::fs::read(p("ed.sig")).unwrap();
            let keys = SigningKeys::new(vec![ed]);
            assert_eq!(keys.verify(&d, &sig).unwrap().name(), "ed.pub");
        } else {
            println!(
                "this openssl cannot sign raw input with Ed25519 (pkeyutl -rawin): {}",
                String::from_utf8_lossy(&signed.stderr)
            );
        }
        // A private key given where a public key is expected.
        let e = SigningKey::from_pem("ec.pem", &std::fs::read_to_string(p("ec.pem")).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
    }
}
