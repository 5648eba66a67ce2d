//! Reading a config file: YAML parsing, strict typing, path resolution and validation, with
//! every error located by key path and line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::Config;

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
            write!(f, ": `{}`: {}", self.path, self.message)
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

/// Parses and validates config `text` as if read from `file` (relative paths resolve
/// against its folder).
pub fn load_str(text: String, file: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let fail = |path: String, loc: Option<&Location>, message: String| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            path,
            line: loc.map(|l| l.line() as usize),
            column: loc.map(|l| l.column() as usize),
            message,
        }])
    };
    let options = || serde_saphyr::options! { with_snippet: false };

    // First pass: a tree of locations, so that errors found after typing can name a line.
    // Repeated keys reach the tree so that they are reported with their full path.
    let mut tree_options = options();
    tree_options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    let source_map = match serde_saphyr::from_str_with_options::<Spanned<Node>>(&text, tree_options) {
        Ok(tree) => SourceMap::build(tree),
        Err(e) => {
            return Err(fail(String::new(), e.location().as_ref(), clean_message(&e)));
        }
    };
    if let Some((path, loc)) = source_map.duplicates.first() {
        let key = path.rsplit('.').next().unwrap_or(path);
        return Err(fail(path.clone(), Some(loc), format!("duplicate key `{key}`: a key may appear once")));
    }
    if source_map.is_empty_document() {
        return Err(fail(String::new(), None, "the config file is empty".into()));
    }

    // Second pass: strict typing. The path tracker names the key the error is about.
    let mut failed_path = None;
    let typed = serde_saphyr::with_deserializer_from_str_with_options(&text, options(), |de| {
        let mut track = serde_path_to_error::Track::new();
        let result = Config::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        if result.is_err() {
            failed_path = Some(track.path().to_string());
        }
        result
    });
    let mut config = match typed {
        Ok(c) => c,
        Err(e) => {
            let path = failed_path.map(|p| if p == "." { String::new() } else { p }).unwrap_or_default();
            // The key itself is the better place to point at (for a missing field the parser
            // reports where the mapping ends); fall back to the parser's position.
            let loc = source_map.locations.get(&path).cloned().or_else(|| e.location());
            return Err(fail(path, loc.as_ref(), clean_message(&e)));
        }
    };

    let mut problems = config.resolve_files(|p| resolve_against(file, p));
    if problems.is_empty() {
        problems = crate::validate::validate(&config);
    }
    let loaded = LoadedConfig { config, file: file.to_path_buf(), text, source_map };
    if problems.is_empty() { Ok(loaded) } else { Err(loaded.locate(problems)) }
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
    fn build(root: Spanned<Node>) -> Self {
        let mut map = SourceMap::default();
        map.locations.insert(String::new(), root.referenced);
        map.walk(String::new(), root.value);
        map
    }

    fn walk(&mut self, path: String, node: Node) {
        match node {
            Node::Map(entries) => {
                for (key, value) in entries {
                    let p = if path.is_empty() { key.value.clone() } else { format!("{path}.{}", key.value) };
                    if self.locations.insert(p.clone(), key.referenced).is_some() {
                        self.duplicates.push((p.clone(), key.referenced));
                    }
                    self.walk(p, value.value);
                }
            }
            Node::Seq(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.locations.insert(p.clone(), item.referenced);
                    self.walk(p, item.value);
                }
            }
            Node::Scalar => {}
        }
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
    Scalar,
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
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
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
