//! What a function may set in `response.headers` and `response.status`,
//! defined once for both sides of the COMMIT: in Rust, what the proxy can
//! send ([`headers`], [`status`]), and in SQL, the same rules in the last
//! columns of every call statement, which raise on anything else
//! ([`CALL_TAIL`]), so that a call whose answer cannot be sent is rolled
//! back, never committed.
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

/// The rules of [`headers`] and [`status`] in SQL, over `h` (the
/// `response.headers` text) and `s` (the `response.status` text), both
/// NULL when unset: a JSON array of objects; names of HTTP token
/// characters, at most 65,535, none of [`FRAMING_HEADERS`]; values (a JSON
/// string's text, or any other JSON value's text) without control
/// characters other than tab; a status of ASCII digits (an optional `+`,
/// surrounding ASCII whitespace) from 200 to 599. Only built-ins of
/// pg_catalog, so any request role may run it.
macro_rules! valid_settings {
    () => {
        "(h IS NULL OR (jsonb_typeof(h::jsonb) = 'array' AND NOT EXISTS (\
            SELECT FROM jsonb_array_elements(h::jsonb) AS e(o) \
            WHERE jsonb_typeof(e.o) <> 'object' OR EXISTS (\
              SELECT FROM jsonb_each_text(e.o) AS p(k, v) \
              WHERE p.k !~ '^[-!#$%&''*+.^_`|~0-9A-Za-z]+$' OR char_length(p.k) > 65535 \
                 OR lower(p.k) IN ('content-length', 'transfer-encoding', 'connection', \
                                   'keep-alive', 'upgrade', 'te', 'trailer') \
                 OR p.v ~ '[\\x01-\\x08\\x0a-\\x1f\\x7f]')))) \
         AND (s IS NULL OR (s ~ '^[ \\t\\n\\f\\r]*\\+?[0-9]+[ \\t\\n\\f\\r]*$' \
                            AND btrim(s, E' \\t\\n\\f\\r')::numeric BETWEEN 200 AND 599))"
    };
}

/// Both settings, as `h` and `s` (NULL when unset or empty).
macro_rules! settings_row {
    () => {
        "(SELECT nullif(current_setting('response.headers', true), '') AS h, \
                 nullif(current_setting('response.status', true), '') AS s) AS _c"
    };
}

/// The marker of a refusal raised by [`CALL_TAIL`], the first element of
/// the JSON array it raises with.
const REFUSAL_MARKER: &str = "[\"pgrpc.response_settings\"";

/// The last columns of the statement of every call that may write:
/// `response.headers` and `response.status` as the call left them, read
/// after the call ran.
/// When either is set and cannot be sent, the statement raises instead
/// (22P02, its message holding the JSON array `["pgrpc.response_settings",
/// headers, status]`), which aborts the transaction, so that the COMMIT
/// behind it in the same pipeline rolls back: a call whose answer cannot
/// be sent is never committed. [`refusal`] reads the error back. When
/// neither is set, the rules are not evaluated (the subquery's `CASE`
/// stops at its first branch). `json_build_array` is STABLE, so the
/// raising branch is never folded at planning.
pub const CALL_TAIL: &str = concat!(
    "(SELECT CASE WHEN h IS NULL AND s IS NULL THEN NULL WHEN ",
    valid_settings!(),
    " THEN h ELSE json_build_array('pgrpc.response_settings', h, s)::text::int::text END FROM ",
    settings_row!(),
    "), current_setting('response.status', true)"
);

/// The last columns of a read-only call's statement: both settings as the
/// call left them, unchecked (the proxy's parse of them suffices, since
/// nothing is committed).
pub const PLAIN_TAIL: &str =
    "current_setting('response.headers', true), current_setting('response.status', true)";

/// The same rules as one statement, which returns a row when both
/// settings can be sent and raises otherwise (for tests that hold the SQL
/// rules against the Rust ones).
pub const CHECK_SQL: &str = concat!(
    "SELECT CASE WHEN ",
    valid_settings!(),
    " THEN 1 ELSE concat('response.headers or response.status cannot be sent')::int END FROM ",
    settings_row!()
);

/// The refusal a call statement raised through [`CALL_TAIL`], if `error`
/// is one: the proxy's own rules, applied to the settings it carries, say
/// why (`PGRST111`/`PGRST112`). The marker is searched for anywhere in the
/// message, so a translated message still reads.
pub fn refusal(error: &tokio_postgres::error::DbError) -> Option<SettingsError> {
    if *error.code() != tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION {
        return None;
    }
    let message = error.message();
    let start = message.find(REFUSAL_MARKER)?;
    let end = message.rfind(']')?;
    let values: Vec<Option<String>> = serde_json::from_str(message.get(start..=end)?).ok()?;
    let (headers, status) = match values.as_slice() {
        [_, h, s] => (h.as_deref(), s.as_deref()),
        _ => return None,
    };
    check(headers, status).err()
}

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
