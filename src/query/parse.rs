//! Parsing the query string's operations into [`QueryOps`](super::QueryOps)
//! values: syntax only, within the bounds of docs/limits.md (a malformed
//! or oversized operation is 400 `PGRST100`).

use super::{
    Cond, Op, OrderTerm, Quant, QueryError, MAX_IN_ITEMS, MAX_OPERAND_BYTES, MAX_OPERAND_NESTING,
    MAX_ORDER_TERMS, MAX_SELECT_ITEMS, MAX_TREE_DEPTH,
};

fn limit(what: &'static str, limit: usize, unit: &'static str) -> QueryError {
    QueryError::Limit { what, limit, unit }
}

/// The deepest nesting of parentheses in `s`.
fn paren_depth(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in s.bytes() {
        match b {
            b'(' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Bounds an operand PostgreSQL parses as a pattern or a query.
fn check_operand(operand: &str, nests: bool) -> Result<(), QueryError> {
    if operand.len() > MAX_OPERAND_BYTES {
        return Err(limit(
            "An fts, like or match operand",
            MAX_OPERAND_BYTES,
            "bytes",
        ));
    }
    if nests && paren_depth(operand) > MAX_OPERAND_NESTING {
        return Err(limit(
            "An fts or match operand",
            MAX_OPERAND_NESTING,
            "levels of parentheses",
        ));
    }
    Ok(())
}

fn parse_err(what: &'static str, value: &str) -> QueryError {
    QueryError::Parse {
        what,
        value: value.chars().take(200).collect(),
    }
}

fn comparison(name: &str) -> Option<&'static str> {
    Some(match name {
        "eq" => "=",
        "neq" => "<>",
        "gt" => ">",
        "gte" => ">=",
        "lt" => "<",
        "lte" => "<=",
        "cs" => "@>",
        "cd" => "<@",
        "ov" => "&&",
        "sl" => "<<",
        "sr" => ">>",
        "nxr" => "&<",
        "nxl" => "&>",
        "adj" => "-|-",
        "isdistinct" => "IS DISTINCT FROM",
        _ => return None,
    })
}

fn text_op(name: &str) -> Option<&'static str> {
    Some(match name {
        "like" => "LIKE",
        "ilike" => "ILIKE",
        "match" => "~",
        "imatch" => "~*",
        _ => return None,
    })
}

fn fts_fn(name: &str) -> Option<&'static str> {
    Some(match name {
        "fts" => "to_tsquery",
        "plfts" => "plainto_tsquery",
        "phfts" => "phraseto_tsquery",
        "wfts" => "websearch_to_tsquery",
        _ => return None,
    })
}

/// Whether `value` starts with an operator (`eq.`, `not.in.`, `fts(en).`):
/// on GET, such a parameter is a filter, any other a function argument.
pub fn has_operator(value: &str) -> bool {
    let v = value.strip_prefix("not.").unwrap_or(value);
    let Some((head, _)) = v.split_once('.') else {
        return false;
    };
    let name = head.split_once('(').map_or(head, |(n, _)| n);
    comparison(name).is_some()
        || text_op(name).is_some()
        || fts_fn(name).is_some()
        || matches!(name, "in" | "is")
}

