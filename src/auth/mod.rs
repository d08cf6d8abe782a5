//! The JWT check: which key verifies a token, which claims it must pass,
//! and the role the request runs as. The database refuses roles the
//! authenticator is not a member of; this check answers 401 before
//! anything runs.
//!
//! - [`keys`]: `PGRPC_JWT_SECRET` as an HS256 secret, a JWK or a JWK Set,
//!   and signature verification by `kid` and `alg`.
//! - [`claims`]: strict reading of the claims, and the `exp`, `nbf`, `iat`
//!   and `aud` checks.
//! - [`role_claim`]: `PGRPC_JWT_ROLE_CLAIM_KEY`, the JSPath to the role.
//! - [`cache`]: the bounded cache of validated tokens.
//! - [`jwks`], [`jwks_fetch`] and [`jwks_parse`]: keys fetched from a JWK
//!   Set URL or an OpenID Connect issuer, refreshed on their max-age and on
//!   an unknown `kid`, and the bounded fetch and parsers behind them.
//! - [`identify`]: who a request runs as, from its `Authorization` (and
//!   `apikey`) header: anonymous, or the verified token's role if the
//!   authenticator may assume it.
//! - [`verify`]: a token's signature, claims and role, through the cache
//!   of validated tokens.

pub mod api_keys;
pub mod cache;
pub mod claims;
mod identify;
pub mod jwks;
pub mod jwks_fetch;
pub mod jwks_parse;
pub mod keys;
pub mod role_claim;
mod verify;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::error::{Fault, Pgrst};
use cache::TokenCache;
use identify::bearer_token;
use jwks::RemoteKeys;
use keys::Keys;
use role_claim::RoleClaimKey;

/// The longest bearer token accepted, checked before any decoding: a
/// token is refused with 401 PGRST301 past it (docs/limits.md).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a request's credentials are refused: 401, nothing runs.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Authorization header is not valid UTF-8")]
    HeaderNotUtf8,
    #[error("Empty JWT is sent in Authorization header")]
    EmptyToken,
    #[error("Server lacks JWT secret: tokens cannot be verified")]
    SecretMissing,
    #[error("JWT expired")]
    Expired,
    #[error("JWT not yet valid")]
    NotYetValid,
    #[error("JWT issued at future")]
    IssuedInFuture,
    #[error("JWT not in audience")]
    NotInAudience,
    #[error("JWT issuer is not the configured issuer")]
    WrongIssuer,
    #[error("The JWT 'aud' claim must be a string or an array of strings")]
    AudNotStringOrArray,
    #[error("The JWT '{0}' claim must be a number")]
    ClaimNotNumber(&'static str),
    #[error("No suitable key or wrong key type")]
    UnknownKid,
    #[error("JWT algorithm is not accepted by the configured keys")]
    BadAlgorithm,
    #[error("JWT signature does not match")]
    BadSignature,
    #[error("JWT cannot be decoded")]
    Undecodable,
    #[error("{0}")]
    Malformed(String),
    #[error("JWT role claim must be a string")]
    RoleNotString,
    #[error("JWT role claim names a role this server may not assume")]
    RoleNotAssumable(String),
}

impl Fault for AuthError {
    fn pgrst(&self) -> Pgrst {
        match self {
            AuthError::SecretMissing => Pgrst::JwtSecretMissing,
            AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::IssuedInFuture
            | AuthError::NotInAudience
            | AuthError::WrongIssuer
            | AuthError::AudNotStringOrArray
            | AuthError::ClaimNotNumber(_)
            | AuthError::RoleNotString
            | AuthError::RoleNotAssumable(_) => Pgrst::JwtClaims,
            AuthError::HeaderNotUtf8
            | AuthError::EmptyToken
            | AuthError::UnknownKid
            | AuthError::BadAlgorithm
            | AuthError::BadSignature
            | AuthError::Undecodable
            | AuthError::Malformed(_) => Pgrst::JwtDecode,
        }
    }
    fn details(&self) -> Option<String> {
        match self {
            AuthError::RoleNotAssumable(role) => Some(format!(
                "role {role:?} is not a request role of the authenticator"
            )),
            _ => None,
        }
    }
}

/// Who a request runs as.
#[derive(Debug)]
pub struct Identity {
    pub role: String,
    /// The claims as JSON text, for `request.jwt.claims`.
    pub claims: String,
    pub anon: bool,
}

/// The JWT settings of `ServeConfig`, checked and ready: built once at
/// startup and shared by every request.
pub struct Auth {
    keys: Option<Keys>,
    /// Keys fetched from `PGRPC_JWT_JWKS_URL` or `PGRPC_JWT_OIDC_ISSUER`.
    remote: Option<Arc<RemoteKeys>>,
    /// The fetched keys' generation the token cache was filled under.
    cache_generation: AtomicU64,
    role_claim: RoleClaimKey,
    audience: Option<String>,
    leeway: i64,
    cache: TokenCache,
    anon_role: String,
    /// `{"role":<anon_role>}`: an anonymous request's claims, written once.
    anon_claims: String,
    /// `PGRPC_API_KEYS`: opaque keys of the `apikey` header (`api_keys`).
    api_keys: api_keys::ApiKeys,
}

#[cfg(test)]
#[path = "../../tests/fixtures/jwt_test_keys.rs"]
mod test_keys;

#[cfg(test)]
mod test_support;
