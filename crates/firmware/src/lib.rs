//! Firmware files: storing them, checking their signatures and JARs, and serving byte
//! ranges of them.
//!
//! Owns:
//! - the content-addressed blob store ([`blob`]: [`BlobStore`], [`FsBlobStore`]): blobs
//!   named by their SHA-256 ([`Digest`]), written through a temporary file, hashed and
//!   counted as they arrive, never rewritten once stored;
//! - firmware signatures ([`signature`]): Ed25519 and ECDSA P-256 public keys from PEM,
//!   verified over the 32 raw bytes of the SHA-256;
//! - MIDlet JAR checks ([`jar`]): the manifest's main attributes and their agreement with
//!   a JAD (JSR-118 904/905);
//! - HTTP Range arithmetic ([`range`]): which bytes a `Range`/`If-Range` request gets.
//!
//! Must not know: the database, HTTP servers, jobs, MQTT. JAD parsing itself is
//! `callhome_core::otap`'s.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

use callhome_core::otap::OtapError;
use sha2::Digest as _;

pub mod blob;
pub mod jar;
pub mod range;
pub mod signature;

pub use blob::{BlobStore, BlobWriter, ByteStream, Committed, FsBlobStore};
pub use jar::{JarManifest, check_jad_matches, check_jar};
pub use range::{RangeAnswer, evaluate};
pub use signature::{KeyKind, SigningKey, SigningKeys};

/// The result type of this crate.
pub type Result<T, E = FirmwareError> = std::result::Result<T, E>;

/// A SHA-256 digest: the name of a blob. Shown and parsed as 64 lowercase hex digits
/// (uppercase is accepted when parsing), and serialised as that string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Wraps 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(sha2::Sha256::digest(data).into())
    }

    /// The 32 raw bytes (what firmware signatures sign).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The strong HTTP entity tag of a blob with this digest: `"<hex>"`, quotes included.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = FirmwareError;

    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 64 {
            return Err(FirmwareError::InvalidDigest(format!(
                "a SHA-256 is 64 hex digits, got {} characters",
                s.chars().count()
            )));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(FirmwareError::InvalidDigest(format!(
                "a SHA-256 is 64 hex digits, found {c:?}"
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| FirmwareError::InvalidDigest(format!("not hex: {e}")))?;
        Ok(Self(out))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a firmware operation failed; every variant names the problem.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// A blob grew past the limit it was begun with; its temporary data is removed.
    #[error("firmware file is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No configured key verified the signature.
    #[error("the signature was not made by any configured signing key ({tried} key(s) tried)")]
    BadSignature {
        /// How many keys were tried.
        tried: usize,
    },
    /// No signing key is configured, so no signature can be checked.
    #[error("no firmware signing key is configured")]
    NoSigningKeys,
    /// A signing key could not be used.
    #[error("signing key: {0}")]
    BadKey(String),
    /// The file is not a usable MIDlet JAR.
    #[error("invalid JAR: {0}")]
    BadJar(String),
    /// The JAD is not usable.
    #[error(transparent)]
    Jad(#[from] OtapError),
    /// The JAD and the JAR disagree (JSR-118 904 for the size, 905 for the attributes).
    #[error("{attribute} differs: the JAD says {jad:?}, the JAR has {jar:?}")]
    JadMismatch {
        /// The attribute.
        attribute: String,
        /// Its value in the JAD.
        jad: String,
        /// Its value in the JAR manifest (or the JAR's size).
        jar: String,
    },
    /// No blob with this digest is stored.
    #[error("no firmware file with SHA-256 {0}")]
    NotFound(Digest),
    /// A stored blob is not what its name says.
    #[error("stored firmware file {digest} is damaged: {problem}")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// What is wrong.
        problem: String,
    },
    /// A byte range outside the blob.
    #[error("invalid byte range: {0}")]
    InvalidRange(String),
    /// A SHA-256 string that is not 64 hex digits.
    #[error("invalid SHA-256: {0}")]
    InvalidDigest(String),
    /// A blob writer was used after it failed.
    #[error("the firmware upload already failed and was discarded")]
    WriterFailed,
}

impl FirmwareError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The JSR-118 install status this problem corresponds to, when it is a JAD/JAR
    /// disagreement: 904 (JAR Size Mismatch) or 905 (Attribute Mismatch); 906 (Invalid
    /// Descriptor) for a bad JAD, 907 (Invalid JAR) for a bad JAR.
    pub fn otap_status(&self) -> Option<u16> {
        match self {
            Self::JadMismatch { attribute, .. }
                if attribute == callhome_core::otap::MIDLET_JAR_SIZE =>
            {
                Some(904)
            }
            Self::JadMismatch { .. } => Some(905),
            Self::Jad(_) => Some(906),
            Self::BadJar(_) => Some(907),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_hex_round_trip() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.etag(), format!("\"{EMPTY}\""));
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
        assert_eq!(EMPTY.to_uppercase().parse::<Digest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"abc\"").is_err());
    }

    #[test]
    fn digest_rejections_are_named() {
        let e = "abc".parse::<Digest>().unwrap_err();
        assert!(e.to_string().contains("64 hex digits, got 3"), "{e}");
        let e = format!("{}g", &EMPTY[..63]).parse::<Digest>().unwrap_err();
        assert!(e.to_string().contains("'g'"), "{e}");
        let e = format!("{}é", &EMPTY[..62]).parse::<Digest>().unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }

    #[test]
    fn otap_status_of_mismatches() {
        let size = FirmwareError::JadMismatch {
            attribute: "MIDlet-Jar-Size".into(),
            jad: "1".into(),
            jar: "2".into(),
        };
        assert_eq!(size.otap_status(), Some(904));
        let name = FirmwareError::JadMismatch {
            attribute: "MIDlet-Name".into(),
            jad: "a".into(),
            jar: "b".into(),
        };
        assert_eq!(name.otap_status(), Some(905));
        assert_eq!(FirmwareError::BadJar("x".into()).otap_status(), Some(907));
        assert_eq!(FirmwareError::TooLarge { limit: 1 }.otap_status(), None);
    }
}
