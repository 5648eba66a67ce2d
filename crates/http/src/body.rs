//! Body types of the transport. Bodies stream frame by frame in both directions (data and
//! trailers, so gRPC works); they are never collected in memory. Enums rather than boxed
//! trait objects keep the common path free of allocation.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;

/// A boxed error from a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed, cut off past a size limit; of its trailers only the
    /// integrity checks pass ([`request_trailer_allowed`]), and never one of the fields
    /// named here (those the sender vouches for in the head, such as identity fields).
    Client(Limited<ClientBody>, Arc<[HeaderName]>),
    /// A body the gateway read whole (to check it) and sends on as it is, without trailers.
    Full(Option<Bytes>),
    /// No body.
    Empty,
    /// A body whose bytes are counted as they pass (usage metering of a body of unknown
    /// length).
    Counted(Box<Counted<RequestBody>>),
}

/// The body of a request as the client sends it.
#[derive(Debug)]
pub enum ClientBody {
    /// Read from an HTTP/1.1 connection by the gateway's codec.
    Http1(crate::server::h1::Body),
    /// An HTTP/2 stream's data (hyper).
    Http2(Incoming),
    /// No body.
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Http1(b) => Pin::new(b).poll_frame(cx),
            // A stream the client reset or broke: it is gone, and so is its answer.
            ClientBody::Http2(b) => {
                Pin::new(b).poll_frame(cx).map_err(|e| ClientBodyError::new(ClientBodyErrorKind::Aborted, e).into())
            }
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Http1(b) => b.is_end_stream(),
            ClientBody::Http2(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Http1(b) => b.size_hint(),
            ClientBody::Http2(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Whether a request trailer field may be passed on. Request trailers are all but unused
/// (gRPC sends trailers in responses only), and anything a client puts there arrives after
/// every stage has judged the head: a service that merges trailers into headers would read
/// a forwarded host, a hop-by-hop field or a credential no stage ever saw (RFC 9110 §6.5.1).
/// So only integrity checks of the body pass: `Content-Digest`, `Repr-Digest` (RFC 9530),
/// `Digest`, `Content-MD5`, and `x-` fields naming a checksum (`X-Checksum`,
/// `X-Amz-Checksum-Crc32`...). Every other request trailer is dropped.
pub fn request_trailer_allowed(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(n, "content-digest" | "repr-digest" | "digest" | "content-md5")
        || (n.starts_with("x-") && n.contains("checksum"))
}

/// The client's request body failed (its framing was broken, or the client went away): the
/// client's fault, never the upstream's. Carried in the body's error so that whoever sends
/// the body on can tell it from a failure of the upstream.
#[derive(Debug)]
pub struct ClientBodyError {
    /// What went wrong.
    pub kind: ClientBodyErrorKind,
    source: BoxError,
}

/// How a client's request body failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientBodyErrorKind {
    /// The body's framing is broken (a bad chunk size, a malformed trailer section...):
    /// `400`, then the connection closes (RFC 9112 §7.1).
    Malformed,
    /// The client stopped sending mid-body (closed, reset): nobody is left to answer.
    Aborted,
    /// The client sent nothing of its body for longer than the server's
    /// `header_read_timeout`: `408`, then the connection closes.
    Stalled,
}

impl ClientBodyError {
    /// A body error of this kind, wrapping what the codec said.
    pub fn new(kind: ClientBodyErrorKind, source: impl Into<BoxError>) -> Self {
        ClientBodyError { kind, source: source.into() }
    }
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ClientBodyErrorKind::Malformed => write!(f, "malformed request body: {}", self.source),
            ClientBodyErrorKind::Aborted => write!(f, "request body aborted: {}", self.source),
            ClientBodyErrorKind::Stalled => write!(f, "request body stalled: {}", self.source),
        }
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// How the client's body failed, if `err` (or anything it wraps) says it did.
pub fn client_body_error(err: &(dyn std::error::Error + 'static)) -> Option<ClientBodyErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ClientBodyError>() {
            return Some(c.kind);
        }
        cur = e.source();
    }
    None
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Client(b, withheld) => {
                let mut polled = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &mut polled
                    && let Some(trailers) = frame.trailers_mut()
                {
                    let dropped: Vec<HeaderName> =
                        trailers.keys().filter(|n| !request_trailer_allowed(n)).cloned().collect();
                    for name in &dropped {
                        trailers.remove(name);
                    }
                    for name in withheld.iter() {
                        trailers.remove(name);
                    }
                }
                polled
            }
            RequestBody::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Counted(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b, _) => b.is_end_stream(),
            RequestBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            RequestBody::Empty => true,
            RequestBody::Counted(b) => b.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b, _) => b.size_hint(),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Counted(b) => b.inner.size_hint(),
        }
    }
}

