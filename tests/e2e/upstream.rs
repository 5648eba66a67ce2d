//! A real upstream HTTP server (HTTP/1.1 and h2c) for the gateway to forward to. It runs on
//! its own thread and runtime and behaves by path:
//!
//! - `/slow?ms=N`: answers after N milliseconds;
//! - `/status/N`: answers with status N;
//! - `/bytes/N`: streams N bytes (never held in memory at once);
//! - `/count`: reads the whole body and answers `{"bytes": n}`;
//! - `/trickle?parts=N&ms=M`: a body of N parts of 10 bytes, one every M milliseconds (its
//!   length declared, unless `&chunked=1`);
//! - `/stall`: a head announcing 1,000 bytes, 10 of them, then nothing (the connection open);
//! - `/mirror`: answers at once, its body the request's body, part by part as it comes;
//! - `/upgrade`: accepts an HTTP/1.1 upgrade and echoes bytes;
//! - `/drop`: closes the connection without answering;
//! - anything else: a JSON description of the request as received (body and trailers included;
//!   `headers` holds one value per name, `header_values` every field in order).
//!
//! [`RawUpstream`] answers every request with the same bytes, whatever they are, and closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl Upstream {
    pub fn start() -> Upstream {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = connections.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let counter = counter.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                counter.fetch_add(1, Ordering::Relaxed);
                                handle(req)
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = rx.recv().unwrap();
        Upstream { addr, requests, connections, _shutdown: stop_tx }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    // Behaviours are chosen by the last part of the path, whatever prefix a route adds.
    let path = req.uri().path().to_string();
    let tail = |marker: &str| path.rfind(marker).map(|i| &path[i + marker.len()..]);
    if tail("/slow").is_some() {
        tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
        return Ok(full(StatusCode::OK, "slow done"));
    }
    if let Some(code) = tail("/status/") {
        let code = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        return Ok(full(code, format!("status {}", code.as_u16())));
    }
    if let Some(n) = tail("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        const CHUNK: u64 = 64 * 1024;
        let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
        let stream = futures_util::stream::iter((0..total.div_ceil(CHUNK)).map(move |i| {
            let len = CHUNK.min(total - i * CHUNK) as usize;
            Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len)))
        }));
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert("content-length", total.into());
        return Ok(r);
    }
    if path.ends_with("/trickle") {
        let (parts, ms) = (query(&req, "parts").unwrap_or(3), query(&req, "ms").unwrap_or(100));
        let stream = futures_util::stream::unfold(0, move |i| async move {
            if i == parts {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Some((Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"0123456789"))), i + 1))
        });
        let chunked = query(&req, "chunked").is_some();
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        if !chunked {
            r.headers_mut().insert("content-length", (10 * parts).into());
        }
        return Ok(r);
    }
    if path.ends_with("/stall") {
        let first =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"0123456789")))]);
        let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert("content-length", 1000.into());
        return Ok(r);
    }
    if path.ends_with("/mirror") {
        let stream = futures_util::stream::unfold(req.into_body(), |mut body| async move {
            loop {
                match body.frame().await? {
                    Ok(f) => match f.into_data() {
                        Ok(d) => return Some((Ok::<_, std::io::Error>(Frame::data(d)), body)),
                        Err(_) => continue,
                    },
                    Err(e) => return Some((Err(std::io::Error::other(e)), body)),
                }
            }
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    if path.ends_with("/count") {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        return Ok(full(StatusCode::OK, json!({ "bytes": n }).to_string()));
    }
    if path.ends_with("/upgrade") && req.headers().contains_key("upgrade") {
        let proto = req.headers()["upgrade"].clone();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        r.headers_mut().insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", proto);
        return Ok(r);
    }
    if path.ends_with("/drop") {
        return Err(std::io::Error::other("dropping the connection on purpose"));
    }
    // Describe the request.
    let mut headers = serde_json::Map::new();
    let mut header_values = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = json!(String::from_utf8_lossy(v.as_bytes()));
        headers.insert(k.as_str().to_string(), v.clone());
        let all = header_values.entry(k.as_str()).or_insert_with(|| json!([]));
        all.as_array_mut().unwrap().push(v);
    }
    let mut doc = json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "path": path,
        "version": format!("{:?}", req.version()),
        "headers": headers,
        "header_values": header_values,
    });
    if let Ok(body) = req.into_body().collect().await {
        if let Some(trailers) = body.trailers() {
            let t: serde_json::Map<_, _> = trailers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
                .collect();
            doc["trailers"] = serde_json::Value::Object(t);
        }
        doc["body"] = json!(String::from_utf8_lossy(&body.to_bytes()));
    }
    let mut r = full(StatusCode::OK, doc.to_string());
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("connection", "keep-alive".parse().unwrap());
    r.headers_mut().insert("keep-alive", "timeout=60".parse().unwrap());
    r.headers_mut().insert("x-upstream", "yes".parse().unwrap());
    Ok(r)
}

/// An upstream that answers every request with the same bytes (which need not be valid
/// HTTP) once it has read the request head, then closes the connection.
pub struct RawUpstream {
    pub addr: SocketAddr,
}

impl RawUpstream {
    pub fn start(answer: Vec<u8>) -> RawUpstream {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(&answer);
                });
            }
        });
        RawUpstream { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
