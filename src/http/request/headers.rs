//! The request's headers: the bounds on the lists of `Prefer`, `Accept`
//! and `Cookie`, and the headers and cookies as JSON objects for
//! `request.headers` and `request.cookies`.

use std::collections::HashMap;
use std::fmt::Write as _;

use hyper::header::{HeaderMap, HeaderName, ACCEPT, COOKIE};

use super::{too_many, RequestError};

/// All request headers as a JSON object with lowercase names.
/// A header sent more than once keeps its last value. `Cookie` is left
/// out, as PostgREST leaves it out: the cookies are in `request.cookies`.
pub(super) fn headers_json(headers: &HeaderMap) -> String {
    let mut out = String::with_capacity(64 * headers.len() + 2);
    out.push('{');
    let mut first = true;
    // One pass over the map, whose values of one name come together: each
    // name once, with its last value (no lookup by name).
    let mut entries = headers
        .iter()
        .filter(|(name, _)| *name != COOKIE)
        .peekable();
    while let Some((name, mut value)) = entries.next() {
        while let Some((_, next)) = entries.next_if(|(next, _)| *next == name) {
            value = next;
        }
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        push_json_string(&mut out, name.as_str());
        out.push(':');
        match std::str::from_utf8(value.as_bytes()) {
            Ok(text) => push_json_string(&mut out, text),
            Err(_) => push_json_string(&mut out, &String::from_utf8_lossy(value.as_bytes())),
        }
    }
    out.push('}');
    out
}

/// The most `name=value` pairs the `Cookie` headers of one request may
/// hold. Browsers keep at most 180 cookies per site (Chromium; Firefox
/// allows 150), so no browser reaches it; past it the request is refused
/// rather than some cookies silently dropped (docs/limits.md).
pub const MAX_COOKIE_PAIRS: usize = 256;
/// The most items of the `Prefer` headers and media ranges of `Accept`.
pub const MAX_PREFER_ITEMS: usize = 64;
pub const MAX_ACCEPT_RANGES: usize = 64;

/// Refuses `Prefer` and `Accept` lists longer than their bounds, counting
/// commas in one pass without building anything.
pub(crate) fn check_header_lists(headers: &HeaderMap) -> Result<(), RequestError> {
    let items = |name: HeaderName| -> usize {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().split(|b| *b == b',').count())
            .sum()
    };
    if items(crate::prefer::PREFER) > MAX_PREFER_ITEMS {
        return Err(too_many("Prefer", MAX_PREFER_ITEMS, "preferences"));
    }
    if items(ACCEPT) > MAX_ACCEPT_RANGES {
        return Err(too_many("Accept", MAX_ACCEPT_RANGES, "media ranges"));
    }
    Ok(())
}

/// Every `name=value` of the `Cookie` headers, in order, trimmed, with the
/// quotes of a quoted value removed; pairs without a name are skipped.
/// One pass over the headers: linear in their length.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim(), value.trim().trim_matches('"')))
        .filter(|(name, _)| !name.is_empty())
}

/// The `Cookie` headers as a JSON object of name → value (the last value of
/// a repeated name wins, in the place of its last occurrence), for
/// `request.cookies`; more than [`MAX_COOKIE_PAIRS`] pairs are refused.
/// Linear: each name is looked up in a hash map, not in the list so far.
pub(crate) fn cookies_json(headers: &HeaderMap) -> Result<String, RequestError> {
    let mut cookies: Vec<Option<(&str, &str)>> = Vec::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (name, value) in cookie_pairs(headers) {
        if cookies.len() == MAX_COOKIE_PAIRS {
            return Err(too_many("Cookie", MAX_COOKIE_PAIRS, "pairs"));
        }
        if let Some(previous) = last.insert(name, cookies.len()) {
            cookies[previous] = None;
        }
        cookies.push(Some((name, value)));
    }
    let mut out = String::new();
    push_json_object(&mut out, cookies.iter().flatten().copied());
    Ok(out)
}

/// Name → string pairs as a JSON object, in the order given.
pub(super) fn push_json_object<'a>(
    out: &mut String,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) {
    out.push('{');
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(out, name);
        out.push(':');
        push_json_string(out, value);
    }
    out.push('}');
}

