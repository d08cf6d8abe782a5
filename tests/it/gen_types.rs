//! `pgrpc gen types typescript`: the generated `Database` type compiles
//! with `tsc --strict` (Debian's node-typescript), types a correct use of
//! every kind of function (overloads, SETOF, OUT, TABLE, composite, domain,
//! enum, arrays) and refuses a wrong one; and docs/clients/database.types.ts
//! is what the generator writes for the migrated `api` schema.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::TestDb;

/// Fixture functions beside the migrated `api` schema, one per case the
/// generator must type.
const FIXTURES: &str = r#"
CREATE TYPE api.fx_mood AS ENUM ('happy', 'sad', 'it''s complicated');
CREATE DOMAIN api.fx_positive AS integer CHECK (VALUE > 0);
CREATE DOMAIN api.fx_tags AS text[];
CREATE TYPE api.fx_pair AS (left_id integer, right_label text, mood api.fx_mood, tags api.fx_tags);
CREATE TYPE private.fx_secret AS (code text, hits bigint);

CREATE FUNCTION api.fx_over(a integer) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT a::text $$;
CREATE FUNCTION api.fx_over(b text, c boolean DEFAULT true) RETURNS integer LANGUAGE sql IMMUTABLE
  AS $$ SELECT length(b) $$;
CREATE FUNCTION api.fx_pairs(n api.fx_positive) RETURNS SETOF api.fx_pair LANGUAGE sql STABLE
  AS $$ SELECT i, i::text, 'happy'::api.fx_mood, ARRAY['x']::api.fx_tags FROM generate_series(1, n) i $$;
CREATE FUNCTION api.fx_pair_of(mood api.fx_mood) RETURNS api.fx_pair LANGUAGE sql STABLE
  AS $$ SELECT 1, 'one', mood, NULL::api.fx_tags $$;
CREATE FUNCTION api.fx_out(label text, OUT total bigint, OUT tag text) LANGUAGE sql STABLE
  AS $$ SELECT 1::bigint, label $$;
CREATE FUNCTION api.fx_one_out(OUT answer integer) LANGUAGE sql STABLE AS $$ SELECT 42 $$;
CREATE FUNCTION api.fx_table(since timestamptz DEFAULT NULL)
  RETURNS TABLE (id bigint, moods api.fx_mood[], score numeric(10, 2)) LANGUAGE sql STABLE
  AS $$ SELECT 1::bigint, ARRAY['sad']::api.fx_mood[], 1.5 $$;
CREATE FUNCTION api.fx_arrays(ids integer[], tags api.fx_tags, moods api.fx_mood[] DEFAULT '{}')
  RETURNS integer[] LANGUAGE sql IMMUTABLE AS $$ SELECT ids $$;
CREATE FUNCTION api.fx_names() RETURNS SETOF text LANGUAGE sql STABLE AS $$ SELECT 'a' $$;
CREATE FUNCTION api.fx_secret() RETURNS private.fx_secret LANGUAGE sql STABLE
  AS $$ SELECT ('s', 1)::private.fx_secret $$;
CREATE FUNCTION api.fx_body(json) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$ SELECT $1::jsonb $$;
CREATE FUNCTION api.fx_nothing() RETURNS void LANGUAGE sql VOLATILE AS $$ SELECT $$;
"#;

/// A correct use of the generated types: must type-check.
const GOOD_USAGE: &str = r#"
import { CompositeTypes, Constants, Database, Enums, Json } from "./database.types"

type Fns = Database["api"]["Functions"]

// consume_token: cycle has a default; it returns the token_counter contract.
const spend: Fns["consume_token"]["Args"] = { site_id: "6b1f", token_type: "suggestions" }
const spendCycle: Fns["consume_token"]["Args"] = { site_id: "6b1f", token_type: "x", cycle: "2024-01" }
declare const counter: Fns["consume_token"]["Returns"]
if (counter !== null) {
  const remaining: number | null = counter.remaining
  const site: string | null = counter.site_id
}
const contract: CompositeTypes<"token_counter"> | null = counter

// recent_receives: SETOF a composite, an array of rows.
declare const feed: Fns["recent_receives"]["Returns"]
const unread: (boolean | null)[] = feed.map((item) => item.unread)
const when: string | null | undefined = feed[0]?.created_at

