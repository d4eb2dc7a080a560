//! Password hashing (argon2id, PHC strings), for users and legacy MQTT credentials.
//!
//! Deliberately slow and synchronous: async callers run these on a blocking thread.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Largest argon2 memory a stored hash may ask for, in KiB blocks (256 MiB): a corrupt or
/// hostile stored hash cannot make a check allocate more.
const MAX_M_COST: u32 = 256 * 1024;

/// Reusable argon2 working memory (19 MiB at the default cost): a thread that checks many
/// passwords keeps one and allocates it once, instead of asking the allocator for 19 MiB per
/// check (which the allocator tends to keep, per thread, after it is freed).
pub struct Scratch(Vec<Block>);

impl Scratch {
    /// Working memory for the default parameters.
    pub fn new() -> Self {
        Self(vec![Block::new(); Params::DEFAULT_M_COST as usize])
    }

    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.0.len() < count {
            self.0.resize(count, Block::new());
        }
        &mut self.0[..count]
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scratch({} blocks)", self.0.len())
    }
}

/// [`verify`], with the argon2 working memory taken from `scratch`.
pub fn verify_with(password: &str, stored: Option<&str>, scratch: &mut Scratch) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("callhome dummy password").unwrap_or_default());
    let Ok(parsed) = PasswordHash::new(stored.unwrap_or(dummy)) else {
        return false;
    };
    matches(password, &parsed, scratch).unwrap_or(false) && stored.is_some()
}

fn matches(password: &str, parsed: &PasswordHash<'_>, scratch: &mut Scratch) -> Option<bool> {
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(parsed).ok()?;
    if params.m_cost() > MAX_M_COST {
        return None;
    }
    let expected = parsed.hash?;
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let blocks = params.block_count();
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, scratch.blocks(blocks))
        .ok()?;
    let actual = argon2::password_hash::Output::new(&out).ok()?;
    // `Output`'s equality is constant-time.
    Some(actual == expected)
}

/// Hashes `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing password: {e}"))
}

/// Whether `password` matches `stored`. With no stored hash (unknown user) the password is
/// checked against a dummy hash anyway, so both cases take the same time, and the answer is
/// `false`.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("callhome dummy password").unwrap_or_default());
    let Ok(parsed) = PasswordHash::new(stored.unwrap_or(dummy)) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
        && stored.is_some()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_and_verify() {
        let h = super::hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse battery", Some(&h)));
        assert!(!super::verify("wrong", Some(&h)));
        assert!(!super::verify("correct horse battery", None));
        assert!(!super::verify("x", Some("not a hash")));
        // The same answers with reusable working memory.
        let mut scratch = super::Scratch::new();
        for _ in 0..2 {
            assert!(super::verify_with(
                "correct horse battery",
                Some(&h),
                &mut scratch
            ));
            assert!(!super::verify_with("wrong", Some(&h), &mut scratch));
            assert!(!super::verify_with(
                "correct horse battery",
                None,
                &mut scratch
            ));
            assert!(!super::verify_with("x", Some("not a hash"), &mut scratch));
        }
    }
}
