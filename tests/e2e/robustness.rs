//! Hostile and malformed requests: each gets a clean refusal or a closed connection, and the
//! gateway keeps serving (the harness fails any test whose gateway logged a panic).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{Gateway, client};
use crate::upstream::Upstream;

fn send_raw(gw: &Gateway, bytes: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(gw.addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status(resp: &str) -> u16 {
    resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn malformed_requests_get_clean_refusals() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!("routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n", up.url()));
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    // (request, acceptable statuses; 0 = connection closed without a response)
    let cases: Vec<(Vec<u8>, &[u16])> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), &[400, 0]),
        // Both framings at once: refused, and the connection closed (RFC 9112 §6.3 allows
        // either this or chunked winning; refusing leaves nothing to disagree on).
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400]),
        // Codings other than chunked, chunked not last, chunked twice, chunked in HTTP/1.0.
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), &[501]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        // Differing lengths; one repeated length is one length.
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), &[400]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nab".to_vec(), &[200]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nab".to_vec(), &[400]),
        // A space before the colon, an obsolete line folding, a bare LF inside a field.
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n".to_vec(), &[400]),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(), &[400]),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n".to_vec(), &[400]),
        // Chunk lines another parser might read differently: white space without an
        // extension, a CR or NUL inside an extension, a size too long, a bare LF.
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n".to_vec(), &[400, 502]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n".to_vec(), &[400, 502]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x00\r\nabc\r\n0\r\n\r\n".to_vec(), &[400, 502]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n".to_vec(), &[400, 502]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n".to_vec(), &[400, 502]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\n\n".to_vec(), &[400, 502]),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), &[400, 505]),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nxx\r\n".to_vec(), &[400, 502, 0]),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), &[400, 0]),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(), &[400, 413, 0]),
        (b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400, 0]),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Bin: \xff\xfe\x01\r\n\r\n".to_vec(), &[200, 400, 0]),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), &[400]),
        (b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n".to_vec(), &[400]),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), &[400]),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400]),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), &[400, 404, 405]),
        (b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400]),
        (b"GET /a%5cb HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400]),
        (b"GET http://elsewhere.example/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[200]),
        (b"GET / HTTP/1.0\r\n\r\n".to_vec(), &[200]),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff\xff".to_vec(), &[0]),
        (long_uri.into_bytes(), &[414, 431, 0]),
    ];
    for (req, allowed) in &cases {
        let resp = send_raw(&gw, req);
        let got = status(&resp);
        assert!(allowed.contains(&got), "{:?} got {got}: {resp}", String::from_utf8_lossy(&req[..req.len().min(80)]));
        if got >= 400 && resp.contains("\r\n\r\n{") {
            assert!(resp.to_ascii_lowercase().contains("content-type: application/problem+json"), "{resp}");
        }
    }
    // The smuggled request behind an ambiguous framing is never seen as a request of its
    // own: the message is refused whole and the connection closed.
    let before = up.count();
    let resp = send_raw(
        &gw,
        b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 45\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "one request in, one response out: {resp}");
    assert_eq!(status(&resp), 400, "{resp}");
    assert_eq!(up.count(), before);
    // Pipelined requests are answered in order, each once.
    let resp = send_raw(
        &gw,
        b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.matches("HTTP/1.1 200 ").count(), 3, "{resp}");
    let (p1, p2, p3) = (resp.find("/p1").unwrap(), resp.find("/p2").unwrap(), resp.find("/p3").unwrap());
    assert!(p1 < p2 && p2 < p3, "{resp}");
    assert_eq!(up.count(), before + 3);

    // Random bytes, reproducibly.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        let len = (next(&mut seed) % 600) as usize;
        let mut req: Vec<u8> = (0..len).map(|_| next(&mut seed) as u8).collect();
        if next(&mut seed).is_multiple_of(2) {
            let mut prefixed = b"GET /".to_vec();
            prefixed.append(&mut req);
            req = prefixed;
        }
        send_raw(&gw, &req);
    }
    // Still serving.
    let r = client().get(gw.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// A request target longer than the head limit is `414` however the head arrives (whole in
/// one read, or in pieces); a target with user information or of another scheme is `400`.
#[tokio::test]
async fn long_and_unusable_targets_are_refused() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "server:\n  listen: {{listen}}\n  limits: {{ max_header_bytes: 1KiB }}\nroutes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n",
        up.url()
    ));
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    let resp = send_raw(&gw, long.as_bytes());
    assert_eq!(status(&resp), 414, "whole: {resp}");
    // In pieces: the limit is passed before the head is complete.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&long.as_bytes()[..1500]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = s.write_all(&long.as_bytes()[1500..]);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert_eq!(status(&String::from_utf8_lossy(&out)), 414, "in pieces");
    // Many fields past the limit are still 431.
    let fields = format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n", "a".repeat(2000));
    assert_eq!(status(&send_raw(&gw, fields.as_bytes())), 431);

    let before = up.count();
    for target in ["http://user:pw@x/", "http://user@x/", "ftp://x/file", "ws://x/"] {
        let resp = send_raw(&gw, format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(status(&resp), 400, "{target}: {resp}");
        assert!(resp.to_ascii_lowercase().contains("application/problem+json"), "{resp}");
        assert!(!resp.contains("pw@"), "{resp}");
    }
    assert_eq!(up.count(), before, "none reached the upstream");
    let resp = send_raw(&gw, b"GET https://x/ok HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&resp), 200, "{resp}");
}
