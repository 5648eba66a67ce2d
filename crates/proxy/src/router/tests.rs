use super::*;
use portcullis_config::OtherMethods;

fn m(host: Option<&str>, kind: &str, path: &str, methods: Option<&[&str]>) -> RouteMatch {
    let mut r = RouteMatch {
        host: host.map(String::from),
        methods: methods.map(|ms| ms.iter().map(|s| s.to_string()).collect()),
        ..RouteMatch::default()
    };
    match kind {
        "exact" => r.path = Some(path.into()),
        "prefix" => r.path_prefix = Some(path.into()),
        "template" => r.path_template = Some(path.into()),
        _ => {}
    }
    r
}

fn router(specs: Vec<(&'static str, RouteMatch)>) -> Router<&'static str> {
    let routes = specs
        .into_iter()
        .enumerate()
        .map(|(i, (name, spec))| (Matcher::compile(&spec, "r", false).unwrap(), name, i))
        .collect();
    Router::new(routes).unwrap()
}

fn find<'a>(r: &'a Router<&'static str>, host: &str, path: &str, method: &str) -> Option<&'a str> {
    match r.find(host, path, &Method::from_bytes(method.as_bytes()).unwrap()) {
        Lookup::Found(t, _) => Some(*t),
        _ => None,
    }
}

#[test]
fn most_specific_wins_whatever_the_order() {
    let specs = vec![
        ("catch-all", m(None, "", "", None)),
        ("orders", m(None, "prefix", "/orders", None)),
        ("orders-get", m(None, "prefix", "/orders", Some(&["GET"]))),
        ("order", m(None, "template", "/orders/{id}", None)),
        ("order-items", m(None, "template", "/orders/{id}/items", None)),
        ("export", m(None, "exact", "/orders/export", None)),
        ("host", m(Some("api.example.com"), "prefix", "/", None)),
        ("wild", m(Some("*.example.com"), "prefix", "/", None)),
    ];
    // Same answers for the routes in either order.
    for reversed in [false, true] {
        let mut s = specs.clone();
        if reversed {
            s.reverse();
        }
        let r = router(s);
        assert_eq!(find(&r, "x", "/orders/export", "GET"), Some("export"));
        assert_eq!(find(&r, "x", "/orders/7", "GET"), Some("order"));
        assert_eq!(find(&r, "x", "/orders/7/items", "POST"), Some("order-items"));
        assert_eq!(find(&r, "x", "/orders/7/items/3", "GET"), Some("orders-get"));
        assert_eq!(find(&r, "x", "/orders/7/items/3", "DELETE"), Some("orders"));
        assert_eq!(find(&r, "x", "/orders", "GET"), Some("orders-get"));
        assert_eq!(find(&r, "x", "/orders-archive", "GET"), Some("catch-all"));
        assert_eq!(find(&r, "api.example.com", "/orders/7", "GET"), Some("host"));
        assert_eq!(find(&r, "eu.example.com", "/orders/7", "GET"), Some("wild"));
        assert_eq!(find(&r, "example.com", "/orders/7", "GET"), Some("order"));
    }
}

#[test]
fn prefixes_match_on_segment_boundaries() {
    let r = router(vec![("o", m(None, "prefix", "/orders", None)), ("s", m(None, "prefix", "/static/", None))]);
    assert_eq!(find(&r, "h", "/orders", "GET"), Some("o"));
    assert_eq!(find(&r, "h", "/orders/", "GET"), Some("o"));
    assert_eq!(find(&r, "h", "/orders/1", "GET"), Some("o"));
    assert_eq!(find(&r, "h", "/ordersX", "GET"), None);
    assert_eq!(find(&r, "h", "/static/app.js", "GET"), Some("s"));
    assert_eq!(find(&r, "h", "/static", "GET"), None);
}

#[test]
fn methods_restrict() {
    let r = router(vec![("get", m(None, "prefix", "/a", Some(&["GET", "head"])))]);
    assert_eq!(find(&r, "h", "/a", "GET"), Some("get"));
    assert_eq!(find(&r, "h", "/a", "HEAD"), Some("get"));
    assert_eq!(find(&r, "h", "/a", "POST"), None);
}

/// The issue of method fall-through: a path a specific route claims never reaches a broader
/// route with another method.
#[test]
fn a_claimed_path_with_another_method_is_405_not_a_broader_route() {
    let r = router(vec![
        ("public", m(None, "", "", None)),
        ("admin", m(None, "prefix", "/admin", Some(&["GET", "POST"]))),
        ("admin-delete", m(None, "prefix", "/admin", Some(&["DELETE"]))),
    ]);
    let get = |method: &str| r.find("h", "/admin/users/1", &Method::from_bytes(method.as_bytes()).unwrap());
    assert!(matches!(get("GET"), Lookup::Found(&"admin", _)));
    assert!(matches!(get("HEAD"), Lookup::Found(&"admin", _)), "HEAD goes where GET does");
    assert!(matches!(get("DELETE"), Lookup::Found(&"admin-delete", _)));
    for other in ["PUT", "PATCH", "OPTIONS", "PROPFIND"] {
        match get(other) {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "DELETE, GET, HEAD, POST", "{other}"),
            found => panic!("{other}: {found:?}"),
        }
    }
    assert!(matches!(r.find("h", "/other", &Method::PUT), Lookup::Found(&"public", _)));

    // A route may say that other methods go on to the next route.
    let open =
        RouteMatch { other_methods: Some(OtherMethods::NextRoute), ..m(None, "prefix", "/admin", Some(&["GET"])) };
    let r = router(vec![("public", m(None, "", "", None)), ("admin", open)]);
    assert!(matches!(r.find("h", "/admin/x", &Method::PUT), Lookup::Found(&"public", _)));
    assert!(matches!(r.find("h", "/admin/x", &Method::HEAD), Lookup::Found(&"admin", _)));
}

#[test]
fn an_exact_path_matches_its_trailing_slash_form() {
    let r = router(vec![("public", m(None, "", "", None)), ("account", m(None, "exact", "/account", None))]);
    assert_eq!(find(&r, "h", "/account", "GET"), Some("account"));
    assert_eq!(find(&r, "h", "/account/", "GET"), Some("account"));
    assert_eq!(find(&r, "h", "/account/x", "GET"), Some("public"));
    assert_eq!(find(&r, "h", "/accounts", "GET"), Some("public"));
    // An exact path written with its slash takes only that form: a broader route keeps the
    // path without it.
    let r = router(vec![("docs", m(None, "prefix", "/docs", None)), ("index", m(None, "exact", "/docs/", None))]);
    assert_eq!(find(&r, "h", "/docs/", "GET"), Some("index"));
    assert_eq!(find(&r, "h", "/docs", "GET"), Some("docs"));
    assert_eq!(find(&r, "h", "/docs/x", "GET"), Some("docs"));
}

#[test]
fn paths_can_be_matched_without_case() {
    let ci = RouteMatch { ignore_case: Some(true), ..m(None, "prefix", "/Admin", None) };
    let r = router(vec![("public", m(None, "", "", None)), ("admin", ci)]);
    for p in ["/admin", "/ADMIN/x", "/aDmIn/"] {
        assert_eq!(find(&r, "h", p, "GET"), Some("admin"), "{p}");
    }
    assert_eq!(find(&r, "h", "/admins", "GET"), Some("public"));
    // The listener-wide default, and template parameters keep their case.
    let t = Matcher::compile(&m(None, "template", "/Users/{id}", None), "r", true).unwrap();
    let r = Router::new(vec![(t, "user", 0)]).unwrap();
    let Lookup::Found(_, params) = r.find("h", "/USERS/AbC", &Method::GET) else { panic!() };
    assert_eq!(&*params[0].1, "AbC");
    // Parameter names are kept as written: policies read them by name.
    let t = Matcher::compile(&m(None, "template", "/Orders/{orderId}", None), "r", true).unwrap();
    let r = Router::new(vec![(t, "order", 0)]).unwrap();
    let Lookup::Found(_, params) = r.find("h", "/orders/7", &Method::GET) else { panic!() };
    assert_eq!((&*params[0].0, &*params[0].1), ("orderId", "7"));
    // Characters Java and .NET fold to ASCII letters are refused where case is ignored.
    let ci = RouteMatch { ignore_case: Some(true), ..m(None, "prefix", "/admin", None) };
    let r = router(vec![("public", m(None, "", "", None)), ("admin", ci)]);
    for p in ["/adm%C4%B1n", "/ADM%c4%b0N", "/%C5%BFecret", "/%E2%84%AAey", "/adm\u{131}n"] {
        assert_eq!(r.route("h", p, &Method::GET).map(|x| *x.route), Err(RouteError::CaseFold), "{p}");
    }
    assert_eq!(r.route("h", "/caf%C3%A9", &Method::GET).map(|x| *x.route), Ok("public"));
    // Case-sensitive by default.
    let r = router(vec![("admin", m(None, "prefix", "/admin", None))]);
    assert_eq!(find(&r, "h", "/ADMIN", "GET"), None);
}

#[test]
fn hosts_match_without_a_trailing_dot() {
    let r = router(vec![("a", m(Some("Admin.Example.com."), "", "", None)), ("b", m(None, "", "", None))]);
    let host = route_host("ADMIN.example.com.:8080").unwrap();
    assert_eq!(find(&r, &host, "/", "GET"), Some("a"));
    assert_eq!(find(&r, "admin.example.com", "/", "GET"), Some("a"));
}

fn route<'a>(r: &'a Router<&'static str>, path: &str) -> Result<(&'a str, String), RouteError> {
    r.route("h", path, &Method::GET).map(|x| (*x.route, x.forward.unwrap_or_else(|| x.path.into_owned())))
}

