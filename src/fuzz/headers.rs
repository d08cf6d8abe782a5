//! Request headers: `Prefer`, `Accept` and `Content-Type`, `Cookie`,
//! `Range`, `X-Pgrpc-Lsn` (and the `pgrpc_lsn` cookie), `Idempotency-Key`
//! (supabase-js sends it as an sf-string) and the preflight's
//! `Access-Control-Request-Headers`.

use super::*;
use crate::http::{consistency, request};

/// An sf-string of `key` (RFC 8941 §4.1.6): the inverse of the parser.
fn sf_serialize(key: &str) -> String {
    format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
}

proptest! {
    #![proptest_config(config())]

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
}
