//! The hostile corpus of the third attack review (issue 18): each break it
//! found, sent through real HTTP (or, for the SQL ones, through real login
//! roles) against a real PostgreSQL. Each test asserts the answer, that the
//! proxy is still up afterwards, and that nothing was written.
//!
//! Sections follow the layer where each rule belongs: client-input parsers,
//! the transport and process, the database's locks and roles, and the
//! commit path.

// ---------------------------------------------------------------------------
// Section: parsers (logic trees, fts operands, NUL bytes, cookies)
// ---------------------------------------------------------------------------

// (end of section: parsers)

// ---------------------------------------------------------------------------
// Section: transport (body read deadline, panics, metrics labels, reloads, GET /)
// ---------------------------------------------------------------------------

// (end of section: transport)

// ---------------------------------------------------------------------------
// Section: database (advisory locks, the api login rule)
// ---------------------------------------------------------------------------

/// A login of the database section's attacks, granted nothing at all.
async fn database_login_granted_nothing(
    db: &crate::support::TestDb,
    tag: &str,
) -> (String, tokio_postgres::Client) {
    let name = format!("{tag}_{}", db.name);
    db.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {name} LOGIN PASSWORD 'pw'"))
        .await
        .expect("create a login granted nothing");
    let client = crate::support::connect(&db.url_as(&name, "pw")).await;
    (name, client)
}

async fn database_drop_login(db: &crate::support::TestDb, name: &str) {
    db.superuser()
        .await
        .batch_execute(&format!("DROP OWNED BY {name}; DROP ROLE {name}"))
        .await
        .expect("drop login");
}

/// A login granted nothing holds the outbox's old advisory key of an aggregate and cannot take its new lock, while an anonymous sign_contract over HTTP still answers promptly.
#[tokio::test]
async fn a_login_granted_nothing_cannot_stall_an_anonymous_signature() {
    let s = crate::support::TestServer::start().await;
    let team = s
        .service_rpc(
            "create_team",
            serde_json::json!({"tenant_id": 18, "name": "T"}),
        )
        .await;
    assert_eq!(team.status, 200, "{}", team.text);
    let parent = s
        .service_rpc(
            "create_parent",
            serde_json::json!({"tenant_id": 18, "name": "P", "email": "p@example.com"}),
        )
        .await;
    assert_eq!(parent.status, 200, "{}", parent.text);
    let player = s
        .service_rpc(
            "create_player",
            serde_json::json!({"tenant_id": 18, "team_id": team.body["id"],
                               "name": "Kid", "parent_id": parent.body["id"]}),
        )
        .await;
    assert_eq!(player.status, 200, "{}", player.text);
    let player_id = player.body["id"].as_str().expect("a player id").to_string();

    let (name, login) = database_login_granted_nothing(&s.db, "lck").await;
    // The key private.outbox_emit locked until V17, held for the session.
    let key = format!("pgrpc_outbox:player:{player_id}");
    login
        .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&key])
        .await
        .expect("advisory locks need no privilege");

    let started = std::time::Instant::now();
    let signed = s
        .rpc(
            "sign_contract",
            None,
            serde_json::json!({"contract_token": player.body["contract_token"],
                               "signature_ref": "sig"}),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(signed.status, 200, "{}", signed.text);
    assert!(
        elapsed < std::time::Duration::from_secs(2),
        "the signature waited {elapsed:?} on a lock a stranger holds"
    );

    // The lock the emitters take now is out of the login's reach.
    for attempt in [
        "SELECT 1 FROM private.outbox_aggregate_locks FOR UPDATE",
        "LOCK TABLE private.outbox_aggregate_locks IN ROW SHARE MODE",
        "SELECT private.outbox_lock_aggregate('player', 'x')",
    ] {
        let err = login
            .batch_execute(&format!("BEGIN; {attempt}"))
            .await
            .expect_err(attempt);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{attempt}: {err}"
        );
        login.batch_execute("ROLLBACK").await.expect("rollback");
    }
    let su = s.db.superuser().await;
    let events = crate::support::db::count(
        &su,
        "SELECT count(*) FROM private.outbox WHERE event_type = 'contract.signed'",
    )
    .await;
    assert_eq!(events, 1, "one contract.signed event");
    drop(login);
    database_drop_login(&s.db, &name).await;
    assert_eq!(
        s.rpc("version", None, serde_json::json!({})).await.status,
        200
    );
}

