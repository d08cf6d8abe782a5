//! The documentation kept true by tests: every error a client or operator
//! can meet is in docs/errors.md with its status, and sql/schema.sql is the
//! schema the migrations build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgrpc::error::{status_for_sqlstate, Pgrst};
use tokio_postgres::error::SqlState;

use crate::support::{self, TestDb};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// An error the SQL raises: its key, its SQLSTATE, and where it was seen.
#[derive(Debug)]
struct Raised {
    key: String,
    sqlstate: String,
    status: u16,
    file: String,
}

/// The SQLSTATE of the condition names the migrations raise with
/// (`RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege'`).
fn condition_code(name: &str) -> &str {
    match name {
        "insufficient_privilege" => "42501",
        "check_violation" => "23514",
        "undefined_object" => "42704",
        "invalid_text_representation" => "22P02",
        "raise_exception" => "P0001",
        code if code.len() == 5 && code.chars().all(|c| c.is_ascii_alphanumeric()) => code,
        other => {
            panic!("condition name {other} is not known to tests/it/docs.rs; add its SQLSTATE")
        }
    }
}

fn is_key(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}

/// The text after `marker` up to the next single quote:
/// `quoted_after(stmt, "MESSAGE='")`. The caller removes the spaces around
/// `=` first.
fn quoted_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    let end = text[start..].find('\'')?;
    Some(&text[start..start + end])
}

