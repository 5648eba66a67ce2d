use std::path::Path;

use super::*;

const VALID: &str = "\
server:
  listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
issuers:
  - id: idp
    issuer: https://idp.example
    jwks_file: jwks.json
    audiences: [orders-api]
    algorithms: [RS256, ES256]
routes:
  - id: orders
    match:
      path_prefix: /orders
      methods: [GET, POST]
    upstream: http://127.0.0.1:18080
    authenticate: [jwt]
    authorize:
      scopes: [orders.read]
";

const ISSUERS: &str = "issuers:\n  - id: idp\n    issuer: https://idp.example\n    jwks_file: jwks.json\n    audiences: [orders-api]\n    algorithms: [RS256, ES256]\n";

fn load(text: &str) -> Result<LoadedConfig, ConfigErrors> {
    load_str(text.to_string(), Path::new("/etc/portcullis/gw.yaml"))
}

#[test]
fn the_acceptance_example_loads() {
    let c = load(VALID).unwrap().config;
    assert_eq!(c.routes[0].authenticate, Some(vec![AuthMethod::Jwt]));
    assert_eq!(c.routes[0].matches.methods.as_deref(), Some(&["GET".to_string(), "POST".to_string()][..]));
    assert_eq!(c.server.limits, Limits::default());
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let c = load(VALID).unwrap().config;
    assert_eq!(c.issuers[0].jwks_file.as_deref(), Some(Path::new("/etc/portcullis/jwks.json")));
    let abs = VALID.replace("jwks.json", "/keys/jwks.json");
    assert_eq!(load(&abs).unwrap().config.issuers[0].jwks_file.as_deref(), Some(Path::new("/keys/jwks.json")));
}

