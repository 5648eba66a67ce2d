//! Bodies stream through the gateway in both directions; a body much larger than the
//! gateway's memory use proves it is never held whole.

use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::Gateway;
use crate::upstream::Upstream;

const SIZE: u64 = 256 * 1024 * 1024;
/// Peak memory the gateway may reach while 256 MiB pass through it.
const PEAK_RSS_LIMIT_KIB: u64 = 96 * 1024;

#[tokio::test]
async fn large_bodies_stream_both_ways_without_buffering() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: big\n    upstream: {}\n    authenticate: [none]\n    limits: {{ max_body_bytes: 1GiB }}\n    timeouts: {{ request: 120s }}\n",
        up.url()
    ));
    let c = reqwest::Client::builder().timeout(std::time::Duration::from_secs(180)).build().unwrap();

    // Upload: 256 MiB in 1 MiB chunks, without a Content-Length.
    let chunk = bytes::Bytes::from(vec![7u8; 1024 * 1024]);
    let chunks =
        futures_util::stream::iter((0..SIZE / (1024 * 1024)).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = c.post(gw.url("/count")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["bytes"], SIZE, "every byte arrived");
    let after_upload = gw.peak_rss_kib();
    assert!(after_upload < PEAK_RSS_LIMIT_KIB, "peak RSS {after_upload} KiB while uploading 256 MiB");

    // Download: 256 MiB from the upstream, read as it comes.
    let r = c.get(gw.url(&format!("/bytes/{SIZE}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut got: u64 = 0;
    while let Some(chunk) = stream.next().await {
        got += chunk.unwrap().len() as u64;
    }
    assert_eq!(got, SIZE);
    let peak = gw.peak_rss_kib();
    assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {peak} KiB after moving 512 MiB");
}

/// HTTP/2 carries many streams over one connection and one flow-control window. A stream whose
/// other side is slow (an upstream that does not read an upload, a client that does not read
/// its response) must not stop the others: neither the same client's other uploads nor, over
/// an upstream connection the gateway shares between clients, other clients' responses.
#[tokio::test]
async fn one_stalled_http2_stream_does_not_hold_up_the_others() {
    use std::time::Duration;
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: {{listen}}
  workers: 1
  limits: {{ header_read_timeout: 3s }}
upstreams:
  h2c:
    endpoints: [{u}]
    protocol: http2
routes:
  - id: lean
    match: {{ path_prefix: /lean }}
    upstream: {u}
    authenticate: [none]
    limits: {{ max_body_bytes: 1GiB }}
    timeouts: {{ request: 10s }}
  - id: h2c
    match: {{ path_prefix: /h2c }}
    upstream: h2c
    authenticate: [none]
    timeouts: {{ request: 10s }}
"#,
        u = up.url()
    ));
    let h2 = || reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mib = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);

    // Uploads. Stream A: 64 MiB to an upstream that reads none of it for 8 s; once the
    // sockets between are full, the gateway stops taking A's data.
    let client = h2();
    let a_body = futures_util::stream::iter((0..64).map({
        let mib = mib.clone();
        move |_| Ok::<_, std::io::Error>(mib.clone())
    }));
    let a = tokio::spawn(client.post(gw.url("/lean/slow?ms=8000")).body(reqwest::Body::wrap_stream(a_body)).send());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!a.is_finished(), "the upstream was to hold the first upload");
    // Stream B, same connection: 2 MiB to an upstream that reads it at once. Held up, it
    // would wait for A's upstream (8 s) and meet its own idle limit first (408 after 3 s).
    let b = client.post(gw.url("/lean/count")).body(vec![b'y'; 2 << 20]).send();
    let b = tokio::time::timeout(Duration::from_secs(6), b).await.expect("the second upload was held up").unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(b.json::<Value>().await.unwrap()["bytes"], 2 << 20);
    a.abort();

    // Responses. Client X asks for 64 MiB over the shared HTTP/2 upstream connection and reads
    // none of it; client Y (another connection) then asks for 8 MiB over the same upstream
    // connection.
    let x = h2().get(gw.url("/h2c/bytes/67108864")).send().await.unwrap();
    assert_eq!(x.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Held up, Y would wait until X's stall timer (10 s) cut X off.
    let y = async {
        let y = h2().get(gw.url("/h2c/bytes/8388608")).send().await.unwrap();
        assert_eq!(y.status(), 200);
        y.bytes().await.unwrap().len()
    };
    let got = tokio::time::timeout(Duration::from_secs(6), y).await.expect("the second response was held up");
    assert_eq!(got, 8 << 20);
    drop(x);
}
