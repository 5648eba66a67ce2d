//! The layering the architecture document promises, checked on the sources: the transport
//! knows nothing of config or security, and the proxy's files import each other without a
//! loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_transport_depends_on_no_config_or_security_crate() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("crates/http/Cargo.toml")).unwrap();
    let deps: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|n| n.starts_with("portcullis-"))
        .collect();
    assert!(!deps.is_empty() || manifest.contains("portcullis-core"), "the manifest was not read: {manifest}");
    for forbidden in
        ["portcullis-config", "portcullis-authn", "portcullis-authz", "portcullis-identity", "portcullis-proxy"]
    {
        assert!(!deps.contains(&forbidden), "crates/http depends on {forbidden}");
    }
    // Nor does its code name them.
    for (module, source) in modules(&Path::new(ROOT).join("crates/http/src")) {
        for forbidden in ["portcullis_config", "portcullis_authn", "portcullis_authz", "portcullis_identity"] {
            assert!(!source.contains(forbidden), "crates/http/src/{module} uses {forbidden}");
        }
    }
}

#[test]
fn the_proxys_files_import_each_other_without_a_loop() {
    let modules = modules(&Path::new(ROOT).join("crates/proxy/src"));
    assert!(modules.len() > 10, "the sources were not found: {:?}", modules.keys());
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, source) in &modules {
        let parent = module.rsplit_once('/').map_or("", |(p, _)| p);
        let mut edges = BTreeSet::new();
        for (prefix, base) in [("crate::", ""), ("super::", parent)] {
            for path in paths_after(source, prefix) {
                let full = if base.is_empty() { path } else { format!("{base}/{path}") };
                // The longest prefix of the path that is a module (the rest names an item).
                let segments: Vec<&str> = full.split('/').collect();
                if let Some(target) =
                    (1..=segments.len()).rev().map(|n| segments[..n].join("/")).find(|m| names.contains(m))
                    && &target != module
                    && !target.is_empty()
                {
                    edges.insert(target);
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    // A loop is a module that reaches itself.
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, trail)) = todo.pop() {
            for next in &graph[&at] {
                assert!(next != start, "import loop: {} -> {start}", trail.join(" -> "));
                if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    todo.push((next.clone(), t));
                }
            }
        }
    }
    // The check sees edges (it would miss a loop if it saw none).
    assert!(graph["pipeline/forward"].contains("upstream"), "{:?}", graph["pipeline/forward"]);
}

/// Every module of a crate's `src` by its path (`pipeline/admit`; `lib` for the root), with
/// its source up to its unit tests.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![PathBuf::from(src)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let rel = rel.to_string_lossy().replace('\\', "/");
                let name = rel.strip_suffix("/mod").map(str::to_string).unwrap_or(rel);
                let source = std::fs::read_to_string(&path).unwrap();
                let source = source.split("#[cfg(test)]").next().unwrap_or_default().to_string();
                out.insert(if name == "lib" { String::new() } else { name }, source);
            }
        }
    }
    out
}

/// The module paths written after `prefix` (`crate::router::path::normalize` gives
/// `router/path/normalize`), including each member of a `{a, b}` group.
fn paths_after(source: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in source.match_indices(prefix) {
        let rest = &source[i + prefix.len()..];
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        let head = rest[..end].trim_end_matches(':');
        if rest[end..].starts_with('{') && rest[..end].ends_with("::") {
            let group = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |j| end + j)];
            for member in group.split(',') {
                let member = member.trim().split("::").next().unwrap_or_default();
                if !member.is_empty() && member != "self" {
                    out.push(format!("{head}::{member}").replace("::", "/"));
                }
            }
        }
        out.push(head.replace("::", "/"));
    }
    out
}
