//! Route and header confusion: a request the gateway routes one way must not be read another
//! way by the server behind it. Every case sends raw bytes and checks what each upstream
//! received, not only the status.
//!
//! The layout: a public catch-all `/`; a JWT route `/admin` for `GET` and `POST`; a JWT route
//! with the exact path `/account`; a JWT route for the host `admin.example.com`; a public route
//! `/shop` that takes path parameters; upstreams that keep the client's `Host`.

use std::process::Command;

use serde_json::Value;

use crate::harness::Gateway;
use crate::proxy::raw_request;
use crate::upstream::Upstream;

const SECRET: &str = "an hmac secret of at least thirty-two bytes!";

struct Layout {
    gw: Gateway,
    public: Upstream,
    admin: Upstream,
}

fn layout(server: &str) -> Layout {
    let (public, admin) = (Upstream::start(), Upstream::start());
    let gw = Gateway::start(&format!(
        r#"{server}
issuers:
  - id: hs
    issuer: hs-issuer
    hmac_secret: "{SECRET}"
    audiences: [orders-api]
    algorithms: [HS256]
upstreams:
  open-svc:
    endpoints: [{p}]
    preserve_host: true
  guarded-svc:
    endpoints: [{a}]
    preserve_host: true
routes:
  - id: public
    upstream: open-svc
    authenticate: [none]
  - id: shop
    match: {{ path_prefix: /shop, path_parameters: true }}
    upstream: open-svc
    authenticate: [none]
  - id: admin
    match: {{ path_prefix: /admin, methods: [GET, POST] }}
    upstream: guarded-svc
    authenticate: [jwt]
  - id: account
    match: {{ path: /account }}
    upstream: guarded-svc
    authenticate: [jwt]
  - id: admin-host
    match: {{ host: admin.example.com }}
    upstream: guarded-svc
    authenticate: [jwt]
"#,
        p = public.url(),
        a = admin.url()
    ));
    Layout { gw, public, admin }
}

/// A token PyJWT signs for the layout's issuer.
fn token() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import jwt,time; print(jwt.encode({{'iss':'hs-issuer','aud':'orders-api','exp':int(time.time())+600,'sub':'alice'}}, {SECRET:?}, algorithm='HS256'))"
            ),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "PyJWT: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Sends raw bytes on a fresh connection; returns the status, the head, and the body.
