//! Turning the deserializer's terse messages into ones that say what to write instead.

/// What the file has at the key an error is about.
#[derive(Clone, Copy, Debug)]
pub(super) enum Found<'a> {
    /// A mapping.
    Map,
    /// A sequence.
    Seq,
    /// A single value, as written.
    Scalar(&'a str),
    /// Nothing (a missing key) or not known.
    Unknown,
}

/// Key names whose values must never be repeated in a message.
fn secret_key(path: &str) -> bool {
    let last = path.rsplit(['.', '[']).next().unwrap_or(path).to_ascii_lowercase();
    ["secret", "password", "passwd", "token", "key", "credential", "auth_header"].iter().any(|w| last.contains(w))
}

/// A value quoted in a message: only short, single-line values, never one of a secret key.
fn shown<'a>(path: &str, value: &'a str) -> Option<&'a str> {
    (!secret_key(path) && !value.is_empty() && value.len() <= 64 && !value.contains(['\n', '`'])).then_some(value)
}

/// The message for the error at `path`, rewritten where it helps.
pub(super) fn explain(path: &str, message: &str, found: Found<'_>) -> String {
    if let Some(m) = unknown(message, "unknown field `", "unknown key") {
        return m;
    }
    if let Some(m) = unknown(message, "unknown variant `", "unknown value") {
        return m;
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!("missing required key `{name}`");
    }
    let value = match found {
        Found::Scalar(v) => shown(path, v),
        _ => None,
    };
    let what = match found {
        Found::Map => "a mapping",
        Found::Seq => "a list",
        Found::Scalar(_) => "a single value",
        Found::Unknown => "something else",
    };
    match message {
        "expected sequence start" => match (found, value) {
            (Found::Scalar(_), Some(v)) => format!("expected a list, found a single value: write `[{v}]`"),
            (Found::Scalar(_), None) => "expected a list, found a single value: write it in `[ ]`".into(),
            _ => format!("expected a list (`[a, b]`, or `- item` lines), found {what}"),
        },
        "expected mapping start" => {
            format!("expected a mapping (`key: value` lines indented below, or `{{ key: value }}`), found {what}")
        }
        "invalid socket address syntax" => match value {
            Some(v) => match v.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()) {
                Some((_, port)) => format!(
                    "`{v}` is not an IP address and port: write an IP address (a host name is not looked up), \
                     e.g. `127.0.0.1:{port}` or `0.0.0.0:{port}`"
                ),
                None => format!("`{v}` is not an IP address and port: write both, e.g. `127.0.0.1:8080`"),
            },
            None => "expected an IP address and port, e.g. `127.0.0.1:8080`".into(),
        },
        "invalid boolean" => match value {
            Some(v) => format!("expected `true` or `false`, found `{v}`"),
            None => "expected `true` or `false`".into(),
        },
        "expected string scalar"
        | "expected a single value, found a list"
        | "expected a single value, found a mapping" => {
            format!("expected a single value, found {what}")
        }
        "externally tagged enum expected scalar or mapping" => format!("expected one value, found {what}"),
        _ => {
            if let Some(kind) = message.strip_prefix("invalid ").filter(|k| is_integer_type(k)) {
                let unsigned = kind.starts_with('u');
                return match value {
                    Some(v) => {
                        format!("expected a whole number{}, found `{v}`", if unsigned { " (0 or more)" } else { "" })
                    }
                    None => "expected a whole number".into(),
                };
            }
            invalid_type(message).unwrap_or_else(|| message.to_string())
        }
    }
}

fn is_integer_type(t: &str) -> bool {
    ["u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize"].contains(&t)
}

/// serde's `invalid type: X, expected Y` as `expected Y, found X`, with serde's type names
/// (`struct TlsConfig`) in words.
fn invalid_type(message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid type: ")?;
    let (unexpected, expected) = rest.split_once(", expected ")?;
    let expected = if expected.starts_with("struct ") || expected == "a map" {
        "a mapping"
    } else if expected == "a sequence" {
        "a list"
    } else {
        expected
    };
    let unexpected = match unexpected {
        "map" => "a mapping",
        "sequence" => "a list",
        other => other,
    };
    Some(format!("expected {expected}, found {unexpected}"))
}

/// `unknown field `x`, expected one of a, b` (serde's or serde-saphyr's wording) as
/// `unknown key `x`; did you mean `a`?`, or with the list of what is known.
fn unknown(message: &str, prefix: &str, noun: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    let (name, rest) = rest.split_once('`')?;
    let known = known_names(rest);
    let mut out = format!("{noun} `{name}`");
    if let Some(best) = nearest(name, &known) {
        out.push_str(&format!("; did you mean `{best}`?"));
    } else if known.is_empty() {
        out.push_str(": none is allowed here");
    } else {
        let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        out.push_str(&format!("; expected one of {}", list.join(", ")));
    }
    Some(out)
}

/// The names listed after `, expected`: `one of a, b`, `` `a` or `b` ``, `` `a` ``.
fn known_names(rest: &str) -> Vec<String> {
    let Some(list) = rest.strip_prefix(", expected ") else { return Vec::new() };
    if list.starts_with("there are no") || list.starts_with("nothing") {
        return Vec::new();
    }
    let list = list.strip_prefix("one of ").unwrap_or(list);
    list.split([',', ' '])
        .filter(|w| !w.is_empty() && *w != "or")
        .map(|w| w.trim_matches('`').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The known name closest to `name`, if close enough to be a likely typo.
pub(super) fn nearest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| k.as_str() != name && *d <= (k.chars().count().max(name.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring characters each count one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for swaps), one back, and the current one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}
