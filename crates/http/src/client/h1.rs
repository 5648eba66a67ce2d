//! A lean HTTP/1.1 client for plain-text upstreams, the hot path of a sidecar.
//!
//! Why not hyper-util's pooled client: measured under callgrind, it cost about 20k
//! instructions per proxied request (pool checkout and return, a channel to a separate
//! connection task, several moves of the request) on top of the HTTP work itself; that alone
//! is more than nginx spends on a whole request. Here the request's own task writes the
//! request, reads the response head, and hands the connection to the response body, which
//! reads the rest as the client consumes it and returns the connection to a per-worker idle
//! pool when the message is complete. No task, channel or lock sits in between.
//!
//! Parsing uses `httparse` (hyper's parser). Message framing follows RFC 9112 §6.3:
//! `Transfer-Encoding` over `Content-Length` (and then the connection is not reused), a
//! final transfer coding other than `chunked` and differing lengths are errors, no body for `HEAD`, 1xx, 204 and 304, otherwise
//! read-until-close. A connection is reused only after a complete, unambiguous exchange.
//! TLS, HTTP/2 and protocol upgrades use hyper's client instead.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, COOKIE, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::{BoxError, ClientBodyErrorKind, RequestBody, client_body_error, is_body_too_large};
use crate::client::{Added, Waits};
use crate::framing::{Chunk, Decoded, Framing, HeadFacts, LengthError, decode};

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head or trailer section.
const MAX_HEADERS: usize = 128;
/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// Could not connect (nothing was sent).
    Connect(io::Error),
    /// The client's body went over its limit.
    BodyTooLarge,
    /// A reused connection was closed by the upstream before it answered: safe to retry
    /// a request that had no body.
    Stale,
    /// The client's request body failed (malformed, or the client went away) while it was
    /// being sent: the client's fault, not the upstream's.
    ClientBody(ClientBodyErrorKind, BoxError),
    /// The upstream did not take a part of the request, or did not answer once it had it
    /// all, within the request timeout.
    Timeout,
    /// The upstream broke the exchange or sent something that is not HTTP/1.1.
    Protocol(BoxError),
}

fn protocol(msg: impl Into<BoxError>) -> Error {
    Error::Protocol(msg.into())
}

/// One connection to an upstream.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Scratch space for request heads.
    out: Vec<u8>,
    /// Scratch space for response field offsets.
    fields: FieldOffsets,
    idle_since: Instant,
    reused: bool,
    /// The longest pause within a response body: the route's upstream timeout (set by
    /// [`send`] for each exchange).
    body_idle: Duration,
    /// Armed while the response body waits for the upstream (see `timer::poll_stalled`).
    body_stall: Option<crate::timer::Sleep>,
}

/// Idle connections to one endpoint, one list per worker (index: worker slot), most
/// recently used last.
#[derive(Debug)]
pub struct IdlePool {
    slots: Box<[Mutex<VecDeque<Box<Conn>>>]>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl IdlePool {
    /// A pool for `workers` workers (plus slot 0 for other threads).
    pub fn new(workers: usize, idle_timeout: Duration, max_idle: usize) -> IdlePool {
        IdlePool { slots: (0..=workers).map(|_| Mutex::new(VecDeque::new())).collect(), idle_timeout, max_idle }
    }

    fn slot(&self) -> &Mutex<VecDeque<Box<Conn>>> {
        &self.slots[crate::listener::worker_slot().min(self.slots.len() - 1)]
    }

    /// A live idle connection, if there is one. Expired ones and ones the upstream closed
    /// are dropped on the way.
    fn checkout(&self) -> Option<Box<Conn>> {
        // Only this worker touches its slot: the lock is never contended.
        let mut idle = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        self.drop_expired(&mut idle, crate::timer::now());
        while let Some(mut conn) = idle.pop_back() {
            // Readable while idle means closed (or garbage): either way, unusable. This costs
            // no system call unless the socket was flagged readable.
            let mut probe = [0u8; 1];
            match conn.io.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.reused = true;
                    return Some(conn);
                }
                _ => continue,
            }
        }
        None
    }

    fn checkin(&self, mut conn: Box<Conn>) {
        // A body ends only after a read that made progress, which disarms its stall timer.
        debug_assert!(conn.body_stall.is_none(), "a connection went idle with its stall timer armed");
        let now = crate::timer::now();
        conn.idle_since = now;
        let mut idle = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        self.drop_expired(&mut idle, now);
        if idle.len() < self.max_idle {
            idle.push_back(conn);
        }
    }

    /// Closes the connections idle for `idle_timeout` or longer (the oldest are at the front).
    fn drop_expired(&self, idle: &mut VecDeque<Box<Conn>>, now: Instant) {
        while idle.front().is_some_and(|c| now.duration_since(c.idle_since) >= self.idle_timeout) {
            idle.pop_front();
        }
    }

    /// Closes every worker's expired connections. Checking a connection in or out does it for
    /// the worker's own, as traffic passes; this does it when none does.
    pub fn sweep(&self) {
        let now = crate::timer::now();
        for slot in &self.slots {
            self.drop_expired(&mut slot.lock().unwrap_or_else(|e| e.into_inner()), now);
        }
    }

    /// Sweeps `pool` every half `idle_timeout` (at least every second, at most every minute)
    /// for as long as it exists, on the runtime of the caller (none outside one: a pool made
    /// outside a runtime never serves).
    pub fn sweep_in_background(pool: &Arc<IdlePool>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let every = (pool.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let pool = Arc::downgrade(pool);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match pool.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
            }
        });
    }
}

