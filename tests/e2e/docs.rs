//! What the README promises about the config: its reference cannot drift from the config
//! types (every key of the JSON Schema, which is generated from those types, must be
//! documented), and secrets in it are never logged or shown by the admin API.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::{Gateway, admin_get, client, free_port, run_cli};

fn keys(schema: &Value, node: &Value, out: &mut BTreeSet<String>, depth: usize) {
    if depth > 12 {
        return;
    }
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        if let Some(def) = schema["$defs"].get(name) {
            keys(schema, def, out, depth + 1);
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            out.insert(k.clone());
            keys(schema, v, out, depth + 1);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = node.get(key).filter(|v| v.is_object()) {
            keys(schema, v, out, depth + 1);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for v in node.get(key).and_then(Value::as_array).into_iter().flatten() {
            keys(schema, v, out, depth + 1);
        }
    }
}

#[test]
fn readme_documents_every_config_key() {
    let (code, out, _) = run_cli(&["config", "schema"]);
    assert_eq!(code, 0);
    let schema: Value = serde_json::from_str(&out).unwrap();
    let mut all = BTreeSet::new();
    keys(&schema, &schema, &mut all, 0);
    assert!(all.len() > 40, "the schema walk found too few keys: {all:?}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // A key counts as documented when it appears in code formatting, alone or in a key path.
    let documented =
        |k: &str| ["`{k}`", "`{k}.", ".{k}`", ".{k}."].iter().any(|p| readme.contains(&p.replace("{k}", k)));
    let missing: Vec<_> = all.iter().filter(|k| !documented(k)).collect();
    assert!(missing.is_empty(), "config keys missing from the README's reference: {missing:?}");
}

/// Credentials in configured URLs (a JWKS URL, also in its query, the introspection endpoint,
/// the Redis URL) are hidden in the warnings about failed fetches, in the admin `/config` dump, in `check`'s
/// errors and in the error a rejected reload logs.
#[tokio::test]
async fn credentials_in_urls_are_never_logged_or_shown() {
    let dead = free_port();
    let body = format!(
        r#"
issuers:
  - id: idp
    issuer: https://idp.example
    jwks_uri: "http://gw:jwks-pa55word@127.0.0.1:{dead}/jwks.json?tenant=acme&api_key=qu3ry-k3y"
    audiences: [orders-api]
introspection:
  endpoint: "http://gw:intro-pa55word@127.0.0.1:{dead}/introspect"
  client_id: gw
  client_secret: client-s3cret
routes:
  - id: jwt
    match: {{ path_prefix: /jwt }}
    upstream: echo
    authenticate: [jwt]
  - id: opaque
    match: {{ path_prefix: /opaque }}
    upstream: echo
    authenticate: [introspection]
"#
    );
    let gw = Gateway::start_alive(&body);
    let r = client().get(gw.url("/opaque/x")).bearer_auth("an-opaque-token").send().await.unwrap();
    assert_eq!(r.status(), 503, "an unreachable introspection endpoint fails closed");

    let (status, dump) = admin_get(gw.admin, "/config").unwrap();
    assert_eq!(status, 200);
    assert!(dump.contains("http://gw:***@127.0.0.1"), "{dump}");
    assert!(dump.contains("/jwks.json?tenant=acme&api_key=***"), "a key in the query is hidden too: {dump}");

    // Both warnings are written before the log is read.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(gw.stderr().contains("cannot refresh signing keys") && gw.stderr().contains("token introspection failed")) {
        assert!(std::time::Instant::now() < deadline, "warnings missing: {}", gw.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A reload with a malformed Redis URL is rejected, and the logged error names the key.
    let bad =
        body.replace("routes:\n", "state:\n  redis_url: \"redis://:hunter2secret@127.0.0.1:6379:bad\"\nroutes:\n");
    gw.write_config(&bad);
    gw.reload();
    let log = gw.stderr();
    assert!(log.contains("config reload rejected") && log.contains("state.redis_url"), "{log}");
    assert!(log.contains("gw:***@127.0.0.1"), "{log}");

    let (code, out, err) = run_cli(&["check", "--config", gw.config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("state.redis_url") || out.contains("state.redis_url"), "{out}{err}");

    for secret in ["jwks-pa55word", "qu3ry-k3y", "intro-pa55word", "client-s3cret", "hunter2secret"] {
        for (what, text) in [("the log", &log), ("the /config dump", &dump), ("check", &format!("{out}{err}"))] {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
    }
}
