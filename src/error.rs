//! The one place where failures become HTTP.
//!
//! Each layer has its own error enum: `auth::AuthError`,
//! `http::request::RequestError`, `plan::PlanError` and `db::exec::ExecError`.
//! Each names its [`Pgrst`] code; [`Pgrst::status`] is the table of every
//! PGRST code this proxy answers with its status, after PostgREST's
//! `Error.hs`. PostgreSQL's own errors keep their SQLSTATE as the code and
//! take their status from [`status_for_sqlstate`]. Everything ends up as an
//! [`ApiError`], the PostgREST body `{"code","message","details","hint"}`.

use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio_postgres::error::{DbError, SqlState};

use crate::response_settings::{self, SettingsError};

/// Declares `Pgrst` from one table, so that its variants, their codes and
/// statuses, and `Pgrst::ALL` cannot drift apart.
macro_rules! pgrst_table {
    ($($(#[$doc:meta])* $name:ident => $code:literal, $status:ident;)+) => {
        /// Every PGRST code the proxy answers, grouped as PostgREST groups
        /// them: 0xx connection, 1xx request, 2xx schema cache, 3xx JWT.
        /// `PGRPC…` codes are pgrpc's own, for cases PostgREST has no code for.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Pgrst {
            $($(#[$doc])* $name,)+
        }

        impl Pgrst {
            /// Every variant, for the docs' error table and its test.
            pub const ALL: &'static [Pgrst] = &[$(Pgrst::$name,)+];

            /// The code and status of each.
            pub const fn code_and_status(self) -> (&'static str, StatusCode) {
                match self {
                    $(Pgrst::$name => ($code, StatusCode::$status),)+
                }
            }
        }
    };
}

pgrst_table! {
    /// PGRST001: the database cannot be reached.
    Connection => "PGRST001", SERVICE_UNAVAILABLE;
    /// PGRST002: the function cache is not loaded yet.
    SchemaCacheMissing => "PGRST002", SERVICE_UNAVAILABLE;
    /// PGRST003: no pooled connection within the pool timeout.
    PoolTimeout => "PGRST003", GATEWAY_TIMEOUT;
    /// PGRST100: a malformed query parameter or header.
    QueryParam => "PGRST100", BAD_REQUEST;
    /// PGRST101: a method the resource does not allow.
    InvalidMethod => "PGRST101", METHOD_NOT_ALLOWED;
    /// PGRST102: a body that is not valid (or too deeply nested) JSON, or
    /// of a Content-Type that cannot be read.
    InvalidBody => "PGRST102", BAD_REQUEST;
    /// PGRST103: a range that cannot be satisfied.
    InvalidRange => "PGRST103", RANGE_NOT_SATISFIABLE;
    /// PGRST106: a profile that is not an exposed schema.
    UnacceptableSchema => "PGRST106", NOT_ACCEPTABLE;
    /// PGRST107: an Accept that cannot be served.
    MediaType => "PGRST107", NOT_ACCEPTABLE;
    /// PGRST111: an invalid `response.headers` setting.
    GucHeaders => "PGRST111", INTERNAL_SERVER_ERROR;
    /// PGRST112: an invalid `response.status` setting.
    GucStatus => "PGRST112", INTERNAL_SERVER_ERROR;
    /// PGRST116: a singular response whose call returned another count of rows.
    Singularity => "PGRST116", NOT_ACCEPTABLE;
    /// PGRST121: a `RAISE SQLSTATE 'PGRST'` whose JSON cannot be read.
    RaiseParse => "PGRST121", INTERNAL_SERVER_ERROR;
    /// PGRST122: `Prefer: handling=strict` with an unknown or invalid preference.
    InvalidPreferences => "PGRST122", BAD_REQUEST;
    /// PGRST124: more rows than `Prefer: max-affected` allows (the call is rolled back).
    MaxAffected => "PGRST124", BAD_REQUEST;
    /// PGRST125: a path that is not served.
    InvalidPath => "PGRST125", NOT_FOUND;
    /// PGRST128: `Prefer: max-affected` with `handling=strict` on a function that returns no set.
    MaxAffectedNotSet => "PGRST128", BAD_REQUEST;
    /// PGRST202: no function matches the name and arguments.
    NoRpc => "PGRST202", NOT_FOUND;
    /// PGRST203: more than one function matches.
    AmbiguousRpc => "PGRST203", MULTIPLE_CHOICES;
    /// PGRST300: a token arrived, and the server has no key to check it.
    JwtSecretMissing => "PGRST300", UNAUTHORIZED;
    /// PGRST301: a token that cannot be decoded or verified.
    JwtDecode => "PGRST301", UNAUTHORIZED;
    /// PGRST303: a verified token whose claims are refused.
    JwtClaims => "PGRST303", UNAUTHORIZED;
    /// 42703: a column the function's result does not have (PostgREST answers with PostgreSQL's code).
    UndefinedColumn => "42703", BAD_REQUEST;
    /// PGRPC110: an `X-Pgrpc-Lsn` header or `pgrpc_lsn` cookie that is not a WAL position.
    InvalidLsn => "PGRPC110", BAD_REQUEST;
    /// PGRPC413: a body over `PGRPC_MAX_BODY_BYTES`.
    BodyTooLarge => "PGRPC413", PAYLOAD_TOO_LARGE;
    /// PGRPC431: a request line and headers over 64 KiB.
    HeadersTooLarge => "PGRPC431", REQUEST_HEADER_FIELDS_TOO_LARGE;
    /// PGRPC408: a body that stopped arriving, or arrived too slowly.
    BodyTimeout => "PGRPC408", REQUEST_TIMEOUT;
    /// PGRPC500: a fault of the proxy itself.
    Internal => "PGRPC500", INTERNAL_SERVER_ERROR;
}

/// A layer's error: its message is its `Display`; the rest it names here.
pub trait Fault: std::fmt::Display {
    /// The code and status; unused when [`Fault::postgres`] or
    /// [`Fault::answer`] gives the answer.
    fn pgrst(&self) -> Pgrst;
    /// PostgreSQL's own error, answered by [`ApiError::from_db`], and
    /// what the executor learned about the request and the node.
    fn postgres(&self) -> Option<(&DbError, DbContext)> {
        None
    }
    /// An answer already made (a replayed or stored error).
    fn answer(&self) -> Option<&ApiError> {
        None
    }
    fn details(&self) -> Option<String> {
        None
    }
    fn hint(&self) -> Option<String> {
        None
    }
    /// Extra response headers (`Allow`, `Retry-After`, …).
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }
}

impl<E: Fault> From<E> for ApiError {
    fn from(e: E) -> ApiError {
        if let Some((db, context)) = e.postgres() {
            return ApiError::from_db(db, context);
        }
        if let Some(answer) = e.answer() {
            return answer.clone();
        }
        let (code, status) = e.pgrst().code_and_status();
        let message = e.to_string();
        let mut headers = e.headers();
        match status {
            StatusCode::UNAUTHORIZED => {
                let challenge = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    message.replace('"', "'")
                );
                let value = HeaderValue::from_str(&challenge)
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
                headers.push((WWW_AUTHENTICATE, value));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.push((RETRY_AFTER, HeaderValue::from_static("1")));
            }
            _ => {}
        }
        ApiError {
            status,
            code: code.to_string(),
            details: e.details(),
            hint: e.hint(),
            message,
            headers,
        }
    }
}

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
    pub fn body_json(&self) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "hint": self.hint,
        })
    }

    pub fn into_response(self) -> Response<crate::http::Body> {
        let body = self.body_json().to_string();
        let mut resp = Response::new(crate::http::Body::from(body));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        if let Some(v) = crate::http::headers::proxy_status(&self.code) {
            headers.insert(hyper::header::HeaderName::from_static("proxy-status"), v);
        }
        resp
    }

    /// Maps a PostgreSQL error raised by a request, with its context:
    /// whether the request ran as the anonymous role (42501 is then 401,
    /// not 403), and whether the node turned out to be read-only (25006 is
    /// then 503 `PGRST001`, retryable, instead of 405).
    pub fn from_db(err: &DbError, context: DbContext) -> ApiError {
        let code = err.code().code();
        if code == "PGRST" {
            return from_raise_pgrst(err);
        }
        if context.node_read_only && *err.code() == SqlState::READ_ONLY_SQL_TRANSACTION {
            return ApiError::from(ReadOnlyNode(err.message().to_string()));
        }
        let status = status_for_sqlstate(err.code(), context.anon);
        // PostgreSQL's hint for 54001 names a server setting to raise
        // (max_stack_depth): advice for the operator, not the client.
        let hint = if *err.code() == SqlState::STATEMENT_TOO_COMPLEX {
            Some("The input nests too deeply; send a simpler value".to_string())
        } else {
            err.hint().map(str::to_string)
        };
        let mut api = ApiError {
            status,
            code: code.to_string(),
            message: err.message().to_string(),
            details: err.detail().map(str::to_string),
            hint,
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
            .filter(|s| response_settings::sendable(*s))
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
    // A limit of PostgreSQL's parsers passed by the request's own input: an
    // operand nested past the stack (54001), or an argument such as
    // '{{{{{{{1}}}}}}}' with too many array dimensions (54000).
    if *state == SqlState::PROGRAM_LIMIT_EXCEEDED || *state == SqlState::STATEMENT_TOO_COMPLEX {
        return StatusCode::BAD_REQUEST;
    }
    // The server ended the session or refused it while shutting down,
    // restarting after a crash, or starting up (a failover): retryable.
    // PostgREST answers 503 for 57P01; pgrpc adds 57P02 and 57P03, which
    // mean the same to a client. A statement timeout (57014) stays 500.
    if *state == SqlState::ADMIN_SHUTDOWN
        || *state == SqlState::CRASH_SHUTDOWN
        || *state == SqlState::CANNOT_CONNECT_NOW
    {
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
    let bad = || ApiError::from(RaiseParseError(err.message().to_string()));
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
    // An error is still a response: never one that switches protocols.
    if !response_settings::sendable(status) {
        return ApiError::from(SettingsError::Status(status.as_u16().to_string()));
    }
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
            match response_settings::header(name, value) {
                Ok(header) => api.headers.push(header),
                Err(refusal) => return ApiError::from(refusal),
            }
        }
    }
    api
}

