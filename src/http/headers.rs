//! Response and request headers that concern caches, operators and the
//! IETF drafts, kept out of the request path's logic:
//!
//! - `Vary` on RPC answers (`Accept, Prefer, Range`, as PostgREST 13
//!   sends, then the credentials, `Authorization` and `apikey`, that pick
//!   the role; `Origin` where CORS echoes an origin);
//! - `Server-Timing` (`PGRPC_SERVER_TIMING`), as PostgREST's
//!   `server-timing-enabled`: the jwt, plan, transaction and render stages;
//! - `Proxy-Status` on every error answer, as PostgREST 13
//!   (`PostgREST; error=<code>`), here `pgrpc; error=<code>` (RFC 9209);
//! - `Content-Length` on HEAD answers: the length the GET would carry;
//! - `Idempotency-Key` as an RFC 8941 sf-string
//!   (draft-ietf-httpapi-idempotency-key-header), or unquoted.

use std::time::Instant;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, VARY};

/// `Vary` of every `/rpc/*` answer and every batch (`/rpc`): what else in
/// the request chose it.
/// The credentials are there so that a shared cache never gives one
/// caller's answer to another.
pub const RPC_VARY: &str = "Accept, Prefer, Range, Authorization, apikey";

/// The longest `Idempotency-Key` header parsed, quotes and escapes
/// included. Longer values are refused before any parsing; the key itself
/// is 1 to 255 characters (the database's rule).
pub const MAX_IDEMPOTENCY_KEY_HEADER_BYTES: usize = 1024;

/// The key of an `Idempotency-Key` value: an sf-string (RFC 8941 §3.3.3:
/// `"`, then printable ASCII with `\"` and `\\` as the only escapes, then
/// `"` and nothing after), or, not starting with `"`, the value itself,
/// printable ASCII (and tab, as before the draft). None: refused.
pub fn idempotency_key(value: &[u8]) -> Option<String> {
    if value.len() > MAX_IDEMPOTENCY_KEY_HEADER_BYTES {
        return None;
    }
    let value = value.trim_ascii();
    match value.first() {
        Some(b'"') => sf_string(value),
        _ => value
            .iter()
            .all(|b| (0x20..=0x7e).contains(b) || *b == b'\t')
            .then(|| String::from_utf8_lossy(value).into_owned()),
    }
}

/// RFC 8941 §4.2.5, Parsing a String, of a whole value: None unless the
/// value is exactly one sf-string.
pub fn sf_string(value: &[u8]) -> Option<String> {
    let (&first, mut rest) = value.split_first()?;
    if first != b'"' {
        return None;
    }
    let mut out = String::with_capacity(value.len());
    loop {
        let (&c, tail) = rest.split_first()?;
        rest = tail;
        match c {
            b'\\' => {
                let (&next, tail) = rest.split_first()?;
                rest = tail;
                if next != b'"' && next != b'\\' {
                    return None;
                }
                out.push(char::from(next));
            }
            b'"' => return rest.is_empty().then_some(out),
            0x20..=0x7e => out.push(char::from(c)),
            _ => return None,
        }
    }
}

/// Adds `Vary` to an RPC answer (`origin`: CORS echoed the request's
/// `Origin`, so the answer also depends on it).
pub fn vary_rpc(headers: &mut HeaderMap, origin: bool) {
    let value = if origin {
        HeaderValue::from_static("Accept, Prefer, Range, Authorization, apikey, Origin")
    } else {
        HeaderValue::from_static(RPC_VARY)
    };
    headers.append(VARY, value);
}

/// `Proxy-Status: pgrpc; error=<code>` (RFC 9209 with PostgREST's use of
/// the error code as the error type): the code bare when it is made of
/// token characters (every SQLSTATE and PGRST code), else as an sf-string;
/// none for a code that is neither (a `RAISE SQLSTATE 'PGRST'` may name
/// any text).
pub fn proxy_status(code: &str) -> Option<HeaderValue> {
    let token = !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
    let text = if token {
        format!("pgrpc; error={code}")
    } else if code.len() <= 256 && code.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        let escaped = code.replace('\\', "\\\\").replace('"', "\\\"");
        format!("pgrpc; error=\"{escaped}\"")
    } else {
        return None;
    };
    HeaderValue::from_str(&text).ok()
}