/// What a [`Counted`] body calls with its count when it is dropped.
pub type CountReport = Box<dyn FnOnce(u64) + Send + Sync>;

/// A body that counts the data bytes that pass through it, and reports the count once,
/// when it is dropped (sent whole, or cut short).
pub struct Counted<B> {
    inner: B,
    bytes: u64,
    report: Option<CountReport>,
    /// Kept current as bytes pass, for a reader that cannot wait for the end.
    live: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl<B> Counted<B> {
    /// Counts `inner`'s bytes for `report`.
    pub fn new(inner: B, report: CountReport) -> Self {
        Counted { inner, bytes: 0, report: Some(report), live: None }
    }

    /// Counts `inner`'s bytes into `tally` as they pass.
    pub fn live(inner: B, tally: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Counted { inner, bytes: 0, report: None, live: Some(tally) }
    }

    /// The body counted.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B> std::fmt::Debug for Counted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes += data.len() as u64;
            if let Some(t) = &this.live {
                t.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            report(self.bytes);
        }
    }
}

/// The upstream sent no part of its response body for this long (the route's upstream
/// timeout): the response is cut off, and the connection to the upstream closed.
#[derive(Debug)]
pub struct BodyStalled(pub Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the upstream sent no part of its response body for {:?}", self.0)
    }
}

impl std::error::Error for BodyStalled {}

/// An upstream's response body from hyper's client, held to the longest pause between two
/// of its parts (as the lean client's is).
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    idle: Duration,
    stall: Option<crate::timer::Sleep>,
}

impl UpstreamBody {
    /// `body`, which may pause for at most `idle` between two parts.
    pub fn new(body: Incoming, idle: Duration) -> Self {
        UpstreamBody { body, idle, stall: None }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => match crate::timer::poll_stalled(&mut this.stall, this.idle, cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(this.idle).into()))),
                Poll::Pending => Poll::Pending,
            },
            polled => {
                this.stall = None;
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whose turn it is in an exchange through hyper's client, for the upstream's timeout: the
/// upstream's (to take the head or a part of the body, or to answer once it has the whole
/// body), since when; or the client's (to send the next part of its body), which the upstream
/// is not timed for. Also how the upload failed, if it did: over HTTP/2 hyper reports a body
/// error as a reset stream, and the client's fault must not be taken for the upstream's.
#[derive(Debug)]
pub struct Turn(std::sync::Mutex<TurnState>);

#[derive(Debug)]
struct TurnState {
    client: bool,
    since: std::time::Instant,
    failed: Option<UploadFailure>,
    /// The response head is in: what the client sends from now on is a stream relayed as
    /// it comes (a gRPC call may stay quiet for as long as it likes), no longer timed.
    answered: bool,
}

/// How a request body failed on its way through hyper's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadFailure {
    /// The client's body failed ([`ClientBodyError`]).
    Client(ClientBodyErrorKind),
    /// The body went past the route's size limit.
    TooLarge,
}

