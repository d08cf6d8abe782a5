//! Who a request runs as: [`Auth`] built from the settings, the
//! `Authorization` header's Bearer token (another scheme runs as
//! anonymous), its role checked against the roles the authenticator may
//! assume, and one retry after a refresh of the fetched keys for a `kid`
//! no key has.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::Value;

use super::cache::TokenCache;
use super::jwks::RemoteKeys;
use super::keys::Keys;
use super::role_claim::RoleClaimKey;
use super::{api_keys, Auth, AuthError, Identity, MAX_TOKEN_BYTES};
use crate::config::ServeConfig;

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
            anon_claims: format!("{{\"role\":{}}}", Value::String(config.anon_role.clone())),
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
                // Boxed: the fetch's future is large and rare; inline, it
                // would size every request's future.
                Box::pin(remote.refresh_for_unknown_kid()).await;
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
            claims: self.anon_claims.clone(),
            anon: true,
        }
    }
}

/// The token of a `Bearer` credential (the scheme in any case), or `None`
/// for another scheme.
pub(super) fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let split = header
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(header.len());
    let (scheme, rest) = header.split_at(split);
    scheme.eq_ignore_ascii_case(b"bearer").then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use serde_json::json;

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
}