/// What the executor knows about a PostgreSQL error beyond the error
/// itself, for the error table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbContext {
    /// The request ran as the anonymous role.
    pub anon: bool,
    /// The node cannot take writes (in recovery, or read-only by default):
    /// a standby, or a primary demoted or still finishing its promotion.
    pub node_read_only: bool,
}

/// A write reached a node that only reads. Retryable.
#[derive(Debug, thiserror::Error)]
#[error("The database node is read-only; retry shortly")]
struct ReadOnlyNode(String);

impl Fault for ReadOnlyNode {
    fn pgrst(&self) -> Pgrst {
        Pgrst::Connection
    }
    fn details(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Could not parse JSON in the RAISE SQLSTATE 'PGRST' error")]
struct RaiseParseError(String);

impl Fault for RaiseParseError {
    fn pgrst(&self) -> Pgrst {
        Pgrst::RaiseParse
    }
    fn details(&self) -> Option<String> {
        Some(self.0.clone())
    }
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
            ("57P02", 503),
            ("57P03", 503),
            ("57P04", 500),
            ("PT429", 429),
            ("PT404", 404),
            ("40001", 500),
            ("54000", 400),
            ("54001", 400),
            ("54011", 500),
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
        // A status that would switch protocols or announce another answer.
        assert_eq!(status("PT101", false), 500);
        assert_eq!(status("PT103", false), 500);
    }

    #[test]
    fn every_code_is_listed_once_in_its_range() {
        let mut seen = std::collections::HashSet::new();
        for &p in Pgrst::ALL {
            let (code, status) = p.code_and_status();
            assert!(seen.insert((code, status)), "{code} twice");
            assert!(status.is_client_error() || status.is_server_error() || status.as_u16() == 300);
            if let Some(n) = code.strip_prefix("PGRST") {
                let group = n.as_bytes()[0];
                let want = match p {
                    Pgrst::Connection | Pgrst::SchemaCacheMissing | Pgrst::PoolTimeout => b'0',
                    Pgrst::NoRpc | Pgrst::AmbiguousRpc => b'2',
                    Pgrst::JwtSecretMissing | Pgrst::JwtDecode | Pgrst::JwtClaims => b'3',
                    _ => b'1',
                };
                assert_eq!(group, want, "{code} is in the wrong range");
            }
        }
    }
}
