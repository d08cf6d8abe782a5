//! Tokens and write-once grants (SPEC §4.2): the budget is never
//! over-spent, a grant costs exactly one token, and a grant, once written,
//! is never changed or removed except by cascade.
//!
//! Services are exercised through HTTP (`POST`/`GET /rpc/...`); operator and
//! privilege rules directly in SQL as the role concerned.

use chrono::{Datelike, NaiveDate, Utc};
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::support::api::{
    create_opportunity, create_organization, create_site, create_suggestion, service_ok,
};
use crate::support::db::{
    assert_documented, assert_refused, assert_refused_as, assert_violates, count, count_for,
    db_error, error_of, holds_privilege, query_column, query_value, table_privileges,
    updatable_columns, PRIVILEGED_ROLES_AND_SUPERUSER,
};
use crate::support::{self, assert_error, split_refusals, TestDb, TestServer};

/// The seeded freemium allowance of every token type (V4).
const FREEMIUM_PER_CYCLE: i64 = 10;

// Helpers -------------------------------------------------------------------

/// Opens the proxy's pool connections before a burst, so that the burst
/// measures the database's concurrency rather than how fast a loaded machine
/// forks backends (the pool gives up creating one after a few seconds). Sends
/// rounds of pool-size concurrent reads until a whole round succeeds.
async fn warm_pool(server: &TestServer, site_id: &str) {
    let pool_size = pgrpc::config::ServeConfig::new(String::new()).pool_size;
    let query = [("site_id", site_id), ("token_type", "alt_text")];
    for _ in 0..20 {
        let round =
            join_all((0..pool_size).map(|_| server.service_rpc_get("token_balance", &query))).await;
        if round.iter().all(|r| r.status == 200) {
            return;
        }
    }
    panic!("the proxy's pool never opened {pool_size} connections");
}

/// A new organization on `plan` with one site; returns (organization_id, site_id).
async fn org_with_site(server: &TestServer, plan: &str) -> (String, String) {
    let org_id = create_organization(server, &format!("{plan} org"), plan).await;
    let site_id = create_site(server, &org_id, "https://site.test").await;
    (org_id, site_id)
}

/// A new suggestion in `status`; returns its id.
async fn suggestion(
    server: &TestServer,
    opportunity_id: &str,
    data: Value,
    status: &str,
) -> String {
    create_suggestion(server, opportunity_id, data, Some(status)).await
}

/// A complete, NEW meta-tags suggestion on a new opportunity of the site.
async fn complete_meta_tags_suggestion(server: &TestServer, site_id: &str) -> String {
    let opp = create_opportunity(server, site_id, "meta-tags").await;
    suggestion(
        server,
        &opp,
        json!({"tag": "title", "value": "Acme"}),
        "NEW",
    )
    .await
}

async fn balance(server: &TestServer, site_id: &str, token_type: &str) -> Value {
    let r = server
        .service_rpc_get(
            "token_balance",
            &[("site_id", site_id), ("token_type", token_type)],
        )
        .await;
    assert_eq!(r.status, 200, "token_balance: {}", r.text);
    r.body
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} is not an integer in {v}"))
}

/// Seconds from now until the first instant of the next UTC month.
fn seconds_until_next_utc_cycle() -> i64 {
    let now = Utc::now();
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let next = NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("first day of a month is a valid date")
        .and_utc();
    (next - now).num_seconds()
}

/// An organization on `plan` with one site, created in SQL; returns (org, site).
async fn sql_org_with_site(c: &Client, plan: &str) -> (Uuid, Uuid) {
    let row = c
        .query_one(
            "SELECT o.id, s.id FROM api.create_organization('sql org', $1) o, \
             LATERAL api.create_site(o.id, 'https://sql.test') s",
            &[&plan],
        )
        .await
        .expect("create organization and site");
    (row.get(0), row.get(1))
}

/// A complete meta-tags suggestion on a new opportunity of the site,
/// created in SQL; returns (opportunity, suggestion).
async fn sql_meta_tags_suggestion(c: &Client, site: Uuid) -> (Uuid, Uuid) {
    let row = c
        .query_one(
            "SELECT o.id, s.id FROM api.create_opportunity($1, 'meta-tags') o, \
             LATERAL api.create_suggestion(o.id, '{\"tag\":\"title\",\"value\":\"x\"}') s",
            &[&site],
        )
        .await
        .expect("create suggestion");
    (row.get(0), row.get(1))
}

/// A granted meta-tags suggestion on the site, created in SQL; returns its id.
async fn sql_granted_suggestion(c: &Client, site: Uuid) -> Uuid {
    let (_, id) = sql_meta_tags_suggestion(c, site).await;
    let newly: bool = query_value(
        c,
        "SELECT newly_granted FROM api.grant_suggestion($1, 'operator')",
        &[&id],
    )
    .await;
    assert!(newly);
    id
}

// Spending tokens ---------------------------------------------------------------

/// Of 5x the allowance concurrent consumers, exactly the allowance succeed
/// and the counter ends at used = total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_consumers_never_overspend_the_budget() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;
    warm_pool(&server, &site).await;
    let total = int(&balance(&server, &site, "alt_text").await, "total");
    assert_eq!(total, FREEMIUM_PER_CYCLE);
    let n = 5 * total;

    let body = json!({"site_id": site, "token_type": "alt_text"});
    let responses =
        join_all((0..n).map(|_| server.service_rpc("consume_token", body.clone()))).await;

    let (ok, refused) = split_refusals(&responses, 429, "tokens_exhausted");
    assert_eq!(ok.len() as i64, total, "successes");
    assert_eq!(refused.len() as i64, n - total, "refusals");
    for r in &refused {
        let retry: i64 = r
            .header("retry-after")
            .expect("Retry-After on 429")
            .parse()
            .expect("Retry-After is whole seconds");
        assert!(retry >= 1);
    }
    // Each success saw a distinct count: no two spenders shared a token.
    let mut used: Vec<i64> = ok.iter().map(|r| int(&r.body, "used")).collect();
    used.sort_unstable();
    assert_eq!(used, (1..=total).collect::<Vec<_>>());

    let after = balance(&server, &site, "alt_text").await;
    assert_eq!(int(&after, "used"), total);
    assert_eq!(int(&after, "total"), total);
    assert_eq!(int(&after, "remaining"), 0);
}

