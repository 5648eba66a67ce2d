//! `/revocations` on the admin listener: `POST` a revocation (`{"jti": ...}`, `{"sub": ...}`,
//! `{"client_id": ...}`, `{"sid": ...}`, `{"spiffe_id": ...}` or `{"token_sha256": ...}`, with `expires_in` seconds or
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
                .ok_or_else(|| {
                    bad("name what to undo: ?jti=, ?sub=, ?client_id=, ?sid=, ?spiffe_id= or ?token_sha256=")
                })?;
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
        _ => return Err(bad("name exactly one of jti, sub, client_id, sid, spiffe_id, token_sha256")),
    };
    let value = value
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 2048)
        .ok_or_else(|| bad("the value must be a non-empty string of at most 2048 bytes"))?;
    let digest = |v: &str| v.len() == 43 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if kind == Kind::TokenSha256 && !digest(value) {
        return Err(bad("token_sha256: the base64url SHA-256 of the token, without padding (43 characters)"));
    }
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

/// What `portcullis revoke` asks of a running gateway.
#[derive(Clone, Debug)]
pub enum Command {
    /// Revoke: the kind (`jti`, `sub`...), the value, and optionally a lifetime in seconds.
    Revoke(String, String, Option<u64>),
    /// Undo a revocation.
    Undo(String, String),
    /// List those in force.
    List,
}

/// `portcullis revoke`: the admin API's `/revocations` of the gateway `config` runs (its
/// `admin.listen`, with its `admin.auth.bearer_token`), so that revocations go where the
/// gateway keeps them (its memory, or Redis). Returns the answer's body.
pub fn cli(config: &std::path::Path, command: Command) -> Result<String, String> {
    let loaded = portcullis_config::load_file(config).map_err(|e| e.to_string())?;
    let admin = loaded.config.admin.as_ref().ok_or("the config has no `admin` listener to send revocations to")?;
    if admin.tls.is_some() {
        return Err("admin.tls: the admin API is served over TLS; send the revocation with an HTTPS client".into());
    }
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let token = admin.bearer_token().map(|t| t.expose().to_string());
    let (method, query, body) = match command {
        Command::Revoke(kind, value, expires_in) => {
            let mut b = serde_json::Map::new();
            b.insert(kind, Value::String(value));
            if let Some(s) = expires_in {
                b.insert("expires_in".into(), s.into());
            }
            (Method::POST, String::new(), Some(Value::Object(b).to_string()))
        }
        Command::Undo(kind, value) => {
            let q = url::form_urlencoded::Serializer::new(String::new()).append_pair(&kind, &value).finish();
            (Method::DELETE, format!("?{q}"), None)
        }
        Command::List => (Method::GET, String::new(), None),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let stream = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("the gateway's admin listener {addr} does not answer"))?
            .map_err(|e| format!("cannot reach the gateway's admin listener {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/revocations{query}"))
            .header(http::header::HOST, addr.to_string())
            .header(CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
            .await
            .map_err(|_| "the gateway did not answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let text = String::from_utf8_lossy(&text).into_owned();
        if status.is_success() { Ok(text) } else { Err(format!("the gateway answered {status}: {text}")) }
    })
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
