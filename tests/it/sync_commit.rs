//! A COMMIT whose wait for its synchronous standby is cancelled (an
//! operator's `pg_cancel_backend`, a tool that cancels long statements) is
//! reported by PostgreSQL as a success, with only a WARNING, although no
//! standby has it. The proxy must not acknowledge it: 503, so that a
//! failover cannot lose an acknowledged write. The server here names a
//! synchronous standby that never comes, so every writing COMMIT waits.

use std::time::Duration;

use serde_json::json;

use crate::support::replication::start_primary_with;
use crate::support::{send, Resp, TestDb, TestServer};

const FIXTURES: &str = r#"
CREATE TABLE public.marks (id serial PRIMARY KEY, v int NOT NULL);
GRANT SELECT, INSERT ON public.marks TO pgrpc_anon;
GRANT USAGE ON SEQUENCE public.marks_id_seq TO pgrpc_anon;
CREATE FUNCTION api.add_mark(v int) RETURNS int LANGUAGE sql VOLATILE
  AS $$ INSERT INTO public.marks (v) VALUES (v) RETURNING id $$;
CREATE FUNCTION api.mark_count() RETURNS bigint LANGUAGE sql STABLE
  AS $$ SELECT count(*) FROM public.marks $$;
"#;

/// Sends `request`, waits until a COMMIT of the proxy waits for the
/// standby, cancels it as an operator would, and returns the answer.
async fn cancelled_while_waiting(
    su: &tokio_postgres::Client,
    request: reqwest::RequestBuilder,
) -> Resp {
    let call = tokio::spawn(send(request));
    let mut cancelled = false;
    for _ in 0..400 {
        let n: i64 = su
            .query_one(
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity \
                 WHERE usename = 'pgrpc_authenticator' AND wait_event = 'SyncRep'",
                &[],
            )
            .await
            .expect("cancel")
            .get(0);
        if n > 0 {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(cancelled, "no COMMIT ever waited for the standby");
    call.await.expect("call task")
}

#[tokio::test]
async fn a_commit_its_standby_never_confirmed_is_not_acknowledged() {
    // Sessions commit locally by default (the migrations, the fixtures);
    // the proxy's database waits for the standby "ghost". Starting the
    // server runs runtimes of its own: on a plain thread.
    let node = std::thread::spawn(|| {
        start_primary_with(&[
            "-c",
            "synchronous_standby_names=ghost",
            "-c",
            "synchronous_commit=local",
        ])
    })
    .join()
    .expect("server start thread panicked");
    let db = TestDb::new_on(&node.host, node.port).await;
    let su = db.superuser().await;
    su.batch_execute(FIXTURES).await.expect("fixtures");
    su.batch_execute(&format!(
        "ALTER DATABASE {} SET synchronous_commit = on",
        db.name
    ))
    .await
    .expect("settings");
    let s = TestServer::start_on(db, |_| {}).await;

    // A read commits nothing to wait for.
    let r = s.rpc("mark_count", None, json!({})).await;
    assert_eq!((r.status, r.body.clone()), (200, json!(0)), "{}", r.text);

    // The first call on a connection prepares (call and COMMIT together),
    // the next ones are pipelined; the last goes through the key's path.
    for v in 1..=3 {
        let request = s.http.post(s.url("/rpc/add_mark")).json(&json!({ "v": v }));
        let r = cancelled_while_waiting(&su, request).await;
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(r.body["code"], "PGRST001", "{}", r.text);
        assert_eq!(
            r.body["message"],
            "The commit was not confirmed by a synchronous standby"
        );
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    }
    let request = s
        .http
        .post(s.url("/rpc/add_mark"))
        .header("Idempotency-Key", "mark-4")
        .json(&json!({ "v": 4 }));
    let r = cancelled_while_waiting(&su, request).await;
    assert_eq!(r.status, 503, "{}", r.text);

    // What PostgreSQL did: each commit stands on the primary alone.
    let committed: i64 = su
        .query_one("SELECT count(*) FROM public.marks", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(committed, 4);
}