/// Connections are boxed: one allocation per connection, and the request and response
/// futures and bodies that carry one move a pointer instead of the whole state.
async fn connect(authority: &Authority, timeout: Duration) -> Result<Box<Conn>, Error> {
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let io = crate::timer::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| Error::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(Error::Connect)?;
    let _ = io.set_nodelay(true);
    Ok(Box::new(Conn {
        io,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        fields: Vec::with_capacity(32),
        idle_since: crate::timer::now(),
        reused: false,
        // Set for each exchange, when its body is handed out.
        body_idle: Duration::ZERO,
        body_stall: None,
    }))
}

/// Sends a request (its head `parts`, borrowed, and its body) to `authority` (requesting `path`)
/// and returns once the response head is in. `timeout` bounds what the upstream is waited
/// for: taking the head, taking each part of the body, and answering once it has the whole
/// request. Time spent waiting for the client's body is the client's, bounded by its own
/// idle limit.
/// A request without a body that hits a connection the upstream had just closed is sent
/// again on a fresh one.
#[allow(clippy::too_many_arguments)] // Borrowed inputs; a struct of them would be built per request.
pub async fn send(
    pool: &Arc<IdlePool>,
    authority: &Authority,
    connect_timeout: Duration,
    waits: Waits,
    parts: &http::request::Parts,
    body: RequestBody,
    added: &Added,
    host: Option<&HeaderValue>,
    path: &PathAndQuery,
) -> Result<Response<LeanBody>, Error> {
    let retryable = body.is_end_stream() && is_idempotent(&parts.method);
    let conn = match pool.checkout() {
        Some(c) => c,
        None => connect(authority, connect_timeout).await?,
    };
    match exchange(conn, &parts.method, path, &parts.headers, added, host, body, waits).await {
        Err(Error::Stale) if retryable => {
            let conn = connect(authority, connect_timeout).await?;
            exchange(conn, &parts.method, path, &parts.headers, added, host, RequestBody::Empty, waits).await
        }
        Err(Error::Stale) => Err(protocol("the upstream closed the connection before answering")),
        other => other,
    }
    .map(|(resp, mut conn, framing, reusable)| {
        conn.body_idle = waits.upstream;
        let (parts, head) = resp.into_parts();
        let mut body = LeanBody { conn: Some(conn), framing, reusable, pool: pool.clone(), head: Some(head) };
        if matches!(body.framing, Framing::Length(0)) {
            body.finish();
        }
        Response::from_parts(parts, body)
    })
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

type Exchange = (Response<RawHead>, Box<Conn>, Framing, bool);

#[allow(clippy::too_many_arguments)] // Borrowed inputs, as `send`'s.
async fn exchange(
    mut conn: Box<Conn>,
    method: &Method,
    path: &PathAndQuery,
    headers: &HeaderMap,
    added: &Added,
    host: Option<&HeaderValue>,
    mut body: RequestBody,
    waits: Waits,
) -> Result<Exchange, Error> {
    let timeout = waits.upstream;
    let has_body = !body.is_end_stream();
    let chunked = has_body && !headers.contains_key(CONTENT_LENGTH);
    encode_head(&mut conn.out, method, path, (headers, added, host), chunked);
    let Conn { io, out, .. } = &mut *conn;
    // A head almost always goes out in one write: the timer is set only if it does not.
    let mut write = std::pin::pin!(io.write_all(out));
    let written = match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(w) => Ok(w),
        Poll::Pending => crate::timer::timeout(timeout, write).await,
    };
    match written {
        Err(_) => return Err(Error::Timeout),
        Ok(Err(e)) => return Err(if conn.reused { Error::Stale } else { protocol(e) }),
        Ok(Ok(())) => {}
    }
    let mut complete = true;
    if has_body {
        complete = send_body(&mut conn, &mut body, chunked, waits).await?;
    }
    let (resp, framing, keep_alive) =
        crate::timer::timeout(timeout, read_head(&mut conn, method)).await.map_err(|_| Error::Timeout)??;
    let reusable = complete && keep_alive && !matches!(framing, Framing::Eof);
    Ok((resp, conn, framing, reusable))
}

