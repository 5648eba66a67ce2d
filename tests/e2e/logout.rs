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

/// A gateway trusting both providers' keys, taking logout tokens from those in `allowed`.
async fn gateway(idp: &Idp, op: &AuthServer, up: &Upstream, allowed: &str) -> Gateway {
    let op_issuer = format!(
        "  - id: op\n    issuer: {url}\n    jwks_uri: {url}/jwks\n    audiences: [orders-api]\n    algorithms: [RS256, ES256, EdDSA]\n",
        url = op.url
    );
    Gateway::start(&format!(
        "{}backchannel_logout: {{ client_ids: [web], issuers: [{allowed}] }}\nroutes:\n  - id: orders\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [jwt]\n",
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
    let gw = gateway(&idp, &op, &up, "op").await;
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

    // A logout token from a trusted issuer that is not among those taken: refused.
    let event = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    let claims = json!({"iss": idp.url, "aud": "web", "iat": now(), "exp": now() + 60, "jti": "j", "events": event, "sid": "session-2"});
    let token = idp.mint(json!({"kid": "ec", "claims": claims, "header": {"typ": "logout+jwt"}})).await;
    assert_eq!(post_logout(&gw, &token).await.0, 400);
    assert_eq!(get(&gw, &other).await, 200);
}

#[tokio::test]
async fn logout_tokens_that_break_the_rules_are_refused() {
    let (idp, op, up) = (Idp::start(), AuthServer::start(), Upstream::start());
    idp.key("ec", "ES256").await;
    let gw = gateway(&idp, &op, &up, "idp").await;
    let event = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    let good = |jti: &str| json!({"iss": idp.url, "aud": "web", "iat": now(), "exp": now() + 120, "jti": jti, "events": event, "sid": "s-9"});
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
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "logout+jwt",
        ),
        ("an exp past", with(&|c| c["exp"] = json!(now() - 600)), "logout+jwt"),
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

/// Shared Signals (RFC 8935 push of RFC 8417 SETs, minted here by PyJWT): CAEP
/// `session-revoked` revokes the session, RISC `account-disabled` the user; an unknown
/// event is taken and ignored; a SET seen before is taken without acting again; bad SETs
/// get `400` with the RFC's `err` codes.
#[tokio::test]
async fn security_events_revoke_sessions_and_users() {
    let (idp, up) = (Idp::start(), Upstream::start());
    idp.key("ec", "ES256").await;
    let gw = Gateway::start(&format!(
        "{}shared_signals: {{ audiences: [\"https://gateway.example/ssf\"], issuers: [idp] }}\nroutes:\n  - id: orders\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [jwt]\n",
        issuer_yaml(&idp, ""),
        up.url()
    ));
    let set = |events: Value, jti: &str| json!({"iss": idp.url, "aud": "https://gateway.example/ssf", "iat": now(), "jti": jti, "events": events});
    let push = |claims: Value, typ: &'static str| {
        let idp = &idp;
        let url = gw.url("/ssf/events");
        async move {
            let token = idp.mint(json!({"kid": "ec", "claims": claims, "header": {"typ": typ}})).await;
            let r =
                client().post(url).header("content-type", "application/secevent+jwt").body(token).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let iat = now() - 5;
    let s1 = idp.token("ec", json!({"sub": "jo", "sid": "s1", "iat": iat})).await;
    let s2 = idp.token("ec", json!({"sub": "jo", "sid": "s2", "iat": iat})).await;
    let kim = idp.token("ec", json!({"sub": "kim", "iat": iat})).await;
    for t in [&s1, &s2, &kim] {
        assert_eq!(get(&gw, t).await, 200);
    }
    let session_revoked = json!({"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {
        "subject": {"format": "complex", "user": {"format": "iss_sub", "iss": idp.url, "sub": "jo"},
                    "session": {"format": "opaque", "id": "s1"}},
        "event_timestamp": now()}});
    assert_eq!(push(set(session_revoked.clone(), "e1"), "secevent+jwt").await.0, 202);
    assert_eq!((get(&gw, &s1).await, get(&gw, &s2).await), (401, 200));
    // An unknown event: taken, nothing revoked.
    let unknown = json!({"https://example.com/event/other": {"subject": {"format": "opaque", "id": "kim"}}});
    assert_eq!(push(set(unknown, "e2"), "secevent+jwt").await.0, 202);
    assert_eq!(get(&gw, &kim).await, 200);
    assert!(gw.stderr().contains("https://example.com/event/other"), "the ignored event is logged");
    // RISC account-disabled, the subject at the top level (`sub_id`).
    let mut disabled = set(
        json!({"https://schemas.openid.net/secevent/risc/event-type/account-disabled": {"reason": "hijacking"}}),
        "e3",
    );
    disabled["sub_id"] = json!({"format": "iss_sub", "iss": idp.url, "sub": "kim"});
    assert_eq!(push(disabled.clone(), "secevent+jwt").await.0, 202);
    assert_eq!(get(&gw, &kim).await, 401);
    // The same SET again: taken (the transmitter may not have seen the answer).
    assert_eq!(push(disabled, "secevent+jwt").await.0, 202);
    // Bad SETs: the RFC's error codes.
    let mut wrong_aud = set(session_revoked.clone(), "e4");
    wrong_aud["aud"] = json!("https://someone.else");
    let mut foreign = set(session_revoked.clone(), "e5");
    foreign["iss"] = json!("https://evil.example");
    let mut no_events = set(session_revoked.clone(), "e6");
    no_events.as_object_mut().unwrap().remove("events");
    for (claims, typ, err) in [
        (wrong_aud, "secevent+jwt", "invalid_audience"),
        (foreign, "secevent+jwt", "invalid_issuer"),
        (no_events, "secevent+jwt", "invalid_request"),
        (set(session_revoked.clone(), "e7"), "at+jwt", "invalid_request"),
    ] {
        let (status, body) = push(claims, typ).await;
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["err"], err, "{body}");
    }
    let r = client()
        .post(gw.url("/ssf/events"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
