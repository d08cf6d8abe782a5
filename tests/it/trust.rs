//! The trust model (SPEC §1, V15): only a superuser bypasses a rule. Every
//! attack here is run by a real login that is a member of pgrpc_owner or
//! pgrpc_admin, the way an operator's psql session would be, never by
//! `SET ROLE` from a superuser session; and by a session holding pgrpc_api,
//! which no login may hold since V17 (attacks.rs proves that rule).

use serde_json::json;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::support::db::{count, message, query_column, query_value};
use crate::support::{connect, send, service_token, TestDb, TestServer};

const GUARD_KEY: &str = "schema_change_requires_migration";

/// A login, named for this test's database, that is a member of `group`
/// and may create schemas of its own.
struct Login {
    name: String,
    client: Client,
}

impl Login {
    async fn new(db: &TestDb, group: &str, tag: &str) -> Login {
        let name = format!("{tag}_{}", db.name);
        db.superuser()
            .await
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE {group}; \
                 GRANT CREATE ON DATABASE {} TO {name}",
                db.name
            ))
            .await
            .expect("create login");
        let client = connect(&db.url_as(&name, "pw")).await;
        Login { name, client }
    }

    /// A session holding `pgrpc_api`, which no login may (V17): the role
    /// logs in granted nothing, then loses LOGIN and gains `pgrpc_api`, so
    /// its open session holds it while the cluster has no login that does
    /// (a login holding it would stop every superuser DDL, the parallel
    /// tests' included).
    async fn holding_pgrpc_api(db: &TestDb, tag: &str) -> Login {
        let name = format!("{tag}_{}", db.name);
        let su = db.superuser().await;
        su.batch_execute(&format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'pw'; GRANT CREATE ON DATABASE {} TO {name}",
            db.name
        ))
        .await
        .expect("create login");
        let client = connect(&db.url_as(&name, "pw")).await;
        su.batch_execute(&format!(
            "ALTER ROLE {name} NOLOGIN; GRANT pgrpc_api TO {name}"
        ))
        .await
        .expect("the session's role holds pgrpc_api");
        Login { name, client }
    }

    /// Runs `sql` as the login, switched to `role` first when given.
    async fn run(&self, role: Option<&str>, sql: &str) -> Result<(), tokio_postgres::Error> {
        let set = match role {
            Some(r) => format!("SET ROLE {r}"),
            None => "RESET ROLE".to_string(),
        };
        self.client.batch_execute(&set).await.expect("set role");
        let result = self.client.batch_execute(sql).await;
        let _ = self.client.batch_execute("ROLLBACK; RESET ROLE").await;
        result
    }

    /// Asserts that every statement is refused with 42501, with and
    /// without `SET ROLE group`; returns the refusals' messages.
    async fn assert_refused(&self, group: &str, statements: &[String]) -> Vec<String> {
        let mut messages = Vec::new();
        for role in [None, Some(group)] {
            for stmt in statements {
                let err = self
                    .run(role, stmt)
                    .await
                    .expect_err(&format!("{} ({role:?}) may not run {stmt}", self.name));
                assert_eq!(
                    err.code(),
                    Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                    "{} ({role:?}): {stmt}: {err}",
                    self.name
                );
                messages.push(message(&err));
            }
        }
        messages
    }

    /// Asserts that each statement, with and without `SET ROLE group`,
    /// either is refused with 42501 or grants nothing (a GRANT without
    /// grant option only warns): pgrpc's fingerprint is unchanged.
    async fn assert_changes_nothing(&self, db: &TestDb, group: &str, statements: &[String]) {
        let su = db.superuser().await;
        let before = fingerprint_digest(&su).await;
        for role in [None, Some(group)] {
            for stmt in statements {
                if let Err(err) = self.run(role, stmt).await {
                    assert_eq!(
                        err.code(),
                        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                        "{} ({role:?}): {stmt}: {err}",
                        self.name
                    );
                }
                assert_eq!(
                    fingerprint_digest(&su).await,
                    before,
                    "{} ({role:?}) changed something with {stmt}",
                    self.name
                );
            }
        }
    }

    async fn drop(self, db: &TestDb) {
        drop(self.client);
        db.superuser()
            .await
            .batch_execute(&format!("DROP OWNED BY {0}; DROP ROLE {0}", self.name))
            .await
            .expect("drop login");
    }
}

