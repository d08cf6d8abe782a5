//! CORS, as PostgREST's `Cors` middleware (wai-cors) answers it: only for
//! requests with an `Origin`. A preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here, before routing; any
//! other response gets the origin and the headers a script may read. With
//! no allowed origins configured every origin is allowed (`*`); with a
//! list, the origin is echoed with credentials allowed, and an origin not
//! on it gets no CORS headers (the browser then blocks the response).

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use hyper::Method;

const METHODS: &str = "GET, POST, PATCH, PUT, DELETE, OPTIONS, HEAD";
/// PostgREST's list, then every header pgrpc itself sets for clients: a
/// script reads a cross-origin answer's other headers only when listed.
const EXPOSED: &str = "Content-Encoding, Content-Location, Content-Range, Content-Type, Date, \
     Location, Server, Transfer-Encoding, Range-Unit, Content-Profile, Idempotent-Replayed, \
     Preference-Applied, Proxy-Status, Retry-After, Server-Timing, WWW-Authenticate, \
     X-Pgrpc-Batch-Index, X-Pgrpc-Lsn, X-Request-Id";
/// A day, as PostgREST.
const MAX_AGE: &str = "86400";

/// The `Access-Control-Allow-Origin` (and credentials) a request's origin
/// gets, or None: no `Origin`, or one not allowed.
fn allow_origin(allowed: &[String], origin: Option<&HeaderValue>) -> Option<(HeaderValue, bool)> {
    let origin = origin?;
    if allowed.is_empty() {
        return Some((HeaderValue::from_static("*"), false));
    }
    let text = origin.to_str().ok()?;
    allowed
        .iter()
        .any(|o| o.trim() == text)
        .then(|| (origin.clone(), true))
}

/// The most header names a preflight's `Access-Control-Request-Headers`
/// may list, and its longest value. Browsers list the non-safelisted
/// headers a script sets (supabase-js: about six).
pub const MAX_REQUEST_HEADER_NAMES: usize = 64;
pub const MAX_REQUEST_HEADERS_BYTES: usize = 4096;

/// A preflight whose `Access-Control-Request-Headers` is past its bounds
/// or names something that is not a header name: 400 `PGRST100`.
#[derive(Debug, thiserror::Error)]
#[error("Access-Control-Request-Headers must list at most {MAX_REQUEST_HEADER_NAMES} header names in {MAX_REQUEST_HEADERS_BYTES} bytes")]
pub struct BadRequestHeaders(String);

impl crate::error::Fault for BadRequestHeaders {
    fn pgrst(&self) -> crate::error::Pgrst {
        crate::error::Pgrst::QueryParam
    }
    fn details(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

/// The names of `Access-Control-Request-Headers`, as PostgREST's Cors.hs
/// reads them (split on commas, trimmed), each checked to be a header
/// name (RFC 9110 token), within the bounds above.
pub(crate) fn requested_names(value: &[u8]) -> Result<Vec<&str>, BadRequestHeaders> {
    if value.len() > MAX_REQUEST_HEADERS_BYTES {
        return Err(BadRequestHeaders(format!("{} bytes", value.len())));
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| BadRequestHeaders("the value is not ASCII".into()))?;
    let mut names = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if names.len() == MAX_REQUEST_HEADER_NAMES {
            return Err(BadRequestHeaders(format!(
                "more than {MAX_REQUEST_HEADER_NAMES} names"
            )));
        }
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(BadRequestHeaders(format!(
                "{:?} is not a header name",
                name.chars().take(64).collect::<String>()
            )));
        }
        names.push(name);
    }
    Ok(names)
}

/// The headers of a preflight's answer, or None when `method`/`headers`
/// are not an allowed preflight (the request is then routed as usual);
/// an `Access-Control-Request-Headers` past its bounds is an error.
pub fn preflight(
    allowed: &[String],
    method: &Method,
    headers: &HeaderMap,
) -> Option<Result<HeaderMap, BadRequestHeaders>> {
    if method != Method::OPTIONS || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let (origin, credentials) = allow_origin(allowed, headers.get(ORIGIN))?;
    // Authorization, and whatever the script asks to send (reflected,
    // as PostgREST's Cors.hs does).
    let mut names = String::from("Authorization");
    if let Some(asked) = headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
        match requested_names(asked.as_bytes()) {
            Ok(asked) => {
                for name in asked {
                    if !name.eq_ignore_ascii_case("authorization") {
                        names.push_str(", ");
                        names.push_str(name);
                    }
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
    let mut out = HeaderMap::new();
    out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if credentials {
        out.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        out.insert(VARY, HeaderValue::from_static("Origin"));
    }
    out.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    if let Ok(v) = HeaderValue::from_str(&names) {
        out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    Some(Ok(out))
}

/// Adds the origin and the exposed headers to an answer for an allowed
/// request `origin`.
/// Returns whether the request's origin was echoed (a listed origin, not
/// `*`): the answer then depends on `Origin` (`Vary`).
pub fn decorate(
    allowed: &[String],
    origin: Option<&HeaderValue>,
    response: &mut HeaderMap,
) -> bool {
    let Some((origin, credentials)) = allow_origin(allowed, origin) else {
        return false;
    };
    response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if credentials {
        response.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    response.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    credentials
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_headers_are_reflected_within_bounds() {
        assert_eq!(
            requested_names(b"apikey, x-client-info,,Prefer ").expect("names"),
            vec!["apikey", "x-client-info", "Prefer"]
        );
        let many = vec!["x-a"; MAX_REQUEST_HEADER_NAMES + 1].join(",");
        assert!(requested_names(many.as_bytes()).is_err());
        let ok = vec!["x-a"; MAX_REQUEST_HEADER_NAMES].join(",");
        assert!(requested_names(ok.as_bytes()).is_ok());
        assert!(requested_names(b"x a").is_err());
        assert!(requested_names(b"x:a").is_err());
        assert!(requested_names(&vec![b'a'; MAX_REQUEST_HEADERS_BYTES + 1]).is_err());
    }

    #[test]
    fn only_listed_origins_are_echoed() {
        let allowed = vec!["https://app.example".to_string()];
        let ok = HeaderValue::from_static("https://app.example");
        assert_eq!(
            allow_origin(&allowed, Some(&ok)),
            Some((HeaderValue::from_static("https://app.example"), true))
        );
        let other = HeaderValue::from_static("https://evil.example");
        assert_eq!(allow_origin(&allowed, Some(&other)), None);
        assert_eq!(
            allow_origin(&[], Some(&other)),
            Some((HeaderValue::from_static("*"), false))
        );
        assert_eq!(allow_origin(&[], None), None);
    }
}
