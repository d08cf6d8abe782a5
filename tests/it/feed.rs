//! Receive feed (SPEC §4.8): per-reservation entries that concurrent and
//! duplicate finalizations can neither lose nor duplicate, unread markers,
//! keyset paging, the dual read of legacy arrays and their migration, and
//! sender-IP retention.
//!
//! Services are exercised through HTTP (`POST`/`GET /rpc/...`); operator
//! functions and privilege rules directly in SQL as the role concerned.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::support::api::service_ok;
use crate::support::db::{
    aggregate_payloads, assert_refused, assert_refused_as, count, count_for, error_of,
    outbox_count, query_column, query_value, sqlstate, PRIVILEGED_ROLES,
};
use crate::support::{self, assert_error, Resp, TestDb, TestServer};

// Helpers -------------------------------------------------------------------

/// Finalizes a receive as the service; returns the raw response.
async fn finalize(
    server: &TestServer,
    reservation_id: Uuid,
    owner: &str,
    ip: Option<&str>,
) -> Resp {
    server
        .service_rpc(
            "finalize_receive",
            json!({
                "reservation_id": reservation_id,
                "owner_email": owner,
                "file_count": 2,
                "total_bytes": 2048,
                "sender_ip": ip,
                "sender_label": "sender",
            }),
        )
        .await
}

/// Finalizes a receive as the service and insists it is new.
async fn finalize_new(server: &TestServer, owner: &str) -> Uuid {
    let id = Uuid::new_v4();
    let r = finalize(server, id, owner, None).await;
    assert_eq!(r.status, 200, "finalize_receive: {}", r.text);
    assert_eq!(r.body["newly_created"], true, "{}", r.text);
    id
}

/// One page of `recent_receives` through `GET` (the function is STABLE).
async fn page(
    server: &TestServer,
    token: &str,
    owner: &str,
    max: u32,
    cursor: Option<(&str, &str)>,
) -> Resp {
    let max = max.to_string();
    let mut query = vec![("owner_email", owner), ("max_entries", max.as_str())];
    if let Some((at, id)) = cursor {
        query.push(("before_created_at", at));
        query.push(("before_reservation_id", id));
    }
    server.rpc_get("recent_receives", Some(token), &query).await
}

/// Every item of a mailbox's feed, walked page by page with the keyset
/// cursor taken from the last item of each page.
async fn walk_feed(server: &TestServer, owner: &str, page_size: u32) -> Vec<Value> {
    let token = support::service_token();
    let mut items: Vec<Value> = Vec::new();
    loop {
        let cursor = items.last().map(|last| {
            (
                last["created_at"].as_str().expect("created_at").to_string(),
                last["reservation_id"]
                    .as_str()
                    .expect("reservation_id")
                    .to_string(),
            )
        });
        let r = page(
            server,
            &token,
            owner,
            page_size,
            cursor.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        )
        .await;
        assert_eq!(r.status, 200, "recent_receives: {}", r.text);
        let got = r.body.as_array().expect("an array").clone();
        assert!(
            got.len() <= page_size as usize,
            "page larger than max_entries"
        );
        if got.is_empty() {
            return items;
        }
        items.extend(got);
        assert!(items.len() < 10_000, "paging does not terminate");
    }
}

/// A JSON timestamp as an instant, whatever offset the server wrote it in.
fn instant(v: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = v
        .get("created_at")
        .unwrap_or(v)
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp in {v}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&chrono::Utc)
}

fn ids(items: &[Value]) -> Vec<Uuid> {
    items
        .iter()
        .map(|i| {
            i["reservation_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no reservation_id in {i}"))
        })
        .collect()
}

/// The items of `items` by reservation id.
fn by_id(items: &[Value]) -> BTreeMap<Uuid, Value> {
    ids(items).into_iter().zip(items.iter().cloned()).collect()
}

async fn unread_count(server: &TestServer, owner: &str) -> i64 {
    let r = server
        .service_rpc_get("unread_receive_count", &[("owner_email", owner)])
        .await;
    assert_eq!(r.status, 200, "unread_receive_count: {}", r.text);
    r.body.as_i64().expect("an integer")
}

async fn mark_read(server: &TestServer, owner: &str, reservation_ids: Option<&[Uuid]>) -> i64 {
    service_ok(
        server,
        "mark_receives_read",
        json!({"owner_email": owner, "reservation_ids": reservation_ids}),
    )
    .await
    .as_i64()
    .expect("an integer")
}

/// The entry ids of a mailbox in the feed's order, straight from the table.
async fn stored_order(c: &Client, owner: &str) -> Vec<Uuid> {
    query_column(
        c,
        "SELECT reservation_id FROM private.receive_feed_entries WHERE owner_email = $1 \
         ORDER BY created_at DESC, reservation_id DESC",
        &[&owner],
    )
    .await
}

/// Stores a legacy array for `owner`, as an operator loading old data would.
async fn load_legacy(c: &Client, owner: &str, elements: Value) {
    c.execute(
        "INSERT INTO private.legacy_recent_receives (owner_email, entries) VALUES ($1, $2::jsonb)",
        &[&owner, &elements],
    )
    .await
    .expect("load legacy array");
}

/// A legacy element; `minute` orders elements (larger is newer, all in the past).
fn legacy_element(id: Uuid, minute: u32, unread: bool) -> Value {
    let mut e = json!({
        "reservationId": id,
        "createdAt": format!("2025-01-01T{:02}:{:02}:00.000Z", minute / 60, minute % 60),
        "fileCount": 1 + minute % 7,
        "totalBytes": 100 * u64::from(minute),
        "senderLabel": format!("legacy {minute}"),
        "senderIp": "198.51.100.7",
    });
    if unread {
        e["unread"] = json!(true);
    }
    e
}

