//! The keys that verify signatures, read from `PGRPC_JWT_SECRET` as
//! PostgREST reads `jwt-secret`: an HS256 secret of at least 32
//! characters, a JWK, or a JWK Set (`{"keys": [...]}`), given inline or as
//! `@/path/to/file`. Keys are checked when the server starts, so a key that
//! could never verify anything stops it there instead of refusing every
//! request later.

use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tracing::warn;

use super::AuthError;
use crate::config::MIN_JWT_SECRET_LEN;

const SETTING: &str = "PGRPC_JWT_SECRET";

/// Every key a token may be signed with.
pub struct Keys {
    keys: Vec<Key>,
    /// Given as JWKs: a token's `kid` must then name one of them. A plain
    /// secret has no key id, so a token's `kid` is not looked at.
    by_kid: bool,
}

pub(super) struct Key {
    kid: Option<String>,
    /// What this key may verify: the JWK's `alg` when it names one,
    /// otherwise every signature algorithm of its key type and curve.
    algorithms: Vec<Algorithm>,
    decoding: DecodingKey,
}

impl Keys {
    /// Reads the setting; the error names it and says what to fix.
    pub fn from_setting(value: &str) -> Result<Keys, String> {
        let text = match value.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("{SETTING}: cannot read {path}: {e}"))?,
            None => value.to_string(),
        };
        if text.trim_start().starts_with('{') {
            Self::from_json(text.trim())
        } else {
            Self::from_secret(&text)
        }
    }

    fn from_secret(secret: &str) -> Result<Keys, String> {
        if secret.chars().count() < MIN_JWT_SECRET_LEN {
            return Err(format!(
                "{SETTING} must be at least {MIN_JWT_SECRET_LEN} characters"
            ));
        }
        Ok(Keys {
            keys: vec![Key {
                kid: None,
                algorithms: vec![Algorithm::HS256],
                decoding: DecodingKey::from_secret(secret.as_bytes()),
            }],
            by_kid: false,
        })
    }

    fn from_json(text: &str) -> Result<Keys, String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("{SETTING} starts with '{{' but is not a valid JWK: {e}"))?;
        let members = match value.get("keys") {
            Some(Value::Array(keys)) => keys.clone(),
            Some(_) => return Err(format!("{SETTING}: a JWK Set's \"keys\" must be an array")),
            None => vec![value],
        };
        let mut keys = Vec::with_capacity(members.len());
        for (i, member) in members.into_iter().enumerate() {
            let name = match member.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("key {i} (kid {kid:?})"),
                None => format!("key {i}"),
            };
            if member.get("d").is_some() {
                warn!(
                    key = %name,
                    "{SETTING} holds a private key; the server needs only the public part"
                );
            }
            let jwk: Jwk = serde_json::from_value(member)
                .map_err(|e| format!("{SETTING}: {name} is not a valid JWK: {e}"))?;
            if let Some(key) = Key::from_jwk(&jwk).map_err(|e| format!("{SETTING}: {name}: {e}"))? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(format!("{SETTING} has no key for verifying signatures"));
        }
        Ok(Keys { keys, by_kid: true })
    }

    /// Keys taken from a fetched JWK Set (`jwks_fetch`), selected by `kid`.
    pub(super) fn from_fetched(keys: Vec<Key>) -> Keys {
        Keys { keys, by_kid: true }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies the token's signature with the key its header selects: by
    /// `kid` when it has one, else each key that fits its `alg` in turn.
    pub fn verify(&self, token: &str) -> Result<(), AuthError> {
        let (message, signature) = match token.split('.').count() {
            3 => token.rsplit_once('.').ok_or(AuthError::Undecodable)?,
            _ => return Err(AuthError::Malformed("JWT must have three parts".into())),
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Undecodable)?;
        let mut candidates: Vec<&Key> = self.keys.iter().collect();
        if let (true, Some(kid)) = (self.by_kid, &header.kid) {
            candidates.retain(|k| k.kid.as_deref() == Some(kid.as_str()));
            if candidates.is_empty() {
                return Err(AuthError::UnknownKid);
            }
        }
        candidates.retain(|k| k.algorithms.contains(&header.alg));
        if candidates.is_empty() {
            return Err(AuthError::BadAlgorithm);
        }
        for key in candidates {
            // Err only for a signature that is not base64url: the key and
            // the algorithm were matched above.
            match jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                &key.decoding,
                header.alg,
            ) {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(_) => return Err(AuthError::Undecodable),
            }
        }
        Err(AuthError::BadSignature)
    }
}

