//! Protect: what the request may cost the service behind. Today, the body may not exceed
//! the route's limit.

use std::sync::Arc;

use http::StatusCode;
use http::header;
use http_body_util::Limited;
use portcullis_core::Problem;
use portcullis_http::body::{ClientBody, RequestBody};

/// Refuses a declared length over the limit at once; otherwise counts as the body streams.
pub fn protect_body(
    parts: &http::request::Parts,
    body: ClientBody,
    max: u64,
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
    Ok(RequestBody::Client(Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)), identity.clone()))
}

/// `413` problem.
pub fn body_too_large() -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is larger than this route accepts")
}