/// A digest of everything the DDL guard protects.
async fn fingerprint_digest(su: &Client) -> String {
    query_value(
        su,
        "SELECT md5(string_agg(kind || ' ' || name || ' ' || detail, E'\\n' ORDER BY kind, name)) \
         FROM pgrpc_guard.fingerprint()",
        &[],
    )
    .await
}

fn owned(statements: &[&str]) -> Vec<String> {
    statements.iter().map(|s| s.to_string()).collect()
}

/// The event triggers of the guard, and whether each is enabled.
async fn guard_triggers(su: &Client) -> Vec<String> {
    query_column(
        su,
        "SELECT evtname || ' ' || evtenabled::text || ' ' || evtfoid::regproc::text \
         FROM pg_event_trigger ORDER BY evtname",
        &[],
    )
    .await
}

/// A team and `n` pending players of `tenant`, made by the service; returns
/// the contract tokens.
async fn pending_players(db: &TestDb, tenant: i64, n: usize) -> Vec<String> {
    let svc = db.as_role("pgrpc_service").await;
    let team: uuid::Uuid = query_value(
        &svc,
        "SELECT id FROM api.create_team($1, 'Team')",
        &[&tenant],
    )
    .await;
    let parent: uuid::Uuid = query_value(
        &svc,
        "SELECT id FROM api.create_parent($1, 'Parent', 'p@example.com')",
        &[&tenant],
    )
    .await;
    let mut tokens = Vec::new();
    for i in 0..n {
        tokens.push(
            query_value(
                &svc,
                "SELECT contract_token FROM api.create_player($1, $2, $3, $4)",
                &[&tenant, &team, &format!("Player {i}"), &parent],
            )
            .await,
        );
    }
    tokens
}

/// Signs every contract as an anonymous caller would; asserts that each
/// signed player has its contract.signed event.
async fn sign_all_and_count_events(db: &TestDb, tokens: &[String]) {
    let anon = db.as_role("pgrpc_anon").await;
    for t in tokens {
        anon.query_one("SELECT api.sign_contract($1, 'sig')", &[t])
            .await
            .expect("sign");
    }
    let su = db.superuser().await;
    let signed = count(
        &su,
        "SELECT count(*) FROM private.players WHERE contract_status = 'signed'",
    )
    .await;
    let events = count(
        &su,
        "SELECT count(*) FROM private.outbox WHERE event_type = 'contract.signed'",
    )
    .await;
    assert_eq!(signed, tokens.len() as i64);
    assert_eq!(
        events, signed,
        "one contract.signed event per signed player"
    );
}

/// An owner login cannot drop the DDL guard, then a write-once trigger, then rewrite a grant.
#[tokio::test]
async fn owner_login_cannot_drop_the_ddl_guard_then_rewrite_a_grant() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let before = guard_triggers(&su).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let owner = Login::new(&db, "pgrpc_owner", "own").await;
    owner
        .assert_refused(
            "pgrpc_owner",
            &owned(&[
                "DROP FUNCTION pgrpc_guard.on_sql_drop() CASCADE",
                "DROP FUNCTION pgrpc_guard.on_ddl_command_end() CASCADE",
                "DROP EVENT TRIGGER pgrpc_guard_drop",
                "ALTER EVENT TRIGGER pgrpc_guard_ddl DISABLE",
                "DELETE FROM pgrpc_guard.baseline",
                "DROP TRIGGER _100_forbid_update ON private.suggestion_grants",
                "ALTER TABLE private.suggestion_grants DISABLE TRIGGER _100_forbid_update",
                "UPDATE private.suggestion_grants SET granted_by = 'forged'",
            ]),
        )
        .await;
    assert_eq!(guard_triggers(&su).await, before);
    let rules: i64 = count(
        &su,
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'private.suggestion_grants'::regclass \
         AND tgname = '_100_forbid_update' AND tgenabled = 'O'",
    )
    .await;
    assert_eq!(rules, 1, "the write-once trigger is in place");
    owner.drop(&db).await;
}