/// An exhausted budget answers 429 tokens_exhausted with Retry-After equal
/// to the seconds until the next UTC month.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_answers_429_with_retry_after_until_the_next_utc_cycle() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;
    let body = json!({"site_id": site, "token_type": "broken_backlinks"});
    for i in 1..=FREEMIUM_PER_CYCLE {
        let spent = service_ok(&server, "consume_token", body.clone()).await;
        assert_eq!(int(&spent, "used"), i);
        assert_eq!(int(&spent, "remaining"), FREEMIUM_PER_CYCLE - i);
        assert_eq!(spent["token_type"], "broken_backlinks");
        assert_eq!(spent["site_id"].as_str(), Some(site.as_str()));
    }

    let r = server.service_rpc("consume_token", body).await;
    assert_error(&r, 429, "tokens_exhausted");
    assert_eq!(r.body["code"], "tokens_exhausted");
    let retry: i64 = r
        .header("retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After is whole seconds");
    let expected = seconds_until_next_utc_cycle();
    assert!(
        (retry - expected).abs() <= 5,
        "Retry-After {retry}, expected about {expected}"
    );
}

/// consume_token answers every bad input with its documented status and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_token_rejects_bad_input_with_its_error_keys() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;
    let (_, paid_site) = org_with_site(&server, "paid").await;
    let cases = [
        (
            json!({"site_id": Uuid::new_v4(), "token_type": "alt_text"}),
            404,
            "not_found",
        ),
        (
            json!({"site_id": site, "token_type": "alt_text", "cycle": "2024-13"}),
            400,
            "invalid_cycle",
        ),
        (
            json!({"site_id": site, "token_type": "alt_text", "cycle": "abc"}),
            400,
            "invalid_cycle",
        ),
        (
            json!({"site_id": site, "token_type": "alt_text", "cycle": "2024-1"}),
            400,
            "invalid_cycle",
        ),
        // The opportunity type is not a token type: the namespaces are mapped, not mixed.
        (
            json!({"site_id": site, "token_type": "alt-text"}),
            400,
            "unknown_token_type",
        ),
        (
            json!({"site_id": site, "token_type": "alt_text", "cycle": "2020-01"}),
            400,
            "cycle_closed",
        ),
        (
            json!({"site_id": paid_site, "token_type": "alt_text"}),
            409,
            "plan_not_token_metered",
        ),
    ];
    for (body, status, key) in cases {
        let r = server.service_rpc("consume_token", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert_eq!(r.error_key(), key, "{body}: {}", r.text);
    }
    // None of the refusals spent or created anything.
    let su = server.db.superuser().await;
    assert_eq!(count(&su, "SELECT count(*) FROM private.tokens").await, 0);
}

/// A future cycle has its own budget, created from the allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cycle_has_its_own_budget() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;
    let now = service_ok(
        &server,
        "consume_token",
        json!({"site_id": site, "token_type": "meta_tags"}),
    )
    .await;
    let later = service_ok(
        &server,
        "consume_token",
        json!({"site_id": site, "token_type": "meta_tags", "cycle": "2999-12"}),
    )
    .await;
    assert_eq!(later["cycle"], "2999-12");
    assert_eq!(int(&later, "used"), 1);
    assert_eq!(int(&now, "used"), 1);
    assert_ne!(now["cycle"], later["cycle"]);
}

// Reading balances ---------------------------------------------------------------

/// Balances answer GET (they are STABLE), report the allowance for a cycle
/// without a counter, and create no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_answer_get_and_create_no_counter() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;

    let one = balance(&server, &site, "alt_text").await;
    assert_eq!(
        (
            int(&one, "total"),
            int(&one, "used"),
            int(&one, "remaining")
        ),
        (FREEMIUM_PER_CYCLE, 0, FREEMIUM_PER_CYCLE)
    );

    let all = server
        .service_rpc_get(
            "token_balances",
            &[("site_id", site.as_str()), ("cycle", "2999-01")],
        )
        .await;
    assert_eq!(all.status, 200, "{}", all.text);
    let rows = all.body.as_array().expect("token_balances is an array");
    let types: Vec<&str> = rows
        .iter()
        .map(|r| r["token_type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, ["alt_text", "broken_backlinks", "meta_tags"]);
    assert!(rows
        .iter()
        .all(|r| int(r, "remaining") == FREEMIUM_PER_CYCLE));

    let bad = server
        .service_rpc_get(
            "token_balances",
            &[("site_id", site.as_str()), ("cycle", "2999-00")],
        )
        .await;
    assert_error(&bad, 400, "invalid_cycle");
    let unknown = server
        .service_rpc_get(
            "token_balance",
            &[("site_id", site.as_str()), ("token_type", "gold")],
        )
        .await;
    assert_error(&unknown, 400, "unknown_token_type");
    let missing = server
        .service_rpc_get(
            "token_balance",
            &[
                ("site_id", &Uuid::new_v4().to_string()),
                ("token_type", "alt_text"),
            ],
        )
        .await;
    assert_error(&missing, 404, "not_found");

    let su = server.db.superuser().await;
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.tokens").await,
        0,
        "reading a balance created a counter"
    );

    service_ok(
        &server,
        "consume_token",
        json!({"site_id": site, "token_type": "alt_text"}),
    )
    .await;
    assert_eq!(int(&balance(&server, &site, "alt_text").await, "used"), 1);
}

