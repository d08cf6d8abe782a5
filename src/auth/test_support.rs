//! Helpers of the `auth` unit tests: a secret, the roles, `Auth` built
//! from settings, and tokens signed with the test keys.

use std::collections::HashSet;

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::test_keys::*;
use super::Auth;
use crate::config::ServeConfig;

pub(super) const SECRET: &str = "unit-test-secret-that-is-long-enough-0123";

pub(super) fn roles() -> HashSet<String> {
    ["pgrpc_user".to_string(), "pgrpc_anon".to_string()]
        .into_iter()
        .collect()
}

pub(super) fn auth_with(tune: impl FnOnce(&mut ServeConfig)) -> Auth {
    let mut config = ServeConfig::new("postgres://unused");
    config.jwt_secret = Some(SECRET.into());
    tune(&mut config);
    Auth::new(&config).expect("valid JWT settings")
}

pub(super) fn auth() -> Auth {
    auth_with(|_| {})
}

pub(super) fn sign(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

pub(super) fn der(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("test key is base64")
}

/// Signs with a test key: `alg` picks the key, `kid` goes in the header.
pub(super) fn sign_with(alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
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

pub(super) fn es256_jwk(kid: &str) -> Value {
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": TEST_ES256A_X, "y": TEST_ES256A_Y})
}

pub(super) fn all_test_jwks() -> String {
    json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "other", "x": TEST_ES256B_X, "y": TEST_ES256B_Y},
        es256_jwk("es256"),
        {"kty": "EC", "crv": "P-384", "kid": "es384", "x": TEST_ES384_X, "y": TEST_ES384_Y},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": TEST_ED25519_X},
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": TEST_RS256_N, "e": TEST_RS256_E, "use": "sig"},
    ]})
    .to_string()
}

pub(super) fn code_of(auth: &Auth, header: &str) -> (u16, String) {
    let err = crate::error::ApiError::from(
        auth.identify(Some(header.as_bytes()), &roles())
            .expect_err(header),
    );
    (err.status.as_u16(), err.code)
}
