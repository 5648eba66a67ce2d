//! Authorization through the real binary: route rules (scopes, roles, groups, subjects,
//! clients, SPIFFE IDs), Cedar policies (permit, forbid, role hierarchy from entity data,
//! context conditions, evaluation errors), policy reload, and the `authz explain` and
//! `authz replay` commands. Tokens are minted by PyJWT (`tests/helpers/idp.py`).

use serde_json::{Value, json};

use crate::authn::{Idp, issuer_yaml};
use crate::harness::{Gateway, TempDir, client, problem, run_cli};
use crate::upstream::Upstream;

async fn idp() -> Idp {
    let idp = Idp::start();
    idp.key("rsa", "RS256").await;
    idp
}

/// GETs `path` with a token carrying `claims` (over the IdP's defaults), returns the status
/// and, for a 403, checks the RFC 6750 challenge and returns the problem.
async fn call(gw: &Gateway, idp: &Idp, method: &str, path: &str, claims: Value) -> (u16, Value) {
    let token = idp.token("rsa", claims).await;
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let resp = client().request(m, gw.url(path)).bearer_auth(token).send().await.unwrap();
    let status = resp.status().as_u16();
    if status != 403 {
        return (status, Value::Null);
    }
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.starts_with("Bearer ") && challenge.contains(r#"error="insufficient_scope""#), "{challenge}");
    let p = problem(resp, 403).await;
    (403, json!({"problem": p, "challenge": challenge}))
}

/// The problem's reason code (its `type` spells `_` as `-`).
fn reason(v: &Value) -> String {
    v["problem"]["type"].as_str().unwrap().trim_start_matches("urn:portcullis:problem:").replace('-', "_")
}

#[tokio::test]
async fn route_rules() {
    let idp = idp().await;
    let up = Upstream::start();
    let route = |id: &str, rule: &str| {
        format!(
            "  - id: {id}\n    match: {{ path_prefix: /{id} }}\n    upstream: {}\n    authenticate: [jwt]\n    authorize: {{ {rule} }}\n",
            up.url()
        )
    };
    let routes = [
        route("all", "scopes: [orders.read, orders.write]"),
        route("any", "any_scopes: [admin.all, orders.write]"),
        route("roles", "roles: [admin]"),
        route("groups", "groups: [ops]"),
        route("subjects", "subjects: [alice]"),
        route("clients", "clients: [web]"),
        route("workloads", "spiffe_ids: [\"spiffe://example.org/ns/*/sa/billing\", \"spiffe://example.org/batch/**\"]"),
    ]
    .concat();
    let gw = Gateway::start(&format!(
        "{}authorization:\n  roles_claim: realm_access.roles\nroutes:\n{routes}",
        issuer_yaml(&idp, "    spiffe_trust_domain: example.org\n")
    ));

    // Scopes, all of them: the challenge names the required scopes.
    assert_eq!(call(&gw, &idp, "GET", "/all", json!({})).await.0, 200);
    let (s, v) = call(&gw, &idp, "GET", "/all", json!({"scope": "orders.read"})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "insufficient_scope"));
    assert!(v["challenge"].as_str().unwrap().contains(r#"scope="orders.read orders.write""#), "{v}");

    // Any of the scopes.
    assert_eq!(call(&gw, &idp, "GET", "/any", json!({"scope": "orders.write"})).await.0, 200);
    let (s, v) = call(&gw, &idp, "GET", "/any", json!({"scope": "orders.read"})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "insufficient_scope"));

    // Roles from a nested claim path.
    let admin = json!({"realm_access": {"roles": ["viewer", "admin"]}});
    assert_eq!(call(&gw, &idp, "GET", "/roles", admin).await.0, 200);
    let (s, v) = call(&gw, &idp, "GET", "/roles", json!({"realm_access": {"roles": ["viewer"]}})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "role_required"));
    // A role in the wrong place does not count.
    let (s, _) = call(&gw, &idp, "GET", "/roles", json!({"roles": ["admin"]})).await;
    assert_eq!(s, 403);

    // Groups, from the default `groups` claim.
    assert_eq!(call(&gw, &idp, "GET", "/groups", json!({"groups": ["dev", "ops"]})).await.0, 200);
    let (s, v) = call(&gw, &idp, "GET", "/groups", json!({"groups": ["dev"]})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "group_required"));

    // Subjects and clients, exactly.
    assert_eq!(call(&gw, &idp, "GET", "/subjects", json!({})).await.0, 200);
    let (s, v) = call(&gw, &idp, "GET", "/subjects", json!({"sub": "alice2"})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "subject_not_allowed"));
    assert_eq!(call(&gw, &idp, "GET", "/clients", json!({})).await.0, 200);
    let (s, v) = call(&gw, &idp, "GET", "/clients", json!({"client_id": "mobile"})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "client_not_allowed"));

    // SPIFFE IDs (JWT-SVIDs of example.org's issuer): one-segment wildcard, subtree; a
    // SPIFFE ID of another trust domain from it is no valid JWT-SVID (401).
    for (id, status) in [
        ("spiffe://example.org/ns/prod/sa/billing", 200),
        ("spiffe://example.org/ns/dev/sa/billing", 200),
        ("spiffe://example.org/ns/prod/sa/web", 403),
        ("spiffe://example.org/ns/prod/x/sa/billing", 403),
        ("spiffe://example.org/batch/nightly/export", 200),
        ("spiffe://example.org/batch", 403),
        ("spiffe://evil.org/ns/prod/sa/billing", 401),
        ("spiffe://example.org.evil.org/batch/x", 401),
        ("alice", 403),
    ] {
        let (s, v) = call(&gw, &idp, "GET", "/workloads", json!({"sub": id})).await;
        assert_eq!(s, status, "{id}");
        if s == 403 {
            assert_eq!(reason(&v), "workload_not_allowed", "{id}");
        }
    }

    // The audit log records the decision and its reason.
    let log = gw.access_log();
    let denied: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["reason"] == "role_required")
        .expect("a logged role denial");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["status"], 403);
    assert!(!log.contains("eyJ"), "no token in the audit log");
}