/// The SQL without its `--` comments, whose apostrophes would otherwise
/// read as string quotes.
fn without_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for line in sql.lines() {
        let mut in_string = false;
        let mut cut = line.len();
        let bytes = line.as_bytes();
        for i in 0..bytes.len() {
            match bytes[i] {
                b'\'' => in_string = !in_string,
                b'-' if !in_string && bytes.get(i + 1) == Some(&b'-') => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// Statements of one file that start with RAISE, cut at the first `;`
/// outside a string literal, with whitespace collapsed.
fn raise_statements(sql: &str) -> Vec<String> {
    let sql = &without_comments(sql);
    let mut out = Vec::new();
    let upper = sql.to_ascii_uppercase();
    let mut from = 0;
    while let Some(at) = upper[from..].find("RAISE ") {
        let begin = from + at;
        let mut in_string = false;
        let mut end = sql.len();
        for (i, c) in sql[begin..].char_indices() {
            match c {
                '\'' => in_string = !in_string,
                ';' if !in_string => {
                    end = begin + i;
                    break;
                }
                _ => {}
            }
        }
        out.push(
            sql[begin..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        );
        from = end.max(begin + 1);
    }
    out
}

fn status_of(sqlstate: &str) -> u16 {
    status_for_sqlstate(&SqlState::from_code(sqlstate), false).as_u16()
}

/// Every error key the migrations raise: `MESSAGE = '<key>'` with its
/// SQLSTATE, the `code` of `RAISE SQLSTATE 'PGRST'` JSON with its `status`,
/// and the rule names given to `private.tg_forbid(...)`.
fn raised_in_sql() -> Vec<Raised> {
    let mut raised = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(repo().join("sql"))
        .expect("read sql/")
        .map(|e| e.expect("sql/ entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with('V') && name.ends_with(".sql")
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "expected the migrations in sql/, found {files:?}"
    );
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let sql = read(&path);
        for stmt in raise_statements(&sql) {
            let stmt = stmt.replace(" =", "=").replace("= ", "=");
            if stmt.contains("SQLSTATE 'PGRST'") {
                let key = quoted_after(&stmt, "'code', '").expect("PGRST raise without a code");
                let status = stmt
                    .split("'status', ")
                    .nth(1)
                    .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("PGRST raise of {key} in {file} without a status"));
                raised.push(Raised {
                    key: key.to_string(),
                    sqlstate: "PGRST".into(),
                    status,
                    file: file.clone(),
                });
                continue;
            }
            let Some(key) = quoted_after(&stmt, "MESSAGE='").filter(|k| is_key(k)) else {
                continue;
            };
            let sqlstate = if let Some(code) = quoted_after(&stmt, "SQLSTATE '") {
                code.to_string()
            } else if let Some(name) = quoted_after(&stmt, "ERRCODE='") {
                condition_code(name).to_string()
            } else {
                // RAISE <condition> USING ...
                let name = stmt.split_whitespace().nth(1).unwrap_or_default();
                let name = if name.eq_ignore_ascii_case("EXCEPTION") {
                    "raise_exception"
                } else {
                    name
                };
                condition_code(name).to_string()
            };
            raised.push(Raised {
                key: key.to_string(),
                status: status_of(&sqlstate),
                sqlstate,
                file: file.clone(),
            });
        }
        // tg_forbid raises its first argument as the message, as 42501.
        for part in sql.split("private.tg_forbid('").skip(1) {
            let key = &part[..part.find('\'').expect("tg_forbid argument")];
            raised.push(Raised {
                key: key.to_string(),
                sqlstate: "42501".into(),
                status: status_of("42501"),
                file: file.clone(),
            });
        }
    }
    raised
}

/// `(file, key)` for every `MESSAGE = '<snake_case key>'` in the
/// migrations, found without parsing statements.
fn message_keys_by_scan() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(repo().join("sql")).expect("read sql/") {
        let path = entry.expect("sql/ entry").path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(file.starts_with('V') && file.ends_with(".sql")) {
            continue;
        }
        let sql = read(&path).replace(" =", "=").replace("= ", "=");
        for part in sql.split("MESSAGE='").skip(1) {
            let key = &part[..part.find('\'').unwrap_or(0)];
            if is_key(key) {
                found.push((file.clone(), key.to_string()));
            }
        }
    }
    found
}

/// The rows of every table in docs/errors.md: each backticked name of the
/// first cell, with the row's other cells as one text.
fn documented(errors_md: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in errors_md.lines() {
        let line = line.trim();
        if !line.starts_with('|') || line.starts_with("|---") || line.starts_with("| ---") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        let Some((first, rest)) = cells.split_first() else {
            continue;
        };
        let rest = rest.join("|");
        for (i, name) in first.split('`').enumerate() {
            if i % 2 == 1 {
                rows.entry(name.to_string()).or_default().push(rest.clone());
            }
        }
    }
    rows
}

/// Whether `text` holds `number` as a whole number (409, not 4090).
fn has_number(text: &str, number: u16) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|n| n == number.to_string())
}

/// Whether `text` holds `word` with no letter or digit on either side.
fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == word)
}

// Every key the SQL raises and every PGRST/PGRPC code of the proxy has a
// row in docs/errors.md naming its status (and its SQLSTATE where that is
// not a PTnnn code), so a client can look up any error it receives.
#[test]
fn every_error_key_and_code_is_in_the_docs_error_table() {
    let doc = documented(&read(&repo().join("docs/errors.md")));
    let mut missing = Vec::new();

    let raised = raised_in_sql();
    assert!(
        raised
            .iter()
            .any(|r| r.key == "tokens_exhausted" && r.status == 429),
        "the SQL parser found no PGRST raise: {raised:?}"
    );
    // The parser reads whole RAISE statements; a plain scan of the files
    // for `MESSAGE = '<key>'` must find no key it missed.
    for (file, key) in message_keys_by_scan() {
        assert!(
            raised.iter().any(|r| r.key == key && r.file == file),
            "{file}: MESSAGE = '{key}' was not read from a RAISE statement"
        );
    }
    for r in &raised {
        let rows = doc.get(&r.key).map(Vec::as_slice).unwrap_or_default();
        let found = rows.iter().any(|row| {
            has_number(row, r.status)
                && (r.sqlstate.starts_with("PT") || has_word(row, &r.sqlstate))
        });
        if !found {
            missing.push(format!(
                "`{}`: status {} (SQLSTATE {}), raised in {}",
                r.key, r.status, r.sqlstate, r.file
            ));
        }
    }

    for p in Pgrst::ALL {
        let (code, status) = p.code_and_status();
        let rows = doc.get(code).map(Vec::as_slice).unwrap_or_default();
        if !rows.iter().any(|row| has_number(row, status.as_u16())) {
            missing.push(format!(
                "`{code}`: status {} (proxy, {p:?})",
                status.as_u16()
            ));
        }
    }

    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "docs/errors.md lacks a row (key in the first cell, status in another) for:\n  {}",
        missing.join("\n  ")
    );
}

