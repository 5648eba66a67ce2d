//! Token authentication through the real binary, with tokens minted by an independent
//! implementation (PyJWT/cryptography in `tests/helpers/idp.py`): every rejection class has
//! its own test, and the key lifecycle (rotation, removal, outage, unknown-kid floods,
//! readiness) runs against a real HTTP identity provider.

use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{Gateway, client, helper, problem, spawn_peer};
use crate::upstream::Upstream;

/// The Python identity provider.
pub struct Idp {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Idp {
    pub fn start() -> Idp {
        let mut cmd = Command::new("python3");
        cmd.arg(helper("idp.py"));
        let (child, url) = spawn_peer(cmd);
        assert!(url.starts_with("http://"), "idp said {url:?} (pip install -r tests/helpers/requirements.txt?)");
        Idp { child, url, http: reqwest::Client::new() }
    }

    pub async fn post_text(&self, path: &str, body: Value) -> String {
        self.post(path, body).await
    }

    pub async fn post(&self, path: &str, body: Value) -> String {
        let r = self.http.post(format!("{}{path}", self.url)).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "idp {path}: {}", r.status());
        r.text().await.unwrap()
    }

    pub async fn key(&self, kid: &str, alg: &str) {
        self.post("/admin/keys", json!({"kid": kid, "alg": alg})).await;
    }

    pub async fn unpublished_key(&self, kid: &str, alg: &str) {
        self.post("/admin/keys", json!({"kid": kid, "alg": alg, "publish": false})).await;
    }

    pub async fn unpublish(&self, kid: &str) {
        self.post("/admin/unpublish", json!({"kid": kid})).await;
    }

    pub async fn mode(&self, mode: &str) {
        self.post("/admin/mode", json!({"mode": mode})).await;
    }

    pub async fn max_age(&self, seconds: u64) {
        self.post("/admin/mode", json!({"max_age": seconds})).await;
    }

    pub async fn jwks_fetches(&self) -> u64 {
        let v: Value = self.http.get(format!("{}/admin/stats", self.url)).send().await.unwrap().json().await.unwrap();
        v["jwks"].as_u64().unwrap()
    }

    pub async fn mint(&self, req: Value) -> String {
        self.post("/mint", req).await
    }

    /// A token for the gateway's default expectations, signed with `kid`.
    pub async fn token(&self, kid: &str, extra: Value) -> String {
        let mut claims = self.claims();
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        self.mint(json!({"kid": kid, "claims": claims})).await
    }