/// Migration counts: (owners_migrated, entries_inserted,
/// entries_already_present, markers_inserted, owners_remaining).
async fn migrate(c: &Client, batch_size: i32) -> (i64, i64, i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT * FROM admin.migrate_legacy_receives($1)",
            &[&batch_size],
        )
        .await
        .expect("migrate_legacy_receives");
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

/// Calls the migration until a call moves nothing and nothing is left;
/// returns the summed counts of every call.
async fn migrate_until_done(c: &Client, batch_size: i32) -> (i64, i64, i64, i64) {
    let mut sum = (0, 0, 0, 0);
    for _ in 0..10_000 {
        let (owners, inserted, present, markers, remaining) = migrate(c, batch_size).await;
        sum = (
            sum.0 + owners,
            sum.1 + inserted,
            sum.2 + present,
            sum.3 + markers,
        );
        if remaining == 0 {
            return sum;
        }
    }
    panic!("the migration never finished");
}

// Finalization ----------------------------------------------------------------

/// Fifty concurrent finalizations for one owner leave fifty entries, which
/// keyset paging returns exactly once each in feed order, all unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_finalizations_for_one_owner_all_survive() {
    let server = TestServer::start().await;
    let owner = "many@example.com";
    let wanted: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();

    let responses = join_all(
        wanted
            .iter()
            .map(|id| finalize(&server, *id, owner, Some("192.0.2.1"))),
    )
    .await;
    for r in &responses {
        assert_eq!(r.status, 200, "finalize_receive: {}", r.text);
        assert_eq!(r.body["newly_created"], true, "{}", r.text);
    }

    let items = walk_feed(&server, owner, 7).await;
    let got = ids(&items);
    assert_eq!(got.len(), 50, "every finalization is in the feed");
    assert_eq!(
        got.iter().collect::<BTreeSet<_>>(),
        wanted.iter().collect::<BTreeSet<_>>(),
        "the feed holds exactly the finalized reservations"
    );
    let su = server.db.superuser().await;
    assert_eq!(
        got,
        stored_order(&su, owner).await,
        "pages follow (created_at, reservation_id) newest first"
    );
    assert!(
        items.iter().all(|i| i["unread"] == true),
        "new entries are unread"
    );
    assert!(
        items.iter().all(|i| i["sender_ip"] == "192.0.2.1"),
        "a fresh entry shows its IP"
    );
    assert_eq!(unread_count(&server, owner).await, 50);
    assert_eq!(
        outbox_count(&su, "receive.finalized").await,
        50,
        "one event per entry"
    );
}

/// Ten concurrent finalizations of one reservation make one entry, one
/// unread marker and one receive.finalized event; exactly one call reports
/// newly_created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_finalizations_create_one_entry_one_marker_one_event() {
    let server = TestServer::start().await;
    let id = Uuid::new_v4();
    let responses = join_all((0..10).map(|_| finalize(&server, id, "dup@example.com", None))).await;
    for r in &responses {
        assert_eq!(r.status, 200, "finalize_receive: {}", r.text);
        assert_eq!(r.body["reservation_id"], json!(id));
    }
    let created = responses
        .iter()
        .filter(|r| r.body["newly_created"] == true)
        .count();
    assert_eq!(created, 1, "exactly one call created the entry");

    let su = server.db.superuser().await;
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.receive_feed_entries WHERE reservation_id = $1",
            &id
        )
        .await,
        1
    );
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.receive_unread WHERE reservation_id = $1",
            &id
        )
        .await,
        1
    );
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.outbox WHERE event_type = 'receive.finalized' AND aggregate_id = $1::uuid::text",
            &id
        )
        .await,
        1
    );
    let event = su
        .query_one(
            "SELECT payload FROM private.outbox WHERE aggregate_id = $1::uuid::text",
            &[&id],
        )
        .await
        .expect("event")
        .get::<_, Value>(0);
    assert_eq!(event["owner_email"], "dup@example.com");
    assert_eq!(event["total_bytes"], 2048);
    assert!(
        event.get("sender_ip").is_none(),
        "the IP stays out of the event: {event}"
    );
    assert_eq!(unread_count(&server, "dup@example.com").await, 1);
}

/// A repeat finalization for another mailbox is a 409 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizing_a_reservation_for_another_mailbox_is_a_conflict() {
    let server = TestServer::start().await;
    let id = Uuid::new_v4();
    assert_eq!(
        finalize(&server, id, "first@example.com", None)
            .await
            .status,
        200
    );
    let r = finalize(&server, id, "second@example.com", None).await;
    assert_error(&r, 409, "reservation_owner_mismatch");
    assert!(walk_feed(&server, "second@example.com", 20)
        .await
        .is_empty());
    assert_eq!(
        ids(&walk_feed(&server, "first@example.com", 20).await),
        vec![id]
    );
}