fn send(gw: &Gateway, raw: &str) -> (u16, String, String) {
    let (status, text) = raw_request(gw, raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

fn get(gw: &Gateway, target: &str, extra: &str) -> (u16, String, String) {
    send(gw, &format!("GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"))
}

/// What the echoing upstream says it received.
fn received(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not the upstream's echo ({e}): {body}"))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

#[test]
fn path_parameters_never_reach_an_upstream_past_the_route_they_name() {
    let l = layout("");
    for target in
        ["/static/..;/admin", "/x/..;/admin/users", "/admin;jsessionid=1", "/admin;/x", "/static/%2e%2e;/admin"]
    {
        let (status, head, body) = get(&l.gw, target, "");
        assert_eq!(status, 400, "{target}: {head}\n{body}");
        assert!(header(&head, "content-type").is_some_and(|c| c.starts_with("application/problem+json")), "{head}");
        let p: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(p["type"], "urn:portcullis:problem:path-parameters", "{target}: {p}");
    }
    assert_eq!((l.public.count(), l.admin.count()), (0, 0), "no upstream saw any of them");

    // A route that takes parameters gets them, with its dot segments resolved.
    let (status, _, body) = get(&l.gw, "/shop;jsessionid=A1/cart", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(received(&body)["uri"], "/shop;jsessionid=A1/cart");
    let (status, _, body) = get(&l.gw, "/shop/x/..;v=1/cart?q=1", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(received(&body)["uri"], "/shop/cart?q=1");
    // Unless a reading leads elsewhere: `..;` is `..` to Tomcat, a name to nginx.
    let (status, _, _) = get(&l.gw, "/shop/..;/admin", "");
    assert_eq!(status, 400);
    assert_eq!(l.admin.count(), 0);
}

#[test]
fn other_methods_on_a_claimed_path_are_405_and_head_is_get() {
    let l = layout("");
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let (status, head, body) = send(
            &l.gw,
            &format!("{method} /admin/users/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 405, "{method}: {head}\n{body}");
        assert_eq!(header(&head, "allow"), Some("GET, HEAD, POST"), "{method}: {head}");
        assert!(body.contains("urn:portcullis:problem:method-not-allowed"), "{body}");
    }
    // HEAD is GET's: the protected route takes it, so it needs a token.
    let (status, head, _) = send(&l.gw, "HEAD /admin/users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 401, "{head}");
    assert_eq!((l.public.count(), l.admin.count()), (0, 0));

    let t = token();
    let (status, head, body) = send(
        &l.gw,
        &format!("HEAD /admin/users/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty(), "a HEAD response has no body: {body}");
    assert_eq!((l.public.count(), l.admin.count()), (0, 1), "the admin upstream served it");
}

#[test]
fn an_exact_path_is_the_same_route_with_a_trailing_slash() {
    let l = layout("");
    for target in ["/account/", "/account/.", "/account/x/..", "/account//"] {
        let (status, head, _) = get(&l.gw, target, "");
        assert_eq!(status, 401, "{target}: {head}");
    }
    assert_eq!((l.public.count(), l.admin.count()), (0, 0));
    let (status, _, body) = get(&l.gw, "/account/x/..", &format!("Authorization: Bearer {}\r\n", token()));
    assert_eq!(status, 200);
    assert_eq!(received(&body)["uri"], "/account/", "forwarded as routed");
    assert_eq!(l.admin.count(), 1);
}

#[test]
fn a_trailing_dot_on_the_host_is_the_same_host() {
    let l = layout("");
    for host in ["admin.example.com.", "ADMIN.Example.COM.", "admin.example.com.:8080"] {
        let (status, head, _) = send(&l.gw, &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
        assert_eq!(status, 401, "{host}: {head}");
    }
    for host in ["admin.example.com..", ".admin.example.com", "admin%2eexample.com"] {
        let (status, head, _) = send(&l.gw, &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
        assert_eq!(status, 400, "{host}: {head}");
    }
    assert_eq!((l.public.count(), l.admin.count()), (0, 0));
    // Forwarded without the dot, to an upstream that keeps the client's host.
    let t = token();
    let (status, _, body) = send(
        &l.gw,
        &format!(
            "GET /x HTTP/1.1\r\nHost: Admin.example.com.:8080\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{body}");
    let v = received(&body);
    assert_eq!(v["headers"]["host"], "Admin.example.com:8080");
    assert_eq!(v["headers"]["x-forwarded-host"], "Admin.example.com:8080");
    let (_, _, body) = send(&l.gw, "GET /y HTTP/1.1\r\nHost: public.example.\r\nConnection: close\r\n\r\n");
    assert_eq!(received(&body)["headers"]["host"], "public.example");
}

#[test]
fn confusable_spellings_of_framing_and_forwarding_fields_are_dropped() {
    let l = layout("");
    let (status, _, body) = send(
        &l.gw,
        "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent_Length: 500\r\nTransfer_Encoding: chunked\r\n\
         X_Forwarded_For: 10.9.9.9\r\nX_Request_Id: spoofed\r\nX_Custom_Thing: kept\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status, 200, "{body}");
    let v = received(&body);
    let h = v["headers"].as_object().unwrap();
    for gone in ["content_length", "transfer_encoding", "x_forwarded_for", "x_request_id"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(h["x_custom_thing"], "kept", "other names with `_` pass");
    assert_eq!(h["content-length"], "5");
    assert_eq!(v["body"], "hello");
}

#[test]
fn connection_cannot_name_fields_the_gateway_routes_or_frames_with() {
    let l = layout("");
    let (status, _, body) = send(
        &l.gw,
        "POST /x HTTP/1.1\r\nHost: public.example\r\nContent-Length: 5\r\nConnection: host, content-length, x-hop\r\n\
         X-Hop: gone\r\n\r\nhello",
    );
    assert_eq!(status, 200, "{body}");
    let v = received(&body);
    assert_eq!(v["headers"]["host"], "public.example", "Host is never hop-by-hop");
    assert_eq!(v["headers"]["content-length"], "5");
    assert_eq!(v["body"], "hello");
    assert!(v["headers"].get("x-hop").is_none(), "named fields still go: {v}");
}

#[test]
fn paths_match_without_case_when_the_upstream_reads_them_so() {
    // Case-sensitive by default: `/ADMIN` is another path, served as such.
    let l = layout("");
    let (status, _, body) = get(&l.gw, "/ADMIN/users", "");
    assert_eq!(status, 200);
    assert_eq!(received(&body)["uri"], "/ADMIN/users");
    assert_eq!(l.admin.count(), 0);

    let l = layout("server:\n  listen: \"{listen}\"\n  ignore_path_case: true\n");
    for target in ["/ADMIN/users", "/Admin", "/ACCOUNT/"] {
        let (status, head, _) = get(&l.gw, target, "");
        assert_eq!(status, 401, "{target}: {head}");
    }
    assert_eq!((l.public.count(), l.admin.count()), (0, 0));
}

#[test]
fn a_host_with_a_port_that_is_no_port_is_refused() {
    // nginx, Express and Go cut the host at the first `:`: to them this is admin.example.com.
    let l = layout("");
    for host in ["admin.example.com:abc", "admin.example.com:80:80", "admin.example.com:+80", "ADMIN.example.com.:x"] {
        let (status, head, body) = send(&l.gw, &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
        assert_eq!(status, 400, "{host}: {head}\n{body}");
    }
    let (status, _, _) =
        send(&l.gw, "GET http://admin.example.com:abc/ HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 400);
    assert_eq!((l.public.count(), l.admin.count()), (0, 0));
}

#[test]
fn fields_that_move_the_path_or_method_behind_the_route_are_dropped() {
    let l = layout("");
    let (status, _, body) = get(
        &l.gw,
        "/x",
        "X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX_Original_URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\n\
         X-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Real-IP: 10.1.1.1\r\nTrue-Client-IP: 10.1.1.1\r\n\
         X-Forwarded-Client-Cert: Hash=abc\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let h = received(&body)["headers"].as_object().unwrap().clone();
    for gone in [
        "x-original-url",
        "x-rewrite-url",
        "x_original_url",
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
        "x-real-ip",
        "true-client-ip",
        "x-forwarded-client-cert",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
}

#[test]
fn requests_are_forwarded_as_valid_http_1_1() {
    let l = layout("");
    // An absolute-form target with an empty path: the upstream gets `/` before the query.
    let (status, _, body) =
        send(&l.gw, "GET http://x.test?/admin HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(received(&body)["uri"], "/?/admin");
    // HTTP/1.0 without a host: the upstream's own, even where the client's is kept.
    let (status, _, body) = send(&l.gw, "GET /y HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(received(&body)["headers"]["host"], l.public.addr.to_string());
}
