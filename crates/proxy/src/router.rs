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

pub mod path;

use std::cmp::Reverse;
use std::sync::Arc;

use http::Method;
use portcullis_config::{Invalid, RouteMatch};

/// Values of the named parameters of a path template, in template order.
pub type PathParams = Vec<(Arc<str>, Box<str>)>;

/// The compiled form of a route's `match`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    host: HostMatch,
    path: PathMatch,
    methods: Option<Box<[Method]>>,
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
    /// Compiles a route's `match`; `at` is its key path, for errors.
    pub fn compile(m: &RouteMatch, at: &str) -> Result<Matcher, Vec<Invalid>> {
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
            PathMatch::Exact(p.clone())
        } else if let Some(p) = &m.path_prefix {
            check_path(p, &format!("{at}.path_prefix"), &mut errors);
            if p == "/" { PathMatch::Any } else { PathMatch::Prefix(p.clone()) }
        } else if let Some(t) = &m.path_template {
            match compile_template(t) {
                Ok(segs) => PathMatch::Template(segs),
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
        if errors.is_empty() { Ok(Matcher { host, path, methods }) } else { Err(errors) }
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

    /// Whether two matchers would take exactly the same requests for some method.
    fn collides(&self, other: &Matcher) -> bool {
        if self.host != other.host || self.path != other.path {
            return false;
        }
        match (&self.methods, &other.methods) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => false,
        }
    }

    /// Whether the request matches; with the template's parameters when it has some.
    /// `host` is lower-case without port; `path` is normalised.
    pub fn matches(&self, host: &str, path: &str, method: &Method) -> Option<PathParams> {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        if !host_ok {
            return None;
        }
        if let Some(methods) = &self.methods
            && !methods.contains(method)
        {
            return None;
        }
        match &self.path {
            PathMatch::Any => Some(Vec::new()),
            PathMatch::Exact(p) => (p == path).then(Vec::new),
            PathMatch::Prefix(p) => prefix_matches(p, path).then(Vec::new),
            PathMatch::Template(segs) => template_matches(segs, path),
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

/// `/orders` matches `/orders` and `/orders/…`, never `/orders-archive`. A prefix ending in
/// `/` matches only below it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

fn template_matches(segs: &[Segment], path: &str) -> Option<PathParams> {
    let mut parts = path[1..].split('/');
    let mut params = Vec::new();
    for seg in segs {
        let part = parts.next()?;
        match seg {
            Segment::Literal(l) => {
                if l != part {
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
    parts.next().is_none().then_some(params)
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
        Ok(Router { entries: routes.into_iter().map(|(m, t, _)| (m, t)).collect() })
    }

    /// The most specific route for a request.
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Option<(&T, PathParams)> {
        self.entries.iter().find_map(|(m, t)| m.matches(host, path, method).map(|p| (t, p)))
    }

    /// The routes, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = (&Matcher, &T)> {
        self.entries.iter().map(|(m, t)| (m, t))
    }
}

#[cfg(test)]
mod tests;