/// An owner login cannot drop pgrpc's schemas, nor the guard's.
#[tokio::test]
async fn owner_login_cannot_drop_the_private_schema() {
    let db = TestDb::new().await;
    let owner = Login::new(&db, "pgrpc_owner", "own").await;
    owner
        .assert_refused(
            "pgrpc_owner",
            &owned(&[
                "DROP SCHEMA private CASCADE",
                "DROP SCHEMA api CASCADE",
                "DROP SCHEMA admin CASCADE",
                "DROP SCHEMA pgrpc_guard CASCADE",
                "ALTER SCHEMA private RENAME TO private_old",
            ]),
        )
        .await;
    owner.drop(&db).await;
}

/// An owner login cannot hang a trigger on the outbox that swallows events.
#[tokio::test]
async fn owner_login_cannot_swallow_outbox_inserts_with_a_trigger() {
    let db = TestDb::new().await;
    let owner = Login::new(&db, "pgrpc_owner", "own").await;
    owner
        .run(
            None,
            "CREATE SCHEMA scratch; \
             CREATE FUNCTION scratch.swallow() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN RETURN NULL; END $$; \
             GRANT USAGE ON SCHEMA scratch TO PUBLIC",
        )
        .await
        .expect("a function of its own");
    owner
        .assert_refused(
            "pgrpc_owner",
            &owned(&[
                "CREATE TRIGGER _000_swallow BEFORE INSERT ON private.outbox \
                 FOR EACH ROW EXECUTE FUNCTION scratch.swallow()",
                "CREATE TRIGGER _000_swallow BEFORE UPDATE ON private.players \
                 FOR EACH ROW EXECUTE FUNCTION scratch.swallow()",
            ]),
        )
        .await;
    let tokens = pending_players(&db, 71, 3).await;
    sign_all_and_count_events(&db, &tokens).await;
    owner.drop(&db).await;
}

/// An owner login cannot add a rule that turns outbox inserts into nothing.
#[tokio::test]
async fn owner_login_cannot_add_a_rule_that_drops_outbox_inserts() {
    let db = TestDb::new().await;
    let owner = Login::new(&db, "pgrpc_owner", "own").await;
    owner
        .assert_refused(
            "pgrpc_owner",
            &owned(&[
                "CREATE RULE swallow AS ON INSERT TO private.outbox DO INSTEAD NOTHING",
                "CREATE RULE keep AS ON UPDATE TO private.suggestion_grants DO INSTEAD NOTHING",
            ]),
        )
        .await;
    let tokens = pending_players(&db, 72, 2).await;
    sign_all_and_count_events(&db, &tokens).await;
    owner.drop(&db).await;
}

/// An owner login cannot grant a credential column or a write to anyone, itself included.
#[tokio::test]
async fn owner_login_cannot_grant_credentials_or_writes() {
    let db = TestDb::new().await;
    let owner = Login::new(&db, "pgrpc_owner", "own").await;
    let me = owner.name.clone();
    owner
        .assert_changes_nothing(
            &db,
            "pgrpc_owner",
            &[
                "GRANT SELECT (contract_token) ON private.players TO pgrpc_admin".to_string(),
                "GRANT UPDATE ON private.suggestion_grants TO pgrpc_api".to_string(),
                format!("GRANT SELECT ON private.players TO {me}"),
                format!("GRANT UPDATE ON private.tokens TO {me}"),
                "GRANT INSERT ON private.outbox TO PUBLIC".to_string(),
                "GRANT EXECUTE ON FUNCTION private.tg_forbid() TO PUBLIC".to_string(),
                format!("GRANT pgrpc_migrator TO {me}"),
            ],
        )
        .await;
    owner.drop(&db).await;
}

