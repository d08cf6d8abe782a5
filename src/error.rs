//! The one place where failures become HTTP: the SQLSTATE → status map and
//! the PostgREST error body `{"code","message","details","hint"}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio_postgres::error::{DbError, SqlState};

/// An error answered to the client. Every field maps onto the PostgREST
/// body; `headers` carries extras such as `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            details: None,
            hint: None,
            headers: Vec::new(),
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 401 for a token problem, with the `WWW-Authenticate` challenge.
    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let challenge = format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            message.replace('"', "'")
        );
        let value = HeaderValue::from_str(&challenge)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        ApiError::new(StatusCode::UNAUTHORIZED, code, message).header(WWW_AUTHENTICATE, value)
    }

    /// 503 with `Retry-After`, for a database that cannot be reached.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "PGRST001", message)
            .header(RETRY_AFTER, HeaderValue::from_static("1"))
    }

    pub fn body_json(&self) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "hint": self.hint,
        })
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = self.body_json().to_string();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        resp
    }

    /// Maps a PostgreSQL error raised by a request. `anon` tells whether the
    /// request ran as the anonymous role (42501 is then 401, not 403).
    pub fn from_db(err: &DbError, anon: bool) -> ApiError {
        let code = err.code().code();
        if code == "PGRST" {
            return from_raise_pgrst(err);
        }
        let mut status = status_for_sqlstate(err.code(), anon);
        // Too many array dimensions comes from the request's own input (an
        // argument such as '{{{{{{{1}}}}}}}'), not from the server.
        if *err.code() == SqlState::PROGRAM_LIMIT_EXCEEDED
            && err.message().starts_with("number of array dimensions")
        {
            status = StatusCode::BAD_REQUEST;
        }
        let mut api = ApiError {
            status,
            code: code.to_string(),
            message: err.message().to_string(),
            details: err.detail().map(str::to_string),
            hint: err.hint().map(str::to_string),
            headers: Vec::new(),
        };
        if api.status == StatusCode::UNAUTHORIZED {
            api.headers
                .push((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if api.status == StatusCode::SERVICE_UNAVAILABLE {
            api.headers
                .push((RETRY_AFTER, HeaderValue::from_static("1")));
        }
        api
    }
}

/// SQLSTATE → HTTP status, as PostgREST maps it (SPEC §2.2 item 7).
pub fn status_for_sqlstate(state: &SqlState, anon: bool) -> StatusCode {
    let code = state.code();
    if let Some(nnn) = code.strip_prefix("PT") {
        return nnn
            .parse::<u16>()
            .ok()
            .and_then(|n| StatusCode::from_u16(n).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    if *state == SqlState::UNIQUE_VIOLATION || *state == SqlState::FOREIGN_KEY_VIOLATION {
        return StatusCode::CONFLICT;
    }
    if *state == SqlState::READ_ONLY_SQL_TRANSACTION {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    if *state == SqlState::RAISE_EXCEPTION {
        return StatusCode::BAD_REQUEST;
    }
    if *state == SqlState::UNDEFINED_FUNCTION || *state == SqlState::UNDEFINED_TABLE {
        return StatusCode::NOT_FOUND;
    }
    if *state == SqlState::INSUFFICIENT_PRIVILEGE {
        return if anon {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
    }
    if *state == SqlState::CONFIGURATION_LIMIT_EXCEEDED {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if *state == SqlState::ADMIN_SHUTDOWN {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match code.get(..2).unwrap_or("") {
        "08" | "53" => StatusCode::SERVICE_UNAVAILABLE,
        "0L" | "0P" | "28" => StatusCode::FORBIDDEN,
        "09" | "25" | "2D" | "38" | "39" | "3B" | "40" | "54" | "55" | "57" | "58" | "F0"
        | "HV" | "P0" | "XX" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// `RAISE SQLSTATE 'PGRST' USING MESSAGE = '<json>', DETAIL = '<json>'`:
/// the message carries code/message/details/hint, the detail carries the
/// status and headers.
fn from_raise_pgrst(err: &DbError) -> ApiError {
    let bad = || {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "PGRST121",
            "Could not parse JSON in the RAISE SQLSTATE 'PGRST' error",
        )
        .details(err.message().to_string())
    };
    let Ok(msg) = serde_json::from_str::<Value>(err.message()) else {
        return bad();
    };
    let detail = match err.detail() {
        Some(d) => match serde_json::from_str::<Value>(d) {
            Ok(v) => v,
            Err(_) => return bad(),
        },
        None => return bad(),
    };
    let status = detail
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok());
    let Some(status) = status else {
        return bad();
    };
    let text = |v: Option<&Value>| -> Option<String> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        }
    };
    let mut api = ApiError {
        status,
        code: text(msg.get("code")).unwrap_or_default(),
        message: text(msg.get("message")).unwrap_or_default(),
        details: text(msg.get("details")),
        hint: text(msg.get("hint")),
        headers: Vec::new(),
    };
    if let Some(headers) = detail.get("headers").and_then(Value::as_object) {
        for (name, value) in headers {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                api.headers.push((n, v));
            }
        }
    }
    api
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: &str, anon: bool) -> u16 {
        status_for_sqlstate(&SqlState::from_code(code), anon).as_u16()
    }

    #[test]
    fn sqlstates_map_as_postgrest_does() {
        let cases = [
            ("23505", 409),
            ("23503", 409),
            ("25006", 405),
            ("P0001", 400),
            ("42883", 404),
            ("42P01", 404),
            ("08006", 503),
            ("53300", 503),
            ("53400", 500),
            ("57P01", 503),
            ("PT429", 429),
            ("PT404", 404),
            ("40001", 500),
            ("54000", 500),
            ("55P03", 500),
            ("57014", 500),
            ("XX000", 500),
            ("22P02", 400),
            ("23502", 400),
            ("23514", 400),
            ("42703", 400),
        ];
        for (code, want) in cases {
            assert_eq!(status(code, false), want, "sqlstate {code}");
        }
        assert_eq!(status("42501", true), 401);
        assert_eq!(status("42501", false), 403);
        assert_eq!(status("PTabc", false), 500);
    }
}
