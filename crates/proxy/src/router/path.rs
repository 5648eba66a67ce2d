//! Path normalisation: routes and policies must see the same path the upstream will act on.
//!
//! A gateway that matches `/public/../admin` as `/public` and forwards it unchanged lets the
//! upstream resolve it to `/admin` behind the gateway's back. So before matching, the path
//! is normalised (RFC 3986 §6.2.2: percent-decoding of unreserved characters and upper-case
//! hex; §5.2.4: removal of dot segments; repeated slashes merged), and the normalised path is
//! what gets forwarded. Encoded slashes and backslashes (`%2F`, `%5C`), which upstreams
//! disagree about, are refused unless the operator allows them; encoded NUL always is.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not an absolute path (`/...`).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C`, with encoded slashes not allowed.
    EncodedSlash,
    /// `%00` or a literal backslash.
    Forbidden,
}

impl PathError {
    /// A short explanation for the client.
    pub fn detail(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with `/`",
            PathError::BadEscape => "the request path has a malformed percent-encoding",
            PathError::EncodedSlash => "encoded slashes (%2F, %5C) are not allowed in the path",
            PathError::Forbidden => "the request path contains a forbidden character",
        }
    }
}

/// How the gateway reads a request's path: what routes and policies see, and what goes
/// upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Reading<'a> {
    /// The normalised path routes and policies see. For a path with segment parameters
    /// (`;name=value`), the parameters are removed first, as servlet containers do.
    pub path: Cow<'a, str>,
    /// The path to forward when it differs from `path`: the normalised path with the
    /// parameters of ordinary segments kept (a `..;x` segment is still a dot segment).
    pub forward: Option<String>,
    /// Whether the path had segment parameters (`;`, or `%3B`, which some servers decode
    /// before they split parameters off).
    pub has_parameters: bool,
}

impl Reading<'_> {
    /// The path to send upstream.
    pub fn forwarded(&self) -> &str {
        self.forward.as_deref().unwrap_or(&self.path)
    }
}

/// Reads a request's path. Without segment parameters this is [`normalize`]; with them, it
/// also works out the servlet-style reading (`path`) and the form to forward.
pub fn read(raw: &str, allow_encoded_slashes: bool) -> Result<Reading<'_>, PathError> {
    if !has_parameters(raw) {
        return Ok(Reading { path: normalize(raw, allow_encoded_slashes)?, forward: None, has_parameters: false });
    }
    let path = normalize(&strip_parameters(raw), allow_encoded_slashes)?.into_owned();
    let forward = normalize(&dot_parameters_dropped(raw), allow_encoded_slashes)?.into_owned();
    let forward = (forward != path).then_some(forward);
    Ok(Reading { path: Cow::Owned(path), forward, has_parameters: true })
}

/// Whether any segment carries parameters: a `;`, or its encoding `%3B`.
pub fn has_parameters(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.contains(&b';') || (b.contains(&b'%') && (0..b.len()).any(|i| parameters_at(b, i)))
}

/// Whether segment parameters start at `b[i]`: a `;` or `%3B`.
fn parameters_at(b: &[u8], i: usize) -> bool {
    b[i] == b';' || (b[i] == b'%' && b.get(i + 1) == Some(&b'3') && b.get(i + 2).is_some_and(|c| c | 0x20 == b'b'))
}

/// Where a segment's parameters start: its first `;` or `%3B`.
fn parameters_start(seg: &str) -> Option<usize> {
    let b = seg.as_bytes();
    (0..b.len()).find(|&i| parameters_at(b, i))
}

/// The path with every segment's parameters removed (Tomcat, Jetty, Spring): `/a;x/..;/b`
/// becomes `/a/../b`.
pub fn strip_parameters(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for (i, seg) in raw.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&seg[..parameters_start(seg).unwrap_or(seg.len())]);
    }
    out
}

/// The path with the parameters of dot segments (`..;x` is `..`) and of segments that are
/// only parameters removed, every other segment's kept: resolving it gives the same segments
/// as the servlet reading, each with its parameters.
fn dot_parameters_dropped(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for (i, seg) in raw.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let name = &seg[..parameters_start(seg).unwrap_or(seg.len())];
        // A segment that is only parameters (`/;x/`) is empty to a servlet container, and
        // merged away like `//`.
        let dots = name.is_empty() || decode_unreserved(name, true).is_ok_and(|d| d == "." || d == "..");
        out.push_str(if dots { name } else { seg });
    }
    out
}