/// An owner login cannot disable, replace, unlog, re-own or loosen anything in pgrpc's schemas.
#[tokio::test]
async fn owner_login_cannot_alter_pgrpcs_schemas() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let unique_index: String = query_value(
        &su,
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relnamespace = 'private'::regnamespace AND i.indisunique AND NOT i.indisprimary \
         ORDER BY 1 LIMIT 1",
        &[],
    )
    .await;
    let owner = Login::new(&db, "pgrpc_owner", "own").await;
    let me = owner.name.clone();
    let messages = owner
        .assert_refused(
            "pgrpc_owner",
            &[
                "ALTER TABLE private.suggestion_grants DISABLE TRIGGER USER".to_string(),
                "ALTER TABLE private.oauth_nonces DISABLE TRIGGER ALL".to_string(),
                "CREATE POLICY hide ON private.outbox USING (false)".to_string(),
                "ALTER TABLE private.outbox ENABLE ROW LEVEL SECURITY".to_string(),
                "ALTER DEFAULT PRIVILEGES FOR ROLE pgrpc_owner GRANT ALL ON TABLES TO PUBLIC"
                    .to_string(),
                "ALTER DEFAULT PRIVILEGES FOR ROLE pgrpc_owner IN SCHEMA private GRANT ALL ON TABLES TO PUBLIC"
                    .to_string(),
                "CREATE TABLE private.shadow (x int)".to_string(),
                "CREATE FUNCTION api.shadow() RETURNS int LANGUAGE sql AS 'SELECT 1'".to_string(),
                "CREATE FUNCTION admin.shadow() RETURNS int LANGUAGE sql AS 'SELECT 1'".to_string(),
                "CREATE OR REPLACE FUNCTION private.tg_forbid() RETURNS trigger LANGUAGE plpgsql \
                 AS $$ BEGIN RETURN NEW; END $$"
                    .to_string(),
                "ALTER TABLE private.outbox SET UNLOGGED".to_string(),
                format!("ALTER TABLE private.players OWNER TO {me}"),
                format!("ALTER SCHEMA private OWNER TO {me}"),
                format!("ALTER FUNCTION private.tg_forbid() OWNER TO {me}"),
                "ALTER TABLE private.outbox DROP CONSTRAINT outbox_status_known".to_string(),
                format!("DROP INDEX private.{unique_index}"),
                "DROP TABLE private.ticket_suggestions".to_string(),
                "ALTER TABLE private.tokens ADD COLUMN bonus int".to_string(),
                "COMMENT ON TABLE private.outbox IS 'mine'".to_string(),
            ],
        )
        .await;
    // The ALTER DEFAULT PRIVILEGES pass the privilege checks (the login is a
    // member of pgrpc_owner); the guard refuses them.
    assert!(
        messages.iter().any(|m| m == GUARD_KEY),
        "the guard refused something: {messages:?}"
    );
    // The same login may still change a schema of its own.
    owner
        .run(
            None,
            "CREATE SCHEMA scratch; CREATE TABLE scratch.t (x int); \
             ALTER TABLE scratch.t ENABLE ROW LEVEL SECURITY; DROP TABLE scratch.t",
        )
        .await
        .expect("DDL outside pgrpc's schemas is not refused");
    owner.drop(&db).await;
}

/// REASSIGN OWNED (which fires no event trigger) hands an owner login nothing of pgrpc's.
#[tokio::test]
async fn owner_login_gains_nothing_by_reassign_owned() {
    let db = TestDb::new().await;
    let owner = Login::new(&db, "pgrpc_owner", "own").await;
    let me = owner.name.clone();
    // As itself the login may run it; once SET ROLE pgrpc_owner it may not.
    owner
        .run(None, &format!("REASSIGN OWNED BY pgrpc_owner TO {me}"))
        .await
        .expect("REASSIGN OWNED of nothing");
    let su = db.superuser().await;
    let taken = count(
        &su,
        &format!(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname IN ('private', 'api', 'admin', 'pgrpc_guard') AND c.relowner = '{me}'::regrole) \
                  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                     WHERE n.nspname IN ('private', 'api', 'admin', 'pgrpc_guard') AND p.proowner = '{me}'::regrole) \
                  + (SELECT count(*) FROM pg_namespace WHERE nspowner = '{me}'::regrole)"
        ),
    )
    .await;
    assert_eq!(taken, 0, "the login owns nothing of pgrpc's");
    owner
        .assert_refused(
            "pgrpc_owner",
            &[
                format!("GRANT SELECT (contract_token) ON private.players TO {me}"),
                "UPDATE private.tokens SET used = 0".to_string(),
                "SELECT contract_token FROM private.players".to_string(),
            ],
        )
        .await;
    owner.drop(&db).await;
}

