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
//! - [`jwks`] and [`jwks_fetch`]: keys fetched from a JWK Set URL or an
//!   OpenID Connect issuer, refreshed on their max-age and on an unknown
//!   `kid`, and the bounded fetch and parsers behind them.

pub mod api_keys;
pub mod cache;
pub mod claims;
pub mod jwks;
pub mod jwks_fetch;
pub mod keys;
pub mod role_claim;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::config::ServeConfig;
use crate::error::{Fault, Pgrst};
use cache::{TokenCache, Verified};
use claims::ClaimRules;
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
    /// `PGRPC_API_KEYS`: opaque keys of the `apikey` header (`api_keys`).
    api_keys: api_keys::ApiKeys,
}

impl Auth {
    /// Reads the JWT settings; the error names the setting to fix.
    pub fn new(config: &ServeConfig) -> Result<Auth, String> {
        let keys = config
            .jwt_secret
            .as_deref()
            .map(Keys::from_setting)
            .transpose()?;
        let role_claim = RoleClaimKey::parse(&config.jwt_role_claim_key)
            .map_err(|e| format!("PGRPC_JWT_ROLE_CLAIM_KEY: {e}"))?;
        let remote = RemoteKeys::from_config(config)?.map(Arc::new);
        Ok(Auth {
            keys,
            remote,
            cache_generation: AtomicU64::new(0),
            role_claim,
            audience: config.jwt_aud.clone(),
            leeway: i64::try_from(config.jwt_leeway_secs).unwrap_or(i64::MAX),
            cache: TokenCache::new(config.jwt_cache_max_entries),
            anon_role: config.anon_role.clone(),
            api_keys: api_keys::ApiKeys::from_setting(config.api_keys.as_deref())?,
        })
    }

    pub fn anon_role(&self) -> &str {
        &self.anon_role
    }

    /// Fetches the provider's keys (startup fails without them, unless a
    /// cache file has them) and refreshes them in the background until
    /// `stop`. Nothing to do without `PGRPC_JWT_JWKS_URL` or
    /// `PGRPC_JWT_OIDC_ISSUER`.
    pub async fn start_key_refresh(
        &self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), String> {
        if let Some(remote) = &self.remote {
            remote.start().await?;
            tokio::spawn(remote.clone().run(stop));
        }
        Ok(())
    }

    /// Runs `check` (an `identify`), and once more after a refresh of the
    /// fetched keys if it failed on a `kid` no key has: a key published at
    /// the provider is accepted without a restart. The refresh is shared
    /// and rate-limited (`jwks::RemoteKeys::refresh_for_unknown_kid`).
    pub async fn with_fresh_keys<T>(
        &self,
        check: impl Fn() -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        match (check(), &self.remote) {
            (Err(AuthError::UnknownKid), Some(remote)) => {
                remote.refresh_for_unknown_kid().await;
                check()
            }
            (outcome, _) => outcome,
        }
    }

    /// [`Auth::identify_request`] under [`Auth::with_fresh_keys`]: who a
    /// request runs as, with the fetched keys refreshed once for a `kid`
    /// no key has. Every request path identifies its caller through it.
    pub async fn identify_fresh(
        &self,
        authorization: Option<&[u8]>,
        apikey: Option<&[u8]>,
        assumable: &std::collections::HashSet<String>,
    ) -> Result<Identity, AuthError> {
        self.with_fresh_keys(|| self.identify_request(authorization, apikey, assumable))
            .await
    }

