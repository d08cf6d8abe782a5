//! CORS, as PostgREST's `Cors` middleware (wai-cors) answers it: only for
//! requests with an `Origin`. A preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here, before routing; any
//! other response gets the origin and the headers a script may read. With
//! no allowed origins configured every origin is allowed (`*`); with a
//! list, the origin is echoed with credentials allowed, and an origin not
//! on it gets no CORS headers (the browser then blocks the response).

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use hyper::Method;

const METHODS: &str = "GET, POST, PATCH, PUT, DELETE, OPTIONS, HEAD";
const EXPOSED: &str = "Content-Encoding, Content-Location, Content-Range, Content-Type, Date, \
     Location, Server, Transfer-Encoding, Range-Unit";
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

/// The headers of a preflight's answer, or None when `method`/`headers`
/// are not an allowed preflight (the request is then routed as usual).
pub fn preflight(allowed: &[String], method: &Method, headers: &HeaderMap) -> Option<HeaderMap> {
    if method != Method::OPTIONS || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let (origin, credentials) = allow_origin(allowed, headers.get(ORIGIN))?;
    let mut out = HeaderMap::new();
    out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if credentials {
        out.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    out.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    // Authorization, and whatever the script asks to send.
    let mut names = String::from("Authorization");
    if let Some(asked) = headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
    {
        for name in asked.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !name.eq_ignore_ascii_case("authorization") {
                names.push_str(", ");
                names.push_str(name);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&names) {
        out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    Some(out)
}

/// Adds the origin and the exposed headers to an answer for an allowed
/// request `origin`.
pub fn decorate(allowed: &[String], origin: Option<&HeaderValue>, response: &mut HeaderMap) {
    let Some((origin, credentials)) = allow_origin(allowed, origin) else {
        return;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
