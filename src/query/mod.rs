//! Query-string operations on a function's result, as PostgREST reads them
//! for RPC: `select`, horizontal filters (with `not.`, `or=()`, `and=()` and
//! the `any`/`all` modifiers), `order`, `limit` and `offset`.
//!
//! `http::request` parses the query string into [`QueryOps`] (syntax only:
//! a malformed operation is 400 `PGRST100`), with the parsers of `parse`;
//! `statement` compiles them with `compile` against the routine's result
//! columns from the schema cache (an unknown column is 400 `42703`). Column
//! names are only ever looked up, never spliced from the request, and every
//! value travels as a bound text parameter. This module holds the
//! operations as plain data, their error and their bounds.

mod compile;
mod parse;

pub use compile::{compile, Compiled};
pub use parse::{has_operator, parse_count, parse_filter, parse_order, parse_select, parse_tree};

use crate::error::{Fault, Pgrst};

/// Why the query string's operations cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("\"failed to parse {what} ({value})\" (line 1, column 1)")]
    Parse { what: &'static str, value: String },
    #[error("column {0} does not exist")]
    UnknownColumn(String),
    #[error("A function returning a single value cannot be filtered, ordered or paginated")]
    NotRows,
    /// A bound of docs/limits.md passed: `{what} may hold at most {limit} {unit}`.
    #[error("{what} may hold at most {limit} {unit}")]
    Limit {
        what: &'static str,
        limit: usize,
        unit: &'static str,
    },
    #[error("The query string may not contain NUL characters")]
    Nul,
}

impl Fault for QueryError {
    fn pgrst(&self) -> Pgrst {
        match self {
            QueryError::Parse { .. }
            | QueryError::NotRows
            | QueryError::Limit { .. }
            | QueryError::Nul => Pgrst::QueryParam,
            QueryError::UnknownColumn(_) => Pgrst::UndefinedColumn,
        }
    }
    fn details(&self) -> Option<String> {
        match self {
            QueryError::Parse { value, .. } => Some(format!("unexpected input in {value:?}")),
            _ => None,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            QueryError::Limit { .. } => {
                Some("Every bound on a request is listed in docs/limits.md".into())
            }
            _ => None,
        }
    }
}

/// How deep `or`/`and` trees may nest (the top tree is level 1). Parsing
/// and compiling recurse once per level, so this also bounds their stack.
pub const MAX_TREE_DEPTH: usize = 64;
/// The longest operand of `fts`, `plfts`, `phfts`, `wfts`, `like`,
/// `ilike`, `match` and `imatch`, in bytes.
pub const MAX_OPERAND_BYTES: usize = 4096;
/// How deep parentheses may nest in an `fts` or `match` operand:
/// PostgreSQL's tsquery and regex parsers recurse on them, and past its
/// stack they answer 54001.
pub const MAX_OPERAND_NESTING: usize = 64;
/// The most values of one `in.(…)` list.
pub const MAX_IN_ITEMS: usize = 10_000;
/// The most items of `select`.
pub const MAX_SELECT_ITEMS: usize = 1_000;
/// The most terms of `order`.
pub const MAX_ORDER_TERMS: usize = 100;

/// The operations of one request, as plain data.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QueryOps {
    /// `select=`: `(alias, column)`; None for all columns.
    pub select: Option<Vec<(String, String)>>,
    /// Top-level conditions, joined with AND.
    pub filters: Vec<Cond>,
    pub order: Vec<OrderTerm>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl QueryOps {
    /// Whether the result must be filtered, projected or paginated.
    pub fn is_empty(&self) -> bool {
        self == &QueryOps::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Filter {
        column: String,
        negate: bool,
        op: Op,
    },
    Tree {
        or: bool,
        negate: bool,
        items: Vec<Cond>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Quant {
    One,
    Any,
    All,
}

/// One operator with its operand(s).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// eq, neq, gt, gte, lt, lte, cs, cd, ov, sl, sr, nxr, nxl, adj,
    /// isdistinct: compared with the value cast to the column's type.
    Compare(&'static str, Quant, String),
    /// like, ilike, match, imatch: compared as text.
    Text(&'static str, Quant, String),
    In(Vec<String>),
    /// `IS NULL`, `IS NOT NULL`, `IS TRUE`, …
    Is(&'static str),
    /// fts, plfts, phfts, wfts: the tsquery function, language, query.
    Fts(&'static str, Option<String>, String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderTerm {
    pub column: String,
    pub desc: bool,
    /// Some(true): NULLS FIRST; Some(false): NULLS LAST.
    pub nulls_first: Option<bool>,
}