/// `s` as a JSON string literal (RFC 8259 §7 escapes), byte for byte as
/// serde_json writes it.
fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    // Runs of bytes that need no escape are copied whole; every byte that
    // does is ASCII, so each run ends on a character boundary.
    let mut run = 0;
    loop {
        let i = run + clean_prefix(&bytes[run..]);
        out.push_str(&s[run..i]);
        let Some(&b) = bytes.get(i) else { break };
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        run = i + 1;
    }
    out.push('"');
}

/// How many leading bytes of `bytes` need no escape: eight at a time,
/// then one by one.
fn clean_prefix(bytes: &[u8]) -> usize {
    let mut n = 0;
    for chunk in bytes.chunks_exact(8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        if needs_escape(u64::from_le_bytes(word)) {
            break;
        }
        n += 8;
    }
    n + bytes[n..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .unwrap_or(bytes.len() - n)
}

/// Whether any of the eight bytes of `word` is below 0x20, `"` or `\`
/// (the classic exact tests for a zero byte and a byte below n ≤ 128; a
/// byte of 0x80 or above never matches).
const fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let q = word ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q;
    let b = word ^ (ONES * b'\\' as u64);
    let backslash = b.wrapping_sub(ONES) & !b;
    (below_space | quote | backslash) & HIGHS != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use serde_json::Value;

    #[test]
    fn json_strings_read_back_as_the_text_they_encode() {
        let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
        every_ascii.push_str("é✓𝄞\u{7f}\u{80}");
        for text in [
            every_ascii.as_str(),
            "",
            "plain",
            "\"\\",
            "a\u{1}b\u{1f}",
            "ünïcode\"",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, text);
            let back: String = serde_json::from_str(&out).expect("a JSON string");
            assert_eq!(back, text, "{out}");
        }
    }

    #[test]
    fn json_strings_escape_at_every_offset_of_the_eight_byte_scan() {
        // Each byte that needs an escape, and a few that do not (DEL, the
        // first bytes past ASCII), at every position of strings longer than
        // two words, alone and beside a second one.
        let specials: Vec<char> = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}', '\u{80}', 'é', '✓', '𝄞'])
            .collect();
        for len in [7, 8, 9, 16, 17, 23] {
            for at in 0..len {
                for &c in &specials {
                    let mut chars: Vec<char> =
                        "abcdefghijklmnopqrstuvwxyz".chars().take(len).collect();
                    chars[at] = c;
                    let text: String = chars.into_iter().collect();
                    let twice = format!("{text}{c}");
                    for t in [&text, &twice] {
                        let mut out = String::new();
                        push_json_string(&mut out, t);
                        let back: String = serde_json::from_str(&out).expect("a JSON string");
                        assert_eq!(&back, t, "{out}");
                        assert_eq!(
                            out,
                            serde_json::to_string(t).expect("json"),
                            "as serde_json writes it"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn headers_become_a_json_object_with_the_last_value_of_each() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().expect("value"));
        h.append("x-a", "2\"q".parse().expect("value"));
        h.insert("host", "h".parse().expect("value"));
        h.insert(
            "x-c",
            HeaderValue::from_bytes(b"a\\b\tc\xff").expect("value"),
        );
        h.append("x-a", "3".parse().expect("value"));
        h.append("x-a", "4".parse().expect("value"));
        let text = headers_json(&h);
        // Each name once (a JSON parser would let a repeated key through).
        assert_eq!(text.matches("\"x-a\"").count(), 1, "{text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"x-a": "4", "host": "h", "x-c": "a\\b\tc\u{fffd}"})
        );
    }

    #[test]
    fn cookies_are_parsed_and_left_out_of_the_headers() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1; b=\"two\"; a=3; junk".parse().expect("value"));
        h.insert("x-b", "v".parse().expect("value"));
        let cookies: Value =
            serde_json::from_str(&cookies_json(&h).expect("cookies")).expect("json");
        assert_eq!(cookies, serde_json::json!({"a": "3", "b": "two"}));
        let headers: Value = serde_json::from_str(&headers_json(&h)).expect("json");
        assert_eq!(headers, serde_json::json!({"x-b": "v"}));
        assert_eq!(cookies_json(&HeaderMap::new()).expect("none"), "{}");
    }
}
