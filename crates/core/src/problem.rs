//! Problems: everything that stops a request, as one type, turned into an RFC 9457
//! `application/problem+json` response (with RFC 6750 / RFC 9449 challenges) in one place.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

/// Which side of the proxy a problem comes from, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong or lacks permission.
    Client,
    /// The upstream failed or timed out.
    Upstream,
    /// The gateway itself could not decide (a dependency is down): fail closed.
    Internal,
}

impl Side {
    /// Lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }
}

/// The authentication scheme of a challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeScheme {
    /// RFC 6750 bearer tokens.
    Bearer,
    /// RFC 9449 DPoP-bound tokens.
    DPoP,
}

/// One `WWW-Authenticate` challenge (RFC 6750 §3, RFC 9449 §7.1).
///
/// Written as `Scheme error="...", realm="...", error_description="...", scope="...",
/// algs="..."`, each attribute only when set. A challenge to a request that carried no
/// credential has a realm and no error code (RFC 6750 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `Bearer` or `DPoP`.
    pub scheme: ChallengeScheme,
    /// The protection space (`realm`), if any.
    pub realm: Option<Cow<'static, str>>,
    /// The error code: `invalid_token`, `insufficient_scope`, `invalid_dpop_proof`...; none
    /// when the request carried no credential.
    pub error: Option<&'static str>,
    /// A short, secret-free description for developers.
    pub description: Option<Cow<'static, str>>,
    /// Scopes needed (`insufficient_scope`).
    pub scope: Option<String>,
    /// Accepted DPoP proof algorithms (DPoP challenges).
    pub algs: Option<String>,
    /// Authentication context classes that would do (`insufficient_user_authentication`,
    /// RFC 9470).
    pub acr_values: Option<String>,
    /// The longest time since the user authenticated that would do, in seconds (RFC 9470).
    pub max_age: Option<u64>,
}

impl Challenge {
    /// A challenge with only an error code.
    pub fn new(scheme: ChallengeScheme, error: &'static str) -> Self {
        Self {
            scheme,
            realm: None,
            error: Some(error),
            description: None,
            scope: None,
            algs: None,
            acr_values: None,
            max_age: None,
        }
    }

    /// A challenge to a request without a credential: a realm, no error code (RFC 6750 §3.1).
    pub fn missing(scheme: ChallengeScheme, realm: impl Into<Cow<'static, str>>) -> Self {
        Self {
            scheme,
            realm: Some(realm.into()),
            error: None,
            description: None,
            scope: None,
            algs: None,
            acr_values: None,
            max_age: None,
        }
    }

    /// The same challenge in protection space `realm`.
    pub fn in_realm(self, realm: impl Into<Cow<'static, str>>) -> Self {
        Self { realm: Some(realm.into()), ..self }
    }

    fn header_value(&self) -> HeaderValue {
        let mut s = String::with_capacity(96);
        s.push_str(match self.scheme {
            ChallengeScheme::Bearer => "Bearer",
            ChallengeScheme::DPoP => "DPoP",
        });
        // The error code first: clients and tests that read `Bearer error="..."` find it
        // where RFC 6750's examples put it when there is no realm.
        let max_age = self.max_age.map(|m| m.to_string());
        let params = [
            ("error", self.error),
            ("realm", self.realm.as_deref()),
            ("error_description", self.description.as_deref()),
            ("scope", self.scope.as_deref()),
            ("algs", self.algs.as_deref()),
            ("acr_values", self.acr_values.as_deref()),
            ("max_age", max_age.as_deref()),
        ];
        let mut first = true;
        for (name, value) in params {
            if let Some(value) = value {
                push_param(&mut s, name, value, first);
                first = false;
            }
        }
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }
}

/// Appends `, name="value"` keeping only the characters RFC 6750 §3 allows in these
/// attributes (printable ASCII without `"` and `\`), so no input can break the header.
fn push_param(s: &mut String, name: &str, value: &str, first: bool) {
    s.push_str(if first { " " } else { ", " });
    s.push_str(name);
    s.push_str("=\"");
    s.extend(value.chars().map(|c| if (' '..='~').contains(&c) && c != '"' && c != '\\' { c } else { ' ' }));
    s.push('"');
}