/// A user reads its own organization's balances and grants, and gets 403
/// forbidden for another organization's site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_reading_another_organizations_site_gets_403() {
    let server = TestServer::start().await;
    let (own_org, own_site) = org_with_site(&server, "freemium").await;
    let (_, other_site) = org_with_site(&server, "freemium").await;
    let other_suggestion = complete_meta_tags_suggestion(&server, &other_site).await;
    let own_suggestion = complete_meta_tags_suggestion(&server, &own_site).await;
    let user = support::user_token(&own_org, "ann@acme.test");

    let mine = server
        .rpc_get(
            "token_balance",
            Some(&user),
            &[("site_id", own_site.as_str()), ("token_type", "alt_text")],
        )
        .await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    let mine_all = server
        .rpc_get(
            "token_balances",
            Some(&user),
            &[("site_id", own_site.as_str())],
        )
        .await;
    assert_eq!(mine_all.status, 200, "{}", mine_all.text);
    let mine_granted = server
        .rpc_get(
            "is_granted",
            Some(&user),
            &[("suggestion_id", own_suggestion.as_str())],
        )
        .await;
    assert_eq!(
        (mine_granted.status, &mine_granted.body),
        (200, &json!(false))
    );

    let theirs = server
        .rpc_get(
            "token_balance",
            Some(&user),
            &[("site_id", other_site.as_str()), ("token_type", "alt_text")],
        )
        .await;
    assert_error(&theirs, 403, "forbidden");
    let theirs_all = server
        .rpc_get(
            "token_balances",
            Some(&user),
            &[("site_id", other_site.as_str())],
        )
        .await;
    assert_error(&theirs_all, 403, "forbidden");
    let theirs_granted = server
        .rpc_get(
            "is_granted",
            Some(&user),
            &[("suggestion_id", other_suggestion.as_str())],
        )
        .await;
    assert_error(&theirs_granted, 403, "forbidden");
}

/// Only the service spends tokens or grants: a user is refused with 403
/// and an anonymous caller with 401, and nothing is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_service_role_spends_tokens_or_grants() {
    let server = TestServer::start().await;
    let (org, site) = org_with_site(&server, "freemium").await;
    let sug = complete_meta_tags_suggestion(&server, &site).await;
    let user = support::user_token(&org, "ann@acme.test");
    let spend = json!({"site_id": site, "token_type": "meta_tags"});
    let grant = json!({"suggestion_id": sug});

    for (token, status) in [(Some(user.as_str()), 403), (None, 401)] {
        let r = server.rpc("consume_token", token, spend.clone()).await;
        assert_eq!(r.status, status, "consume_token: {}", r.text);
        assert_eq!(r.error_code(), "42501", "{}", r.text);
        let r = server.rpc("grant_suggestion", token, grant.clone()).await;
        assert_eq!(r.status, status, "grant_suggestion: {}", r.text);
        assert_eq!(r.error_code(), "42501", "{}", r.text);
    }
    let user_site_tokens = server.rpc("site_tokens", Some(&user), json!({})).await;
    assert_eq!(user_site_tokens.status, 403, "{}", user_site_tokens.text);

    assert_eq!(int(&balance(&server, &site, "meta_tags").await, "used"), 0);
    let granted = server
        .service_rpc_get("is_granted", &[("suggestion_id", sug.as_str())])
        .await;
    assert_eq!(granted.body, json!(false));
}

// Granting suggestions ---------------------------------------------------------------

/// Twenty concurrent grants of one suggestion spend exactly one token,
/// return one newly_granted, and emit one suggestion.granted event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_of_one_suggestion_spend_exactly_one_token() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;
    warm_pool(&server, &site).await;
    let sug = complete_meta_tags_suggestion(&server, &site).await;

    let body = json!({"suggestion_id": sug});
    let responses =
        join_all((0..20).map(|_| server.service_rpc("grant_suggestion", body.clone()))).await;

    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["suggestion_id"].as_str(), Some(sug.as_str()));
        assert_eq!(r.body["token_type"], "meta_tags");
    }
    let newly = responses
        .iter()
        .filter(|r| r.body["newly_granted"] == json!(true))
        .count();
    assert_eq!(newly, 1, "newly_granted answers");
    let first = &responses[0].body;
    assert!(responses
        .iter()
        .all(|r| r.body["granted_at"] == first["granted_at"] && r.body["cycle"] == first["cycle"]));

    let spent = balance(&server, &site, "meta_tags").await;
    assert_eq!(int(&spent, "used"), 1, "tokens spent");

    let su = server.db.superuser().await;
    let sug_id: Uuid = sug.parse().expect("uuid");
    let grants = count_for(
        &su,
        "SELECT count(*) FROM private.suggestion_grants WHERE suggestion_id = $1",
        &sug_id,
    )
    .await;
    assert_eq!(grants, 1);
    let events = count_for(
        &su,
        "SELECT count(*) FROM private.outbox \
         WHERE event_type = 'suggestion.granted' AND aggregate_type = 'suggestion' \
           AND aggregate_id = $1 AND payload->>'suggestion_id' = $1",
        &sug,
    )
    .await;
    assert_eq!(events, 1, "suggestion.granted events");
}