/// Every malformed config names the key and the line, and says what is wrong.
#[test]
fn malformed_configs_get_precise_errors() {
    // (what is broken, replace this, with this, expected path, expected line, message part)
    let cases: &[(&str, &str, &str, &str, usize, &str)] = &[
        (
            "unknown key",
            "    upstream: http",
            "    upstrem: x\n    upstream: http",
            "routes[0].upstrem",
            16,
            "unknown key `upstrem`; did you mean `upstream`?",
        ),
        (
            "unknown top-level key",
            "admin:\n",
            "adminn: {}\nadmin:\n",
            "adminn",
            3,
            "unknown key `adminn`; did you mean `admin`?",
        ),
        ("bad listen address", "127.0.0.1:8080", "localhost", "server.listen", 2, "not an IP address and port"),
        (
            "unknown auth method",
            "[jwt]",
            "[jwtt]",
            "routes[0].authenticate[0]",
            17,
            "unknown value `jwtt`; did you mean `jwt`?",
        ),
        (
            "missing upstream",
            "    upstream: http://127.0.0.1:18080\n",
            "",
            "routes[0]",
            12,
            "missing required key `upstream`",
        ),
        (
            "default deny",
            "    authenticate: [jwt]\n",
            "",
            "routes[0].authenticate",
            12,
            "every route must say how callers authenticate",
        ),
        ("empty authenticate", "[jwt]", "[]", "routes[0].authenticate", 17, "empty"),
        (
            "zero tunnel idle time",
            "    authenticate: [jwt]\n",
            "    authenticate: [jwt]\n    timeouts: { tunnel_idle: 0s }\n",
            "routes[0].timeouts.tunnel_idle",
            18,
            "must be longer than zero",
        ),
        (
            "upgrade to h2c",
            "    authenticate: [jwt]\n",
            "    authenticate: [jwt]\n    upgrades: [websocket, h2c]\n",
            "routes[0].upgrades[1]",
            18,
            "never relayed",
        ),
        (
            "upgrade protocol not a token",
            "    authenticate: [jwt]\n",
            "    authenticate: [jwt]\n    upgrades: [\"web socket\"]\n",
            "routes[0].upgrades[0]",
            18,
            "a protocol name",
        ),
        ("none combined", "[jwt]", "[none, jwt]", "routes[0].authenticate", 17, "cannot be combined"),
        (
            "duplicate key",
            "    issuer: https://idp.example\n",
            "    issuer: https://idp.example\n    issuer: https://x\n",
            "issuers[0].issuer",
            8,
            "duplicate",
        ),
        (
            "two key sources",
            "    jwks_file: jwks.json\n",
            "    jwks_file: jwks.json\n    discovery: true\n",
            "issuers[0]",
            6,
            "exactly one key source",
        ),
        ("no key source", "    jwks_file: jwks.json\n", "", "issuers[0]", 6, "exactly one key source"),
        ("no audiences", "[orders-api]", "[]", "issuers[0].audiences", 9, "at least one audience"),
        ("unknown upstream name", "http://127.0.0.1:18080", "orders-svc", "routes[0].upstream", 16, "neither a URL"),
        (
            "two path kinds",
            "      path_prefix: /orders\n",
            "      path_prefix: /orders\n      path: /orders\n",
            "routes[0].match",
            13,
            "at most one",
        ),
        (
            "wrong type",
            "      methods: [GET, POST]",
            "      methods: GET",
            "routes[0].match.methods",
            15,
            "expected a list, found a single value: write `[GET]`",
        ),
        (
            "duration without unit",
            "admin:\n",
            "  drain_timeout: 30\nadmin:\n",
            "server.drain_timeout",
            3,
            "needs a unit",
        ),
        (
            "bad size",
            "admin:\n",
            "  limits: { max_body_bytes: lots }\nadmin:\n",
            "server.limits.max_body_bytes",
            3,
            "invalid size",
        ),
        (
            "redis without url",
            "admin:\n",
            "state: { backend: redis }\nadmin:\n",
            "state.redis_url",
            3,
            "needs `redis_url`",
        ),
        (
            "redis unknown key",
            "admin:\n",
            "state:\n  backend: redis\n  redis_url: redis://127.0.0.1:6379\n  redis:\n    timout: 10ms\nadmin:\n",
            "state.redis.timout",
            7,
            "did you mean `timeout`?",
        ),
        (
            "redis timeout without unit",
            "admin:\n",
            "state:\n  backend: redis\n  redis_url: redis://127.0.0.1:6379\n  redis: { timeout: 50 }\nadmin:\n",
            "state.redis.timeout",
            6,
            "needs a unit",
        ),
        (
            "redis url with another scheme",
            "admin:\n",
            "state:\n  backend: redis\n  redis_url: http://127.0.0.1:6379\nadmin:\n",
            "state.redis_url",
            5,
            "redis:// or rediss://",
        ),
        (
            "redis tls on a plain url",
            "admin:\n",
            "state:\n  backend: redis\n  redis_url: redis://127.0.0.1:6379\n  redis:\n    tls: { ca: ca.pem }\nadmin:\n",
            "state.redis.tls",
            7,
            "rediss://",
        ),
        ("jwt without issuers", ISSUERS, "", "routes[0].authenticate", 11, "needs at least one entry in `issuers`"),
        ("admin on server port", "127.0.0.1:9901", "127.0.0.1:8080", "admin.listen", 4, "must differ"),
        ("yaml syntax", "    match:\n", "    match: [\n", "", 15, "did not find expected"),
        (
            "SPIFFE pattern",
            "      scopes: [orders.read]\n",
            "      spiffe_ids: [\"spiffe://example.org/**/x\"]\n",
            "routes[0].authorize.spiffe_ids[0]",
            19,
            "`**` may only be the last segment",
        ),
        (
            "SPIFFE trust domain",
            "      scopes: [orders.read]\n",
            "      spiffe_ids: [\"spiffe://Example.org/x\"]\n",
            "routes[0].authorize.spiffe_ids[0]",
            19,
            "trust domain",
        ),
        (
            "cedar without policies",
            "      scopes: [orders.read]\n",
            "      cedar: true\n",
            "routes[0].authorize.cedar",
            19,
            "needs `authorization.cedar`",
        ),
        (
            "symmetric DPoP algorithm",
            "routes:\n",
            "dpop:\n  algorithms: [ES256, HS256]\nroutes:\n",
            "dpop.algorithms[1]",
            12,
            "not an asymmetric JWS algorithm",
        ),
        (
            "mtls without a way to verify certificates",
            "    authenticate: [jwt]",
            "    authenticate: [mtls]",
            "routes[0].authenticate",
            17,
            "`mtls` needs `server.tls`",
        ),
        (
            "certificate-bound tokens without TLS",
            "    authenticate: [jwt]",
            "    certificate_bound: true\n    authenticate: [jwt]",
            "routes[0].certificate_bound",
            17,
            "tokens are bound to client certificates",
        ),
        (
            "upstream SPIFFE ID without its bundle",
            "routes:\n",
            "upstreams:\n  b:\n    endpoints: [https://b:1]\n    tls: { spiffe_id: \"spiffe://example.org/b\" }\nroutes:\n",
            "upstreams.b.tls.spiffe_id",
            14,
            "no bundle for trust domain `example.org`",
        ),
        (
            "zero upstream request timeout",
            "routes:\n",
            "upstreams:\n  b:\n    endpoints: [http://b:1]\n    timeouts: { request: 0s }\nroutes:\n",
            "upstreams.b.timeouts.request",
            14,
            "must be longer than zero",
        ),
        (
            "too many idle upstream connections",
            "routes:\n",
            "upstreams:\n  b:\n    endpoints: [http://b:1]\n    max_idle_connections: 1000000\nroutes:\n",
            "upstreams.b.max_idle_connections",
            14,
            "must be at most 65536",
        ),
        (
            "upstream SVID without the gateway's SVID",
            "routes:\n",
            "upstreams:\n  b:\n    endpoints: [https://b:1]\n    tls:\n      svid: true\nroutes:\n",
            "upstreams.b.tls.svid",
            15,
            "needs `spiffe.svid`",
        ),
        (
            "internal token without the token service",
            "      scopes: [orders.read]\n",
            "      scopes: [orders.read]\n    propagate:\n      internal_token: { audience: orders-api }\n",
            "routes[0].propagate.internal_token",
            21,
            "needs the top-level `token_service`",
        ),
        (
            "identity header from an unknown source",
            "      scopes: [orders.read]\n",
            "      scopes: [orders.read]\n    propagate:\n      headers: { X-User: password }\n",
            "routes[0].propagate.headers.X-User",
            21,
            "use one of subject",
        ),
        (
            "identity header the gateway manages",
            "      scopes: [orders.read]\n",
            "      scopes: [orders.read]\n    propagate:\n      headers: { X-Forwarded-For: subject }\n",
            "routes[0].propagate.headers.X-Forwarded-For",
            21,
            "a header the gateway manages",
        ),
        (
            "internal token claim the gateway sets",
            "    authorize:\n      scopes: [orders.read]\n",
            "    propagate:\n      internal_token: { claims: { iss: email } }\n",
            "routes[0].propagate.internal_token.claims.iss",
            19,
            "a claim the gateway sets itself",
        ),
        (
            "symmetric signing key",
            "routes:\n",
            "token_service:\n  issuer: https://gw.internal\n  keys: { algorithm: HS256 }\nroutes:\n",
            "token_service.keys.algorithm",
            13,
            "use ES256, ES384, EdDSA",
        ),
        (
            "keys rotating faster than tokens live",
            "routes:\n",
            "token_service:\n  issuer: https://gw.internal\n  keys: { rotate_every: 60s }\nroutes:\n",
            "token_service.keys.rotate_every",
            13,
            "longer than the longest token lifetime",
        ),
        (
            "token service issuer that is no URL",
            "routes:\n",
            "token_service:\n  issuer: gateway\nroutes:\n",
            "token_service.issuer",
            12,
            "an http(s) URL",
        ),
        (
            "bad claim path",
            "routes:\n",
            "authorization:\n  roles_claim: \"a..b\"\nroutes:\n",
            "authorization.roles_claim",
            12,
            "dotted claim path",
        ),
    ];
    for (what, from, to, path, line, msg) in cases {
        assert!(VALID.contains(from), "case `{what}`: fixture lacks {from:?}");
        let text = VALID.replacen(from, to, 1);
        let errs = load(&text).expect_err(what).0;
        let e = errs
            .iter()
            .find(|e| e.message.contains(msg) && e.path == *path)
            .unwrap_or_else(|| panic!("case `{what}`: no error at `{path}` containing {msg:?}; got {errs:#?}"));
        assert_eq!(e.line, Some(*line), "case `{what}`: {e}");
        assert_eq!(e.file, Path::new("/etc/portcullis/gw.yaml"));
        assert!(!e.message.contains(" at line "), "case `{what}`: location repeated in {:?}", e.message);
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("/etc/portcullis/gw.yaml:{line}:")), "case `{what}`: {shown}");
    }
}

