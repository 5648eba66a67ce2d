//! The gateway's HTTP/1.1 server codec.
//!
//! Why not hyper's HTTP/1 server, which served here before: it keeps a read buffer (8 KiB and
//! up) and an 8 KiB write buffer for the whole life of every connection, idle or not, and
//! offers no way to release them: 10,000 idle keep-alive connections held ~400 MB. It also
//! cost ~7k instructions per request in its dispatcher (a quarter of a proxied request),
//! measured under callgrind. Here an idle connection holds no buffer (it waits for
//! readability, then borrows one from a per-worker pool), and a request is parsed, handed to
//! the handler and answered by the connection's own task.
//!
//! Parsing is `httparse` (hyper's parser), strict. Message framing follows RFC 9112 and
//! refuses every ambiguity a request smuggler could use rather than resolving it:
//! `Transfer-Encoding` with `Content-Length`, `Transfer-Encoding` in HTTP/1.0, `chunked`
//! that is not the one and only coding, and differing or malformed lengths are all refused
//! and the connection closed. Bodies are decoded by the same code as upstream responses
//! ([`crate::framing::decode`]). A request body is read only when the handler reads it,
//! so `Expect: 100-continue` is answered only then, and never after a final response.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use portcullis_core::Problem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Io, Rewind};
use crate::body::{BoxError, ClientBody, ClientBodyError, ClientBodyErrorKind, ResponseBody};
use crate::framing::{Chunk, ClosedEarly, Decoded, Framing, HeadFacts, LengthError, content_length, decode};
use crate::{Attached, Handler};

/// How the codec treats a connection's requests.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Time to receive a complete request head, counted from the moment the connection
    /// starts waiting for it (so also the longest idle keep-alive wait).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes.
    pub max_head: usize,
    /// Most header fields in a request head.
    pub max_headers: usize,
    /// Whether a cleartext connection may open with the HTTP/2 preface (prior knowledge).
    pub http2: bool,
}

/// What a connection turned into, when it stopped being HTTP/1.1.
pub enum Switch {
    /// The client opened with the HTTP/2 preface; the stream, preface included.
    Http2(Rewind),
}

/// Read granularity; also the size of pooled read buffers.
const READ_CHUNK: usize = 8 * 1024;
/// Free space below which a buffer is grown before a read.
const MIN_SPARE: usize = 2 * 1024;
/// Most header slots on the stack; a config allowing more fields parses into the heap.
const STACK_SLOTS: usize = 128;
/// Response bytes gathered before they are written.
const MAX_GATHER: usize = 64 * 1024;
/// Body chunks at least this large are written from their own buffer rather than copied.
const COPY_LIMIT: usize = 16 * 1024;
/// Buffers each worker keeps for reuse.
const POOLED: usize = 256;
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Longest wait for a client to take any of a response before it is cut off.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a client to stop sending after its connection is closed on it.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read and dropped while lingering.
const LINGER_BYTES: usize = 256 * 1024;

thread_local! {
    static READ_BUFS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE_BUFS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
}

fn take_read_buf() -> BytesMut {
    READ_BUFS.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

fn give_read_buf(buf: BytesMut) {
    if buf.is_empty() && buf.capacity() >= MIN_SPARE && buf.capacity() <= 4 * READ_CHUNK {
        READ_BUFS.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOLED {
                p.push(buf);
            }
        });
    }
}

fn take_write_buf() -> Vec<u8> {
    WRITE_BUFS.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(4096))
}

fn give_write_buf(mut buf: Vec<u8>) {
    if buf.capacity() <= 2 * MAX_GATHER {
        buf.clear();
        WRITE_BUFS.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOLED {
                p.push(buf);
            }
        });
    }
}