#[test]
fn path_parameters_are_refused_unless_a_route_takes_them_and_every_reading_agrees() {
    let r = router(vec![("public", m(None, "", "", None)), ("admin", m(None, "prefix", "/admin", None))]);
    for p in [
        "/static/..;/admin",
        "/x/..;/admin/users",
        "/admin;jsessionid=1",
        "/admin;/x",
        "/static/%2e%2e;/admin",
        "/static/..%3B/admin",
        "/public;x",
    ] {
        assert_eq!(route(&r, p), Err(RouteError::PathParameters), "{p}");
    }
    assert_eq!(route(&r, "/admin/../public"), Ok(("public", "/public".into())));

    let takes = |prefix: &str| RouteMatch { path_parameters: true, ..m(None, "prefix", prefix, None) };
    let r = router(vec![
        ("public", m(None, "", "", None)),
        ("shop", takes("/shop")),
        ("admin", m(None, "prefix", "/admin", None)),
    ]);
    // Parameters kept upstream; dot segments with parameters resolved.
    assert_eq!(route(&r, "/shop;jsessionid=A1/cart"), Ok(("shop", "/shop;jsessionid=A1/cart".into())));
    assert_eq!(route(&r, "/shop/x/..;y/cart;v=1"), Ok(("shop", "/shop/cart;v=1".into())));
    let x = r.route("h", "/shop;s=1/cart", &Method::GET).unwrap();
    assert_eq!(x.path, "/shop/cart", "routes and policies see the parameters removed");
    // Readings that part: `..;` is `..` to a servlet container and a name to nginx.
    assert_eq!(route(&r, "/admin/..;/shop/x"), Err(RouteError::PathParameters));
    assert_eq!(route(&r, "/shop/..;/admin"), Err(RouteError::PathParameters));
    assert_eq!(route(&r, "/shop/;x/../../admin"), Err(RouteError::PathParameters));
}

