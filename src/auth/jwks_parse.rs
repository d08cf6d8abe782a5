//! The parsers of what an identity provider sends: an OpenID Connect
//! discovery document (its `jwks_uri`, for the configured issuer only) and
//! a JWK Set (its asymmetric verifying keys, at most
//! [`MAX_KEYS`](super::jwks_fetch::MAX_KEYS)). Whatever the bytes, they
//! give a URL, keys or a [`FetchError`].
//!
//! Only asymmetric keys are taken from a fetched set. A JWK Set is public
//! by design, so an `oct` key in it is a secret anyone can read: signing an
//! HS256 token with it would forge any role. Such keys are skipped.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use serde_json::Value;
use tracing::warn;

use super::jwks_fetch::{parse_url, FetchError, MAX_KEYS};
use super::keys::{Key, Keys};

/// The `jwks_uri` of an issuer's discovery document, after checking that
/// the document names the same issuer (OpenID Connect Discovery §4.3).
pub fn parse_discovery(body: &[u8], issuer: &str) -> Result<String, FetchError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| FetchError::Discovery(format!("is not JSON: {e}")))?;
    let Value::Object(doc) = doc else {
        return Err(FetchError::Discovery("is not a JSON object".into()));
    };
    match doc.get("issuer").and_then(Value::as_str) {
        Some(named) if named == issuer => {}
        Some(named) => {
            return Err(FetchError::Discovery(format!(
                "names issuer {:?}, not {issuer:?}",
                named.chars().take(200).collect::<String>()
            )))
        }
        None => return Err(FetchError::Discovery("has no \"issuer\" string".into())),
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| FetchError::Discovery("has no \"jwks_uri\" string".into()))?;
    let parsed = parse_url(uri).map_err(|e| FetchError::Discovery(format!("\"jwks_uri\": {e}")))?;
    if issuer.starts_with("https:") && parsed.scheme_str() != Some("https") {
        return Err(FetchError::Discovery(
            "\"jwks_uri\" must be https for an https issuer".into(),
        ));
    }
    Ok(uri.to_string())
}

/// What a JWK Set gave: the verifying keys, and a fingerprint that
/// changes exactly when they do.
pub struct ParsedSet {
    pub keys: Keys,
    pub fingerprint: String,
    /// Members left out: symmetric, unsupported or invalid keys.
    pub skipped: usize,
}

/// The verifying keys of a fetched JWK Set. The set is refused whole past
/// [`MAX_KEYS`] or when no member can verify; a member that cannot (an
/// `oct` key, an encryption key, a curve this server does not support) is
/// skipped and logged, so one odd key does not lose the others.
pub fn parse_jwks(body: &[u8]) -> Result<ParsedSet, FetchError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| FetchError::Jwks(format!("is not JSON: {e}")))?;
    let members = match doc.get("keys") {
        Some(Value::Array(keys)) => keys,
        _ => return Err(FetchError::Jwks("has no \"keys\" array".into())),
    };
    if members.len() > MAX_KEYS {
        return Err(FetchError::Jwks(format!(
            "holds {} keys; at most {MAX_KEYS} are accepted",
            members.len()
        )));
    }
    let mut keys = Vec::new();
    let mut accepted = Vec::new();
    let mut skipped = 0;
    for (i, member) in members.iter().enumerate() {
        let kid = member.get("kid").and_then(Value::as_str).unwrap_or("");
        match fetched_key(member) {
            Ok(Some(key)) => {
                keys.push(key);
                accepted.push(member);
            }
            Ok(None) => skipped += 1,
            Err(reason) => {
                skipped += 1;
                warn!(key = i, kid = %kid.chars().take(100).collect::<String>(), %reason,
                    "a fetched JWK is skipped");
            }
        }
    }
    if keys.is_empty() {
        return Err(FetchError::Jwks(
            "has no asymmetric key for verifying signatures".into(),
        ));
    }
    Ok(ParsedSet {
        keys: Keys::from_fetched(keys),
        fingerprint: Value::Array(accepted.into_iter().cloned().collect()).to_string(),
        skipped,
    })
}