/// `column=value` as a filter.
pub fn parse_filter(column: &str, value: &str) -> Result<Cond, QueryError> {
    let column = column.trim();
    if column.is_empty() {
        return Err(parse_err("filter", value));
    }
    let (negate, rest) = match value.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (head, operand) = rest
        .split_once('.')
        .ok_or_else(|| parse_err("filter", value))?;
    let (name, modifier) = match head.split_once('(') {
        Some((n, m)) => (
            n,
            Some(
                m.strip_suffix(')')
                    .ok_or_else(|| parse_err("filter", value))?,
            ),
        ),
        None => (head, None),
    };
    let quant = match modifier {
        None => Quant::One,
        Some("any") => Quant::Any,
        Some("all") => Quant::All,
        Some(_) if fts_fn(name).is_some() => Quant::One,
        Some(_) => return Err(parse_err("filter", value)),
    };
    let op = if let Some(sql) = comparison(name) {
        if quant != Quant::One && !matches!(name, "eq" | "neq" | "gt" | "gte" | "lt" | "lte") {
            return Err(parse_err("filter", value));
        }
        Op::Compare(sql, quant, operand.to_string())
    } else if let Some(sql) = text_op(name) {
        check_operand(operand, matches!(name, "match" | "imatch"))?;
        let operand = if matches!(name, "like" | "ilike") {
            operand.replace('*', "%")
        } else {
            operand.to_string()
        };
        Op::Text(sql, quant, operand)
    } else if let Some(func) = fts_fn(name) {
        check_operand(operand, true)?;
        Op::Fts(func, modifier.map(str::to_string), operand.to_string())
    } else if name == "in" && quant == Quant::One {
        let inner = operand
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| parse_err("filter", value))?;
        let items = if inner.is_empty() {
            Vec::new()
        } else {
            let parts = split_top(inner).ok_or_else(|| parse_err("filter", value))?;
            if parts.len() > MAX_IN_ITEMS {
                return Err(limit("An in list", MAX_IN_ITEMS, "items"));
            }
            parts.into_iter().map(unquote).collect()
        };
        Op::In(items)
    } else if name == "is" && quant == Quant::One {
        Op::Is(match operand.to_ascii_lowercase().as_str() {
            "null" => "IS NULL",
            "not_null" => "IS NOT NULL",
            "true" => "IS TRUE",
            "false" => "IS FALSE",
            "unknown" => "IS UNKNOWN",
            _ => return Err(parse_err("filter", value)),
        })
    } else {
        return Err(parse_err("filter", value));
    };
    Ok(Cond::Filter {
        column: column.to_string(),
        negate,
        op,
    })
}

/// `or=(a.eq.1,and(b.gt.2,c.is.null))`: `key` is `or`, `and`, `not.or` or
/// `not.and`. Trees nest at most [`MAX_TREE_DEPTH`] levels, so the
/// recursion is bounded, and each level scans its own text once: the work
/// is at most `MAX_TREE_DEPTH` passes over the value, linear in its length.
pub fn parse_tree(key: &str, value: &str) -> Result<Cond, QueryError> {
    parse_tree_at(key, value, 1)
}

fn parse_tree_at(key: &str, value: &str, depth: usize) -> Result<Cond, QueryError> {
    if depth > MAX_TREE_DEPTH {
        return Err(limit("A logic tree", MAX_TREE_DEPTH, "levels of nesting"));
    }
    let (negate, kind) = match key.strip_prefix("not.") {
        Some(k) => (true, k),
        None => (false, key),
    };
    let or = match kind {
        "or" => true,
        "and" => false,
        _ => return Err(parse_err("logic tree", value)),
    };
    let inner = value
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| parse_err("logic tree", value))?;
    let parts = split_top(inner).ok_or_else(|| parse_err("logic tree", value))?;
    if parts.is_empty() {
        return Err(parse_err("logic tree", value));
    }
    let mut items = Vec::new();
    for part in parts {
        let part = part.trim();
        let nested = ["not.or(", "not.and(", "or(", "and("]
            .iter()
            .find(|p| part.starts_with(**p));
        if let Some(prefix) = nested {
            let key = &prefix[..prefix.len() - 1];
            items.push(parse_tree_at(key, &part[key.len()..], depth + 1)?);
        } else {
            let (column, rest) = part
                .split_once('.')
                .ok_or_else(|| parse_err("logic tree", value))?;
            let rest = unquote_operand(rest);
            items.push(parse_filter(column, &rest)?);
        }
    }
    Ok(Cond::Tree { or, negate, items })
}

/// In a logic tree, `col.eq."a,b"`: the operand may be double-quoted.
fn unquote_operand(rest: &str) -> String {
    match rest.rfind('.') {
        Some(i) if rest[i + 1..].starts_with('"') && !rest[..i].ends_with("in") => {
            format!("{}.{}", &rest[..i], unquote(&rest[i + 1..]))
        }
        _ => rest.to_string(),
    }
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    match t.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => t.to_string(),
    }
}

