//! Who is calling: password hashing (argon2, via `callhome-core`), access tokens (HS256 JWT), API keys, and the
//! [`Principal`] that handlers check roles against.
//!
//! API keys look like `chk_<prefix>_<secret>`: the prefix finds the record, the SHA-256 of
//! the whole key is compared in constant time. Tokens are re-checked against the store on
//! every request, so disabling a user or revoking a key takes effect at once.

use std::sync::Arc;

use base64::Engine as _;
use callhome_core::Role;
use callhome_store::{Store, StoreError};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use uuid::Uuid;

use callhome_gateway::PasswordPool;

use crate::error::ApiError;

/// Prefix of every API key, so that a leaked key is recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "chk_";

/// Keys and lifetimes for access tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Lifetime of issued tokens.
    pub ttl: time::Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// HS256 keys from a shared secret (at least 32 bytes).
    pub fn from_secret(secret: &[u8], ttl: time::Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
        }
    }
}

/// Access-token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Id of the user or API key.
    pub sub: String,
    /// Display name of the principal.
    pub name: String,
    /// `user` or `api_key`.
    pub kind: PrincipalKind,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Issuer: always `callhome`.
    pub iss: String,
    /// The user's token version when the token was issued: a password change, disabling the
    /// user or an admin's "revoke tokens" raises the stored version, and every token with an
    /// older one is refused (absent in older tokens: 0). Unused for API keys.
    #[serde(default)]
    pub ver: i64,
}

/// What kind of principal a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A user who logged in with a password.
    User,
    /// A machine client with an API key.
    ApiKey,
}

impl PrincipalKind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ApiKey => "api_key",
        }
    }
}

impl From<PrincipalKind> for callhome_core::ActorKind {
    fn from(k: PrincipalKind) -> Self {
        match k {
            PrincipalKind::User => callhome_core::ActorKind::User,
            PrincipalKind::ApiKey => callhome_core::ActorKind::ApiKey,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Id of the user or API key.
    pub id: Uuid,
    /// User name, or `apikey:<name>`.
    pub name: String,
    /// Kind.
    pub kind: PrincipalKind,
    /// Current role (read from the store on every request).
    pub role: Role,
    /// The user's token version (0 for API keys), written into tokens issued for it.
    pub token_version: i64,
}

impl Principal {
    /// `Ok` if the principal's role includes `required`, else 403.
    pub fn require(&self, required: Role) -> Result<(), ApiError> {
        if self.role.allows(required) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this operation needs the {required} role; {} has the {} role",
                self.name, self.role
            )))
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::Unauthorized("a bearer token or API key is required".to_owned())
        })
    }
}

/// The principal if the request was authenticated, without rejecting anonymous requests.
#[derive(Debug, Clone)]
pub struct MaybePrincipal(pub Option<Principal>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for MaybePrincipal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<Principal>().cloned()))
    }
}

/// Issues an access token for `principal`.
pub fn issue_token(keys: &TokenKeys, principal: &Principal) -> Result<(String, i64), ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let exp = now + keys.ttl.whole_seconds();
    let claims = Claims {
        sub: principal.id.to_string(),
        name: principal.name.clone(),
        kind: principal.kind,
        iat: now,
        exp,
        iss: "callhome".to_owned(),
        ver: principal.token_version,
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding)
        .map_err(|e| ApiError::Internal(format!("signing token: {e}")))?;
    Ok((token, keys.ttl.whole_seconds()))
}

