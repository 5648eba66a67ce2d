//! The match stage: which route takes a request.
//!
//! Routes are ordered once, when the config is compiled, from most to least specific; a
//! request takes the first that matches, so the result never depends on the order routes
//! were written in (except between routes that are equally specific but cannot both match:
//! those are kept in file order). Specificity, in order of importance:
//!
//! 1. host: exact name, then wildcard (longer suffix first), then any host;
//! 2. path: exact path, then template (more literal segments first), then prefix (longer
//!    first);
//! 3. methods: a route limited to some methods before one that takes all.
//!
//! Two routes that would match exactly the same requests are a config error.
//!
//! A route claims the requests its host and path match. One with a method it does not list
//! gets `405` with `Allow`, not a less specific route, unless the route says `other_methods:
//! next_route`; `HEAD` goes wherever `GET` does (RFC 9110 §9.3.2). An exact path also matches
//! its trailing-slash form, as a template does, since most servers serve both alike. Hosts are
//! compared without case, port and a single trailing dot.
//!
//! Paths are read the way the servers behind the gateway read them: see [`path`] and
//! [`Router::route`].

pub mod path;

use std::cmp::Reverse;
use std::sync::Arc;

use std::borrow::Cow;

use http::Method;
use portcullis_config::{Invalid, OtherMethods, RouteMatch};

/// Values of the named parameters of a path template, in template order.
pub type PathParams = Vec<(Arc<str>, Box<str>)>;