/// The connection's state that the connection's task and the request body share.
struct ConnState {
    io: Box<dyn Io>,
    /// Bytes read and not yet consumed; no capacity while the connection is idle.
    buf: BytesMut,
    /// `Some(written)`: the `100 Continue` owed to the client, and how much of it is out.
    cont: Option<usize>,
    /// The current request's body has been read to its end.
    body_done: bool,
    /// The connection is done with the current request's body: whoever still holds the
    /// body (an upstream client's task) gets an error instead of the connection's input.
    body_cut: bool,
    /// The task waiting in the body's read, woken when the body is cut.
    body_waker: Option<std::task::Waker>,
    /// How long the client may send nothing while its body is awaited.
    body_idle: Duration,
    /// Armed while the body waits for the client; disarmed by every byte that comes. (Kept
    /// here rather than in the body, which request futures hold and move.)
    body_stall: Option<crate::timer::Sleep>,
}

type Link = Arc<Mutex<ConnState>>;

fn lock(link: &Link) -> MutexGuard<'_, ConnState> {
    // Locked only within a poll (never across an await), by tasks of one worker thread.
    link.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnState {
    /// Writes what is owed of a `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(done) = self.cont {
            if done == CONTINUE.len() {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                self.cont = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.cont = Some(done + n);
        }
        Poll::Ready(Ok(()))
    }

    /// The client stopped sending in the middle of a request body (closed its side, or the
    /// connection failed): it is not waiting for an answer, so the connection is dropped at
    /// once and whatever response comes for the request is not written.
    fn client_gone(&mut self, e: impl Into<BoxError>) -> BoxError {
        self.io = Box::new(Detached);
        aborted(e)
    }

    /// Reads more into `buf`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            // Idle until now: wait for input before taking a buffer.
            ready!(self.io.poll_readable(cx))?;
            self.buf = take_read_buf();
        }
        if self.buf.capacity() - self.buf.len() < MIN_SPARE {
            self.buf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
            Poll::Pending => {
                if self.buf.is_empty() {
                    give_read_buf(std::mem::take(&mut self.buf));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

/// The body of a request on an HTTP/1.1 connection, read from the connection as the
/// handler consumes it.
pub struct Body {
    link: Link,
    framing: Framing,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("framing", &self.framing).finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if matches!(this.framing, Framing::Done) {
            return Poll::Ready(None);
        }
        let mut guard = lock(&this.link);
        let sh = &mut *guard;
        // Every failure here is the client's (a broken body, or a client that went away),
        // and says so: the upstream the body is being sent to is not to blame for it.
        if sh.body_cut {
            this.framing = Framing::Done;
            return Poll::Ready(Some(Err(aborted("the client connection is closing"))));
        }
        if let Err(e) = ready!(sh.poll_continue(cx)) {
            this.framing = Framing::Done;
            return Poll::Ready(Some(Err(sh.client_gone(e))));
        }
        let mut eof = false;
        loop {
            match decode(&mut this.framing, &mut sh.buf, eof) {
                Ok(Decoded::NeedMore) => match sh.poll_fill(cx) {
                    Poll::Ready(Err(e)) => {
                        this.framing = Framing::Done;
                        return Poll::Ready(Some(Err(sh.client_gone(e))));
                    }
                    Poll::Pending => {
                        if !sh.body_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            sh.body_waker = Some(cx.waker().clone());
                        }
                        // Only the client's silence counts: while the reader is busy
                        // elsewhere (an upstream slow to take the bytes), nothing is armed.
                        if crate::timer::poll_stalled(&mut sh.body_stall, sh.body_idle, cx).is_ready() {
                            this.framing = Framing::Done;
                            sh.body_stall = None;
                            return Poll::Ready(Some(Err(ClientBodyError::new(
                                ClientBodyErrorKind::Stalled,
                                "no part of the body arrived in time",
                            )
                            .into())));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(n)) => {
                        sh.body_stall = None;
                        eof = n == 0;
                    }
                },
                Ok(Decoded::Data(data)) => {
                    if matches!(this.framing, Framing::Length(0)) {
                        this.framing = Framing::Done;
                        sh.body_done = true;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    sh.body_done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::Done) => {
                    sh.body_done = true;
                    return Poll::Ready(None);
                }
                Err(e) => {
                    // The connection cannot be read past a broken body: it is closed after
                    // the response (`body_done` stays false).
                    this.framing = Framing::Done;
                    if e.is::<ClosedEarly>() {
                        return Poll::Ready(Some(Err(sh.client_gone(e))));
                    }
                    return Poll::Ready(Some(Err(ClientBodyError::new(ClientBodyErrorKind::Malformed, e).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A parsed request head.
pub struct Head {
    /// The request's method, target, version and fields.
    pub parts: http::request::Parts,
    /// How its body is delimited (`Length` or `Chunked`).
    pub framing: Framing,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
    /// The client asks for a protocol upgrade.
    pub upgrade: bool,
}

fn aborted(e: impl Into<BoxError>) -> BoxError {
    ClientBodyError::new(ClientBodyErrorKind::Aborted, e).into()
}

fn malformed(detail: &'static str) -> Problem {
    Problem::bad_request("malformed_request", detail)
}

fn head_too_large() -> Problem {
    Problem::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        "the request head is larger than this gateway accepts",
    )
}

/// What is wrong with a head that has outgrown `max_head` before it was complete: a
/// request line that long is `414`, otherwise `431`.
fn oversized(buf: &[u8], max_head: usize) -> Problem {
    if buf.iter().take(max_head).any(|&b| b == b'\n') {
        head_too_large()
    } else {
        Problem::new(StatusCode::URI_TOO_LONG, "uri_too_long", "the request target is longer than this gateway accepts")
    }
}

/// An absolute-form target (RFC 9112 §3.2.2) names an `http` or `https` resource, without
/// user information (RFC 9110 §4.2.4: a recipient should treat a URI with userinfo as an
/// error; it may be a phishing attempt, and the credentials would travel in the clear).
fn check_absolute_form(uri: &Uri) -> Result<(), Problem> {
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(Problem::bad_request("bad_target", "only http and https targets are served"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(Problem::bad_request("bad_target", "a request target may not carry user information"));
    }
    Ok(())
}

/// How a request body is delimited (RFC 9112 §6.3), refusing every ambiguous case.
fn request_framing(facts: &HeadFacts, version: Version) -> Result<Framing, Problem> {
    if facts.te {
        if version == Version::HTTP_10 {
            return Err(Problem::bad_request("bad_transfer_encoding", "Transfer-Encoding in an HTTP/1.0 request"));
        }
        if facts.length.is_some() {
            return Err(Problem::bad_request(
                "bad_transfer_encoding",
                "a request may not carry both Transfer-Encoding and Content-Length",
            ));
        }
        return match facts.chunked_at {
            _ if facts.chunked_only() => Ok(Framing::Chunked(Chunk::Size)),
            Some(i) if i + 1 == facts.codings => Err(Problem::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_coding",
                "the only transfer coding accepted is chunked",
            )),
            _ => Err(Problem::bad_request("bad_transfer_encoding", "chunked must be the final transfer coding")),
        };
    }
    Ok(Framing::Length(facts.length.unwrap_or(0)))
}

/// Where the parts of a head are in its buffer: the target, then each field's name and value.
type Offsets = Vec<(usize, usize, usize, usize)>;

thread_local! {
    /// Scratch space for field offsets, reused by every parse on the worker.
    static FIELDS: RefCell<Offsets> = const { RefCell::new(Vec::new()) };
}

/// Parses a complete request head from the front of `buf` (consuming it), or `None` if more
/// bytes are needed. Never panics, whatever the bytes; the fuzz target drives it.
pub fn parse(buf: &mut BytesMut, settings: &Settings) -> Result<Option<Head>, Problem> {
    let mut fields = FIELDS.with(|f| std::mem::take(&mut *f.borrow_mut()));
    let parsed = parse_with(buf, settings, &mut fields);
    fields.clear();
    FIELDS.with(|f| *f.borrow_mut() = fields);
    parsed
}

fn parse_with(buf: &mut BytesMut, settings: &Settings, fields: &mut Offsets) -> Result<Option<Head>, Problem> {
    // Record where everything is (the head is about to move into a shared buffer that the
    // target and header values point into, without copies).
    let (head_len, method, target, version) = {
        let bytes: &[u8] = buf;
        let wanted = settings.max_headers.saturating_add(1);
        // Uninitialised slots: httparse writes only those it fills (no memset per request).
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_SLOTS];
        let mut heap = Vec::new();
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if wanted <= STACK_SLOTS {
            &mut stack[..wanted]
        } else {
            heap.resize_with(wanted, MaybeUninit::uninit);
            &mut heap
        };
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(bytes, slots) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(head_too_large()),
            Err(httparse::Error::Version) => {
                return Err(Problem::new(
                    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "unsupported_version",
                    "only HTTP/1.0, HTTP/1.1 and HTTP/2 are served",
                ));
            }
            Err(_) => return Err(malformed("the request head is not valid HTTP/1.1")),
        };
        // Judged as for a head still arriving, so that the answer (`414` for a request line
        // that long, else `431`) does not depend on how the bytes were split.
        if head_len > settings.max_head {
            return Err(oversized(&bytes[..head_len], settings.max_head));
        }
        if req.headers.len() > settings.max_headers {
            return Err(head_too_large());
        }
        let base = bytes.as_ptr() as usize;
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| malformed("the request method is not valid"))?;
        let path = req.path.unwrap_or_default();
        let start = path.as_ptr() as usize - base;
        let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        for h in req.headers.iter() {
            let name = h.name.as_ptr() as usize - base;
            let value = if h.value.is_empty() { name } else { h.value.as_ptr() as usize - base };
            fields.push((name, name + h.name.len(), value, value + h.value.len()));
        }
        (head_len, method, (start, start + path.len()), version)
    };
    let head = buf.split_to(head_len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
        .map_err(|_| malformed("the request target is not valid"))?;
    check_absolute_form(&uri)?;

    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut facts = HeadFacts::default();
    let mut expect_continue = false;
    for &(ns, ne, vs, ve) in fields.iter() {
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| malformed("a header name is not valid"))?;
        let raw = &head[vs..ve];
        if name == header::CONTENT_LENGTH {
            facts.content_length(raw, 18).map_err(|e| match e {
                LengthError::Invalid => Problem::bad_request("bad_content_length", "invalid Content-Length"),
                LengthError::Conflicting => {
                    Problem::bad_request("bad_content_length", "conflicting Content-Length values")
                }
            })?;
            // Set once below, as one value.
            continue;
        } else if name == header::TRANSFER_ENCODING {
            facts.transfer_encoding(raw);
        } else if name == header::CONNECTION {
            facts.connection(raw, |_| {});
        } else if name == header::EXPECT && raw.eq_ignore_ascii_case(b"100-continue") {
            // The gateway meets this expectation itself (when the body is first read); an
            // upstream asked the same would answer with a `100` of its own mid-upload.
            expect_continue = true;
            continue;
        }
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| malformed("a header value is not valid"))?;
        headers.append(name, value);
    }
    let framing = request_framing(&facts, version)?;
    if let Some(n) = facts.length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let keep_alive = match version {
        Version::HTTP_10 => facts.keep_alive && !facts.close,
        _ => !facts.close,
    };
    let upgrade = version == Version::HTTP_11 && facts.upgrade && headers.contains_key(header::UPGRADE);
    let has_body = !matches!(framing, Framing::Length(0));

    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        expect_continue: expect_continue && has_body && version == Version::HTTP_11,
        upgrade,
    }))
}

/// Reads whatever a client might send in one buffer, as the connection would: request
/// heads one after another (pipelining), each followed by its body under the framing its
/// head chose, until the bytes run out or a head is refused. No I/O; it must return, never
/// panic, whatever the bytes. Returns the heads and the body bytes decoded for each. Used by
/// the fuzz target, which also checks the invariants a smuggler would attack.
pub fn parse_requests(bytes: &[u8], settings: &Settings) -> Result<Vec<(Head, Vec<u8>)>, Problem> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(head) = parse(&mut buf, settings)? {
        let mut framing = head.framing;
        let mut body = Vec::new();
        let complete = loop {
            match decode(&mut framing, &mut buf, false) {
                Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                Ok(Decoded::Trailers(_) | Decoded::Done) => break true,
                Ok(Decoded::NeedMore) | Err(_) => break false,
            }
        };
        out.push((head, body));
        if !complete {
            break;
        }
    }
    Ok(out)
}

/// What waiting for a request head came to.
enum Read {
    Head(Box<Head>),
    /// The client closed, went silent past the timeout, or the worker is draining.
    Closed,
    /// The client opened with the HTTP/2 preface.
    Http2,
    /// A head that cannot be served: answered with this problem, then the connection closes.
    Refused(Problem),
}

/// Waits for the next request head, holding no buffer while nothing arrives.
async fn read_head(link: &Link, settings: &Settings, first: bool) -> Read {
    let mut sleep: Option<crate::timer::Sleep> = None;
    // After a first parse found the head incomplete: how far the buffer has been searched
    // for the blank line that ends a head. Parsing again only once one has arrived keeps a
    // head sent a byte at a time from costing a parse of the whole head per byte.
    let mut searched: Option<usize> = None;
    poll_fn(|cx| {
        let mut guard = lock(link);
        let sh = &mut *guard;
        loop {
            if sh.buf.is_empty() {
                if crate::drain::draining() {
                    return Poll::Ready(Read::Closed);
                }
            } else if first && settings.http2 && PREFACE.starts_with(&sh.buf[..sh.buf.len().min(PREFACE.len())]) {
                if sh.buf.len() >= PREFACE.len() {
                    return Poll::Ready(Read::Http2);
                }
            } else if searched.is_some_and(|from| !has_head_end(&sh.buf[from.saturating_sub(3)..])) {
                searched = Some(sh.buf.len());
                if sh.buf.len() > settings.max_head {
                    return Poll::Ready(Read::Refused(oversized(&sh.buf, settings.max_head)));
                }
            } else {
                searched = Some(sh.buf.len());
                match parse(&mut sh.buf, settings) {
                    Ok(Some(head)) => return Poll::Ready(Read::Head(Box::new(head))),
                    Ok(None) if sh.buf.len() > settings.max_head => {
                        return Poll::Ready(Read::Refused(oversized(&sh.buf, settings.max_head)));
                    }
                    Ok(None) => {}
                    Err(problem) => return Poll::Ready(Read::Refused(problem)),
                }
            }
            let deadline = sleep.get_or_insert_with(|| {
                crate::timer::Sleep::until(crate::timer::deadline(settings.header_read_timeout))
            });
            if Pin::new(deadline).poll(cx).is_ready() {
                return Poll::Ready(if sh.buf.is_empty() {
                    Read::Closed
                } else {
                    Read::Refused(Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request head did not arrive in time",
                    ))
                });
            }
            match ready!(sh.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Read::Closed),
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Whether `bytes` hold the blank line that ends a head (`\n\r\n` or, leniently as
/// httparse, `\n\n`).
fn has_head_end(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (bytes.get(i + 1) == Some(&b'\n') || bytes.get(i + 1..i + 3) == Some(b"\r\n")))
}

/// How a response was delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OutFraming {
    /// No body (HEAD, 1xx, 204, 304, or a protocol switch).
    None,
    /// `Content-Length`.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    Close,
}

/// What the request said about how to answer it.
struct Reply {
    head: bool,
    version: Version,
    keep_alive: bool,
}

/// What happened to the connection after a response.
enum After {
    /// The connection was handed over (a protocol switch); the receiver completes when its
    /// new owner drops it.
    Upgraded(tokio::sync::oneshot::Receiver<()>),
    KeepAlive,
    Close,
}

/// Serves HTTP/1.1 requests on `io` until the connection closes. Returns the stream if the
/// client turned out to speak HTTP/2.
pub async fn serve(io: Box<dyn Io>, settings: Settings, conn: Attached, handler: Arc<dyn Handler>) -> Option<Switch> {
    let link: Link = Arc::new(Mutex::new(ConnState {
        io,
        buf: BytesMut::new(),
        cont: None,
        body_done: true,
        body_cut: false,
        body_waker: None,
        body_idle: settings.header_read_timeout,
        body_stall: None,
    }));
    let mut first = true;
    loop {
        let head = match read_head(&link, &settings, first).await {
            Read::Head(head) => head,
            Read::Closed => break,
            Read::Http2 => {
                let mut sh = lock(&link);
                let io = std::mem::replace(&mut sh.io, Box::new(Detached));
                let prefix = std::mem::take(&mut sh.buf).freeze();
                return Some(Switch::Http2(Rewind::new(prefix, io)));
            }
            Read::Refused(problem) => {
                handler.refused(problem.status);
                let resp = problem.to_response(None).map(ResponseBody::full);
                let reply = Reply { head: false, version: Version::HTTP_11, keep_alive: false };
                lock(&link).body_done = false;
                let _ = respond(&link, resp, &reply, None).await;
                break;
            }
        };
        first = false;
        let Head { mut parts, framing, keep_alive, expect_continue, upgrade } = *head;
        let reply = Reply { head: parts.method == Method::HEAD, version: parts.version, keep_alive };
        let upgrade = upgrade.then(|| {
            let (on, tx) = super::upgrade_pair();
            parts.extensions.insert(on);
            tx
        });
        let body = {
            let mut sh = lock(&link);
            sh.body_done = matches!(framing, Framing::Length(0));
            sh.body_cut = false;
            sh.body_waker = None;
            sh.body_stall = None;
            sh.cont = expect_continue.then_some(0);
            if sh.body_done { ClientBody::Empty } else { ClientBody::Http1(Body { link: link.clone(), framing }) }
        };
        let resp = handler.handle(&conn, Request::from_parts(parts, body)).await;
        let resp = if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !(upgrade.is_some() && lock(&link).body_done)
        {
            // The switch cannot happen on this connection (the request body is unread).
            Problem::bad_gateway("the upstream switched protocols on a request that cannot switch")
                .to_response(None)
                .map(ResponseBody::full)
        } else {
            resp
        };
        match respond(&link, resp, &reply, upgrade).await {
            After::KeepAlive => {}
            After::Close => break,
            After::Upgraded(done) => {
                // The connection lives on as a tunnel: it keeps its place among the
                // connections (the limit, the count, the drain) until the tunnel ends.
                let _ = done.await;
                return None;
            }
        }
    }
    // Boxed: rarely needed at length, and an idle connection's task would hold its room.
    crate::boxed!(close(&link)).await;
    None
}

/// Writes a response. Small responses (the usual case) go out in one write: the head and
/// whatever of the body is ready without waiting.
async fn respond(
    link: &Link,
    resp: Response<ResponseBody>,
    reply: &Reply,
    upgrade: Option<tokio::sync::oneshot::Sender<Rewind>>,
) -> After {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let body_done = {
        let mut sh = lock(link);
        // A final response ends the wait for `100 Continue`: never send it after one.
        if sh.cont == Some(0) {
            sh.cont = None;
        }
        sh.body_done
    };
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some() && body_done;
    // A request body not read to its end leaves the connection unusable for another request.
    let mut close = !reply.keep_alive
        || !body_done
        || crate::drain::draining()
        || parts.headers.get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), b"close"));
    // An upstream's fields as they came (the lean client's), else the map's.
    let raw = body.lean_mut().and_then(|lean| lean.take_head());
    let declared = match &raw {
        Some(raw) => raw.length(),
        None => parts.headers.get(header::CONTENT_LENGTH).and_then(|v| parse_length(v.as_bytes())),
    };
    let bodiless = reply.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length_known = declared.or_else(|| body.is_end_stream().then_some(0)).or_else(|| body.size_hint().exact());
    let framing = match length_known {
        _ if switching || bodiless => OutFraming::None,
        Some(n) => OutFraming::Length(n),
        None if reply.version == Version::HTTP_11 => OutFraming::Chunked,
        None => {
            close = true;
            OutFraming::Close
        }
    };

    let mut out = take_write_buf();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(raw) = &raw {
        for (name, value) in raw.fields() {
            // A field the gateway set (the request id) replaces the upstream's.
            if !parts.headers.keys().any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name)) {
                field(&mut out, name, value);
            }
        }
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !raw.as_ref().is_some_and(|r| r.has_date()) && !parts.headers.contains_key(header::DATE) {
        date(&mut out);
    }
    // The body's length; for HEAD and 304 the one the upstream declared (that of the body
    // a GET would get); never for 1xx and 204 (RFC 9110 §8.6).
    let length = match framing {
        _ if switching || status.is_informational() || status == StatusCode::NO_CONTENT => None,
        OutFraming::Length(n) => Some(n),
        OutFraming::None => declared,
        OutFraming::Chunked | OutFraming::Close => None,
    };
    if framing == OutFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        portcullis_core::push_decimal(&mut out, n);
        out.extend_from_slice(b"\r\n");
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if reply.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    let mut complete = true;
    if matches!(framing, OutFraming::Length(_) | OutFraming::Chunked | OutFraming::Close) {
        complete = match write_body(link, &mut body, framing, &mut out).await {
            Ok(complete) => complete,
            Err(_) => {
                give_write_buf(out);
                return After::Close;
            }
        };
    }
    drop(body);
    let written = if out.is_empty() { Ok(()) } else { write_all(link, &out).await };
    give_write_buf(out);
    if written.is_err() {
        return After::Close;
    }
    if switching && let Some(tx) = upgrade {
        let mut sh = lock(link);
        let io = std::mem::replace(&mut sh.io, Box::new(Detached));
        let rest = std::mem::take(&mut sh.buf).freeze();
        let (stream, done) = Rewind::new(rest, io).held();
        let _ = tx.send(stream);
        return After::Upgraded(done);
    }
    // (An unfinished request body already made `close` true.)
    if close || !complete || framing == OutFraming::Close {
        return After::Close;
    }
    After::KeepAlive
}

