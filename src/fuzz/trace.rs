//! W3C Trace Context: any `traceparent` and `tracestate` give the
//! caller's context or a new one, within the bounds.

use super::*;

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
}
