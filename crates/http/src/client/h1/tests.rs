//! The lean client against a scripted upstream on loopback: each test's server reads what
//! the client sends and answers with exact bytes, so every framing rule is exercised.

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::framing::{MAX_CHUNK_LINE, parse_chunk_size};

/// One step of a scripted upstream.
enum Step {
    /// Answer the next request with these bytes.
    Answer(&'static [u8]),
    /// Answer, then close the connection.
    AnswerAndClose(&'static [u8]),
}
use Step::{Answer, AnswerAndClose};

const WAITS: crate::client::Waits =
    crate::client::Waits { upstream: Duration::from_secs(10), client_idle: Duration::from_secs(10) };

/// A server that answers each request on each connection with the next scripted step, and
/// records the raw requests.
struct Script {
    authority: Authority,
    accepts: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn scripted(responses: Vec<Step>) -> Script {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (a, r) = (accepts.clone(), requests.clone());
    tokio::spawn(async move {
        let mut script = responses.into_iter();
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            a.fetch_add(1, Ordering::SeqCst);
            loop {
                let req = read_request(&mut s).await;
                if req.is_empty() {
                    break;
                }
                r.lock().unwrap().push(req);
                match script.next() {
                    Some(Answer(bytes)) => {
                        if s.write_all(bytes).await.is_err() {
                            break;
                        }
                    }
                    Some(AnswerAndClose(bytes)) => {
                        let _ = s.write_all(bytes).await;
                        break;
                    }
                    None => break,
                }
            }
        }
    });
    Script { authority, accepts, requests }
}

/// Reads one request head and its body (Content-Length or chunked).
async fn read_request(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return String::new(),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length: ")) {
        let mut body = vec![0u8; len.trim().parse().unwrap()];
        s.read_exact(&mut body).await.unwrap();
        buf.extend_from_slice(&body);
    } else if head.contains("transfer-encoding: chunked") {
        while !buf.ends_with(b"0\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            buf.push(byte[0]);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn pool() -> Arc<IdlePool> {
    Arc::new(IdlePool::new(1, Duration::from_secs(60), 8))
}

fn get(path: &'static str) -> (http::Request<RequestBody>, PathAndQuery) {
    (http::Request::new(RequestBody::Empty), PathAndQuery::from_static(path))
}

async fn call(
    pool: &Arc<IdlePool>,
    script: &Script,
    method: Method,
    path: &'static str,
) -> Result<Response<LeanBody>, Error> {
    let (mut req, path) = get(path);
    *req.method_mut() = method;
    let (head, req_body) = req.into_parts();
    // The fields as a map, as an HTTP/2 client would get them.
    let resp =
        send(pool, &script.authority, Duration::from_secs(2), WAITS, &head, req_body, &Added::default(), None, &path)
            .await?;
    let (mut parts, mut body) = resp.into_parts();
    if let Some(head) = body.take_head() {
        head.append_to(&mut parts.headers);
    }
    Ok(Response::from_parts(parts, body))
}

async fn body(resp: Response<LeanBody>) -> (Vec<u8>, Option<HeaderMap>) {
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

#[tokio::test]
async fn content_length_bodies_and_connection_reuse() {
    let s = scripted(vec![
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello"),
        Answer(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nbye"),
    ])
    .await;
    let p = pool();
    let r = call(&p, &s, Method::GET, "/a").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-up"], "1");
    assert_eq!(body(r).await.0, b"hello");
    let r = call(&p, &s, Method::GET, "/b").await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(body(r).await.0, b"bye");
    assert_eq!(s.accepts.load(Ordering::SeqCst), 1, "the second request reused the connection");
    let reqs = s.requests.lock().unwrap();
    assert!(reqs[0].starts_with("GET /a HTTP/1.1\r\n"), "{}", reqs[0]);
}

#[tokio::test]
async fn chunked_with_extensions_and_trailers() {
    let s = scripted(vec![
        Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nGrpc-Status: 0\r\n\r\n"),
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let p = pool();
    let r = call(&p, &s, Method::GET, "/").await.unwrap();
    assert!(r.headers().get("transfer-encoding").is_none(), "hop-by-hop framing is not passed on");
    let (data, trailers) = body(r).await;
    assert_eq!(data, b"hello world");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert_eq!(body(call(&p, &s, Method::GET, "/").await.unwrap()).await.0, b"ok");
    assert_eq!(s.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn read_until_close_is_not_reused() {
    let s = scripted(vec![
        AnswerAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        Answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
    ])
    .await;
    let p = pool();
    // The scripted server closes after its first answer, which ends the body.
    let r = call(&p, &s, Method::GET, "/").await.unwrap();
    assert_eq!(body(r).await.0, b"until the end");
    let r = call(&p, &s, Method::GET, "/").await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.accepts.load(Ordering::SeqCst), 2, "a close-delimited response ends its connection");
}

#[tokio::test]
async fn no_body_for_head_204_304_and_interim_responses_are_skipped() {
    let s = scripted(vec![
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        Answer(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
        Answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let p = pool();
    let r = call(&p, &s, Method::HEAD, "/").await.unwrap();
    assert_eq!(r.headers()["content-length"], "1000", "HEAD keeps the length it describes");
    assert!(body(r).await.0.is_empty());
    let r = call(&p, &s, Method::GET, "/").await.unwrap();
    assert_eq!(r.status(), 304);
    assert!(body(r).await.0.is_empty());
    let r = call(&p, &s, Method::GET, "/").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await.0, b"ok");
    assert_eq!(s.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connection_close_and_connection_options() {
    let s = scripted(vec![
        Answer(b"HTTP/1.1 200 OK\r\nConnection: close, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 1\r\n\r\na"),
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ])
    .await;
    let p = pool();
    let r = call(&p, &s, Method::GET, "/").await.unwrap();
    for gone in ["connection", "x-secret", "keep-alive"] {
        assert!(r.headers().get(gone).is_none(), "{gone} passed on");
    }
    body(r).await;
    body(call(&p, &s, Method::GET, "/").await.unwrap()).await;
    assert_eq!(s.accepts.load(Ordering::SeqCst), 2, "`Connection: close` is honoured");
}

#[tokio::test]
async fn malformed_responses_are_errors() {
    let cases: [&'static [u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ];
    for case in cases {
        let s = scripted(vec![Answer(case)]).await;
        let r = call(&pool(), &s, Method::GET, "/").await;
        assert!(matches!(r, Err(Error::Protocol(_))), "{:?} accepted", String::from_utf8_lossy(case));
    }
    // Errors inside the body surface as body errors.
    for case in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    ] {
        let s = scripted(vec![AnswerAndClose(case)]).await;
        let r = call(&pool(), &s, Method::GET, "/").await.unwrap();
        assert!(r.into_body().collect().await.is_err(), "{:?}", String::from_utf8_lossy(case));
    }
}

#[tokio::test]
async fn ambiguous_framing_is_decoded_but_the_connection_not_reused() {
    let s = scripted(vec![
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz"),
    ])
    .await;
    let p = pool();
    let r = call(&p, &s, Method::GET, "/").await.unwrap();
    assert!(r.headers().get("content-length").is_none(), "the length of a chunked body is not passed on");
    assert_eq!(body(r).await.0, b"ok");
    body(call(&p, &s, Method::GET, "/").await.unwrap()).await;
    assert_eq!(s.accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_stale_pooled_connection_is_retried_for_safe_requests() {
    // The server answers once per connection and then closes: the pooled connection is dead
    // when the second request comes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let a = accepts.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(s);
        }
    });
    let p = pool();
    for _ in 0..3 {
        let (req, path) = get("/");
        let (head, req_body) = req.into_parts();
        let r = send(&p, &authority, Duration::from_secs(2), WAITS, &head, req_body, &Added::default(), None, &path)
            .await
            .unwrap();
        assert_eq!(body(r).await.0, b"ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 3);
}

#[test]
fn request_heads() {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("client.example"));
    headers.insert("content-length", HeaderValue::from_static("7"));
    headers.insert("x-keep", HeaderValue::from_static("1"));
    let mut added = Added::default();
    static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    added.push(&X_REQUEST_ID, HeaderValue::from_static("rid"));
    let upstream_host = HeaderValue::from_static("10.0.0.1:8080");
    let mut out = Vec::new();
    // With a length: sent as is, the client's Host replaced.
    encode_head(
        &mut out,
        &Method::POST,
        &PathAndQuery::from_static("/p?q=1"),
        (&headers, &added, Some(&upstream_host)),
        false,
    );
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "POST /p?q=1 HTTP/1.1\r\ncontent-length: 7\r\nx-keep: 1\r\nx-request-id: rid\r\nhost: 10.0.0.1:8080\r\n\r\n"
    );
    // Without a usable length the body is chunked and no length is sent.
    encode_head(&mut out, &Method::POST, &PathAndQuery::from_static("/p"), (&headers, &added, None), true);
    let head = String::from_utf8(out).unwrap();
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("host: client.example\r\n"), "{head}");
    assert!(head.ends_with("transfer-encoding: chunked\r\n\r\n"), "{head}");
}

#[tokio::test]
async fn chunked_uploads_reach_the_upstream_intact() {
    let s = scripted(vec![Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]).await;
    let mut conn = connect(&s.authority, Duration::from_secs(1)).await.unwrap();
    encode_head(
        &mut conn.out,
        &Method::POST,
        &PathAndQuery::from_static("/up"),
        (&HeaderMap::new(), &Added::default(), None),
        true,
    );
    conn.io.write_all(&conn.out).await.unwrap();
    let mut body = http_body_util::StreamBody::new(futures_util::stream::iter([
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::from_static(b"defg"))),
    ]));
    assert!(send_body(&mut conn, &mut body, true, WAITS).await.unwrap());
    let (resp, _, _) = read_head(&mut conn, &Method::POST).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = s.requests.lock().unwrap()[0].clone();
    assert!(seen.ends_with("\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"), "{seen:?}");
}

#[tokio::test]
async fn an_early_answer_stops_the_upload() {
    // The upstream refuses before reading the body; the client must not hang writing it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 64];
        let _ = s.read(&mut head).await;
        s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let mut conn = connect(&authority, Duration::from_secs(1)).await.unwrap();
    encode_head(
        &mut conn.out,
        &Method::POST,
        &PathAndQuery::from_static("/"),
        (&HeaderMap::new(), &Added::default(), None),
        true,
    );
    conn.io.write_all(&conn.out).await.unwrap();
    let sent_all = tokio::time::timeout(Duration::from_secs(3), send_body(&mut conn, &mut EndlessBody, true, WAITS))
        .await
        .unwrap()
        .unwrap();
    assert!(!sent_all, "the early answer stopped the upload");
    let (resp, _, reusable) = read_head(&mut conn, &Method::POST).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert!(!reusable);
}

#[test]
fn chunk_size_lines() {
    assert_eq!(parse_chunk_size(b"1a\r\n").unwrap(), Some((4, 26)));
    assert_eq!(parse_chunk_size(b"1A;name=v\r\n").unwrap(), Some((11, 26)));
    assert_eq!(parse_chunk_size(b"0\r\n").unwrap(), Some((3, 0)));
    assert_eq!(parse_chunk_size(b"1a").unwrap(), None);
    assert!(parse_chunk_size(b"\r\n").is_err());
    assert!(parse_chunk_size(b"xyz\r\n").is_err());
    assert!(parse_chunk_size(b"1a\n").is_err(), "bare LF");
    assert!(parse_chunk_size(b"ffffffffffffffff\r\n").is_err(), "too large");
    assert!(parse_chunk_size(&[b'1'; MAX_CHUNK_LINE + 1]).is_err());
}

/// A request body that never ends, to see that an early answer stops the upload.
struct EndlessBody;

impl Body for EndlessBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))))
    }
}

#[tokio::test]
async fn response_fields_pass_on_as_they_came_and_the_gateways_win() {
    let s = scripted(vec![Answer(
        b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nDate: Sun, 29 Nov 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    )])
    .await;
    let p = pool();
    let (req, path) = get("/");
    let (head, req_body) = req.into_parts();
    let resp = send(&p, &s.authority, Duration::from_secs(2), WAITS, &head, req_body, &Added::default(), None, &path)
        .await
        .unwrap();
    let (mut parts, mut lean) = resp.into_parts();
    let head = lean.take_head().expect("the head's fields");
    assert!(lean.take_head().is_none(), "taken once");
    let fields: Vec<(String, String)> = head
        .fields()
        .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["X-Request-Id", "Content-Type", "Date"], "framing and hop-by-hop fields are not passed on");
    assert_eq!(head.length(), Some(2));
    assert!(head.has_date());
    // As a map (for HTTP/2), a field the gateway set keeps the gateway's value.
    parts.headers.insert("x-request-id", HeaderValue::from_static("gateway"));
    head.append_to(&mut parts.headers);
    assert_eq!(parts.headers.get_all("x-request-id").iter().collect::<Vec<_>>(), ["gateway"]);
    assert_eq!(parts.headers["content-type"], "text/plain");
    assert_eq!(parts.headers["content-length"], "2");
    assert!(parts.headers.get("x-hop").is_none() && parts.headers.get("te").is_none());
}

#[tokio::test]
async fn expired_idle_connections_are_closed_without_traffic() {
    let s = scripted(vec![Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]).await;
    let p = Arc::new(IdlePool::new(1, Duration::from_millis(300), 8));
    IdlePool::sweep_in_background(&p);
    let idle = |p: &IdlePool| p.slots.iter().map(|s| s.lock().unwrap().len()).sum::<usize>();
    assert_eq!(body(call(&p, &s, Method::GET, "/a").await.unwrap()).await.0, b"ok");
    assert_eq!(idle(&p), 1, "the connection went back to the pool");
    // The sweep runs every second at the shortest.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(idle(&p), 0, "the expired connection was closed with no request to notice it");
}