/// The request line and headers: the client's (hop-by-hop ones already removed), then the
/// gateway's own. The framing header is ours to choose.
/// `fields`: the client's headers, the gateway's own, and the `Host` to send instead of the
/// client's (if any).
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &PathAndQuery,
    (headers, added, host): (&HeaderMap, &Added, Option<&HeaderValue>),
    chunked: bool,
) {
    fn line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut cookie = false;
    for (name, value) in headers {
        if (chunked && name == CONTENT_LENGTH) || (host.is_some() && name == HOST) {
            continue;
        }
        if name == COOKIE {
            cookie = true;
            continue;
        }
        line(out, name, value);
    }
    // An HTTP/2 client may split its cookies over several fields; HTTP/1.1 has one, the
    // pairs joined with "; " (RFC 9113 §8.2.3, RFC 6265 §5.4).
    // (Looked up only when there is one: most requests carry no cookie.)
    let mut cookies = cookie.then(|| headers.get_all(COOKIE).iter()).into_iter().flatten();
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for more in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(more.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in added.iter() {
        line(out, name, value);
    }
    if let Some(h) = host {
        line(out, &HOST, h);
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Streams the client's body upstream. Returns false when the upstream started answering
/// before the body was all sent (the rest is dropped, and so is the connection afterwards).
/// `waits`: how long the upstream may take to accept each part, and the longest the client
/// may pause (the HTTP/1.1 codec enforces the same; HTTP/2 clients' bodies get it here, and
/// only here, where nothing else is being relayed meanwhile: a gRPC stream relayed by hyper
/// may stay quiet for as long as it likes).
async fn send_body<B>(conn: &mut Conn, body: &mut B, chunked: bool, waits: Waits) -> Result<bool, Error>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let Conn { io, buf, .. } = conn;
    let (mut rd, mut wr) = io.split();
    loop {
        // While waiting for the client's next bytes or for the upstream to take ours, an
        // early answer (such as the upstream refusing the body) ends the upload.
        let frame = tokio::select! {
            biased;
            f = crate::timer::timeout(waits.client_idle, body.frame()) => match f {
                Ok(f) => f,
                Err(_) => {
                    let e = "no part of the body arrived in time".into();
                    return Err(Error::ClientBody(ClientBodyErrorKind::Stalled, e));
                }
            },
            r = rd.read_buf(buf) => return early_answer(r),
        };
        // What to write, and whether it ends the body.
        let (mut out, last) = match frame {
            None if chunked => (Bytes::from_static(b"0\r\n\r\n").chain(Bytes::new()).chain(Bytes::new()), true),
            None => return Ok(true),
            Some(Err(e)) if is_body_too_large(e.as_ref()) => return Err(Error::BodyTooLarge),
            // The body is the client's: whatever broke it, the upstream is not to blame.
            Some(Err(e)) => {
                let kind = client_body_error(e.as_ref()).unwrap_or(ClientBodyErrorKind::Aborted);
                return Err(Error::ClientBody(kind, e));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) if chunked => {
                    let size = Bytes::from(format!("{:x}\r\n", data.len()));
                    (size.chain(data).chain(Bytes::from_static(b"\r\n")), false)
                }
                Ok(data) => (Bytes::new().chain(data).chain(Bytes::new()), false),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) if chunked => {
                        let mut t = Vec::from(&b"0\r\n"[..]);
                        for (name, value) in &trailers {
                            t.extend_from_slice(name.as_str().as_bytes());
                            t.extend_from_slice(b": ");
                            t.extend_from_slice(value.as_bytes());
                            t.extend_from_slice(b"\r\n");
                        }
                        t.extend_from_slice(b"\r\n");
                        (Bytes::from(t).chain(Bytes::new()).chain(Bytes::new()), true)
                    }
                    // Trailers cannot be sent with a declared length; drop them.
                    _ => continue,
                },
            },
        };
        let step = crate::timer::timeout(waits.upstream, async {
            tokio::select! {
                biased;
                w = wr.write_all_buf(&mut out) => Ok(w),
                r = rd.read_buf(buf) => Err(r),
            }
        });
        match step.await {
            Err(_) => return Err(Error::Timeout),
            Ok(Ok(w)) => w.map_err(protocol)?,
            Ok(Err(r)) => return early_answer(r),
        }
        if last {
            return Ok(true);
        }
    }
}