#[test]
fn template_parameters_are_captured() {
    let r = router(vec![("t", m(None, "template", "/orders/{id}/items/{item}", None))]);
    let Lookup::Found(_, params) = r.find("h", "/orders/42/items/x%20y", &Method::GET) else { panic!("no route") };
    let got: Vec<(&str, &str)> = params.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(got, [("id", "42"), ("item", "x%20y")]);
    assert!(matches!(r.find("h", "/orders//items/1", &Method::GET), Lookup::NotFound));
    assert!(matches!(r.find("h", "/orders/1/items/2/3", &Method::GET), Lookup::NotFound));
    // A trailing slash is the same resource, as most servers serve it.
    assert!(matches!(r.find("h", "/orders/1/items/2/", &Method::GET), Lookup::Found(..)));
    assert!(matches!(r.find("h", "/orders/1/items/2//", &Method::GET), Lookup::NotFound));
}

#[test]
fn identical_routes_are_refused() {
    let a = Matcher::compile(&m(None, "prefix", "/a", Some(&["GET", "POST"])), "r", false).unwrap();
    let b = Matcher::compile(&m(None, "prefix", "/a", Some(&["POST"])), "r", false).unwrap();
    let c = Matcher::compile(&m(None, "prefix", "/a", Some(&["PUT"])), "r", false).unwrap();
    let errs = Router::new(vec![(a.clone(), 1, 0), (b, 2, 1)]).unwrap_err();
    assert_eq!(errs[0].path, "routes[1].match");
    assert!(Router::new(vec![(a, 1, 0), (c, 2, 1)]).is_ok());
}

