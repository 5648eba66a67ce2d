//! Request paths from the network: normalisation never panics, and its output is absolute,
//! free of dot segments and its own normal form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::router::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    for allow in [false, true] {
        if let Ok(n) = normalize(path, allow) {
            assert!(n.starts_with('/'));
            assert!(!n.split('/').any(|s| s == "." || s == ".."), "{n}");
            assert_eq!(normalize(&n, allow).unwrap(), n);
        }
    }
});