fn early_answer(read: io::Result<usize>) -> Result<bool, Error> {
    match read {
        Ok(0) | Err(_) => Err(protocol("the upstream closed the connection while receiving the body")),
        Ok(_) => Ok(false),
    }
}

/// Reads and parses the response head, skipping interim (1xx) responses.
async fn read_head(conn: &mut Conn, method: &Method) -> Result<(Response<RawHead>, Framing, bool), Error> {
    let mut got_any = !conn.buf.is_empty();
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, &mut conn.fields, method)? {
                Some(Parsed::Interim) => continue,
                Some(Parsed::Final(r)) => return Ok(r),
                None if conn.buf.len() > MAX_HEAD => return Err(protocol("upstream response head too large")),
                None => {}
            }
        }
        conn.buf.reserve(READ_CHUNK);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) if !got_any && conn.reused => return Err(Error::Stale),
            Ok(0) => return Err(protocol("the upstream closed the connection before answering")),
            Ok(_) => got_any = true,
            Err(_) if !got_any && conn.reused => return Err(Error::Stale),
            Err(e) => return Err(protocol(e)),
        }
    }
}

// Returned once per response and matched at once: boxing the large variant would cost an
// allocation per response for nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Interim,
    Final((Response<RawHead>, Framing, bool)),
}

/// Where the fields of a head are: name start and end, value start and end.
type FieldOffsets = Vec<(usize, usize, usize, usize)>;

