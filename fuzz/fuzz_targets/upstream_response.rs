//! Bytes from an upstream: the lean HTTP/1.1 client's head parser and body decoder never
//! panic, whatever the upstream sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_http::client::h1::parse_response_bytes;
use portcullis_http::framing::parse_chunk_size;

fuzz_target!(|data: &[u8]| {
    let _ = parse_response_bytes(data, &http::Method::GET);
    let _ = parse_response_bytes(data, &http::Method::HEAD);
    let _ = parse_chunk_size(data);
});