/// Concurrent grants of more suggestions than tokens grant exactly the
/// allowance; the rest get 429 and leave no grant and no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_of_many_suggestions_never_exceed_the_allowance() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;
    warm_pool(&server, &site).await;
    let opp = create_opportunity(&server, &site, "alt-text").await;
    let n = 3 * FREEMIUM_PER_CYCLE;
    let mut suggestions = Vec::new();
    for i in 0..n {
        let data = json!({"image_url": format!("https://site.test/{i}.png"), "alt_text": "a cat"});
        suggestions.push(suggestion(&server, &opp, data, "NEW").await);
    }

    let responses = join_all(
        suggestions
            .iter()
            .map(|s| server.service_rpc("grant_suggestion", json!({"suggestion_id": s}))),
    )
    .await;
    let (ok, _) = split_refusals(&responses, 429, "tokens_exhausted");
    let granted = ok
        .iter()
        .filter(|r| r.body["newly_granted"] == json!(true))
        .count() as i64;
    assert_eq!(granted, FREEMIUM_PER_CYCLE);

    let su = server.db.superuser().await;
    let row = su
        .query_one(
            "SELECT (SELECT count(*) FROM private.suggestion_grants), \
                    (SELECT count(*) FROM private.outbox WHERE event_type = 'suggestion.granted')",
            &[],
        )
        .await
        .expect("count grants and events");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (granted, granted)
    );
    let spent = balance(&server, &site, "alt_text").await;
    assert_eq!(int(&spent, "used"), FREEMIUM_PER_CYCLE);
}

/// A repeated grant returns the first one with newly_granted=false and spends
/// nothing; granted_by defaults to the JWT sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_suggestion_is_idempotent_and_records_the_jwt_sub() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;
    let sug = complete_meta_tags_suggestion(&server, &site).await;

    let first = service_ok(&server, "grant_suggestion", json!({"suggestion_id": sug})).await;
    assert_eq!(first["newly_granted"], json!(true));
    let again = service_ok(&server, "grant_suggestion", json!({"suggestion_id": sug})).await;
    assert_eq!(again["newly_granted"], json!(false));
    assert_eq!(again["granted_at"], first["granted_at"]);
    assert_eq!(again["cycle"], first["cycle"]);
    assert_eq!(int(&balance(&server, &site, "meta_tags").await, "used"), 1);

    let granted = server
        .service_rpc_get("is_granted", &[("suggestion_id", sug.as_str())])
        .await;
    assert_eq!((granted.status, granted.body), (200, json!(true)));

    let su = server.db.superuser().await;
    let sug_id: Uuid = sug.parse().expect("uuid");
    let row = su
        .query_one(
            "SELECT g.granted_by, s.status FROM private.suggestion_grants g \
             JOIN private.suggestions s ON s.id = g.suggestion_id WHERE g.suggestion_id = $1",
            &[&sug_id],
        )
        .await
        .expect("read grant");
    assert_eq!(row.get::<_, String>(0), "service-test");
    assert_eq!(
        row.get::<_, String>(1),
        "NEW",
        "granting leaves the status alone"
    );

    // An explicit granted_by wins over the sub.
    let other = complete_meta_tags_suggestion(&server, &site).await;
    service_ok(
        &server,
        "grant_suggestion",
        json!({"suggestion_id": other, "granted_by": "ops@acme.test"}),
    )
    .await;
    let other_id: Uuid = other.parse().expect("uuid");
    let by: String = query_value(
        &su,
        "SELECT granted_by FROM private.suggestion_grants WHERE suggestion_id = $1",
        &[&other_id],
    )
    .await;
    assert_eq!(by, "ops@acme.test");
}

/// Every refusal of grant_suggestion carries its key, and none spends a
/// token, writes a grant or emits an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_suggestion_refusals_carry_their_keys_and_spend_nothing() {
    let server = TestServer::start().await;
    let (_, site) = org_with_site(&server, "freemium").await;
    let (_, paid_site) = org_with_site(&server, "paid").await;

    let paid = complete_meta_tags_suggestion(&server, &paid_site).await;
    let opp = create_opportunity(&server, &site, "meta-tags").await;
    let approved = suggestion(
        &server,
        &opp,
        json!({"tag": "title", "value": "x"}),
        "APPROVED",
    )
    .await;
    let missing_key = suggestion(&server, &opp, json!({"tag": "title"}), "NEW").await;
    let null_key = suggestion(&server, &opp, json!({"tag": "title", "value": null}), "NEW").await;
    let blank_key = suggestion(&server, &opp, json!({"tag": "title", "value": "  "}), "NEW").await;
    let unmapped_opp = create_opportunity(&server, &site, "keyword-gaps").await;
    let unmapped = suggestion(&server, &unmapped_opp, json!({}), "NEW").await;

    let cases = [
        (paid, 409, "plan_not_token_metered"),
        (approved, 409, "suggestion_not_new"),
        (missing_key, 422, "suggestion_incomplete"),
        (null_key, 422, "suggestion_incomplete"),
        (blank_key, 422, "suggestion_incomplete"),
        (unmapped, 422, "opportunity_type_not_mapped"),
        (Uuid::new_v4().to_string(), 404, "not_found"),
    ];
    for (sug, status, key) in cases {
        let r = server
            .service_rpc("grant_suggestion", json!({"suggestion_id": sug}))
            .await;
        assert_eq!(r.status, status, "{key}: {}", r.text);
        assert_eq!(r.error_key(), key, "{}", r.text);
    }

    // No sub claim and no granted_by: nobody to record.
    let anonymous_service = support::token(json!({"role": "pgrpc_service"}));
    let nobody = complete_meta_tags_suggestion(&server, &site).await;
    let r = server
        .rpc(
            "grant_suggestion",
            Some(&anonymous_service),
            json!({"suggestion_id": nobody}),
        )
        .await;
    assert_error(&r, 400, "granted_by_required");

    // Exhausted: the spend fails, and the grant goes with it.
    for _ in 0..FREEMIUM_PER_CYCLE {
        service_ok(
            &server,
            "consume_token",
            json!({"site_id": site, "token_type": "meta_tags"}),
        )
        .await;
    }
    let late = complete_meta_tags_suggestion(&server, &site).await;
    let r = server
        .service_rpc("grant_suggestion", json!({"suggestion_id": late}))
        .await;
    assert_error(&r, 429, "tokens_exhausted");
    assert!(r.header("retry-after").is_some());

    let su = server.db.superuser().await;
    let row = su
        .query_one(
            "SELECT (SELECT count(*) FROM private.suggestion_grants), \
                    (SELECT count(*) FROM private.outbox WHERE event_type = 'suggestion.granted'), \
                    (SELECT coalesce(sum(used), 0) FROM private.tokens)",
            &[],
        )
        .await
        .expect("count effects");
    assert_eq!(row.get::<_, i64>(0), 0, "grants");
    assert_eq!(row.get::<_, i64>(1), 0, "events");
    assert_eq!(
        row.get::<_, i64>(2),
        FREEMIUM_PER_CYCLE,
        "only the direct spends were counted"
    );
}

