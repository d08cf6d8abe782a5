//! What a function may set in `response.headers` and `response.status`,
//! defined once for both sides of the COMMIT: in Rust, what the proxy can
//! send ([`headers`], [`status`]), and in SQL, the same rules as a
//! statement that raises on anything else ([`CHECK_SQL`]), so that a call
//! whose answer cannot be sent is rolled back, never committed.
//!
//! Refused, beyond what the `http` crate cannot represent: the headers the
//! server owns because they frame the message or only concern one hop
//! ([`FRAMING_HEADERS`]), and statuses outside 200–599 (1xx would switch
//! protocols or announce another response; past 599 is not HTTP).

use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;
use serde_json::Value;

use crate::error::{Fault, Pgrst};

/// Headers that frame the message or concern one connection only:
/// hyper (or the peer) decides them, and a value from a function would
/// desynchronise the connection. Compared case-insensitively.
pub const FRAMING_HEADERS: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

/// The statuses a function may answer with.
const STATUSES: std::ops::RangeInclusive<u16> = 200..=599;

/// Runs after the call, before COMMIT, as the request role, in the same
/// pipeline: it returns a row when both settings can be sent, and raises
/// otherwise, which aborts the transaction so that the COMMIT behind it
/// rolls back. The rules are those of [`headers`] and [`status`]: a JSON
/// array of objects; names of HTTP token characters, at most 65,535, none
/// of [`FRAMING_HEADERS`]; values (a JSON string's text, or any other JSON
/// value's text) without control characters other than tab; a status of
/// ASCII digits (an optional `+`, surrounding ASCII whitespace) from 200
/// to 599. Only built-ins of pg_catalog, so any request role may run it.
/// `concat` is STABLE, so the raising branch is never folded at planning.
pub const CHECK_SQL: &str = "SELECT CASE WHEN \
     (h IS NULL OR (jsonb_typeof(h::jsonb) = 'array' AND NOT EXISTS (\
        SELECT FROM jsonb_array_elements(h::jsonb) AS e(o) \
        WHERE jsonb_typeof(e.o) <> 'object' OR EXISTS (\
          SELECT FROM jsonb_each_text(e.o) AS p(k, v) \
          WHERE p.k !~ '^[-!#$%&''*+.^_`|~0-9A-Za-z]+$' OR char_length(p.k) > 65535 \
             OR lower(p.k) IN ('content-length', 'transfer-encoding', 'connection', \
                               'keep-alive', 'upgrade', 'te', 'trailer') \
             OR p.v ~ '[\\x01-\\x08\\x0a-\\x1f\\x7f]')))) \
     AND (s IS NULL OR (s ~ '^[ \\t\\n\\f\\r]*\\+?[0-9]+[ \\t\\n\\f\\r]*$' \
                        AND btrim(s, E' \\t\\n\\f\\r')::numeric BETWEEN 200 AND 599)) \
     THEN 1 ELSE concat('response.headers or response.status cannot be sent')::int END \
     FROM (SELECT nullif(current_setting('response.headers', true), '') AS h, \
                  nullif(current_setting('response.status', true), '') AS s) AS r";

/// A response setting the proxy cannot send.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SettingsError {
    #[error("The response.headers setting must be a JSON array of objects")]
    HeadersShape(String),
    #[error("The response.headers setting names an invalid header")]
    HeaderName(String),
    #[error("The response.headers setting holds an invalid header value")]
    HeaderValue(String),
    #[error("The response.headers setting may not set {0}: the server frames the response")]
    Framing(String),
    #[error("The status code must be an integer from 200 to 599")]
    Status(String),
}

impl Fault for SettingsError {
    fn pgrst(&self) -> Pgrst {
        match self {
            SettingsError::Status(_) => Pgrst::GucStatus,
            _ => Pgrst::GucHeaders,
        }
    }
    fn details(&self) -> Option<String> {
        Some(match self {
            SettingsError::HeadersShape(text) => text.clone(),
            SettingsError::HeaderName(name) => format!("{name:?} is not an HTTP header name"),
            SettingsError::HeaderValue(name) => {
                format!("The value of {name} holds a control character (only tab is allowed)")
            }
            SettingsError::Framing(name) => format!(
                "{name} is a framing or hop-by-hop header ({}), which only the server sets",
                FRAMING_HEADERS.join(", ")
            ),
            SettingsError::Status(text) => format!("response.status was set to {text:?}"),
        })
    }
}