/// A login granted nothing holds pgrpc migrate's old advisory key and cannot take its new lock, while pgrpc migrate still runs to the end.
#[tokio::test]
async fn a_login_granted_nothing_cannot_hold_up_pgrpc_migrate() {
    let db = crate::support::TestDb::new().await;
    let (name, login) = database_login_granted_nothing(&db, "mlk").await;
    // The session advisory lock src/migrate.rs took until V17 (0x0070_6772_7063).
    login
        .execute("SELECT pg_advisory_lock(482771890275)", &[])
        .await
        .expect("advisory locks need no privilege");
    let err = login
        .batch_execute(
            "BEGIN; LOCK TABLE information_schema.sql_features IN SHARE ROW EXCLUSIVE MODE",
        )
        .await
        .expect_err("only a superuser takes the migration lock");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    login.batch_execute("ROLLBACK").await.expect("rollback");

    let started = std::time::Instant::now();
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        pgrpc::migrate::run(&db.url()),
    )
    .await
    .expect("pgrpc migrate is not held up by a stranger's lock")
    .expect("pgrpc migrate succeeds");
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(login);
    database_drop_login(&db, &name).await;
}

/// While a login holds pgrpc_api (directly or through a NOLOGIN role), pgrpc migrate and every superuser DDL are refused, and the guard's report names the login and its chain.
#[tokio::test]
async fn a_login_holding_pgrpc_api_stops_migrate_and_superuser_ddl() {
    let db = crate::support::TestDb::new().await;
    let su = db.superuser().await;
    let (group, direct, via) = (
        format!("apigrp_{}", db.name),
        format!("apidir_{}", db.name),
        format!("apivia_{}", db.name),
    );
    // Roles are cluster-wide: the memberships stay inside this transaction,
    // invisible to the tests running beside it (and to their DDL).
    for (login, grant) in [
        (
            &direct,
            format!("CREATE ROLE {direct} LOGIN IN ROLE pgrpc_api"),
        ),
        (
            &via,
            format!(
                "CREATE ROLE {group} NOLOGIN IN ROLE pgrpc_api; \
                 CREATE ROLE {via} LOGIN IN ROLE {group}"
            ),
        ),
    ] {
        su.batch_execute(&format!("BEGIN; {grant}"))
            .await
            .expect("a login holding pgrpc_api");
        let report: Vec<String> = crate::support::db::query_column(
            &su,
            "SELECT role || ' ' || member || ' ' || via FROM pgrpc_guard.forbidden_memberships()",
            &[],
        )
        .await;
        let chain = if login == &direct {
            format!("pgrpc_api {direct} {direct} -> pgrpc_api")
        } else {
            format!("pgrpc_api {via} {via} -> {group} -> pgrpc_api")
        };
        assert_eq!(report, vec![chain], "the guard reports the login");

        // pgrpc migrate's check, before it applies anything.
        su.batch_execute("SAVEPOINT before")
            .await
            .expect("savepoint");
        let refused = pgrpc::migrate::refuse_forbidden_memberships(&su)
            .await
            .expect_err("pgrpc migrate refuses");
        let text = refused.to_string();
        assert!(
            text.contains("api_role_held_by_login") && text.contains(login.as_str()),
            "{text}"
        );
        su.batch_execute("ROLLBACK TO before")
            .await
            .expect("rollback to");

        // Any superuser DDL, so a migration stops at its first statement.
        let err = su
            .batch_execute("CREATE TABLE public.while_an_api_login_exists (x int)")
            .await
            .expect_err("superuser DDL while a login holds pgrpc_api");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{err}"
        );
        assert_eq!(crate::support::db::message(&err), "api_role_held_by_login");
        su.batch_execute("ROLLBACK TO before")
            .await
            .expect("rollback to");

        // A role that cannot log in may hold it: the rule is about logins.
        su.batch_execute(&format!(
            "ALTER ROLE {login} NOLOGIN; CREATE TABLE public.once_it_cannot_log_in (x int)"
        ))
        .await
        .expect("superuser DDL once no login holds pgrpc_api");
        su.batch_execute("ROLLBACK").await.expect("rollback");
    }
    pgrpc::migrate::refuse_forbidden_memberships(&su)
        .await
        .expect("nothing to refuse once the memberships are gone");
}

// (end of section: database)

// ---------------------------------------------------------------------------
// Section: commit path (idempotency rows, response settings before COMMIT)
// ---------------------------------------------------------------------------

// (end of section: commit path)