/// An owner login and an operator login write nothing and read no credential, in any private table.
#[tokio::test]
async fn owner_and_operator_logins_write_nothing_in_private_tables() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let tables: Vec<String> = query_column(
        &su,
        "SELECT relname::text FROM pg_class WHERE relnamespace = 'private'::regnamespace \
         AND relkind = 'r' ORDER BY 1",
        &[],
    )
    .await;
    assert!(tables.len() > 20, "{tables:?}");
    for (group, tag) in [("pgrpc_owner", "own"), ("pgrpc_admin", "adm")] {
        let login = Login::new(&db, group, tag).await;
        let mut writes = Vec::new();
        for t in &tables {
            let first: String = query_value(
                &su,
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
                 AND attnum > 0 AND NOT attisdropped AND attidentity = '' AND attgenerated = '' \
                 ORDER BY attnum LIMIT 1",
                &[&format!("private.{t}")],
            )
            .await;
            // Operators load legacy feed rows by hand (V9); nothing else.
            if !(group == "pgrpc_admin" && t == "legacy_recent_receives") {
                writes.push(format!("INSERT INTO private.{t} DEFAULT VALUES"));
            }
            writes.push(format!("UPDATE private.{t} SET {first} = {first}"));
            writes.push(format!("DELETE FROM private.{t}"));
            writes.push(format!("TRUNCATE private.{t}"));
            writes.push(format!(
                "BEGIN; LOCK TABLE private.{t} IN ACCESS EXCLUSIVE MODE; COMMIT"
            ));
        }
        writes.extend(owned(&[
            "SELECT contract_token FROM private.players",
            "SELECT nonce FROM private.oauth_nonces",
            "SELECT lease_token FROM private.outbox",
            "SELECT lease_token FROM private.idempotency_keys",
            "SELECT response_body FROM private.idempotency_keys",
            "SELECT response_body FROM private.http_idempotency_keys",
            "SELECT response_headers FROM private.http_idempotency_keys",
        ]));
        login.assert_refused(group, &writes).await;
        for t in &tables {
            let readable = count(
                &login.client,
                &format!(
                    "SELECT count(*) FROM pg_attribute WHERE attrelid = 'private.{t}'::regclass \
                     AND attnum > 0 AND NOT attisdropped \
                     AND has_column_privilege(attrelid, attnum, 'SELECT')"
                ),
            )
            .await;
            // New tables get no default SELECT: their migration grants it,
            // leaving out any credential column. The outbox's lock table is
            // read by nobody (V21): a reader could hold it against a
            // migration.
            if t == "outbox_aggregate_locks" {
                assert_eq!(readable, 0, "{group} reads {t}");
            } else {
                assert!(readable > 0, "{group} reads the non-secret columns of {t}");
            }
        }
        login.drop(&db).await;
    }
}