#[test]
fn bad_match_specs_are_config_errors() {
    let cases: &[(RouteMatch, &str, &str)] = &[
        (m(None, "template", "/orders/{id", None), "r.path_template", "whole segment"),
        (m(None, "template", "/orders/{id}/{id}", None), "r.path_template", "twice"),
        (m(None, "template", "/orders", None), "r.path_template", "no `{parameter}`"),
        (m(None, "template", "/a/{1x}", None), "r.path_template", "not a valid parameter"),
        (m(None, "prefix", "orders", None), "r.path_prefix", "start with"),
        (m(None, "exact", "/a/../b", None), "r.path", "write `/b`"),
        (m(Some("api.example.com:8080"), "", "", None), "r.host", "without a port"),
        (m(Some("*."), "", "", None), "r.host", "wildcard"),
        (m(None, "", "", Some(&["G ET"])), "r.methods[0]", "not a valid HTTP method"),
        (m(None, "", "", Some(&["purge"])), "r.methods[0]", "case-sensitive"),
        (m(None, "", "", Some(&["GET", "get"])), "r.methods[1]", "twice"),
        (m(None, "", "", Some(&[])), "r.methods", "empty"),
        (
            RouteMatch { other_methods: Some(OtherMethods::NextRoute), ..m(None, "prefix", "/a", None) },
            "r.other_methods",
            "needs `methods`",
        ),
    ];
    for (spec, path, msg) in cases {
        let errs = Matcher::compile(spec, "r", false).unwrap_err();
        assert!(errs.iter().any(|e| e.path == *path && e.message.contains(msg)), "{spec:?}: {errs:?}");
    }
}

/// How a servlet container (Tomcat, Spring on Tomcat) reads a path: `;` parameters cut from
/// each segment first, then percent-decoding, then `//` merged and dot segments resolved.
/// `None` where it refuses the request (an encoded slash, backslash or NUL, or `..` above the
/// root).
fn servlet_reading(raw: &str) -> Option<String> {
    let stripped: Vec<&str> = raw.split('/').map(|seg| seg.split(';').next().unwrap_or("")).collect();
    let decoded = percent_decode(&stripped.join("/"), false)?;
    resolve_dots(&decoded)
}

/// How nginx reads a path: percent-decoding (an encoded slash becomes a separator), then
/// `//` merged and dot segments resolved; `;` is an ordinary character.
fn nginx_reading(raw: &str) -> Option<String> {
    resolve_dots(&percent_decode(raw, true)?)
}

