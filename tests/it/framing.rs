//! How a call's transaction goes to PostgreSQL (issue 20, item 2). Once
//! its statements are prepared on the connection, a plain call is one
//! implicit transaction: its statements before a single Sync, no `BEGIN`
//! or `COMMIT`. The call that prepares them, and every call that needs an
//! explicit transaction, keep `BEGIN … COMMIT`. Both must answer alike:
//! same role, READ ONLY, settings, pre-request function, errors (also one
//! found at COMMIT), and nothing committed by a call that failed.
//!
//! A streamed call (a SETOF read) opens the same way: once warm, its
//! statements go before one Sync and its rows end at that Sync, which
//! commits; `Prefer: tx=rollback` keeps its explicit ROLLBACK.
//!
//! A relay in front of the database counts the server's ReadyForQuery
//! messages (one per Sync or simple query the proxy sent), so each test
//! also shows which framing ran.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use pgrpc::config::ServeConfig;

use crate::streaming::raw_get_with;
use crate::support::db::query_value;
use crate::support::{send, token, Resp, TestDb, TestServer};

fn fixture(s: &str, db: &str) -> String {
    format!(
        r#"
CREATE SCHEMA frm;
CREATE ROLE frm_anon_{s} NOLOGIN;
CREATE ROLE frm_user_{s} NOLOGIN;
-- A request role without USAGE on the schema.
CREATE ROLE frm_outsider_{s} NOLOGIN;
CREATE ROLE frm_auth_{s} NOINHERIT LOGIN PASSWORD 'framing';
GRANT frm_anon_{s}, frm_user_{s}, frm_outsider_{s} TO frm_auth_{s};
GRANT USAGE ON SCHEMA frm TO frm_anon_{s}, frm_user_{s};
ALTER ROLE frm_user_{s} IN DATABASE {db} SET timezone = 'Asia/Tokyo';

CREATE TABLE frm.parents (id int PRIMARY KEY);
INSERT INTO frm.parents VALUES (1);
-- Checked at COMMIT: a dangling parent fails there, not in the call.
CREATE TABLE frm.items (
  id serial PRIMARY KEY,
  parent int REFERENCES frm.parents DEFERRABLE INITIALLY DEFERRED,
  note text NOT NULL);
GRANT SELECT, INSERT ON frm.items TO frm_user_{s};
GRANT USAGE ON SEQUENCE frm.items_id_seq TO frm_user_{s};

CREATE FUNCTION frm.seen() RETURNS json LANGUAGE sql STABLE AS $$
  SELECT json_build_object(
    'user', current_user,
    'read_only', current_setting('transaction_read_only'),
    'method', current_setting('request.method'),
    'path', current_setting('request.path'),
    'search_path', current_setting('search_path'),
    'sub', current_setting('request.jwt.claims', true)::json->>'sub',
    'timezone', current_setting('TimeZone'))
$$;
-- A read that takes its time, then says who it ran as.
CREATE FUNCTION frm.nap(ms int) RETURNS json LANGUAGE plpgsql STABLE AS $$
BEGIN
  PERFORM pg_sleep(ms / 1000.0);
  RETURN frm.seen();
END $$;
-- A read that takes its time, then fails.
CREATE FUNCTION frm.nap_fail(ms int) RETURNS json LANGUAGE plpgsql STABLE AS $$
BEGIN
  PERFORM pg_sleep(ms / 1000.0);
  RAISE SQLSTATE 'PT418' USING MESSAGE = 'teapot';
END $$;
CREATE FUNCTION frm.add(parent int, note text) RETURNS int LANGUAGE sql VOLATILE AS
  $$ INSERT INTO frm.items (parent, note) VALUES (parent, note) RETURNING id $$;
CREATE FUNCTION frm.fail(note text) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  INSERT INTO frm.items (parent, note) VALUES (1, note);
  RAISE SQLSTATE 'PT418' USING MESSAGE = 'teapot';
END $$;
CREATE FUNCTION frm.seen_rows(n int)
  RETURNS TABLE(i int, usr text, read_only text, timezone text, pad text)
  LANGUAGE sql STABLE AS $$
  SELECT i, current_user, current_setting('transaction_read_only'),
         current_setting('TimeZone'), repeat('x', 40)
  FROM generate_series(1, n) AS i $$;
CREATE FUNCTION frm.rows_fail(n int, at int) RETURNS TABLE(i int, q int)
  LANGUAGE sql STABLE AS $$ SELECT i, 1 / (at - i) FROM generate_series(1, n) AS i $$;
CREATE FUNCTION frm.pre() RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF current_setting('request.headers', true)::json->>'x-block' = 'yes' THEN
    RAISE SQLSTATE 'PT403' USING MESSAGE = 'blocked';
  END IF;
END $$;
"#
    )
}