// Overloads: a union of { Args; Returns } objects.
const byNumber: Extract<Fns["fx_over"], { Args: { a: number } }>["Returns"] = "1"
const byText: Extract<Fns["fx_over"], { Args: { b: string } }>["Returns"] = 4
const overloadArgs: Fns["fx_over"]["Args"][] = [{ a: 1 }, { b: "x" }, { b: "x", c: false }]

// SETOF a composite of an enum and a domain over an array.
declare const pairs: Fns["fx_pairs"]["Returns"]
const firstMood: Database["api"]["Enums"]["fx_mood"] | null | undefined = pairs[0]?.mood
const tags: (string | null)[] | null | undefined = pairs[0]?.tags
const pairsArgs: Fns["fx_pairs"]["Args"] = { n: 3 }
const pairOf: Fns["fx_pair_of"]["Args"] = { mood: "it's complicated" }

// OUT parameters: one object; a single OUT parameter, an object of one key.
declare const out: Fns["fx_out"]["Returns"]
const total: number | null | undefined = out?.total
declare const answer: Fns["fx_one_out"]["Returns"]
const theAnswer: number | null | undefined = answer?.answer

// RETURNS TABLE: an array of rows; numeric(10,2) is a number.
declare const table: Fns["fx_table"]["Returns"]
const scores: (number | null)[] = table.map((row) => row.score)
const moods: ((Enums<"fx_mood"> | null)[] | null)[] = table.map((row) => row.moods)
const tableArgs: Fns["fx_table"]["Args"] = {}

// Arrays and a domain over an array as arguments.
const arraysArgs: Fns["fx_arrays"]["Args"] = { ids: [1, 2], tags: ["a"], moods: ["sad"] }
declare const ids: Fns["fx_arrays"]["Returns"]
const firstId: number | null | undefined = ids?.[0]

// SETOF text, a composite of a schema that is not exposed, a body, void.
declare const names: Fns["fx_names"]["Returns"]
const name: string | null | undefined = names[0]
declare const secret: Fns["fx_secret"]["Returns"]
const hits: number | null | undefined = secret?.hits
const body: Fns["fx_body"]["Args"] = { "": { any: ["json", 1, null] } }
const json: Json = body[""]
const noArgs: Fns["fx_nothing"]["Args"] = {}
const nothing: Fns["fx_nothing"]["Returns"] = undefined

const allMoods: readonly Enums<"fx_mood">[] = Constants.api.Enums.fx_mood
const helperMood: Enums<{ schema: "api" }, "fx_mood"> = "sad"
const tables: Database["api"]["Tables"] = {}
const version: Database["__InternalSupabase"]["PostgrestVersion"] = "13"
"#;

/// Wrong uses: each line marked `// TSnnnn` must fail with that error (or
/// one of `TSnnnn|TSmmmm`: TypeScript 5 renumbered some), and no other
/// line may fail.
const BAD_USAGE: &str = r#"
import { Database } from "./database.types"

type Fns = Database["api"]["Functions"]
declare const counter: Fns["consume_token"]["Returns"]
declare const pairs: Fns["fx_pairs"]["Returns"]