#[test]
fn duplicate_route_ids_are_reported_at_the_second() {
    let text = format!("{VALID}  - id: orders\n    upstream: echo\n    authenticate: [none]\n");
    let errs = load(&text).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "routes[1].id");
    assert_eq!(errs[0].line, Some(20));
    assert!(errs[0].message.contains("duplicate route id `orders`"));
}

#[test]
fn all_problems_are_reported_together() {
    let text = VALID.replace("[orders-api]", "[]").replace("[jwt]", "[]");
    let errs = load(&text).unwrap_err().0;
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn empty_and_unreadable_files() {
    assert!(load("").unwrap_err().to_string().contains("empty"));
    assert!(load("# only a comment\n").unwrap_err().to_string().contains("empty"));
    let e = load_file(Path::new("/nonexistent/portcullis.yaml")).unwrap_err();
    assert!(e.to_string().contains("cannot read config file"), "{e}");
}

#[test]
fn public_routes_cannot_require_scopes() {
    let text = VALID.replace("[jwt]", "[none]");
    let errs = load(&text).unwrap_err().0;
    assert!(errs.iter().any(|e| e.path == "routes[0].authorize"), "{errs:?}");
}

#[test]
fn schema_is_generated_from_the_types() {
    let schema = Config::json_schema();
    let props = &schema["properties"];
    for key in ["server", "admin", "state", "issuers", "upstreams", "routes", "log", "access_log"] {
        assert!(props.get(key).is_some(), "schema lacks `{key}`");
    }
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    let text = serde_json::to_string(&schema).unwrap();
    assert!(text.contains("path_template") && text.contains("client_auth"));
}

#[test]
fn redis_settings_parse_with_defaults() {
    let text = VALID.replace("admin:\n", "state: { backend: redis, redis_url: redis://127.0.0.1:6379 }\nadmin:\n");
    let c = load(&text).unwrap().config;
    assert_eq!(c.state.backend, crate::StateBackend::Redis);
    assert_eq!(c.state.redis.timeout, crate::Duration::from_millis(50));
    assert_eq!(c.state.redis.key_prefix, "portcullis:");
    assert!(c.state.redis.password.is_none() && c.state.redis.tls.is_none());
    let text = VALID.replace(
        "admin:\n",
        "state:\n  backend: redis\n  redis_url: rediss://redis.internal:6380/2\n  redis:\n    username: gw\n    \
         password: { file: redis.pass }\n    timeout: 20ms\n    key_prefix: \"gw-a:\"\n    \
         tls: { ca: ca.pem, cert: c.pem, key: k.pem }\nadmin:\n",
    );
    let errors = load(&text).unwrap_err();
    // The password file does not exist: reported at its key, everything else was accepted.
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path, "state.redis.password", "{errors}");
    let dir = std::env::temp_dir().join(format!("portcullis-redis-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("redis.pass"), "pa55word\n").unwrap();
    let c = load_str(text, &dir.join("gw.yaml")).unwrap().config;
    let r = &c.state.redis;
    assert_eq!(r.password.as_ref().unwrap().expose(), "pa55word");
    assert_eq!(r.username.as_deref(), Some("gw"));
    assert_eq!(r.timeout, crate::Duration::from_millis(20));
    assert_eq!(r.key_prefix, "gw-a:");
    assert_eq!(r.tls.as_ref().unwrap().ca.as_deref(), Some(dir.join("ca.pem").as_path()));
    let dump = serde_json::to_string(&crate::redacted(&c)).unwrap();
    assert!(!dump.contains("pa55word"), "{dump}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn effective_config_dump_has_no_secrets() {
    let text =
        VALID.replace("admin:\n", "state: { backend: redis, redis_url: \"redis://:s3cr3t@127.0.0.1:6379\" }\nadmin:\n");
    let c = load(&text).unwrap().config;
    let dump = serde_json::to_string(&c).unwrap();
    assert!(!dump.contains("s3cr3t"), "{dump}");
    let text = VALID.replace(
        "admin:\n",
        "state:\n  backend: redis\n  redis_url: redis://127.0.0.1:6379\n  redis: { password: \"s3cr3t-inline\" }\nadmin:\n",
    );
    let c = load(&text).unwrap().config;
    let dump = serde_json::to_string(&crate::redacted(&c)).unwrap();
    assert!(!dump.contains("s3cr3t"), "{dump}");
    assert!(format!("{:?}", c.state).contains("redacted"));
}

/// Secret-bearing values that cannot be read are reported by key and line, and the error
/// (as `portcullis check` prints it, and as a rejected reload logs it) shows no secret.
#[test]
fn errors_about_secret_bearing_values_do_not_show_them() {
    // (what is broken, replace this, with this, expected path, expected line, message part, secret)
    let cases: &[(&str, &str, &str, &str, usize, &str, &str)] = &[
        (
            "redis URL with a bad port",
            "admin:\n",
            "state:\n  backend: redis\n  redis_url: \"redis://:hunter2secret@127.0.0.1:6379:bad\"\nadmin:\n",
            "state.redis_url",
            5,
            "not a valid URL",
            "hunter2secret",
        ),
        (
            "redis URL with a user, a password and a bad host",
            "admin:\n",
            "state:\n  redis_url: \"redis://app:hunter2secret@[::1/0\"\nadmin:\n",
            "state.redis_url",
            4,
            "not a valid URL",
            "hunter2secret",
        ),
        (
            "redis URL without a scheme",
            "admin:\n",
            "state:\n  redis_url: \"//:hunter2secret@redis:6379\"\nadmin:\n",
            "state.redis_url",
            4,
            "not a valid URL",
            "hunter2secret",
        ),
        (
            "HMAC secret read as a number",
            "    jwks_file: jwks.json\n",
            "    hmac_secret: 31415926535897932384626433832795\n",
            "issuers[0].hmac_secret",
            8,
            "must be a string",
            "31415926535897932384626433832795",
        ),
        (
            "client secret read as a number",
            "admin:\n",
            "introspection:\n  endpoint: https://as.example/introspect\n  client_id: gw\n  client_secret: 8675309123456\nadmin:\n",
            "introspection.client_secret",
            6,
            "must be a string",
            "8675309123456",
        ),
        (
            "client secret read as a float",
            "admin:\n",
            "introspection:\n  endpoint: https://as.example/introspect\n  client_id: gw\n  client_secret: 6.02214076e23\nadmin:\n",
            "introspection.client_secret",
            6,
            "must be a string",
            "6.02214076",
        ),
        (
            "nonce secret read as a boolean",
            "routes:\n",
            "dpop:\n  nonce_secret: yes\nroutes:\n",
            "dpop.nonce_secret",
            12,
            "must be a string",
            "true",
        ),
        (
            "secret mistyped as a mapping",
            "routes:\n",
            "dpop:\n  nonce_secret: { s3cr3t-nonce-key: x }\nroutes:\n",
            "dpop.nonce_secret",
            12,
            "`env` or `file`",
            "s3cr3t-nonce-key",
        ),
        (
            "secret with a second source",
            "routes:\n",
            "dpop:\n  nonce_secret: { env: NONCE, s3cr3t-nonce-key: x }\nroutes:\n",
            "dpop.nonce_secret",
            12,
            "exactly one of `env` or `file`",
            "s3cr3t-nonce-key",
        ),
    ];
    for (what, from, to, path, line, part, secret) in cases {
        assert!(VALID.contains(from), "{what}: the base config lacks {from:?}");
        let errors = load(&VALID.replacen(from, to, 1)).expect_err(what);
        let e = &errors.0[0];
        assert_eq!(&e.path, path, "{what}: {errors}");
        assert_eq!(e.line, Some(*line), "{what}: {errors}");
        let shown = errors.to_string();
        assert!(shown.contains(part), "{what}: {shown}");
        assert!(shown.contains(&format!(":{line}:")) && shown.contains(&format!(": {path}: ")), "{what}: {shown}");
        assert!(!shown.contains(secret), "{what} shows the secret: {shown}");
        assert!(!format!("{errors:?}").contains(secret), "{what} shows the secret in Debug: {errors:?}");
    }
}

/// A redis URL's password is hidden in errors found after parsing too.
#[test]
fn redis_url_errors_after_parsing_do_not_show_the_password() {
    let text = VALID.replace("admin:\n", "state:\n  redis_url: \"http://:hunter2secret@127.0.0.1:6379\"\nadmin:\n");
    let errors = load(&text).unwrap_err();
    assert_eq!(errors.0[0].path, "state.redis_url", "{errors}");
    assert_eq!(errors.0[0].line, Some(4), "{errors}");
    assert!(!errors.to_string().contains("hunter2secret"), "{errors}");
}

/// Credentials in any configured URL are hidden in the effective config (the admin
/// `/config` dump); the rest of each URL stays readable.
#[test]
fn effective_config_dump_hides_credentials_in_urls() {
    let text = VALID
        .replace(
            "    jwks_file: jwks.json\n",
            "    jwks_uri: \"https://gw:jwks-pa55word@idp.example/jwks.json\"\n",
        )
        .replace(
            "admin:\n",
            "introspection:\n  endpoint: \"https://gw:intro-pa55word@as.example/introspect\"\n  client_id: gw\n  \
             client_secret: client-s3cret\nupstreams:\n  orders:\n    endpoints: [\"http://svc:up-pa55word@10.0.0.5:8080\"]\nadmin:\n",
        )
        .replace("http://127.0.0.1:18080", "\"http://route:route-pa55word@127.0.0.1:18080\"");
    let c = load(&text).unwrap().config;
    assert_eq!(c.issuers[0].jwks_uri.as_deref(), Some("https://gw:jwks-pa55word@idp.example/jwks.json"));
    let dump = serde_json::to_string(&c).unwrap();
    for secret in ["jwks-pa55word", "intro-pa55word", "up-pa55word", "route-pa55word", "client-s3cret"] {
        assert!(!dump.contains(secret), "the dump shows {secret}: {dump}");
    }
    for shown in [
        "https://gw:***@idp.example/jwks.json",
        "https://gw:***@as.example/introspect",
        "http://svc:***@10.0.0.5:8080",
        "http://route:***@127.0.0.1:18080",
    ] {
        assert!(dump.contains(shown), "the dump lacks {shown}: {dump}");
    }
}

/// A file with many mistakes of different kinds: typing stops at none of them.
const MANY_ERRORS: &str = "\
server:
  listen: localhost:80
  drain_timeout: 30
  http2: maybe
  limits: { max_headers: lots, max_body_bytes: 1MiB }
admin:
  listen: 127.0.0.1:9901
issuers:
  - id: idp
    issuer: https://idp.example
    jwks_file: jwks.json
    audiences: orders-api
routes:
  - id: orders
    match:
      path_prefx: /orders
      methods: GET
    upstream: http://127.0.0.1:18080
    authenticate: none
  - id: b
    authenticate: [jwtt]
    zzzz: 1
  - id: b
    upstream: echo
    authenticate: [none]
    timeouts: [1]
";

/// Every typing error is reported in one run, with the rules that span keys, in the order
/// of the file, each with its key path, line and column.
#[test]
fn every_error_is_reported_in_the_order_of_the_file() {
    let errs = load(MANY_ERRORS).unwrap_err().0;
    let expected: &[(&str, usize, usize, &str)] = &[
        ("server.listen", 2, 3, "`localhost:80` is not an IP address and port"),
        ("server.drain_timeout", 3, 3, "a duration needs a unit: write `30s`"),
        ("server.http2", 4, 3, "expected `true` or `false`, found `maybe`"),
        ("server.limits.max_headers", 5, 13, "expected a whole number"),
        ("issuers[0].audiences", 12, 5, "write `[orders-api]`"),
        ("routes[0].match.path_prefx", 16, 7, "unknown key `path_prefx`; did you mean `path_prefix`?"),
        ("routes[0].match.methods", 17, 7, "write `[GET]`"),
        ("routes[0].authenticate", 19, 5, "expected a list, found a single value: write `[none]`"),
        ("routes[1]", 20, 5, "missing required key `upstream`"),
        ("routes[1].authenticate[0]", 21, 20, "unknown value `jwtt`; did you mean `jwt`?"),
        ("routes[1].zzzz", 22, 5, "unknown key `zzzz`; expected one of `id`, `match`"),
        ("routes[2].id", 23, 5, "duplicate route id `b`"),
        ("routes[2].timeouts", 26, 5, "expected a mapping"),
    ];
    let got: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line, e.column)).collect();
    let want: Vec<_> = expected.iter().map(|(p, l, c, _)| (*p, Some(*l), Some(*c))).collect();
    assert_eq!(got, want, "{}", ConfigErrors(errs.clone()));
    for (e, (_, line, column, message)) in errs.iter().zip(expected) {
        assert!(e.message.contains(message), "{e}");
        assert_eq!(e.to_string(), format!("/etc/portcullis/gw.yaml:{line}:{column}: {}: {}", e.path, e.message));
    }
}

/// The stand-ins that let typing go on never show up as problems of their own: a wrong
/// value is reported once, not again by the rules that would judge the stand-in.
#[test]
fn a_wrong_value_is_reported_once() {
    for (from, to, path) in [
        ("[jwt]", "jwt", "routes[0].authenticate"),
        ("[orders-api]", "orders-api", "issuers[0].audiences"),
        ("    upstream: http://127.0.0.1:18080\n", "    upstream: [x]\n", "routes[0].upstream"),
        ("127.0.0.1:8080", "[127.0.0.1]", "server.listen"),
        ("  - id: idp\n", "  - id: { a: b }\n", "issuers[0].id"),
    ] {
        let errs = load(&VALID.replacen(from, to, 1)).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{to}: {}", ConfigErrors(errs.clone()));
        assert_eq!(errs[0].path, path);
    }
}

/// A required mapping whose own required key is wrong does not hide the errors after it.
#[test]
fn errors_after_a_broken_required_key_are_still_found() {
    let text = VALID.replace("  listen: 127.0.0.1:8080\n", "  listen: { ip: 127.0.0.1 }\n").replace("[jwt]", "[jwtt]");
    let errs = load(&text).unwrap_err().0;
    let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["server.listen", "routes[0].authenticate[0]"], "{}", ConfigErrors(errs.clone()));
    let text = "server: {}\nroutes:\n  - id: a\n    upstream: echo\n    authenticate: [none]\n    extra: 1\n";
    let errs = load(text).unwrap_err().0;
    let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["server", "routes[0].extra"], "{}", ConfigErrors(errs.clone()));
    assert!(errs[0].message.contains("missing required key `listen`"), "{}", errs[0]);
}

