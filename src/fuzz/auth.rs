//! Credentials and keys: the `Authorization` header and JWTs (any header
//! and claims segments, signed tokens with any payload), API keys files
//! and the `apikey` header, and what an identity provider sends (a JWK
//! Set, a discovery document, `Cache-Control`).

use std::collections::HashSet;

use super::*;

const JWT_SECRET: &str = "fuzzing-secret-that-is-long-enough-0123456789";

fn jwt_auth() -> &'static crate::auth::Auth {
    static AUTH: std::sync::OnceLock<crate::auth::Auth> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let mut config = crate::config::ServeConfig::new("postgres://fuzz@localhost/fuzz");
        config.jwt_secret = Some(JWT_SECRET.to_string());
        crate::auth::Auth::new(&config).unwrap_or_else(|e| panic!("test auth: {e}"))
    })
}

fn api_keys_auth() -> &'static crate::auth::Auth {
    static AUTH: std::sync::OnceLock<crate::auth::Auth> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgrpc-fuzz-keys-{}", std::process::id()));
        let text = format!(
            "{} pgrpc_user {{\"sub\": \"fuzz\"}}\n",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"sb_secret_fuzz"))
        );
        std::fs::write(&dir, text).unwrap_or_else(|e| panic!("keys file: {e}"));
        let mut config = crate::config::ServeConfig::new("postgres://fuzz@localhost/fuzz");
        config.jwt_secret = Some(JWT_SECRET.to_string());
        config.api_keys = Some(dir.to_string_lossy().into_owned());
        let auth = crate::auth::Auth::new(&config).unwrap_or_else(|e| panic!("test auth: {e}"));
        // Read once, by Auth::new.
        let _ = std::fs::remove_file(&dir);
        auth
    })
}

/// JSON tokens of JWK Sets and discovery documents, so that members,
/// key types and nesting come up.
fn jwks_text() -> BoxedStrategy<String> {
    text_of(
        &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\"keys\"",
            "\"kty\"",
            "\"RSA\"",
            "\"EC\"",
            "\"OKP\"",
            "\"oct\"",
            "\"crv\"",
            "\"P-256\"",
            "\"Ed25519\"",
            "\"x\"",
            "\"y\"",
            "\"n\"",
            "\"e\"",
            "\"k\"",
            "\"kid\"",
            "\"alg\"",
            "\"use\"",
            "\"sig\"",
            "\"enc\"",
            "\"AQAB\"",
            "\"AA\"",
            "\"issuer\"",
            "\"jwks_uri\"",
            "\"http://a/j\"",
            "null",
            "true",
            "1",
            "-1",
            "1e999",
            "\\u0000",
            "é",
        ],
        200,
    )
}

proptest! {
    #![proptest_config(config())]

    // JWT: any Authorization header, any header and claims segments, and
    // correctly signed tokens with any payload give an identity or an
    // AuthError.
    #[test]
    fn tokens_give_an_identity_or_an_auth_error(
        authorization in prop_oneof![
            header_bytes(300),
            syntax_text().prop_map(|t| format!("Bearer {t}").into_bytes()),
        ],
        payload in prop_oneof![
            8 => syntax_text(),
            1 => nested("{\"a\":", "1", "}"),
            1 => Just("{\"role\":\"a\",\"role\":\"b\"}".to_string()),
            1 => Just("{\"role\":[1],\"exp\":\"soon\",\"aud\":{}}".to_string()),
        ],
    ) {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let auth = jwt_auth();
        let roles = HashSet::from(["pgrpc_user".to_string()]);
        bounded("identify", || auth.identify(Some(&authorization), &roles))?.ok();
        let unsigned = format!("{}.{}", b64(payload.as_bytes()), b64(payload.as_bytes()));
        bounded("strict_claims", || crate::auth::claims::strict_claims(&unsigned))?.ok();
        let message = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(payload.as_bytes()));
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let header = format!("Bearer {message}.{signature}");
        bounded("identify", || auth.identify(Some(header.as_bytes()), &roles))?.ok();
    }

    // API keys files: any text gives keys or an error naming what is
    // wrong, never more than the bound; any apikey header gives an
    // identity or an AuthError.
    #[test]
    fn api_keys_and_apikey_headers_parse_or_are_refused(
        file in prop_oneof![
            syntax_text(),
            text_of(&["0123456789abcdef", "a", " ", "\n", "#", "pgrpc_user", "{\"a\":1}", "[", "]", "{", "\"sha256\""], 200),
        ],
        apikey in prop_oneof![
            header_bytes(300),
            Just(b"sb_secret_fuzz".to_vec()),
            syntax_text().prop_map(String::into_bytes),
        ],
    ) {
        if let Ok(keys) = bounded("ApiKeys::parse", || crate::auth::api_keys::ApiKeys::parse(&file))? {
            prop_assert!(keys.len() <= crate::auth::api_keys::MAX_API_KEYS);
        }
        let auth = api_keys_auth();
        let roles = HashSet::from(["pgrpc_user".to_string()]);
        let id = bounded("identify_request", || auth.identify_request(None, Some(&apikey), &roles))?;
        if apikey == b"sb_secret_fuzz" {
            let role = id.map(|i| i.role).ok();
            prop_assert_eq!(role.as_deref(), Some("pgrpc_user"));
        }
    }

    // A fetched JWK Set, discovery document or Cache-Control value gives
    // keys, a URL, a max-age or a typed error, never a panic; a set that
    // parses holds at most MAX_KEYS keys, none of them symmetric.
    #[test]
    fn fetched_key_documents_parse_or_are_refused(
        body in prop_oneof![
            8 => jwks_text(),
            1 => nested("{\"keys\":[", "{\"kty\":\"oct\",\"k\":\"AA\"}", "]}"),
            1 => long("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"},"),
            1 => header_bytes(300).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
        cache_control in header_bytes(100),
    ) {
        use crate::auth::{jwks_fetch, jwks_parse};
        let wrapped = format!("{{\"keys\":[{body}]}}");
        for doc in [body.as_str(), wrapped.as_str()] {
            if let Ok(parsed) = bounded("parse_jwks", || jwks_parse::parse_jwks(doc.as_bytes()))? {
                prop_assert!(parsed.keys.len() <= jwks_fetch::MAX_KEYS);
                let accepted: serde_json::Value = serde_json::from_str(&parsed.fingerprint)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let members = accepted.as_array().cloned().unwrap_or_default();
                prop_assert!(members.iter().all(|m| m["kty"] != "oct"));
            }
            bounded("parse_discovery", || jwks_parse::parse_discovery(doc.as_bytes(), "http://a"))?.ok();
        }
        let value = String::from_utf8_lossy(&cache_control).into_owned();
        bounded("max_age", || jwks_fetch::max_age([value.as_str()]))?;
    }
}