/// The compiled form of a route's `match`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    host: HostMatch,
    path: PathMatch,
    methods: Option<Box<[Method]>>,
    /// Other methods go on to a less specific route.
    next_route: bool,
    /// Path literals are stored in lower case and compared without case.
    ignore_case: bool,
    /// Paths with segment parameters are taken.
    path_parameters: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` is stored as `.example.com`.
    Suffix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Template(Box<[Segment]>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(Arc<str>),
}

impl Matcher {
    /// Compiles a route's `match`; `at` is its key path, for errors. `ignore_case` is the
    /// listener's default (`server.ignore_path_case`).
    pub fn compile(m: &RouteMatch, at: &str, ignore_case: bool) -> Result<Matcher, Vec<Invalid>> {
        let ignore_case = m.ignore_case.unwrap_or(ignore_case);
        let fold = |p: &str| if ignore_case { p.to_ascii_lowercase() } else { p.to_string() };
        let mut errors = Vec::new();
        let host = match &m.host {
            None => HostMatch::Any,
            Some(h) => match compile_host(h) {
                Ok(h) => h,
                Err(msg) => {
                    errors.push(Invalid::new(format!("{at}.host"), msg));
                    HostMatch::Any
                }
            },
        };
        let path = if let Some(p) = &m.path {
            check_path(p, &format!("{at}.path"), &mut errors);
            PathMatch::Exact(fold(p))
        } else if let Some(p) = &m.path_prefix {
            check_path(p, &format!("{at}.path_prefix"), &mut errors);
            if p == "/" { PathMatch::Any } else { PathMatch::Prefix(fold(p)) }
        } else if let Some(t) = &m.path_template {
            match compile_template(t) {
                // Literals compared without case; parameter names kept as written.
                Ok(segs) => PathMatch::Template(
                    segs.into_iter()
                        .map(|seg| match seg {
                            Segment::Literal(l) => Segment::Literal(fold(&l)),
                            param => param,
                        })
                        .collect(),
                ),
                Err(msg) => {
                    errors.push(Invalid::new(format!("{at}.path_template"), msg));
                    PathMatch::Any
                }
            }
        } else {
            PathMatch::Any
        };
        let methods = match &m.methods {
            None => None,
            Some(list) if list.is_empty() => {
                errors.push(Invalid::new(format!("{at}.methods"), "empty: omit `methods` to allow all methods"));
                None
            }
            Some(list) => {
                let mut out: Vec<Method> = Vec::new();
                for (i, name) in list.iter().enumerate() {
                    match parse_method(name) {
                        Ok(m) if out.contains(&m) => {
                            errors.push(Invalid::new(format!("{at}.methods[{i}]"), format!("`{name}` is listed twice")))
                        }
                        Ok(m) => out.push(m),
                        Err(msg) => errors.push(Invalid::new(format!("{at}.methods[{i}]"), msg)),
                    }
                }
                Some(out.into_boxed_slice())
            }
        };
        let next_route = m.other_methods == Some(OtherMethods::NextRoute);
        if next_route && methods.is_none() {
            errors.push(Invalid::new(
                format!("{at}.other_methods"),
                "`next_route` needs `methods`: a route without them takes every method",
            ));
        }
        if errors.is_empty() {
            Ok(Matcher { host, path, methods, next_route, ignore_case, path_parameters: m.path_parameters })
        } else {
            Err(errors)
        }
    }

    /// Specificity: a larger key is more specific.
    fn rank(&self) -> (u8, usize, u8, usize, usize, bool) {
        let (host_rank, host_len) = match &self.host {
            HostMatch::Exact(h) => (2, h.len()),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Any => (0, 0),
        };
        let (path_rank, a, b) = match &self.path {
            PathMatch::Exact(p) => (3, p.len(), 0),
            PathMatch::Template(segs) => {
                let literals = segs.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
                (2, literals, segs.len())
            }
            PathMatch::Prefix(p) => (1, p.len(), 0),
            PathMatch::Any => (0, 0, 0),
        };
        (host_rank, host_len, path_rank, a, b, self.methods.is_some())
    }

    /// Whether two matchers claim the same hosts and paths.
    fn same_place(&self, other: &Matcher) -> bool {
        self.host == other.host && self.path == other.path && self.ignore_case == other.ignore_case
    }

    /// Whether two matchers would take exactly the same requests for some method.
    fn collides(&self, other: &Matcher) -> bool {
        if !self.same_place(other) {
            return false;
        }
        match (&self.methods, &other.methods) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => false,
        }
    }

    /// Whether the request's host and path match; with the template's parameters when it has
    /// some. `host` is lower-case without port or trailing dot; `path` is normalised.
    pub fn matches_place(&self, host: &str, path: &str) -> Option<PathParams> {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        if !host_ok {
            return None;
        }
        let ci = self.ignore_case;
        match &self.path {
            PathMatch::Any => Some(Vec::new()),
            PathMatch::Exact(p) => exact_matches(p, path, ci).then(Vec::new),
            PathMatch::Prefix(p) => prefix_matches(p, path, ci).then(Vec::new),
            PathMatch::Template(segs) => template_matches(segs, path, ci),
        }
    }

    /// Whether the route takes `method`: listed, or `HEAD` where `GET` is (RFC 9110 §9.3.2).
    pub fn takes(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(list) => list.contains(method) || (method == Method::HEAD && list.contains(&Method::GET)),
        }
    }

    /// The length of the literal prefix matched (for `rewrite.path_prefix`).
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) => Some(p),
            PathMatch::Any => Some(""),
            _ => None,
        }
    }
}

/// `text` equals `lit` (in lower case when `ci`).
fn same_text(lit: &str, text: &str, ci: bool) -> bool {
    if ci { lit.eq_ignore_ascii_case(text) } else { lit == text }
}

/// `/account` matches `/account` and `/account/`; `/docs/` only `/docs/` (a broader route may
/// claim `/docs`, and must keep it).
fn exact_matches(exact: &str, path: &str, ci: bool) -> bool {
    if same_text(exact, path, ci) {
        return true;
    }
    !exact.ends_with('/')
        && path.len() == exact.len() + 1
        && path.ends_with('/')
        && same_text(exact, &path[..exact.len()], ci)
}

/// `/orders` matches `/orders` and `/orders/…`, never `/orders-archive`. A prefix ending in
/// `/` matches only below it.
fn prefix_matches(prefix: &str, path: &str, ci: bool) -> bool {
    match path.get(..prefix.len()) {
        Some(head) if same_text(prefix, head, ci) => {
            let rest = &path[prefix.len()..];
            rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/')
        }
        _ => false,
    }
}

/// One segment a template part, and at most a trailing slash after the last.
fn template_matches(segs: &[Segment], path: &str, ci: bool) -> Option<PathParams> {
    let mut parts = path[1..].split('/');
    let mut params = Vec::new();
    for seg in segs {
        let part = parts.next()?;
        match seg {
            Segment::Literal(l) => {
                if !same_text(l, part, ci) {
                    return None;
                }
            }
            Segment::Param(name) => {
                if part.is_empty() {
                    return None;
                }
                params.push((name.clone(), part.into()));
            }
        }
    }
    match (parts.next(), parts.next()) {
        (None, _) | (Some(""), None) => Some(params),
        _ => None,
    }
}

fn compile_host(h: &str) -> Result<HostMatch, String> {
    let lower = h.to_ascii_lowercase();
    let valid_label = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if let Some(suffix) = lower.strip_prefix("*.") {
        if !valid_label(suffix) || suffix.starts_with('.') {
            return Err(format!("`{h}` is not a valid wildcard host; write e.g. `*.example.com`"));
        }
        return Ok(HostMatch::Suffix(format!(".{suffix}")));
    }
    // A single trailing dot names the same host (a fully qualified name); requests are
    // compared without it too.
    let lower = match lower.strip_suffix('.') {
        Some(l) if !l.is_empty() && !l.ends_with('.') => l.to_string(),
        _ => lower,
    };
    if lower.contains(':') && !lower.starts_with('[') {
        return Err(format!("`{h}`: give the host without a port"));
    }
    if !(valid_label(&lower) || lower.starts_with('[') && lower.ends_with(']')) {
        return Err(format!("`{h}` is not a valid host name"));
    }
    Ok(HostMatch::Exact(lower))
}

fn check_path(p: &str, at: &str, errors: &mut Vec<Invalid>) {
    match path::normalize(p, false) {
        Ok(n) if n == p => {}
        Ok(n) => errors.push(Invalid::new(at, format!("`{p}` is not a normalised path; write `{n}`"))),
        Err(e) => errors.push(Invalid::new(at, format!("`{p}`: {}", e.detail()))),
    }
}

fn compile_template(t: &str) -> Result<Box<[Segment]>, String> {
    if !t.starts_with('/') {
        return Err(format!("`{t}` must start with `/`"));
    }
    let mut names: Vec<&str> = Vec::new();
    let mut segs = Vec::new();
    for part in t[1..].split('/') {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let valid = inner.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("`{{{inner}}}` is not a valid parameter name (letters, digits, `_`)"));
            }
            if names.contains(&inner) {
                return Err(format!("parameter `{inner}` appears twice"));
            }
            names.push(inner);
            segs.push(Segment::Param(inner.into()));
        } else if part.contains(['{', '}']) {
            return Err(format!("`{part}`: a parameter must be a whole segment, like `{{id}}`"));
        } else {
            segs.push(Segment::Literal(part.to_string()));
        }
    }
    if names.is_empty() {
        return Err("has no `{parameter}`; use `path` for a fixed path".into());
    }
    let literal: String = t.replace(['{', '}'], "");
    match path::normalize(&literal, false) {
        Ok(n) if n == literal => Ok(segs.into_boxed_slice()),
        _ => Err(format!("`{t}` is not a normalised path")),
    }
}

fn parse_method(name: &str) -> Result<Method, String> {
    let upper = name.to_ascii_uppercase();
    if upper != name && !matches!(upper.as_str(), "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") {
        return Err(format!("methods are case-sensitive: `{name}` is not `{upper}`"));
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| format!("`{name}` is not a valid HTTP method"))
}

/// Routes in match order.
#[derive(Debug)]
pub struct Router<T> {
    entries: Box<[(Matcher, T)]>,
    /// Some route matches paths without case.
    ignore_case: bool,
}

impl<T> Router<T> {
    /// Orders `routes` by specificity. `ids` name them for collision errors (`routes[i]`).
    pub fn new(routes: Vec<(Matcher, T, usize)>) -> Result<Router<T>, Vec<Invalid>> {
        let mut errors = Vec::new();
        for (i, (a, _, ia)) in routes.iter().enumerate() {
            for (b, _, ib) in &routes[..i] {
                if a.collides(b) {
                    errors.push(Invalid::new(
                        format!("routes[{ia}].match"),
                        format!("matches exactly the same requests as routes[{ib}]; make one more specific"),
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut routes = routes;
        // Stable: equally specific routes keep file order.
        routes.sort_by_key(|(m, _, _)| Reverse(m.rank()));
        let ignore_case = routes.iter().any(|(m, _, _)| m.ignore_case);
        Ok(Router { entries: routes.into_iter().map(|(m, t, _)| (m, t)).collect(), ignore_case })
    }

    /// The most specific route for a request whose path is already read (see [`path::read`]).
    /// `host` is as [`route_host`] gives it.
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Lookup<'_, T> {
        match self.lookup(host, path, method) {
            Ok((i, params)) => Lookup::Found(&self.entries[i].1, params),
            Err(RouteError::MethodNotAllowed(allow)) => Lookup::MethodNotAllowed(allow),
            Err(_) => Lookup::NotFound,
        }
    }

    /// [`Router::find`], with the entry's index.
    fn lookup(&self, host: &str, path: &str, method: &Method) -> Result<(usize, PathParams), RouteError> {
        // The first route whose place matched but not its method, and that refuses others:
        // only routes at the same place may still take the request.
        let mut claimed: Option<&Matcher> = None;
        for (i, (m, _)) in self.entries.iter().enumerate() {
            if let Some(c) = claimed
                && !c.same_place(m)
            {
                continue;
            }
            let Some(params) = m.matches_place(host, path) else { continue };
            if m.takes(method) {
                return Ok((i, params));
            }
            if claimed.is_none() && !m.next_route {
                claimed = Some(m);
            }
        }
        Err(match claimed {
            Some(c) => RouteError::MethodNotAllowed(self.allowed(c)),
            None => RouteError::NotFound,
        })
    }

    /// The methods routes at `place` take, for `Allow`: `HEAD` with `GET`.
    #[cold]
    fn allowed(&self, place: &Matcher) -> String {
        let mut methods: Vec<&str> = Vec::new();
        for (m, _) in self.entries.iter().filter(|(m, _)| m.same_place(place)) {
            for method in m.methods.iter().flatten() {
                if !methods.contains(&method.as_str()) {
                    methods.push(method.as_str());
                }
            }
        }
        if methods.contains(&"GET") && !methods.contains(&"HEAD") {
            methods.push("HEAD");
        }
        methods.sort_unstable();
        methods.join(", ")
    }

    /// Routes a request as the live pipeline does: reads the raw path (see [`path::read`]),
    /// refuses what cannot be read one way, and finds the route.
    ///
    /// A path with segment parameters (`;`) is taken only by a route with
    /// `match.path_parameters`, and only when both readings of its dot segments lead to that
    /// route: `..;` as `..` (servlet containers) and `..;` as a name (nginx, Express), each
    /// compared with the parameters set aside. What is forwarded has its dot segments
    /// resolved, so an upstream of either kind reads it as the route did. Anything else is
    /// refused: the gateway never routes a request one way that a server behind it reads
    /// another.
    pub fn route<'p>(&self, host: &str, raw_path: &'p str, method: &Method) -> Result<Routed<'_, 'p, T>, RouteError> {
        let reading = path::read(raw_path, false).map_err(RouteError::BadPath)?;
        if self.ignore_case && folds_to_ascii(&reading.path) {
            return Err(RouteError::CaseFold);
        }
        let (i, params) = self.lookup(host, &reading.path, method)?;
        if reading.has_parameters {
            if !self.entries[i].0.path_parameters {
                return Err(RouteError::PathParameters);
            }
            // `..;` kept as a name, then the parameters set aside: `/admin/..;/shop` is under
            // `/admin` to nginx, and must not be taken as `/shop`.
            let literal = path::normalize(raw_path, false).map_err(RouteError::BadPath)?;
            let as_named = path::strip_parameters(&literal);
            if !self.lookup(host, &as_named, method).is_ok_and(|(j, _)| j == i) {
                return Err(RouteError::PathParameters);
            }
        }
        Ok(Routed { route: &self.entries[i].1, params, path: reading.path, forward: reading.forward })
    }

    /// The routes, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = (&Matcher, &T)> {
        self.entries.iter().map(|(m, t)| (m, t))
    }
}

/// What [`Router::find`] found.
#[derive(Debug)]
pub enum Lookup<'r, T> {
    /// The route, with its template's parameters.
    Found(&'r T, PathParams),
    /// A route claims the host and path but not the method; the methods it takes, for
    /// `Allow`.
    MethodNotAllowed(String),
    /// No route matches.
    NotFound,
}

/// A routed request: the route, and the path as routes, policies and the upstream see it.
#[derive(Debug)]
pub struct Routed<'r, 'p, T> {
    /// The route that takes the request.
    pub route: &'r T,
    /// The template's parameters.
    pub params: PathParams,
    /// The normalised path routes and policies see.
    pub path: Cow<'p, str>,
    /// The path to forward, when it differs from `path` (segment parameters kept).
    pub forward: Option<String>,
}

/// Why a request has no route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// The path cannot be read safely (`400`).
    BadPath(path::PathError),
    /// The path has segment parameters no route takes, or that could be read as two routes
    /// (`400`).
    PathParameters,
    /// With paths matched without case, the path holds a character that case-insensitive
    /// servers fold to an ASCII letter (`400`).
    CaseFold,
    /// A route claims the host and path but not the method (`405`); `Allow`'s value.
    MethodNotAllowed(String),
    /// No route matches (`404`).
    NotFound,
}

/// Why a request's host was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadHost;

/// The host for route matching, of an authority (`Host`, `:authority`): lower-case, without
/// port or a single trailing dot (`Admin.Example.com.:443` is `admin.example.com`). Refused:
/// a port that is not up to five digits (`host:abc`, `host:80:80`: nginx, Express and Go cut
/// the host at the first `:` and would serve `host`), an empty label (`a..b`, `.a`), more than
/// one trailing dot, and percent-encodings, which servers decode differently.
pub fn route_host(authority: &str) -> Result<Cow<'_, str>, BadHost> {
    read_host(authority).map(|(host, _)| host)
}

/// [`route_host`], and whether the host had a trailing dot (which the forwarded `Host` must
/// then lose too). One pass over the bytes: every request reads its host.
pub fn read_host(authority: &str) -> Result<(Cow<'_, str>, bool), BadHost> {
    let b = authority.as_bytes();
    if b.first() == Some(&b'[') {
        // An IP literal: `[…]`, then nothing or a port.
        let close = b.iter().position(|&c| c == b']').ok_or(BadHost)?;
        let port = &b[close + 1..];
        if !port.is_empty() && (port[0] != b':' || port.len() > 6 || !port[1..].iter().all(u8::is_ascii_digit)) {
            return Err(BadHost);
        }
        return Ok((lower(&authority[..=close]), false));
    }
    // The port: up to five digits after the last `:`.
    let mut start = b.len();
    while start > 0 && b[start - 1].is_ascii_digit() {
        start -= 1;
    }
    let end = if start > 0 && b[start - 1] == b':' {
        if b.len() - start > 5 {
            return Err(BadHost);
        }
        start - 1
    } else {
        b.len()
    };
    let (end, dotted) = if end > 0 && b[end - 1] == b'.' { (end - 1, true) } else { (end, false) };
    if dotted && end == 0 {
        return Err(BadHost);
    }
    // Labels are not empty; no `%` (decoded differently) and no `:` (a port that is no port).
    let mut prev = b'.';
    for &c in &b[..end] {
        if matches!(c, b'%' | b':') || (c == b'.' && prev == b'.') {
            return Err(BadHost);
        }
        prev = c;
    }
    if prev == b'.' && end > 0 {
        return Err(BadHost);
    }
    Ok((lower(&authority[..end]), dotted))
}

fn lower(h: &str) -> Cow<'_, str> {
    if h.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(h.to_ascii_lowercase()) } else { Cow::Borrowed(h) }
}

/// The host of an authority: without its port (`:` and digits after the last `:`, or
/// whatever follows a `]`).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    // A byte scan: `rsplit_once` sets up a general pattern search, dearer than these few bytes.
    match host.bytes().rposition(|b| b == b':') {
        Some(i) if host.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}

/// Characters whose case folds to an ASCII letter in Java and .NET (`İ`→`i`, `ı`→`I`, `ſ`→`S`,
/// the Kelvin sign→`k`), percent-encoded as a normalised path holds them, and raw: a
/// case-insensitive upstream reads `/adm%C4%B1n` as `/admin`.
const FOLDS_TO_ASCII: &[&str] = &["%C4%B0", "%C4%B1", "%C5%BF", "%E2%84%AA"];

/// Whether a normalised path holds a character of [`FOLDS_TO_ASCII`].
fn folds_to_ascii(path: &str) -> bool {
    path.contains(['\u{130}', '\u{131}', '\u{17f}', '\u{212a}'])
        || (path.contains('%') && FOLDS_TO_ASCII.iter().any(|e| path.contains(e)))
}

#[cfg(test)]
mod tests;
