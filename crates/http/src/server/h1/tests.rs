use super::*;

fn settings() -> Settings {
    Settings { header_read_timeout: Duration::from_secs(5), max_head: 1024, max_headers: 8, http2: true }
}

fn parse_all(bytes: &[u8]) -> Result<Option<Head>, Problem> {
    parse(&mut BytesMut::from(bytes), &settings())
}

fn refused(bytes: &[u8]) -> u16 {
    match parse_all(bytes) {
        Err(p) => p.status.as_u16(),
        Ok(Some(_)) => 0,
        Ok(None) => 1,
    }
}

#[test]
fn a_request_head_is_parsed_without_its_body() {
    let mut buf = BytesMut::from(
        &b"POST /a/b?c=d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\nabcGET"[..],
    );
    let head = parse(&mut buf, &settings()).unwrap().unwrap();
    assert_eq!(head.parts.method, Method::POST);
    assert_eq!(head.parts.uri, "/a/b?c=d");
    assert_eq!(head.parts.version, Version::HTTP_11);
    assert_eq!(head.parts.headers.get_all("x-a").iter().count(), 2);
    assert!(matches!(head.framing, Framing::Length(3)));
    assert!(head.keep_alive && !head.expect_continue && !head.upgrade);
    assert_eq!(&buf[..], b"abcGET", "the body and what follows stay in the buffer");
}

