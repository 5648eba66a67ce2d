//! Workload identity through the real binary over TLS: X.509-SVIDs checked against the
//! bundle of their own trust domain, bundles in PEM and SPIFFE JSON reloaded on change, the
//! X.509-SVID rules, and mutual TLS to an upstream (Python's ssl module) with the gateway's
//! own SVID rotated on disk, and that upstream's connections pooled up to their limit.

use std::process::{Child, Command};

use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose, SanType};
use serde_json::{Value, json};

use crate::harness::{Gateway, TempDir, client, helper, problem, spawn_peer};
use crate::pki::{Ca, Pair};

/// A SPIFFE bundle document (JWK Set with `x509-svid` keys) for `ca`.
fn spiffe_bundle(ca: &Ca) -> String {
    let der: String = ca.pem().lines().filter(|l| !l.starts_with("-----")).collect();
    json!({"spiffe_sequence": 1, "keys": [{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": [der]}]}).to_string()
}

#[tokio::test]
async fn svids_are_checked_against_their_own_trust_domain() {
    let server_ca = Ca::new("server ca");
    let example = Ca::new("example.org ca");
    let partner = Ca::new("partner.org ca");
    let dir = TempDir::new("spiffe");
    let server = server_ca.server();
    dir.write("server.pem", &server.cert);
    dir.write("server-key.pem", &server.key);
    dir.write("bundles/example.org.pem", example.pem());
    dir.write("bundles/partner.org.json", spiffe_bundle(&partner));
    let gw = Gateway::start_in(
        dir,
        r#"
server:
  listen: {listen}
  tls: { cert: server.pem, key: server-key.pem }
spiffe:
  trust_domains:
    example.org: bundles/example.org.pem
    partner.org: bundles/partner.org.json
routes:
  - id: prod
    match: { path_prefix: /prod }
    upstream: echo
    authenticate: [mtls]
    authorize: { spiffe_ids: ["spiffe://example.org/ns/prod/**"] }
  - id: any
    match: { path_prefix: /any }
    upstream: echo
    authenticate: [mtls]
"#,
    );
    let url = |p: &str| format!("https://localhost:{}{p}", gw.addr.port());
    let get = |id: Option<&Pair>, p: &str| {
        let c = server_ca.https_client(id);
        let u = url(p);
        async move { c.get(u).send().await }
    };

    // An SVID of example.org, from example.org's CA.
    let api = example.svid("spiffe://example.org/ns/prod/sa/api");
    assert_eq!(get(Some(&api), "/prod/x").await.unwrap().status(), 200);
    // partner.org's SVID (SPIFFE JSON bundle) is a workload, but not one the prod route allows.
    let partner_svid = partner.svid("spiffe://partner.org/billing");
    assert_eq!(get(Some(&partner_svid), "/any/x").await.unwrap().status(), 200);
    problem(get(Some(&partner_svid), "/prod/x").await.unwrap(), 403).await;
    // A CA of one trust domain cannot vouch for another's IDs.
    let forged = partner.svid("spiffe://example.org/ns/prod/sa/api");
    assert!(get(Some(&forged), "/prod/x").await.is_err(), "a cross-domain SVID must fail the handshake");
    // An unknown trust domain, and a plain certificate without a SPIFFE ID (no client_ca).
    assert!(get(Some(&example.svid("spiffe://elsewhere.org/x")), "/any/x").await.is_err());
    assert!(get(Some(&example.client("alice")), "/any/x").await.is_err());
    // Broken X.509-SVIDs: two URI SANs, a CA certificate, no digitalSignature, keyCertSign.
    let two_uris = example.svid_with("spiffe://example.org/a", |p| {
        p.subject_alt_names.push(SanType::URI("spiffe://example.org/b".try_into().unwrap()))
    });
    let is_ca = example.svid_with("spiffe://example.org/a", |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    let no_sig = example.svid_with("spiffe://example.org/a", |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]);
    let cert_sign = example.svid_with("spiffe://example.org/a", |p| {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign]
    });
    for (name, bad) in
        [("two URIs", two_uris), ("CA", is_ca), ("no digitalSignature", no_sig), ("keyCertSign", cert_sign)]
    {
        assert!(get(Some(&bad), "/any/x").await.is_err(), "{name}: accepted");
    }
    // No certificate: the route needs one.
    problem(get(None, "/any/x").await.unwrap(), 401).await;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let line: Value =
        serde_json::from_str(gw.access_log().lines().find(|l| l.contains("\"route\":\"prod\"")).unwrap()).unwrap();
    assert_eq!(line["principal"], "spiffe://example.org/ns/prod/sa/api");
    assert_eq!(line["auth_method"], "mtls");

    // The bundle rotates on disk: example.org now trusts a new CA only.
    let rotated = Ca::new("example.org ca 2");
    gw.dir.write("bundles/example.org.pem", rotated.pem());
    gw.wait_metric("the bundle reload", |g| g.metric("portcullis_config_generation") >= 2.0);
    assert!(get(Some(&api), "/prod/x").await.is_err(), "SVIDs of the old CA are no longer trusted");
    let renewed = rotated.svid("spiffe://example.org/ns/prod/sa/api");
    assert_eq!(get(Some(&renewed), "/prod/x").await.unwrap().status(), 200);
}

/// The Python HTTPS upstream that requires client certificates.
struct TlsUpstream {
    child: Child,
    port: u16,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsUpstream {
    fn start(dir: &TempDir, name: &str, svid: &Pair, client_ca: &Ca) -> TlsUpstream {
        Self::start_with(dir, name, svid, client_ca, &[])
    }

    fn start_with(dir: &TempDir, name: &str, svid: &Pair, client_ca: &Ca, flags: &[&str]) -> TlsUpstream {
        let cert = dir.write(&format!("{name}/svid.pem"), &svid.cert);
        let key = dir.write(&format!("{name}/svid-key.pem"), &svid.key);
        let ca = dir.write(&format!("{name}/clients.pem"), client_ca.pem());
        let mut cmd = Command::new("python3");
        cmd.arg(helper("tls_upstream.py")).args([&cert, &key, &ca]).args(flags);
        let (child, line) = spawn_peer(cmd);
        TlsUpstream { child, port: line.parse().unwrap_or_else(|_| panic!("tls upstream said {line:?}")) }
    }
}

/// The gateway's own SVID (`spiffe://example.org/gateway`) and its trust domain's bundle,
/// written where the config's `spiffe` section expects them (`svid.pem`, `svid-key.pem`,
/// `bundle.pem`).
fn gateway_svid(dir: &TempDir, domain: &Ca) {
    let svid = domain.svid("spiffe://example.org/gateway");
    dir.write("bundle.pem", domain.pem());
    dir.write("svid.pem", &svid.cert);
    dir.write("svid-key.pem", &svid.key);
}

#[tokio::test]
async fn upstream_mtls_with_the_gateways_rotating_svid() {
    let domain = Ca::new("example.org ca");
    let dir = TempDir::new("egress");
    let backend = TlsUpstream::start(&dir, "backend", &domain.svid("spiffe://example.org/backend"), &domain);
    let impostor = TlsUpstream::start(&dir, "impostor", &domain.svid("spiffe://example.org/impostor"), &domain);
    gateway_svid(&dir, &domain);
    let gw = Gateway::start_in(
        dir,
        &format!(
            r#"
spiffe:
  trust_domains: {{ example.org: bundle.pem }}
  svid: {{ cert: svid.pem, key: svid-key.pem }}
upstreams:
  backend:
    endpoints: [https://127.0.0.1:{b}]
    tls: {{ spiffe_id: "spiffe://example.org/backend", svid: true }}
  wrong:
    endpoints: [https://127.0.0.1:{i}]
    tls: {{ spiffe_id: "spiffe://example.org/backend", svid: true }}
routes:
  - id: backend
    match: {{ path_prefix: /backend }}
    upstream: backend
    authenticate: [none]
  - id: wrong
    match: {{ path_prefix: /wrong }}
    upstream: wrong
    authenticate: [none]
"#,
            b = backend.port,
            i = impostor.port
        ),
    );
    let seen = |v: Value| (v["uris"][0].as_str().unwrap_or_default().to_string(), v["serial"].clone());
    let r = client().get(gw.url("/backend/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (uri, serial) = seen(r.json().await.unwrap());
    assert_eq!(uri, "spiffe://example.org/gateway", "the upstream saw the gateway's SVID");

    // An HTTP/2 client's cookies, split over several fields, reach this HTTPS upstream (HTTP/1.1,
    // through hyper's client rather than the lean one) as one field (RFC 9113 §8.2.3).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(gw.url("/backend/c")).header("cookie", "a=1").header("cookie", "b=2; c=3").send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["cookies"], serde_json::json!(["a=1; b=2; c=3"]), "{v}");

    // An upstream with another SPIFFE ID is not the one configured: 502, nothing forwarded.
    let r = client().get(gw.url("/wrong/x")).send().await.unwrap();
    problem(r, 502).await;

    // The gateway's SVID rotates on disk: new upstream connections present the new one.
    let renewed = domain.svid("spiffe://example.org/gateway");
    gw.dir.write("svid-key.pem", &renewed.key);
    gw.dir.write("svid.pem", &renewed.cert);
    gw.wait_metric("the SVID reload", |g| g.metric("portcullis_config_generation") >= 2.0);
    let r = client().get(gw.url("/backend/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (uri, serial2) = seen(r.json().await.unwrap());
    assert_eq!(uri, "spiffe://example.org/gateway");
    assert_ne!(serial2, serial, "the rotated SVID is presented");
}

/// `max_idle_connections` holds for an `https://` upstream too (hyper's pool, not the lean
/// client's): connections are reused, and past the limit closed after their exchange.
#[tokio::test]
async fn https_upstream_connections_are_kept_up_to_the_limit() {
    let domain = Ca::new("example.org ca");
    let dir = TempDir::new("https-pool");
    let backend = TlsUpstream::start_with(
        &dir,
        "backend",
        &domain.svid("spiffe://example.org/backend"),
        &domain,
        &["--keep-alive"],
    );
    gateway_svid(&dir, &domain);
    let gw = Gateway::start_in(
        dir,
        &format!(
            r#"
server:
  listen: {{listen}}
  workers: 1
spiffe:
  trust_domains: {{ example.org: bundle.pem }}
  svid: {{ cert: svid.pem, key: svid-key.pem }}
upstreams:
  backend:
    endpoints: [https://127.0.0.1:{b}]
    tls: {{ spiffe_id: "spiffe://example.org/backend", svid: true }}
    max_idle_connections: 2
routes:
  - id: backend
    upstream: backend
    authenticate: [none]
"#,
            b = backend.port
        ),
    );
    let c = client();
    // Six at once open six connections; two are kept, so the next six find two and open four.
    for _ in 0..2 {
        let wave = (0..6).map(|_| c.get(gw.url("/slow")).send());
        for r in futures_util::future::join_all(wave).await {
            assert_eq!(r.unwrap().status(), 200);
        }
        // hyper's pool takes a connection back once its exchange is wound up, just after the
        // response has gone out.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let v: Value = c.get(gw.url("/x")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["connections"], 10, "{v}");
}

/// JWT-SVIDs: a `spiffe://` `sub` is a workload's SPIFFE ID only in a token of an issuer
/// configured as a JWT-SVID issuer of that trust domain (`spiffe_trust_domain`), as an
/// X.509-SVID counts only when it chains to its own trust domain's bundle. The same `sub`
/// from another issuer names no workload, and the JWT-SVID issuer's token for another trust
/// domain is refused. Tokens are minted by PyJWT.
#[tokio::test]
async fn jwt_svids_count_only_from_their_trust_domains_issuer() {
    let (spire, other) = (crate::authn::Idp::start(), crate::authn::Idp::start());
    spire.key("ec", "ES256").await;
    other.key("ec", "ES256").await;
    let issuer = |id: &str, idp: &crate::authn::Idp, extra: &str| {
        format!(
            "  - id: {id}\n    issuer: {url}\n    jwks_uri: {url}/jwks.json\n    audiences: [orders-api]\n    algorithms: [ES256]\n{extra}",
            url = idp.url
        )
    };
    let gw = Gateway::start(&format!(
        "issuers:\n{}{}routes:\n  - id: prod\n    match: {{ path_prefix: /prod }}\n    upstream: echo\n    authenticate: [jwt]\n    authorize: {{ spiffe_ids: [\"spiffe://example.org/ns/prod/**\"] }}\n",
        issuer("spire", &spire, "    spiffe_trust_domain: example.org\n"),
        issuer("idp", &other, ""),
    ));
    let get = |token: String| client().get(gw.url("/prod/x")).bearer_auth(token).send();
    let api = json!({"sub": "spiffe://example.org/ns/prod/sa/api"});

    // The trust domain's JWT-SVID issuer: a workload the rule admits.
    let r = get(spire.token("ec", api.clone()).await).await.unwrap();
    assert_eq!(r.status(), 200);
    // Another issuer's token with the very same `sub`: authenticated, but no workload.
    let p = problem(get(other.token("ec", api.clone()).await).await.unwrap(), 403).await;
    assert_eq!(p["type"], "urn:portcullis:problem:workload-not-allowed", "{p}");
    // The JWT-SVID issuer vouching for another trust domain's workload: refused outright.
    for sub in ["spiffe://evil.org/ns/prod/sa/api", "spiffe://example.org.evil.org/ns/prod/sa/api"] {
        let r = get(spire.token("ec", json!({"sub": sub})).await).await.unwrap();
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(challenge.starts_with(r#"Bearer error="invalid_token", realm="portcullis""#), "{challenge}");
        assert_eq!(problem(r, 401).await["type"], "urn:portcullis:problem:spiffe-id-foreign", "{sub}");
    }
    // A user of the JWT-SVID issuer is still a user, not a workload.
    let p = problem(get(spire.token("ec", json!({"sub": "alice"})).await).await.unwrap(), 403).await;
    assert_eq!(p["type"], "urn:portcullis:problem:workload-not-allowed");
}