/// Splits on commas outside parentheses, braces and double quotes; None
/// when they do not balance.
fn split_top(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    // Bytes, not chars: every delimiter is ASCII, and a UTF-8 sequence
    // never contains an ASCII byte, so each split falls on a char boundary.
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0usize);
    for (i, c) in s.bytes().enumerate() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => quoted = true,
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            b',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// `select=a,alias:b,*`.
pub fn parse_select(value: &str) -> Result<Option<Vec<(String, String)>>, QueryError> {
    if value.trim() == "*" {
        return Ok(None);
    }
    if value.split(',').nth(MAX_SELECT_ITEMS).is_some() {
        return Err(limit("select", MAX_SELECT_ITEMS, "items"));
    }
    let mut out = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        // `*` beside columns, casts, JSON paths and embedding splice more than a name.
        if item.is_empty()
            || item == "*"
            || item.contains("::")
            || item.contains("->")
            || item.contains('(')
            || item.contains('\0')
        {
            return Err(parse_err("select", value));
        }
        let (alias, column) = match item.split_once(':') {
            Some((a, c)) => (a.trim(), c.trim()),
            None => (item, item),
        };
        if alias.is_empty() || column.is_empty() {
            return Err(parse_err("select", value));
        }
        out.push((alias.to_string(), column.to_string()));
    }
    Ok(Some(out))
}

/// `order=a.desc.nullslast,b`.
pub fn parse_order(value: &str) -> Result<Vec<OrderTerm>, QueryError> {
    if value.split(',').nth(MAX_ORDER_TERMS).is_some() {
        return Err(limit("order", MAX_ORDER_TERMS, "terms"));
    }
    let mut out = Vec::new();
    for item in value.split(',') {
        let mut parts = item.trim().split('.');
        let column = parts.next().unwrap_or("").trim();
        if column.is_empty() {
            return Err(parse_err("order", value));
        }
        let mut term = OrderTerm {
            column: column.to_string(),
            desc: false,
            nulls_first: None,
        };
        for p in parts {
            match p {
                "asc" => term.desc = false,
                "desc" => term.desc = true,
                "nullsfirst" => term.nulls_first = Some(true),
                "nullslast" => term.nulls_first = Some(false),
                _ => return Err(parse_err("order", value)),
            }
        }
        out.push(term);
    }
    Ok(out)
}

/// A non-negative row count for `limit`/`offset`.
pub fn parse_count(what: &'static str, value: &str) -> Result<i64, QueryError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| parse_err(what, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_recognised_only_with_a_dot() {
        assert!(has_operator("eq.1"));
        assert!(has_operator("not.in.(1,2)"));
        assert!(has_operator("fts(english).cat"));
        assert!(has_operator("eq(any).{1,2}"));
        assert!(!has_operator("eq"));
        assert!(!has_operator("hello.world"));
        assert!(!has_operator("42"));
    }

    #[test]
    fn filters_parse_as_postgrest_writes_them() {
        let f = parse_filter("x", "not.in.(1,\"a,b\",3)").expect("in");
        assert_eq!(
            f,
            Cond::Filter {
                column: "x".into(),
                negate: true,
                op: Op::In(vec!["1".into(), "a,b".into(), "3".into()])
            }
        );
        assert!(matches!(
            parse_filter("x", "like.a*b").expect("like"),
            Cond::Filter { op: Op::Text("LIKE", Quant::One, ref v), .. } if v == "a%b"
        ));
        assert!(parse_filter("x", "is.maybe").is_err());
        assert!(parse_filter("x", "nope.1").is_err());
        assert!(parse_filter("x", "cs(any).1").is_err());
        let t = parse_tree("or", "(a.eq.1,and(b.gt.2,c.is.null))").expect("tree");
        let Cond::Tree {
            or: true, items, ..
        } = t
        else {
            panic!("not an or tree")
        };
        assert_eq!(items.len(), 2);
        assert!(parse_tree("or", "(a.eq.1").is_err());
    }

    #[test]
    fn select_and_order_parse() {
        assert_eq!(
            parse_select("a, b:c").expect("select"),
            Some(vec![("a".into(), "a".into()), ("b".into(), "c".into())])
        );
        assert_eq!(parse_select("*").expect("star"), None);
        assert!(parse_select("a::text").is_err());
        let o = parse_order("a.desc.nullslast,b").expect("order");
        assert!(o[0].desc);
        assert_eq!(o[0].nulls_first, Some(false));
        assert!(parse_order("a.sideways").is_err());
        assert!(parse_count("limit", "-1").is_err());
        assert!(parse_count("limit", "99999999999999999999").is_err());
    }
}