/// Normalises `path`. Borrows when it is already normal (the common case: no allocation).
pub fn normalize(path: &str, allow_encoded_slashes: bool) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, allow_encoded_slashes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True when no rule would change the path.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.iter().any(|&c| c == b'%' || c == b'\\') {
        return false;
    }
    // Every segment after the leading `/` must be non-empty (except a final trailing slash)
    // and neither `.` nor `..`.
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
    }
    true
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` of unreserved characters (RFC 3986 §2.3), upper-cases the hex of the rest.
fn decode_unreserved(path: &str, allow_encoded_slashes: bool) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::Forbidden),
            b'%' => {
                let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
                else {
                    return Err(PathError::BadEscape);
                };
                let v = h << 4 | l;
                match v {
                    0 => return Err(PathError::Forbidden),
                    b'/' | b'\\' if !allow_encoded_slashes => return Err(PathError::EncodedSlash),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => out.push(c as char),
                    _ => {
                        out.push('%');
                        out.push(HEX[usize::from(h)] as char);
                        out.push(HEX[usize::from(l)] as char);
                    }
                }
                i += 3;
            }
            _ => {
                // Copy the run of ordinary bytes up to the next `%` or `\` in one go; the
                // boundaries are ASCII, so slicing keeps UTF-8 intact.
                let end = b[i..].iter().position(|&c| c == b'%' || c == b'\\').map_or(b.len(), |p| i + p);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// Removes `.` and `..` segments (RFC 3986 §5.2.4) and merges repeated slashes. `..` above
/// the root stays at the root. A trailing slash, or a trailing dot segment, keeps the result
/// ending in `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in path[1..].split('/') {
        trailing_slash = false;
        match seg {
            "" | "." => trailing_slash = true,
            ".." => {
                stack.pop();
                trailing_slash = true;
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || stack.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, false).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/orders", "/orders/", "/orders/7/items", "/a-b_c~d.e", "/ünï"] {
            assert!(matches!(normalize(p, false), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        let cases = [
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/public/../admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a//b///c", "/a/b/c"),
            ("//admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/a/b/", "/a/b/"),
            ("/.hidden/x", "/.hidden/x"),
            ("/a/..b/c", "/a/..b/c"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn percent_encoding() {
        let cases = [
            ("/%61dmin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/%7euser", "/~user"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(n("orders"), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a\\b"), Err(PathError::Forbidden));
        assert_eq!(n("/a%00b"), Err(PathError::Forbidden));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("/a%"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%2fb", true).as_deref(), Ok("/a%2Fb"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// Whatever the input, a normalised path is absolute, has no dot segments and no
        /// empty segments, keeps no decodable escape, and is its own normal form.
        #[test]
        fn normal_form_properties(raw in "/[a-zA-Z0-9._~%/\\-]{0,40}") {
            if let Ok(p) = normalize(&raw, false) {
                proptest::prop_assert!(p.starts_with('/'));
                let segs: Vec<&str> = p[1..].split('/').collect();
                for (i, s) in segs.iter().enumerate() {
                    proptest::prop_assert!(*s != "." && *s != "..", "{p}");
                    proptest::prop_assert!(!s.is_empty() || i == segs.len() - 1, "{p}");
                }
                proptest::prop_assert!(!p.contains('\\'));
                let again = normalize(&p, false).unwrap().into_owned();
                proptest::prop_assert_eq!(again.as_str(), p.as_ref());
            }
        }

        /// The forwarded form of a path with parameters is the path routes saw, once its
        /// parameters are removed: the two never name different resources.
        #[test]
        fn the_forwarded_path_is_the_routed_path_with_parameters(
            pieces in proptest::collection::vec(
                proptest::sample::select(&["/", "a", "b", ".", "..", ";", ";x=1", "%2e", "%3b", "%3Bv", "..;", "%2e%2e;y", "//"][..]),
                0..10,
            )
        ) {
            let raw = format!("/{}", pieces.concat());
            if let Ok(r) = read(&raw, false) {
                let forwarded = r.forwarded().to_string();
                proptest::prop_assert!(!r.path.contains(';'), "{raw}: {}", r.path);
                let again = normalize(&strip_parameters(&forwarded), false).unwrap().into_owned();
                proptest::prop_assert_eq!(again.as_str(), r.path.as_ref(), "{} forwarded as {}", raw, forwarded);
                proptest::prop_assert!(!forwarded.split('/').any(|s| s == "." || s == ".."), "{forwarded}");
            }
        }

        /// Arbitrary bytes (valid UTF-8) never panic.
        #[test]
        fn never_panics(raw in "\\PC{0,64}") {
            let _ = normalize(&raw, false);
            let _ = normalize(&raw, true);
            let _ = read(&raw, false);
            let _ = read(&raw, true);
        }
    }

    #[test]
    fn segment_parameters() {
        let r = |p| {
            let r = read(p, false).unwrap();
            (r.path.into_owned(), r.forward, r.has_parameters)
        };
        assert_eq!(r("/a/b"), ("/a/b".into(), None, false));
        assert_eq!(r("/a;x=1/b"), ("/a/b".into(), Some("/a;x=1/b".into()), true));
        assert_eq!(r("/static/..;/admin"), ("/admin".into(), None, true));
        assert_eq!(r("/static/%2e%2e;x/admin"), ("/admin".into(), None, true));
        assert_eq!(r("/static/..%3Bx/admin"), ("/admin".into(), None, true));
        assert_eq!(r("/a/.;x/b;y"), ("/a/b".into(), Some("/a/b;y".into()), true));
        // A segment of parameters alone is empty, merged like `//`.
        assert_eq!(r("/a/;x/.."), ("/".into(), None, true));
        assert_eq!(r("/a/;x/b"), ("/a/b".into(), None, true));
        assert_eq!(strip_parameters("/a;x/..;y/b;z"), "/a/../b");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/a/./b/../c//d/", "/%2e%2e/x", "/x/%7e/..", "/a%20b/./c"] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }
}
