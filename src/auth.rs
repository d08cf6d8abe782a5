//! The JWT check: HS256 verification, expiry with leeway, and the role the
//! request runs as. The database refuses roles the authenticator is not a
//! member of; this check answers 401 before anything runs.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Fault, Pgrst};

/// Why a request's credentials are refused: 401, nothing runs.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Authorization header is not valid UTF-8")]
    HeaderNotUtf8,
    #[error("Authorization header must be 'Bearer <token>'")]
    NotBearer,
    #[error("Empty JWT in the Authorization header")]
    EmptyToken,
    #[error("Server lacks JWT secret: tokens cannot be verified")]
    SecretMissing,
    #[error("JWT expired")]
    Expired,
    #[error("JWT not yet valid (nbf)")]
    NotYetValid,
    #[error("JWT signature does not match")]
    BadSignature,
    #[error("JWT algorithm must be HS256")]
    BadAlgorithm,
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
            | AuthError::RoleNotString
            | AuthError::RoleNotAssumable(_) => Pgrst::JwtClaims,
            _ => Pgrst::JwtDecode,
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

pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
    anon_role: String,
}

impl Auth {
    pub fn new(secret: Option<&str>, leeway_secs: u64, anon_role: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // exp is checked when present, as PostgREST does; aud is not configured.
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = leeway_secs;
        Auth {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
            anon_role: anon_role.to_string(),
        }
    }

    pub fn anon_role(&self) -> &str {
        &self.anon_role
    }

    /// Resolves the `Authorization` header. `assumable` is the set of roles
    /// the authenticator may switch to.
    pub fn identify(
        &self,
        authorization: Option<&[u8]>,
        assumable: &HashSet<String>,
    ) -> Result<Identity, AuthError> {
        let Some(raw) = authorization else {
            return Ok(Identity {
                role: self.anon_role.clone(),
                claims: format!("{{\"role\":{}}}", Value::String(self.anon_role.clone())),
                anon: true,
            });
        };
        let header = std::str::from_utf8(raw).map_err(|_| AuthError::HeaderNotUtf8)?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(AuthError::NotBearer),
        };
        if token.is_empty() {
            return Err(AuthError::EmptyToken);
        }
        let Some(key) = &self.key else {
            return Err(AuthError::SecretMissing);
        };
        jsonwebtoken::decode::<IgnoredAny>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidSignature => AuthError::BadSignature,
                K::InvalidAlgorithm => AuthError::BadAlgorithm,
                _ => AuthError::Undecodable,
            }
        })?;
        let claims = strict_claims(token)?;
        let role = match claims.get("role") {
            None | Some(Value::Null) => self.anon_role.clone(),
            Some(Value::String(r)) => r.clone(),
            Some(_) => return Err(AuthError::RoleNotString),
        };
        if role != self.anon_role && !assumable.contains(&role) {
            return Err(AuthError::RoleNotAssumable(role));
        }
        let anon = role == self.anon_role;
        Ok(Identity {
            role,
            claims: Value::Object(claims).to_string(),
            anon,
        })
    }
}

/// The verified token's claims, read strictly: a member name given twice
/// (`{"role":"a","role":"b"}`) is refused rather than resolved one way
/// here and maybe another by the next reader, and so is a `crit` header,
/// since this server implements no JWS extension (RFC 7515 §4.1.11).
fn strict_claims(token: &str) -> Result<Map<String, Value>, AuthError> {
    let refuse = AuthError::Malformed;
    let mut parts = token.split('.');
    let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
        return Err(refuse("JWT must have three parts".into()));
    };
    let header = strict_object(header).map_err(|e| refuse(format!("JWT header: {e}")))?;
    if header.contains_key("crit") {
        return Err(refuse(
            "JWT header 'crit' names extensions this server does not implement".into(),
        ));
    }
    strict_object(payload).map_err(|e| refuse(format!("JWT claims: {e}")))
}

fn strict_object(segment: &str) -> Result<Map<String, Value>, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|e| e.to_string())?;
    match serde_json::from_slice::<Strict>(&bytes).map_err(|e| e.to_string())? {
        Strict(Value::Object(map)) => Ok(map),
        Strict(_) => Err("not a JSON object".into()),
    }
}

/// A JSON value whose objects never repeat a member name.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "member {key:?} is given twice"
                )));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-that-is-long-enough-0123";

    fn roles() -> HashSet<String> {
        ["pgrpc_user".to_string(), "pgrpc_anon".to_string()]
            .into_iter()
            .collect()
    }

    fn sign(claims: Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    #[test]
    fn no_header_is_anonymous() {
        let auth = Auth::new(Some(SECRET), 30, "pgrpc_anon");
        let id = auth.identify(None, &roles()).expect("anon");
        assert_eq!(id.role, "pgrpc_anon");
        assert!(id.anon);
    }

    #[test]
    fn valid_token_selects_its_role() {
        let auth = Auth::new(Some(SECRET), 30, "pgrpc_anon");
        let t = format!(
            "Bearer {}",
            sign(json!({"role": "pgrpc_user", "sub": "u"}), SECRET)
        );
        let id = auth.identify(Some(t.as_bytes()), &roles()).expect("user");
        assert_eq!(id.role, "pgrpc_user");
        assert!(id.claims.contains("\"sub\":\"u\""));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = Auth::new(Some(SECRET), 30, "pgrpc_anon");
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
        let foreign = format!("Bearer {}", sign(json!({"role": "postgres"}), SECRET));
        for (header, code) in [
            (wrong.as_str(), "PGRST301"),
            (expired.as_str(), "PGRST303"),
            (foreign.as_str(), "PGRST303"),
            ("Bearer not.a.jwt", "PGRST301"),
            ("Basic abc", "PGRST301"),
            ("Bearer ", "PGRST301"),
        ] {
            let err = crate::error::ApiError::from(
                auth.identify(Some(header.as_bytes()), &roles())
                    .expect_err(header),
            );
            assert_eq!(err.status.as_u16(), 401, "{header}");
            assert_eq!(err.code, code, "{header}");
        }
    }

    /// Signs `header.payload` as given, byte for byte.
    fn sign_raw(header: &str, payload: &str) -> String {
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let input = format!("{}.{}", b64(header), b64(payload));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
        mac.update(input.as_bytes());
        format!("Bearer {input}.{}", b64_bytes(&mac.finalize().into_bytes()))
    }

    fn b64_bytes(b: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn duplicate_claims_and_unknown_crit_are_refused() {
        let auth = Auth::new(Some(SECRET), 30, "pgrpc_anon");
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
            let err = crate::error::ApiError::from(
                auth.identify(Some(t.as_bytes()), &roles()).expect_err(&t),
            );
            assert_eq!(
                (err.status.as_u16(), err.code.as_str()),
                (401, "PGRST301"),
                "{t}"
            );
        }
    }

    #[test]
    fn expiry_allows_leeway() {
        let auth = Auth::new(Some(SECRET), 30, "pgrpc_anon");
        let t = format!(
            "Bearer {}",
            sign(
                json!({"role": "pgrpc_user", "exp": chrono::Utc::now().timestamp() - 10}),
                SECRET
            )
        );
        assert!(auth.identify(Some(t.as_bytes()), &roles()).is_ok());
    }
}
