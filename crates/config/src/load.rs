//! Reading a config file: YAML parsing, strict typing, path resolution and validation, with
//! every error located by key path and line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::Config;

mod messages;
mod recover;

/// One problem in a config file, located by key path and, where known, line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// Key path, e.g. `routes[2].authenticate`; empty for the document as a whole.
    pub path: String,
    /// 1-based line of the key (or value), when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A problem found after parsing, named by key path; [`LoadedConfig::locate`] adds the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Key path, e.g. `routes[2].authenticate`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

/// A parsed and validated config, with what is needed to locate later errors in its file.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The config.
    pub config: Config,
    /// The file it came from.
    pub file: PathBuf,
    /// The raw text (for `check --print` and change detection).
    pub text: String,
    source_map: SourceMap,
}

impl LoadedConfig {
    /// Turns problems found while building runtime objects into located errors.
    pub fn locate(&self, problems: impl IntoIterator<Item = Invalid>) -> ConfigErrors {
        ConfigErrors(problems.into_iter().map(|p| self.source_map.error(&self.file, p)).collect())
    }

    /// Puts this gateway's own listen addresses over the file's (a bootstrap's
    /// `config.listen` and `config.admin_listen`), then checks the config again as if they
    /// had been written in it (a public admin address needs a credential...).
    pub fn set_listeners(
        &mut self,
        listen: Option<std::net::SocketAddr>,
        admin: Option<std::net::SocketAddr>,
    ) -> Result<(), ConfigErrors> {
        if let Some(l) = listen {
            self.config.server.listen = l;
        }
        if let Some(a) = admin {
            match &mut self.config.admin {
                Some(existing) => existing.listen = a,
                None => self.config.admin = Some(crate::AdminConfig { listen: a, auth: None, tls: None }),
            }
        }
        let problems = crate::validate::validate(&self.config);
        if problems.is_empty() { Ok(()) } else { Err(self.locate(problems)) }
    }

    /// Resolves `path` against the folder of the config file, as every relative path in a
    /// config file is.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve_against(&self.file, path)
    }
}

fn resolve_against(file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { file.parent().unwrap_or(Path::new(".")).join(path) }
}

/// Reads, parses and validates the config file at `file`.
pub fn load_file(file: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let file = &std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            path: String::new(),
            line: None,
            column: None,
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    load_str(text, file)
}

/// The bootstrap file at `file`, if it is one (its top-level key `config` says so; `None`
/// for a config), with its relative paths resolved against its folder.
pub fn load_bootstrap(file: &Path) -> Result<Option<crate::Bootstrap>, ConfigErrors> {
    let file = &std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let Ok(text) = std::fs::read_to_string(file) else { return Ok(None) };
    let keys: Result<std::collections::BTreeMap<String, de::IgnoredAny>, _> = serde_saphyr::from_str(&text);
    if !keys.is_ok_and(|k| k.contains_key("config")) {
        return Ok(None);
    }
    let Typed { value, errors, source_map, .. } = typed::<crate::Bootstrap>(&text, file)?;
    match value {
        Some(mut b) if errors.is_empty() => {
            let s = &mut b.config.source;
            let mut problems = Vec::new();
            if s.public_keys.is_empty() {
                problems.push(Invalid::new(
                    "config.source.public_keys",
                    "name at least one: a bundle is taken only when signed",
                ));
            }
            if !matches!(s.url.scheme(), "http" | "https") {
                problems.push(Invalid::new("config.source.url", "write an http:// or https:// URL"));
            }
            if s.poll_interval.get() < std::time::Duration::from_secs(1) {
                problems.push(Invalid::new("config.source.poll_interval", "at least 1s"));
            }
            if !problems.is_empty() {
                return Err(sorted(problems.into_iter().map(|p| source_map.error(file, p)).collect()));
            }
            for k in &mut s.public_keys {
                *k = resolve_against(file, k);
            }
            s.cache = Some(resolve_against(file, s.cache.as_deref().unwrap_or(Path::new("bundles"))));
            s.ca = s.ca.as_deref().map(|c| resolve_against(file, c));
            Ok(Some(b))
        }
        _ => Err(sorted(errors)),
    }
}

/// What typing a document found: the value (with stand-ins where errors were), the errors,
/// and where things were written.
struct Typed<T> {
    value: Option<T>,
    errors: Vec<ConfigError>,
    source_map: SourceMap,
    touched: Vec<String>,
    shifted: Vec<String>,
}

