//! Bytes from a client: the HTTP/1.1 server codec's head parser and body decoder never
//! panic, whatever the client sends, and what they accept is never ambiguous.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portcullis_http::framing::Framing;
use portcullis_http::server::h1::{Settings, parse_requests};

fuzz_target!(|data: &[u8]| {
    let settings =
        Settings { header_read_timeout: Duration::from_secs(1), max_head: 4096, max_headers: 16, http2: false };
    let Ok(requests) = parse_requests(data, &settings) else { return };
    let mut consumed_bodies = 0;
    for (head, body) in &requests {
        let h = &head.parts.headers;
        // Never both framings, never a list of lengths, never chunked in HTTP/1.0.
        assert!(!(h.contains_key("transfer-encoding") && h.contains_key("content-length")));
        assert!(h.get_all("content-length").iter().count() <= 1);
        if let Framing::Length(n) = head.framing {
            assert!(body.len() as u64 <= n);
            if n > 0 {
                assert_eq!(h["content-length"].to_str().unwrap().parse::<u64>().unwrap(), n);
            }
        }
        if matches!(head.framing, Framing::Chunked(_)) {
            assert_eq!(head.parts.version, http::Version::HTTP_11);
        }
        assert!(h.len() <= settings.max_headers);
        consumed_bodies += body.len();
    }
    assert!(consumed_bodies <= data.len());
});