/// Owner emails are normalized by the database: any case and surrounding
/// blanks name one mailbox, and rows are stored lowercase whoever writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_emails_are_stored_lowercase_and_match_case_insensitively() {
    let server = TestServer::start().await;
    let id = Uuid::new_v4();
    let r = finalize(&server, id, "  Carol@Example.COM ", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        ids(&walk_feed(&server, "CAROL@example.com", 20).await),
        vec![id]
    );
    assert_eq!(unread_count(&server, "carol@EXAMPLE.com").await, 1);

    let su = server.db.superuser().await;
    let stored: String = query_value(
        &su,
        "SELECT owner_email FROM private.receive_feed_entries WHERE reservation_id = $1",
        &[&id],
    )
    .await;
    assert_eq!(stored, "carol@example.com");
    // A direct write is normalized by the trigger too.
    let direct = Uuid::new_v4();
    su.execute(
        "INSERT INTO private.receive_feed_entries (reservation_id, owner_email, file_count, total_bytes) \
         VALUES ($1, 'Carol@Example.Com', 1, 1)",
        &[&direct],
    )
    .await
    .expect("direct insert");
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.receive_feed_entries WHERE owner_email = 'carol@example.com'").await,
        2
    );

    for (files, bytes, email) in [
        (-1, 1, "carol@example.com"),
        (1, -1, "carol@example.com"),
        (1, 1, "not-an-address"),
    ] {
        let r = server
            .service_rpc(
                "finalize_receive",
                json!({"reservation_id": Uuid::new_v4(), "owner_email": email, "file_count": files, "total_bytes": bytes}),
            )
            .await;
        assert_eq!(r.status, 400, "a CHECK violation is a 400: {}", r.text);
        assert_eq!(r.error_code(), "23514", "{}", r.text);
    }
}

// Reading ---------------------------------------------------------------------

/// recent_receives refuses a page size outside 1..200 and a half cursor
/// with 400, and answers GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paging_arguments_are_rejected_with_400() {
    let server = TestServer::start().await;
    let token = support::service_token();
    let owner = "pager@example.com";
    for max in ["0", "201", "-5"] {
        let r = server
            .service_rpc_get(
                "recent_receives",
                &[("owner_email", owner), ("max_entries", max)],
            )
            .await;
        assert_error(&r, 400, "invalid_max_entries");
    }
    let r = server
        .service_rpc(
            "recent_receives",
            json!({"owner_email": owner, "max_entries": null}),
        )
        .await;
    assert_error(&r, 400, "invalid_max_entries");
    let r = server
        .service_rpc_get(
            "recent_receives",
            &[
                ("owner_email", owner),
                ("before_created_at", "2025-01-01T00:00:00Z"),
            ],
        )
        .await;
    assert_error(&r, 400, "invalid_cursor");
    let r = server
        .service_rpc_get(
            "recent_receives",
            &[
                ("owner_email", owner),
                ("before_reservation_id", &Uuid::new_v4().to_string()),
            ],
        )
        .await;
    assert_error(&r, 400, "invalid_cursor");

    finalize_new(&server, owner).await;
    let r = page(&server, &token, owner, 200, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_array().map(Vec::len), Some(1));
}

/// Legacy elements are read alongside new entries: a reservation in both
/// is shown once (from the entry), a duplicated element once, unread flags
/// follow the markers and the legacy "unread": true, and paging is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dual_read_shows_legacy_and_new_entries_once_each() {
    let server = TestServer::start().await;
    let owner = "dual@example.com";
    let su = server.db.superuser().await;
    let (both, legacy_unread, legacy_read, twice) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    load_legacy(
        &su,
        owner,
        json!([
            legacy_element(both, 10, false),
            legacy_element(legacy_unread, 20, true),
            legacy_element(legacy_read, 30, false),
            legacy_element(twice, 40, false),
            legacy_element(twice, 41, true),
        ]),
    )
    .await;
    let r = finalize(&server, both, owner, None).await;
    assert_eq!(
        r.body["newly_created"], true,
        "a legacy element is not an entry yet: {}",
        r.text
    );
    let fresh = finalize_new(&server, owner).await;

    let items = walk_feed(&server, owner, 50).await;
    let feed = by_id(&items);
    assert_eq!(items.len(), 5, "five reservations, each once: {items:?}");
    assert_eq!(feed.len(), 5);
    // Newest first: the two finalized now, then the legacy ones by createdAt.
    assert_eq!(&ids(&items)[2..], &[twice, legacy_read, legacy_unread]);
    assert_eq!(
        feed[&both]["file_count"], 2,
        "the entry wins over the legacy element"
    );
    assert_eq!(
        instant(&feed[&twice]),
        instant(&json!("2025-01-01T00:40:00Z")),
        "the earliest copy is kept"
    );
    assert_eq!(feed[&legacy_read]["file_count"], 1 + 30 % 7);
    assert_eq!(feed[&legacy_read]["total_bytes"], 3000);
    assert_eq!(feed[&legacy_read]["sender_label"], "legacy 30");
    let unread: BTreeSet<Uuid> = feed
        .iter()
        .filter(|(_, v)| v["unread"] == true)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(unread, BTreeSet::from([both, fresh, legacy_unread, twice]));
    assert_eq!(unread_count(&server, owner).await, 4);

    // One item per page walks the same sequence.
    assert_eq!(ids(&walk_feed(&server, owner, 1).await), ids(&items));

    // Marking a legacy entry read works before it is migrated.
    assert_eq!(mark_read(&server, owner, Some(&[legacy_unread])).await, 1);
    assert_eq!(unread_count(&server, owner).await, 3);
    assert_eq!(
        by_id(&walk_feed(&server, owner, 50).await)[&legacy_unread]["unread"],
        false
    );
}