/// A policy folder, an entity file, and a gateway judging three routes by them. The access
/// log keeps the claims the policies read, so that `authz replay` can judge every decision.
fn cedar_gateway(idp: &Idp, up: &Upstream, policies: &str) -> Gateway {
    cedar_gateway_logging(idp, up, policies, "access_log:\n  path: access.log\n  claims: [sub, roles, employment]\n")
}

/// [`cedar_gateway`] with an `access_log` block of the test's.
fn cedar_gateway_logging(idp: &Idp, up: &Upstream, policies: &str, access_log: &str) -> Gateway {
    let dir = TempDir::new("authz");
    dir.write("policies/main.cedar", policies);
    dir.write("policies/ignored.txt", "not a policy");
    dir.write(
        "entities.json",
        json!([
            {"uid": {"type": "Role", "id": "admin"}, "attrs": {}, "parents": [{"type": "Role", "id": "reader"}]},
            {"uid": {"type": "Role", "id": "reader"}, "attrs": {}, "parents": []},
            {"uid": {"type": "User", "id": "carol"}, "attrs": {"sub": "carol", "scopes": [], "roles": [], "groups": [], "auth_method": "jwt"}, "parents": [{"type": "Group", "id": "staff"}]},
            {"uid": {"type": "Group", "id": "staff"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Route", "id": "orders"}, "attrs": {"host": "", "path": "", "method": ""}, "parents": [{"type": "RouteGroup", "id": "shop"}]},
            {"uid": {"type": "RouteGroup", "id": "shop"}, "attrs": {}, "parents": []}
        ])
        .to_string(),
    );
    let route = |id: &str, m: &str, extra: &str| {
        format!("  - id: {id}\n    match: {{ {m} }}\n    upstream: {}\n    authenticate: [jwt]\n{extra}", up.url())
    };
    let routes = [
        route("orders", "path_template: \"/orders/{id}\"", ""),
        route("internal", "path_prefix: /internal", ""),
        route("timed", "path_prefix: /timed", ""),
        route("future", "path_prefix: /future", ""),
        route("overflow", "path_prefix: /overflow", ""),
        route("refund", "path_prefix: /refund", "    authorize: { scopes: [orders.write], action: POST }\n"),
    ]
    .concat();
    Gateway::start_in(
        dir,
        &format!(
            "{}{access_log}authorization:\n  cedar:\n    policies: [policies]\n    entities: entities.json\nroutes:\n{routes}",
            issuer_yaml(idp, "")
        ),
    )
}

const POLICIES: &str = r#"
// Readers (and, through the role hierarchy, admins) read orders.
@id("readers-read")
permit(principal, action == Action::"GET", resource in RouteGroup::"shop")
when { principal in Role::"reader" };

// Staff (from the entity data) may create orders, and look at order 7 only.
@id("staff-write")
permit(principal in Group::"staff", action == Action::"POST", resource == Route::"orders");
@id("staff-read-7")
permit(principal in Group::"staff", action == Action::"GET", resource == Route::"orders")
when { resource.hasTag("id") && resource.getTag("id") == "7" };

// Contractors get nothing, whatever else permits them.
@id("no-contractors")
forbid(principal, action, resource)
when { principal.hasTag("employment") && principal.getTag("employment") == "contractor" };

// Context: a network the test's loopback client is not in; and times.
@id("internal-net")
permit(principal, action, resource == Route::"internal")
when { context.client_ip.isInRange(ip("10.0.0.0/8")) };
@id("after-2000")
permit(principal, action, resource == Route::"timed") when { context.time > 946684800 && context.weekday >= 1 && context.weekday <= 7 };
@id("after-2100")
permit(principal, action, resource == Route::"future") when { context.time > 4102444800 || context.time_of_day >= 86400 };

// An evaluation error (overflow) in a forbid must not let the permit through.
@id("overflow-permit")
permit(principal, action, resource == Route::"overflow");
@id("overflow-forbid")
forbid(principal, action, resource == Route::"overflow") when { context.time * 100000000000 > 0 };

// Refunds: the route's own action; scopes checked by the route rules first.
@id("refund-users")
permit(principal is User, action == Action::"POST", resource == Route::"refund");
"#;

#[tokio::test]
async fn cedar_policies_decide() {
    let idp = idp().await;
    let up = Upstream::start();
    let gw = cedar_gateway(&idp, &up, POLICIES);

    let reader = json!({"roles": ["reader"]});
    assert_eq!(call(&gw, &idp, "GET", "/orders/1", reader.clone()).await.0, 200);
    // Through the hierarchy in the entity data: admin is in reader.
    assert_eq!(call(&gw, &idp, "GET", "/orders/1", json!({"roles": ["admin"]})).await.0, 200);
    // No permitting policy: default deny.
    let (s, v) = call(&gw, &idp, "GET", "/orders/1", json!({"roles": ["guest"]})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "policy_no_permit"));
    // Readers may not write.
    let (s, _) = call(&gw, &idp, "POST", "/orders/1", reader.clone()).await;
    assert_eq!(s, 403);
    // Group membership from the entity data, and a path parameter.
    let carol = json!({"sub": "carol"});
    assert_eq!(call(&gw, &idp, "POST", "/orders/1", carol.clone()).await.0, 200);
    assert_eq!(call(&gw, &idp, "GET", "/orders/7", carol.clone()).await.0, 200);
    assert_eq!(call(&gw, &idp, "GET", "/orders/8", carol).await.0, 403);
    // A forbid beats a permit; the reason says so without naming the policy.
    let (s, v) = call(&gw, &idp, "GET", "/orders/1", json!({"roles": ["reader"], "employment": "contractor"})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "policy_forbid"));
    assert!(!v["problem"].to_string().contains("no-contractors"), "{v}");
    // Context: the client's address and the time.
    let (s, _) = call(&gw, &idp, "GET", "/internal/x", reader.clone()).await;
    assert_eq!(s, 403, "loopback is not 10/8");
    assert_eq!(call(&gw, &idp, "GET", "/timed", json!({})).await.0, 200);
    assert_eq!(call(&gw, &idp, "GET", "/future", json!({})).await.0, 403);
    // An evaluation error denies, although Cedar alone would skip the erring forbid.
    let (s, v) = call(&gw, &idp, "GET", "/overflow", json!({})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "policy_error"));
    // Route rules and policies must both allow.
    assert_eq!(call(&gw, &idp, "POST", "/refund", json!({})).await.0, 200);
    let (s, v) = call(&gw, &idp, "POST", "/refund", json!({"scope": "orders.read"})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "insufficient_scope"));
    let (s, v) = call(&gw, &idp, "POST", "/refund", json!({"sub": "svc", "client_id": "svc"})).await;
    assert_eq!((s, reason(&v).as_str()), (403, "policy_no_permit"), "a client is not a User");

    // The audit log explains each decision: the policies that decided and the errors.
    let lines: Vec<Value> = gw.access_log().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |code: &str| lines.iter().find(|l| l["reason"] == code).unwrap_or_else(|| panic!("{code} logged"));
    assert_eq!(find("policy_forbid")["policies"], json!(["no-contractors"]));
    let err = find("policy_error");
    assert!(err["policy_errors"][0].as_str().unwrap().contains("overflow-forbid"), "{err}");
    let allowed = lines.iter().find(|l| l["decision"] == "allow" && l["route"] == "orders").unwrap();
    assert_eq!(allowed["policies"], json!(["readers-read"]));
    assert_eq!(allowed["authz"]["principal"]["subject"], "alice");
}

