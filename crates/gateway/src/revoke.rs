//! `/revocations` on the admin listener: `POST` a revocation (`{"jti": ...}`, `{"sub": ...}`,
//! `{"client_id": ...}`, `{"sid": ...}` or `{"spiffe_id": ...}`, with `expires_in` seconds or
//! `expires_at`), `GET` the list, `DELETE ?sub=...` to undo one.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use portcullis_core::Problem;
use portcullis_http::body::ResponseBody;
use portcullis_state::State;
use portcullis_state::revocations::{Kind, Revocation, now_ms};
use serde_json::{Value, json};

/// How long a revocation lasts when the request does not say: a day, longer than access
/// tokens usually live.
const DEFAULT_TTL_SECS: u64 = 86_400;
/// The longest a revocation may be asked to last: a year.
const MAX_TTL_SECS: u64 = 366 * 86_400;

/// Serves one request to `/revocations`.
pub async fn serve(state: &State, req: Request<Incoming>) -> Result<Response<ResponseBody>, Problem> {
    match *req.method() {
        Method::POST => {
            let body = Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|_| bad("the body is not readable or is larger than 64 KiB"))?
                .to_bytes();
            let revocation = parse(&body)?;
            state.revoke(revocation.clone()).await.map_err(unavailable)?;
            tracing::info!(kind = revocation.kind.as_str(), "revocation recorded");
            Ok(json_response(StatusCode::CREATED, describe(&revocation)))
        }
        Method::DELETE => {
            let query = req.uri().query().unwrap_or_default();
            let (kind, value) = url::form_urlencoded::parse(query.as_bytes())
                .find_map(|(k, v)| Some((Kind::parse(&k)?, v.into_owned())))
                .ok_or_else(|| bad("name what to undo: ?jti=, ?sub=, ?client_id=, ?sid= or ?spiffe_id="))?;
            if state.unrevoke(kind, &value).await.map_err(unavailable)? {
                Ok(json_response(StatusCode::OK, json!({"removed": true})))
            } else {
                Err(Problem::new(StatusCode::NOT_FOUND, "not_revoked", "no such revocation"))
            }
        }
        _ => {
            let list = state.revoked().map_err(unavailable)?.list();
            Ok(json_response(StatusCode::OK, json!({"revocations": list.iter().map(describe).collect::<Vec<_>>()})))
        }
    }
}

/// A revocation from a `POST` body: exactly one of the kinds, and an optional lifetime.
fn parse(body: &[u8]) -> Result<Revocation, Problem> {
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("the body must be a JSON object"))?;
    let obj = v.as_object().ok_or_else(|| bad("the body must be a JSON object"))?;
    let mut named = Kind::ALL.into_iter().filter_map(|k| Some((k, obj.get(k.as_str())?)));
    let (kind, value) = match (named.next(), named.next()) {
        (Some(one), None) => one,
        _ => return Err(bad("name exactly one of jti, sub, client_id, sid, spiffe_id")),
    };
    let value = value
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 2048)
        .ok_or_else(|| bad("the value must be a non-empty string of at most 2048 bytes"))?;
    if let Some(unknown) =
        obj.keys().find(|k| Kind::parse(k).is_none() && !["expires_in", "expires_at"].contains(&k.as_str()))
    {
        return Err(bad(format!("unknown member `{unknown}`")));
    }
    let now = now_ms();
    let expires_ms = match (obj.get("expires_in"), obj.get("expires_at")) {
        (None, None) => now + DEFAULT_TTL_SECS * 1000,
        (Some(s), None) => match s.as_u64().filter(|s| (1..=MAX_TTL_SECS).contains(s)) {
            Some(s) => now + s * 1000,
            None => return Err(bad("expires_in: seconds, from 1 to a year")),
        },
        (None, Some(at)) => match at.as_u64().map(|at| at.saturating_mul(1000)) {
            Some(at) if at > now && at <= now + MAX_TTL_SECS * 1000 => at,
            _ => return Err(bad("expires_at: seconds since the epoch, in the coming year")),
        },
        (Some(_), Some(_)) => return Err(bad("give expires_in or expires_at, not both")),
    };
    Ok(Revocation { kind, value: value.to_string(), at_ms: now, expires_ms })
}

fn describe(r: &Revocation) -> Value {
    json!({
        r.kind.as_str(): r.value,
        "revoked_at": r.at_ms / 1000,
        "expires_at": r.expires_ms / 1000,
    })
}

fn json_response(status: StatusCode, body: Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn bad(detail: impl Into<std::borrow::Cow<'static, str>>) -> Problem {
    Problem::bad_request("invalid_revocation", detail)
}

fn unavailable(_: portcullis_state::StateError) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", "the shared state cannot be reached; try again")
        .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_one_thing_and_a_sane_lifetime() {
        let r = parse(br#"{"sub": "alice", "expires_in": 60}"#).unwrap();
        assert_eq!((r.kind, r.value.as_str()), (Kind::Sub, "alice"));
        assert!(r.expires_ms.abs_diff(now_ms() + 60_000) < 2000);
        assert_eq!(parse(br#"{"jti": "t"}"#).unwrap().kind, Kind::Jti);
        for bad in [
            &br#"{"sub": "a", "jti": "b"}"#[..],
            br#"{}"#,
            br#"{"sub": ""}"#,
            br#"{"sub": 7}"#,
            br#"{"sub": "a", "expires_in": 0}"#,
            br#"{"sub": "a", "expires_at": 1}"#,
            br#"{"sub": "a", "ttl": 5}"#,
            br#"["sub"]"#,
            b"not json",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