/// Streams the response body after the head in `out`. Returns whether the body was sent
/// whole (a short or failed body leaves the connection unusable).
async fn write_body(link: &Link, body: &mut ResponseBody, framing: OutFraming, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut left = match framing {
        OutFraming::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        if framing != OutFraming::Chunked && left == 0 {
            return Ok(true);
        }
        // Gather what is ready; write what was gathered before waiting for more.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending if out.is_empty() => poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await,
            Poll::Pending => {
                write_all(link, out).await?;
                out.clear();
                continue;
            }
        };
        match frame {
            None => {
                if framing == OutFraming::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                return Ok(!matches!(framing, OutFraming::Length(_)) || left == 0);
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the connection");
                // What was gathered goes out; the message stays incomplete.
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if data.is_empty() {
                        continue;
                    }
                    let mut over = false;
                    if framing != OutFraming::Chunked && framing != OutFraming::Close {
                        if data.len() as u64 > left {
                            data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                            over = true;
                        }
                        left -= data.len() as u64;
                    }
                    if framing == OutFraming::Chunked {
                        hex(out, data.len());
                        out.extend_from_slice(b"\r\n");
                    }
                    if data.len() >= COPY_LIMIT {
                        write_all(link, out).await?;
                        out.clear();
                        write_all(link, &data).await?;
                    } else {
                        out.extend_from_slice(&data);
                    }
                    if framing == OutFraming::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    if over {
                        tracing::debug!("response body longer than its Content-Length; cut off");
                        return Ok(false);
                    }
                    if out.len() >= MAX_GATHER {
                        write_all(link, out).await?;
                        out.clear();
                    }
                }
                Err(frame) => {
                    if let (OutFraming::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                        out.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            field(out, name.as_str().as_bytes(), value.as_bytes());
                        }
                        out.extend_from_slice(b"\r\n");
                        return Ok(true);
                    }
                    // Trailers cannot follow a declared length: dropped.
                }
            },
        }
    }
}