/// Resolves a bearer credential (access token or API key) to a principal.
pub async fn authenticate(
    store: &Arc<dyn Store>,
    keys: &TokenKeys,
    credential: &str,
) -> Result<Principal, ApiError> {
    if credential.starts_with(API_KEY_PREFIX) {
        return authenticate_api_key(store, credential).await;
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_issuer(&["callhome"]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
    let data =
        jsonwebtoken::decode::<Claims>(credential, &keys.decoding, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            ApiError::Unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the access token has expired".to_owned(),
                ErrorKind::InvalidSignature => {
                    "the access token's signature is not valid".to_owned()
                }
                _ => format!("the access token is not valid: {e}"),
            })
        })?;
    let id = Uuid::parse_str(&data.claims.sub).map_err(|_| {
        ApiError::Unauthorized("the access token's subject is not valid".to_owned())
    })?;
    match data.claims.kind {
        PrincipalKind::User => {
            let user = match store.get_user(id).await {
                Ok(u) => u,
                Err(StoreError::NotFound(_)) => {
                    return Err(ApiError::Unauthorized(
                        "the token's user no longer exists".to_owned(),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            if user.disabled {
                return Err(ApiError::Unauthorized(format!(
                    "user {} is disabled",
                    user.username
                )));
            }
            if data.claims.ver != user.token_version {
                return Err(ApiError::Unauthorized(
                    "the access token was revoked (password changed or sessions revoked); log in again"
                        .to_owned(),
                ));
            }
            Ok(Principal {
                id,
                name: user.username,
                kind: PrincipalKind::User,
                role: user.role,
                token_version: user.token_version,
            })
        }
        PrincipalKind::ApiKey => {
            let key = store
                .list_api_keys()
                .await?
                .into_iter()
                .find(|k| k.id == id)
                .ok_or_else(|| {
                    ApiError::Unauthorized("the token's API key no longer exists".to_owned())
                })?;
            check_api_key_usable(&key)?;
            Ok(api_key_principal(&key))
        }
    }
}

/// Checks that `p` is still usable (the user not disabled, the key not revoked or expired):
/// a stream opened by a request that was authenticated just before a revocation is refused.
pub async fn ensure_active(store: &Arc<dyn Store>, p: &Principal) -> Result<(), ApiError> {
    match p.kind {
        PrincipalKind::User => {
            let user = store.get_user(p.id).await?;
            if user.disabled {
                return Err(ApiError::Unauthorized(format!(
                    "user {} is disabled",
                    user.username
                )));
            }
            Ok(())
        }
        PrincipalKind::ApiKey => {
            let key = store
                .list_api_keys()
                .await?
                .into_iter()
                .find(|k| k.id == p.id)
                .ok_or_else(|| ApiError::Unauthorized("the API key no longer exists".to_owned()))?;
            check_api_key_usable(&key)
        }
    }
}

fn api_key_principal(key: &callhome_store::ApiKey) -> Principal {
    Principal {
        id: key.id,
        name: format!("apikey:{}", key.name),
        kind: PrincipalKind::ApiKey,
        role: key.role,
        token_version: 0,
    }
}

fn check_api_key_usable(key: &callhome_store::ApiKey) -> Result<(), ApiError> {
    if key.revoked_at.is_some() {
        return Err(ApiError::Unauthorized(
            "the API key has been revoked".to_owned(),
        ));
    }
    if key
        .expires_at
        .is_some_and(|t| t <= OffsetDateTime::now_utc())
    {
        return Err(ApiError::Unauthorized("the API key has expired".to_owned()));
    }
    Ok(())
}

/// Resolves an API key (`chk_<prefix>_<secret>`) to a principal.
pub async fn authenticate_api_key(
    store: &Arc<dyn Store>,
    key: &str,
) -> Result<Principal, ApiError> {
    let invalid = || ApiError::Unauthorized("the API key is not valid".to_owned());
    let rest = key.strip_prefix(API_KEY_PREFIX).ok_or_else(invalid)?;
    let (prefix, _) = rest.split_once('_').ok_or_else(invalid)?;
    let record = match store.get_api_key_by_prefix(prefix).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Err(invalid()),
        Err(e) => return Err(e.into()),
    };
    let presented = hex::encode(Sha256::digest(key.as_bytes()));
    if !bool::from(presented.as_bytes().ct_eq(record.key_hash.as_bytes())) {
        return Err(invalid());
    }
    check_api_key_usable(&record)?;
    store
        .touch_api_key(record.id, OffsetDateTime::now_utc())
        .await?;
    Ok(api_key_principal(&record))
}

/// A new API key: the full secret (shown once), its prefix and its hash (stored).
pub fn generate_api_key() -> (String, String, String) {
    let mut bytes = [0u8; 36];
    rand::rng().fill_bytes(&mut bytes);
    let prefix = hex::encode(&bytes[..4]);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[4..]);
    let key = format!("{API_KEY_PREFIX}{prefix}_{secret}");
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    (key, prefix, hash)
}

/// Hashes a password with argon2id, within the process-wide bound on password hashing
/// (503 with `Retry-After` when every slot stays busy for the pool's wait).
pub async fn hash_password(pool: &PasswordPool, password: String) -> Result<String, ApiError> {
    pool.hash(password).await.map_err(ApiError::from)
}

/// Checks a password against a stored hash (`None`: unknown user, same time, `false`),
/// within the process-wide bound on password hashing.
pub async fn verify_password(
    pool: &PasswordPool,
    password: String,
    hash: Option<String>,
) -> Result<bool, ApiError> {
    pool.verify(password, hash).await.map_err(ApiError::from)
}

/// Checks a new password's strength: at least 12 characters, at most 1024.
pub fn check_password_policy(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < 12 {
        return Err(callhome_core::ValidationError::new(
            "password",
            format!("must be at least 12 characters, got {n}"),
        )
        .into());
    }
    if n > 1024 {
        return Err(callhome_core::ValidationError::new(
            "password",
            "must be at most 1024 characters",
        )
        .into());
    }
    Ok(())
}
