//! Request bodies: JSON and form bodies nested far past the bound, and
//! the batch body of `POST /rpc`.

use super::*;
use crate::http::request;

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
