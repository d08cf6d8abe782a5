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

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use crate::db::schema::Column;
use crate::http::{consistency, request};
use crate::query::{self, Cond, QueryError};

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

/// Logic-tree and filter tokens, so that structure (and nesting) appears.
fn tree_text() -> BoxedStrategy<String> {
    const TOKENS: &[&str] = &[
        "or(",
        "and(",
        "not.or(",
        "not.and(",
        "(",
        ")",
        ",",
        "a.",
        "b.",
        "eq.",
        "not.",
        "in.(",
        "is.null",
        "fts(english).",
        "match.",
        "like.",
        "cs.",
        "eq(any).",
        "{",
        "}",
        "\"",
        "1",
        "x,y",
        "\\",
    ];
    text_of(TOKENS, 400)
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

fn depth(cond: &Cond) -> usize {
    match cond {
        Cond::Filter { .. } => 0,
        Cond::Tree { items, .. } => 1 + items.iter().map(depth).max().unwrap_or(0),
    }
}

fn columns() -> Vec<Column> {
    ["a", "b", "x"]
        .iter()
        .map(|n| Column {
            name: n.to_string(),
            type_sql: "text".into(),
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    // The whole query string: any bytes give arguments and operations or a
    // typed error, and what parses also compiles or is refused.
    #[test]
    fn query_strings_parse_or_are_refused(
        text in prop_oneof![
            8 => syntax_text(), 8 => tree_text(), 1 => long("a=b&"), 1 => long("or=(a.eq.1)&"),
        ],
        args in any::<bool>(),
    ) {
        let parsed = bounded("parse_query", || request::parse_query(text.as_bytes(), args))?;
        if let Ok((_, ops)) = parsed {
            prop_assert!(ops.filters.iter().all(|f| depth(f) <= query::MAX_TREE_DEPTH));
            bounded("compile", || query::compile(&ops, &columns(), false, 2))?.ok();
        }
    }

    // Logic trees of any shape: never deeper than the bound, never a
    // panic, and compiling one stays within the same bound.
    #[test]
    fn logic_trees_parse_within_their_depth_bound(
        key in prop::sample::select(&["or", "and", "not.or", "not.and", "nor"][..]),
        body in prop_oneof![
            8 => tree_text(),
            8 => syntax_text(),
            1 => nested("or(", "a.eq.1", ")"),
            1 => nested("not.and(", "a.in.(1,2)", ")"),
            1 => long("a.eq.1,"),
        ],
    ) {
        let value = format!("({body})");
        if let Ok(tree) = bounded("parse_tree", || query::parse_tree(key, &value))? {
            prop_assert!(depth(&tree) <= query::MAX_TREE_DEPTH);
            let ops = query::QueryOps { filters: vec![tree], ..Default::default() };
            bounded("compile", || query::compile(&ops, &columns(), false, 2))?.ok();
        }
    }

    // A tree exactly `levels` deep parses up to the bound and is refused
    // with the limit error past it.
    #[test]
    fn logic_trees_are_refused_exactly_past_sixty_four_levels(levels in 1usize..200) {
        let value = format!("({}a.eq.1{})", "and(".repeat(levels - 1), ")".repeat(levels - 1));
        let parsed = bounded("parse_tree", || query::parse_tree("or", &value))?;
        if levels <= query::MAX_TREE_DEPTH {
            prop_assert_eq!(parsed.map(|t| depth(&t)).ok(), Some(levels));
        } else {
            let refused = matches!(parsed, Err(QueryError::Limit { .. }));
            prop_assert!(refused, "{} levels were not refused", levels);
        }
    }

    // One filter: operators, modifiers, in lists and operands of any
    // length or nesting give a condition or a typed error; fts and match
    // operands past their bounds are refused.
    #[test]
    fn filters_parse_or_are_refused(
        column in syntax_text(),
        op in prop::sample::select(&["", "eq.", "not.", "in.", "fts.", "fts(english).", "plfts.",
            "phfts.", "wfts.", "match.", "imatch.", "like.", "ilike.", "is.", "eq(any).", "cs(all)."][..]),
        operand in prop_oneof![
            8 => syntax_text(), 1 => nested("(", "a", ")"), 1 => long("a"), 1 => long("(1,"),
        ],
    ) {
        let value = format!("{op}{operand}");
        let parsed = bounded("parse_filter", || query::parse_filter(&column, &value))?;
        let patterned = ["fts", "plfts", "phfts", "wfts", "match", "imatch", "like", "ilike"]
            .iter()
            .any(|p| op.starts_with(p));
        if patterned && operand.len() > query::MAX_OPERAND_BYTES {
            prop_assert!(parsed.is_err());
        }
    }

    // select, order, limit and offset.
    #[test]
    fn select_order_and_counts_parse_or_are_refused(
        text in prop_oneof![8 => syntax_text(), 1 => long("a,"), 1 => long("a.desc.nullslast,")],
    ) {
        bounded("parse_select", || query::parse_select(&text))?.ok();
        bounded("parse_order", || query::parse_order(&text))?.ok();
        bounded("parse_count", || query::parse_count("limit", &text))?.ok();
        bounded("has_operator", || query::has_operator(&text))?;
    }

    // Prefer: any headers give preferences (or a list too long), and
    // applying them gives a decision or a typed error.
    #[test]
    fn prefer_headers_parse_and_apply(
        values in prop::collection::vec(
            prop_oneof![
                12 => header_bytes(200),
                1 => long("count=exact,").prop_map(String::into_bytes),
            ],
            0..4,
        ),
        tx_end in prop::sample::select(&[
            crate::prefer::TxEnd::Commit,
            crate::prefer::TxEnd::CommitAllowOverride,
            crate::prefer::TxEnd::Rollback,
            crate::prefer::TxEnd::RollbackAllowOverride,
        ][..]),
    ) {
        let h = headers("prefer", &values);
        bounded("check_header_lists", || request::check_header_lists(&h))?.ok();
        let prefs = bounded("Preferences", || crate::prefer::Preferences::from_headers(&h))?;
        if let Ok(applied) = bounded("apply", || prefs.apply(tx_end, |z| z == "UTC"))? {
            bounded("header_text", || applied.header_text())?;
        }
    }

    // Accept and Content-Type: any bytes are read as media types.
    #[test]
    fn accept_and_content_type_parse(
        value in prop_oneof![
            12 => header_bytes(300),
            1 => long("text/csv;q=0.5,").prop_map(String::into_bytes),
            1 => long("application/x-ndjson;q=0.9,").prop_map(String::into_bytes),
        ],
    ) {
        let h = headers("accept", std::slice::from_ref(&value));
        bounded("check_header_lists", || request::check_header_lists(&h))?.ok();
        let ranges = bounded("parse_accept", || crate::media::parse_accept(Some(&value)))?;
        prop_assert!(!ranges.is_empty() || value.split(|b| *b == b',').count() == 0);
        // NDJSON is only ever the media type named exactly (any case).
        for range in &ranges {
            if *range == crate::media::MediaType::Ndjson {
                let text: String = String::from_utf8_lossy(&value)
                    .chars()
                    .filter(|c| *c != ' ')
                    .collect::<String>()
                    .to_ascii_lowercase();
                prop_assert!(text.contains("application/x-ndjson"));
            }
        }
        bounded("body_kind", || crate::media::body_kind(Some(&value)))?.ok();
    }

    // Cookie: any headers give a JSON object of at most the bounded
    // number of pairs, or the limit error, in linear time.
    #[test]
    fn cookies_give_a_json_object_or_the_limit(
        values in prop::collection::vec(
            prop_oneof![
                12 => header_bytes(300),
                1 => long("a=1; b=\"2\"; ").prop_map(String::into_bytes),
            ],
            0..4,
        ),
    ) {
        let h = headers("cookie", &values);
        if let Ok(json) = bounded("cookies_json", || request::cookies_json(&h))? {
            let parsed: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(parsed.len() <= request::MAX_COOKIE_PAIRS);
        }
    }

    // Range, X-Pgrpc-Lsn (and the pgrpc_lsn cookie) and Idempotency-Key.
    #[test]
    fn range_lsn_and_idempotency_key_parse_or_are_refused(
        value in prop_oneof![
            header_bytes(120),
            Just(b"items=0-9".to_vec()),
            Just(b"99999999999999999999-1".to_vec()),
            Just(b"FFFFFFFF/FFFFFFFF".to_vec()),
        ],
    ) {
        let range = headers("range", std::slice::from_ref(&value));
        bounded("range_header", || request::range_header(&range))?.ok();
        let lsn = headers("x-pgrpc-lsn", std::slice::from_ref(&value));
        bounded("requested_lsn", || consistency::requested_lsn(&lsn))?.ok();
        let mut cookie = b"pgrpc_lsn=".to_vec();
        cookie.extend_from_slice(&value);
        let cookie = headers("cookie", &[cookie]);
        bounded("requested_lsn", || consistency::requested_lsn(&cookie))?.ok();
        let text = String::from_utf8_lossy(&value);
        bounded("Lsn", || text.parse::<crate::db::lsn::Lsn>())?.ok();
        let key = headers("idempotency-key", std::slice::from_ref(&value));
        bounded("idempotency_key", || request::idempotency_key(&key, true))?.ok();
    }

    // JSON and form bodies: any bytes, and nesting far past the bound,
    // give arguments or a typed error (never serde's recursion overflow).
    #[test]
    fn bodies_parse_or_are_refused(
        body in prop_oneof![
            8 => syntax_text(),
            1 => nested("[", "1", "]"),
            1 => nested("{\"a\":", "1", "}"),
            1 => long("{\"a\":[1,\"x\"]},"),
        ],
    ) {
        bounded("parse_json_body", || request::parse_json_body(body.as_bytes()))?.ok();
        bounded("parse_pairs", || request::parse_pairs(body.as_bytes()))?.ok();
    }

    // JWT: any Authorization header, any header and claims segments, and
    // correctly signed tokens with any payload give an identity or an
    // AuthError.
    #[test]
    fn tokens_give_an_identity_or_an_auth_error(
        authorization in prop_oneof![
            header_bytes(300),
            syntax_text().prop_map(|t| format!("Bearer {t}").into_bytes()),
        ],
        payload in prop_oneof![
            8 => syntax_text(),
            1 => nested("{\"a\":", "1", "}"),
            1 => Just("{\"role\":\"a\",\"role\":\"b\"}".to_string()),
            1 => Just("{\"role\":[1],\"exp\":\"soon\",\"aud\":{}}".to_string()),
        ],
    ) {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let auth = jwt_auth();
        let roles = HashSet::from(["pgrpc_user".to_string()]);
        bounded("identify", || auth.identify(Some(&authorization), &roles))?.ok();
        let unsigned = format!("{}.{}", b64(payload.as_bytes()), b64(payload.as_bytes()));
        bounded("strict_claims", || crate::auth::claims::strict_claims(&unsigned))?.ok();
        let message = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(payload.as_bytes()));
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let header = format!("Bearer {message}.{signature}");
        bounded("identify", || auth.identify(Some(header.as_bytes()), &roles))?.ok();
    }
}

const JWT_SECRET: &str = "fuzzing-secret-that-is-long-enough-0123456789";

fn jwt_auth() -> &'static crate::auth::Auth {
    static AUTH: std::sync::OnceLock<crate::auth::Auth> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let mut config = crate::config::ServeConfig::new("postgres://fuzz@localhost/fuzz");
        config.jwt_secret = Some(JWT_SECRET.to_string());
        crate::auth::Auth::new(&config).unwrap_or_else(|e| panic!("test auth: {e}"))
    })
}