/// Terse messages say what to write instead.
#[test]
fn messages_say_what_to_write() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("127.0.0.1:8080", "0.0.0.0", "server.listen", "write both, e.g. `127.0.0.1:8080`"),
        ("127.0.0.1:9901", "admin.internal:9901", "admin.listen", "e.g. `127.0.0.1:9901`"),
        ("admin:\n", "  http2: \"perhaps\"\nadmin:\n", "server.http2", "expected `true` or `false`"),
        (
            "admin:\n",
            "  limits: { max_headers: -3 }\nadmin:\n",
            "server.limits.max_headers",
            "a whole number (0 or more)",
        ),
        ("admin:\n", "  tls: server.pem\nadmin:\n", "server.tls", "expected a mapping"),
        ("admin:\n", "  drain_timeout: soon\nadmin:\n", "server.drain_timeout", "write e.g. `250ms`, `10s`, `5m`"),
        ("admin:\n", "  limits: { max_body_bytes: [1] }\nadmin:\n", "server.limits.max_body_bytes", "a size such as"),
        ("      methods: [GET, POST]", "      methods: { GET: 1 }", "routes[0].match.methods", "expected a list"),
        ("    match:\n", "    matchh:\n", "routes[0].matchh", "did you mean `match`?"),
        ("[jwt]", "[JWT]", "routes[0].authenticate[0]", "did you mean `jwt`?"),
        ("[jwt]", "[apikey]", "routes[0].authenticate[0]", "did you mean `api_key`?"),
    ];
    for (from, to, path, message) in cases {
        assert!(VALID.contains(from), "{to}: the base config lacks {from:?}");
        let errs = load(&VALID.replacen(from, to, 1)).unwrap_err().0;
        let e = errs.iter().find(|e| e.path == *path).unwrap_or_else(|| panic!("{to}: no error at {path}: {errs:#?}"));
        assert!(e.message.contains(message), "{to}: {e}");
    }
}

