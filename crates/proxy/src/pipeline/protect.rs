//! Protect: what the request may cost the service behind: a body within the route's size
//! limit, of a media type the route takes, and, for JSON, within its shape limits.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header;
use http_body_util::{BodyExt, Limited};
use portcullis_core::Problem;
use portcullis_http::body::{ClientBody, ClientBodyErrorKind, RequestBody, client_body_error};
use portcullis_limits::body::{BodyRules, Verdict};
use portcullis_limits::json::{JsonLimits, Scanner};

/// Refuses a declared length over the limit at once; otherwise counts as the body streams.
/// A route with body rules has the media type checked, and a JSON body read whole and
/// checked as it arrives before anything is sent on.
pub async fn protect(
    parts: &http::request::Parts,
    body: ClientBody,
    max: u64,
    rules: Option<&BodyRules>,
    identity: &Arc<[http::HeaderName]>,
) -> Result<RequestBody, Problem> {
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Problem::bad_request("bad_content_length", "invalid Content-Length"))?;
        if len > max {
            return Err(body_too_large());
        }
    }
    if http_body::Body::is_end_stream(&body) {
        return Ok(RequestBody::Empty);
    }
    if let Some(rules) = rules {
        match rules.judge(media_type(&parts.headers)?) {
            Verdict::Pass => {}
            Verdict::Refuse => return Err(unsupported()),
            // Boxed: the checking read's state would otherwise enlarge every request's future.
            Verdict::CheckJson(limits) => return portcullis_http::boxed!(read_json(body, max, limits)).await,
        }
    }
    Ok(RequestBody::Client(Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)), identity.clone()))
}

/// The media type of the body (`Content-Type` without parameters). Two `Content-Type`
/// fields are refused: servers differ on which one they believe.
fn media_type(headers: &http::HeaderMap) -> Result<Option<&str>, Problem> {
    let mut all = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(first), None) = (all.next(), all.next()) else {
        return match headers.contains_key(header::CONTENT_TYPE) {
            true => Err(Problem::bad_request("ambiguous_content_type", "the request has more than one Content-Type")),
            false => Ok(None),
        };
    };
    let text = first.to_str().map_err(|_| unsupported())?;
    Ok(Some(text.split(';').next().unwrap_or_default().trim()))
}

/// Reads a JSON body whole, refusing it at the first byte that is not JSON or crosses a
/// limit, and sends it on as read.
async fn read_json(mut body: ClientBody, max: u64, limits: JsonLimits) -> Result<RequestBody, Problem> {
    let mut scanner = Scanner::new(limits);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| client_body_problem(client_body_error(e.as_ref())))?;
        // Trailers are not sent on: nothing after the head is vouched for.
        let Ok(data) = frame.into_data() else { continue };
        if (buf.len() + data.len()) as u64 > max {
            return Err(body_too_large());
        }
        scanner.feed(&data).map_err(|e| bad_json(e.to_string()))?;
        buf.extend_from_slice(&data);
    }
    scanner.finish().map_err(|e| bad_json(e.to_string()))?;
    if std::str::from_utf8(&buf).is_err() {
        return Err(bad_json("the body is not valid JSON: it is not UTF-8".into()));
    }
    Ok(RequestBody::Full(Some(Bytes::from(buf))))
}

fn client_body_problem(kind: Option<ClientBodyErrorKind>) -> Problem {
    match kind {
        Some(ClientBodyErrorKind::Stalled) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body stopped arriving before it was complete",
        ),
        Some(ClientBodyErrorKind::Aborted) => {
            Problem::bad_request("incomplete_body", "the request body ended before it was complete")
        }
        _ => Problem::bad_request("malformed_body", "the request body's framing is not valid"),
    }
}

#[cold]
fn bad_json(detail: String) -> Problem {
    Problem::bad_request("invalid_json", detail)
}

#[cold]
fn unsupported() -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "this route does not take bodies of this type",
    )
}

/// `413` problem.
pub fn body_too_large() -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is larger than this route accepts")
}