/// An IP past receive_ip_retention is hidden by recent_receives before the
/// scrub runs, and removed from storage by admin.scrub_receive_ips; fresh
/// addresses stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_past_retention_is_hidden_before_the_scrub_and_removed_after_it() {
    let server = TestServer::start().await;
    let owner = "ip@example.com";
    let su = server.db.superuser().await;
    let (old, fresh, old_legacy, fresh_legacy) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    su.execute(
        "INSERT INTO private.receive_feed_entries \
         (reservation_id, owner_email, created_at, file_count, total_bytes, sender_ip) \
         VALUES ($1, $2, clock_timestamp() - interval '31 days', 1, 1, '203.0.113.1')",
        &[&old, &owner],
    )
    .await
    .expect("old entry");
    let r = finalize(&server, fresh, owner, Some("203.0.113.2")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    su.execute(
        "INSERT INTO private.legacy_recent_receives (owner_email, entries) SELECT $1::text, jsonb_build_array( \
           jsonb_build_object('reservationId', $2::uuid, 'createdAt', clock_timestamp() - interval '40 days', \
                              'fileCount', 1, 'totalBytes', 1, 'senderIp', '203.0.113.3'), \
           jsonb_build_object('reservationId', $3::uuid, 'createdAt', clock_timestamp() - interval '1 day', \
                              'fileCount', 1, 'totalBytes', 1, 'senderIp', '203.0.113.4'))",
        &[&owner, &old_legacy, &fresh_legacy],
    )
    .await
    .expect("legacy row");

    let feed = by_id(&walk_feed(&server, owner, 20).await);
    assert_eq!(
        feed[&old]["sender_ip"],
        Value::Null,
        "hidden past retention"
    );
    assert_eq!(
        feed[&old_legacy]["sender_ip"],
        Value::Null,
        "hidden past retention (legacy)"
    );
    assert_eq!(feed[&fresh]["sender_ip"], "203.0.113.2");
    assert_eq!(feed[&fresh_legacy]["sender_ip"], "203.0.113.4");
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.receive_feed_entries WHERE reservation_id = $1 AND sender_ip IS NOT NULL",
            &old,
        )
        .await,
        1,
        "still stored before the scrub"
    );

    let admin = server.db.as_role("pgrpc_admin").await;
    let row = admin
        .query_one("SELECT * FROM admin.scrub_receive_ips()", &[])
        .await
        .expect("scrub");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (1, 1),
        "one entry and one legacy element scrubbed"
    );

    let ips: BTreeMap<Uuid, Option<String>> = su
        .query(
            "SELECT reservation_id, host(sender_ip) FROM private.receive_feed_entries",
            &[],
        )
        .await
        .expect("entries")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ips[&old], None, "removed by the scrub");
    assert_eq!(
        ips[&fresh].as_deref(),
        Some("203.0.113.2"),
        "fresh addresses stay"
    );
    let legacy: Value = query_value(
        &su,
        "SELECT entries FROM private.legacy_recent_receives WHERE owner_email = $1",
        &[&owner],
    )
    .await;
    assert!(
        legacy[0].get("senderIp").is_none(),
        "old legacy address removed: {legacy}"
    );
    assert_eq!(
        legacy[1]["senderIp"], "203.0.113.4",
        "fresh legacy address kept"
    );
    // A second scrub has nothing left to do.
    let row = admin
        .query_one("SELECT * FROM admin.scrub_receive_ips()", &[])
        .await
        .expect("scrub");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
}

// Unread markers ----------------------------------------------------------------

/// mark_receives_read clears exactly the named markers of the named mailbox,
/// and null clears all of that mailbox's markers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_clears_only_the_named_markers() {
    let server = TestServer::start().await;
    let (x, y) = ("x@example.com", "y@example.com");
    let mut xs = Vec::new();
    for _ in 0..5 {
        xs.push(finalize_new(&server, x).await);
    }
    let y1 = finalize_new(&server, y).await;
    finalize_new(&server, y).await;

    assert_eq!(
        mark_read(&server, x, Some(&[xs[0], xs[1], y1])).await,
        2,
        "y's id is ignored"
    );
    assert_eq!(unread_count(&server, x).await, 3);
    assert_eq!(unread_count(&server, y).await, 2);
    let feed = by_id(&walk_feed(&server, x, 20).await);
    for (i, id) in xs.iter().enumerate() {
        assert_eq!(feed[id]["unread"], json!(i >= 2), "entry {i}");
    }
    assert_eq!(
        mark_read(&server, x, Some(&[xs[0]])).await,
        0,
        "already read"
    );
    assert_eq!(
        mark_read(&server, x, Some(&[])).await,
        0,
        "an empty list clears nothing"
    );
    assert_eq!(unread_count(&server, x).await, 3);

    assert_eq!(mark_read(&server, x, None).await, 3);
    assert_eq!(unread_count(&server, x).await, 0);
    assert_eq!(
        unread_count(&server, y).await,
        2,
        "another mailbox is untouched"
    );
    assert_eq!(
        walk_feed(&server, x, 20).await.len(),
        5,
        "reading removes no entry"
    );
}

/// reservation_ids is a one-dimensional array (as OpenAPI describes it): a
/// nested array is 400 invalid_reservation_ids and clears no marker.
#[tokio::test]
async fn a_nested_reservation_ids_array_is_400_and_clears_nothing() {
    let server = TestServer::start().await;
    let x = "x@example.com";
    let (a, b) = (
        finalize_new(&server, x).await,
        finalize_new(&server, x).await,
    );
    for ids in [json!([[a, b]]), json!([[a], [b]])] {
        let r = server
            .service_rpc(
                "mark_receives_read",
                json!({"owner_email": x, "reservation_ids": ids}),
            )
            .await;
        assert_error(&r, 400, "invalid_reservation_ids");
        assert_eq!(
            unread_count(&server, x).await,
            2,
            "a refused call cleared markers"
        );
    }
    assert_eq!(mark_read(&server, x, Some(&[a, b])).await, 2);
}

// Authorization -------------------------------------------------------------------

