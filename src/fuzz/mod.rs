//! Property-based fuzzing of every parser that reads client input: any input
//! gives a value or a typed error, never a panic and never unbounded
//! recursion. The ordinary test run checks about 10,000 cases per parser
//! (`PROPTEST_CASES` changes that; `scripts/fuzz` runs far more), and
//! proptest prints the failing input and its seed.
//!
//! Each property runs the parser on three kinds of input: random text over
//! an alphabet rich in the parser's own syntax, text built from its tokens
//! (so that deep nesting and long lists come up), and inputs made deep or
//! long on purpose, thousands of levels past every bound. Each case must
//! finish within [`BUDGET`], so a quadratic path shows up as a failure.
//!
//! The properties are grouped by input surface: [`query_string`] (the
//! query string's operations and logic trees), [`headers`] (`Prefer`,
//! `Accept`, `Content-Type`, `Cookie`, `Range`, `X-Pgrpc-Lsn`,
//! `Idempotency-Key`, `Access-Control-Request-Headers`), [`bodies`] (JSON,
//! form and batch bodies), [`auth`] (JWTs, API keys and what an identity
//! provider sends) and [`trace`] (`traceparent`, `tracestate`). This file
//! holds the strategies and the time bound they share.

mod auth;
mod bodies;
mod headers;
mod query_string;
mod trace;

use std::time::{Duration, Instant};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 10_000;

/// The longest one case may take, even in a debug build on a busy machine.
const BUDGET: Duration = Duration::from_secs(2);

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Runs `parse` and fails the case when it takes longer than [`BUDGET`].
fn bounded<T>(what: &str, parse: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let started = Instant::now();
    let value = parse();
    let took = started.elapsed();
    prop_assert!(took < BUDGET, "{what} took {took:?}");
    Ok(value)
}

/// Text of up to `max` pieces of `alphabet` (a byte vector picks them:
/// much cheaper to generate and shrink than a vector of choices).
fn text_of(alphabet: &'static [&'static str], max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(any::<u8>(), 0..max)
        .prop_map(move |picks| {
            picks
                .into_iter()
                .map(|i| alphabet[usize::from(i) % alphabet.len()])
                .collect()
        })
        .boxed()
}

/// Random text with the query string's syntax, NUL and non-ASCII included.
fn syntax_text() -> BoxedStrategy<String> {
    const ALPHABET: &[&str] = &[
        "(", ")", ",", ".", "\"", "\\", "{", "}", "[", "]", "a", "b", "1", "*", ":", ";", "=", " ",
        "\0", "é", "%", "&", "!", "-", "'",
    ];
    prop_oneof![any::<String>(), text_of(ALPHABET, 300)].boxed()
}

/// `open`×depth + `inner` + `close`×depth, closed or not.
fn nested(open: &'static str, inner: &'static str, close: &'static str) -> BoxedStrategy<String> {
    (0usize..2_000, any::<bool>())
        .prop_map(move |(depth, closed)| {
            let tail = if closed { depth } else { depth / 2 };
            format!("{}{inner}{}", open.repeat(depth), close.repeat(tail))
        })
        .boxed()
}

/// `unit` repeated up to 10 KB.
fn long(unit: &'static str) -> BoxedStrategy<String> {
    (0usize..10_000 / unit.len())
        .prop_map(move |n| unit.repeat(n))
        .boxed()
}

/// Bytes a header value may hold (visible ASCII, tab, obs-text): any byte,
/// with the control characters HTTP refuses moved into the visible range.
fn header_bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
        .prop_map(|bytes| {
            bytes
                .into_iter()
                .map(|b| match b {
                    b'\t' => b,
                    0..=0x1f => b | 0x40,
                    0x7f => b'~',
                    _ => b,
                })
                .collect()
        })
        .boxed()
}

fn headers(name: &'static str, values: &[Vec<u8>]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        if let Ok(value) = HeaderValue::from_bytes(v) {
            h.append(HeaderName::from_static(name), value);
        }
    }
    h
}