#[test]
fn an_incomplete_head_asks_for_more() {
    assert!(parse_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    assert!(parse_all(b"GET / HT").unwrap().is_none());
}

#[test]
fn ambiguous_framing_is_refused() {
    assert_eq!(refused(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), 400);
    assert_eq!(refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), 400);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"), 400);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n"), 400);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n"), 400);
    for bad in ["-1", "+1", "0x10", "1 0", "", "9999999999999999999"] {
        let req = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(refused(req.as_bytes()), 400, "{bad:?}");
    }
    // Header names with spaces before the colon, folded lines.
    assert_eq!(refused(b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n"), 400);
    assert_eq!(refused(b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n"), 400);
}

#[test]
fn framing_that_is_clear_is_accepted() {
    let h = parse_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().unwrap();
    assert!(matches!(h.framing, Framing::Chunked(_)));
    let h = parse_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n").unwrap().unwrap();
    assert!(matches!(h.framing, Framing::Length(5)));
    assert_eq!(h.parts.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["5"], "one value");
    let h = parse_all(b"GET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
    assert!(matches!(h.framing, Framing::Length(0)));
}

#[test]
fn connection_semantics() {
    let h = parse_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive);
    let h = parse_all(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
    let h = parse_all(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
    assert!(h.keep_alive);
    let h =
        parse_all(b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
    assert!(h.upgrade);
    let h = parse_all(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
    assert!(!h.upgrade, "an upgrade needs the Connection option too");
    let h = parse_all(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n").unwrap().unwrap();
    assert!(h.expect_continue);
    let h = parse_all(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap();
    assert!(!h.expect_continue, "nothing to continue without a body");
}

#[test]
fn limits() {
    let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), 431);
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1100));
    assert_eq!(refused(big.as_bytes()), 431);
    assert_eq!(oversized(&[b'a'; 2000], 1024).status, StatusCode::URI_TOO_LONG);
    assert_eq!(oversized(b"GET / HTTP/1.1\r\nX: aaaa", 1024).status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // More fields than the stack holds: parsed on the heap.
    let wide = Settings { max_headers: 300, max_head: 64 * 1024, ..settings() };
    let fields: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{fields}\r\n").as_bytes());
    assert_eq!(parse(&mut buf, &wide).unwrap().unwrap().parts.headers.len(), 200);
}

#[test]
fn bad_heads_are_refused_not_panicked_on() {
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /a\x00b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX\x01: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: v\x7f\r\n\r\n",
        b"G\xffT / HTTP/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
    ] {
        assert!(matches!(refused(bad), 400 | 505), "{:?}", String::from_utf8_lossy(bad));
    }
    assert_eq!(refused(b"GET / HTTP/2.0\r\n\r\n"), 505);
}

#[test]
fn numbers_are_written_as_fmt_would() {
    for n in [0u64, 1, 9, 10, 99, 12345, u64::MAX] {
        let mut out = Vec::new();
        portcullis_core::push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().as_bytes());
    }
    for n in [0usize, 1, 15, 16, 255, 0xabcdef, usize::MAX] {
        let mut out = Vec::new();
        hex(&mut out, n);
        assert_eq!(out, format!("{n:x}").as_bytes());
    }
}

#[test]
fn response_lengths_and_tokens() {
    assert_eq!(parse_length(b"0"), Some(0));
    assert_eq!(parse_length(b"123"), Some(123));
    assert_eq!(parse_length(b"1 2"), None);
    assert_eq!(parse_length(b""), None);
    assert!(has_token(b"keep-alive, Close", b"close"));
    assert!(!has_token(b"closed", b"close"));
    let mut out = Vec::new();
    date(&mut out);
    assert!(out.starts_with(b"date: ") && out.ends_with(b" GMT\r\n"), "{}", String::from_utf8_lossy(&out));
}

/// A connection over an in-memory stream: the client's side, and the shared state that
/// the body reads from.
fn link_with(input: &[u8]) -> (Link, tokio::io::DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let link = Arc::new(Mutex::new(ConnState {
        io: Box::new(ours),
        buf: BytesMut::from(input),
        cont: None,
        body_done: false,
        body_cut: false,
        body_waker: None,
        body_idle: Duration::from_secs(5),
        body_stall: None,
    }));
    (link, theirs)
}

#[tokio::test]
async fn a_chunked_body_is_decoded_with_its_trailers_and_no_more() {
    use http_body_util::BodyExt;
    let (link, _client) = link_with(b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-t: 1\r\n\r\nGET / HTTP/1.1\r\n");
    let mut body = Body { link: link.clone(), framing: Framing::Chunked(crate::framing::Chunk::Size) };
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    assert_eq!(data, b"abcde");
    assert_eq!(trailers.unwrap()["x-t"], "1");
    let sh = lock(&link);
    assert!(sh.body_done);
    assert_eq!(&sh.buf[..], b"GET / HTTP/1.1\r\n", "the next request is left alone");
}

#[tokio::test]
async fn continue_is_sent_when_the_body_is_first_read_and_never_after_a_response() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (link, mut client) = link_with(b"");
    lock(&link).cont = Some(0);
    let body = Body { link: link.clone(), framing: Framing::Length(2) };
    let reader = tokio::spawn(async move { body.collect().await.unwrap().to_bytes() });
    let mut got = vec![0u8; CONTINUE.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, CONTINUE);
    client.write_all(b"hi").await.unwrap();
    assert_eq!(&reader.await.unwrap()[..], b"hi");

    // A response before the body was read cancels the interim answer.
    let (link, mut client) = link_with(b"");
    lock(&link).cont = Some(0);
    lock(&link).body_done = false;
    let resp = Response::new(ResponseBody::full("no"));
    let reply = Reply { head: false, version: Version::HTTP_11, keep_alive: true };
    assert!(matches!(respond(&link, resp, &reply, None).await, After::Close), "unread body: close");
    drop(link);
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n") && !out.contains("100 Continue"), "{out}");
    assert!(
        out.contains("content-length: 2\r\n") && out.contains("connection: close\r\n") && out.ends_with("\r\n\r\nno")
    );
}

async fn written(resp: Response<ResponseBody>, reply: Reply) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let (link, mut client) = link_with(b"");
    lock(&link).body_done = true;
    let keep = matches!(respond(&link, resp, &reply, None).await, After::KeepAlive);
    drop(link);
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    (String::from_utf8(out).unwrap(), keep)
}

/// A body of unknown length: two frames, then trailers.
struct Streamed(Vec<Frame<Bytes>>);

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(if self.0.is_empty() { None } else { Some(Ok(self.0.remove(0))) })
    }
}

#[tokio::test]
async fn responses_are_framed_for_their_request() {
    let http11 = || Reply { head: false, version: Version::HTTP_11, keep_alive: true };
    // A known length.
    let (out, keep) = written(Response::new(ResponseBody::full("hello")), http11()).await;
    assert!(
        keep && out.contains("content-length: 5\r\n") && out.contains("\r\ndate: ") && out.ends_with("\r\n\r\nhello")
    );
    // HEAD: the length, no body.
    let mut resp = Response::new(ResponseBody::empty());
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(42));
    let (out, keep) = written(resp, Reply { head: true, ..http11() }).await;
    assert!(keep && out.contains("content-length: 42\r\n") && out.ends_with("\r\n\r\n"), "{out}");
    // 204 and 304: no body, no length invented.
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let (out, keep) = written(resp, http11()).await;
    assert!(keep && !out.contains("content-length") && !out.contains("transfer-encoding"), "{out}");
    // A streamed body of unknown length: chunked for HTTP/1.1, trailers included.
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![Frame::data(Bytes::from("ab")), Frame::data(Bytes::from("cde")), Frame::trailers(trailers)];
    let upstream = Response::new(http_body_util::BodyExt::boxed(Streamed(frames)));
    let (out, keep) = written(upstream.map(ResponseBody::Boxed), http11()).await;
    assert!(keep && out.contains("transfer-encoding: chunked\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\ngrpc-status: 0\r\n\r\n"), "{out}");
    // ... and read-until-close for HTTP/1.0.
    let frames = vec![Frame::data(Bytes::from("ab"))];
    let upstream = Response::new(http_body_util::BodyExt::boxed(Streamed(frames)));
    let (out, keep) = written(upstream.map(ResponseBody::Boxed), Reply { version: Version::HTTP_10, ..http11() }).await;
    assert!(!keep && out.contains("connection: close\r\n") && out.ends_with("\r\n\r\nab"), "{out}");
    // HTTP/1.0 keep-alive is confirmed.
    let (out, keep) =
        written(Response::new(ResponseBody::full("x")), Reply { version: Version::HTTP_10, ..http11() }).await;
    assert!(keep && out.contains("connection: keep-alive\r\n"), "{out}");
    // A body longer than its declared length is cut off and the connection closed.
    let mut resp = Response::new(ResponseBody::full("toolong"));
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(3));
    let (out, keep) = written(resp, http11()).await;
    assert!(!keep && out.ends_with("\r\n\r\ntoo"), "{out}");
}