/// Why a request was stopped. Built by any stage; turned into a response by
/// [`Problem::to_response`] only.
#[derive(Clone, Debug)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable reason (`no_route`, `invalid_token`...), used in the
    /// problem `type`, the access log and metrics.
    pub code: &'static str,
    /// Human-readable detail, safe to show the client: never a secret, never an
    /// upstream's internals.
    pub detail: Cow<'static, str>,
    /// Which side failed.
    pub side: Side,
    /// `WWW-Authenticate` challenges, for 401 and 403.
    pub challenges: Vec<Challenge>,
    /// Extra response headers (`Retry-After`, `DPoP-Nonce`...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem with a status, reason code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        let side = if status.is_server_error() { Side::Internal } else { Side::Client };
        Self { status, code, detail: detail.into(), side, challenges: Vec::new(), headers: Vec::new() }
    }

    /// Sets the side that failed.
    pub fn side(mut self, side: Side) -> Self {
        self.side = side;
        self
    }

    /// Adds a `WWW-Authenticate` challenge.
    pub fn challenge(mut self, challenge: Challenge) -> Self {
        self.challenges.push(challenge);
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// `404`: no route matches the request.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no_route", "no route matches this request")
    }

    /// `400`: the request is malformed.
    pub fn bad_request(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// `502`: the upstream could not be reached or broke the exchange.
    pub fn bad_gateway(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", detail).side(Side::Upstream)
    }

    /// `504`: the upstream did not answer in time.
    pub fn gateway_timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "the upstream service did not answer in time")
            .side(Side::Upstream)
    }

    /// The response: `application/problem+json` (RFC 9457) with the challenges and headers.
    /// `request_id` is included so a client can quote it to an operator.
    pub fn to_response(&self, request_id: Option<&str>) -> Response<Bytes> {
        let body = serde_json::json!({
            "type": format!("urn:portcullis:problem:{}", self.code.replace('_', "-")),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "request_id": request_id,
        });
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for c in &self.challenges {
            h.append(WWW_AUTHENTICATE, c.header_value());
        }
        for (name, value) in &self.headers {
            h.append(name.clone(), value.clone());
        }
        resp
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_is_rfc9457() {
        let p = Problem::no_route();
        let r = p.to_response(Some("abc"));
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["status"], 404);
        assert_eq!(v["title"], "Not Found");
        assert_eq!(v["type"], "urn:portcullis:problem:no-route");
        assert_eq!(v["request_id"], "abc");
    }

    #[test]
    fn challenges_follow_rfc6750_and_cannot_be_broken() {
        let c = Challenge {
            description: Some("bad \"quote\" \\ and\nnewline é".into()),
            scope: Some("orders.read orders.write".into()),
            ..Challenge::new(ChallengeScheme::Bearer, "insufficient_scope")
        };
        let r = Problem::new(StatusCode::FORBIDDEN, "insufficient_scope", "x").challenge(c).to_response(None);
        let h = r.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(
            h,
            r#"Bearer error="insufficient_scope", error_description="bad  quote    and newline  ", scope="orders.read orders.write""#
        );
    }

    /// RFC 6750 §3.1: no error code without a credential; the error code comes first.
    #[test]
    fn a_missing_credential_has_a_realm_and_no_error() {
        let r = Problem::new(StatusCode::UNAUTHORIZED, "credential_missing", "x")
            .challenge(Challenge::missing(ChallengeScheme::Bearer, "portcullis"))
            .challenge(Challenge {
                algs: Some("ES256".into()),
                ..Challenge::missing(ChallengeScheme::DPoP, "portcullis")
            })
            .challenge(Challenge::new(ChallengeScheme::Bearer, "invalid_token").in_realm("api \"x\""))
            .to_response(None);
        let all: Vec<_> = r.headers().get_all(WWW_AUTHENTICATE).iter().collect();
        assert_eq!(
            all,
            [
                r#"Bearer realm="portcullis""#,
                r#"DPoP realm="portcullis", algs="ES256""#,
                r#"Bearer error="invalid_token", realm="api  x ""#
            ]
        );
    }

    #[test]
    fn several_challenges_become_several_headers() {
        let r = Problem::new(StatusCode::UNAUTHORIZED, "invalid_token", "x")
            .challenge(Challenge::new(ChallengeScheme::DPoP, "invalid_token"))
            .challenge(Challenge::new(ChallengeScheme::Bearer, "invalid_token"))
            .to_response(None);
        let all: Vec<_> = r.headers().get_all(WWW_AUTHENTICATE).iter().collect();
        assert_eq!(all, [r#"DPoP error="invalid_token""#, r#"Bearer error="invalid_token""#]);
    }
}
