//! Request paths from the network: normalisation and the reading of segment parameters never
//! panic; a normalised path is absolute, free of dot segments and its own normal form; and the
//! path routes see has no parameters left, while the one forwarded resolves to it once its
//! parameters are removed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::router::path::{normalize, read, strip_parameters};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    for allow in [false, true] {
        if let Ok(n) = normalize(path, allow) {
            assert!(n.starts_with('/'));
            assert!(!n.split('/').any(|s| s == "." || s == ".."), "{n}");
            assert_eq!(normalize(&n, allow).unwrap(), n);
        }
        if let Ok(r) = read(path, allow) {
            assert!(r.path.starts_with('/'));
            if r.has_parameters {
                assert!(!r.path.contains(';'), "{}", r.path);
                let forwarded = r.forwarded();
                assert!(!forwarded.split('/').any(|s| s == "." || s == ".."), "{forwarded}");
                assert_eq!(normalize(&strip_parameters(forwarded), allow).unwrap(), r.path, "{path}");
            }
        }
    }
});