// Write-once grants, in SQL ------------------------------------------------------------

/// UPDATE, DELETE and TRUNCATE of grants are refused (42501) for pgrpc_api,
/// pgrpc_admin, pgrpc_owner and even a superuser, and the grant survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_refuse_update_delete_and_truncate_for_every_role() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (_, site) = sql_org_with_site(&su, "freemium").await;
    let sug = sql_granted_suggestion(&su, site).await;

    let statements = [
        "UPDATE private.suggestion_grants SET granted_by = 'mallory'",
        "UPDATE private.suggestion_grants SET cycle = '2000-01'",
        "DELETE FROM private.suggestion_grants",
        "TRUNCATE private.suggestion_grants",
        "TRUNCATE private.suggestions CASCADE",
    ];
    assert_refused(
        &db,
        &PRIVILEGED_ROLES_AND_SUPERUSER,
        &statements,
        &["write_once", "append_only"],
    )
    .await;

    let row = su
        .query_one(
            "SELECT count(*), min(granted_by) FROM private.suggestion_grants WHERE suggestion_id = $1",
            &[&sug],
        )
        .await
        .expect("read grant");
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("operator"));
}

/// pgrpc_api holds INSERT and SELECT on grants and nothing else, and only
/// UPDATE(used) on the counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgrpc_api_holds_only_insert_and_select_on_grants() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    assert_eq!(
        table_privileges(&su, "pgrpc_api", "private.suggestion_grants").await,
        ["SELECT", "INSERT"],
        "pgrpc_api on suggestion_grants"
    );
    assert_eq!(
        updatable_columns(&su, "pgrpc_api", "private.tokens").await,
        ["used"],
        "pgrpc_api updates only the used column of the counters"
    );
    assert!(holds_privilege(&su, "pgrpc_admin", "private.suggestion_grants", "SELECT").await);
    assert!(!holds_privilege(&su, "pgrpc_admin", "private.suggestion_grants", "DELETE").await);
}

/// A grant disappears only by cascade, when its suggestion is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_disappears_only_when_its_suggestion_is_purged() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (org, site) = sql_org_with_site(&su, "freemium").await;
    let purged = sql_granted_suggestion(&su, site).await;
    let kept = sql_granted_suggestion(&su, site).await;

    let err = su
        .execute(
            "DELETE FROM private.suggestion_grants WHERE suggestion_id = $1",
            &[&purged],
        )
        .await
        .expect_err("a direct delete is refused");
    assert_eq!(
        db_error(&err),
        ("42501".to_string(), "append_only".to_string())
    );

    su.execute("DELETE FROM private.suggestions WHERE id = $1", &[&purged])
        .await
        .expect("purging a suggestion cascades to its grant");
    let left: Vec<Uuid> = query_column(
        &su,
        "SELECT suggestion_id FROM private.suggestion_grants",
        &[],
    )
    .await;
    assert_eq!(left, vec![kept]);

    // Purging the whole organization cascades through sites to grants too.
    su.execute("DELETE FROM private.organizations WHERE id = $1", &[&org])
        .await
        .expect("purging an organization cascades");
    assert_eq!(
        count(&su, "SELECT count(*) FROM private.suggestion_grants").await,
        0
    );
}

// Constraints and operators, in SQL ----------------------------------------------------