    pub fn claims(&self) -> Value {
        json!({
            "iss": self.url,
            "sub": "alice",
            "aud": "orders-api",
            "exp": now() + 600,
            "iat": now(),
            "scope": "orders.read orders.write",
            "client_id": "web",
        })
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The issuer part of a gateway config trusting `idp`.
pub fn issuer_yaml(idp: &Idp, extra: &str) -> String {
    format!(
        r#"
issuers:
  - id: idp
    issuer: {url}
    jwks_uri: {url}/jwks.json
    audiences: [orders-api]
    algorithms: [RS256, PS256, ES256, ES384, EdDSA]
{extra}"#,
        url = idp.url
    )
}

/// An IdP with one key of each kind and a gateway trusting it.
pub struct Fixture {
    pub idp: Idp,
    pub up: Upstream,
    pub gw: Gateway,
}

impl Fixture {
    pub async fn new(issuer_extra: &str, route_extra: &str) -> Fixture {
        let idp = Idp::start();
        for (kid, alg) in [("rsa", "RS256"), ("pss", "PS256"), ("ec", "ES256"), ("ec384", "ES384"), ("ed", "EdDSA")] {
            idp.key(kid, alg).await;
        }
        let up = Upstream::start();
        // One worker: its verified-token cache is the one every request meets, so tests of
        // what the cache does cannot pass by landing on another worker's empty one.
        let gw = Gateway::start(&format!(
            "server:\n  listen: {{listen}}\n  workers: 1\n{}\nroutes:\n  - id: orders\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [jwt]\n    authorize: {{ scopes: [orders.read] }}\n{route_extra}",
            issuer_yaml(&idp, issuer_extra),
            up.url()
        ));
        Fixture { idp, up, gw }
    }

    pub async fn get(&self, token: &str) -> reqwest::Response {
        client().get(self.gw.url("/orders/1")).bearer_auth(token).send().await.unwrap()
    }

    /// Asserts `token` is refused with 401, an RFC 6750 challenge (realm, `invalid_token`) and
    /// this reason.
    pub async fn refused(&self, token: &str, reason: &str) {
        let before = self.up.count();
        let r = self.get(token).await;
        let challenge =
            r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let p = problem(r, 401).await;
        assert_eq!(p["type"], format!("urn:portcullis:problem:{}", reason.replace('_', "-")), "{p}");
        assert!(challenge.starts_with(r#"Bearer error="invalid_token", realm="portcullis""#), "{challenge}");
        assert_eq!(self.up.count(), before, "a refused request never reaches the upstream");
    }
}

#[tokio::test]
async fn every_algorithm_is_accepted_and_the_credential_stays_behind() {
    let f = Fixture::new("", "").await;
    for kid in ["rsa", "pss", "ec", "ec384", "ed"] {
        let token = f.idp.token(kid, json!({})).await;
        let r = f.get(&token).await;
        assert_eq!(r.status(), 200, "{kid}");
        let seen: Value = r.json().await.unwrap();
        assert!(seen["headers"].get("authorization").is_none(), "the upstream never sees the token");
    }
    // Scheme case-insensitive.
    let token = f.idp.token("ec", json!({})).await;
    let r =
        client().get(f.gw.url("/orders/1")).header("authorization", format!("bEaReR {token}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The token appears in no log.
    std::thread::sleep(Duration::from_millis(200));
    let logs = format!("{}{}", f.gw.stderr(), f.gw.access_log());
    assert!(!logs.contains(&token[token.len() - 20..]), "a token was logged");
    let line = f.gw.access_log().lines().last().unwrap().to_string();
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["principal"], "alice");
    assert_eq!(line["auth_method"], "jwt");
}

#[tokio::test]
async fn missing_and_ambiguous_credentials() {
    let f = Fixture::new("", "").await;
    // RFC 6750 §3.1: no credential, no error code; just the scheme and its realm.
    let r = client().get(f.gw.url("/orders/1")).send().await.unwrap();
    let challenges: Vec<_> =
        r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(challenges, [r#"Bearer realm="portcullis""#]);
    assert_eq!(problem(r, 401).await["type"], "urn:portcullis:problem:credential-missing");
    // An invalid credential: the realm and `invalid_token`.
    let r = client().get(f.gw.url("/orders/1")).bearer_auth("not-a-jwt").send().await.unwrap();
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(
        challenge.starts_with(r#"Bearer error="invalid_token", realm="portcullis", error_description=""#),
        "{challenge}"
    );
    problem(r, 401).await;
    let token = f.idp.token("ec", json!({})).await;
    let r = client()
        .get(f.gw.url("/orders/1"))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("invalid_request"));
    problem(r, 400).await;
    // Query-string tokens are off unless the route names a parameter.
    let r = client().get(f.gw.url(&format!("/orders/1?access_token={token}"))).send().await.unwrap();
    problem(r, 401).await;
    // Other schemes are not bearer tokens.
    let r = client().get(f.gw.url("/orders/1")).basic_auth("alice", Some("secret")).send().await.unwrap();
    problem(r, 401).await;
}

#[tokio::test]
async fn other_token_locations_when_the_route_names_them() {
    let f = Fixture::new("", "    credentials: { header: X-Token, cookie: session, query: access_token }\n").await;
    let token = f.idp.token("ec", json!({})).await;
    let c = client();
    assert_eq!(c.get(f.gw.url("/orders/1")).header("x-token", &token).send().await.unwrap().status(), 200);
    assert_eq!(
        c.get(f.gw.url("/orders/1")).header("cookie", format!("a=b; session={token}")).send().await.unwrap().status(),
        200
    );
    assert_eq!(c.get(f.gw.url(&format!("/orders/1?access_token={token}"))).send().await.unwrap().status(), 200);
    let r = c.get(f.gw.url("/orders/1")).header("x-token", &token).bearer_auth(&token).send().await.unwrap();
    problem(r, 400).await;
}

#[tokio::test]
async fn scopes_are_enforced() {
    let f = Fixture::new("", "").await;
    let token = f.idp.token("ec", json!({"scope": "orders.write"})).await;
    let r = f.get(&token).await;
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer error="insufficient_scope", scope="orders.read""#);
    problem(r, 403).await;
}

macro_rules! rejects {
    ($name:ident, $reason:expr, |$idp:ident| $token:expr) => {
        #[tokio::test]
        async fn $name() {
            let f = Fixture::new("    max_token_bytes: 4KiB\n", "").await;
            let $idp = &f.idp;
            let token: String = $token;
            f.refused(&token, $reason).await;
        }
    };
}

/// A token that claims a binding the gateway cannot verify (RFC 7800 `cnf` other than a
/// `jkt` or `x5t#S256` string) is refused, never taken as a bearer token; PyJWT signs them.
#[tokio::test]
async fn unverifiable_confirmation_claims_are_refused() {
    let f = Fixture::new("", "").await;
    for cnf in [
        json!({"jkt": ["abc"]}),
        json!("abc"),
        json!(null),
        json!({}),
        json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}),
        json!({"kid": "client-key-1"}),
        json!({"jku": "https://client.example/jwks"}),
        json!({"x5t#S256": 42}),
        json!({"jkt": "abc", "kid": "client-key-1"}),
    ] {
        let token = f.idp.token("ec", json!({"cnf": cnf})).await;
        f.refused(&token, "cnf_unsupported").await;
    }
    // The same token without `cnf` passes: it was the claim that refused it.
    assert_eq!(f.get(&f.idp.token("ec", json!({})).await).await.status(), 200);
}

#[tokio::test]
async fn alg_none_variants_each_refused() {
    let f = Fixture::new("", "").await;
    for alg in ["none", "None", "NONE"] {
        let t = f.idp.mint(json!({"kid": "rsa", "claims": f.idp.claims(), "attack": "none", "alg": alg})).await;
        f.refused(&t, "alg_none").await;
    }
}

rejects!(algorithm_confusion_hmac_with_the_public_key, "alg_not_allowed", |idp| {
    idp.mint(json!({"kid": "rsa", "claims": idp.claims(), "attack": "hmac_public_pem"})).await
});

rejects!(jku_header, "key_in_header", |idp| {
    idp.mint(json!({"kid": "rsa", "claims": idp.claims(), "header": {"jku": "https://evil.example/jwks.json"}})).await
});

rejects!(x5u_header, "key_in_header", |idp| {
    idp.mint(json!({"kid": "rsa", "claims": idp.claims(), "header": {"x5u": "https://evil.example/cert.pem"}})).await
});

rejects!(embedded_jwk_header, "key_in_header", |idp| {
    idp.mint(json!({"kid": "ec", "claims": idp.claims(), "header": {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}})).await
});

rejects!(x5c_header, "key_in_header", |idp| {
    idp.mint(json!({"kid": "rsa", "claims": idp.claims(), "header": {"x5c": ["MIIBIjANBg"]}})).await
});

rejects!(unknown_crit, "crit_unsupported", |idp| {
    idp.mint(json!({"kid": "rsa", "claims": idp.claims(), "header": {"crit": ["urn:example:unknown"], "urn:example:unknown": 1}})).await
});

rejects!(missing_exp, "exp_missing", |idp| {
    let mut c = idp.claims();
    c.as_object_mut().unwrap().remove("exp");
    idp.mint(json!({"kid": "ec", "claims": c})).await
});

rejects!(non_numeric_exp, "claim_malformed", |idp| {
    let c = idp.claims();
    let raw = c.to_string().replace(&format!("\"exp\":{}", c["exp"]), &format!("\"exp\":\"{}\"", c["exp"]));
    idp.mint(json!({"kid": "ec", "attack": "raw", "raw_payload": raw})).await
});

rejects!(expired, "token_expired", |idp| idp.token("ec", json!({"exp": now() - 3600})).await);

rejects!(nbf_in_the_future, "token_not_yet_valid", |idp| idp.token("ec", json!({"nbf": now() + 3600})).await);

rejects!(iat_in_the_future, "iat_future", |idp| idp.token("ec", json!({"iat": now() + 3600})).await);

rejects!(wrong_issuer, "issuer_unknown", |idp| idp.token("ec", json!({"iss": "https://evil.example"})).await);

rejects!(wrong_audience_string, "aud_mismatch", |idp| idp.token("ec", json!({"aud": "billing-api"})).await);

rejects!(wrong_audience_array, "aud_mismatch", |idp| idp.token("ec", json!({"aud": ["billing-api", "other"]})).await);

rejects!(malformed_base64url, "token_malformed", |idp| {
    let t = idp.token("ec", json!({})).await;
    let (h, rest) = t.split_once('.').unwrap();
    format!("{}=.{rest}", h)
});

rejects!(malformed_json_payload, "token_malformed", |idp| {
    idp.mint(json!({"kid": "ec", "attack": "raw", "raw_payload": "{\"iss\": broken"})).await
});

rejects!(duplicate_claims, "duplicate_member", |idp| {
    let c = idp.claims();
    let raw = format!("{{\"exp\": {}, {}", now() - 10_000, &c.to_string()[1..]);
    idp.mint(json!({"kid": "ec", "attack": "raw", "raw_payload": raw})).await
});

rejects!(ecdsa_zero_signature, "signature_invalid", |idp| {
    idp.mint(json!({"kid": "ec", "claims": idp.claims(), "attack": "zero_sig"})).await
});

rejects!(ecdsa_out_of_range_signature, "signature_invalid", |idp| {
    idp.mint(json!({"kid": "ec", "claims": idp.claims(), "attack": "order_sig"})).await
});

rejects!(tampered_payload, "signature_invalid", |idp| {
    let t = idp.token("ec", json!({"scope": "orders.read"})).await;
    let other = idp.token("ec", json!({"scope": "orders.read admin"})).await;
    let parts: Vec<&str> = t.split('.').collect();
    let other_payload = other.split('.').nth(1).unwrap();
    format!("{}.{}.{}", parts[0], other_payload, parts[2])
});

rejects!(oversized_token, "token_too_large", |idp| idp.token("ec", json!({"pad": "x".repeat(5000)})).await);

rejects!(unknown_kid, "key_unknown", |idp| {
    idp.unpublished_key("ghost", "ES256").await;
    idp.token("ghost", json!({})).await
});

rejects!(key_type_does_not_fit_the_algorithm, "key_unknown", |idp| {
    // Signed with the EC key, but claiming RS256 and naming the EC key's kid.
    idp.mint(json!({"kid": "ec", "claims": idp.claims(), "attack": "raw", "raw_header": "{\"alg\":\"RS256\",\"kid\":\"ec\"}", "alg": "ES256"})).await
});

rejects!(token_type_of_a_proof, "typ_not_allowed", |idp| {
    idp.mint(json!({"kid": "ec", "claims": idp.claims(), "header": {"typ": "dpop+jwt"}})).await
});

#[tokio::test]
async fn algorithms_are_allowed_per_issuer() {
    let idp = Idp::start();
    idp.key("ec384", "ES384").await;
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "issuers:\n  - id: idp\n    issuer: {url}\n    jwks_uri: {url}/jwks.json\n    audiences: [orders-api]\n    algorithms: [ES256]\nroutes:\n  - id: r\n    upstream: {up}\n    authenticate: [jwt]\n",
        url = idp.url,
        up = up.url()
    ));
    let token = idp.token("ec384", json!({})).await;
    let r = client().get(gw.url("/")).bearer_auth(token).send().await.unwrap();
    let p = problem(r, 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:alg-not-allowed");
}

#[tokio::test]
async fn hmac_only_with_a_configured_secret() {
    let idp = Idp::start();
    let secret = "an hmac secret of at least thirty-two bytes!";
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "issuers:\n  - id: hs\n    issuer: hs-issuer\n    hmac_secret: \"{secret}\"\n    audiences: [orders-api]\n    algorithms: [HS256]\nroutes:\n  - id: r\n    upstream: {up}\n    authenticate: [jwt]\n",
        up = up.url()
    ));
    // PyJWT signs with the shared secret.
    let out = Command::new("python3")
        .args(["-c", &format!(
            "import jwt,time; print(jwt.encode({{'iss':'hs-issuer','aud':'orders-api','exp':int(time.time())+600,'sub':'s'}}, {secret:?}, algorithm='HS256'))"
        )])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = client().get(gw.url("/")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(idp);
}

/// A token served from the cache is held to the same `exp` and leeway as one verified anew.
#[tokio::test]
async fn cached_tokens_expire_with_the_issuer_leeway() {
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    let up = Upstream::start();
    // Caches are per worker: one worker makes "cached" deterministic.
    let gw = Gateway::start(&format!(
        "server:\n  listen: {{listen}}\n  workers: 1\n{}\nroutes:\n  - id: r\n    upstream: {}\n    authenticate: [jwt]\n",
        issuer_yaml(&idp, "    leeway: 1s\n"),
        up.url()
    ));
    let exp = now() + 2;
    let token = idp.token("ec", json!({"exp": exp})).await;
    let get = || client().get(gw.url("/x")).bearer_auth(&token).send();
    assert_eq!(get().await.unwrap().status(), 200, "valid, and now cached");
    assert_eq!(get().await.unwrap().status(), 200);
    while now() <= exp + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p = problem(get().await.unwrap(), 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:token-expired", "{p}");
}

/// RFC 7517 §4.5 asks key sets for distinct `kid`s but does not require them: when keys share
/// one, the signature decides which of them verifies the token.
#[tokio::test]
async fn keys_that_share_a_kid_are_each_tried() {
    let f = Fixture::new("", "").await;
    for name in ["twin-a", "twin-b"] {
        f.idp.post("/admin/keys", json!({"kid": name, "alg": "ES256", "publish_kid": "twin"})).await;
    }
    f.idp.unpublished_key("stranger", "ES256").await;
    let signed_by = |key: &str| f.idp.mint(json!({"kid": key, "header": {"kid": "twin"}, "claims": f.idp.claims()}));
    assert_eq!(f.get(&signed_by("twin-a").await).await.status(), 200);
    assert_eq!(f.get(&signed_by("twin-b").await).await.status(), 200);
    f.refused(&signed_by("stranger").await, "signature_invalid").await;
}

/// Any JSON is a JOSE header (RFC 7515 §4), whitespace included.
#[tokio::test]
async fn a_header_with_json_whitespace_is_still_a_jwt() {
    let f = Fixture::new("", "").await;
    let spaced = f
        .idp
        .mint(json!({"kid": "ec", "attack": "raw", "raw_header": "{ \"alg\": \"ES256\",\n \"kid\": \"ec\" }", "claims": f.idp.claims()}))
        .await;
    assert!(!spaced.starts_with("eyJ"), "{spaced}");
    assert_eq!(f.get(&spaced).await.status(), 200);
}

/// A gateway (`server` is its server section, if any) with one route that takes JWTs of the
/// IdP (key `ec`) and opaque tokens it introspects.
async fn jwt_or_introspection(server: &str) -> (Idp, Upstream, Gateway) {
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "{server}{}\nintrospection:\n  endpoint: {url}/introspect\n  client_id: gateway\n  client_secret: s3cret\nroutes:\n  - id: r\n    upstream: {}\n    authenticate: [jwt, introspection]\n",
        issuer_yaml(&idp, ""),
        up.url(),
        url = idp.url
    ));
    (idp, up, gw)
}

/// Where a route takes JWTs and opaque tokens, an opaque token that merely looks like a JWT
/// (three parts, the first decoding to `{`) is still introspected, not refused as a bad JWT.
#[tokio::test]
async fn an_opaque_token_shaped_like_a_jwt_is_still_introspected() {
    let (idp, _up, gw) = jwt_or_introspection("").await;
    // " {op" in base64url, then two more parts: not a JWS.
    let opaque = format!("{}.not-a-payload.not-a-signature", "IHtvcA");
    idp.post("/admin/opaque", json!({"token": opaque, "claims": {"sub": "svc", "exp": now() + 600}})).await;
    let r = client().get(gw.url("/x")).bearer_auth(&opaque).send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // A JWT still goes the JWT way, and a token the server does not know is refused.
    assert_eq!(
        client().get(gw.url("/x")).bearer_auth(idp.token("ec", json!({})).await).send().await.unwrap().status(),
        200
    );
    let unknown = format!("{}.other.token", "IHtvcA");
    assert_eq!(client().get(gw.url("/x")).bearer_auth(&unknown).send().await.unwrap().status(), 401);
}

/// The `b64token` grammar (RFC 6750 §2.1) holds for every token that the verified-token cache
/// does not hold, opaque ones too: one outside it is refused before anyone is asked about it,
/// even when the introspection endpoint would call it active, and a JWT one character away
/// from a cached one is refused as well.
#[tokio::test]
async fn tokens_outside_the_b64token_grammar_are_refused_before_introspection() {
    // One worker: the token next to a cached one meets the cache that holds it.
    let (idp, _up, gw) = jwt_or_introspection("server:\n  listen: {listen}\n  workers: 1\n").await;
    let get = |token: String| client().get(gw.url("/x")).bearer_auth(token).send();
    let good = "opaque-token.value~1";
    let bad = ["opaque,token", "opaque!token", "opaque token", "opaque\"token", "opaque\ttoken", "opaque=token"];
    for t in std::iter::once(good).chain(bad) {
        idp.post("/admin/opaque", json!({"token": t, "claims": {"sub": "svc", "exp": now() + 600}})).await;
    }
    assert_eq!(get(good.into()).await.unwrap().status(), 200, "the endpoint is asked about a good token");
    let jwt = idp.token("ec", json!({})).await;
    assert_eq!(get(jwt.clone()).await.unwrap().status(), 200);
    assert_eq!(get(jwt.clone()).await.unwrap().status(), 200, "now from the cache");
    for t in bad.into_iter().map(String::from).chain([format!("{jwt}!"), format!("%{jwt}")]) {
        let p = problem(get(t.clone()).await.unwrap(), 401).await;
        assert_eq!(p["type"], "urn:portcullis:problem:token-malformed", "{t:?}: {p}");
    }
}

#[tokio::test]
async fn key_rotation_and_removal_without_restart() {
    let f = Fixture::new("    keys: { min_cache: 1s, max_cache: 1s, refetch_interval: 1s }\n", "").await;
    f.idp.max_age(1).await;
    // A key published after start is found through the unknown-kid refetch.
    f.idp.key("new", "ES256").await;
    let fresh = f.idp.token("new", json!({})).await;
    assert_eq!(f.get(&fresh).await.status(), 200, "a new key works without restart");
    // A token verified (and cached) with a key that then disappears stops working.
    let old = f.idp.token("rsa", json!({})).await;
    assert_eq!(f.get(&old).await.status(), 200);
    f.idp.unpublish("rsa").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.get(&old).await;
        if r.status() == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the removed key's token was still accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.get(&fresh).await.status(), 200, "the other keys still work");
}

#[tokio::test]
async fn unknown_kids_cannot_hammer_the_idp() {
    let f = Fixture::new("    keys: { min_cache: 5m, refetch_interval: 30s }\n", "").await;
    f.idp.unpublished_key("ghost", "ES256").await;
    let before = f.idp.jwks_fetches().await;
    for i in 0..40 {
        let t = f
            .idp
            .mint(json!({"kid": "ghost", "claims": f.idp.claims(), "header": {"kid": format!("made-up-{i}")}}))
            .await;
        problem(f.get(&t).await, 401).await;
    }
    let after = f.idp.jwks_fetches().await;
    assert!(after - before <= 1, "{} fetches for 40 unknown kids", after - before);
}

#[tokio::test]
async fn stale_keys_serve_while_the_idp_is_down_then_fail_closed() {
    let f = Fixture::new("    keys: { min_cache: 1s, max_cache: 1s, stale_for: 3s }\n", "").await;
    f.idp.max_age(1).await;
    let token = f.idp.token("ec", json!({})).await;
    assert_eq!(f.get(&token).await.status(), 200);
    f.idp.mode("drop").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Past freshness, within stale_for: still served (a new token, so the cache does not answer).
    let other = f.idp.token("ec", json!({"jti": "other"})).await;
    assert_eq!(f.get(&other).await.status(), 200, "stale keys keep serving for a while");
    let deadline = Instant::now() + Duration::from_secs(10);
    let p = loop {
        let third = f.idp.token("ec", json!({"jti": format!("t{}", Instant::now().elapsed().as_nanos())})).await;
        let r = f.get(&third).await;
        if r.status() == 503 {
            break problem(r, 503).await;
        }
        assert!(Instant::now() < deadline, "never failed closed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(p["type"], "urn:portcullis:problem:keys-unavailable");
    // A token verified before the outage is refused too: the cache never outlives the keys.
    let r = f.get(&token).await;
    assert_eq!(problem(r, 503).await["type"], "urn:portcullis:problem:keys-unavailable", "a cached token failed open");
    // Back up: served again.
    f.idp.mode("ok").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while f.get(&token).await.status() != 200 {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn not_ready_until_the_first_keys_arrive() {
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    idp.mode("error").await;
    let up = Upstream::start();
    let gw = Gateway::start_alive(&format!(
        "{}routes:\n  - id: r\n    upstream: {}\n    authenticate: [jwt]\n",
        issuer_yaml(&idp, "    keys: { timeout: 1s }\n"),
        up.url()
    ));
    assert_eq!(crate::harness::admin_get(gw.admin, "/readyz").unwrap().0, 503);
    let token = idp.token("ec", json!({})).await;
    problem(client().get(gw.url("/")).bearer_auth(&token).send().await.unwrap(), 503).await;
    idp.mode("ok").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while crate::harness::admin_get(gw.admin, "/readyz").unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client().get(gw.url("/")).bearer_auth(&token).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn oidc_discovery() {
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "issuers:\n  - id: idp\n    issuer: {url}\n    discovery: true\n    audiences: [orders-api]\n    algorithms: [ES256]\nroutes:\n  - id: r\n    upstream: {up}\n    authenticate: [jwt]\n",
        url = idp.url,
        up = up.url()
    ));
    let token = idp.token("ec", json!({})).await;
    assert_eq!(client().get(gw.url("/")).bearer_auth(&token).send().await.unwrap().status(), 200);
}
