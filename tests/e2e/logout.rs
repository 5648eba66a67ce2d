//! OpenID Connect Back-Channel Logout 1.0: the real node-oidc-provider ends a session and
//! posts its logout token to the gateway, which then refuses the session's tokens (and
//! only those); logout tokens minted independently (PyJWT) that break the spec's rules are
//! refused with `400`, and a replayed one too.

use serde_json::{Value, json};

use crate::authn::{Idp, issuer_yaml};
use crate::harness::{Gateway, client};
use crate::opaque::AuthServer;
use crate::upstream::Upstream;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn gateway(idp: &Idp, op: &AuthServer, up: &Upstream) -> Gateway {
    let op_issuer = format!(
        "  - id: op\n    issuer: {url}\n    jwks_uri: {url}/jwks\n    audiences: [orders-api]\n    algorithms: [RS256, ES256, EdDSA]\n",
        url = op.url
    );
    Gateway::start(&format!(
        "{}backchannel_logout: {{ client_ids: [web] }}\nroutes:\n  - id: orders\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [jwt]\n",
        issuer_yaml(idp, &op_issuer),
        up.url()
    ))
}

async fn get(gw: &Gateway, token: &str) -> u16 {
    client().get(gw.url("/orders")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

async fn post_logout(gw: &Gateway, token: &str) -> (u16, String) {
    let r = client().post(gw.url("/oidc/backchannel-logout")).form(&[("logout_token", token)]).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn a_session_ended_at_the_provider_is_refused_by_the_gateway() {
    let (idp, op, up) = (Idp::start(), AuthServer::start(), Upstream::start());
    idp.key("ec", "ES256").await;
    let gw = gateway(&idp, &op, &up).await;
    let iat = now() - 5;
    let ended = idp.token("ec", json!({"sub": "alice", "sid": "session-1", "iat": iat})).await;
    let other = idp.token("ec", json!({"sub": "alice", "sid": "session-2", "iat": iat})).await;
    assert_eq!((get(&gw, &ended).await, get(&gw, &other).await), (200, 200));

    // The provider ends session-1 and tells the gateway, with its own logout token.
    let told: Value = client()
        .post(format!("{}/test/backchannel-logout", op.url))
        .json(&json!({"uri": gw.url("/oidc/backchannel-logout"), "sub": "alice", "sid": "session-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(told["status"], 200, "{told}\n{}", gw.stderr());
    assert_eq!(get(&gw, &ended).await, 401);
    assert_eq!(get(&gw, &other).await, 200, "another session of the user goes on");
}

#[tokio::test]
async fn logout_tokens_that_break_the_rules_are_refused() {
    let (idp, op, up) = (Idp::start(), AuthServer::start(), Upstream::start());
    idp.key("ec", "ES256").await;
    let gw = gateway(&idp, &op, &up).await;
    let event = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    let good =
        |jti: &str| json!({"iss": idp.url, "aud": "web", "iat": now(), "jti": jti, "events": event, "sid": "s-9"});
    let mint = |claims: Value, typ: &str| {
        let idp = &idp;
        let typ = typ.to_string();
        async move { idp.mint(json!({"kid": "ec", "claims": claims, "header": {"typ": typ}})).await }
    };
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = good("x");
        change(&mut c);
        c
    };
    let bad: Vec<(&str, Value, &str)> = vec![
        ("a nonce", with(&|c| c["nonce"] = json!("n")), "logout+jwt"),
        ("no logout event", with(&|c| c["events"] = json!({"http://example.com/other": {}})), "logout+jwt"),
        (
            "an event that is not an object",
            with(&|c| c["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": "yes"})),
            "logout+jwt",
        ),
        ("another audience", with(&|c| c["aud"] = json!("someone-else")), "logout+jwt"),
        (
            "no jti",
            with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            "logout+jwt",
        ),
        (
            "neither sub nor sid",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sid");
            }),
            "logout+jwt",
        ),
        ("an old iat", with(&|c| c["iat"] = json!(now() - 3600)), "logout+jwt"),
        ("an access token's type", good("y"), "at+jwt"),
        ("an untrusted issuer", with(&|c| c["iss"] = json!("https://evil.example")), "logout+jwt"),
    ];
    for (what, claims, typ) in bad {
        let token = mint(claims, typ).await;
        let (status, body) = post_logout(&gw, &token).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body.contains("invalid-request"), "{what}: {body}");
    }
    // A good one passes once; the same again is a replay.
    let token = mint(good("once"), "logout+jwt").await;
    assert_eq!(post_logout(&gw, &token).await.0, 200);
    assert_eq!(post_logout(&gw, &token).await.0, 400);
    // Not a form, and not a POST.
    let r =
        client().post(gw.url("/oidc/backchannel-logout")).json(&json!({"logout_token": token})).send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = client().get(gw.url("/oidc/backchannel-logout")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (405, "POST"));
    // A tampered signature.
    let token = mint(good("tampered"), "logout+jwt").await;
    let (head, _) = token.rsplit_once('.').unwrap();
    assert_eq!(post_logout(&gw, &format!("{head}.AAAA")).await.0, 400);
}