/// A session holding pgrpc_api, which owns the api functions, cannot redefine, re-grant or drop them (defense in depth: no login may hold pgrpc_api, see attacks::a_login_holding_pgrpc_api_stops_migrate_and_superuser_ddl).
#[tokio::test]
async fn api_login_cannot_redefine_regrant_or_drop_api_functions() {
    let db = TestDb::new().await;
    let api = Login::holding_pgrpc_api(&db, "api").await;
    let me = api.name.clone();
    let messages = api
        .assert_refused(
            "pgrpc_api",
            &[
                "CREATE OR REPLACE FUNCTION api.version() RETURNS text LANGUAGE sql STABLE \
                 SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 'x'::text $$"
                    .to_string(),
                "CREATE FUNCTION api.leak() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER \
                 AS 'SELECT contract_token FROM private.players'"
                    .to_string(),
                "GRANT EXECUTE ON FUNCTION api.version() TO PUBLIC".to_string(),
                format!("GRANT EXECUTE ON FUNCTION admin.set_setting(text, text) TO {me}"),
                "ALTER FUNCTION api.version() SECURITY INVOKER".to_string(),
                "ALTER FUNCTION api.version() RESET search_path".to_string(),
                "DROP FUNCTION api.version()".to_string(),
                "COMMENT ON FUNCTION api.version() IS 'mine'".to_string(),
                "ALTER DEFAULT PRIVILEGES FOR ROLE pgrpc_api GRANT EXECUTE ON FUNCTIONS TO PUBLIC"
                    .to_string(),
                format!("ALTER FUNCTION api.version() OWNER TO {me}"),
            ],
        )
        .await;
    // As itself the login passes every privilege check; the guard refuses.
    // (Once SET ROLE pgrpc_api, it cannot name itself as the new owner.)
    assert!(
        messages[..messages.len() / 2]
            .iter()
            .all(|m| m == GUARD_KEY),
        "the guard refused each of them: {messages:?}"
    );
    // REASSIGN OWNED fires no event trigger; it is refused outright.
    let err = api
        .run(None, &format!("REASSIGN OWNED BY pgrpc_api TO {me}"))
        .await
        .expect_err("reassign pgrpc_api's functions");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    let su = db.superuser().await;
    let version: String = query_value(&su, "SELECT api.version()", &[]).await;
    assert_eq!(version, "0.1.0");
    // Superuser DDL refreshes the baseline, as a migration that switched
    // role makes it, so the next login DDL outside pgrpc's schemas passes.
    su.batch_execute(
        "CREATE FUNCTION api.added_by_migration() RETURNS int LANGUAGE sql STABLE AS 'SELECT 1'; \
         BEGIN; SET LOCAL ROLE pgrpc_migrator; \
         CREATE TABLE private.added_by_migration (id int); COMMIT",
    )
    .await
    .expect("a migration adds a function and a table");
    api.run(
        None,
        "CREATE SCHEMA scratch; CREATE TABLE scratch.t (x int)",
    )
    .await
    .expect("DDL outside pgrpc's schemas is not refused");
    api.drop(&db).await;
}

/// Operators and owner logins cannot read a contract token or a nonce that a stored Idempotency-Key response holds.
#[tokio::test]
async fn operator_login_cannot_read_credentials_from_stored_responses() {
    let s = TestServer::start().await;
    let svc = service_token();
    let post = |function: &str, key: &str, body: serde_json::Value| {
        s.http
            .post(s.url(&format!("/rpc/{function}")))
            .bearer_auth(&svc)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
    };
    let team = send(post(
        "create_team",
        "team-1",
        json!({"tenant_id": 5, "name": "T"}),
    ))
    .await;
    assert_eq!(team.status, 200, "{}", team.text);
    let player = send(post(
        "create_player",
        "player-1",
        json!({"tenant_id": 5, "team_id": team.body["id"], "name": "Kid"}),
    ))
    .await;
    assert_eq!(player.status, 200, "{}", player.text);
    let contract_token = player.body["contract_token"]
        .as_str()
        .expect("a contract token")
        .to_string();
    let nonce = send(post("issue_oauth_nonce", "nonce-1", json!({}))).await;
    assert_eq!(nonce.status, 200, "{}", nonce.text);
    let nonce = nonce.body["nonce"].as_str().expect("a nonce").to_string();

    let su = s.db.superuser().await;
    let stored = count(
        &su,
        &format!(
            "SELECT count(*) FROM private.http_idempotency_keys \
             WHERE response_body LIKE '%{contract_token}%' OR response_body LIKE '%{nonce}%'"
        ),
    )
    .await;
    assert_eq!(stored, 2, "the responses are stored with their secrets");

    for (group, tag) in [("pgrpc_admin", "adm"), ("pgrpc_owner", "own")] {
        let login = Login::new(&s.db, group, tag).await;
        login
            .assert_refused(
                group,
                &owned(&[
                    "SELECT response_body FROM private.http_idempotency_keys",
                    "SELECT response_headers FROM private.http_idempotency_keys",
                    "SELECT * FROM private.http_idempotency_keys",
                    "SELECT response_body FROM private.idempotency_keys",
                ]),
            )
            .await;
        // Every column the login can read, in every table and view it can see.
        let columns: Vec<String> = query_column(
            &login.client,
            "SELECT format('SELECT count(*) FROM %I.%I WHERE %I::text LIKE $1', n.nspname, c.relname, a.attname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' \
               AND c.relkind IN ('r', 'v', 'm', 'p') \
               AND has_schema_privilege(n.oid, 'USAGE') \
               AND has_column_privilege(c.oid, a.attnum, 'SELECT')",
            &[],
        )
        .await;
        assert!(columns.len() > 100, "{group} reads many columns");
        for sql in &columns {
            for secret in [&contract_token, &nonce] {
                let pattern = format!("%{secret}%");
                let hits: i64 = query_value(&login.client, sql, &[&pattern]).await;
                assert_eq!(hits, 0, "{group} reads a credential with {sql}");
            }
        }
        login.drop(&s.db).await;
    }
}

