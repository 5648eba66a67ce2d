use super::*;

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
        .map(|(i, (name, spec))| (Matcher::compile(&spec, "r").unwrap(), name, i))
        .collect();
    Router::new(routes).unwrap()
}

fn find<'a>(r: &'a Router<&'static str>, host: &str, path: &str, method: &str) -> Option<&'a str> {
    r.find(host, path, &Method::from_bytes(method.as_bytes()).unwrap()).map(|(t, _)| *t)
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
fn methods_restrict_and_unmatched_methods_fall_through() {
    let r = router(vec![("get", m(None, "prefix", "/a", Some(&["GET", "head"])))]);
    assert_eq!(find(&r, "h", "/a", "GET"), Some("get"));
    assert_eq!(find(&r, "h", "/a", "HEAD"), Some("get"));
    assert_eq!(find(&r, "h", "/a", "POST"), None);
}

#[test]
fn template_parameters_are_captured() {
    let r = router(vec![("t", m(None, "template", "/orders/{id}/items/{item}", None))]);
    let (_, params) = r.find("h", "/orders/42/items/x%20y", &Method::GET).unwrap();
    let got: Vec<(&str, &str)> = params.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(got, [("id", "42"), ("item", "x%20y")]);
    assert!(r.find("h", "/orders//items/1", &Method::GET).is_none());
    assert!(r.find("h", "/orders/1/items/2/3", &Method::GET).is_none());
}

#[test]
fn identical_routes_are_refused() {
    let a = Matcher::compile(&m(None, "prefix", "/a", Some(&["GET", "POST"])), "r").unwrap();
    let b = Matcher::compile(&m(None, "prefix", "/a", Some(&["POST"])), "r").unwrap();
    let c = Matcher::compile(&m(None, "prefix", "/a", Some(&["PUT"])), "r").unwrap();
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
    ];
    for (spec, path, msg) in cases {
        let errs = Matcher::compile(spec, "r").unwrap_err();
        assert!(errs.iter().any(|e| e.path == *path && e.message.contains(msg)), "{spec:?}: {errs:?}");
    }
}
