//! The `apikey` header supabase-js sends, and the opaque API keys an
//! operator lists in `PGRPC_API_KEYS`.
//!
//! - `Authorization` present (any scheme): it decides, and `apikey` is
//!   ignored, as Supabase's gateway lets the bearer token win. A bearer
//!   token that is a listed key runs as that key (supabase-js sends its
//!   key as the bearer token too when there is no session).
//! - No `Authorization`, `apikey` a listed key: the request runs as the
//!   key's role, with the key's claims.
//! - No `Authorization`, `apikey` a JWT: verified as the bearer token
//!   would be.
//! - Anything else in `apikey`: 401 `PGRST301`.
//!
//! The file lists SHA-256 digests, never keys. A presented key is hashed
//! and compared with every digest in constant time, so neither the time of
//! a match nor its place in the list tells anything about the keys.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{AuthError, Identity, MAX_TOKEN_BYTES};

/// The largest `PGRPC_API_KEYS` file read.
pub const MAX_API_KEYS_FILE_BYTES: usize = 1024 * 1024;
/// The most keys it may list.
pub const MAX_API_KEYS: usize = 1_000;
/// The largest claims object of one key, as JSON text.
pub const MAX_API_KEY_CLAIMS_BYTES: usize = 4 * 1024;
/// The longest `apikey` header value (a JWT's bound, `MAX_TOKEN_BYTES`).
pub const MAX_APIKEY_HEADER_BYTES: usize = MAX_TOKEN_BYTES;

/// One listed key: the digest it is found by, and who it runs as.
#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    role: String,
    /// `request.jwt.claims`: the configured claims, with `role` set.
    claims: String,
}

/// The keys of `PGRPC_API_KEYS`, checked and ready.
#[derive(Debug, Default)]
pub struct ApiKeys {
    entries: Vec<Entry>,
}

impl ApiKeys {
    /// Reads the file `PGRPC_API_KEYS` names (none: no keys).
    pub fn from_setting(path: Option<&str>) -> Result<ApiKeys, String> {
        let Some(path) = path.map(str::trim).filter(|p| !p.is_empty()) else {
            return Ok(ApiKeys::default());
        };
        let path = path.strip_prefix('@').unwrap_or(path);
        let meta = std::fs::metadata(path).map_err(|e| format!("PGRPC_API_KEYS: {path}: {e}"))?;
        if meta.len() > MAX_API_KEYS_FILE_BYTES as u64 {
            return Err(format!(
                "PGRPC_API_KEYS: {path} has {} bytes; at most {MAX_API_KEYS_FILE_BYTES} are read",
                meta.len()
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("PGRPC_API_KEYS: {path}: {e}"))?;
        ApiKeys::parse(&text).map_err(|e| format!("PGRPC_API_KEYS: {path}: {e}"))
    }

    /// The file's text: a JSON array (its first character `[`), or lines
    /// of `<sha256 hex> <role> [<claims JSON object>]`; blank lines and
    /// lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        if text.len() > MAX_API_KEYS_FILE_BYTES {
            return Err(format!(
                "{} bytes; at most {MAX_API_KEYS_FILE_BYTES} are read",
                text.len()
            ));
        }
        let mut keys = ApiKeys::default();
        if text.trim_start().starts_with('[') {
            let items: Vec<Value> =
                serde_json::from_str(text).map_err(|e| format!("not a JSON array: {e}"))?;
            for (i, item) in items.iter().enumerate() {
                let at = |e: String| format!("entry {}: {e}", i + 1);
                let Value::Object(o) = item else {
                    return Err(at("must be an object".into()));
                };
                if let Some(other) = o
                    .keys()
                    .find(|k| !matches!(k.as_str(), "sha256" | "role" | "claims"))
                {
                    return Err(at(format!("unknown member {other:?}")));
                }
                let text_of = |name: &str| o.get(name).and_then(Value::as_str);
                let digest = text_of("sha256").ok_or_else(|| at("sha256 is required".into()))?;
                let role = text_of("role").ok_or_else(|| at("role is required".into()))?;
                let claims = match o.get("claims") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.to_string()),
                };
                keys.push(digest, role, claims.as_deref()).map_err(at)?;
            }
        } else {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = |e: String| format!("line {}: {e}", n + 1);
                let (digest, rest) = line
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| at("expected `<sha256 hex> <role> [<claims>]`".into()))?;
                let rest = rest.trim_start();
                let (role, claims) = match rest.split_once(char::is_whitespace) {
                    Some((role, claims)) => (role, Some(claims.trim())),
                    None => (rest, None),
                };
                keys.push(digest, role, claims).map_err(at)?;
            }
        }
        Ok(keys)
    }

    fn push(&mut self, digest: &str, role: &str, claims: Option<&str>) -> Result<(), String> {
        if self.entries.len() == MAX_API_KEYS {
            return Err(format!("at most {MAX_API_KEYS} keys may be listed"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digest, &mut bytes)
            .map_err(|_| "the key's SHA-256 must be 64 hex digits".to_string())?;
        if role.is_empty()
            || role.len() > 63
            || role.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err("the role must be a role name of 1 to 63 bytes".into());
        }
        let mut map = match claims.filter(|c| !c.is_empty()) {
            None => Map::new(),
            Some(c) if c.len() > MAX_API_KEY_CLAIMS_BYTES => {
                return Err(format!(
                    "the claims may be at most {MAX_API_KEY_CLAIMS_BYTES} bytes of JSON"
                ))
            }
            Some(c) => match serde_json::from_str::<Value>(c) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err("the claims must be a JSON object".into()),
                Err(e) => return Err(format!("the claims are not JSON: {e}")),
            },
        };
        if self.entries.iter().any(|e| e.digest == bytes) {
            return Err("this key is listed twice".into());
        }
        // As for a token: `role` in request.jwt.claims is the role run as.
        map.insert("role".into(), Value::String(role.to_string()));
        self.entries.push(Entry {
            digest: bytes,
            role: role.to_string(),
            claims: Value::Object(map).to_string(),
        });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a presented key: its SHA-256 compared with every
    /// listed digest, in constant time, without stopping at a match.
    fn find(&self, key: &[u8]) -> Option<&Entry> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let mut found = None;
        for entry in &self.entries {
            if constant_time_eq(&entry.digest, &digest) {
                found = Some(entry);
            }
        }
        found
    }
}