/// A TCP relay in front of the database that counts the ReadyForQuery
/// messages the server sends.
pub(crate) struct Relay {
    port: u16,
    ready: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(db: &TestDb) -> Relay {
        let target = db.address();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let ready = Arc::new(AtomicUsize::new(0));
        let count = ready.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut server_read, mut server_write) = outbound.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let count = count.clone();
                tokio::spawn(async move {
                    // The server's messages: a type byte, then a length
                    // that counts itself (no SSL: the proxy asks for none).
                    let mut pending: Vec<u8> = Vec::new();
                    let mut chunk = vec![0u8; 16 * 1024];
                    while let Ok(n) = server_read.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        pending.extend_from_slice(&chunk[..n]);
                        let mut at = 0;
                        while pending.len() >= at + 5 {
                            let len = u32::from_be_bytes([
                                pending[at + 1],
                                pending[at + 2],
                                pending[at + 3],
                                pending[at + 4],
                            ]) as usize;
                            if pending.len() < at + 1 + len {
                                break;
                            }
                            if pending[at] == b'Z' {
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            at += 1 + len;
                        }
                        // Counted before forwarded: once the proxy has an
                        // answer, its ReadyForQuery is counted.
                        pending.drain(..at);
                        if client_write.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Relay {
            port,
            ready,
            accept,
        }
    }

    fn count(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One call, and how many ReadyForQuery messages it took.
pub(crate) async fn counted(relay: &Relay, req: reqwest::RequestBuilder) -> (Resp, usize) {
    let before = relay.count();
    let r = send(req).await;
    (r, relay.count() - before)
}

/// The same call twice on the one pooled connection: the first may have
/// to prepare its statement (an explicit transaction); the second is one
/// implicit transaction, a single ReadyForQuery, and answers exactly as
/// the first.
async fn twice(relay: &Relay, req: impl Fn() -> reqwest::RequestBuilder) -> Resp {
    let (first, _) = counted(relay, req()).await;
    let (second, second_syncs) = counted(relay, req()).await;
    assert_eq!(
        second_syncs, 1,
        "the warm call is one implicit transaction ({})",
        second.text
    );
    assert_eq!(
        (second.status, &second.body),
        (first.status, &first.body),
        "the implicit transaction answers as the explicit one did: {} / {}",
        first.text,
        second.text
    );
    second
}

pub(crate) async fn items(db: &TestDb, note: &str) -> i64 {
    let su = db.superuser().await;
    query_value(
        &su,
        "SELECT count(*) FROM frm.items WHERE note = $1",
        &[&note],
    )
    .await
}

/// A database with the fixture, a relay in front of it, and a proxy with
/// one pooled connection through the relay (`tune` adds to its
/// configuration); the database's name suffixes the test roles.
pub(crate) async fn start(tune: impl FnOnce(&mut ServeConfig)) -> (Relay, TestServer, String) {
    let db = TestDb::new().await;
    let s = db.name.clone();
    db.superuser()
        .await
        .batch_execute(&fixture(&s, &s))
        .await
        .expect("fixture");
    let relay = Relay::start(&db).await;
    let url = format!(
        "postgresql://frm_auth_{s}:framing@127.0.0.1:{}/{}",
        relay.port, db.name
    );
    let anon = format!("frm_anon_{s}");
    let server = TestServer::start_on_url(db, url, |c| {
        c.schemas = vec!["frm".to_string()];
        c.anon_role = anon;
        c.pool_size = 1;
        c.pre_request = Some("frm.pre".into());
        tune(c);
    })
    .await;
    (relay, server, s)
}

/// The states of the test role's sessions in `pg_stat_activity`.
pub(crate) async fn sessions(db: &TestDb, s: &str) -> Vec<String> {
    let su = db.superuser().await;
    query_value(
        &su,
        "SELECT coalesce(array_agg(state), '{}') FROM pg_stat_activity \
         WHERE usename = $1 AND backend_type = 'client backend'",
        &[&format!("frm_auth_{s}")],
    )
    .await
}

#[tokio::test]
async fn a_warm_call_is_one_implicit_transaction_that_answers_as_the_explicit_one() {
    let (relay, server, s) = start(|_| {}).await;
    let user = token(json!({"role": format!("frm_user_{s}"), "sub": "u1"}));
    // POST /rpc/<function> as the user.
    let post = |function: &str, body: serde_json::Value| {
        server
            .http
            .post(server.url(&format!("/rpc/{function}")))
            .bearer_auth(&user)
            .json(&body)
    };

    // The first call prepares its statement, as the request role, inside
    // BEGIN … COMMIT.
    let (r, syncs) = counted(&relay, server.http.get(server.url("/rpc/seen"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        syncs >= 3,
        "prepare, then BEGIN … COMMIT: {syncs} ReadyForQuery"
    );

    // An anonymous read: the request role, READ ONLY, the request's
    // settings, the profile's search_path.
    let r = twice(&relay, || server.http.get(server.url("/rpc/seen"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"], json!(format!("frm_anon_{s}")));
    assert_eq!(r.body["read_only"], json!("on"));
    assert_eq!(r.body["method"], json!("GET"));
    assert_eq!(r.body["path"], json!("/rpc/seen"));
    assert!(
        r.body["search_path"]
            .as_str()
            .is_some_and(|p| p.starts_with("\"frm\"")),
        "{}",
        r.text
    );

    // A STABLE function by POST, with a token: still READ ONLY, the
    // claims, and the role's own setting.
    let r = twice(&relay, || post("seen", json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"], json!(format!("frm_user_{s}")));
    assert_eq!(r.body["read_only"], json!("on"));
    assert_eq!(r.body["sub"], json!("u1"));
    assert_eq!(r.body["timezone"], json!("Asia/Tokyo"));

    // A VOLATILE function by GET is refused as a write in READ ONLY.
    let r = twice(&relay, || {
        server
            .http
            .get(server.url("/rpc/add?parent=1&note=by-get"))
            .bearer_auth(&user)
    })
    .await;
    assert_eq!(
        (r.status, &r.body["code"]),
        (405, &json!("25006")),
        "{}",
        r.text
    );
    assert_eq!(items(&server.db, "by-get").await, 0);

    // A write commits (each call its own row).
    let add = || post("add", json!({"parent": 1, "note": "kept"}));
    let (first, _) = counted(&relay, add()).await;
    let (second, syncs) = counted(&relay, add()).await;
    assert_eq!(
        (first.status, second.status, syncs),
        (200, 200, 1),
        "{}",
        second.text
    );
    assert_eq!(
        second.body.as_i64(),
        first.body.as_i64().map(|id| id + 1),
        "{} / {}",
        first.text,
        second.text
    );
    assert_eq!(items(&server.db, "kept").await, 2);

    // An error found at COMMIT (a deferred foreign key) is the answer, and
    // nothing is kept.
    let r = twice(&relay, || {
        post("add", json!({"parent": 99, "note": "dangling"}))
    })
    .await;
    assert_eq!(
        (r.status, &r.body["code"]),
        (409, &json!("23503")),
        "{}",
        r.text
    );
    assert_eq!(items(&server.db, "dangling").await, 0);

    // The function's own error rolls back what it wrote.
    let r = twice(&relay, || post("fail", json!({"note": "raised"}))).await;
    assert_eq!(
        (r.status, &r.body["message"]),
        (418, &json!("teapot")),
        "{}",
        r.text
    );
    assert_eq!(items(&server.db, "raised").await, 0);

    // The pre-request function runs before the call, and can refuse it.
    let r = twice(&relay, || {
        server
            .http
            .get(server.url("/rpc/seen"))
            .header("X-Block", "yes")
    })
    .await;
    assert_eq!(
        (r.status, &r.body["message"]),
        (403, &json!("blocked")),
        "{}",
        r.text
    );

    // After all of it the connection is idle, not in a transaction, and
    // serves the next call.
    let states = sessions(&server.db, &s).await;
    assert!(
        !states.is_empty() && states.iter().all(|st| st == "idle"),
        "{states:?}"
    );
    let (r, syncs) = counted(&relay, server.http.get(server.url("/rpc/seen"))).await;
    assert_eq!((r.status, syncs), (200, 1), "{}", r.text);
}

#[tokio::test]
async fn a_warm_streamed_call_is_one_implicit_transaction_that_answers_as_the_explicit_one() {
    let (relay, server, s) = start(|c| {
        c.stream_threshold_bytes = 1024;
        c.tx_end = pgrpc::prefer::TxEnd::CommitAllowOverride;
    })
    .await;
    let user = token(json!({"role": format!("frm_user_{s}"), "sub": "u1"}));
    let get = |target: &str| {
        server
            .http
            .get(server.url(&format!("/rpc/{target}")))
            .bearer_auth(&user)
    };

    // Cold: the streaming statement is prepared first, then BEGIN …
    // COMMIT around its rows.
    let (r, syncs) = counted(&relay, get("seen_rows?n=3")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        syncs >= 3,
        "prepare, then BEGIN … COMMIT: {syncs} ReadyForQuery"
    );

    // A result that fits under the threshold, answered whole: the
    // request role, READ ONLY, the role's own setting.
    let r = twice(&relay, || get("seen_rows?n=3")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_array().map(Vec::len), Some(3), "{}", r.text);
    assert_eq!(r.body[2]["usr"], json!(format!("frm_user_{s}")));
    assert_eq!(r.body[2]["read_only"], json!("on"));
    assert_eq!(r.body[2]["timezone"], json!("Asia/Tokyo"));

    // A result past the threshold streams (chunked), every row there.
    let r = twice(&relay, || get("seen_rows?n=2000")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("content-length").is_none(),
        "streamed: {:?}",
        r.headers
    );
    assert_eq!(r.body.as_array().map(Vec::len), Some(2000));
    assert_eq!(r.body[1999]["i"], json!(2000));

    // The pre-request function refuses a stream before its first row.
    let r = twice(&relay, || get("seen_rows?n=3").header("X-Block", "yes")).await;
    assert_eq!(
        (r.status, &r.body["message"]),
        (403, &json!("blocked")),
        "{}",
        r.text
    );

    // An error before the first row is the answer.
    let r = twice(&relay, || get("rows_fail?n=10&at=1")).await;
    assert_eq!(
        (r.status, &r.body["code"]),
        (400, &json!("22012")),
        "{}",
        r.text
    );

    // An error after the headers cuts the NDJSON stream (no final chunk)
    // after its error line, and the connection is idle afterwards (the
    // Sync ended it). Anonymous, over a raw connection: a client library
    // takes the cut for an error.
    let cut = || {
        raw_get_with(
            &server,
            "/rpc/rows_fail?n=5000&at=4000",
            &[("Accept", "application/x-ndjson")],
        )
    };
    // The NDJSON statement is a new one: prepared by this first call.
    let cold = cut().await;
    let before = relay.count();
    let r = cut().await;
    assert_eq!(relay.count() - before, 1, "{}", r.head);
    assert_eq!(
        (&cold.head[..15], &cold.body),
        (&r.head[..15], &r.body),
        "the implicit stream is cut as the explicit one"
    );
    assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.head);
    assert!(!r.complete, "the cut stream has no final chunk");
    let text = String::from_utf8_lossy(&r.body);
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.contains("\"$error\"") && last.contains("22012"),
        "{last}"
    );
    assert_eq!(text.lines().count(), 3999 + 1);
    let states = sessions(&server.db, &s).await;
    assert!(
        !states.is_empty() && states.iter().all(|st| st == "idle"),
        "{states:?}"
    );

    // Prefer: tx=rollback keeps BEGIN … ROLLBACK (two ReadyForQuery at
    // least), with the same rows.
    let (r, syncs) = counted(&relay, get("seen_rows?n=3").header("Prefer", "tx=rollback")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_array().map(Vec::len), Some(3), "{}", r.text);
    assert!(syncs >= 2, "BEGIN … ROLLBACK: {syncs} ReadyForQuery");
    // That answer went out before its ROLLBACK ended (a read commits
    // nothing): the next count starts once the ROLLBACK is through.
    for _ in 0..50 {
        if sessions(&server.db, &s).await.iter().all(|st| st == "idle") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // And the next warm stream is one implicit transaction again.
    let (r, syncs) = counted(&relay, get("seen_rows?n=3")).await;
    assert_eq!((r.status, syncs), (200, 1), "{}", r.text);
    let states = sessions(&server.db, &s).await;
    assert!(
        !states.is_empty() && states.iter().all(|st| st == "idle"),
        "{states:?}"
    );
}

/// The pool's rule for a connection marked busy (as every call and stream
/// marks it until its transaction has ended) and dropped with its
/// transaction open, as a call that panicked half-way drops it: closed at
/// the next checkout, so the next request gets a new session and the
/// dropped transaction's write is rolled back, never committed by that
/// request. A connection settled after its transaction ended is reused.
/// (That calls settle on every ordinary end is what the warm-call tests
/// above show: a connection not settled is replaced, and the next call
/// has to prepare its statements again.)
#[tokio::test]
async fn a_connection_dropped_mid_transaction_is_never_reused() {
    use pgrpc::db::{build_pool, PoolOptions};

    let db = TestDb::new().await;
    db.superuser()
        .await
        .batch_execute("CREATE TABLE left_open (n int)")
        .await
        .expect("table");
    let options = PoolOptions::primary(1, std::time::Duration::from_secs(5), true, false);
    let pool = build_pool(&db.url(), &options).expect("pool");
    async fn pid(c: &pgrpc::db::pool::Conn) -> i32 {
        c.client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0)
    }

    // Settled: the one pooled session serves the next checkout.
    let mut conn = pool.get().await.expect("checkout");
    let first = pid(&conn).await;
    conn.begin_use();
    conn.client
        .batch_execute("BEGIN; INSERT INTO left_open VALUES (1); COMMIT")
        .await
        .expect("write");
    conn.settle();
    drop(conn);
    let mut conn = pool.get().await.expect("checkout");
    assert_eq!(pid(&conn).await, first, "a settled session is reused");

    // Left with its transaction open: closed, and its write undone.
    conn.begin_use();
    conn.client
        .batch_execute("BEGIN; INSERT INTO left_open VALUES (2)")
        .await
        .expect("write");
    drop(conn);
    let conn = pool.get().await.expect("checkout");
    assert_ne!(pid(&conn).await, first, "a new session");
    let seen: Vec<i32> = conn
        .client
        .query("SELECT n FROM left_open ORDER BY n", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, [1], "the open transaction's row is not visible");
    // The next request's own transaction commits only its own work.
    conn.client
        .batch_execute("BEGIN; INSERT INTO left_open VALUES (3); COMMIT")
        .await
        .expect("write");
    let su = db.superuser().await;
    let committed: i64 = query_value(&su, "SELECT count(*) FROM left_open WHERE n = 2", &[]).await;
    assert_eq!(committed, 0, "the dropped transaction was rolled back");
}

/// A role without USAGE on the exposed schema is refused as PostgreSQL
/// refuses it ("permission denied for schema", 42501), also when another
/// role's call has already prepared the same statement on the connection.
/// PostgreSQL checks schema USAGE when it parses a statement, not when it
/// runs a prepared one; what re-checks it is the call's search_path,
/// which starts with the exposed schema: a schema without USAGE drops out
/// of the effective path, the path then differs from the one the
/// statement was parsed under, and PostgreSQL parses it again as the
/// caller.
#[tokio::test]
async fn a_role_without_schema_usage_is_refused_on_a_warm_connection() {
    let (relay, server, s) = start(|_| {}).await;
    let user = token(json!({"role": format!("frm_user_{s}"), "sub": "u1"}));
    let outsider = token(json!({"role": format!("frm_outsider_{s}"), "sub": "u2"}));
    let get = |t: &str| server.http.get(server.url("/rpc/seen")).bearer_auth(t);
    // Cold: the outsider's own call parses the statement, and is refused.
    let cold = send(get(&outsider)).await;
    assert_eq!(cold.status, 403, "{}", cold.text);
    assert_eq!(cold.error_code(), "42501", "{}", cold.text);
    // The user's calls prepare the statement on the one pooled connection;
    // the second runs it as one implicit transaction.
    for _ in 0..2 {
        let r = send(get(&user)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Warm: the outsider's call runs that prepared statement (one
    // implicit transaction, one ReadyForQuery, nothing prepared again by
    // the proxy), and is refused as before.
    let (warm, syncs) = counted(&relay, get(&outsider)).await;
    assert_eq!(syncs, 1, "the prepared statement ran: {}", warm.text);
    assert_eq!(
        (warm.status, warm.error_code()),
        (cold.status, cold.error_code()),
        "{}",
        warm.text
    );
}

/// The vendored driver's text binding (`Pipeline::execute_text`, how a
/// warm call binds its settings and its values) sends what `ToSql` sends
/// for a `&str`: the same answers for `text` and `varchar` parameters,
/// multi-byte and long values included, and the same refusal of a NUL. A
/// parameter of another type takes `ToSql`'s path, which refuses a `&str`
/// for an `int4` before anything is sent, and leaves nothing of it in the
/// pipeline. `PipelineResponses::skip` reads a statement's answer without
/// its row, and still refuses a second row.
#[tokio::test]
async fn text_binding_sends_what_tosql_sends_and_skip_keeps_the_one_row_rule() {
    let db = TestDb::new().await;
    let c = db.superuser().await;
    let joined = c
        .prepare("SELECT $1::text || '|' || $2::varchar || '|' || octet_length($1::text)")
        .await
        .expect("prepare");
    // `pipeline` sent, its last statement's answer read (the ones before
    // it skipped), then its Sync.
    async fn last_answer(
        c: &tokio_postgres::Client,
        pipeline: tokio_postgres::Pipeline,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let before = pipeline.len() - 1;
        let mut answers = c.pipeline(pipeline).expect("send");
        for _ in 0..before {
            if let Err(e) = answers.skip().await.expect("an answer") {
                let _ = answers.finish().await;
                return Err(e);
            }
        }
        let answer = answers.next().await.expect("an answer");
        let end = answers.finish().await;
        let row = answer?;
        end.map(|()| row)
    }
    let text_of = |row: Option<tokio_postgres::Row>| row.expect("one row").get::<_, String>(0);

    let long = "ü€😀x".repeat(25_000);
    let cases: [[&str; 2]; 4] = [
        ["", ""],
        ["plain", "ascii"],
        ["ü€😀", "O'Brien \"quoted\" \\ back"],
        [long.as_str(), "end"],
    ];
    for [a, b] in cases {
        let by_tosql: String = c.query_one(&joined, &[&a, &b]).await.expect("ToSql").get(0);
        let mut pipeline = tokio_postgres::Pipeline::new();
        pipeline.execute_text(&joined, &[a, b]).expect("encode");
        let by_text = text_of(last_answer(&c, pipeline).await.expect("no error"));
        assert_eq!(by_text, by_tosql, "values of {} bytes", a.len());
    }

    // A NUL is refused by the server the same way on both paths.
    let nul = "a\0b";
    let by_tosql = c.query_one(&joined, &[&nul, &"x"]).await.expect_err("NUL");
    let mut pipeline = tokio_postgres::Pipeline::new();
    pipeline.execute_text(&joined, &[nul, "x"]).expect("encode");
    let by_text = last_answer(&c, pipeline).await.expect_err("NUL");
    assert!(by_text.code().is_some(), "a server error: {by_text}");
    assert_eq!(by_text.code(), by_tosql.code(), "{by_text} / {by_tosql}");

    // Another type: ToSql's check refuses a &str for int4, and the wrong
    // number of values is refused, both before anything is sent.
    let plus = c.prepare("SELECT $1::int4 + 1").await.expect("prepare");
    let mut pipeline = tokio_postgres::Pipeline::new();
    let refused = pipeline.execute_text(&plus, &["41"]).expect_err("int4");
    let why = std::error::Error::source(&refused).map(ToString::to_string);
    assert!(
        why.as_deref().is_some_and(|w| w.contains("int4")),
        "{refused}: {why:?}"
    );
    let refused = pipeline
        .execute_text(&joined, &["only one"])
        .expect_err("count");
    assert!(refused.to_string().contains("expected 2"), "{refused}");
    assert!(pipeline.is_empty());
    // Nothing of the refused values was left behind: the same pipeline
    // still sends a well-formed statement.
    pipeline
        .execute_text(&joined, &["still", "whole"])
        .expect("encode");
    let row = last_answer(&c, pipeline).await.expect("no error");
    assert_eq!(text_of(row), "still|whole|5");

    // skip: a one-row statement's answer without its row, then the last
    // statement's row; a second row is still an error.
    let one = c
        .prepare("SELECT set_config('application_name', $1, true)")
        .await
        .expect("prepare");
    let mut pipeline = tokio_postgres::Pipeline::new();
    pipeline.execute_text(&one, &["skipped"]).expect("encode");
    pipeline
        .execute_text(&joined, &["after", "skip"])
        .expect("encode");
    let row = last_answer(&c, pipeline).await.expect("no error");
    assert_eq!(text_of(row), "after|skip|5");

    let two = c
        .prepare("SELECT generate_series(1, 2)")
        .await
        .expect("prepare");
    let mut pipeline = tokio_postgres::Pipeline::new();
    pipeline.execute_text(&two, &[]).expect("encode");
    pipeline
        .execute_text(&joined, &["never", "run"])
        .expect("encode");
    let refused = last_answer(&c, pipeline).await.expect_err("two rows");
    assert!(refused.code().is_none(), "the driver's refusal: {refused}");
    // The connection still answers.
    assert_eq!(query_value::<i32>(&c, "SELECT 1", &[]).await, 1);
}
