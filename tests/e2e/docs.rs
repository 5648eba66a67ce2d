//! The README's config reference cannot drift from the config types: every key of the JSON
//! Schema (which is generated from those types) must be documented.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::run_cli;

fn keys(schema: &Value, node: &Value, out: &mut BTreeSet<String>, depth: usize) {
    if depth > 12 {
        return;
    }
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        if let Some(def) = schema["$defs"].get(name) {
            keys(schema, def, out, depth + 1);
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            out.insert(k.clone());
            keys(schema, v, out, depth + 1);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = node.get(key).filter(|v| v.is_object()) {
            keys(schema, v, out, depth + 1);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for v in node.get(key).and_then(Value::as_array).into_iter().flatten() {
            keys(schema, v, out, depth + 1);
        }
    }
}

#[test]
fn readme_documents_every_config_key() {
    let (code, out, _) = run_cli(&["config", "schema"]);
    assert_eq!(code, 0);
    let schema: Value = serde_json::from_str(&out).unwrap();
    let mut all = BTreeSet::new();
    keys(&schema, &schema, &mut all, 0);
    assert!(all.len() > 40, "the schema walk found too few keys: {all:?}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // A key counts as documented when it appears in code formatting, alone or in a key path.
    let documented =
        |k: &str| ["`{k}`", "`{k}.", ".{k}`", ".{k}."].iter().any(|p| readme.contains(&p.replace("{k}", k)));
    let missing: Vec<_> = all.iter().filter(|k| !documented(k)).collect();
    assert!(missing.is_empty(), "config keys missing from the README's reference: {missing:?}");
}