    /// Resolves the `Authorization` header. `assumable` is the set of roles
    /// the authenticator may switch to. A scheme other than Bearer is not
    /// ours to judge (a gateway's Basic credentials, say): the request runs
    /// as anonymous, as in PostgREST.
    pub fn identify(
        &self,
        authorization: Option<&[u8]>,
        assumable: &HashSet<String>,
    ) -> Result<Identity, AuthError> {
        let Some(token) = authorization.and_then(bearer_token) else {
            return Ok(self.anonymous());
        };
        let token = std::str::from_utf8(token)
            .map_err(|_| AuthError::HeaderNotUtf8)?
            .trim();
        if token.is_empty() {
            return Err(AuthError::EmptyToken);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed(format!(
                "JWT may be at most {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let verified = self.verify(token)?;
        let role = verified.role.clone();
        if role != self.anon_role && !assumable.contains(&role) {
            return Err(AuthError::RoleNotAssumable(role));
        }
        Ok(Identity {
            anon: role == self.anon_role,
            role,
            claims: verified.claims.clone(),
        })
    }

    fn anonymous(&self) -> Identity {
        Identity {
            role: self.anon_role.clone(),
            claims: format!("{{\"role\":{}}}", Value::String(self.anon_role.clone())),
            anon: true,
        }
    }

    /// The token's role and claims, from the cache or by verifying it.
    fn verify(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let generation = self.remote.as_ref().map(|r| r.generation());
        if let Some(g) = generation {
            // The fetched keys changed: a cached token may have been signed
            // by a key that is gone.
            if self.cache_generation.swap(g, Ordering::SeqCst) != g {
                self.cache.clear();
            }
        }
        if let Some(hit) = self.cache.get(token, now) {
            return Ok(hit);
        }
        self.verify_signature(token)?;
        let claims = claims::strict_claims(token)?;
        let rules = ClaimRules {
            leeway: self.leeway,
            audience: self.audience.as_deref(),
        };
        claims::check(&claims, &rules, now)?;
        if let Some(issuer) = self.remote.as_ref().and_then(|r| r.issuer()) {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
                return Err(AuthError::WrongIssuer);
            }
        }
        let valid_until = claims::valid_until(&claims, self.leeway);
        let mut claims = Value::Object(claims);
        let role = match self.role_claim.find(&claims) {
            None | Some(Value::Null) => self.anon_role.clone(),
            Some(Value::String(r)) => r.clone(),
            Some(_) => return Err(AuthError::RoleNotString),
        };
        // As PostgREST does: `role` in request.jwt.claims is the role the
        // request runs as, wherever the role claim key found it.
        claims["role"] = Value::String(role.clone());
        let verified = Arc::new(Verified {
            role,
            claims: claims.to_string(),
        });
        self.cache.insert(token, verified.clone(), valid_until);
        if generation.is_some_and(|g| self.remote.as_ref().map(|r| r.generation()) != Some(g)) {
            // The keys changed while this token was checked against the
            // old ones: drop what may have been cached under them.
            self.cache.clear();
        }
        Ok(verified)
    }

    /// Checks the signature with `PGRPC_JWT_SECRET`'s keys, then, if none of
    /// them verifies it, with the fetched keys. The fetched keys' error
    /// wins, so that an unknown `kid` among them can trigger a refresh,
    /// except that a signature a `PGRPC_JWT_SECRET` key found wrong is
    /// reported as such when no fetched key fits the algorithm.
    fn verify_signature(&self, token: &str) -> Result<(), AuthError> {
        let fetched = self.remote.as_ref().and_then(|r| r.current());
        let local = match (&self.keys, &fetched) {
            (None, None) => return Err(AuthError::SecretMissing),
            (Some(keys), _) => keys.verify(token),
            (None, Some(_)) => Err(AuthError::UnknownKid),
        };
        match (local, &fetched) {
            (
                Err(
                    local @ (AuthError::UnknownKid
                    | AuthError::BadAlgorithm
                    | AuthError::BadSignature),
                ),
                Some(keys),
            ) => match (local, keys.verify(token)) {
                (AuthError::BadSignature, Err(AuthError::BadAlgorithm)) => {
                    Err(AuthError::BadSignature)
                }
                (_, fetched) => fetched,
            },
            (outcome, _) => outcome,
        }
    }
}

/// The token of a `Bearer` credential (the scheme in any case), or `None`
/// for another scheme.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let split = header
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(header.len());
    let (scheme, rest) = header.split_at(split);
    scheme.eq_ignore_ascii_case(b"bearer").then_some(rest)
}

#[cfg(test)]
#[path = "../../tests/fixtures/jwt_test_keys.rs"]
mod test_keys;

#[cfg(test)]
mod tests {
    use super::test_keys::*;
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-that-is-long-enough-0123";