/// A pgrpc_user reads, counts and marks only the mailbox of its email claim
/// (any case); anything else is 403 forbidden, and it cannot finalize.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_reads_and_marks_only_its_own_mailbox() {
    let server = TestServer::start().await;
    let mine = finalize_new(&server, "alice@example.com").await;
    finalize_new(&server, "bob@example.com").await;
    let alice = support::user_token(&Uuid::new_v4().to_string(), "Alice@Example.com");

    let r = page(&server, &alice, "alice@example.com", 20, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(r.body.as_array().expect("array")), vec![mine]);
    let r = server
        .rpc_get(
            "unread_receive_count",
            Some(&alice),
            &[("owner_email", "ALICE@example.com")],
        )
        .await;
    assert_eq!((r.status, r.body.clone()), (200, json!(1)), "{}", r.text);

    let r = page(&server, &alice, "bob@example.com", 20, None).await;
    assert_error(&r, 403, "forbidden");
    let r = server
        .rpc_get(
            "unread_receive_count",
            Some(&alice),
            &[("owner_email", "bob@example.com")],
        )
        .await;
    assert_error(&r, 403, "forbidden");
    let r = server
        .rpc(
            "mark_receives_read",
            Some(&alice),
            json!({"owner_email": "bob@example.com"}),
        )
        .await;
    assert_error(&r, 403, "forbidden");
    assert_eq!(
        unread_count(&server, "bob@example.com").await,
        1,
        "bob's markers survive"
    );

    let r = server
        .rpc(
            "finalize_receive",
            Some(&alice),
            json!({"reservation_id": Uuid::new_v4(), "owner_email": "alice@example.com", "file_count": 1, "total_bytes": 1}),
        )
        .await;
    assert_eq!(r.status, 403, "users cannot finalize: {}", r.text);
    assert_eq!(r.error_code(), "42501");

    let r = server
        .rpc(
            "mark_receives_read",
            Some(&alice),
            json!({"owner_email": "alice@example.com"}),
        )
        .await;
    assert_eq!((r.status, r.body.clone()), (200, json!(1)), "{}", r.text);

    let r = server
        .rpc_get(
            "recent_receives",
            None,
            &[("owner_email", "alice@example.com")],
        )
        .await;
    assert_eq!(r.status, 401, "anonymous callers are refused: {}", r.text);
}

// Migration ---------------------------------------------------------------------

/// Running the migration twice moves every legacy element exactly once: the
/// feed reads the same before and after, markers follow "unread": true, the
/// legacy rows are gone, and the second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrating_twice_moves_every_legacy_entry_exactly_once() {
    let server = TestServer::start().await;
    let su = server.db.superuser().await;
    let owners: Vec<String> = (0..12).map(|i| format!("owner{i}@example.com")).collect();
    let mut legacy_ids = Vec::new();
    let mut expected_markers = 0;
    let mut overlap = Vec::new();
    for (o, owner) in owners.iter().enumerate() {
        let elements: Vec<Value> = (0..4u32)
            .map(|k| {
                let id = Uuid::new_v4();
                legacy_ids.push((id, owner.clone()));
                let unread = k % 2 == 0;
                if unread {
                    expected_markers += 1;
                }
                legacy_element(id, 60 * o as u32 + k, unread)
            })
            .collect();
        load_legacy(&su, owner, Value::Array(elements)).await;
    }
    // One reservation per owner was also finalized anew; its legacy element
    // (k = 0, unread) must not become a second entry or a second marker.
    for (o, owner) in owners.iter().enumerate() {
        let (id, _) = legacy_ids[4 * o];
        overlap.push(id);
        let r = finalize(&server, id, owner, None).await;
        assert_eq!(r.body["newly_created"], true, "{}", r.text);
    }

    let mut before = BTreeMap::new();
    for owner in &owners {
        before.insert(owner.clone(), walk_feed(&server, owner, 3).await);
        assert_eq!(before[owner].len(), 4, "{owner} sees each reservation once");
    }
    let unread_before: Vec<i64> = join_all(owners.iter().map(|o| unread_count(&server, o))).await;

    let admin = server.db.as_role("pgrpc_admin").await;
    let (moved, inserted, present, markers) = migrate_until_done(&admin, 5).await;
    assert_eq!(moved, 12, "every owner migrated");
    assert_eq!(inserted, 36, "every legacy element not already an entry");
    assert_eq!(
        present, 12,
        "the re-finalized reservations were already entries"
    );
    assert_eq!(
        markers,
        expected_markers - 12,
        "markers only for new entries marked unread"
    );
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.legacy_recent_receives").await,
        0
    );

    let again = migrate(&admin, 5).await;
    assert_eq!(again, (0, 0, 0, 0, 0), "a second run changes nothing");

    assert_eq!(
        count(&su, "SELECT count(*) FROM private.receive_feed_entries").await,
        48
    );
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.receive_unread").await,
        expected_markers
    );
    for (id, owner) in &legacy_ids {
        let stored: String = query_value(
            &su,
            "SELECT owner_email FROM private.receive_feed_entries WHERE reservation_id = $1",
            &[id],
        )
        .await;
        assert_eq!(&stored, owner);
    }
    for (owner, unread) in owners.iter().zip(unread_before) {
        assert_eq!(
            &walk_feed(&server, owner, 3).await,
            &before[owner],
            "{owner} reads the same after migration"
        );
        assert_eq!(
            unread_count(&server, owner).await,
            unread,
            "{owner}'s unread count is unchanged"
        );
    }
    assert_eq!(
        outbox_count(&su, "receive.finalized").await,
        12,
        "migration emits no events"
    );
}