fn percent_decode(raw: &str, slash_ok: bool) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let v = u8::from_str_radix(raw.get(i + 1..i + 3)?, 16).ok()?;
            if v == 0 || v == b'\\' || (v == b'/' && !slash_ok) {
                return None;
            }
            out.push(v);
            i += 3;
        } else if b[i] == b'\\' {
            return None;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn resolve_dots(path: &str) -> Option<String> {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in path.strip_prefix('/')?.split('/') {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            s => stack.push(s),
        }
    }
    Some(format!("/{}{}", stack.join("/"), if trailing && !stack.is_empty() { "/" } else { "" }))
}

/// The protected resources of the layout below, as an upstream would act on them.
fn protected(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/") || path == "/account" || path == "/account/"
}

const PIECES: &[&str] = &[
    "/",
    "admin",
    "account",
    "static",
    "x",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    ".%2e",
    ";",
    ";jsessionid=1",
    "..;",
    ".;",
    "%3b",
    "%3B",
    "%2f",
    "%5c",
    "%61dmin",
    "ADMIN",
    "//",
    "%2e;",
    ";/",
    "a%64min",
    "%20",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

    /// No request is routed to the public catch-all while a servlet container or nginx,
    /// reading the same bytes (as received, or as the gateway forwards them), would act on a
    /// protected path.
    #[test]
    fn the_public_route_never_serves_what_an_upstream_reads_as_protected(
        pieces in proptest::collection::vec(proptest::sample::select(PIECES), 1..9),
        method in proptest::sample::select(&["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"][..]),
        shop_takes_parameters in proptest::bool::ANY,
    ) {
        let raw = format!("/{}", pieces.concat());
        let shop = RouteMatch { path_parameters: shop_takes_parameters, ..m(None, "prefix", "/static", None) };
        let r = router(vec![
            ("public", m(None, "", "", None)),
            ("admin", m(None, "prefix", "/admin", Some(&["GET", "POST"]))),
            ("account", m(None, "exact", "/account", None)),
            ("static", shop),
        ]);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        if let Ok(routed) = r.route("h", &raw, &method)
            && (*routed.route == "public" || *routed.route == "static")
        {
            let forwarded = routed.forward.clone().unwrap_or_else(|| routed.path.to_string());
            for (what, reading) in [
                ("servlet", servlet_reading(&raw)),
                ("nginx", nginx_reading(&raw)),
                ("servlet, as forwarded", servlet_reading(&forwarded)),
                ("nginx, as forwarded", nginx_reading(&forwarded)),
            ] {
                if let Some(p) = reading {
                    proptest::prop_assert!(
                        !protected(&p),
                        "{raw} went to {} but a {what} reading is {p} (forwarded {forwarded})",
                        routed.route
                    );
                }
            }
        }
    }
}

proptest::proptest! {
    /// Whatever the authority, reading its host never panics, and a host it accepts has one
    /// reading: no port left, no `%`, no empty label, lower case.
    #[test]
    fn a_host_that_is_read_has_one_reading(raw in "[a-zA-Z0-9.:%\\[\\]+-]{0,24}") {
        if let Ok((host, dotted)) = read_host(&raw) {
            if !host.starts_with('[') {
                proptest::prop_assert!(!host.contains([':', '%']), "{raw} -> {host}");
                proptest::prop_assert!(host.is_empty() || host.split('.').all(|l| !l.is_empty()), "{raw} -> {host}");
            }
            proptest::prop_assert!(!host.bytes().any(|b| b.is_ascii_uppercase()));
            proptest::prop_assert!(raw.to_ascii_lowercase().starts_with(&*host), "{raw} -> {host}");
            if dotted {
                let with_dot = format!("{host}.");
                proptest::prop_assert!(raw.to_ascii_lowercase().starts_with(&with_dot), "{raw}");
            }
        }
    }
}
