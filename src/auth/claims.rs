//! A verified token's claims: read strictly, then checked as PostgREST
//! checks them (`exp`, `nbf`, `iat` with leeway, and `aud`).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::AuthError;

/// The token's header and claims, read strictly: a member name given twice
/// (`{"role":"a","role":"b"}`) is refused rather than resolved one way
/// here and maybe another by the next reader, and so is a `crit` header,
/// since this server implements no JWS extension (RFC 7515 §4.1.11).
pub fn strict_claims(token: &str) -> Result<Map<String, Value>, AuthError> {
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

/// What the claims are checked against.
pub struct ClaimRules<'a> {
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: i64,
    /// `PGRPC_JWT_AUD`: when set, an `aud` claim must name it.
    pub audience: Option<&'a str>,
}

/// Checks the registered claims at `now` (Unix seconds), in PostgREST's
/// order. An absent or null claim passes; a present one of the wrong type
/// is refused whether or not its check is configured.
pub fn check(claims: &Map<String, Value>, rules: &ClaimRules, now: i64) -> Result<(), AuthError> {
    if let Some(exp) = numeric_date(claims, "exp")? {
        if now.saturating_sub(rules.leeway) > exp {
            return Err(AuthError::Expired);
        }
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now.saturating_add(rules.leeway) {
            return Err(AuthError::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if iat > now.saturating_add(rules.leeway) {
            return Err(AuthError::IssuedInFuture);
        }
    }
    check_audience(claims.get("aud"), rules.audience)
}

/// The last second at which the claims still pass the `exp` check, if they
/// have an `exp`: how long a verified token may be remembered.
pub fn valid_until(claims: &Map<String, Value>, leeway: i64) -> Option<i64> {
    numeric_date(claims, "exp")
        .ok()
        .flatten()
        .map(|exp| exp.saturating_add(leeway))
}

/// A NumericDate claim (RFC 7519 §2): seconds, possibly fractional.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n
            .as_i64()
            // Out of i64 range or fractional: `as` saturates, floor keeps
            // a fraction of a second from extending a deadline.
            .or_else(|| n.as_f64().map(|f| f.floor() as i64))),
        Some(_) => Err(AuthError::ClaimNotNumber(name)),
    }
}

/// PostgREST's rule: a string must equal the audience, an array must
/// contain it; no `aud`, null or `[]` is meant for every audience.
fn check_audience(aud: Option<&Value>, audience: Option<&str>) -> Result<(), AuthError> {
    let matches = |a: &str| audience.is_none_or(|want| want == a);
    match aud {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(a)) if matches(a) => Ok(()),
        Some(Value::String(_)) => Err(AuthError::NotInAudience),
        Some(Value::Array(items)) => {
            let mut named = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(a) => named.push(a.as_str()),
                    _ => return Err(AuthError::AudNotStringOrArray),
                }
            }
            if named.is_empty() || named.into_iter().any(matches) {
                Ok(())
            } else {
                Err(AuthError::NotInAudience)
            }
        }
        Some(_) => Err(AuthError::AudNotStringOrArray),
    }
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
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn run(claims: Value, audience: Option<&str>) -> Result<(), AuthError> {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        check(
            &map,
            &ClaimRules {
                leeway: 30,
                audience,
            },
            NOW,
        )
    }

    // Time claims pass within the leeway and fail beyond it, each with its own error.
    #[test]
    fn time_claims_allow_the_leeway_and_no_more() {
        assert!(run(
            json!({"exp": NOW - 30, "nbf": NOW + 30, "iat": NOW + 30}),
            None
        )
        .is_ok());
        assert!(matches!(
            run(json!({"exp": NOW - 31}), None),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            run(json!({"nbf": NOW + 31}), None),
            Err(AuthError::NotYetValid)
        ));
        assert!(matches!(
            run(json!({"iat": NOW + 31}), None),
            Err(AuthError::IssuedInFuture)
        ));
        assert!(run(json!({"exp": (NOW + 60) as f64 + 0.5}), None).is_ok());
        assert!(run(
            json!({"exp": null, "nbf": null, "iat": null, "aud": null}),
            None
        )
        .is_ok());
    }

    // A time claim that is not a number is refused, naming the claim.
    #[test]
    fn non_numeric_time_claims_are_refused() {
        for name in ["exp", "nbf", "iat"] {
            for bad in [json!("1800000000"), json!(true), json!([1]), json!({})] {
                let err = run(json!({ name: bad }), None).expect_err(name);
                assert!(
                    matches!(err, AuthError::ClaimNotNumber(n) if n == name),
                    "{name}: {err}"
                );
            }
        }
    }

    // aud follows PostgREST: string or array of strings, absent/null/[] match any audience.
    #[test]
    fn audience_follows_postgrest_rules() {
        let want = Some("api");
        assert!(run(json!({"aud": "api"}), want).is_ok());
        assert!(run(json!({"aud": ["web", "api"]}), want).is_ok());
        assert!(run(json!({}), want).is_ok());
        assert!(run(json!({"aud": []}), want).is_ok());
        assert!(run(json!({"aud": "anything"}), None).is_ok());
        assert!(matches!(
            run(json!({"aud": "web"}), want),
            Err(AuthError::NotInAudience)
        ));
        assert!(matches!(
            run(json!({"aud": ["web"]}), want),
            Err(AuthError::NotInAudience)
        ));
        for bad in [json!(1), json!(true), json!({"a": 1}), json!(["api", 1])] {
            assert!(
                matches!(
                    run(json!({"aud": bad}), None),
                    Err(AuthError::AudNotStringOrArray)
                ),
                "{bad}"
            );
        }
    }

    // The cache deadline is exp plus leeway, and only when exp is a number.
    #[test]
    fn valid_until_is_exp_plus_leeway() {
        let map = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(valid_until(&map(json!({"exp": NOW})), 30), Some(NOW + 30));
        assert_eq!(valid_until(&map(json!({})), 30), None);
        assert_eq!(valid_until(&map(json!({"exp": "x"})), 30), None);
    }
}
