//! Read replicas with read-your-writes (SPEC §2.3), against a real
//! streaming replica: a primary and a hot standby built by pg_basebackup
//! from the test image. Replay is paused and resumed on the standby to make
//! lag deterministic.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::replication::{pair, pair_db, primary_lsn, start_replica, wait_caught_up};
use crate::support::{send, TestServer};

/// Notes written through the proxy, and reads that say where they ran.
const FIXTURES: &str = r#"
CREATE TABLE public.notes (id serial PRIMARY KEY, v int NOT NULL);
GRANT SELECT, INSERT ON public.notes TO pgrpc_anon;
GRANT USAGE ON SEQUENCE public.notes_id_seq TO pgrpc_anon;
CREATE FUNCTION api.add_note(v int) RETURNS int LANGUAGE sql VOLATILE
  AS $$ INSERT INTO public.notes (v) VALUES (v) RETURNING id $$;
CREATE FUNCTION api.notes() RETURNS jsonb LANGUAGE sql STABLE
  AS $$ SELECT jsonb_build_object(
          'values', coalesce((SELECT jsonb_agg(v ORDER BY id) FROM public.notes), '[]'),
          'standby', pg_is_in_recovery(),
          'read_only', current_setting('transaction_read_only'),
          'role', current_user,
          'method', current_setting('request.method', true)) $$;
"#;

/// Pausing replay on the shared replica must not surprise another test.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn metric(s: &TestServer, line_prefix: &str) -> f64 {
    let text = send(s.http.get(s.url("/metrics"))).await.text;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_prefix} in:\n{text}"))
}

async fn reads(s: &TestServer, target: &str, reason: &str) -> f64 {
    metric(
        s,
        &format!("pgrpc_reads_total{{target=\"{target}\",reason=\"{reason}\"}}"),
    )
    .await
}