/// Rows that break a rule are refused by the constraint named for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_tables_refuse_rows_that_break_their_named_rules() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (_, site) = sql_org_with_site(&su, "freemium").await;

    let insert = "INSERT INTO private.tokens (site_id, token_type, cycle, total, used) VALUES ($1, $2, $3, $4, $5)";
    let cases: [(&str, &str, i32, i32, &str); 6] = [
        ("alt_text", "2025-13", 10, 0, "tokens_cycle_is_yyyy_mm"),
        ("alt_text", "25-01", 10, 0, "tokens_cycle_is_yyyy_mm"),
        ("alt_text", "2025-01", 10, 11, "tokens_used_within_total"),
        ("alt_text", "2025-01", 10, -1, "tokens_used_within_total"),
        ("alt_text", "2025-01", -1, -1, "tokens_used_within_total"),
        ("alt-text", "2025-01", 10, 0, "tokens_token_type_exists"),
    ];
    for (token_type, cycle, total, used, constraint) in cases {
        let err = su
            .execute(insert, &[&site, &token_type, &cycle, &total, &used])
            .await
            .expect_err(constraint);
        let db_err = err.as_db_error().expect("database error");
        assert_eq!(
            db_err.constraint(),
            Some(constraint),
            "{token_type} {cycle} {total} {used}: {err}"
        );
    }

    // The conditional spend cannot be bypassed by a plain UPDATE either.
    su.execute(insert, &[&site, &"alt_text", &"2025-01", &2i32, &2i32])
        .await
        .expect("a full counter");
    assert_violates(
        &su,
        &format!("UPDATE private.tokens SET used = used + 1 WHERE site_id = '{site}'"),
        "tokens_used_within_total",
    )
    .await;

    // An unknown plan, an unknown token type, and a rule for a token type
    // name instead of an opportunity type.
    assert_violates(
        &su,
        "INSERT INTO private.token_allowances (plan, token_type, per_cycle) VALUES ('gold', 'alt_text', 1)",
        "token_allowances_plan_known",
    )
    .await;
    assert_violates(
        &su,
        "INSERT INTO private.token_allowances (plan, token_type, per_cycle) VALUES ('paid', 'alt-text', 1)",
        "token_allowances_token_type_exists",
    )
    .await;
    assert_violates(
        &su,
        "INSERT INTO private.suggestion_completeness (opportunity_type, required_keys) VALUES ('alt_text', '{}')",
        "suggestion_completeness_opportunity_type_exists",
    )
    .await;

    // The seeds: the three mappings, freemium's allowances, and a rule per type.
    let row = su
        .query_one(
            "SELECT (SELECT string_agg(token_type || '=' || opportunity_type, ',' ORDER BY token_type) FROM private.token_types), \
                    (SELECT count(*) FROM private.token_allowances WHERE plan = 'freemium'), \
                    (SELECT count(*) FROM private.token_allowances WHERE plan <> 'freemium'), \
                    (SELECT count(*) FROM private.suggestion_completeness)",
            &[],
        )
        .await
        .expect("seeds");
    assert_eq!(
        row.get::<_, String>(0),
        "alt_text=alt-text,broken_backlinks=broken-backlinks,meta_tags=meta-tags"
    );
    assert_eq!(
        (
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ),
        (3, 0, 3)
    );
}

/// admin.prune_token_cycles deletes counters older than the horizon and
/// keeps the current cycle, the recent ones and every grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_token_cycles_deletes_only_cycles_older_than_the_horizon() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (_, site) = sql_org_with_site(&su, "freemium").await;
    sql_granted_suggestion(&su, site).await; // a counter in the current cycle, and a grant
    su.execute(
        "INSERT INTO private.tokens (site_id, token_type, cycle, total, used) \
         SELECT $1, 'alt_text', to_char(date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => m), 'YYYY-MM'), 10, 3 \
         FROM unnest(ARRAY[1, 13, 14, 30]) AS m",
        &[&site],
    )
    .await
    .expect("old counters");

    let admin = db.as_role("pgrpc_admin").await;
    let deleted: i64 = query_value(&admin, "SELECT admin.prune_token_cycles()", &[]).await;
    assert_eq!(deleted, 2, "the cycles 14 and 30 months back");
    let deleted: i64 = query_value(&admin, "SELECT admin.prune_token_cycles('1 month')", &[]).await;
    assert_eq!(deleted, 1, "the cycle 13 months back");

    let row = su
        .query_one(
            "SELECT (SELECT count(*) FROM private.tokens), (SELECT count(*) FROM private.suggestion_grants)",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (2, 1),
        "current and last month kept; grant kept"
    );

    assert_eq!(
        error_of(&admin, "SELECT admin.prune_token_cycles('-1 day')").await,
        ("PT400".to_string(), "invalid_interval".to_string()),
        "a negative horizon"
    );
    let service = db.as_role("pgrpc_service").await;
    assert_refused_as(
        &service,
        "pgrpc_service",
        &["SELECT admin.prune_token_cycles()"],
        &[],
    )
    .await;
}

/// Operators decide by data which plans are metered: a first allowance
/// meters a plan, removing its last one unmeters it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_allowances_and_thereby_decide_which_plans_are_metered() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (_, site) = sql_org_with_site(&su, "free").await;
    let service = db.as_role("pgrpc_service").await;
    let admin = db.as_role("pgrpc_admin").await;
    let spend = "SELECT used FROM api.consume_token($1, 'alt_text')";

    let err = service
        .query_one(spend, &[&site])
        .await
        .expect_err("free is not metered");
    assert_eq!(
        db_error(&err),
        ("PT409".to_string(), "plan_not_token_metered".to_string())
    );

    admin
        .batch_execute("SELECT admin.set_token_allowance('free', 'alt_text', 2)")
        .await
        .expect("set allowance");
    for expected in 1..=2 {
        let used: i32 = query_value(&service, spend, &[&site]).await;
        assert_eq!(used, expected);
    }
    let err = service
        .query_one(spend, &[&site])
        .await
        .expect_err("exhausted");
    let (code, message) = db_error(&err);
    assert_eq!(code, "PGRST");
    let message: Value = serde_json::from_str(&message).expect("PGRST message is JSON");
    assert_eq!(message["code"], "tokens_exhausted");

    assert_violates(
        &admin,
        "SELECT admin.set_token_allowance('gold', 'alt_text', 2)",
        "token_allowances_plan_known",
    )
    .await;
    assert_violates(
        &admin,
        "SELECT admin.set_token_allowance('free', 'alt_text', -1)",
        "token_allowances_per_cycle_non_negative",
    )
    .await;

    let removed: bool = query_value(
        &admin,
        "SELECT admin.remove_token_allowance('free', 'alt_text')",
        &[],
    )
    .await;
    assert!(removed);
    let err = service
        .query_one(spend, &[&site])
        .await
        .expect_err("unmetered again");
    assert_eq!(db_error(&err).1, "plan_not_token_metered");

    // Operators cannot edit the allowances or counters behind the functions' back.
    assert_refused_as(
        &admin,
        "pgrpc_admin",
        &["UPDATE private.tokens SET used = 0"],
        &[],
    )
    .await;
}