// ---- trace context: traceparent and tracestate ----

/// Text over the syntax of the trace context headers.
fn trace_text() -> BoxedStrategy<String> {
    text_of(
        &[
            "00",
            "-",
            "0",
            "f",
            "a",
            "F",
            "=",
            ",",
            " ",
            "\t",
            "@",
            "k",
            "v",
            "*",
            "/",
            "_",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            "01",
            "ff",
        ],
        200,
    )
}

// ---- supabase-js: Idempotency-Key strings, apikey, API keys files, CORS names ----

/// An sf-string of `key` (RFC 8941 §4.1.6): the inverse of the parser.
fn sf_serialize(key: &str) -> String {
    format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
}

fn api_keys_auth() -> &'static crate::auth::Auth {
    static AUTH: std::sync::OnceLock<crate::auth::Auth> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgrpc-fuzz-keys-{}", std::process::id()));
        let text = format!(
            "{} pgrpc_user {{\"sub\": \"fuzz\"}}\n",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"sb_secret_fuzz"))
        );
        std::fs::write(&dir, text).unwrap_or_else(|e| panic!("keys file: {e}"));
        let mut config = crate::config::ServeConfig::new("postgres://fuzz@localhost/fuzz");
        config.jwt_secret = Some(JWT_SECRET.to_string());
        config.api_keys = Some(dir.to_string_lossy().into_owned());
        crate::auth::Auth::new(&config).unwrap_or_else(|e| panic!("test auth: {e}"))
    })
}

