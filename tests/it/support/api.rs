//! Test data made through the API over HTTP, as the service would make it.

use serde_json::{json, Value};

use super::TestServer;

/// Calls `function` as the service and insists on 200; returns the body.
pub async fn service_ok(server: &TestServer, function: &str, body: Value) -> Value {
    let r = server.service_rpc(function, body).await;
    assert_eq!(r.status, 200, "{function}: {}", r.text);
    r.body
}

/// The `id` of a returned row, as a string.
pub fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// A new organization on `plan`; returns its id.
pub async fn create_organization(server: &TestServer, name: &str, plan: &str) -> String {
    let org = service_ok(
        server,
        "create_organization",
        json!({"name": name, "plan": plan}),
    )
    .await;
    id_of(&org)
}

/// A new site of the organization; returns its id.
pub async fn create_site(server: &TestServer, organization_id: &str, base_url: &str) -> String {
    let site = service_ok(
        server,
        "create_site",
        json!({"organization_id": organization_id, "base_url": base_url}),
    )
    .await;
    id_of(&site)
}

/// A new opportunity of `opportunity_type` on the site; returns its id.
pub async fn create_opportunity(
    server: &TestServer,
    site_id: &str,
    opportunity_type: &str,
) -> String {
    let opp = service_ok(
        server,
        "create_opportunity",
        json!({"site_id": site_id, "type": opportunity_type}),
    )
    .await;
    id_of(&opp)
}

/// A new suggestion on the opportunity, in `status` or else the default
/// status; returns its id.
pub async fn create_suggestion(
    server: &TestServer,
    opportunity_id: &str,
    data: Value,
    status: Option<&str>,
) -> String {
    let mut body = json!({"opportunity_id": opportunity_id, "data": data});
    if let Some(status) = status {
        body["status"] = json!(status);
    }
    id_of(&service_ok(server, "create_suggestion", body).await)
}