/// site_tokens reports every counter to operators and services, filtered
/// by organization and cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_tokens_reports_counters_for_operators() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (org_a, site_a) = sql_org_with_site(&su, "freemium").await;
    let (_, site_b) = sql_org_with_site(&su, "freemium").await;
    for (site, token_type) in [
        (site_a, "alt_text"),
        (site_a, "meta_tags"),
        (site_b, "alt_text"),
    ] {
        su.execute("SELECT api.consume_token($1, $2)", &[&site, &token_type])
            .await
            .expect("spend");
    }
    su.execute(
        "SELECT api.consume_token($1, 'alt_text', '2999-01')",
        &[&site_a],
    )
    .await
    .expect("spend in a future cycle");

    let admin = db.as_role("pgrpc_admin").await;
    assert_eq!(
        count(&admin, "SELECT count(*) FROM api.site_tokens()").await,
        4
    );
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM api.site_tokens(cycle => '2999-01')"
        )
        .await,
        1
    );
    let for_a = count_for(
        &admin,
        "SELECT count(*) FROM api.site_tokens($1) WHERE used = 1 AND remaining = total - 1",
        &org_a,
    )
    .await;
    assert_eq!(for_a, 3);
    assert_eq!(
        error_of(&admin, "SELECT * FROM api.site_tokens(NULL, '2999-1')").await,
        ("PT400".to_string(), "invalid_cycle".to_string()),
        "bad cycle"
    );
}

/// Every function of the module documents itself: a summary line, a blank
/// line, then details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tokens_function_is_documented() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let names = [
        "api.consume_token",
        "api.token_balance",
        "api.token_balances",
        "api.grant_suggestion",
        "api.is_granted",
        "api.site_tokens",
        "admin.prune_token_cycles",
        "admin.set_token_allowance",
        "admin.remove_token_allowance",
    ];
    for name in names {
        let read_only = matches!(
            name,
            "api.token_balance" | "api.token_balances" | "api.is_granted" | "api.site_tokens"
        );
        assert_documented(&su, name, read_only).await;
    }
}

// Counters that cannot be rewritten, in SQL --------------------------------------------

/// Rewinding, jumping or re-totalling a counter, deleting a live one and
/// TRUNCATE (direct or cascaded from sites) are refused with 42501 for
/// pgrpc_api, pgrpc_admin, pgrpc_owner and a superuser; the budget survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_counters_cannot_be_rewound_retotalled_deleted_or_truncated_by_any_role() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (_, site) = sql_org_with_site(&su, "freemium").await;
    for _ in 0..3 {
        su.execute("SELECT api.consume_token($1, 'alt_text')", &[&site])
            .await
            .expect("spend");
    }

    let statements = [
        "UPDATE private.tokens SET used = 0",
        "UPDATE private.tokens SET used = used - 1",
        "UPDATE private.tokens SET used = used + 2",
        "UPDATE private.tokens SET total = 1000",
        "UPDATE private.tokens SET cycle = '2999-01'",
        "DELETE FROM private.tokens",
        "TRUNCATE private.tokens",
        "TRUNCATE private.sites CASCADE",
    ];
    assert_refused(
        &db,
        &PRIVILEGED_ROLES_AND_SUPERUSER,
        &statements,
        &["used_only_grows", "write_once", "prune_only"],
    )
    .await;

    let row = su
        .query_one(
            "SELECT total, used, cycle = private.current_cycle() FROM private.tokens WHERE site_id = $1",
            &[&site],
        )
        .await
        .expect("the counter is still there");
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, i32>(1),
            row.get::<_, bool>(2)
        ),
        (FREEMIUM_PER_CYCLE as i32, 3, true)
    );
    // The sanctioned step, n -> n + 1, still works, up to the total.
    let used: i32 = query_value(
        &su,
        "SELECT used FROM api.consume_token($1, 'alt_text')",
        &[&site],
    )
    .await;
    assert_eq!(used, 4);
}

/// A counter goes only through admin.prune_token_cycles (past cycles) or
/// with its site: a direct DELETE of a past cycle is refused even to the
/// owner and a superuser, and pgrpc_api may not delete the current cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_is_deleted_only_by_prune_token_cycles_or_with_its_site() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (_, site) = sql_org_with_site(&su, "freemium").await;
    su.execute("SELECT api.consume_token($1, 'meta_tags')", &[&site])
        .await
        .expect("a counter in the current cycle");
    su.execute(
        "INSERT INTO private.tokens (site_id, token_type, cycle, total, used) \
         VALUES ($1, 'alt_text', to_char(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '20 months', 'YYYY-MM'), 10, 4)",
        &[&site],
    )
    .await
    .expect("an old counter");
    let old = "DELETE FROM private.tokens WHERE cycle < private.current_cycle()";

    {
        let role = "postgres";
        assert_eq!(
            error_of(&db.as_role(role).await, old).await,
            ("42501".to_string(), "prune_only".to_string()),
            "{role} deletes a past cycle directly"
        );
    }
    let api = db.as_role("pgrpc_api").await;
    assert_eq!(
        error_of(
            &api,
            "DELETE FROM private.tokens WHERE cycle = private.current_cycle()"
        )
        .await,
        ("42501".to_string(), "prune_only".to_string()),
        "the current cycle is never deleted"
    );
    assert_eq!(count(&su, "SELECT count(*) FROM private.tokens").await, 2);

    let pruned: i64 = db
        .as_role("pgrpc_admin")
        .await
        .query_one("SELECT admin.prune_token_cycles()", &[])
        .await
        .expect("prune")
        .get(0);
    assert_eq!(pruned, 1, "the cycle 20 months back");

    db.superuser()
        .await
        .execute("DELETE FROM private.sites WHERE id = $1", &[&site])
        .await
        .expect("deleting a site cascades to its counters");
    assert_eq!(count(&su, "SELECT count(*) FROM private.tokens").await, 0);
}