/// Concurrent migrations, finalizations (new and of legacy reservations)
/// and readers lose nothing and duplicate nothing: every reservation ends as
/// exactly one entry of its owner, with one marker, and readers of
/// untouched owners always see their whole feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_concurrent_with_finalizations_loses_and_duplicates_nothing() {
    let server = TestServer::start().await;
    let su = server.db.superuser().await;
    let owners: Vec<String> = (0..40).map(|i| format!("busy{i}@example.com")).collect();
    let quiet: Vec<String> = (0..5).map(|i| format!("quiet{i}@example.com")).collect();
    let mut legacy: Vec<(Uuid, String)> = Vec::new();
    for (o, owner) in owners.iter().chain(quiet.iter()).enumerate() {
        let elements: Vec<Value> = (0..3u32)
            .map(|k| {
                let id = Uuid::new_v4();
                legacy.push((id, owner.clone()));
                legacy_element(id, 60 * (o as u32 % 20) + k, true)
            })
            .collect();
        load_legacy(&su, owner, Value::Array(elements)).await;
    }
    // Per busy owner: its first legacy reservation finalized anew, and one new one.
    let mut finalizations: Vec<(Uuid, String)> = Vec::new();
    for owner in &owners {
        let first = legacy
            .iter()
            .find(|(_, o)| o == owner)
            .expect("legacy element")
            .0;
        finalizations.push((first, owner.clone()));
        finalizations.push((Uuid::new_v4(), owner.clone()));
    }

    let mut migrators = Vec::new();
    for _ in 0..4 {
        migrators.push(server.db.as_role("pgrpc_admin").await);
    }
    let migrations = join_all(migrators.iter().map(|c| migrate_until_done(c, 3)));
    let finalized = join_all(
        finalizations
            .iter()
            .map(|(id, owner)| finalize(&server, *id, owner, None)),
    );
    let srv = &server;
    let readers = join_all(quiet.iter().cycle().take(15).map(|owner| async move {
        let items = walk_feed(srv, owner, 2).await;
        let unread = unread_count(srv, owner).await;
        (
            owner.clone(),
            items.len(),
            ids(&items).into_iter().collect::<BTreeSet<_>>().len(),
            unread,
        )
    }));
    let (migrated, responses, reads) = tokio::join!(migrations, finalized, readers);

    for (owner, len, distinct, unread) in reads {
        assert_eq!(
            (len, distinct, unread),
            (3, 3, 3),
            "{owner} saw its whole feed, once, all unread"
        );
    }
    let mut created = 0;
    for r in &responses {
        assert_eq!(r.status, 200, "finalize_receive: {}", r.text);
        if r.body["newly_created"] == true {
            created += 1;
        }
    }
    let moved: i64 = migrated.iter().map(|m| m.0).sum();
    assert_eq!(
        moved, 45,
        "each legacy row migrated by exactly one migrator"
    );
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.legacy_recent_receives").await,
        0
    );

    let expected: BTreeMap<Uuid, String> =
        legacy.iter().chain(finalizations.iter()).cloned().collect();
    assert_eq!(expected.len(), 45 * 3 + 40);
    let stored: BTreeMap<Uuid, String> = su
        .query(
            "SELECT reservation_id, owner_email FROM private.receive_feed_entries",
            &[],
        )
        .await
        .expect("entries")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored, expected,
        "every reservation is exactly one entry of its owner"
    );
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.receive_unread").await,
        expected.len() as i64,
        "every entry (all unread) has exactly one marker"
    );
    assert_eq!(
        outbox_count(&su, "receive.finalized").await,
        created,
        "one event per newly created finalization"
    );
    for owner in &owners {
        let feed = walk_feed(&server, owner, 2).await;
        assert_eq!(feed.len(), 4, "{owner}: 3 legacy + 1 new, each once");
        assert_eq!(unread_count(&server, owner).await, 4);
    }
}

/// A legacy row with an element that does not parse is left in place and
/// listed with the reason; valid rows migrate around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_legacy_rows_are_listed_and_never_half_migrated() {
    let server = TestServer::start().await;
    let su = server.db.superuser().await;
    let good = Uuid::new_v4();
    load_legacy(&su, "aaa@example.com", json!([{"reservationId": "not-a-uuid", "createdAt": "2025-01-01T00:00:00Z"}, legacy_element(Uuid::new_v4(), 1, true)])).await;
    load_legacy(
        &su,
        "bbb@example.com",
        json!([legacy_element(good, 2, true)]),
    )
    .await;

    let admin = server.db.as_role("pgrpc_admin").await;
    let invalid = admin
        .query(
            "SELECT owner_email, element_index, error FROM admin.legacy_receives_invalid",
            &[],
        )
        .await
        .expect("invalid view");
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].get::<_, String>(0), "aaa@example.com");
    assert_eq!(invalid[0].get::<_, i64>(1), 1);
    assert!(
        invalid[0].get::<_, String>(2).starts_with("reservationId"),
        "the reason names the field"
    );

    let (moved, inserted, _, markers, remaining) = migrate(&admin, 10).await;
    assert_eq!((moved, inserted, markers, remaining), (1, 1, 1, 1));
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.receive_feed_entries").await,
        1,
        "nothing of the invalid row moved"
    );
    assert_eq!(
        migrate(&admin, 10).await,
        (0, 0, 0, 0, 1),
        "the invalid row blocks nothing"
    );
    // The dual read still shows the valid element of the invalid row.
    assert_eq!(walk_feed(&server, "aaa@example.com", 20).await.len(), 1);

    let (code, _) = error_of(&admin, "SELECT * FROM admin.migrate_legacy_receives(0)").await;
    assert_eq!(code, "PT400", "batch_size 0");
}

// Operations and privileges -----------------------------------------------------