/// Waits until the proxy's probe finds the replica up and within `max_lag`.
async fn wait_replica_usable(s: &TestServer, max_lag: f64) {
    for _ in 0..200 {
        if metric(s, "pgrpc_replica_up ").await == 1.0
            && metric(s, "pgrpc_replica_lag_seconds ").await <= max_lag
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy never found the replica usable");
}

async fn get_notes(
    s: &TestServer,
    lsn_header: Option<&str>,
    cookie: Option<&str>,
) -> crate::support::Resp {
    let mut req = s.http.get(s.url("/rpc/notes"));
    if let Some(lsn) = lsn_header {
        req = req.header("X-Pgrpc-Lsn", lsn);
    }
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let r = send(req).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

async fn add_note(s: &TestServer, v: i32) -> String {
    let r = s.rpc("add_note", None, json!({ "v": v })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.header("x-pgrpc-lsn")
        .unwrap_or_else(|| panic!("a write's response carries X-Pgrpc-Lsn: {:?}", r.headers))
        .to_string()
}

/// Runs `part` with replay paused on the shared replica, and resumes replay
/// afterwards, even when `part` fails.
async fn while_paused<T>(part: impl std::future::Future<Output = T>) -> T {
    use futures_util::FutureExt;
    set_replay(true).await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        std::panic::AssertUnwindSafe(part).catch_unwind(),
    )
    .await;
    set_replay(false).await;
    match outcome {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the part with replay paused took over 60 s"),
    }
}

async fn set_replay(paused: bool) {
    let replica = pair().replica.superuser("postgres").await;
    let f = if paused {
        "pg_wal_replay_pause"
    } else {
        "pg_wal_replay_resume"
    };
    replica
        .batch_execute(&format!("SELECT {f}()"))
        .await
        .expect("replay control");
}

// Reads run on the replica (READ ONLY, with the request's settings); a read that sends a write's WAL position the
// replica has not replayed waits PGRPC_READ_WAIT_MS, then reads its write on the primary; once replay resumes, the
// replica serves it. The cookie works as the header does.
#[tokio::test]
async fn reads_use_the_replica_and_wait_for_a_write_they_sent_back() {
    let _serial = SERIAL.lock().await;
    let p = pair();
    let db_name;
    let s = {
        let db = pair_db(FIXTURES).await;
        db_name = db.name.clone();
        let url = p.replica.authenticator_url(&db.name);
        TestServer::start_on(db, move |c| {
            c.read_database_url = Some(url);
            c.read_wait = Duration::from_millis(400);
            c.read_max_lag = Duration::from_secs(60);
        })
        .await
    };
    wait_replica_usable(&s, 60.0).await;
    let primary = s.db.superuser().await;
    let replica = p.replica.superuser(&db_name).await;

    // A write answers with the primary's WAL position after its commit.
    let lsn1 = add_note(&s, 1).await;
    let now = primary_lsn(&primary).await;
    let ahead: bool = primary
        .query_one(
            "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
            &[&now, &lsn1],
        )
        .await
        .expect("compare")
        .get(0);
    assert!(
        ahead,
        "X-Pgrpc-Lsn {lsn1} is a position the primary has reached ({now})"
    );

    // Caught up: the read with the position runs on the replica, READ ONLY, with the request's settings.
    wait_caught_up(&primary, &replica).await;
    let r = get_notes(&s, Some(&lsn1), None).await;
    assert_eq!(r.body["values"], json!([1]), "{}", r.text);
    assert_eq!(r.body["standby"], json!(true), "{}", r.text);
    assert_eq!(r.body["read_only"], json!("on"));
    assert_eq!(r.body["role"], json!("pgrpc_anon"));
    assert_eq!(r.body["method"], json!("GET"));
    assert!(
        r.header("x-pgrpc-lsn").is_none(),
        "a read carries no position"
    );
    assert_eq!(reads(&s, "replica", "lsn_replayed").await, 1.0);

    let lsn2 = while_paused(async {
        let lsn2 = add_note(&s, 2).await;
        // Without a position, the replica answers, stale: proof the read ran there.
        let r = get_notes(&s, None, None).await;
        assert_eq!(
            (r.body["values"].clone(), r.body["standby"].clone()),
            (json!([1]), json!(true))
        );
        assert_eq!(reads(&s, "replica", "replica").await, 1.0);

        // With it, the read waits for the replica, then runs on the primary and sees its write.
        let started = Instant::now();
        let r = get_notes(&s, Some(&lsn2), None).await;
        let waited = started.elapsed();
        assert_eq!(
            (r.body["values"].clone(), r.body["standby"].clone()),
            (json!([1, 2]), json!(false))
        );
        assert!(
            waited >= Duration::from_millis(350),
            "waited only {waited:?}"
        );
        assert_eq!(reads(&s, "primary", "lsn_wait_timeout").await, 1.0);

        // The cookie counts as the header does.
        let r = get_notes(&s, None, Some(&format!("theme=dark; pgrpc_lsn={lsn2}"))).await;
        assert_eq!(r.body["values"], json!([1, 2]));
        assert_eq!(reads(&s, "primary", "lsn_wait_timeout").await, 2.0);
        lsn2
    })
    .await;

    // Replay resumed: the replica serves the read with the position again.
    wait_caught_up(&primary, &replica).await;
    let r = get_notes(&s, Some(&lsn2), None).await;
    assert_eq!(
        (r.body["values"].clone(), r.body["standby"].clone()),
        (json!([1, 2]), json!(true))
    );
    assert_eq!(reads(&s, "replica", "lsn_replayed").await, 2.0);

    // POST of a STABLE function and every write run on the primary, and are not counted as reads.
    let r = s.rpc("notes", None, json!({})).await;
    assert_eq!(
        (r.status, r.body["standby"].clone()),
        (200, json!(false)),
        "{}",
        r.text
    );
    let total: f64 = {
        let mut t = 0.0;
        for (target, reason) in [
            ("replica", "replica"),
            ("replica", "lsn_replayed"),
            ("primary", "lsn_wait_timeout"),
        ] {
            t += reads(&s, target, reason).await;
        }
        t
    };
    assert_eq!(total, 5.0);
}

// A replica that lags more than PGRPC_READ_MAX_LAG_MS behind the primary is skipped: reads run on the primary,
// without an error, until it catches up.
#[tokio::test]
async fn a_lagging_replica_is_skipped_until_it_catches_up() {
    let _serial = SERIAL.lock().await;
    let p = pair();
    let db = pair_db(FIXTURES).await;
    let url = p.replica.authenticator_url(&db.name);
    let s = TestServer::start_on(db, move |c| {
        c.read_database_url = Some(url);
        c.read_max_lag = Duration::from_millis(300);
    })
    .await;
    wait_replica_usable(&s, 0.3).await;
    let r = get_notes(&s, None, None).await;
    assert_eq!(r.body["standby"], json!(true));

    while_paused(async {
        add_note(&s, 7).await;
        // The primary moves on while the replica stands still; the probe sees the lag grow.
        let mut lagging = false;
        for _ in 0..100 {
            add_note(&s, 8).await;
            if metric(&s, "pgrpc_replica_lag_seconds ").await > 0.3 {
                lagging = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(lagging, "the probe never measured the paused replica's lag");
        let r = get_notes(&s, None, None).await;
        assert_eq!(
            r.body["standby"],
            json!(false),
            "a lagging replica is skipped"
        );
        assert_eq!(r.body["values"][0], json!(7));
        assert!(reads(&s, "primary", "lagging").await >= 1.0);
    })
    .await;

    wait_replica_usable(&s, 0.3).await;
    let r = get_notes(&s, None, None).await;
    assert_eq!(
        r.body["standby"],
        json!(true),
        "the caught-up replica serves reads again"
    );
}

// A replica that stops (its container stopped) is skipped: reads run on the primary without an error, and the
// metrics say why.
#[tokio::test]
async fn a_stopped_replica_falls_back_to_the_primary_without_an_error() {
    let p = pair();
    let db = pair_db(FIXTURES).await;
    let own = start_replica(&p.primary);
    {
        // The new replica has the test's database once it has replayed it.
        let primary = db.superuser().await;
        let replica = own.superuser("postgres").await;
        wait_caught_up(&primary, &replica).await;
    }
    let url = own.authenticator_url(&db.name);
    let s = TestServer::start_on(db, move |c| {
        c.read_database_url = Some(url);
        c.read_max_lag = Duration::from_secs(60);
    })
    .await;
    wait_replica_usable(&s, 60.0).await;
    add_note(&s, 3).await;
    for _ in 0..3 {
        let r = get_notes(&s, None, None).await;
        assert_eq!(r.body["standby"], json!(true));
    }

    own.stop();
    let mut fell_back = 0;
    for _ in 0..20 {
        // Every read answers, from the primary, while the replica is gone.
        let r = get_notes(&s, None, None).await;
        assert_eq!(
            (r.body["standby"].clone(), r.body["values"].clone()),
            (json!(false), json!([3]))
        );
        fell_back += 1;
    }
    assert_eq!(fell_back, 20);
    assert!(reads(&s, "primary", "unreachable").await >= 19.0);
    assert_eq!(metric(&s, "pgrpc_replica_up ").await, 0.0);
}

// Without PGRPC_READ_DATABASE_URL every read runs on the primary (counted as no_replica), writes carry no WAL
// position (reading it costs every write), and a malformed X-Pgrpc-Lsn header sent back is still a 400.
#[tokio::test]
async fn without_a_replica_reads_run_on_the_primary_and_writes_carry_no_position() {
    let s = TestServer::start_with_sql(FIXTURES, |_| {}).await;
    let r = s.rpc("add_note", None, json!({ "v": 5 })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-pgrpc-lsn").is_none(), "{:?}", r.headers);
    let r = get_notes(&s, Some("0/1"), None).await;
    assert_eq!(r.body["values"], json!([5]));
    assert_eq!(reads(&s, "primary", "no_replica").await, 1.0);
    assert!(
        !send(s.http.get(s.url("/metrics")))
            .await
            .text
            .contains("pgrpc_replica_up"),
        "no replica gauges without a replica"
    );

    let r = send(
        s.http
            .get(s.url("/rpc/notes"))
            .header("X-Pgrpc-Lsn", "not-a-position"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "PGRPC110");
}

// A malformed pgrpc_lsn cookie (any site's script may set one) is ignored, for reads and writes alike, with or
// without a replica; the same value in the X-Pgrpc-Lsn header is a 400 PGRPC110 that names the header.
#[tokio::test]
async fn a_malformed_lsn_cookie_is_ignored_while_a_malformed_header_is_refused() {
    let s = TestServer::start_with_sql(FIXTURES, |_| {}).await;
    let r = send(
        s.http
            .post(s.url("/rpc/add_note"))
            .header("Cookie", "theme=dark; pgrpc_lsn=1/2/3")
            .json(&json!({ "v": 7 })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for cookie in [
        "pgrpc_lsn=1/2/3",
        "pgrpc_lsn=",
        "a=1; pgrpc_lsn=yesterday; b=2",
    ] {
        let r = get_notes(&s, None, Some(cookie)).await;
        assert_eq!(r.body["values"], json!([7]), "{cookie}: {}", r.text);
    }
    let r = send(
        s.http
            .get(s.url("/rpc/notes"))
            .header("X-Pgrpc-Lsn", "1/2/3")
            .header("Cookie", "pgrpc_lsn=0/1"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "PGRPC110");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("X-Pgrpc-Lsn"),
        "{}",
        r.text
    );
}

// A position past the primary's own current one can never be replayed: the header is refused with 400 at once,
// not after PGRPC_READ_WAIT_MS holding a replica connection; the same cookie is ignored and the read runs on the
// replica at once. A write's own position, even one newer than the probe's last sample, is still served.
#[tokio::test]
async fn a_position_ahead_of_the_primary_is_refused_before_any_wait() {
    let p = pair();
    let db = pair_db(FIXTURES).await;
    let url = p.replica.authenticator_url(&db.name);
    let s = TestServer::start_on(db, move |c| {
        c.read_database_url = Some(url);
        c.read_wait = Duration::from_secs(5);
        c.read_max_lag = Duration::from_secs(60);
    })
    .await;
    wait_replica_usable(&s, 60.0).await;
    let far = "FFFFFFF0/0";

    let started = Instant::now();
    let r = send(s.http.get(s.url("/rpc/notes")).header("X-Pgrpc-Lsn", far)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "PGRPC110");
    assert!(r.text.contains("ahead of the primary"), "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused after {:?}",
        started.elapsed()
    );
    assert_eq!(reads(&s, "primary", "lsn_wait_timeout").await, 0.0);

    let started = Instant::now();
    let r = get_notes(&s, None, Some(&format!("pgrpc_lsn={far}"))).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served after {:?}",
        started.elapsed()
    );
    assert_eq!(r.body["standby"], json!(true), "{}", r.text);
    assert_eq!(reads(&s, "primary", "lsn_wait_timeout").await, 0.0);

    let lsn = add_note(&s, 4).await;
    let r = get_notes(&s, Some(&lsn), None).await;
    assert_eq!(r.body["values"], json!([4]), "{}", r.text);
}

// A replica session that breaks during a read (here the function ends its own session, only on the standby) is
// not a 503: the read runs once more on the primary, is counted as replica_failed, and the replica is skipped
// until the probe finds it again.
#[tokio::test]
async fn a_replica_connection_breaking_mid_read_is_retried_once_on_the_primary() {
    const FRAGILE: &str = r#"
    CREATE FUNCTION api.fragile() RETURNS jsonb LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
    BEGIN
      IF pg_is_in_recovery() THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
      END IF;
      RETURN jsonb_build_object('standby', pg_is_in_recovery());
    END $$;
    GRANT EXECUTE ON FUNCTION api.fragile() TO pgrpc_anon;
    "#;
    let p = pair();
    let db = pair_db(&format!("{FIXTURES}{FRAGILE}")).await;
    {
        let primary = db.superuser().await;
        let replica = p.replica.superuser(&db.name).await;
        wait_caught_up(&primary, &replica).await;
    }
    let url = p.replica.authenticator_url(&db.name);
    let s = TestServer::start_on(db, move |c| {
        c.read_database_url = Some(url);
        c.read_max_lag = Duration::from_secs(60);
    })
    .await;
    wait_replica_usable(&s, 60.0).await;
    let r = send(s.http.get(s.url("/rpc/fragile"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["standby"], json!(false), "{}", r.text);
    assert_eq!(reads(&s, "primary", "replica_failed").await, 1.0);
}

// With PGRPC_LSN_COOKIE=true, an answer that carries X-Pgrpc-Lsn also sets the pgrpc_lsn cookie to the same
// position (HttpOnly, SameSite=Lax, Path=/), and a read sending back only that cookie sees the write; without the
// setting, no cookie is set.
#[tokio::test]
async fn with_lsn_cookie_a_write_sets_the_pgrpc_lsn_cookie() {
    let p = pair();
    for enabled in [true, false] {
        let db = pair_db(FIXTURES).await;
        let url = p.replica.authenticator_url(&db.name);
        let s = TestServer::start_on(db, move |c| {
            c.read_database_url = Some(url);
            c.read_max_lag = Duration::from_secs(60);
            c.lsn_cookie = enabled;
        })
        .await;
        wait_replica_usable(&s, 60.0).await;
        let r = s.rpc("add_note", None, json!({ "v": 9 })).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let lsn = r.header("x-pgrpc-lsn").expect("X-Pgrpc-Lsn").to_string();
        let cookie = r.header("set-cookie").map(str::to_string);
        if !enabled {
            assert_eq!(cookie, None, "{:?}", r.headers);
            continue;
        }
        assert_eq!(
            cookie.as_deref(),
            Some(format!("pgrpc_lsn={lsn}; Path=/; HttpOnly; SameSite=Lax").as_str())
        );
        let r = get_notes(&s, None, Some(&format!("pgrpc_lsn={lsn}"))).await;
        assert_eq!(r.body["values"], json!([9]), "{}", r.text);
    }
}

// A schema reload makes the replica's connections forget their prepared statements too: a function whose result
// type changed is then served by the replica with its new type, not refused as a cached plan of another type.
#[tokio::test]
async fn a_schema_reload_reaches_the_replica_pool() {
    let p = pair();
    let db = pair_db(FIXTURES).await;
    let db_name = db.name.clone();
    let url = p.replica.authenticator_url(&db.name);
    let s = TestServer::start_on(db, move |c| {
        c.read_database_url = Some(url);
        c.read_max_lag = Duration::from_secs(60);
        c.pool_size = 1;
    })
    .await;
    wait_replica_usable(&s, 60.0).await;
    for _ in 0..2 {
        let r = get_notes(&s, None, None).await;
        assert_eq!(r.body["standby"], json!(true));
    }
    let primary = s.db.superuser().await;
    primary
        .batch_execute(
            "DROP FUNCTION api.notes(); \
             CREATE FUNCTION api.notes() RETURNS text LANGUAGE sql STABLE \
               AS $$ SELECT 'standby=' || pg_is_in_recovery() $$; \
             NOTIFY pgrst, 'reload schema'",
        )
        .await
        .expect("replace the function");
    let replica = p.replica.superuser(&db_name).await;
    wait_caught_up(&primary, &replica).await;
    let mut last = None;
    for _ in 0..100 {
        let r = send(s.http.get(s.url("/rpc/notes"))).await;
        if r.status == 200 && r.body == json!("standby=true") {
            return;
        }
        last = Some((r.status, r.text));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica never served the new function: {last:?}");
}

// The position handed out is one a standby's replay reaches even on an idle primary right after a WAL switch,
// where the insert position sits past the new segment's header and no record follows.
#[tokio::test]
async fn an_idle_primary_position_after_a_wal_switch_is_reachable() {
    let _serial = SERIAL.lock().await;
    let p = pair();
    let primary = p.primary.superuser("postgres").await;
    let replica = p.replica.superuser("postgres").await;
    primary
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .expect("switch");
    let insert_position = || async {
        let raw: String = primary
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .expect("insert position")
            .get(0);
        raw.parse::<pgrpc::db::lsn::Lsn>().expect("lsn")
    };
    let before = insert_position().await;
    let handed_out: pgrpc::db::lsn::Lsn = primary_lsn(&primary).await.parse().expect("lsn");
    let raw = insert_position().await;
    assert!(handed_out <= raw, "{handed_out} <= {raw}");
    if raw.0 % (16 << 20) == 40 && before == raw {
        // Nothing was written since the switch, nor while the position was
        // handed out (the server's own activity may switch or write WAL
        // too): the position is the segment's start.
        assert_eq!(handed_out.0, raw.0 - 40);
    }
    tokio::time::timeout(Duration::from_secs(15), wait_caught_up(&primary, &replica))
        .await
        .expect("the replica reaches the position handed out after a WAL switch");
}

// An Idempotency-Key write carries its position, and so does its replay, at or after the original's commit.
#[tokio::test]
async fn an_idempotent_replay_carries_a_position_at_or_after_the_original() {
    let p = pair();
    let db = pair_db(FIXTURES).await;
    let url = p.replica.authenticator_url(&db.name);
    let s = TestServer::start_on(db, move |c| c.read_database_url = Some(url)).await;
    let mut positions = Vec::new();
    for _ in 0..2 {
        let r = send(
            s.http
                .post(s.url("/rpc/add_note"))
                .header("Idempotency-Key", "note-once")
                .header("Content-Type", "application/json")
                .body(json!({ "v": 9 }).to_string()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let lsn: pgrpc::db::lsn::Lsn = r
            .header("x-pgrpc-lsn")
            .unwrap_or_else(|| panic!("no X-Pgrpc-Lsn: {:?}", r.headers))
            .parse()
            .expect("a WAL position");
        positions.push((lsn, r.header("idempotent-replayed").is_some()));
    }
    assert_eq!((positions[0].1, positions[1].1), (false, true));
    assert!(positions[1].0 >= positions[0].0, "{positions:?}");
}