#[tokio::test]
async fn invalid_policies_are_config_errors() {
    let dir = TempDir::new("authz-check");
    let write = |policy: &str| {
        dir.write("p.cedar", policy);
        dir.write(
            "c.yaml",
            "server: { listen: 127.0.0.1:0 }\nauthorization:\n  cedar:\n    policies: [p.cedar]\nroutes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n    authorize: { cedar: true }\n",
        );
        run_cli(&["check", "--config", dir.path().join("c.yaml").to_str().unwrap()])
    };
    // A syntax error: the file and its line.
    let (code, _, err) = write("permit(principal, action, resource);\n\npermit(principal action, resource);\n");
    assert_ne!(code, 0);
    assert!(err.contains("p.cedar:3"), "{err}");
    assert!(err.contains("authorization.cedar.policies"), "{err}");
    // An attribute the schema does not declare: strict validation refuses it.
    let (code, _, err) = write("permit(principal, action, resource)\nwhen { principal.salary > 10 };\n");
    assert_ne!(code, 0);
    assert!(err.contains("p.cedar:2") && err.contains("salary"), "{err}");
    // An action the schema does not declare.
    let (code, _, err) = write("permit(principal, action == Action::\"FLY\", resource);\n");
    assert_ne!(code, 0);
    assert!(err.contains("p.cedar:1"), "{err}");
    // A valid one.
    let (code, out, err) = write("permit(principal is User, action == Action::\"GET\", resource);\n");
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn a_bad_policy_reload_keeps_the_old_policies() {
    let idp = idp().await;
    let up = Upstream::start();
    let gw = cedar_gateway(&idp, &up, POLICIES);
    let reader = json!({"roles": ["reader"]});
    assert_eq!(call(&gw, &idp, "GET", "/orders/1", reader.clone()).await.0, 200);

    let file = gw.config.parent().unwrap().join("policies/main.cedar");
    let before = gw.metric("portcullis_config_reloads_total{result=\"failure\"}");
    std::fs::write(&file, "permit(principal, action, resource) when { principal.nope };").unwrap();
    gw.wait_metric("the rejected reload", |g| g.metric("portcullis_config_reloads_total{result=\"failure\"}") > before);
    assert!(gw.stderr().contains("main.cedar:1"), "the log names the file and line");
    assert_eq!(call(&gw, &idp, "GET", "/orders/1", reader.clone()).await.0, 200, "old policies still serve");

    // A good change takes effect: now nobody reads.
    let successes = gw.metric("portcullis_config_reloads_total{result=\"success\"}");
    std::fs::write(&file, "@id(\"only-post\") permit(principal, action == Action::\"POST\", resource);").unwrap();
    gw.wait_metric("the reload", |g| g.metric("portcullis_config_reloads_total{result=\"success\"}") > successes);
    let (s, v) = call(&gw, &idp, "GET", "/orders/1", reader).await;
    assert_eq!((s, reason(&v).as_str()), (403, "policy_no_permit"));
}

#[tokio::test]
async fn explain_and_replay() {
    let idp = idp().await;
    let up = Upstream::start();
    let gw = cedar_gateway(&idp, &up, POLICIES);
    // Some traffic to replay: allowed readers, a denied guest, an allowed staff member.
    assert_eq!(call(&gw, &idp, "GET", "/orders/1", json!({"roles": ["reader"]})).await.0, 200);
    assert_eq!(call(&gw, &idp, "GET", "/orders/2", json!({"sub": "bob", "roles": ["admin"]})).await.0, 200);
    assert_eq!(call(&gw, &idp, "GET", "/orders/3", json!({"roles": ["guest"]})).await.0, 403);
    assert_eq!(call(&gw, &idp, "POST", "/orders/3", json!({"sub": "carol"})).await.0, 200);
    let dir = gw.config.parent().unwrap().to_path_buf();
    let log = dir.join("access.log");
    let config = gw.config.to_str().unwrap().to_string();

    // Explain: a described request, decided by the same code.
    let request = dir.join("request.json");
    std::fs::write(
        &request,
        json!({"method": "GET", "path": "/orders/5", "principal": {"claims": {"sub": "dan", "roles": ["admin"]}}})
            .to_string(),
    )
    .unwrap();
    let (code, out, err) =
        run_cli(&["authz", "explain", "--config", &config, "--request", request.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let x: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((x["decision"].as_str(), x["route"].as_str()), (Some("allow"), Some("orders")));
    assert_eq!(x["policies"], json!(["readers-read"]));
    std::fs::write(
        &request,
        json!({"method": "GET", "path": "/orders/5", "principal": {"claims": {"sub": "dan", "roles": ["admin"], "employment": "contractor"}}})
            .to_string(),
    )
    .unwrap();
    let (code, out, _) = run_cli(&["authz", "explain", "--config", &config, "--request", request.to_str().unwrap()]);
    assert_eq!(code, 2, "deny exits 2: {out}");
    assert!(
        out.contains("decision: deny") && out.contains("no-contractors") && out.contains("route:    orders"),
        "{out}"
    );

    // Replay the log against the same policies: nothing flips.
    let (code, out, err) =
        run_cli(&["authz", "replay", "--config", &config, "--log", log.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["replayed"], 4, "{r}");
    assert_eq!(r["unchanged"], 4, "{r}");

    // New policies: admins lose read access, guests gain it.
    let new_dir = TempDir::new("authz-new");
    std::fs::copy(dir.join("entities.json"), new_dir.path().join("entities.json")).unwrap();
    let new_policies = POLICIES.replace(
        "when { principal in Role::\"reader\" };",
        "when { (principal in Role::\"reader\" || principal in Role::\"guest\") && !(principal in Role::\"admin\") };",
    );
    new_dir.write("policies/main.cedar", &new_policies);
    let new_config = new_dir.write("c.yaml", std::fs::read_to_string(&gw.config).unwrap());
    let (code, out, err) = run_cli(&[
        "authz",
        "replay",
        "--config",
        new_config.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 2, "flips exit 2: {out}{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["unchanged"], 2, "{r}");
    let a2d = r["allow_to_deny"].as_array().unwrap();
    let d2a = r["deny_to_allow"].as_array().unwrap();
    assert_eq!(a2d.len(), 1, "{r}");
    assert_eq!(a2d[0]["principal"], "bob");
    assert_eq!(a2d[0]["request"], "GET /orders/2");
    assert_eq!(a2d[0]["now"]["reason"], "policy_no_permit");
    assert_eq!(d2a.len(), 1, "{r}");
    assert_eq!(d2a[0]["request"], "GET /orders/3");
    assert_eq!(d2a[0]["now"]["policies"], json!(["readers-read"]));
    // The text report says the same.
    let (code, out, _) =
        run_cli(&["authz", "replay", "--config", new_config.to_str().unwrap(), "--log", log.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.contains("1 allow -> deny, 1 deny -> allow"), "{out}");
}

#[tokio::test]
async fn the_access_log_keeps_no_claims_by_default_and_replay_says_what_it_lacks() {
    let idp = idp().await;
    let up = Upstream::start();
    let gw = cedar_gateway_logging(&idp, &up, POLICIES, "access_log:\n  path: access.log\n");
    // A reader with personal data in the token; a staff member whose decision reads no claim
    // the token carries (staff comes from the entity data).
    let personal = json!({"roles": ["reader"], "email": "alice@example.com", "name": "Alice Example"});
    assert_eq!(call(&gw, &idp, "GET", "/orders/1", personal).await.0, 200);
    assert_eq!(call(&gw, &idp, "POST", "/orders/3", json!({"sub": "carol"})).await.0, 200);
    let log = log_lines(&gw, 2);
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(!log.contains("alice@example.com") && !log.contains("Alice Example"), "personal data logged: {log}");
    let reader = &lines[0]["authz"]["principal"];
    assert_eq!(reader.get("claims"), None, "no claims by default: {reader}");
    let withheld: Vec<&str> =
        reader["claims_withheld"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(withheld.contains(&"email") && withheld.contains(&"roles"), "{withheld:?}");
    // What the decision needs besides claims is still there.
    assert_eq!(reader["subject"], "alice");
    assert_eq!(lines[0]["principal"], "alice");

    // Replay: the reader's decision read `roles`, which was not logged: not judged, not a flip.
    let dir = gw.config.parent().unwrap().to_path_buf();
    let log_path = dir.join("access.log");
    let config = gw.config.to_str().unwrap().to_string();
    let (code, out, err) =
        run_cli(&["authz", "replay", "--config", &config, "--log", log_path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 3, "not judged, nothing flipped: {out}{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["replayed"], 1, "{r}");
    assert_eq!(r["unchanged"], 1, "{r}");
    assert_eq!(r["allow_to_deny"], json!([]), "{r}");
    let nj = r["not_judged"].as_array().unwrap();
    assert_eq!(nj.len(), 1, "{r}");
    assert_eq!(nj[0]["request"], "GET /orders/1");
    assert_eq!(nj[0]["missing_claims"], json!(["roles"]));
    assert_eq!(nj[0]["reason"], "could not be judged: claim roles not logged");
    let (code, out, _) = run_cli(&["authz", "replay", "--config", &config, "--log", log_path.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(out.contains("1 not judged") && out.contains("could not be judged: claim roles not logged"), "{out}");

    // With `roles` in the allowlist, the same traffic is judged, and only `roles` is kept.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    gw.write_config(&text.replace("  path: access.log\n", "  path: access.log\n  claims: [roles]\n"));
    gw.reload();
    assert_eq!(
        call(&gw, &idp, "GET", "/orders/1", json!({"roles": ["reader"], "email": "alice@example.com"})).await.0,
        200
    );
    let log = log_lines(&gw, 3);
    let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert!(!log.contains("alice@example.com"), "{log}");
    assert_eq!(last["authz"]["principal"]["claims"], json!({"roles": ["reader"]}), "{last}");
    let third = dir.join("third.log");
    std::fs::write(&third, format!("{}\n", log.lines().last().unwrap())).unwrap();
    let (code, out, err) =
        run_cli(&["authz", "replay", "--config", &config, "--log", third.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((r["replayed"].as_u64(), r["unchanged"].as_u64()), (Some(1), Some(1)), "{r}");
    assert_eq!(r["not_judged"], json!([]));
}

/// The access log once it holds `n` records: each is written after its response is sent.
fn log_lines(gw: &Gateway, n: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = gw.access_log();
        if log.lines().count() >= n || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Step-up (RFC 9470): a route that needs `acr` `phrh` from an authentication at most five
/// minutes old answers `401 insufficient_user_authentication` saying so, and a fresh token
/// with that `acr` passes. A caller refused for who it is gets `403` first.
#[tokio::test]
async fn step_up_asks_for_a_stronger_and_more_recent_authentication() {
    let idp = idp().await;
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "{}routes:\n  - id: pay\n    match: {{ path_prefix: /pay }}\n    upstream: {}\n    authenticate: [jwt]\n    authorize: {{ scopes: [pay], acr_values: [phr, phrh], max_age: 5m }}\n",
        issuer_yaml(&idp, ""),
        up.url()
    ));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let send = |claims: Value| {
        let idp = &idp;
        let url = gw.url("/pay");
        async move {
            let token = idp.token("rsa", claims).await;
            client().get(url).bearer_auth(token).send().await.unwrap()
        }
    };
    let step_up = |r: reqwest::Response| async move {
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
        let p = problem(r, 401).await;
        assert_eq!(p["type"], "urn:portcullis:problem:insufficient-user-authentication", "{p}");
        challenge
    };
    // No `acr` at all; an `acr` not accepted; an accepted one from an old login; none of
    // `auth_time`.
    for claims in [
        json!({"scope": "pay", "auth_time": now}),
        json!({"scope": "pay", "acr": "pwd", "auth_time": now}),
        json!({"scope": "pay", "acr": "phrh", "auth_time": now - 3600}),
        json!({"scope": "pay", "acr": "phrh"}),
    ] {
        let r = send(claims.clone()).await;
        assert_eq!(r.status(), 401, "{claims}");
        let challenge = step_up(r).await;
        assert!(challenge.starts_with(r#"Bearer error="insufficient_user_authentication""#), "{challenge}");
        assert!(challenge.contains(r#"acr_values="phr phrh""#), "{challenge}");
        assert!(challenge.contains(r#"max_age="300""#), "{challenge}");
    }
    // After stepping up.
    assert_eq!(send(json!({"scope": "pay", "acr": "phrh", "auth_time": now - 10})).await.status(), 200);
    assert_eq!(send(json!({"scope": "pay", "acr": "phr", "auth_time": now})).await.status(), 200);
    // A missing scope is not cured by a stronger login: 403, not a step-up.
    let r = send(json!({"scope": "read", "acr": "pwd"})).await;
    assert_eq!(r.status(), 403);
    assert_eq!(up.count(), 2);
    // Bad step-up settings are named: a class with a space, a max_age under a second, and
    // step-up on a public route (no one authenticates there).
    let dir = TempDir::new("step-up-check");
    let path = dir.write(
        "bad.yaml",
        "server: { listen: 127.0.0.1:0 }\nroutes:\n  - id: a\n    match: { path_prefix: /a }\n    upstream: echo\n    authenticate: [api_key]\n    authorize: { acr_values: [\"two words\"], max_age: 500ms }\n  - id: b\n    match: { path_prefix: /b }\n    upstream: echo\n    authenticate: [none]\n    authorize: { max_age: 5m }\napi_keys:\n  consumers: []\n",
    );
    let (code, _, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("routes[0].authorize.acr_values[0]"), "{err}");
    assert!(err.contains("routes[0].authorize.max_age"), "{err}");
    assert!(err.contains("routes[1].authorize: a public route"), "{err}");
}