/// prune_receive_feed keeps each owner's newest N entries; the markers of
/// pruned entries go with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_newest_entries_of_each_owner() {
    let server = TestServer::start().await;
    let mut xs = Vec::new();
    for _ in 0..6 {
        xs.push(finalize_new(&server, "p@example.com").await);
    }
    finalize_new(&server, "q@example.com").await;
    let su = server.db.superuser().await;
    let newest: Vec<Uuid> = stored_order(&su, "p@example.com").await[..3].to_vec();

    let admin = server.db.as_role("pgrpc_admin").await;
    let deleted: i64 = query_value(&admin, "SELECT admin.prune_receive_feed(3)", &[]).await;
    assert_eq!(deleted, 3);
    assert_eq!(ids(&walk_feed(&server, "p@example.com", 20).await), newest);
    assert_eq!(
        unread_count(&server, "p@example.com").await,
        3,
        "pruned markers are gone"
    );
    assert_eq!(walk_feed(&server, "q@example.com", 20).await.len(), 1);
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.receive_unread").await,
        4
    );

    let (code, _) = error_of(&admin, "SELECT admin.prune_receive_feed(0)").await;
    assert_eq!(code, "PT400", "keep_per_owner 0");
}

/// Feed entries are write-once except that sender_ip may be cleared: every
/// other change is refused (42501) for pgrpc_api, pgrpc_admin and the owner;
/// pgrpc_admin cannot delete or truncate; a marker cannot name another
/// mailbox than its entry's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_entries_are_write_once_except_for_clearing_the_ip() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let id = Uuid::new_v4();
    su.execute(
        "SELECT api.finalize_receive($1, 'w@example.com', 1, 10, '192.0.2.9')",
        &[&id],
    )
    .await
    .expect("finalize");

    let refused = [
        "UPDATE private.receive_feed_entries SET file_count = 99",
        "UPDATE private.receive_feed_entries SET total_bytes = 0",
        "UPDATE private.receive_feed_entries SET owner_email = 'other@example.com'",
        "UPDATE private.receive_feed_entries SET created_at = created_at - interval '1 day'",
        "UPDATE private.receive_feed_entries SET sender_ip = '192.0.2.10'",
    ];
    assert_refused(&db, &PRIVILEGED_ROLES, &refused, &[]).await;
    let admin = db.as_role("pgrpc_admin").await;
    assert_refused_as(
        &admin,
        "pgrpc_admin",
        &[
            "DELETE FROM private.receive_feed_entries",
            "TRUNCATE private.receive_feed_entries CASCADE",
            "DELETE FROM private.receive_unread",
            "UPDATE private.receive_feed_entries SET sender_ip = NULL",
        ],
        &[],
    )
    .await;
    let row = su
        .query_one(
            "SELECT file_count, total_bytes, owner_email, host(sender_ip) FROM private.receive_feed_entries WHERE reservation_id = $1",
            &[&id],
        )
        .await
        .expect("entry");
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2),
            row.get::<_, Option<String>>(3)
        ),
        (
            1,
            10,
            "w@example.com".to_string(),
            Some("192.0.2.9".to_string())
        ),
        "the entry is unchanged"
    );

    // Clearing the address is the one change allowed.
    let api = db.as_role("pgrpc_api").await;
    let n = api
        .execute(
            "UPDATE private.receive_feed_entries SET sender_ip = NULL",
            &[],
        )
        .await
        .expect("pgrpc_api may clear sender_ip");
    assert_eq!(n, 1);

    su.execute(
        "DELETE FROM private.receive_unread WHERE reservation_id = $1",
        &[&id],
    )
    .await
    .expect("clear the marker");
    let e = su
        .execute(
            "INSERT INTO private.receive_unread (reservation_id, owner_email) VALUES ($1, 'other@example.com')",
            &[&id],
        )
        .await
        .expect_err("marker for another mailbox");
    assert_eq!(sqlstate(&e), "23503");
}

// Events and updated_at --------------------------------------------------------

/// The receive.finalized payloads of one reservation.
async fn finalized_events(c: &Client, id: Uuid) -> Vec<Value> {
    aggregate_payloads(c, "receive.finalized", "receive", &id.to_string()).await
}

/// An entry inserted directly in SQL, by pgrpc_owner or a superuser, emits
/// exactly one receive.finalized (without the IP); a duplicate insert that
/// ON CONFLICT skips, or a rolled-back one, emits none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_inserted_directly_emits_one_receive_finalized() {
    let db = TestDb::new().await;
    let insert = "INSERT INTO private.receive_feed_entries \
                  (reservation_id, owner_email, file_count, total_bytes, sender_label, sender_ip) \
                  VALUES ($1, 'Direct@Example.com', 3, 300, 'ops', '192.0.2.1') \
                  ON CONFLICT DO NOTHING";
    let su = db.superuser().await;
    {
        let role = "postgres";
        let c = db.as_role(role).await;
        let id = Uuid::new_v4();
        assert_eq!(c.execute(insert, &[&id]).await.expect("insert"), 1);
        assert_eq!(
            c.execute(insert, &[&id]).await.expect("duplicate"),
            0,
            "the duplicate inserts nothing"
        );
        let events = finalized_events(&su, id).await;
        assert_eq!(events.len(), 1, "{role}: one event per entry: {events:?}");
        let created_at: chrono::DateTime<chrono::Utc> = query_value(
            &su,
            "SELECT created_at FROM private.receive_feed_entries WHERE reservation_id = $1",
            &[&id],
        )
        .await;
        assert_eq!(
            events[0],
            json!({
                "reservation_id": id,
                "owner_email": "direct@example.com",
                "created_at": events[0]["created_at"],
                "file_count": 3,
                "total_bytes": 300,
                "sender_label": "ops",
            }),
            "{role}: the payload finalize_receive always had, without the IP"
        );
        assert_eq!(instant(&events[0]), created_at, "{role}");

        let rolled_back = Uuid::new_v4();
        c.batch_execute("BEGIN").await.expect("begin");
        c.execute(insert, &[&rolled_back]).await.expect("insert");
        c.batch_execute("ROLLBACK").await.expect("rollback");
        assert!(
            finalized_events(&su, rolled_back).await.is_empty(),
            "{role}"
        );
    }
}