/// One entry of pg_dump's table of contents: its `-- Name: ...; Type: ...;
/// Schema: ...; Owner: ...` header and the SQL under it.
struct DumpEntry {
    name: String,
    kind: String,
    schema: String,
    header: String,
    body: String,
}

/// pg_dump's output cut into its preamble (the SET lines) and its entries,
/// without the lines that vary from one pg_dump run or version to the next.
fn dump_entries(raw: &str) -> (String, Vec<DumpEntry>) {
    let lines: Vec<&str> = raw
        .lines()
        .filter(|l| {
            !(l.starts_with("-- Dumped from database version")
                || l.starts_with("-- Dumped by pg_dump version")
                || l.starts_with("\\restrict")
                || l.starts_with("\\unrestrict"))
        })
        .collect();
    let mut preamble = Vec::new();
    let mut entries: Vec<DumpEntry> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let header = lines.get(i + 1).filter(|h| {
            line == "--" && h.starts_with("-- Name: ") && lines.get(i + 2) == Some(&"--")
        });
        if let Some(header) = header {
            let field = |key: &str| {
                header
                    .split("; ")
                    .find_map(|f| f.trim_start_matches("-- ").strip_prefix(key))
                    .unwrap_or_default()
                    .to_string()
            };
            entries.push(DumpEntry {
                name: field("Name: "),
                kind: field("Type: "),
                schema: field("Schema: "),
                header: header.to_string(),
                body: String::new(),
            });
            i += 3;
            continue;
        }
        if line == "-- PostgreSQL database dump complete" {
            // The closing `--` lines around it go with it.
            if let Some(e) = entries.last_mut() {
                e.body = e.body.trim_end_matches("--\n").to_string();
            }
            i += 2;
            continue;
        }
        match entries.last_mut() {
            Some(e) => {
                e.body.push_str(line);
                e.body.push('\n');
            }
            None => preamble.push(line),
        }
        i += 1;
    }
    for e in &mut entries {
        e.body = e.body.trim().to_string();
    }
    let preamble = preamble
        .into_iter()
        .filter(|l| !l.is_empty() && *l != "--" && !l.starts_with("-- PostgreSQL database dump"))
        .collect::<Vec<_>>()
        .join("\n");
    (preamble, entries)
}

/// What a module file of sql/modules declares: the tables it owns (its
/// `-- tables:` line), and the functions and views it defines.
struct ModuleDecl {
    name: &'static str,
    sql: &'static str,
    tables: Vec<String>,
}

fn module_decls() -> Vec<ModuleDecl> {
    pgrpc::migrate::MODULES
        .iter()
        .map(|&(name, sql)| ModuleDecl {
            name,
            sql,
            tables: sql
                .lines()
                .find_map(|l| l.strip_prefix("-- tables: "))
                .unwrap_or_default()
                .split(", ")
                .filter(|t| *t != "(none)" && !t.is_empty())
                .map(str::to_string)
                .collect(),
        })
        .collect()
}

