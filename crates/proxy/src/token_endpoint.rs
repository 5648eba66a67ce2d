//! The gateway's own OAuth endpoints over HTTP: its JWK Set, its discovery document and its
//! token endpoint. One adapter, used by whichever listener serves them (the public one, the
//! admin one, or both).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Limited;
use portcullis_core::Problem;
use portcullis_http::body::ResponseBody;

/// Serves the token service's endpoints: the JWK Set and discovery document (`GET`), and
/// the token endpoint (`POST`, a form). Token responses are never cached (RFC 6749 §5.1).
pub async fn serve<B>(
    ts: &portcullis_identity::TokenService,
    endpoint: portcullis_identity::Endpoint,
    parts: http::request::Parts,
    body: B,
    caller: portcullis_identity::Caller<'_>,
) -> Result<Response<ResponseBody>, Problem>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use portcullis_identity::Endpoint;
    let json = |status: StatusCode, body: bytes::Bytes, cache: &'static str| {
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        if cache == "no-store" {
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        }
        resp
    };
    let method_not_allowed = |allow: &'static str| {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
            .header(header::ALLOW, HeaderValue::from_static(allow))
    };
    match endpoint {
        Endpoint::Jwks | Endpoint::Discovery => {
            if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
                return Err(method_not_allowed("GET, HEAD"));
            }
            let doc = if endpoint == Endpoint::Jwks { ts.jwks() } else { ts.discovery() };
            // Short enough that a verifier sees a rotation's new key long before it signs.
            Ok(json(StatusCode::OK, doc, "public, max-age=300"))
        }
        Endpoint::Token => {
            if parts.method != http::Method::POST {
                return Err(method_not_allowed("POST"));
            }
            let form_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
            let result = if form_type {
                let limited = Limited::new(body, portcullis_identity::service::MAX_FORM_BYTES);
                let read = tokio::time::timeout(
                    portcullis_identity::service::FORM_TIMEOUT,
                    http_body_util::BodyExt::collect(limited),
                );
                match read.await {
                    Ok(Ok(collected)) => ts.token(&collected.to_bytes(), &caller).await,
                    _ => Err(portcullis_identity::OAuthError::invalid_request(
                        "the request body could not be read in time or is too large",
                    )),
                }
            } else {
                Err(portcullis_identity::OAuthError::invalid_request(
                    "send the parameters as application/x-www-form-urlencoded",
                ))
            };
            Ok(match result {
                Ok(body) => json(StatusCode::OK, body, "no-store"),
                Err(e) => {
                    let mut resp = json(e.status, e.body(), "no-store");
                    if e.status == StatusCode::SERVICE_UNAVAILABLE {
                        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    }
                    resp
                }
            })
        }
    }
}