impl Key {
    /// A verifying key, `None` for a key meant for encryption, or why the
    /// JWK cannot verify anything.
    pub(super) fn from_jwk(jwk: &Jwk) -> Result<Option<Key>, String> {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Ok(None);
        }
        if let Some(ops) = &jwk.common.key_operations {
            if !ops.contains(&KeyOperations::Verify) {
                return Ok(None);
            }
        }
        let fitting = fitting_algorithms(&jwk.algorithm)?;
        let algorithms = match jwk.common.key_algorithm {
            None => fitting,
            Some(KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256) => {
                return Ok(None)
            }
            Some(named) => {
                let alg = Algorithm::try_from(named)
                    .map_err(|_| "\"alg\" is not a supported signature algorithm".to_string())?;
                if !fitting.contains(&alg) {
                    return Err(format!("\"alg\" {alg:?} does not fit this key's type"));
                }
                vec![alg]
            }
        };
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        // A dry run: an EC or Ed25519 point that is not on its curve fails
        // here rather than on the first request.
        jsonwebtoken::crypto::verify("AA", b"probe", &decoding, algorithms[0])
            .map_err(|e| format!("the key cannot verify {:?} signatures: {e}", algorithms[0]))?;
        Ok(Some(Key {
            kid: jwk.common.key_id.clone(),
            algorithms,
            decoding,
        }))
    }
}

/// The signature algorithms a key of this type and curve can verify, after
/// checking its material's size.
fn fitting_algorithms(params: &AlgorithmParameters) -> Result<Vec<Algorithm>, String> {
    use Algorithm::*;
    match params {
        AlgorithmParameters::RSA(p) => {
            let n = b64url(&p.n, "n")?;
            let e = b64url(&p.e, "e")?;
            let bits = significant_bits(&n);
            if !(2048..=4096).contains(&bits) {
                return Err(format!(
                    "RSA modulus has {bits} bits; 2048 to 4096 are accepted"
                ));
            }
            if significant_bits(&e) < 2 || e.len() > 8 || e.last().is_some_and(|b| b % 2 == 0) {
                return Err("RSA exponent \"e\" is not a valid public exponent".into());
            }
            Ok(vec![RS256, RS384, RS512, PS256, PS384, PS512])
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (size, alg) = match p.curve {
                EllipticCurve::P256 => (32, ES256),
                EllipticCurve::P384 => (48, ES384),
                ref other => return Err(format!("EC curve {other:?} is not supported")),
            };
            for (name, coordinate) in [("x", &p.x), ("y", &p.y)] {
                if b64url(coordinate, name)?.len() != size {
                    return Err(format!("EC \"{name}\" must be {size} bytes"));
                }
            }
            Ok(vec![alg])
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("OKP curve {:?} is not supported", p.curve));
            }
            if b64url(&p.x, "x")?.len() != 32 {
                return Err("Ed25519 \"x\" must be 32 bytes".into());
            }
            Ok(vec![EdDSA])
        }
        AlgorithmParameters::OctetKey(p) => {
            if b64url(&p.value, "k")?.len() < MIN_JWT_SECRET_LEN {
                return Err(format!(
                    "oct key \"k\" must be at least {MIN_JWT_SECRET_LEN} bytes"
                ));
            }
            Ok(vec![HS256, HS384, HS512])
        }
        // Untagged: a known kty that lacks a member it needs lands here too.
        AlgorithmParameters::Other(p) => Err(format!(
            "kty {} is not supported, or the key lacks a member its type needs (RSA: n, e; \
             EC: crv, x, y; OKP: crv, x; oct: k)",
            p.fields.get("kty").unwrap_or(&Value::Null)
        )),
        _ => Err("key type \"kty\" is not supported".into()),
    }
}

fn b64url(text: &str, member: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("\"{member}\" is not base64url: {e}"))
}

