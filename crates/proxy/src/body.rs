//! Body types of the proxy. Bodies stream frame by frame in both directions (data and
//! trailers, so gRPC works); they are never collected in memory. Enums rather than boxed
//! trait objects keep the common path free of allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;

/// A boxed error from a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed, cut off past the route's size limit; its trailers lose
    /// the fields the gateway vouches for (the identity headers it sets, credentials): a
    /// service that merges trailers into headers must not see a client's version of them.
    Client(Limited<ClientBody>, Arc<[HeaderName]>),
    /// No body.
    Empty,
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
            ClientBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
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

/// Fields never passed on in request trailers (RFC 9110 §6.5.1: a trailer must not carry
/// what framing, routing or authentication depend on).
static TRAILER_DENIED: [HeaderName; 12] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::FORWARDED,
    HeaderName::from_static("dpop"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-request-id"),
];

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Client(b, identity) => {
                let mut polled = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &mut polled
                    && let Some(trailers) = frame.trailers_mut()
                {
                    for name in &TRAILER_DENIED {
                        trailers.remove(name);
                    }
                    crate::headers::strip_identity(trailers, identity);
                }
                polled
            }
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b, _) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b, _) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The body of a response sent to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// The upstream's body, streamed (hyper's client).
    Upstream(Incoming),
    /// The upstream's body, streamed (the lean HTTP/1.1 client).
    Lean(crate::upstream::h1::LeanBody),
    /// A body the gateway made (problem details, echo, admin).
    Full(Option<Bytes>),
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
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Lean(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            #[cfg(test)]
            ResponseBody::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Lean(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            #[cfg(test)]
            ResponseBody::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Lean(b) => b.size_hint(),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            #[cfg(test)]
            ResponseBody::Boxed(b) => b.size_hint(),
        }
    }
}

/// Puts an upstream response's fields, kept as they came by the lean client, into the
/// response's header map (for writers that need a map: HTTP/2).
pub fn materialize_head(resp: http::Response<ResponseBody>) -> http::Response<ResponseBody> {
    let (mut parts, mut body) = resp.into_parts();
    if let ResponseBody::Lean(lean) = &mut body
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
