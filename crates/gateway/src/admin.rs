//! The admin listener: `/healthz`, `/readyz`, `/metrics` (the Prometheus text format, or
//! OpenMetrics when the `Accept` header prefers it) and `/config`, and the token service's
//! endpoints when `token_service.serve_on` lists `admin`.
//!
//! A handful of endpoints do not need a web framework; hyper's HTTP/1 server and a match on
//! the path are the whole router.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, VARY};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_config::Listener;
use portcullis_core::Problem;
use portcullis_identity::{Caller, Endpoint};
use portcullis_proxy::Runtime;
use portcullis_proxy::body::ResponseBody;
use portcullis_proxy::pipeline::token_service;
use portcullis_telemetry::{Exposition, Metrics};
use tokio::net::TcpListener;

/// What the admin endpoints read.
pub struct AdminState {
    /// The runtime being served.
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// False until the gateway serves, and again once it drains.
    pub ready: AtomicBool,
}

/// Serves the admin endpoints for the life of the process.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(state: &AdminState, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
    let rt = state.runtime.load_full();
    if let Some(ts) = rt.token_service.as_ref().filter(|ts| ts.serves(Listener::Admin))
        && let Some(endpoint) = Endpoint::at(req.uri().path())
    {
        let (parts, body) = req.into_parts();
        let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
        let caller = Caller { client_cert: None, client_ip: peer.ip(), tls: false, host: &host };
        return match token_service(ts, endpoint, parts, body, caller).await {
            Ok(r) => r,
            Err(p) => problem(p),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return problem(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the admin API is read-only",
        ));
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) && state.runtime.load().ready() {
                text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "not ready\n".into())
            }
        }
        "/metrics" => {
            // The Prometheus text format unless the scraper asks for OpenMetrics.
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Exposition::negotiate(accept);
            let mut r = text(StatusCode::OK, format.content_type(), state.metrics.encode(format));
            r.headers_mut().insert(VARY, HeaderValue::from_static("accept"));
            r
        }
        "/config" => {
            let rt = state.runtime.load();
            let body = serde_json::json!({
                "generation": rt.generation,
                "file": rt.config.file,
                "config": rt.config.config,
            });
            text(StatusCode::OK, "application/json", body.to_string())
        }
        _ => problem(Problem::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn problem(p: Problem) -> Response<ResponseBody> {
    p.to_response(None).map(ResponseBody::full)
}