/// The proxy's connection role ends a transaction left idle for a minute: the server closes such a session.
#[tokio::test]
async fn authenticator_sessions_end_idle_transactions() {
    let db = TestDb::new().await;
    let auth = connect(&db.authenticator_url()).await;
    let timeout: String = query_value(&auth, "SHOW idle_in_transaction_session_timeout", &[]).await;
    assert_eq!(
        timeout, "1min",
        "the shipped setting of pgrpc_authenticator"
    );
    drop(auth);

    // A minute is too long to wait: shorten it for the authenticator in
    // this test's database only (a per-database role setting, invisible to
    // the tests beside it), then leave a transaction idle past it.
    let su = db.superuser().await;
    su.batch_execute(&format!(
        "ALTER ROLE pgrpc_authenticator IN DATABASE {} SET idle_in_transaction_session_timeout = '300ms'",
        db.name
    ))
    .await
    .expect("shorten the timeout");
    let auth = connect(&db.authenticator_url()).await;
    let pid: i32 = query_value(&auth, "SELECT pg_backend_pid()", &[]).await;
    auth.batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open a transaction");
    let mut alive = true;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let n: i64 = query_value(
            &su,
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await;
        if n == 0 {
            alive = false;
            break;
        }
    }
    assert!(
        !alive,
        "the idle transaction's session is still there after 5 s"
    );
    let err = auth
        .batch_execute("SELECT 1")
        .await
        .expect_err("the session was ended");
    assert!(
        auth.is_closed() || err.code() == Some(&SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT),
        "{err}"
    );
}

/// While a role is a member of pgrpc_migrator, even a superuser's DDL (pgrpc migrate) is refused.
#[tokio::test]
async fn migrations_stop_while_a_role_can_act_as_the_migrator() {
    let db = TestDb::new().await;
    let role = format!("mig_{}", db.name);
    let su = db.superuser().await;
    // Roles are cluster-wide: the membership stays inside this transaction,
    // invisible to the tests running beside it.
    su.batch_execute(&format!(
        "BEGIN; CREATE ROLE {role} NOLOGIN; GRANT pgrpc_migrator TO {role}"
    ))
    .await
    .expect("a member of pgrpc_migrator");
    let err = su
        .batch_execute("CREATE TABLE public.after_the_grant (x int)")
        .await
        .expect_err("superuser DDL while the migrator has a member");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    assert_eq!(message(&err), "migrator_role_has_members");
    su.batch_execute("ROLLBACK").await.expect("rollback");
    su.batch_execute("CREATE TABLE public.after_the_revoke (x int)")
        .await
        .expect("superuser DDL once nobody is a member");
}
