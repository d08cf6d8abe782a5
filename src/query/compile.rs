//! Compiling [`QueryOps`] against a routine's result columns into the
//! WHERE, ORDER BY and SELECT fragments of a statement, every value a bound
//! text parameter.

use std::fmt::Write as _;

use super::{Cond, Op, Quant, QueryError, QueryOps};
use crate::db::quote_ident;
use crate::db::schema::Column;

/// The WHERE, ORDER BY and SELECT parts of a statement, and the text
/// parameters they bind, from `$first` on.
pub struct Compiled {
    /// The CTE's column list: every result column, named.
    pub source_cols: String,
    pub where_sql: String,
    pub order_sql: String,
    /// The outer select list over the CTE `_f`.
    pub select_sql: String,
    /// The body expression is `json_agg(_s.<col>)` (a scalar set without
    /// `select`) rather than `json_agg(_s)`.
    pub bare_column: Option<String>,
    pub params: Vec<String>,
}

/// Resolves names against `columns` and builds the SQL fragments.
/// `scalar` marks a scalar SETOF, whose one column is `_r._r`.
pub fn compile(
    ops: &QueryOps,
    columns: &[Column],
    scalar: bool,
    first: usize,
) -> Result<Compiled, QueryError> {
    let find = |name: &str| -> Result<&Column, QueryError> {
        columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| QueryError::UnknownColumn(name.to_string()))
    };
    let src_expr = |c: &Column| {
        if scalar {
            "_r._r".to_string()
        } else {
            format!("_r.{}", quote_ident(&c.name))
        }
    };
    let source_cols = columns
        .iter()
        .map(|c| format!("{} AS {}", src_expr(c), quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut params: Vec<String> = Vec::new();
    let mut conds = Vec::new();
    for cond in &ops.filters {
        conds.push(compile_cond(cond, &find, &src_expr, &mut params, first)?);
    }
    let where_sql = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let mut order = Vec::new();
    for t in &ops.order {
        let c = find(&t.column)?;
        let mut s = format!("_f.{}", quote_ident(&c.name));
        s.push_str(if t.desc { " DESC" } else { " ASC" });
        match t.nulls_first {
            Some(true) => s.push_str(" NULLS FIRST"),
            Some(false) => s.push_str(" NULLS LAST"),
            None => {}
        }
        order.push(s);
    }
    let order_sql = if order.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", order.join(", "))
    };
    let (select_sql, bare_column) = match &ops.select {
        None => {
            let list = columns
                .iter()
                .map(|c| format!("_f.{0} AS {0}", quote_ident(&c.name)))
                .collect::<Vec<_>>()
                .join(", ");
            let bare = match (scalar, columns.first()) {
                (true, Some(c)) => Some(quote_ident(&c.name)),
                _ => None,
            };
            (list, bare)
        }
        Some(items) => {
            let mut list = Vec::new();
            for (alias, column) in items {
                let c = find(column)?;
                list.push(format!(
                    "_f.{} AS {}",
                    quote_ident(&c.name),
                    quote_ident(alias)
                ));
            }
            (list.join(", "), None)
        }
    };
    Ok(Compiled {
        source_cols,
        where_sql,
        order_sql,
        select_sql,
        bare_column,
        params,
    })
}

fn compile_cond<'c>(
    cond: &Cond,
    find: &dyn Fn(&str) -> Result<&'c Column, QueryError>,
    src_expr: &dyn Fn(&Column) -> String,
    params: &mut Vec<String>,
    first: usize,
) -> Result<String, QueryError> {
    let mut bind = |v: &str| {
        params.push(v.to_string());
        format!("${}", first + params.len() - 1)
    };
    let (negate, sql) = match cond {
        Cond::Tree { or, negate, items } => {
            let mut parts = Vec::new();
            for item in items {
                parts.push(compile_cond(item, find, src_expr, params, first)?);
            }
            let joiner = if *or { " OR " } else { " AND " };
            (*negate, format!("({})", parts.join(joiner)))
        }
        Cond::Filter { column, negate, op } => {
            let c = find(column)?;
            let e = src_expr(c);
            let t = &c.type_sql;
            let mut sql = String::new();
            match op {
                Op::Compare(o, Quant::One, v) => {
                    let p = bind(v);
                    let _ = write!(sql, "{e} {o} {p}::text::{t}");
                }
                Op::Compare(o, q, v) => {
                    let p = bind(v);
                    let q = if *q == Quant::Any { "ANY" } else { "ALL" };
                    let _ = write!(sql, "{e} {o} {q}({p}::text::{t}[])");
                }
                Op::Text(o, Quant::One, v) => {
                    let p = bind(v);
                    let _ = write!(sql, "{e}::text {o} {p}");
                }
                Op::Text(o, q, v) => {
                    let p = bind(v);
                    let q = if *q == Quant::Any { "ANY" } else { "ALL" };
                    let _ = write!(sql, "{e}::text {o} {q}({p}::text::text[])");
                }
                Op::In(items) if items.is_empty() => sql.push_str("false"),
                Op::In(items) => {
                    let list: Vec<String> = items
                        .iter()
                        .map(|v| format!("{}::text::{t}", bind(v)))
                        .collect();
                    let _ = write!(sql, "{e} IN ({})", list.join(", "));
                }
                Op::Is(what) => {
                    let _ = write!(sql, "{e} {what}");
                }
                Op::Fts(func, lang, v) => {
                    let lang = lang
                        .as_ref()
                        .map(|l| format!("{}::text::regconfig, ", bind(l)));
                    let p = bind(v);
                    let _ = write!(sql, "{e} @@ {func}({}{p})", lang.unwrap_or_default());
                }
            }
            (*negate, sql)
        }
    };
    Ok(if negate { format!("NOT ({sql})") } else { sql })
}