/// Types `text` (read from `file`) as `T`, finding every typing error with its line. `Err`
/// when the text is not YAML or is empty.
fn typed<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<Typed<T>, ConfigErrors> {
    let error = |path: String, loc: Option<&Location>, message: String| ConfigError {
        file: file.to_path_buf(),
        path,
        line: loc.map(|l| l.line() as usize),
        column: loc.map(|l| l.column() as usize),
        message,
    };
    let options = || serde_saphyr::options! { with_snippet: false };

    // First pass: a tree of the document, with where each key and item was written, so that
    // every error can name a line. Repeated keys reach the tree so that they are reported
    // with their full path.
    let mut tree_options = options();
    tree_options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    let (source_map, tree) = match serde_saphyr::from_str_with_options::<Spanned<Node>>(text, tree_options) {
        Ok(root) => SourceMap::build(root, text),
        Err(e) => {
            return Err(ConfigErrors(vec![error(String::new(), e.location().as_ref(), clean_message(&e))]));
        }
    };
    if source_map.is_empty_document() {
        return Err(ConfigErrors(vec![error(String::new(), None, "the config file is empty".into())]));
    }
    let mut errors: Vec<ConfigError> = source_map
        .duplicates
        .iter()
        .map(|(path, loc)| {
            let key = path.rsplit('.').next().unwrap_or(path);
            error(path.clone(), Some(loc), format!("duplicate key `{key}`: a key may appear once"))
        })
        .collect();
    let typing_error = |path: String, message: &str| {
        let found = match tree.find(&path).map(|i| &i.value) {
            Some(recover::Value::Map(_)) => messages::Found::Map,
            Some(recover::Value::Seq(_)) => messages::Found::Seq,
            Some(recover::Value::Scalar { text, .. }) => messages::Found::Scalar(text),
            _ => messages::Found::Unknown,
        };
        let message = messages::explain(&path, message, found);
        // The key itself is the place to point at (for a missing key, its mapping).
        error(path.clone(), source_map.find(&path), message)
    };

    // Second pass: strict typing. The path tracker names the key the error is about.
    let mut failed_path = None;
    let typed = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        let mut track = serde_path_to_error::Track::new();
        let result = T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        if result.is_err() {
            failed_path = Some(track.path().to_string());
        }
        result
    });
    let (config, touched, shifted) = match typed {
        Ok(config) if errors.is_empty() => (Some(config), Vec::new(), Vec::new()),
        typed => {
            // Serde stops at the first error: find the others too (see `recover`).
            let collected = recover::collect::<T>(tree.clone(), &options);
            for found in &collected.errors {
                errors.push(typing_error(found.path.clone(), &found.message));
            }
            if let Err(e) = typed
                && source_map.duplicates.is_empty()
            {
                let path = failed_path.map(|p| if p == "." { String::new() } else { p }).unwrap_or_default();
                if !collected.errors.iter().any(|f| f.path == path) {
                    let mut first = typing_error(path, &clean_message(&e));
                    if first.line.is_none()
                        && let Some(loc) = e.location()
                    {
                        (first.line, first.column) = (Some(loc.line() as usize), Some(loc.column() as usize));
                    }
                    errors.push(first);
                }
            }
            (collected.value, collected.touched, collected.shifted)
        }
    };
    Ok(Typed { value: config, errors, source_map, touched, shifted })
}

/// Parses and validates config `text` as if read from `file` (relative paths resolve
/// against its folder). Every problem is reported, in the order of the file: unknown keys,
/// values of the wrong type and missing keys (all of them, not only the first), then the
/// rules that span keys.
pub fn load_str(text: String, file: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let Typed { value: config, errors, source_map, touched, shifted } = typed::<Config>(&text, file)?;
    let mut errors = errors;
    let Some(mut config) = config else { return Err(sorted(errors)) };

    let mut problems = config.resolve_files(|p| resolve_against(file, p));
    if problems.is_empty() {
        problems = crate::validate::validate(&config);
    }
    // With typing errors, the config holds stand-ins where they were: what is said about
    // those places (or, where items were dropped from a list, about the items after them)
    // would be about the stand-ins, not the file.
    problems.retain(|p| {
        !touched.iter().any(|t| recover::is_within(&p.path, t) || recover::is_within(t, &p.path))
            && !shifted.iter().any(|s| p.path.starts_with(&format!("{s}[")))
    });
    if errors.is_empty() && problems.is_empty() {
        return Ok(LoadedConfig { config, file: file.to_path_buf(), text, source_map });
    }
    errors.extend(problems.into_iter().map(|p| source_map.error(file, p)));
    Err(sorted(errors))
}

/// Errors in the order of the file; those without a line last.
fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
    ConfigErrors(errors)
}