/// `Content-Length` of a HEAD answer: `len`, the length of the body the
/// same GET would carry (RFC 9110 §8.6), set before the body is dropped.
pub fn head_length(headers: &mut HeaderMap, len: usize) {
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

/// The stages a call can fail in, in the order they run (`render` follows).
const FAILABLE_STAGES: [&str; 3] = ["jwt", "plan", "transaction"];

/// The stages of an RPC call for `Server-Timing`, each measured from the
/// previous lap. Disabled (the default), it measures nothing.
pub struct Timing {
    last: Option<Instant>,
    stages: Vec<(&'static str, f64)>,
}

impl Timing {
    pub fn new(enabled: bool) -> Timing {
        Timing {
            last: enabled.then(Instant::now),
            stages: Vec::new(),
        }
    }

    /// Starts the next stage now (what came before is not counted).
    pub fn restart(&mut self) {
        if self.last.is_some() {
            self.last = Some(Instant::now());
        }
    }

    /// Ends stage `name`: the time since the last lap or restart.
    pub fn lap(&mut self, name: &'static str) {
        if let Some(last) = self.last {
            let now = Instant::now();
            self.stages
                .push((name, now.duration_since(last).as_secs_f64() * 1000.0));
            self.last = Some(now);
        }
    }

    /// Ends the stage a failed call was in: the one after the last lap,
    /// among jwt, plan and transaction (rendering an error is not timed).
    pub fn lap_failed(&mut self) {
        if let Some(name) = FAILABLE_STAGES.get(self.stages.len()) {
            self.lap(name);
        }
    }

    /// `jwt;dur=0.1, plan;dur=0.2, …` (milliseconds, as PostgREST writes
    /// them), when enabled and a stage was measured.
    pub fn value(&self) -> Option<HeaderValue> {
        if self.last.is_none() || self.stages.is_empty() {
            return None;
        }
        let text: Vec<String> = self
            .stages
            .iter()
            .map(|(name, ms)| format!("{name};dur={ms:.3}"))
            .collect();
        HeaderValue::from_str(&text.join(", ")).ok()
    }

    /// Sets `Server-Timing` to [`Timing::value`], when there is one.
    pub fn write(&self, headers: &mut HeaderMap) {
        if let Some(v) = self.value() {
            headers.insert(HeaderName::from_static("server-timing"), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_quoted_or_not() {
        let k = |s: &str| idempotency_key(s.as_bytes());
        assert_eq!(k("abc").as_deref(), Some("abc"));
        assert_eq!(k("\"abc\"").as_deref(), Some("abc"));
        assert_eq!(k("  \"a\\\"b\\\\c\" ").as_deref(), Some("a\"b\\c"));
        assert_eq!(k("\"\"").as_deref(), Some(""));
        assert_eq!(k("a b").as_deref(), Some("a b"));
        for bad in [
            "\"abc",
            "\"a\"b",
            "\"a\\n\"",
            "\"a\\\"",
            "\"a\"; p=1",
            "\"\t\"",
        ] {
            assert_eq!(k(bad), None, "{bad}");
        }
        assert_eq!(idempotency_key(b"a\xffb"), None);
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY_HEADER_BYTES + 1);
        assert_eq!(k(&long), None);
    }

    #[test]
    fn proxy_status_names_the_code() {
        let v = |c: &str| proxy_status(c).map(|v| v.to_str().unwrap_or("").to_string());
        assert_eq!(v("PGRST116").as_deref(), Some("pgrpc; error=PGRST116"));
        assert_eq!(v("42501").as_deref(), Some("pgrpc; error=42501"));
        assert_eq!(
            v("a \"b\"").as_deref(),
            Some("pgrpc; error=\"a \\\"b\\\"\"")
        );
        assert_eq!(v("bad\u{1}"), None);
        assert_eq!(v(""), Some("pgrpc; error=\"\"".to_string()));
    }

    #[test]
    fn timing_writes_only_when_enabled() {
        let mut h = HeaderMap::new();
        let mut off = Timing::new(false);
        off.lap("jwt");
        off.write(&mut h);
        assert!(h.is_empty());
        let mut on = Timing::new(true);
        on.restart();
        on.lap("jwt");
        on.lap("plan");
        on.write(&mut h);
        let text = h["server-timing"].to_str().expect("ascii");
        assert!(text.starts_with("jwt;dur="), "{text}");
        assert!(text.contains(", plan;dur="), "{text}");
    }
}