/// The module that defines the function or view `schema.name`.
fn module_defining(modules: &[ModuleDecl], qualified: &str) -> Option<usize> {
    modules.iter().position(|m| {
        ["FUNCTION", "VIEW"].iter().any(|kind| {
            m.sql
                .contains(&format!("\nCREATE OR REPLACE {kind} {qualified}("))
                || m.sql
                    .contains(&format!("\nCREATE OR REPLACE {kind} {qualified} "))
        })
    })
}

/// The module whose file names `qualified` (a type) most often: the one
/// whose functions use it.
fn module_using(modules: &[ModuleDecl], qualified: &str) -> Option<usize> {
    let uses = |sql: &str| {
        sql.match_indices(qualified)
            .filter(|(at, _)| {
                !sql[at + qualified.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            })
            .count()
    };
    let (best, count) = modules
        .iter()
        .enumerate()
        .map(|(i, m)| (i, uses(m.sql)))
        .fold((0, 0), |acc, x| if x.1 > acc.1 { x } else { acc });
    (count > 0).then_some(best)
}

/// Where an entry goes in sql/schema.sql.
enum Place {
    /// Schemas, their grants and comments, event triggers: the head.
    Head,
    /// A type of a module, with its comment and grants.
    Type(usize),
    /// A table of a module, or what belongs to it (constraint, index,
    /// trigger, sequence, comment, grant).
    Table(usize, String),
    /// A function or view (or its comment or grant): named only, its home
    /// is the module file.
    Code(usize),
}

/// The order of an entry's kind within its table.
fn table_rank(e: &DumpEntry) -> u8 {
    match e.kind.as_str() {
        "TABLE" => 0,
        "SEQUENCE" | "SEQUENCE OWNED BY" | "DEFAULT" => 1,
        "CONSTRAINT" => 2,
        "FK CONSTRAINT" => 3,
        "INDEX" => 4,
        "TRIGGER" => 5,
        "POLICY" | "ROW SECURITY" => 6,
        "COMMENT" => 7,
        _ => 8,
    }
}

/// pg_dump's output grouped by module (sql/modules), and within a module
/// table by table, each table with its constraints, indexes, triggers,
/// comments and grants. Functions and views are named, not copied: their
/// definitions, owners, comments and grants are in the module files.
fn grouped_schema(raw: &str) -> String {
    let (preamble, entries) = dump_entries(raw);
    let modules = module_decls();
    let table_module = |qualified: &str| {
        modules
            .iter()
            .position(|m| m.tables.iter().any(|t| t == qualified))
    };
    let kinds: BTreeMap<String, &str> = entries
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "TABLE" | "VIEW" | "TYPE"))
        .map(|e| (format!("{}.{}", e.schema, e.name), e.kind.as_str()))
        .collect();
    let mut problems = Vec::new();
    let mut placed: Vec<(Place, &DumpEntry)> = Vec::new();
    for e in &entries {
        let q = |name: &str| format!("{}.{name}", e.schema);
        // The object an entry is about: "TABLE t", "COLUMN t.c", "t c", "f(args)".
        let (target_kind, target) = match e.kind.as_str() {
            "ACL" | "COMMENT" => {
                let (k, rest) = e.name.split_once(' ').unwrap_or(("", &e.name));
                let rest = match k {
                    "COLUMN" => rest.split('.').next().unwrap_or(rest),
                    "CONSTRAINT" | "TRIGGER" | "POLICY" => {
                        rest.rsplit(" ON ").next().unwrap_or(rest)
                    }
                    _ => rest,
                };
                (k.to_string(), rest.to_string())
            }
            "DEFAULT" | "CONSTRAINT" | "FK CONSTRAINT" | "TRIGGER" | "POLICY" => (
                "TABLE".to_string(),
                e.name.split(' ').next().unwrap_or_default().to_string(),
            ),
            "INDEX" | "SEQUENCE" | "SEQUENCE OWNED BY" => {
                // The table is in the body: `ON private.t USING`, `ALTER TABLE private.t`.
                let table = e
                    .body
                    .split_whitespace()
                    .skip_while(|w| *w != "ON" && *w != "TABLE" && *w != "BY")
                    .skip(1)
                    .find(|w| *w != "ONLY")
                    .unwrap_or_default();
                let table = table.split_once('.').map_or(table, |(_, t)| t);
                let table = if e.kind == "SEQUENCE OWNED BY" {
                    table.split('.').next().unwrap_or(table)
                } else {
                    table
                };
                ("TABLE".to_string(), table.to_string())
            }
            k => (k.to_string(), e.name.clone()),
        };
        let qualified = q(target.split('(').next().unwrap_or(&target));
        let place = match target_kind.as_str() {
            "SCHEMA" | "EVENT TRIGGER" | "EXTENSION" => Some(Place::Head),
            "FUNCTION" | "PROCEDURE" | "AGGREGATE" | "VIEW" => {
                module_defining(&modules, &qualified).map(Place::Code)
            }
            "TYPE" | "DOMAIN" => module_using(&modules, &qualified).map(Place::Type),
            "TABLE" | "COLUMN" | "CONSTRAINT" | "TRIGGER" | "POLICY" => {
                match kinds.get(&qualified).copied() {
                    Some("VIEW") => module_defining(&modules, &qualified).map(Place::Code),
                    Some("TYPE") => module_using(&modules, &qualified).map(Place::Type),
                    _ => table_module(&qualified).map(|m| Place::Table(m, qualified.clone())),
                }
            }
            _ => None,
        };
        match place {
            Some(p) => placed.push((p, e)),
            None => problems.push(format!(
                "{} ({target_kind} {qualified}): no module file of sql/modules claims it \
                 (a table goes on a module's `-- tables:` line)",
                e.header
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "sql/schema.sql cannot be grouped by module:\n{}",
        problems.join("\n")
    );

    let render = |out: &mut String, e: &DumpEntry| {
        out.push_str(&format!("--\n{}\n--\n\n{}\n\n", e.header, e.body));
    };
    let mut out = String::from(
        "-- The current schema of pgrpc: pg_dump --schema-only of the schemas api,\n\
         -- private, admin, pgrpc_guard and pgrpc_http after every migration,\n\
         -- grouped by module (sql/modules/<module>.sql), and within a module table\n\
         -- by table: each table with its sequences, constraints, indexes, triggers,\n\
         -- comments and grants. Functions and views are only named here: their\n\
         -- definitions, owners, comments and grants live in the module files.\n\
         -- Generated by scripts/schema-dump; do not edit. A test fails when it is\n\
         -- stale. The versioned migrations (sql/V*.sql) are the history; this file\n\
         -- is where they lead. It is for reading, not for running.\n\n",
    );
    out.push_str(&preamble);
    out.push_str("\n\n");
    for (p, e) in &placed {
        if matches!(p, Place::Head) {
            render(&mut out, e);
        }
    }
    for (m, module) in modules.iter().enumerate() {
        out.push_str(&format!(
            "-- {rule}\n-- Module {name}: sql/modules/{name}.sql\n-- {rule}\n\n",
            rule = "=".repeat(74),
            name = module.name
        ));
        for (p, e) in &placed {
            if matches!(p, Place::Type(t) if *t == m) {
                render(&mut out, e);
            }
        }
        for table in &module.tables {
            let mut of_table: Vec<&DumpEntry> = placed
                .iter()
                .filter(|(p, _)| matches!(p, Place::Table(t, q) if *t == m && q == table))
                .map(|(_, e)| *e)
                .collect();
            assert!(
                !of_table.is_empty(),
                "sql/modules/{}.sql lists the table {table}, which does not exist",
                module.name
            );
            of_table.sort_by_key(|e| table_rank(e));
            for e in of_table {
                render(&mut out, e);
            }
        }
        let mut code: Vec<String> = placed
            .iter()
            .filter(|(p, e)| {
                matches!(p, Place::Code(c) if *c == m)
                    && matches!(e.kind.as_str(), "FUNCTION" | "VIEW")
            })
            .map(|(_, e)| format!("--   {} {}.{}\n", e.kind, e.schema, e.name))
            .collect();
        if !code.is_empty() {
            code.sort();
            out.push_str(&format!(
                "-- Functions and views of this module, defined in sql/modules/{}.sql:\n",
                module.name
            ));
            out.push_str(&code.concat());
            out.push('\n');
        }
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

// sql/schema.sql is what the migrations build today: a migration added
// without regenerating it (scripts/schema-dump) fails here.
#[tokio::test]
async fn schema_sql_is_the_migrated_schema() {
    let db = TestDb::new().await;
    let dump = grouped_schema(&support::pg_dump(
        &db,
        &[
            "--schema-only",
            "--schema=api",
            "--schema=private",
            "--schema=admin",
            "--schema=pgrpc_guard",
            "--schema=pgrpc_http",
        ],
    ));
    let path = repo().join("sql/schema.sql");
    if std::env::var_os("PGRPC_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, &dump).expect("write sql/schema.sql");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != dump {
        let first = current
            .lines()
            .zip(dump.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(dump.lines().count()));
        panic!(
            "sql/schema.sql is stale (first difference at line {}: {:?} should be {:?}); \
             run scripts/schema-dump",
            first + 1,
            current.lines().nth(first).unwrap_or("<end of file>"),
            dump.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

/// Whether the test `module::name` exists: `fn name(` stands in the file
/// of `module`, a path such as `attacks`, `attacks::transport` (an inline
/// module of attacks.rs), `server::tests` or `batch::parse::tests`: the
/// file is that of one of the path's leading segments taken as folders
/// (`x/y.rs` or `x/y/mod.rs`), under `tests/it`, `src` or one of its
/// folders.
fn test_exists(module: &str, name: &str) -> bool {
    let needle = format!("fn {name}(");
    let segments: Vec<&str> = module.split("::").collect();
    let mut files = Vec::new();
    for k in 1..=segments.len() {
        let m = segments[..k].join("/");
        for dir in [
            "tests/it",
            "src",
            "src/http",
            "src/auth",
            "src/db",
            "src/relay",
        ] {
            files.push(repo().join(format!("{dir}/{m}.rs")));
            files.push(repo().join(format!("{dir}/{m}/mod.rs")));
        }
    }
    files
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|text| text.contains(&needle)))
}

// Every row of docs/limits.md names a bound, an answer past it and a test
// that exists, so the table cannot promise a limit nothing proves.
#[test]
fn every_row_of_the_limits_table_has_a_bound_an_answer_and_an_existing_test() {
    let doc = read(&repo().join("docs/limits.md"));
    let mut problems = Vec::new();
    let mut rows = 0;
    for line in doc.lines().map(str::trim) {
        if !line.starts_with('|') || line.starts_with("|---") || line.starts_with("| dimension") {
            continue;
        }
        rows += 1;
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [dimension, bound, answer, test] = cells.as_slice() else {
            problems.push(format!("not four cells: {line}"));
            continue;
        };
        if bound.is_empty() {
            problems.push(format!("{dimension}: no bound"));
        }
        if answer.is_empty() {
            problems.push(format!("{dimension}: no answer past the bound"));
        }
        let named: Vec<&str> = test.split('`').skip(1).step_by(2).collect();
        if named.is_empty() {
            problems.push(format!("{dimension}: no test named"));
        }
        for path in named {
            match path.rsplit_once("::") {
                Some((module, name)) if test_exists(module, name) => {}
                _ => problems.push(format!("{dimension}: no test function {path}")),
            }
        }
    }
    assert!(rows >= 10, "docs/limits.md has only {rows} rows");
    assert!(
        problems.is_empty(),
        "docs/limits.md:\n  {}",
        problems.join("\n  ")
    );
}
