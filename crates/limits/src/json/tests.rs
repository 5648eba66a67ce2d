use proptest::prelude::*;

use super::*;

const WIDE: JsonLimits =
    JsonLimits { max_depth: 512, max_keys: 1 << 20, max_string: 1 << 24, max_items: 1 << 20, max_values: 1 << 30 };

fn scan(limits: JsonLimits, doc: &[u8]) -> Result<(), JsonError> {
    let mut s = Scanner::new(limits);
    s.feed(doc)?;
    s.finish()
}

/// The same document fed one byte at a time must be judged the same way.
fn scan_bytewise(limits: JsonLimits, doc: &[u8]) -> Result<(), JsonError> {
    let mut s = Scanner::new(limits);
    for b in doc {
        s.feed(std::slice::from_ref(b))?;
    }
    s.finish()
}

#[test]
fn valid_documents_pass() {
    for doc in [
        "{}",
        "[]",
        " [ ] ",
        "0",
        "-0.5e+10",
        "1E3",
        "\"a\\u00e9\\n\\\"b\"",
        "true",
        "null",
        r#"{"a": [1, 2.5, {"b": null}], "c": "d", "e": {"f": [[], {}]}}"#,
        "[\"ü € 𝄞\"]",
        "\t\r\n{\"k\" :\"v\"}\n",
    ] {
        assert_eq!(scan(WIDE, doc.as_bytes()), Ok(()), "{doc}");
        assert_eq!(scan_bytewise(WIDE, doc.as_bytes()), Ok(()), "{doc}");
    }
}

#[test]
fn malformed_documents_are_refused() {
    for doc in [
        "",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{a:1}",
        "[01]",
        "[1.]",
        "[.5]",
        "[1e]",
        "[-]",
        "[+1]",
        "tru",
        "nul",
        "True",
        "\"unterminated",
        "\"bad \\x escape\"",
        "\"bad \\u12G4\"",
        "\"tab\tinside\"",
        "[1] [2]",
        "{} x",
        "[1 2]",
        "{\"a\":1 \"b\":2}",
        "]",
        "[}",
        "{]",
        "'single'",
        "NaN",
        "[1,,2]",
    ] {
        assert!(matches!(scan(WIDE, doc.as_bytes()), Err(JsonError::Malformed(..))), "{doc:?}");
        assert!(matches!(scan_bytewise(WIDE, doc.as_bytes()), Err(JsonError::Malformed(..))), "{doc:?}");
    }
}

#[test]
fn each_limit_is_exact() {
    let l = JsonLimits { max_depth: 3, max_keys: 2, max_string: 5, max_items: 3, max_values: 8 };
    assert_eq!(scan(l, b"[[[]]]"), Ok(()));
    assert_eq!(scan(l, b"[[[[]]]]"), Err(JsonError::Limit("nesting too deep", 3)));
    assert_eq!(scan(l, br#"{"a":1,"b":2}"#), Ok(()));
    assert!(matches!(scan(l, br#"{"a":1,"b":2,"c":3}"#), Err(JsonError::Limit("an object with too many members", 2))));
    assert_eq!(scan(l, br#"["abcde"]"#), Ok(()));
    assert!(matches!(scan(l, br#"["abcdef"]"#), Err(JsonError::Limit("a string too long", 5))));
    // Keys are strings too; escapes count as written.
    assert!(matches!(scan(l, br#"{"abcdef":1}"#), Err(JsonError::Limit(..))));
    assert!(matches!(scan(l, br#"["ab\n\t"]"#), Err(JsonError::Limit(..))));
    assert_eq!(scan(l, b"[1,2,3]"), Ok(()));
    assert!(matches!(scan(l, b"[1,2,3,4]"), Err(JsonError::Limit("an array with too many items", 3))));
    // 8 values: the outer array, three inner arrays, four numbers.
    assert_eq!(scan(l, b"[[1],[2],[3,4]]"), Ok(()));
    assert!(matches!(scan(l, b"[[1],[2],[3,4,5]]"), Err(JsonError::Limit("too many values", 8))));
}

#[test]
fn bombs_are_refused_at_the_limit_not_at_the_end() {
    let l = JsonLimits { max_depth: 32, max_keys: 1000, max_string: 65536, max_items: 10_000, max_values: 100_000 };
    // 10^5 levels of nesting: refused within the first 33 bytes.
    let mut s = Scanner::new(l);
    let deep = vec![b'['; 100_000];
    assert!(matches!(s.feed(&deep), Err(JsonError::Limit("nesting too deep", 32))));
    assert!(s.stack.len() <= 32);
    // A 100 MB string, in 64 KiB chunks: refused in the second chunk.
    let mut s = Scanner::new(l);
    s.feed(b"\"").unwrap();
    let chunk = vec![b'a'; 65536];
    let mut fed = 0;
    let err = loop {
        match s.feed(&chunk) {
            Ok(()) => fed += 1,
            Err(e) => break e,
        }
        assert!(fed < 1600, "never refused");
    };
    assert_eq!(err, JsonError::Limit("a string too long", 65536));
    assert_eq!(fed, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the bytes, the scanner agrees with serde_json on whether they are JSON
    /// (serde_json also checks UTF-8, which the scanner leaves to its caller), fed whole or
    /// split anywhere, and never panics.
    #[test]
    fn agrees_with_serde_json(doc in prop_oneof![
        "[\\[\\]{}:,\" 0-9a-z\\\\.eE+-]{0,40}".prop_map(String::into_bytes),
        any::<Vec<u8>>(),
    ], split in 0usize..64) {
        let ours = scan(WIDE, &doc).is_ok();
        let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(&doc);
        // serde_json also refuses numbers too large for an f64 and lone surrogates, which
        // the grammar allows.
        let beyond_grammar = theirs.as_ref().is_err_and(|e| {
            let e = e.to_string();
            e.contains("out of range") || e.contains("surrogate")
        });
        let theirs = theirs.is_ok();
        if std::str::from_utf8(&doc).is_ok() && !beyond_grammar {
            prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&doc));
        }
        let at = split.min(doc.len());
        let mut s = Scanner::new(WIDE);
        let split_ok = s.feed(&doc[..at]).and_then(|()| s.feed(&doc[at..])).and_then(|()| s.finish()).is_ok();
        prop_assert_eq!(ours, split_ok);
    }

    /// Valid documents made by serde_json pass, whole and byte by byte.
    #[test]
    fn generated_documents_pass(v in arb_json()) {
        let text = serde_json::to_vec(&v).unwrap();
        prop_assert_eq!(scan(WIDE, &text), Ok(()));
        prop_assert_eq!(scan_bytewise(WIDE, &text), Ok(()));
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