    fn roles() -> HashSet<String> {
        ["pgrpc_user".to_string(), "pgrpc_anon".to_string()]
            .into_iter()
            .collect()
    }

    fn auth_with(tune: impl FnOnce(&mut ServeConfig)) -> Auth {
        let mut config = ServeConfig::new("postgres://unused");
        config.jwt_secret = Some(SECRET.into());
        tune(&mut config);
        Auth::new(&config).expect("valid JWT settings")
    }

    fn auth() -> Auth {
        auth_with(|_| {})
    }

    fn sign(claims: Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn der(b64: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("test key is base64")
    }

    /// Signs with a test key: `alg` picks the key, `kid` goes in the header.
    fn sign_with(alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_der(&der(TEST_ES256A_PRIVATE_PKCS8)),
            Algorithm::ES384 => EncodingKey::from_ec_der(&der(TEST_ES384_PRIVATE_PKCS8)),
            Algorithm::EdDSA => EncodingKey::from_ed_der(&der(TEST_ED25519_PRIVATE_PKCS8)),
            _ => EncodingKey::from_rsa_der(&der(TEST_RS256_PRIVATE_PKCS1)),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        format!("Bearer {}", encode(&header, &claims, &key).expect("sign"))
    }

    fn es256_jwk(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": TEST_ES256A_X, "y": TEST_ES256A_Y})
    }

    fn all_test_jwks() -> String {
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "other", "x": TEST_ES256B_X, "y": TEST_ES256B_Y},
            es256_jwk("es256"),
            {"kty": "EC", "crv": "P-384", "kid": "es384", "x": TEST_ES384_X, "y": TEST_ES384_Y},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": TEST_ED25519_X},
            {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": TEST_RS256_N, "e": TEST_RS256_E, "use": "sig"},
        ]})
        .to_string()
    }

    fn code_of(auth: &Auth, header: &str) -> (u16, String) {
        let err = crate::error::ApiError::from(
            auth.identify(Some(header.as_bytes()), &roles())
                .expect_err(header),
        );
        (err.status.as_u16(), err.code)
    }

    // No Authorization header runs as the anon role.
    #[test]
    fn no_header_is_anonymous() {
        let id = auth().identify(None, &roles()).expect("anon");
        assert_eq!(id.role, "pgrpc_anon");
        assert!(id.anon);
    }

    // A scheme other than Bearer is ignored and runs as anonymous, as in PostgREST.
    #[test]
    fn other_schemes_run_as_anonymous() {
        let auth = auth();
        for header in ["Basic dXNlcjpwYXNz", "Token abc", "Bearerish x", "basic x"] {
            let id = auth
                .identify(Some(header.as_bytes()), &roles())
                .expect(header);
            assert!(id.anon, "{header}");
        }
        let id = auth
            .identify(Some(b"Digest \xff\xfe"), &roles())
            .expect("non-UTF-8 credentials of another scheme");
        assert!(id.anon);
    }

    // A valid HS256 token selects its role, and its claims carry that role.
    #[test]
    fn valid_token_selects_its_role() {
        let t = format!(
            "bearer  {}",
            sign(json!({"role": "pgrpc_user", "sub": "u"}), SECRET)
        );
        let id = auth().identify(Some(t.as_bytes()), &roles()).expect("user");
        assert_eq!(id.role, "pgrpc_user");
        assert!(!id.anon);
        let claims: Value = serde_json::from_str(&id.claims).expect("claims JSON");
        assert_eq!(claims, json!({"role": "pgrpc_user", "sub": "u"}));
    }

    // Wrong key, expiry, foreign roles, garbage and empty tokens are refused with their codes.
    #[test]
    fn bad_tokens_are_refused() {
        let auth = auth();
        let wrong = format!(
            "Bearer {}",
            sign(
                json!({"role": "pgrpc_user"}),
                "another-secret-another-secret-0000"
            )
        );
        let expired = format!(
            "Bearer {}",
            sign(
                json!({"role": "pgrpc_user", "exp": chrono::Utc::now().timestamp() - 120}),
                SECRET
            )
        );
        let future = format!(
            "Bearer {}",
            sign(
                json!({"role": "pgrpc_user", "iat": chrono::Utc::now().timestamp() + 120}),
                SECRET
            )
        );
        let text_exp = format!(
            "Bearer {}",
            sign(json!({"role": "pgrpc_user", "exp": "tomorrow"}), SECRET)
        );
        let numeric_aud = format!(
            "Bearer {}",
            sign(json!({"role": "pgrpc_user", "aud": 7}), SECRET)
        );
        let foreign = format!("Bearer {}", sign(json!({"role": "postgres"}), SECRET));
        for (header, code) in [
            (wrong.as_str(), "PGRST301"),
            (expired.as_str(), "PGRST303"),
            (future.as_str(), "PGRST303"),
            (text_exp.as_str(), "PGRST303"),
            (numeric_aud.as_str(), "PGRST303"),
            (foreign.as_str(), "PGRST303"),
            ("Bearer not.a.jwt", "PGRST301"),
            ("Bearer a.b", "PGRST301"),
            ("Bearer ", "PGRST301"),
            ("Bearer", "PGRST301"),
        ] {
            assert_eq!(code_of(&auth, header), (401, code.to_string()), "{header}");
        }
    }

    /// Signs `header.payload` as given, byte for byte.
    fn sign_raw(header: &str, payload: &str) -> String {
        use hmac::{Hmac, Mac};
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let input = format!("{}.{}", b64(header), b64(payload));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
        mac.update(input.as_bytes());
        format!("Bearer {input}.{}", b64_bytes(&mac.finalize().into_bytes()))
    }

    fn b64_bytes(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    // Duplicate member names and an unknown crit header are refused even when signed.
    #[test]
    fn duplicate_claims_and_unknown_crit_are_refused() {
        let auth = auth();
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let ok = sign_raw(hs, r#"{"role":"pgrpc_user"}"#);
        assert!(auth.identify(Some(ok.as_bytes()), &roles()).is_ok());
        for t in [
            sign_raw(hs, r#"{"role":"pgrpc_anon","role":"pgrpc_user"}"#),
            sign_raw(hs, r#"{"role":"pgrpc_user","app":{"a":1,"a":2}}"#),
            sign_raw(
                r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
                r#"{"role":"pgrpc_user"}"#,
            ),
            sign_raw(
                r#"{"alg":"HS256","alg":"none"}"#,
                r#"{"role":"pgrpc_user"}"#,
            ),
        ] {
            assert_eq!(code_of(&auth, &t), (401, "PGRST301".to_string()), "{t}");
        }
    }

    // An expired token within the leeway still passes.
    #[test]
    fn expiry_allows_leeway() {
        let t = format!(
            "Bearer {}",
            sign(
                json!({"role": "pgrpc_user", "exp": chrono::Utc::now().timestamp() - 10}),
                SECRET
            )
        );
        assert!(auth().identify(Some(t.as_bytes()), &roles()).is_ok());
    }

    // The role claim key finds a nested or URL-named role, and request.jwt.claims.role is that role.
    #[test]
    fn role_claim_key_finds_nested_roles() {
        let auth = auth_with(|c| c.jwt_role_claim_key = ".app_metadata.role".into());
        let t = format!(
            "Bearer {}",
            sign(
                json!({"role": "authenticated", "app_metadata": {"role": "pgrpc_user"}}),
                SECRET
            )
        );
        let id = auth.identify(Some(t.as_bytes()), &roles()).expect("user");
        assert_eq!(id.role, "pgrpc_user");
        let claims: Value = serde_json::from_str(&id.claims).expect("claims JSON");
        assert_eq!(claims["role"], "pgrpc_user");
        assert_eq!(claims["app_metadata"]["role"], "pgrpc_user");

        let auth = auth_with(|c| c.jwt_role_claim_key = ".\"https://example.com/roles\"[1]".into());
        let t = format!(
            "Bearer {}",
            sign(
                json!({"https://example.com/roles": ["viewer", "pgrpc_user"]}),
                SECRET
            )
        );
        let id = auth.identify(Some(t.as_bytes()), &roles()).expect("user");
        assert_eq!(id.role, "pgrpc_user");
        let none = format!("Bearer {}", sign(json!({"role": "pgrpc_user"}), SECRET));
        let id = auth
            .identify(Some(none.as_bytes()), &roles())
            .expect("anon");
        assert!(id.anon, "a token without the claim runs as anon");
    }

    // With PGRPC_JWT_AUD set, a token for another audience is refused; one without aud passes.
    #[test]
    fn audience_is_checked_when_configured() {
        let auth = auth_with(|c| c.jwt_aud = Some("pgrpc".into()));
        let with = |aud: Value| {
            format!(
                "Bearer {}",
                sign(json!({"role": "pgrpc_user", "aud": aud}), SECRET)
            )
        };
        for ok in [
            json!("pgrpc"),
            json!(["x", "pgrpc"]),
            json!(null),
            json!([]),
        ] {
            let t = with(ok.clone());
            assert!(auth.identify(Some(t.as_bytes()), &roles()).is_ok(), "{ok}");
        }
        let none = format!("Bearer {}", sign(json!({"role": "pgrpc_user"}), SECRET));
        assert!(auth.identify(Some(none.as_bytes()), &roles()).is_ok());
        for bad in [
            json!("other"),
            json!(["other"]),
            json!(1),
            json!(["pgrpc", 2]),
        ] {
            assert_eq!(
                code_of(&auth, &with(bad.clone())),
                (401, "PGRST303".to_string()),
                "{bad}"
            );
        }
    }

    // Tokens signed with each asymmetric algorithm verify against a JWKS, by kid or without one.
    #[test]
    fn jwks_verifies_every_asymmetric_algorithm() {
        let auth = auth_with(|c| c.jwt_secret = Some(all_test_jwks()));
        let claims = json!({"role": "pgrpc_user"});
        for (alg, kid) in [
            (Algorithm::ES256, "es256"),
            (Algorithm::ES384, "es384"),
            (Algorithm::EdDSA, "ed"),
            (Algorithm::RS256, "rsa"),
        ] {
            for kid in [Some(kid), None] {
                let t = sign_with(alg, kid, claims.clone());
                let id = auth
                    .identify(Some(t.as_bytes()), &roles())
                    .unwrap_or_else(|e| panic!("{alg:?} kid {kid:?}: {e}"));
                assert_eq!(id.role, "pgrpc_user");
            }
        }
    }

    // A kid that names no key, or names a key of another key, is refused.
    #[test]
    fn kid_selects_the_key() {
        let auth = auth_with(|c| c.jwt_secret = Some(all_test_jwks()));
        let claims = json!({"role": "pgrpc_user"});
        let unknown = sign_with(Algorithm::ES256, Some("nope"), claims.clone());
        assert_eq!(code_of(&auth, &unknown), (401, "PGRST301".to_string()));
        // Signed by key A, labelled as key B: only B is tried.
        let mislabelled = sign_with(Algorithm::ES256, Some("other"), claims.clone());
        assert!(matches!(
            auth.identify(Some(mislabelled.as_bytes()), &roles()),
            Err(AuthError::BadSignature)
        ));
        // The RSA key says alg RS256: a PS256 or RS512 token is not for it.
        let rs512 = sign_with(Algorithm::RS512, Some("rsa"), claims);
        assert!(matches!(
            auth.identify(Some(rs512.as_bytes()), &roles()),
            Err(AuthError::BadAlgorithm)
        ));
    }

    // An HS256 token keyed with a public key's bytes is refused: a key's type fixes its algorithms.
    #[test]
    fn algorithm_confusion_is_refused() {
        let auth = auth_with(|c| c.jwt_secret = Some(es256_jwk("es256").to_string()));
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"role": "pgrpc_user"}),
            &EncodingKey::from_secret(es256_jwk("es256").to_string().as_bytes()),
        )
        .expect("sign");
        assert!(matches!(
            auth.identify(Some(format!("Bearer {forged}").as_bytes()), &roles()),
            Err(AuthError::BadAlgorithm)
        ));
        // And an HS256 secret does not accept an ES256 token.
        let es = sign_with(Algorithm::ES256, None, json!({"role": "pgrpc_user"}));
        assert!(matches!(
            auth_with(|_| {}).identify(Some(es.as_bytes()), &roles()),
            Err(AuthError::BadAlgorithm)
        ));
    }

    // A plain secret ignores the token's kid, as before JWK support.
    #[test]
    fn a_plain_secret_ignores_kid() {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("anything".into());
        let t = encode(
            &header,
            &json!({"role": "pgrpc_user"}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        assert!(auth()
            .identify(Some(format!("Bearer {t}").as_bytes()), &roles())
            .is_ok());
    }

    // A verified token is cached once; a refused one never is.
    #[test]
    fn only_good_tokens_are_cached() {
        let auth = auth();
        let good = format!("Bearer {}", sign(json!({"role": "pgrpc_user"}), SECRET));
        for _ in 0..3 {
            assert!(auth.identify(Some(good.as_bytes()), &roles()).is_ok());
        }
        assert_eq!(auth.cache.len(), 1);
        let expired = format!(
            "Bearer {}",
            sign(json!({"role": "pgrpc_user", "exp": 1}), SECRET)
        );
        let wrong = format!(
            "Bearer {}",
            sign(json!({"role": "pgrpc_user"}), &"x".repeat(40))
        );
        for bad in [&expired, &wrong] {
            for _ in 0..2 {
                assert!(auth.identify(Some(bad.as_bytes()), &roles()).is_err());
            }
        }
        assert_eq!(auth.cache.len(), 1, "refused tokens are not cached");
        let off = auth_with(|c| c.jwt_cache_max_entries = 0);
        assert!(off.identify(Some(good.as_bytes()), &roles()).is_ok());
        assert_eq!(off.cache.len(), 0);
    }

    // A cached token is still refused for a role the authenticator may no longer assume.
    #[test]
    fn a_cached_token_is_still_checked_for_its_role() {
        let auth = auth();
        let t = format!("Bearer {}", sign(json!({"role": "pgrpc_user"}), SECRET));
        assert!(auth.identify(Some(t.as_bytes()), &roles()).is_ok());
        let fewer: HashSet<String> = ["pgrpc_anon".to_string()].into_iter().collect();
        assert!(matches!(
            auth.identify(Some(t.as_bytes()), &fewer),
            Err(AuthError::RoleNotAssumable(_))
        ));
    }

    // A cached token stops passing once its exp (plus leeway) is past.
    #[test]
    fn a_cached_token_expires() {
        let auth = auth_with(|c| c.jwt_leeway_secs = 0);
        let exp = chrono::Utc::now().timestamp() + 1;
        let t = format!(
            "Bearer {}",
            sign(json!({"role": "pgrpc_user", "exp": exp}), SECRET)
        );
        assert!(auth.identify(Some(t.as_bytes()), &roles()).is_ok());
        while chrono::Utc::now().timestamp() <= exp {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(matches!(
            auth.identify(Some(t.as_bytes()), &roles()),
            Err(AuthError::Expired)
        ));
    }
}