impl Turn {
    /// The upstream's turn, from now.
    pub fn new() -> Self {
        Turn(std::sync::Mutex::new(TurnState {
            client: false,
            since: crate::timer::now(),
            failed: None,
            answered: false,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The upstream has a part to take, or the whole body: its turn, from now.
    fn upstream(&self) {
        let mut t = self.state();
        t.client = false;
        t.since = crate::timer::now();
    }

    /// The body waits for the client: its turn (from the first wait), and whether that wait
    /// is timed (it is not once the answer has begun).
    fn client(&self) -> bool {
        let mut t = self.state();
        if !t.client {
            t.client = true;
            t.since = crate::timer::now();
        }
        !t.answered
    }

    /// When the upstream's time runs out if it does nothing more (never early: `since` may be
    /// a tick old): `None` while it waits for the client.
    pub fn upstream_deadline(&self, timeout: Duration) -> Option<std::time::Instant> {
        let t = self.state();
        (!t.client).then(|| t.since + timeout + crate::timer::TICK)
    }

    /// The response head is in; the rest of the upload is no longer timed.
    pub fn answered(&self) {
        self.state().answered = true;
    }

    /// How the upload failed, if it did.
    pub fn upload_failure(&self) -> Option<UploadFailure> {
        self.state().failed
    }
}

impl Default for Turn {
    fn default() -> Self {
        Self::new()
    }
}

/// A request body as hyper's client sends it: it tells the exchange's [`Turn`] whenever the
/// upstream has a part to take (or the whole body) and whenever it waits for the client, and
/// holds the client to the longest pause within its body (as the lean client does).
#[derive(Debug)]
pub struct HyperUpload {
    body: RequestBody,
    turn: Arc<Turn>,
    client_idle: Duration,
    stall: Option<crate::timer::Sleep>,
}

impl HyperUpload {
    /// `body`, reporting to `turn`; the client may pause for at most `client_idle`.
    pub fn new(body: RequestBody, turn: Arc<Turn>, client_idle: Duration) -> Self {
        HyperUpload { body, turn, client_idle, stall: None }
    }
}

impl Body for HyperUpload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                if !this.turn.client() {
                    this.stall = None;
                    return Poll::Pending;
                }
                if crate::timer::poll_stalled(&mut this.stall, this.client_idle, cx).is_ready() {
                    this.turn.state().failed = Some(UploadFailure::Client(ClientBodyErrorKind::Stalled));
                    let stalled =
                        ClientBodyError::new(ClientBodyErrorKind::Stalled, "no part of the body arrived in time");
                    return Poll::Ready(Some(Err(stalled.into())));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Err(e))) => {
                let failure = if is_body_too_large(&*e) {
                    Some(UploadFailure::TooLarge)
                } else {
                    client_body_error(&*e).map(UploadFailure::Client)
                };
                this.turn.state().failed = failure;
                Poll::Ready(Some(Err(e)))
            }
            polled => {
                this.stall = None;
                this.turn.upstream();
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body of a response sent to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// The upstream's body, streamed (hyper's client); boxed, as it is the rarer path and
    /// carries a timer.
    Upstream(Box<UpstreamBody>),
    /// The upstream's body, streamed (the lean HTTP/1.1 client).
    Lean(crate::client::h1::LeanBody),
    /// A body the gateway made (problem details, echo, admin).
    Full(Option<Bytes>),
    /// A body whose bytes are counted as they pass (usage metering of a body of unknown
    /// length).
    Counted(Box<Counted<ResponseBody>>),
    /// Any body (tests of the codec).
    #[cfg(test)]
    Boxed(http_body_util::combinators::BoxBody<Bytes, BoxError>),
}

impl ResponseBody {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }

    /// The lean client's body, if this is one (counted or not): its fields are in its raw
    /// head, which the writer takes.
    pub fn lean_mut(&mut self) -> Option<&mut crate::client::h1::LeanBody> {
        match self {
            ResponseBody::Lean(b) => Some(b),
            ResponseBody::Counted(c) => c.inner_mut().lean_mut(),
            _ => None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(&mut **b).poll_frame(cx),
            ResponseBody::Lean(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            ResponseBody::Counted(b) => Pin::new(&mut **b).poll_frame(cx),
            #[cfg(test)]
            ResponseBody::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Lean(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            ResponseBody::Counted(b) => b.inner.is_end_stream(),
            #[cfg(test)]
            ResponseBody::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Lean(b) => b.size_hint(),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Counted(b) => b.inner.size_hint(),
            #[cfg(test)]
            ResponseBody::Boxed(b) => b.size_hint(),
        }
    }
}

/// Puts an upstream response's fields, kept as they came by the lean client, into the
/// response's header map (for writers that need a map: HTTP/2).
pub fn materialize_head(resp: http::Response<ResponseBody>) -> http::Response<ResponseBody> {
    let (mut parts, mut body) = resp.into_parts();
    if let Some(lean) = body.lean_mut()
        && let Some(head) = lean.take_head()
    {
        head.append_to(&mut parts.headers);
    }
    http::Response::from_parts(parts, body)
}

/// Whether `err` (or anything it wraps) is the request body exceeding its size limit.
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}