/// A new allowance applies to counters created afterwards; an existing
/// counter keeps its total, which is write-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_allowance_applies_only_to_counters_created_afterwards() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (_, before) = sql_org_with_site(&su, "freemium").await;
    let (_, after) = sql_org_with_site(&su, "freemium").await;
    su.execute("SELECT api.consume_token($1, 'alt_text')", &[&before])
        .await
        .expect("spend before the change");
    db.as_role("pgrpc_admin")
        .await
        .batch_execute("SELECT admin.set_token_allowance('freemium', 'alt_text', 20)")
        .await
        .expect("raise the allowance");
    su.execute("SELECT api.consume_token($1, 'alt_text')", &[&after])
        .await
        .expect("spend after the change");

    let total = |site: Uuid| {
        let su = &su;
        async move {
            su.query_one(
                "SELECT total FROM private.tokens WHERE site_id = $1 AND token_type = 'alt_text'",
                &[&site],
            )
            .await
            .expect("counter")
            .get::<_, i32>(0)
        }
    };
    assert_eq!(total(before).await, FREEMIUM_PER_CYCLE as i32);
    assert_eq!(total(after).await, 20);
}

// Grant events and the grant lock ---------------------------------------------------------

/// A grant inserted directly (not through grant_suggestion) still emits
/// exactly one suggestion.granted event, with the same payload as the API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_written_directly_emits_its_suggestion_granted_event() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (org, site) = sql_org_with_site(&su, "freemium").await;
    let (opp, direct) = sql_meta_tags_suggestion(&su, site).await;
    db.superuser()
        .await
        .execute(
            "INSERT INTO private.suggestion_grants (suggestion_id, site_id, token_type, cycle, granted_by) \
             VALUES ($1, $2, 'meta_tags', '2025-01', 'by hand')",
            &[&direct, &site],
        )
        .await
        .expect("a direct insert");
    let through_api = sql_granted_suggestion(&su, site).await;

    let events = su
        .query(
            "SELECT aggregate_type, aggregate_id, payload FROM private.outbox \
             WHERE event_type = 'suggestion.granted' ORDER BY id",
            &[],
        )
        .await
        .expect("events");
    assert_eq!(events.len(), 2, "one event per grant");
    let grant = su
        .query_one(
            "SELECT to_jsonb(granted_at) FROM private.suggestion_grants WHERE suggestion_id = $1",
            &[&direct],
        )
        .await
        .expect("grant")
        .get::<_, Value>(0);
    assert_eq!(events[0].get::<_, String>(0), "suggestion");
    assert_eq!(events[0].get::<_, String>(1), direct.to_string());
    assert_eq!(
        events[0].get::<_, Value>(2),
        json!({
            "suggestion_id": direct,
            "opportunity_id": opp,
            "opportunity_type": "meta-tags",
            "site_id": site,
            "organization_id": org,
            "token_type": "meta_tags",
            "cycle": "2025-01",
            "granted_by": "by hand",
            "granted_at": grant,
        })
    );
    assert_eq!(events[1].get::<_, String>(1), through_api.to_string());
    let keys = |payload: Value| {
        let mut keys: Vec<String> = payload
            .as_object()
            .expect("payload object")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    let api_payload: Value = events[1].get(2);
    assert_eq!(
        keys(api_payload.clone()),
        keys(events[0].get(2)),
        "both paths write the same payload shape"
    );
    assert_eq!(api_payload["granted_by"], "operator");
}

/// While a grant holds its suggestion locked, a foreign-key check on that
/// suggestion (a ticket link being written) goes through at once, and a
/// second grant of the same suggestion still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_in_progress_does_not_block_foreign_key_checks_on_its_suggestion() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    let (_, site) = sql_org_with_site(&su, "freemium").await;
    let (_, sug) = sql_meta_tags_suggestion(&su, site).await;
    // Test-only: a table referencing suggestions, as ticket links do.
    su.batch_execute(
        "CREATE TABLE public.test_suggestion_refs (
             suggestion_id uuid NOT NULL REFERENCES private.suggestions (id))",
    )
    .await
    .expect("referencing table");

    let mut granter = db.as_role("pgrpc_service").await;
    let tx = granter.transaction().await.expect("begin");
    let newly: bool = tx
        .query_one(
            "SELECT newly_granted FROM api.grant_suggestion($1, 'ops')",
            &[&sug],
        )
        .await
        .expect("grant, left uncommitted")
        .get(0);
    assert!(newly);

    // FOR UPDATE would make this FK check wait for the grant's commit.
    let linker = db.superuser().await;
    linker
        .batch_execute("SET lock_timeout = '2s'")
        .await
        .expect("lock_timeout");
    linker
        .execute(
            "INSERT INTO public.test_suggestion_refs (suggestion_id) VALUES ($1)",
            &[&sug],
        )
        .await
        .expect("the FK check is not blocked by the grant's lock");

    // Grants of the suggestion are still serialized on the row lock.
    let rival = db.as_role("pgrpc_service").await;
    rival
        .batch_execute("SET lock_timeout = '200ms'")
        .await
        .expect("lock_timeout");
    let err = rival
        .query_one("SELECT * FROM api.grant_suggestion($1, 'ops')", &[&sug])
        .await
        .expect_err("a second grant waits for the first");
    assert_eq!(err.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err}");

    tx.commit().await.expect("commit");
    let again: bool = query_value(
        &rival,
        "SELECT newly_granted FROM api.grant_suggestion($1, 'ops')",
        &[&sug],
    )
    .await;
    assert!(!again);
    assert_eq!(
        count(&su, "SELECT count(*) FROM public.test_suggestion_refs").await,
        1
    );
}
