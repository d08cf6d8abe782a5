//! W3C Trace Context: the `traceparent` and `tracestate` headers, parsed
//! strictly, and the trace of one request.
//!
//! A request keeps its caller's trace id, or gets a new one when it sends
//! none or an invalid one. The proxy then rewrites both headers before the
//! request reaches SQL, so `request.headers` (and
//! `pgrpc_http.traceparent()`) name the transaction's own span: an outbox
//! event written in it carries that context, and `pgrpc relay` continues the
//! same trace on the webhook call. Spans go to an OTLP collector when one is
//! configured ([`otlp`]); [`scope`] times each request's pool wait and
//! transaction.

pub mod otlp;
pub mod scope;

pub use scope::{carry, pool_wait, Scope, TransactionTimer};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The most list members of `tracestate` kept (W3C: 32).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The longest `tracestate` kept, in bytes, every header field joined
/// (W3C asks to propagate at least 512).
pub const MAX_TRACESTATE_BYTES: usize = 512;
/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// A parsed version-00 `traceparent`: the trace, the parent span and the
/// flags (bit 0: sampled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, neither id all zeros;
    /// anything else (another version, a longer value) is `None`.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        if value.len() != TRACEPARENT_LEN
            || !value.starts_with(b"00-")
            || value[35] != b'-'
            || value[52] != b'-'
        {
            return None;
        }
        let trace_id: [u8; 16] = lower_hex(&value[3..35])?;
        let parent_id: [u8; 8] = lower_hex(&value[36..52])?;
        let [flags] = lower_hex::<1>(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The header value.
    pub fn header(&self) -> String {
        String::from_utf8_lossy(&self.encode()).into_owned()
    }

    /// The header value as bytes: `00-`, the ids and the flags in
    /// lowercase hex, dash-separated (every request writes one).
    pub fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.parent_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The `tracestate` of the header fields `values`, joined by commas, or
/// `None` when it is empty, malformed, repeats a key, or is over
/// `MAX_TRACESTATE_MEMBERS` or `MAX_TRACESTATE_BYTES` (it is then dropped
/// whole rather than cut, which could change a vendor's meaning). The
/// members come back joined by `,` without optional whitespace.
pub fn parse_tracestate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    let mut out = String::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut total = 0usize;
    for value in values {
        total += value.len() + 1;
        if total > MAX_TRACESTATE_BYTES + 1 {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        for member in text.split(',') {
            let member = member.trim_matches(|c| c == ' ' || c == '\t');
            if member.is_empty() {
                continue;
            }
            let (key, val) = member.split_once('=')?;
            if !valid_key(key) || !valid_value(val) || keys.contains(&key) {
                return None;
            }
            if keys.len() == MAX_TRACESTATE_MEMBERS {
                return None;
            }
            keys.push(key);
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(member);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")`, or a
/// multi-tenant `tenant@system` (tenant up to 241, system up to 14).
fn valid_key(key: &str) -> bool {
    let body = |s: &str| {
        s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/'))
    };
    match key.split_once('@') {
        None => {
            (1..=256).contains(&key.len()) && key.as_bytes()[0].is_ascii_lowercase() && body(key)
        }
        Some((tenant, system)) => {
            (1..=241).contains(&tenant.len())
                && (1..=14).contains(&system.len())
                && matches!(tenant.as_bytes()[0], b'a'..=b'z' | b'0'..=b'9')
                && system.as_bytes()[0].is_ascii_lowercase()
                && body(tenant)
                && body(system)
        }
    }
}

/// `0*255(chr) nblk-chr`: printable ASCII but `,` and `=`, not ending in
/// a space.
fn valid_value(value: &str) -> bool {
    (1..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && !value.ends_with(' ')
}

/// The trace of one request: the caller's trace id (or a new one), the
/// caller's span (if it sent one), the proxy's request span, and the span
/// of the transaction, which SQL sees as the parent.
#[derive(Clone, Debug)]
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    pub remote_parent: Option<[u8; 8]>,
    pub request_span: [u8; 8],
    pub transaction_span: [u8; 8],
    pub flags: u8,
    pub tracestate: Option<String>,
}

impl RequestTrace {
    /// The caller's context when its one `traceparent` is valid (with its
    /// `tracestate`, if valid), else a new sampled trace without state.
    pub fn from_headers(headers: &HeaderMap) -> RequestTrace {
        let mut parents = headers.get_all(TRACEPARENT).iter();
        let parent = match (parents.next(), parents.next()) {
            (Some(one), None) => TraceParent::parse(one.as_bytes()),
            _ => None,
        };
        match parent {
            Some(p) => RequestTrace {
                trace_id: p.trace_id,
                remote_parent: Some(p.parent_id),
                request_span: new_span_id(),
                transaction_span: new_span_id(),
                flags: p.flags,
                tracestate: parse_tracestate(
                    headers.get_all(TRACESTATE).iter().map(|v| v.as_bytes()),
                ),
            },
            None => {
                // The three ids from one draw of the thread's generator.
                let random: [u8; 32] = rand::random();
                let mut trace_id = [0; 16];
                let mut request_span = [0; 8];
                let mut transaction_span = [0; 8];
                trace_id.copy_from_slice(&random[..16]);
                request_span.copy_from_slice(&random[16..24]);
                transaction_span.copy_from_slice(&random[24..]);
                RequestTrace {
                    trace_id: nonzero(trace_id, new_trace_id),
                    remote_parent: None,
                    request_span: nonzero(request_span, new_span_id),
                    transaction_span: nonzero(transaction_span, new_span_id),
                    flags: 1,
                    tracestate: None,
                }
            }
        }
    }

    /// What SQL sees: this trace, with the transaction's span as parent.
    pub fn sql_traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.transaction_span,
            flags: self.flags,
        }
    }

    /// Replaces the request's `traceparent` and `tracestate` with the
    /// effective ones, so `request.headers` carries them.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(TRACESTATE);
        if let Ok(v) = HeaderValue::from_bytes(&self.sql_traceparent().encode()) {
            headers.insert(TRACEPARENT, v);
        }
        if let Some(v) = self
            .tracestate
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            headers.insert(TRACESTATE, v);
        }
    }

    /// The trace id as 32 lowercase hex digits, written only where it is
    /// shown (an enabled span field or log line).
    pub fn trace_id_hex(&self) -> TraceIdHex {
        TraceIdHex(self.trace_id)
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A trace id, displayed as 32 lowercase hex digits.
#[derive(Clone, Copy)]
pub struct TraceIdHex([u8; 16]);

impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            digits[2 * i] = HEX[usize::from(b >> 4)];
            digits[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        f.write_str(std::str::from_utf8(&digits).map_err(|_| std::fmt::Error)?)
    }
}

/// A random trace id, never all zeros.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

/// `id`, or a new one from `new` when it is all zeros (which W3C forbids).
fn nonzero<const N: usize>(id: [u8; N], new: fn() -> [u8; N]) -> [u8; N] {
    if id == [0; N] {
        new()
    } else {
        id
    }
}

/// A random span id, never all zeros.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// `N` bytes from `2N` lowercase hex digits (W3C forbids uppercase).
fn lower_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// `bytes` in lowercase hex into `out`, which is twice as long.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_trace_id_shows_as_its_hex_digits() {
        let id: [u8; 16] = [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ];
        assert_eq!(
            TraceIdHex(id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(TraceIdHex(id).to_string(), hex::encode(id));
    }

    #[test]
    fn a_valid_traceparent_round_trips() {
        let p = TraceParent::parse(VALID.as_bytes()).expect("valid");
        assert_eq!(p.header(), VALID);
        assert!(p.sampled());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn tracestate_keeps_valid_lists_and_drops_bad_or_oversized_ones() {
        assert_eq!(
            parse_tracestate([b"rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE".as_slice()]),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into())
        );
        assert_eq!(
            parse_tracestate([b"a=1".as_slice(), b"tenant@sys=2".as_slice()]),
            Some("a=1,tenant@sys=2".into())
        );
        assert_eq!(parse_tracestate([b"a=1,a=2".as_slice()]), None);
        assert_eq!(parse_tracestate([b"A=1".as_slice()]), None);
        assert_eq!(parse_tracestate([b"a=1 ,b".as_slice()]), None);
        assert_eq!(parse_tracestate([b"a=x,y".as_slice()]), None);
        assert_eq!(parse_tracestate([b"".as_slice()]), None);
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tracestate([members.join(",").as_bytes()]).is_some());
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_tracestate([members.join(",").as_bytes()]), None);
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE_BYTES));
        assert_eq!(parse_tracestate([long.as_bytes()]), None);
    }

    #[test]
    fn a_request_without_a_valid_parent_gets_a_new_sampled_trace() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        h.insert(TRACESTATE, HeaderValue::from_static("a=1"));
        let t = RequestTrace::from_headers(&h);
        assert!(t.remote_parent.is_none());
        assert!(
            t.tracestate.is_none(),
            "state without a valid parent is dropped"
        );
        assert!(t.sampled());
        t.apply(&mut h);
        let sent = TraceParent::parse(h[TRACEPARENT].as_bytes()).expect("valid");
        assert_eq!(sent.trace_id, t.trace_id);
        assert_eq!(sent.parent_id, t.transaction_span);
        assert!(h.get(TRACESTATE).is_none());
    }

    #[test]
    fn a_request_with_a_valid_parent_keeps_its_trace_and_state() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let t = RequestTrace::from_headers(&h);
        let p = TraceParent::parse(VALID.as_bytes()).expect("valid");
        assert_eq!(t.trace_id, p.trace_id);
        assert_eq!(t.remote_parent, Some(p.parent_id));
        t.apply(&mut h);
        let sent = TraceParent::parse(h[TRACEPARENT].as_bytes()).expect("valid");
        assert_eq!(sent.trace_id, p.trace_id);
        assert_ne!(sent.parent_id, p.parent_id);
        assert_eq!(h[TRACESTATE], "congo=t61rcWkgMzE");
    }
}
