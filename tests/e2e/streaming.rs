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