/// `response.headers`: a JSON array of objects, each key a header.
pub fn headers(text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, SettingsError> {
    let bad = || SettingsError::HeadersShape(text.to_string());
    let value: Value = serde_json::from_str(text).map_err(|_| bad())?;
    let list = value.as_array().ok_or_else(bad)?;
    let mut out = Vec::new();
    for item in list {
        let obj = item.as_object().ok_or_else(bad)?;
        for (k, v) in obj {
            out.push(header(k, v)?);
        }
    }
    Ok(out)
}

/// One header a function (or a `RAISE SQLSTATE 'PGRST'` detail) sets: a
/// JSON string is its value, any other JSON value its text.
pub fn header(name: &str, value: &Value) -> Result<(HeaderName, HeaderValue), SettingsError> {
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| SettingsError::HeaderName(name.to_string()))?;
    if FRAMING_HEADERS.contains(&header_name.as_str()) {
        return Err(SettingsError::Framing(header_name.as_str().to_string()));
    }
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let header_value =
        HeaderValue::from_str(&text).map_err(|_| SettingsError::HeaderValue(name.to_string()))?;
    Ok((header_name, header_value))
}

/// `response.status`: an integer from 200 to 599.
pub fn status(text: &str) -> Result<StatusCode, SettingsError> {
    let digits = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    let code = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<u16>().ok()
    } else {
        None
    };
    code.filter(|c| STATUSES.contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| SettingsError::Status(text.to_string()))
}

/// Whether a status given by the database (`RAISE SQLSTATE 'PGRST'`,
/// `PTnnn`) can be sent.
pub fn sendable(status: StatusCode) -> bool {
    STATUSES.contains(&status.as_u16())
}

/// Both settings of a call, as the call statement read them (None or
/// empty: not set): the first that cannot be sent.
pub fn check(headers_text: Option<&str>, status_text: Option<&str>) -> Result<(), SettingsError> {
    if let Some(text) = headers_text.filter(|t| !t.is_empty()) {
        headers(text)?;
    }
    if let Some(text) = status_text.filter(|t| !t.is_empty()) {
        status(text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_headers_are_refused_in_any_case() {
        for name in [
            "Content-Length",
            "TRANSFER-ENCODING",
            "connection",
            "Keep-Alive",
            "Upgrade",
            "TE",
            "Trailer",
        ] {
            let text = format!(r#"[{{"{name}": "1"}}]"#);
            assert!(
                matches!(headers(&text), Err(SettingsError::Framing(_))),
                "{name}"
            );
        }
        assert!(headers(r#"[{"X-Ok": "1"}, {"Location": "/a"}]"#).is_ok());
    }

    #[test]
    fn control_characters_are_refused_but_tab_and_utf8_pass() {
        assert!(matches!(
            headers("[{\"x\": \"a\\r\\nb\"}]"),
            Err(SettingsError::HeaderValue(_))
        ));
        assert!(matches!(
            headers("[{\"x\": \"a\\u007fb\"}]"),
            Err(SettingsError::HeaderValue(_))
        ));
        assert!(headers("[{\"x\": \"a\\tb é\"}]").is_ok());
        assert!(matches!(
            headers(r#"[{"a b": "1"}]"#),
            Err(SettingsError::HeaderName(_))
        ));
    }

    #[test]
    fn statuses_outside_200_to_599_are_refused() {
        for bad in [
            "100", "101", "103", "199", "600", "999", "abc", "", " ", "-200", "2 00",
        ] {
            assert!(status(bad).is_err(), "{bad:?}");
        }
        for (good, want) in [("200", 200), (" 201\n", 201), ("+404", 404), ("0599", 599)] {
            assert_eq!(
                status(good).ok().map(|s| s.as_u16()),
                Some(want),
                "{good:?}"
            );
        }
    }
}