/// Whether `a` and `b` are equal, reading every byte of both whatever
/// they hold.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A JWT's shape: three base64url parts separated by dots.
fn looks_like_jwt(key: &[u8]) -> bool {
    key.iter().filter(|b| **b == b'.').count() == 2
        && key
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

impl super::Auth {
    /// Who a request runs as, from its `Authorization` and `apikey`
    /// headers (see the module's rules). `assumable` as in `identify`.
    pub fn identify_request(
        &self,
        authorization: Option<&[u8]>,
        apikey: Option<&[u8]>,
        assumable: &std::collections::HashSet<String>,
    ) -> Result<Identity, AuthError> {
        if let Some(header) = authorization {
            // A listed key as the bearer token; a JWT never is one, and
            // is left to `identify` unhashed.
            let listed = super::bearer_token(header)
                .map(<[u8]>::trim_ascii)
                .filter(|t| !self.api_keys.is_empty() && !looks_like_jwt(t))
                .and_then(|t| self.api_keys.find(t));
            return match listed {
                Some(entry) => self.key_identity(entry, assumable),
                None => self.identify(authorization, assumable),
            };
        }
        let Some(key) = apikey else {
            return self.identify(None, assumable);
        };
        let key = key.trim_ascii();
        if key.is_empty() {
            return Err(AuthError::Malformed("The apikey header is empty".into()));
        }
        if key.len() > MAX_APIKEY_HEADER_BYTES {
            return Err(AuthError::Malformed(format!(
                "The apikey header may be at most {MAX_APIKEY_HEADER_BYTES} bytes"
            )));
        }
        if let Some(entry) = self.api_keys.find(key) {
            return self.key_identity(entry, assumable);
        }
        if looks_like_jwt(key) {
            let mut bearer = Vec::with_capacity(7 + key.len());
            bearer.extend_from_slice(b"Bearer ");
            bearer.extend_from_slice(key);
            return self.identify(Some(&bearer), assumable);
        }
        Err(AuthError::Malformed(
            "The apikey header holds neither a JWT nor a key listed in PGRPC_API_KEYS".into(),
        ))
    }

    /// A listed key's identity, if the authenticator may assume its role.
    fn key_identity(
        &self,
        entry: &Entry,
        assumable: &std::collections::HashSet<String>,
    ) -> Result<Identity, AuthError> {
        let role = entry.role.clone();
        if role != self.anon_role && !assumable.contains(&role) {
            return Err(AuthError::RoleNotAssumable(role));
        }
        Ok(Identity {
            anon: role == self.anon_role,
            role,
            claims: entry.claims.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeConfig;
    use std::collections::HashSet;

    fn sha(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    fn roles() -> HashSet<String> {
        ["pgrpc_user", "pgrpc_service", "pgrpc_anon"]
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    fn auth_with_keys(text: &str) -> crate::auth::Auth {
        let mut config = ServeConfig::new("postgres://unused");
        config.jwt_secret = Some("unit-test-secret-that-is-long-enough-0123".into());
        let mut auth = crate::auth::Auth::new(&config).expect("auth");
        auth.api_keys = ApiKeys::parse(text).expect("keys");
        auth
    }

    // Lines and JSON give the same keys; role and claims reach the identity.
    #[test]
    fn listed_keys_map_to_their_role_and_claims() {
        let lines = format!(
            "# keys\n\n{} pgrpc_service {{\"sub\": \"billing\", \"role\": \"ignored\"}}\n{}  pgrpc_anon\n",
            sha("sb_secret_abc"),
            sha("sb_publishable_xyz")
        );
        let json = format!(
            r#"[{{"sha256": "{}", "role": "pgrpc_service", "claims": {{"sub": "billing"}}}},
                {{"sha256": "{}", "role": "pgrpc_anon"}}]"#,
            sha("sb_secret_abc"),
            sha("sb_publishable_xyz")
        );
        for text in [lines, json] {
            let auth = auth_with_keys(&text);
            let id = auth
                .identify_request(None, Some(b" sb_secret_abc "), &roles())
                .expect("secret key");
            assert_eq!(id.role, "pgrpc_service");
            assert!(!id.anon);
            let claims: Value = serde_json::from_str(&id.claims).expect("claims");
            assert_eq!(
                claims,
                serde_json::json!({"sub": "billing", "role": "pgrpc_service"})
            );
            let id = auth
                .identify_request(None, Some(b"sb_publishable_xyz"), &roles())
                .expect("publishable key");
            assert!(id.anon);
            // Authorization wins, whatever apikey holds.
            let id = auth
                .identify_request(Some(b"Basic x"), Some(b"sb_secret_abc"), &roles())
                .expect("authorization wins");
            assert!(id.anon);
            // supabase-js without a session: the key as the bearer token too.
            let id = auth
                .identify_request(
                    Some(b"Bearer sb_secret_abc"),
                    Some(b"sb_publishable_xyz"),
                    &roles(),
                )
                .expect("a listed bearer key");
            assert_eq!(id.role, "pgrpc_service");
            assert!(auth
                .identify_request(Some(b"Bearer sb_secret_abd"), None, &roles())
                .is_err());
            for bad in [&b"sb_secret_abd"[..], b"", b"   ", b"a.b"] {
                assert!(
                    auth.identify_request(None, Some(bad), &roles()).is_err(),
                    "{bad:?}"
                );
            }
        }
    }

    // A key whose role the authenticator may not assume is refused.
    #[test]
    fn a_key_for_a_foreign_role_is_refused() {
        let auth = auth_with_keys(&format!("{} postgres", sha("k")));
        assert!(matches!(
            auth.identify_request(None, Some(b"k"), &roles()),
            Err(AuthError::RoleNotAssumable(_))
        ));
    }

    // Malformed files name the line and the fault; bounds are enforced.
    #[test]
    fn malformed_files_are_refused() {
        let good = sha("k");
        for (text, fault) in [
            ("abc pgrpc_user".to_string(), "line 1"),
            (good.clone(), "line 1"),
            (format!("{good} pgrpc_user [1]"), "JSON object"),
            (format!("{good} pgrpc_user {{"), "not JSON"),
            (format!("{good} pgrpc_user\n{good} pgrpc_anon"), "twice"),
            (format!("[{{\"sha256\": \"{good}\"}}]"), "role is required"),
            (
                format!("[{{\"sha256\": \"{good}\", \"role\": \"r\", \"x\": 1}}]"),
                "unknown member",
            ),
            (
                format!("{good} pgrpc_user {{\"a\": \"{}\"}}", "x".repeat(5000)),
                "at most",
            ),
            ("x".repeat(MAX_API_KEYS_FILE_BYTES + 1), "at most"),
        ] {
            let err = ApiKeys::parse(&text).expect_err(fault);
            assert!(err.contains(fault), "{err} (wanted {fault})");
        }
        let many: String = (0..=MAX_API_KEYS)
            .map(|i| format!("{} pgrpc_user\n", sha(&i.to_string())))
            .collect();
        let err = ApiKeys::parse(&many).expect_err("too many");
        assert!(err.contains("at most 1000 keys"), "{err}");
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] = 8;
        assert!(!constant_time_eq(&a, &b));
    }
}