/// The parser's message without its own "line X column Y" prefix (we print our own).
fn clean_message(e: &serde_saphyr::Error) -> String {
    let s = e.to_string();
    let s = s.strip_prefix("error: ").unwrap_or(&s);
    let s = match s.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest,
        _ => s,
    };
    let s = s.lines().next().unwrap_or(s).trim();
    // Some messages end with their own " at line L, column C"; the location is printed once.
    match s.rfind(" at line ") {
        Some(i) if s[i..].contains("column") => s[..i].to_string(),
        _ => s.to_string(),
    }
}

/// Key path → location of that key (or of the value, for sequence items and the root).
#[derive(Clone, Debug, Default)]
struct SourceMap {
    locations: HashMap<String, Location>,
    /// Keys written twice in one mapping, at their second occurrence.
    duplicates: Vec<(String, Location)>,
}

impl SourceMap {
    /// The map of `root`, and `root` as the tree [`recover`] types (a repeated key keeps its
    /// first value there).
    fn build(root: Spanned<Node>, text: &str) -> (Self, recover::Item) {
        let mut map = SourceMap::default();
        map.locations.insert(String::new(), root.referenced);
        let tree = map.walk(String::new(), root, text);
        (map, tree)
    }

    fn walk(&mut self, path: String, node: Spanned<Node>, text: &str) -> recover::Item {
        let value = match node.value {
            Node::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (key, value) in entries {
                    let p = if path.is_empty() { key.value.clone() } else { format!("{path}.{}", key.value) };
                    if self.locations.contains_key(&p) {
                        self.duplicates.push((p, key.referenced));
                        continue;
                    }
                    self.locations.insert(p.clone(), key.referenced);
                    out.push((key.value, self.walk(p, value, text)));
                }
                recover::Value::Map(out)
            }
            Node::Seq(items) => recover::Value::Seq(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let p = format!("{path}[{i}]");
                        self.locations.insert(p.clone(), item.referenced);
                        self.walk(p, item, text)
                    })
                    .collect(),
            ),
            Node::Scalar(scalar) => {
                let span = node.defined.span();
                let raw = span
                    .byte_offset()
                    .zip(span.byte_len())
                    .and_then(|(at, len)| text.get(usize::try_from(at).ok()?..usize::try_from(at + len).ok()?))
                    .filter(|r| !r.is_empty() && !r.contains(['\n', '\r']));
                let (yaml, shown) = match scalar {
                    // A plain string is given as written (it types the same alone); any other
                    // string quoted, so that it stays a string.
                    Scalar::Str(s) => match raw {
                        Some(r) if r == s && !r.starts_with("---") && !r.starts_with("...") => (s.clone(), s),
                        _ => (serde_json::to_string(&s).unwrap_or_default(), s),
                    },
                    Scalar::Other(canonical) => {
                        (raw.unwrap_or(&canonical).to_string(), raw.unwrap_or(&canonical).to_string())
                    }
                };
                recover::Value::Scalar { yaml, text: shown }
            }
        };
        recover::Item { path, value }
    }

    fn is_empty_document(&self) -> bool {
        self.locations.len() <= 1
    }

    /// The location of `path`, or of its nearest ancestor present in the file (a missing key
    /// is reported where its parent is).
    fn find(&self, path: &str) -> Option<&Location> {
        let mut p = path;
        loop {
            if let Some(l) = self.locations.get(p) {
                return Some(l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    fn error(&self, file: &Path, problem: Invalid) -> ConfigError {
        let loc = self.find(&problem.path);
        ConfigError {
            file: file.to_path_buf(),
            line: loc.map(|l| l.line() as usize),
            column: loc.map(|l| l.column() as usize),
            path: problem.path,
            message: problem.message,
        }
    }
}

/// An untyped YAML node that keeps where each key and item was written.
#[derive(Debug)]
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar(Scalar),
}

/// A scalar as the parser typed it when asked for anything.
#[derive(Debug)]
enum Scalar {
    /// A string.
    Str(String),
    /// A boolean, number or null, written canonically (used where the source text is not at hand).
    Other(String),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    let value = map.next_value::<Spanned<Node>>()?;
                    entries.push((Spanned::new(key.value.0, key.referenced, key.defined), value));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other(v.to_string())))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other(v.to_string())))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other(format!("{v:?}"))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Str(v.to_string())))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Str(String::from_utf8_lossy(v).into_owned())))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other("null".into())))
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other("null".into())))
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A mapping key of any scalar type, as text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".into()))
            }
        }
        deserializer.deserialize_any(V)
    }
}