/// A value written where a list of secrets-bearing keys is expected is not repeated.
#[test]
fn suggestions_never_repeat_a_secret_value() {
    let text = VALID.replace(
        "admin:\n",
        "introspection:\n  endpoint: https://as.example/introspect\n  client_id: gw\n  client_secret: [s3cr3t-value]\nadmin:\n",
    );
    let errs = load(&text).unwrap_err();
    assert!(errs.0.iter().any(|e| e.path == "introspection.client_secret"), "{errs}");
    assert!(!errs.to_string().contains("s3cr3t-value"), "{errs}");
}

/// Typing a file, whatever it holds, never panics and always ends: an error list is never
/// empty, and is in the order of the file.
mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("none".to_string()),
            Just("127.0.0.1:80".to_string()),
            Just("localhost:80".to_string()),
            Just("30".to_string()),
            Just("10s".to_string()),
            Just("yes".to_string()),
            Just("~".to_string()),
            Just("\"\"".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("[jwt, none]".to_string()),
            Just("echo".to_string()),
            "[a-z_:./0-9-]{0,12}",
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("server".to_string()),
            Just("listen".to_string()),
            Just("routes".to_string()),
            Just("id".to_string()),
            Just("upstream".to_string()),
            Just("authenticate".to_string()),
            Just("match".to_string()),
            Just("path_prefix".to_string()),
            Just("issuers".to_string()),
            Just("tls".to_string()),
            Just("limits".to_string()),
            Just("timeouts".to_string()),
            Just("upstreams".to_string()),
            Just("admin".to_string()),
            "[a-z_]{1,8}",
        ]
    }

    /// Nested YAML in block style, with config keys more often than not.
    fn node(depth: u32) -> BoxedStrategy<String> {
        let leaf = scalar().boxed();
        leaf.prop_recursive(depth, 48, 5, |inner| {
            prop_oneof![
                proptest::collection::vec((key(), inner.clone()), 0..5).prop_map(|entries| {
                    let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    format!("{{ {} }}", body.join(", "))
                }),
                proptest::collection::vec(inner, 0..4).prop_map(|items| format!("[{}]", items.join(", "))),
            ]
        })
        .boxed()
    }

    fn check(text: &str) {
        if let Err(errs) = load(text) {
            assert!(!errs.0.is_empty());
            let lines: Vec<_> = errs.0.iter().map(|e| (e.line.is_none(), e.line, e.column)).collect();
            assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{errs}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn random_documents(entries in proptest::collection::vec((key(), node(4)), 0..6)) {
            let text: String = entries.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            check(&text);
        }

        #[test]
        fn random_edits_of_a_valid_config(at in 0usize..400, cut in 0usize..40, with in "[ -~\n]{0,12}") {
            let at = VALID.floor_char_boundary(at.min(VALID.len()));
            let end = VALID.floor_char_boundary((at + cut).min(VALID.len()));
            check(&format!("{}{with}{}", &VALID[..at], &VALID[end..]));
        }

        #[test]
        fn random_text(text in "\\PC{0,200}") {
            check(&text);
        }
    }
}
