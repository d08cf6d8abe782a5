//! A token's check: its signature against `PGRPC_JWT_SECRET`'s keys and
//! the fetched ones, its claims (time, audience, issuer), its role found
//! by the role claim key, and the cache of validated tokens, cleared when
//! the fetched keys change.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;

use super::cache::Verified;
use super::claims::{self, ClaimRules};
use super::{Auth, AuthError};

impl Auth {
    /// The token's role and claims, from the cache or by verifying it.
    pub(super) fn verify(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;
    use std::collections::HashSet;

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
