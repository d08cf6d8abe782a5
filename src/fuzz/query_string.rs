//! The query string: arguments and operations, logic trees up to and
//! past their depth bound, filters, `select`, `order`, `limit` and
//! `offset`; what parses must also compile or be refused.

use super::*;
use crate::db::schema::Column;
use crate::http::request;
use crate::query::{self, Cond, QueryError};

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

    // The pairs of a query string or form body, any bytes: exactly what
    // form_urlencoded decodes (its fast path borrows a plain pair).
    #[test]
    fn query_pairs_decode_as_form_urlencoded_does(
        text in prop_oneof![
            4 => text_of(&["a", "=", "&", "+", "%", "%2", "%41", "%zz", "%C3%A9", "é", "\u{0}", " ", "=="][..], 40),
            2 => syntax_text(),
        ],
        raw in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        for bytes in [text.as_bytes(), &raw[..]] {
            let ours: Vec<_> = request::pairs(bytes).collect();
            let theirs: Vec<_> = form_urlencoded::parse(bytes).collect();
            prop_assert_eq!(ours, theirs);
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
}