#[test]
fn chunk_lines_are_strict() {
    use crate::framing::parse_chunk_size;
    assert_eq!(parse_chunk_size(b"1f\r\n").unwrap(), Some((4, 31)));
    assert_eq!(parse_chunk_size(b"3 ;name=value\r\n").unwrap(), Some((15, 3)), "white space before an extension");
    assert_eq!(parse_chunk_size(b"3;a=\"q s\"\r\n").unwrap(), Some((11, 3)));
    for bad in [&b"3 \r\n"[..], b"3;a\rb\r\n", b"3;a\x00\r\n", b"3;\x7f\r\n", b"3;\xff\r\n", b"3\n", b" 3\r\n", b"\r\n"]
    {
        assert!(parse_chunk_size(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(parse_chunk_size(b"1000000000000000\r\n").is_err(), "sizes past 15 hex digits");
    let mut framing = Framing::Chunked(crate::framing::Chunk::Trailers);
    let mut buf = BytesMut::from(&b"X-T: 1\n\n"[..]);
    assert!(decode(&mut framing, &mut buf, false).is_err(), "trailer lines end in CRLF");
}

#[tokio::test]
async fn a_closing_connection_cuts_off_a_body_still_being_read() {
    use http_body_util::BodyExt;
    let (link, client) = link_with(b"");
    let mut body = Body { link: link.clone(), framing: Framing::Length(5) };
    let reader = tokio::spawn(async move { body.frame().await.map(|f| f.is_err()) });
    tokio::task::yield_now().await;
    close(&link).await;
    assert_eq!(reader.await.unwrap(), Some(true), "the reader gets an error, not a hang");
    // And the stream itself is closed: the client sees the end of it.
    drop(link);
    let mut client = client;
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut client, &mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_client_that_reads_nothing_is_cut_off() {
    let (link, _client) = link_with(b"");
    let started = tokio::time::Instant::now();
    // Far more than the in-memory stream holds; the client never reads.
    let err = write_all(&link, &vec![b'x'; 256 * 1024]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= SEND_TIMEOUT, "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    use tokio::io::AsyncReadExt;
    let (link, mut client) = link_with(b"");
    let reader = tokio::spawn(async move {
        let mut got = 0;
        let mut buf = [0u8; 16 * 1024];
        while got < 256 * 1024 {
            // Less than the send timeout between reads, much longer in all.
            tokio::time::sleep(SEND_TIMEOUT / 2).await;
            got += client.read(&mut buf).await.unwrap();
        }
    });
    write_all(&link, &vec![b'x'; 256 * 1024]).await.unwrap();
    reader.await.unwrap();
}

#[test]
fn the_end_of_a_head_is_found() {
    assert!(has_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(has_head_end(b"\n\n"));
    assert!(has_head_end(b"x\n\r\n"));
    assert!(!has_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    assert!(!has_head_end(b"\n\r"));
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_read_whole() {
    use tokio::io::AsyncWriteExt;
    let (link, mut client) = link_with(b"");
    let head = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok";
    let writer = tokio::spawn(async move {
        for b in head {
            client.write_all(&[*b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let Read::Head(h) = read_head(&link, &settings(), true).await else { panic!("no head") };
    assert_eq!(h.parts.uri, "/a");
    assert!(matches!(h.framing, Framing::Length(2)));
    let _client = writer.await.unwrap();
    // And one larger than the limit, a byte at a time, is refused once it passes the limit.
    let (link, mut client) = link_with(b"");
    tokio::spawn(async move {
        let _ = client.write_all(b"GET / HTTP/1.1\r\n").await;
        for _ in 0..2000 {
            if client.write_all(b"a").await.is_err() {
                break;
            }
        }
        client
    });
    let Read::Refused(p) = read_head(&link, &settings(), true).await else { panic!("not refused") };
    assert_eq!(p.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}