fn significant_bits(big_endian: &[u8]) -> usize {
    match big_endian.iter().position(|&b| b != 0) {
        Some(i) => (big_endian.len() - i - 1) * 8 + (8 - big_endian[i].leading_zeros() as usize),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_keys::*;
    use super::*;
    use serde_json::json;

    fn refusal(setting: &str) -> String {
        match Keys::from_setting(setting) {
            Ok(_) => panic!("accepted: {setting}"),
            Err(e) => e,
        }
    }

    fn ec(x: &str, y: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": x, "y": y})
    }

    // Each form PostgREST accepts loads: secret, JWK, JWKS, and each from a file.
    #[test]
    fn every_accepted_form_loads() {
        let jwk = ec(TEST_ES256A_X, TEST_ES256A_Y).to_string();
        let jwks = json!({"keys": [
            ec(TEST_ES256A_X, TEST_ES256A_Y),
            {"kty": "RSA", "n": TEST_RS256_N, "e": TEST_RS256_E},
            {"kty": "OKP", "crv": "Ed25519", "x": TEST_ED25519_X},
            {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0w"},
        ]})
        .to_string();
        for setting in ["a-secret-of-thirty-two-characters", &jwk, &jwks] {
            assert!(Keys::from_setting(setting).is_ok(), "{setting}");
        }
        assert_eq!(
            Keys::from_setting(&jwks).map(|k| k.keys.len()).ok(),
            Some(4)
        );
        let dir = std::env::temp_dir().join(format!("pgrpc-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (name, body) in [
            ("secret", "a-secret-of-thirty-two-characters\n"),
            ("jwks", &jwks),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, body).expect("write key file");
            assert!(
                Keys::from_setting(&format!("@{}", path.display())).is_ok(),
                "{name} from a file"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Keys that could never verify a token stop startup, naming the setting and the key.
    #[test]
    fn unusable_keys_are_refused_at_startup() {
        // y = x: the right size, and not a point on P-256.
        let off_curve = ec(TEST_ES256A_X, TEST_ES256A_X);
        let cases = [
            ("short secret".to_string(), "at least 32 characters"),
            ("{not json".to_string(), "not a valid JWK"),
            (json!({"keys": {}}).to_string(), "must be an array"),
            (json!({"keys": []}).to_string(), "no key for verifying"),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AA"}).to_string(),
                "lacks a member",
            ),
            (ec(TEST_ES256A_X, "AAAA").to_string(), "must be 32 bytes"),
            (off_curve.to_string(), "cannot verify"),
            (
                json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}).to_string(),
                "not supported",
            ),
            (
                json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}).to_string(),
                "2048 to 4096",
            ),
            (
                json!({"kty": "RSA", "n": TEST_RS256_N, "e": "AA"}).to_string(),
                "public exponent",
            ),
            (
                json!({"kty": "RSA", "alg": "ES256", "n": TEST_RS256_N, "e": "AQAB"}).to_string(),
                "does not fit",
            ),
            (
                json!({"kty": "RSA", "alg": "ES512", "n": TEST_RS256_N, "e": "AQAB"}).to_string(),
                "not a supported signature algorithm",
            ),
            (
                json!({"kty": "oct", "k": "c2hvcnQ"}).to_string(),
                "at least 32 bytes",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}).to_string(),
                "32 bytes",
            ),
            (
                json!({"keys": [{"kty": "RSA", "use": "enc", "n": TEST_RS256_N, "e": "AQAB"}]})
                    .to_string(),
                "no key for verifying",
            ),
            ("@/nonexistent/pgrpc/jwks.json".to_string(), "cannot read"),
        ];
        for (setting, expected) in cases {
            let err = refusal(&setting);
            assert!(err.starts_with(SETTING), "{setting}: {err}");
            assert!(err.contains(expected), "{setting}: {err}");
        }
    }

    // Encryption keys in a set are skipped, and the signing keys still load.
    #[test]
    fn encryption_keys_are_skipped() {
        let jwks = json!({"keys": [
            {"kty": "RSA", "use": "enc", "n": TEST_RS256_N, "e": "AQAB"},
            {"kty": "RSA", "alg": "RSA-OAEP", "n": TEST_RS256_N, "e": "AQAB"},
            {"kty": "RSA", "key_ops": ["encrypt"], "n": TEST_RS256_N, "e": "AQAB"},
            ec(TEST_ES256A_X, TEST_ES256A_Y),
        ]});
        let keys = Keys::from_setting(&jwks.to_string()).expect("one signing key");
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.keys[0].algorithms, vec![Algorithm::ES256]);
    }
}