proptest! {
    #![proptest_config(config())]

    // Any traceparent and tracestate give the caller's context or a new
    // one, never a panic: an accepted traceparent is exactly what W3C
    // allows and prints back unchanged, a kept tracestate is within its
    // bounds, and what SQL is shown is always a valid traceparent.
    #[test]
    fn trace_context_headers_give_a_valid_context_within_bounds(
        parents in prop::collection::vec(prop_oneof![
            4 => trace_text().prop_map(String::into_bytes),
            2 => header_bytes(80),
            1 => long("0").prop_map(String::into_bytes),
        ], 0..3),
        states in prop::collection::vec(prop_oneof![
            4 => trace_text().prop_map(String::into_bytes),
            1 => header_bytes(600),
            1 => long("k=v,").prop_map(String::into_bytes),
            1 => (0usize..10_000).prop_map(|n| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",").into_bytes()),
        ], 0..4),
    ) {
        for p in &parents {
            if let Some(parsed) = bounded("traceparent", || crate::trace::TraceParent::parse(p))? {
                let printed = parsed.header();
                prop_assert_eq!(printed.as_bytes(), p.as_slice());
                prop_assert!(parsed.trace_id != [0; 16] && parsed.parent_id != [0; 8]);
            }
        }
        let kept = bounded("tracestate", || crate::trace::parse_tracestate(states.iter().map(Vec::as_slice)))?;
        if let Some(state) = &kept {
            prop_assert!(state.len() <= crate::trace::MAX_TRACESTATE_BYTES);
            prop_assert!(state.split(',').count() <= crate::trace::MAX_TRACESTATE_MEMBERS);
        }
        let mut h = headers("traceparent", &parents);
        for s in &states {
            if let Ok(value) = HeaderValue::from_bytes(s) {
                h.append(HeaderName::from_static("tracestate"), value);
            }
        }
        let trace = bounded("request trace", || crate::trace::RequestTrace::from_headers(&h))?;
        trace.apply(&mut h);
        let shown = h.get("traceparent").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        prop_assert!(crate::trace::TraceParent::parse(&shown).is_some());
        prop_assert!(h.get_all("traceparent").iter().count() == 1);
        prop_assert!(h.get_all("tracestate").iter().count() <= 1);
    }

    // Idempotency-Key: any header bytes give a key or a refusal, within
    // the bound; a quoted key that parses serializes back to the input.
    #[test]
    fn idempotency_key_strings_parse_or_are_refused(
        value in prop_oneof![
            header_bytes(1200),
            text_of(&["\"", "\\", "a", "\\\"", "\\\\", " ", ";", "=", "\t", "é"], 300).prop_map(String::into_bytes),
            long("\\\\").prop_map(|t| format!("\"{t}\"").into_bytes()),
        ],
    ) {
        let key = bounded("idempotency_key", || crate::http::headers::idempotency_key(&value))?;
        if let Some(key) = key {
            prop_assert!(value.len() <= crate::http::headers::MAX_IDEMPOTENCY_KEY_HEADER_BYTES);
            prop_assert!(key.len() <= value.len());
            let trimmed = value.trim_ascii();
            if trimmed.starts_with(b"\"") {
                let again = sf_serialize(&key);
                prop_assert_eq!(again.as_bytes(), trimmed);
            }
        }
        let h = headers("idempotency-key", &[value]);
        bounded("request::idempotency_key", || request::idempotency_key(&h, true))?.ok();
    }

    // Access-Control-Request-Headers: names or a refusal; never more than
    // the bound, and every name reflected is a header name.
    #[test]
    fn preflight_header_lists_are_bounded(
        value in prop_oneof![
            header_bytes(5000),
            text_of(&["x-a", ",", " ", "apikey", ":", "\"", "é", ",,"], 400).prop_map(String::into_bytes),
            long("x-a,").prop_map(String::into_bytes),
        ],
    ) {
        if let Ok(names) = bounded("requested_names", || crate::http::cors::requested_names(&value))? {
            prop_assert!(names.len() <= crate::http::cors::MAX_REQUEST_HEADER_NAMES);
            prop_assert!(value.len() <= crate::http::cors::MAX_REQUEST_HEADERS_BYTES);
            for name in names {
                prop_assert!(HeaderName::from_bytes(name.as_bytes()).is_ok());
            }
        }
    }

    // API keys files: any text gives keys or an error naming what is
    // wrong, never more than the bound; any apikey header gives an
    // identity or an AuthError.
    #[test]
    fn api_keys_and_apikey_headers_parse_or_are_refused(
        file in prop_oneof![
            syntax_text(),
            text_of(&["0123456789abcdef", "a", " ", "\n", "#", "pgrpc_user", "{\"a\":1}", "[", "]", "{", "\"sha256\""], 200),
        ],
        apikey in prop_oneof![
            header_bytes(300),
            Just(b"sb_secret_fuzz".to_vec()),
            syntax_text().prop_map(String::into_bytes),
        ],
    ) {
        if let Ok(keys) = bounded("ApiKeys::parse", || crate::auth::api_keys::ApiKeys::parse(&file))? {
            prop_assert!(keys.len() <= crate::auth::api_keys::MAX_API_KEYS);
        }
        let auth = api_keys_auth();
        let roles = HashSet::from(["pgrpc_user".to_string()]);
        let id = bounded("identify_request", || auth.identify_request(None, Some(&apikey), &roles))?;
        if apikey == b"sb_secret_fuzz" {
            let role = id.map(|i| i.role).ok();
            prop_assert_eq!(role.as_deref(), Some("pgrpc_user"));
        }
    }
}