/// Writes all of `data` (after any `100 Continue` still partly unsent) and flushes. A client
/// that takes none of it for [`SEND_TIMEOUT`] is cut off (a slow reader would otherwise hold
/// the connection, and an upstream connection with it, for as long as it likes); the timer is
/// armed only once a write has to wait.
async fn write_all(link: &Link, data: &[u8]) -> io::Result<()> {
    let mut at = 0;
    let mut stalled: Option<(usize, crate::timer::Sleep)> = None;
    poll_fn(|cx| {
        let mut guard = lock(link);
        let sh = &mut *guard;
        let written = (|| {
            ready!(sh.poll_continue(cx))?;
            while at < data.len() {
                let n = ready!(Pin::new(&mut sh.io).poll_write(cx, &data[at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                at += n;
            }
            Pin::new(&mut sh.io).poll_flush(cx)
        })();
        if written.is_pending() {
            // Progress restarts the clock.
            if stalled.as_ref().is_none_or(|(from, _)| *from != at) {
                stalled = Some((at, crate::timer::Sleep::until(crate::timer::deadline(SEND_TIMEOUT))));
            }
            if let Some((_, sleep)) = stalled.as_mut()
                && Pin::new(sleep).poll(cx).is_ready()
            {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
        }
        written
    })
    .await
}

/// Closes the connection: the sending side first, then (if the client may still be sending
/// a body nobody read) reading and dropping its input for a little while, so that unread
/// input does not make the kernel reset the connection before the client has read the
/// response.
async fn close(link: &Link) {
    let linger = {
        let mut sh = lock(link);
        // Whoever still reads the request body stops now, rather than racing the linger
        // for the same bytes or keeping the connection open after this task has ended.
        sh.body_cut = true;
        if let Some(w) = sh.body_waker.take() {
            w.wake();
        }
        !sh.body_done
    };
    let shutdown = crate::timer::timeout(LINGER, poll_fn(|cx| Pin::new(&mut lock(link).io).poll_shutdown(cx))).await;
    if !matches!(shutdown, Ok(Ok(()))) || !linger {
        lock(link).io = Box::new(Detached);
        return;
    }
    let mut dropped = 0;
    let _ = crate::timer::timeout(LINGER, async {
        let mut scratch = [0u8; 4096];
        while dropped < LINGER_BYTES {
            let n = poll_fn(|cx| {
                let mut sh = lock(link);
                let mut rb = ReadBuf::new(&mut scratch);
                ready!(Pin::new(&mut sh.io).poll_read(cx, &mut rb))?;
                Poll::Ready(Ok::<_, io::Error>(rb.filled().len()))
            })
            .await;
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
    // The stream closes now, even if something still holds the connection's state.
    lock(link).io = Box::new(Detached);
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in lower-case hexadecimal.
fn hex(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n as u64;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A `Date` field for now, formatted once per second per worker.
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        if d.0 == secs {
            field(out, b"date", &d.1);
        }
    });
}

/// A `Content-Length` value the gateway set (digits, or a list of equal lengths).
fn parse_length(v: &[u8]) -> Option<u64> {
    let mut length = None;
    content_length(v, 18, &mut length).ok()?;
    length
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The stream's place holder once the stream has been handed on (to HTTP/2 or an upgrade).
struct Detached;

impl AsyncRead for Detached {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
}

impl AsyncWrite for Detached {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Io for Detached {}

#[cfg(test)]
mod tests;