/// Parses a complete head from the front of `buf` (consuming it), or `None` if incomplete.
/// `at` is scratch space kept with the connection.
fn parse_head(buf: &mut BytesMut, at: &mut FieldOffsets, method: &Method) -> Result<Option<Parsed>, Error> {
    // Uninitialised slots: httparse writes only those it fills (no 4 KiB memset per response).
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(protocol(format!("invalid upstream response: {e}"))),
    };
    // The limit holds however the head arrived (in pieces, or whole in one read).
    if head_len > MAX_HEAD {
        return Err(protocol("upstream response head too large"));
    }
    // Status codes are 100-599 (RFC 9110 §15); httparse takes any three digits.
    let code = res.code.unwrap_or(0);
    if !(100..=599).contains(&code) {
        return Err(protocol("invalid upstream status"));
    }
    let status = StatusCode::from_u16(code).map_err(|_| protocol("invalid upstream status"))?;
    let version = if res.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(protocol("unexpected protocol switch"));
        }
        buf.advance(head_len);
        return Ok(Some(Parsed::Interim));
    }
    // One pass over the fields: record where each is (the head is about to move into a
    // shared buffer), then build the header map from slices of it (no copies), reading the
    // framing and connection fields on the way instead of looking them up afterwards. Those
    // are hop-by-hop (RFC 9110 §7.6.1): they describe this connection and are not passed on.
    let base = buf.as_ptr() as usize;
    at.clear();
    for h in res.headers.iter() {
        let name = h.name.as_ptr() as usize - base;
        let value = if h.value.is_empty() { 0 } else { h.value.as_ptr() as usize - base };
        at.push((name, name + h.name.len(), value, value + h.value.len()));
    }
    let head = buf.split_to(head_len).freeze();
    // The fields passed on stay where they are, in the head's bytes (httparse has checked
    // their names and values): building a header map of them and writing it out again cost a
    // fifth of a proxied request. A map is made only where one is needed (HTTP/2 clients).
    let mut fields = Vec::with_capacity(at.len());
    let mut facts = HeadFacts::default();
    // Fields named in `Connection` options (RFC 9110 §7.6.1), to be removed.
    let mut named: Vec<HeaderName> = Vec::new();
    let mut date = false;
    for &(ns, ne, vs, ve) in at.iter() {
        let name = &head[ns..ne];
        let raw = &head[vs..ve];
        match classify(name) {
            Field::Connection => facts.connection(raw, |option| named.extend(HeaderName::from_bytes(option).ok())),
            Field::TransferEncoding => facts.transfer_encoding(raw),
            Field::HopByHop => {}
            Field::ContentLength => facts.content_length(raw, 19).map_err(|e| match e {
                LengthError::Invalid => protocol("invalid Content-Length"),
                LengthError::Conflicting => protocol("conflicting Content-Length values"),
            })?,
            Field::Date => {
                date = true;
                fields.push([ns, ne, vs, ve].map(|o| o as u32));
            }
            Field::Other => fields.push([ns, ne, vs, ve].map(|o| o as u32)),
        }
    }
    if !named.is_empty() {
        fields.retain(|f| {
            let name = &head[f[0] as usize..f[1] as usize];
            !named.iter().any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
        });
    }

    let keep_alive = version == Version::HTTP_11 && !facts.close;
    let (framing, unambiguous) = response_framing(&facts, method, status)?;
    // A chunked body is decoded here and framed anew towards the client: its length field
    // (if any) is not passed on.
    let length = if facts.te { None } else { facts.length };
    let mut resp = Response::new(RawHead { head, fields, length, date });
    *resp.status_mut() = status;
    *resp.version_mut() = Version::HTTP_11;
    Ok(Some(Parsed::Final((resp, framing, keep_alive && unambiguous))))
}

/// How a response body is delimited (RFC 9112 §6.3), and whether that was unambiguous.
fn response_framing(facts: &HeadFacts, method: &Method, status: StatusCode) -> Result<(Framing, bool), Error> {
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), true));
    }
    if facts.te {
        // Only bodies whose one coding is `chunked` are relayed. A final coding other than
        // chunked (`gzip`) would be read to the close and passed on as if it were the
        // content; `gzip, chunked` is chunked framing around gzip, which would be passed on
        // with its coding unsaid once the framing is redone: both refused.
        if !facts.chunked_only() {
            return Err(protocol("unsupported transfer coding"));
        }
        return Ok((Framing::Chunked(Chunk::Size), facts.length.is_none()));
    }
    Ok((facts.length.map_or(Framing::Eof, Framing::Length), true))
}

/// The fields of an upstream's response head that are passed on, as they came: offsets into
/// the head's bytes. The framing fields are not among them (the body is framed anew); its
/// declared length is kept apart.
#[derive(Debug)]
pub struct RawHead {
    head: Bytes,
    /// Name start, name end, value start, value end.
    fields: Vec<[u32; 4]>,
    length: Option<u64>,
    date: bool,
}

impl RawHead {
    /// The `Content-Length` the upstream declared (for a body passed on with its length).
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether the upstream sent a `Date`.
    pub fn has_date(&self) -> bool {
        self.date
    }