// ---- jwks: documents from an identity provider ----

/// JSON tokens of JWK Sets and discovery documents, so that members,
/// key types and nesting come up.
fn jwks_text() -> BoxedStrategy<String> {
    text_of(
        &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\"keys\"",
            "\"kty\"",
            "\"RSA\"",
            "\"EC\"",
            "\"OKP\"",
            "\"oct\"",
            "\"crv\"",
            "\"P-256\"",
            "\"Ed25519\"",
            "\"x\"",
            "\"y\"",
            "\"n\"",
            "\"e\"",
            "\"k\"",
            "\"kid\"",
            "\"alg\"",
            "\"use\"",
            "\"sig\"",
            "\"enc\"",
            "\"AQAB\"",
            "\"AA\"",
            "\"issuer\"",
            "\"jwks_uri\"",
            "\"http://a/j\"",
            "null",
            "true",
            "1",
            "-1",
            "1e999",
            "\\u0000",
            "é",
        ],
        200,
    )
}

proptest! {
    #![proptest_config(config())]

    // A fetched JWK Set, discovery document or Cache-Control value gives
    // keys, a URL, a max-age or a typed error, never a panic; a set that
    // parses holds at most MAX_KEYS keys, none of them symmetric.
    #[test]
    fn fetched_key_documents_parse_or_are_refused(
        body in prop_oneof![
            8 => jwks_text(),
            1 => nested("{\"keys\":[", "{\"kty\":\"oct\",\"k\":\"AA\"}", "]}"),
            1 => long("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"},"),
            1 => header_bytes(300).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
        cache_control in header_bytes(100),
    ) {
        use crate::auth::jwks_fetch;
        let wrapped = format!("{{\"keys\":[{body}]}}");
        for doc in [body.as_str(), wrapped.as_str()] {
            if let Ok(parsed) = bounded("parse_jwks", || jwks_fetch::parse_jwks(doc.as_bytes()))? {
                prop_assert!(parsed.keys.len() <= jwks_fetch::MAX_KEYS);
                let accepted: serde_json::Value = serde_json::from_str(&parsed.fingerprint)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let members = accepted.as_array().cloned().unwrap_or_default();
                prop_assert!(members.iter().all(|m| m["kty"] != "oct"));
            }
            bounded("parse_discovery", || jwks_fetch::parse_discovery(doc.as_bytes(), "http://a"))?.ok();
        }
        let value = String::from_utf8_lossy(&cache_control).into_owned();
        bounded("max_age", || jwks_fetch::max_age([value.as_str()]))?;
    }
}

/// Batch bodies: calls, keys and values that are almost right.
fn batch_text() -> BoxedStrategy<String> {
    text_of(
        &[
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            "\"fn\"",
            "\"args\"",
            "\"api.create_team\"",
            "\"x\"",
            "{\"fn\":\"f\"}",
            "{\"fn\":\"f\",\"args\":{\"a\":1}}",
            "null",
            "1",
            "\"\\u0000\"",
            " ",
        ],
        300,
    )
}

proptest! {
    #![proptest_config(config())]

    // A batch body gives between one and `max` calls, each naming a
    // function and carrying an argument object, or a typed 400/413: never a
    // panic, and never more calls than the bound, however long the array.
    #[test]
    fn batch_bodies_parse_within_their_bound_or_are_refused(
        body in prop_oneof![
            6 => batch_text(),
            2 => any::<String>(),
            1 => long("{\"fn\":\"f\",\"args\":{}},"),
            1 => nested("[{\"fn\":\"f\",\"args\":{\"a\":", "[", "]}}]"),
        ],
        max in 1usize..150,
    ) {
        use crate::http::batch;
        let wrapped = format!("[{}]", body.trim_end_matches(','));
        for text in [body.as_str(), wrapped.as_str()] {
            match bounded("parse_batch", || batch::parse_batch(text, max))? {
                Ok(calls) => {
                    prop_assert!(!calls.is_empty() && calls.len() <= max);
                    for call in &calls {
                        prop_assert!(!call.function.is_empty());
                        let args: serde_json::Value = serde_json::from_str(&call.args)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(args.is_object());
                    }
                }
                Err(e) => {
                    let status = crate::error::ApiError::from(e).status.as_u16();
                    prop_assert!(status == 400 || status == 413);
                }
            }
        }
    }
}
