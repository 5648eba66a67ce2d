//! The built-in `echo` upstream: answers with a JSON description of the request it received
//! (after every stage ran), so a new user can see what a service behind the gateway gets.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use portcullis_core::Problem;
use serde_json::{Map, Value, json};

use portcullis_http::body::{RequestBody, ResponseBody, is_body_too_large};

/// At most this much of the body is shown (it is all read and counted).
const SHOWN: usize = 64 * 1024;

/// Reads the request (streaming its body, counting bytes) and describes it.
pub async fn respond(req: Request<RequestBody>) -> Result<Response<ResponseBody>, Problem> {
    let (parts, mut body) = req.into_parts();
    let mut total: u64 = 0;
    let mut shown = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if is_body_too_large(e.as_ref()) {
                crate::pipeline::protect::body_too_large()
            } else {
                Problem::bad_request("bad_body", "the request body could not be read")
            }
        })?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            let room = SHOWN.saturating_sub(shown.len());
            shown.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let v = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(list)) => list.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
            None => {
                headers.insert(name.as_str().to_string(), v);
            }
        }
    }
    let doc = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": {
            "bytes": total,
            "text": String::from_utf8(shown).ok(),
        },
    });
    let mut resp = Response::new(ResponseBody::full(Bytes::from(doc.to_string())));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