/// A fetched member as a verifying key: `None` for an encryption key,
/// an error for a symmetric or unusable one.
fn fetched_key(member: &Value) -> Result<Option<Key>, String> {
    if member.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err(
            "an oct (symmetric) key in a published JWK Set is readable by anyone; \
                    it never verifies a token"
                .into(),
        );
    }
    let jwk: Jwk = serde_json::from_value(member.clone()).map_err(|e| e.to_string())?;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return Err("symmetric keys are not taken from a fetched JWK Set".into());
    }
    Key::from_jwk(&jwk)
}

#[cfg(test)]
mod tests {
    use super::super::jwks_fetch::discovery_url;
    use super::super::test_keys::*;
    use super::*;
    use serde_json::json;

    fn ed(kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": TEST_ED25519_X})
    }
    // A set past MAX_KEYS is refused before any key is read; oct keys never load.
    #[test]
    fn a_fetched_set_is_bounded_and_asymmetric_only() {
        let many: Vec<Value> = (0..=MAX_KEYS).map(|i| ed(&format!("k{i}"))).collect();
        let doc = json!({"keys": many}).to_string();
        let err = parse_jwks(doc.as_bytes()).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("at most 1000")),
            "{err:?}"
        );

        let oct = json!({"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0w"});
        let only_oct = json!({"keys": [oct]}).to_string();
        assert!(parse_jwks(only_oct.as_bytes()).is_err());
        let mixed = json!({"keys": [oct, ed("ed"),
            {"kty": "EC", "crv": "P-521", "kid": "odd", "x": "AA", "y": "AA"}]})
        .to_string();
        let parsed = parse_jwks(mixed.as_bytes()).expect("the Ed25519 key loads");
        assert_eq!((parsed.keys.len(), parsed.skipped), (1, 2));
        for bad in ["", "[]", "{}", "{\"keys\": {}}", "{\"keys\": []}", "nul"] {
            assert!(parse_jwks(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    // The fingerprint changes exactly when the accepted keys do.
    #[test]
    fn the_fingerprint_follows_the_keys() {
        let fp = |v: Value| {
            parse_jwks(v.to_string().as_bytes())
                .map(|p| p.fingerprint)
                .ok()
        };
        let a = fp(json!({"keys": [ed("a")]}));
        assert_eq!(a, fp(json!({"keys": [ed("a"), {"kty": "oct", "k": "AA"}]})));
        assert_ne!(a, fp(json!({"keys": [ed("b")]})));
    }

    // The discovery document must name the configured issuer and an http(s) jwks_uri.
    #[test]
    fn discovery_names_the_issuer_and_its_keys() {
        let issuer = "https://idp.example.com";
        let doc = |v: Value| v.to_string().into_bytes();
        assert_eq!(
            parse_discovery(
                &doc(json!({"issuer": issuer, "jwks_uri": "https://keys.example.com/jwks"})),
                issuer
            )
            .ok()
            .as_deref(),
            Some("https://keys.example.com/jwks")
        );
        for bad in [
            json!({"issuer": "https://evil.example.com", "jwks_uri": "https://x/jwks"}),
            json!({"jwks_uri": "https://x/jwks"}),
            json!({"issuer": issuer}),
            json!({"issuer": issuer, "jwks_uri": "file:///etc/passwd"}),
            json!({"issuer": issuer, "jwks_uri": "http://idp.example.com/jwks"}),
            json!([issuer]),
        ] {
            assert!(parse_discovery(&doc(bad.clone()), issuer).is_err(), "{bad}");
        }
        assert_eq!(
            discovery_url("https://idp.example.com/"),
            "https://idp.example.com/.well-known/openid-configuration"
        );
    }
}