const wrongType: Fns["consume_token"]["Args"] = { site_id: 7, token_type: "x" } // TS2322
const missing: Fns["consume_token"]["Args"] = { site_id: "6b1f" } // TS2741
const notNull: number = counter!.remaining // TS2322
const mayBeNull = counter.remaining // TS2531|TS18047
const wrongMood: Database["api"]["Enums"]["fx_mood"] = "angry" // TS2322
const oneRow: Fns["fx_pairs"]["Returns"] = { left_id: 1, right_label: null, mood: null, tags: null } // TS2322|TS2740
const notPositive: Fns["fx_pairs"]["Args"] = { n: "3" } // TS2322
const overloadMix: Extract<Fns["fx_over"], { Args: { a: number } }>["Returns"] = 1 // TS2322
const voidValue: Fns["fx_nothing"]["Returns"] = 1 // TS2322
const unknownFn: Fns["no_such_function"] = null // TS2339
const noSuchColumn = pairs[0].no_such_column // TS2339
const arrayOfText: Fns["fx_arrays"]["Args"] = { ids: ["1"], tags: [] } // TS2322
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tsc --strict --noEmit` on `file` in `dir`: its exit success and output.
fn tsc(dir: &Path, file: &str) -> (bool, String) {
    let output = Command::new("tsc")
        .args([
            "--strict",
            "--noEmit",
            "--target",
            "es2020",
            "--moduleResolution",
            "node",
            "--pretty",
            "false",
            file,
        ])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run tsc ({e}): install node-typescript \
                 (apt-get install node-typescript), which these tests need"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The errors tsc reported for `file`: (line, code).
fn errors_of(output: &str, file: &str) -> Vec<(usize, String)> {
    let prefix = format!("{file}(");
    output
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (line, rest) = rest.split_once(',')?;
            let code = rest.split("error ").nth(1)?.split(':').next()?;
            Some((line.parse().ok()?, code.to_string()))
        })
        .collect()
}

async fn generate(db: &TestDb) -> String {
    pgrpc::gen_types::typescript_from_url(&db.authenticator_url(), &["api".to_string()])
        .await
        .unwrap_or_else(|e| panic!("gen types: {e}"))
}

/// What `pgrpc gen types typescript` writes to stdout, with the database and
/// schemas in the environment, as `serve` reads them.
fn generate_with_the_binary(db: &TestDb) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_pgrpc"))
        .args(["gen", "types", "typescript"])
        .env("PGRPC_DATABASE_URL", db.authenticator_url())
        .env("PGRPC_SCHEMAS", "api")
        .output()
        .expect("run pgrpc gen types typescript");
    assert!(
        output.status.success(),
        "pgrpc gen types typescript failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the types are UTF-8")
}

// The generated file compiles under --strict, a correct use of every kind
// of function type-checks, and each wrong use fails with its expected error.
#[tokio::test]
async fn generated_types_compile_and_refuse_wrong_calls() {
    let db = TestDb::new().await;
    db.superuser()
        .await
        .batch_execute(FIXTURES)
        .await
        .unwrap_or_else(|e| panic!("fixtures: {e}"));
    let types = generate(&db).await;
    let dir = std::env::temp_dir().join(format!("pgrpc-gen-types-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("database.types.ts"), &types).expect("write types");
    std::fs::write(dir.join("good.ts"), GOOD_USAGE).expect("write good.ts");
    std::fs::write(dir.join("bad.ts"), BAD_USAGE).expect("write bad.ts");

    let (ok, output) = tsc(&dir, "good.ts");
    assert!(
        ok,
        "the generated types or a correct use of them do not type-check:\n{output}\n\
         generated:\n{types}"
    );

    let (ok, output) = tsc(&dir, "bad.ts");
    assert!(!ok, "tsc accepted the wrong uses:\n{output}");
    let found = errors_of(&output, "bad.ts");
    let expected: Vec<(usize, Vec<&str>)> = BAD_USAGE
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (_, codes) = line.rsplit_once("// ")?;
            codes
                .starts_with("TS")
                .then(|| (i + 1, codes.split('|').collect()))
        })
        .collect();
    let matches = found.len() == expected.len()
        && found
            .iter()
            .zip(&expected)
            .all(|((line, code), (want_line, codes))| {
                line == want_line && codes.contains(&code.as_str())
            });
    assert!(
        matches,
        "tsc's errors on bad.ts {found:?} differ from the expected {expected:?}:\n{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// docs/clients/database.types.ts is what `pgrpc gen types typescript`
// (the binary, its settings from the environment) writes to stdout for
// the migrated `api` schema: a migration that changes the API
// without regenerating it (scripts/types-dump) fails here.
#[tokio::test]
async fn docs_database_types_are_the_generated_types() {
    let db = TestDb::new().await;
    let types = generate_with_the_binary(&db);
    let path = repo().join("docs/clients/database.types.ts");
    if std::env::var_os("PGRPC_WRITE_TYPES").is_some() {
        std::fs::write(&path, &types).expect("write docs/clients/database.types.ts");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != types {
        let first = current
            .lines()
            .zip(types.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(types.lines().count()));
        panic!(
            "docs/clients/database.types.ts is stale (first difference at line {}: {:?} should \
             be {:?}); run scripts/types-dump",
            first + 1,
            current.lines().nth(first).unwrap_or("<end of file>"),
            types.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}