/// Only the legacy migration's own inserts are silent: a service or the
/// owner that sets pgrpc.receive_legacy_migration itself still emits one
/// event per new entry, and the flag does not outlive the migration call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_legacy_migration_inserts_entries_without_an_event() {
    let db = TestDb::new().await;
    let su = db.superuser().await;

    let service = db.as_service("svc").await;
    service
        .batch_execute("SET pgrpc.receive_legacy_migration = 'on'")
        .await
        .expect("a session may set the flag");
    let finalized = Uuid::new_v4();
    let row = service
        .query_one(
            "SELECT newly_created FROM api.finalize_receive($1, 'flag@example.com', 1, 1)",
            &[&finalized],
        )
        .await
        .expect("finalize_receive");
    assert!(row.get::<_, bool>(0));
    assert_eq!(
        finalized_events(&su, finalized).await.len(),
        1,
        "the caller's flag does not silence finalize_receive"
    );

    let superuser = db.superuser().await;
    superuser
        .batch_execute("SET pgrpc.receive_legacy_migration = 'on'")
        .await
        .expect("flag");
    let direct = Uuid::new_v4();
    superuser
        .execute(
            "INSERT INTO private.receive_feed_entries (reservation_id, owner_email, file_count, total_bytes) \
             VALUES ($1, 'flag@example.com', 1, 1)",
            &[&direct],
        )
        .await
        .expect("direct insert");
    assert_eq!(
        finalized_events(&su, direct).await.len(),
        1,
        "only pgrpc_api (the migration) is silenced by the flag"
    );

    let legacy = Uuid::new_v4();
    load_legacy(
        &su,
        "old@example.com",
        json!([legacy_element(legacy, 5, true)]),
    )
    .await;
    let admin = db.as_role("pgrpc_admin").await;
    admin.batch_execute("BEGIN").await.expect("begin");
    let (owners, inserted, _, markers, _) = migrate(&admin, 10).await;
    assert_eq!((owners, inserted, markers), (1, 1, 1));
    let flag: Option<String> = query_value(
        &admin,
        "SELECT current_setting('pgrpc.receive_legacy_migration', true)",
        &[],
    )
    .await;
    assert_ne!(
        flag.as_deref(),
        Some("on"),
        "the flag is off again when the migration returns"
    );
    admin.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        count_for(
            &su,
            "SELECT count(*) FROM private.receive_feed_entries WHERE reservation_id = $1",
            &legacy
        )
        .await,
        1
    );
    assert!(
        finalized_events(&su, legacy).await.is_empty(),
        "a migrated receive is not announced again"
    );
    assert_eq!(outbox_count(&su, "receive.finalized").await, 2);
}

/// Feed entries carry updated_at, kept by a trigger: clearing the IP (the
/// scrub) advances it and changes nothing else, a direct UPDATE cannot set
/// it, and pgrpc_api has no privilege on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_the_ip_advances_updated_at_and_nothing_else() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let id = Uuid::new_v4();
    su.execute(
        "INSERT INTO private.receive_feed_entries \
         (reservation_id, owner_email, created_at, file_count, total_bytes, sender_label, sender_ip) \
         VALUES ($1, 'u@example.com', clock_timestamp() - interval '40 days', 4, 40, 'l', '203.0.113.9')",
        &[&id],
    )
    .await
    .expect("old entry");
    let read = "SELECT to_jsonb(e) - 'updated_at', updated_at \
                FROM private.receive_feed_entries AS e WHERE reservation_id = $1";
    let row = su.query_one(read, &[&id]).await.expect("entry");
    let (fact_before, updated_before): (Value, chrono::DateTime<chrono::Utc>) =
        (row.get(0), row.get(1));

    let admin = db.as_role("pgrpc_admin").await;
    let scrubbed: i64 = query_value(
        &admin,
        "SELECT entries_scrubbed FROM admin.scrub_receive_ips()",
        &[],
    )
    .await;
    assert_eq!(scrubbed, 1);
    let row = su.query_one(read, &[&id]).await.expect("entry");
    let (fact_after, updated_after): (Value, chrono::DateTime<chrono::Utc>) =
        (row.get(0), row.get(1));
    assert!(
        updated_after > updated_before,
        "the scrub advances updated_at"
    );
    let mut expected = fact_before.clone();
    expected["sender_ip"] = Value::Null;
    assert_eq!(fact_after, expected, "only sender_ip changed");

    // updated_at is the trigger's: a direct write is overwritten.
    let superuser = db.superuser().await;
    superuser
        .execute(
            "UPDATE private.receive_feed_entries SET updated_at = '2000-01-01T00:00:00Z' \
             WHERE reservation_id = $1",
            &[&id],
        )
        .await
        .expect("touch");
    let row = su.query_one(read, &[&id]).await.expect("entry");
    assert!(row.get::<_, chrono::DateTime<chrono::Utc>>(1) > updated_after);
    assert_eq!(row.get::<_, Value>(0), expected);

    let api = db.as_role("pgrpc_api").await;
    let e = api
        .execute(
            "UPDATE private.receive_feed_entries SET updated_at = clock_timestamp()",
            &[],
        )
        .await
        .expect_err("pgrpc_api may update sender_ip only");
    assert_eq!(sqlstate(&e), "42501");
}
