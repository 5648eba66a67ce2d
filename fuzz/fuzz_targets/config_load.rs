//! Config files: loading never panics, whatever the YAML.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = portcullis_config::load_str(text.to_string(), std::path::Path::new("/fuzz/portcullis.yaml"));
});