    /// The fields, as `(name, value)`.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|f| {
            let [ns, ne, vs, ve] = f.map(|o| o as usize);
            (&self.head[ns..ne], &self.head[vs..ve])
        })
    }

    /// Adds the fields (and the declared length) to `map`, except those `map` already has a
    /// value for (set by the gateway, which wins).
    pub fn append_to(&self, map: &mut HeaderMap) {
        let preset: Vec<HeaderName> = map.keys().cloned().collect();
        for f in &self.fields {
            let [ns, ne, vs, ve] = f.map(|o| o as usize);
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(&self.head[ns..ne]), HeaderValue::from_maybe_shared(self.head.slice(vs..ve)))
            else {
                continue;
            };
            if !preset.contains(&name) {
                map.append(name, value);
            }
        }
        if let Some(n) = self.length
            && !preset.contains(&CONTENT_LENGTH)
        {
            map.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// What a response field is to the client, by its name (case-insensitively).
enum Field {
    Connection,
    TransferEncoding,
    ContentLength,
    Date,
    /// Another hop-by-hop field (RFC 9110 §7.6.1): not passed on.
    HopByHop,
    Other,
}

fn classify(name: &[u8]) -> Field {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is(b"te") => Field::HopByHop,
        4 if is(b"date") => Field::Date,
        7 if is(b"upgrade") || is(b"trailer") => Field::HopByHop,
        10 if is(b"connection") => Field::Connection,
        10 if is(b"keep-alive") => Field::HopByHop,
        14 if is(b"content-length") => Field::ContentLength,
        16 if is(b"proxy-connection") => Field::HopByHop,
        17 if is(b"transfer-encoding") => Field::TransferEncoding,
        18 if is(b"proxy-authenticate") => Field::HopByHop,
        _ => Field::Other,
    }
}

/// The body of an upstream response, read from the connection as the client consumes it.
/// At its complete end the connection goes back to the idle pool.
#[derive(Debug)]
pub struct LeanBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    reusable: bool,
    pool: Arc<IdlePool>,
    /// The response head's fields, until the response's writer takes them.
    head: Option<RawHead>,
}

impl LeanBody {
    /// The upstream's response fields, passed on as they came (once).
    pub fn take_head(&mut self) -> Option<RawHead> {
        self.head.take()
    }

    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            self.pool.checkin(conn);
        }
    }
}

/// Reads more from the connection; `Ok(0)` is end of stream.
fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    conn.buf.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut eof = false;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let was_eof_framed = matches!(this.framing, Framing::Eof);
            match decode(&mut this.framing, &mut conn.buf, eof) {
                Ok(Decoded::NeedMore) => match poll_fill(conn, cx) {
                    Poll::Ready(read) => {
                        conn.body_stall = None;
                        eof = read? == 0;
                    }
                    Poll::Pending => {
                        if crate::timer::poll_stalled(&mut conn.body_stall, conn.body_idle, cx).is_ready() {
                            let idle = conn.body_idle;
                            this.conn = None;
                            this.framing = Framing::Done;
                            return Poll::Ready(Some(Err(crate::body::BodyStalled(idle).into())));
                        }
                        return Poll::Pending;
                    }
                },
                Ok(Decoded::Data(data)) => {
                    // The last bytes: hand the connection back now, since a body that reports
                    // its end is not polled again.
                    if matches!(this.framing, Framing::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::Done) => {
                    if was_eof_framed {
                        this.reusable = false;
                    }
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Parses whatever an upstream might send in one buffer, as the client would: interim and
/// final heads, then the body under the framing the head chose. No I/O; it must return,
/// never panic, whatever the bytes. Used by the fuzz target.
pub fn parse_response_bytes(bytes: &[u8], method: &Method) -> Result<Vec<Decoded>, BoxError> {
    let mut buf = BytesMut::from(bytes);
    let mut at = Vec::new();
    let mut framing = loop {
        match parse_head(&mut buf, &mut at, method).map_err(|e| format!("{e:?}"))? {
            Some(Parsed::Interim) => continue,
            Some(Parsed::Final((_, framing, _))) => break framing,
            None => return Ok(Vec::new()),
        }
    };
    let mut out = Vec::new();
    loop {
        match decode(&mut framing, &mut buf, true)? {
            d @ (Decoded::Done | Decoded::Trailers(_)) => {
                out.push(d);
                return Ok(out);
            }
            Decoded::NeedMore => return Ok(out),
            d => out.push(d),
        }
    }
}

#[cfg(test)]
mod tests;
