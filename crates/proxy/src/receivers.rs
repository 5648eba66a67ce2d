//! The gateway's event receivers: they turn what identity providers say about sessions and
//! users into revocations, shared by every replica that shares the state.
//!
//! - Back-Channel Logout (OpenID Connect Back-Channel Logout 1.0 §2.5): `POST` a form with
//!   `logout_token`; a valid token, seen once, revokes its session (`sid`), or, without one,
//!   its user (`sub`). `200` when done; `400` for a token that is not valid (§2.8).
//! - Shared Signals (RFC 8935 push delivery of RFC 8417 SETs): `POST` a SET as
//!   `application/secevent+jwt`; `202` when taken (a SET seen before is taken again without
//!   acting twice), `400` with `{"err", "description"}` (RFC 8935 §2.3) when not.
//!
//! Both answer `503` when the state cannot record what they learned.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use portcullis_core::Problem;
use portcullis_http::body::{ClientBody, ResponseBody};
use portcullis_state::revocations::{Kind, Revocation, now_ms};

use crate::runtime::Runtime;

/// How long a logout's revocation lasts: longer than the session's access tokens live.
const REVOKED_FOR_MS: u64 = 86_400_000;

/// Serves one request to the Back-Channel Logout endpoint.
pub async fn logout(
    rt: &Runtime,
    parts: &http::request::Parts,
    body: ClientBody,
) -> Result<Response<ResponseBody>, Problem> {
    let Some(config) = rt.config.config.backchannel_logout.as_ref() else { return Err(Problem::no_route()) };
    if !posted(parts, "application/x-www-form-urlencoded")? {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send a form (application/x-www-form-urlencoded)",
        ));
    }
    let body: Bytes = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map_err(|_| invalid("the body is not readable or is larger than 64 KiB"))?
        .to_bytes();
    let mut tokens = url::form_urlencoded::parse(&body).filter(|(k, _)| k == "logout_token").map(|(_, v)| v);
    let token = match (tokens.next(), tokens.next()) {
        (Some(t), None) => t.into_owned(),
        _ => return Err(invalid("send exactly one logout_token")),
    };
    let logout = rt.verifiers().verify_logout(&token, &config.client_ids, &config.issuers).await.map_err(|e| {
        tracing::info!(reason = e.code(), "back-channel logout: a logout token was refused");
        invalid("the logout token is not valid")
    })?;
    let state = rt.state().ok_or_else(unavailable)?;
    let seen = [logout.issuer.as_bytes(), b"\n", logout.jti.as_bytes()].concat();
    match state.insert_once("bcl-jti", &seen, Duration::from_secs(logout.remember_secs)).await {
        Ok(true) => {}
        Ok(false) => return Err(invalid("this logout token was used already")),
        Err(_) => return Err(unavailable()),
    }
    let (kind, value) = match (&logout.sid, &logout.sub) {
        (Some(sid), _) => (Kind::Sid, sid.clone()),
        (None, Some(sub)) => (Kind::Sub, sub.clone()),
        (None, None) => return Err(invalid("the logout token names neither a sub nor a sid")),
    };
    let now = now_ms();
    if state.revoke(Revocation { kind, value, at_ms: now, expires_ms: now + REVOKED_FOR_MS }).await.is_err() {
        // Not done: the provider may send the token again, and it must then be taken.
        let _ = state.forget("bcl-jti", &seen).await;
        return Err(unavailable());
    }
    tracing::info!(kind = kind.as_str(), issuer = %logout.issuer, "back-channel logout: revoked");
    let mut r = Response::new(ResponseBody::empty());
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `Err` (`405`, `Allow: POST`) for another method; whether the body is of `media_type`.
fn posted(parts: &http::request::Parts, media_type: &str) -> Result<bool, Problem> {
    if parts.method != Method::POST {
        return Err(Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "events are POSTed here")
            .header(ALLOW, HeaderValue::from_static("POST")));
    }
    let declared = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    Ok(declared.is_some_and(|v| v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case(media_type)))
}

fn invalid(detail: &'static str) -> Problem {
    Problem::bad_request("invalid_request", detail)
}

fn unavailable() -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", "the logout cannot be recorded now; try again")
        .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// Serves one request to the Shared Signals receiver.
pub async fn signals(
    rt: &Runtime,
    parts: &http::request::Parts,
    body: ClientBody,
) -> Result<Response<ResponseBody>, Problem> {
    let Some(config) = rt.config.config.shared_signals.as_ref() else { return Err(Problem::no_route()) };
    if !posted(parts, "application/secevent+jwt")? {
        return Ok(set_error("invalid_request", "send the SET as application/secevent+jwt"));
    }
    let Ok(body) = Limited::new(body, 64 * 1024).collect().await.map(|b| b.to_bytes()) else {
        return Ok(set_error("invalid_request", "the body is not readable or is larger than 64 KiB"));
    };
    let Ok(token) = std::str::from_utf8(&body) else { return Ok(set_error("invalid_request", "the SET is not text")) };
    let signal = match rt.verifiers().verify_set(token.trim(), &config.audiences, &config.issuers).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(reason = e.code(), "shared signals: a security event token was refused");
            let err = match e.code() {
                "issuer_unknown" => "invalid_issuer",
                "aud_mismatch" => "invalid_audience",
                "key_unknown" | "key_ambiguous" | "signature_invalid" | "alg_not_allowed" => "invalid_key",
                _ => "invalid_request",
            };
            return Ok(set_error(err, "the security event token is not valid"));
        }
    };
    let state = rt.state().ok_or_else(unavailable)?;
    let seen = [signal.issuer.as_bytes(), b"\n", signal.jti.as_bytes()].concat();
    match state.insert_once("ssf-jti", &seen, Duration::from_secs(2 * 86_400)).await {
        Ok(true) => {}
        // Delivered again (the transmitter missed the first answer): taken, not acted on twice.
        Ok(false) => return Ok(accepted()),
        Err(_) => return Err(unavailable()),
    }
    for kind in &signal.ignored {
        tracing::info!(event = %kind, issuer = %signal.issuer, "shared signals: an event the gateway does not act on was ignored");
    }
    let now = now_ms();
    for action in &signal.actions {
        let (kind, value) = match action {
            portcullis_authn::signals::Action::RevokeSub(sub) => (Kind::Sub, sub.clone()),
            portcullis_authn::signals::Action::RevokeSid(sid) => (Kind::Sid, sid.clone()),
        };
        if state.revoke(Revocation { kind, value, at_ms: now, expires_ms: now + REVOKED_FOR_MS }).await.is_err() {
            // Not all done: the transmitter delivers the SET again, and it must then be taken.
            let _ = state.forget("ssf-jti", &seen).await;
            return Err(unavailable());
        }
        tracing::info!(kind = kind.as_str(), issuer = %signal.issuer, "shared signals: revoked");
    }
    Ok(accepted())
}

fn accepted() -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// RFC 8935 §2.3: `400` with `{"err", "description"}`.
fn set_error(err: &'static str, description: &'static str) -> Response<ResponseBody> {
    let body = serde_json::json!({"err": err, "description": description}).to_string();
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
