//! The token service's endpoints: the JWK Set, the discovery document, and the token
//! endpoint with two grants:
//!
//! * **Token exchange** (RFC 8693): a service presents a subject token the gateway accepts
//!   (a JWT of a configured issuer, an introspected token, or one the gateway issued) and,
//!   optionally, proves who it is itself (an actor token, or its client certificate); it gets
//!   a token for another audience, never with more scope than the subject token had, with
//!   the delegation chain in `act`.
//! * **Client credentials**: a workload authenticated by its client certificate (RFC 8705
//!   `tls_client_auth`) or by a JWT signed with its registered key (`private_key_jwt`,
//!   RFC 7523) gets a token for an audience.
//!
//! Who may obtain a token for which audience is decided by the authorization stage: the
//! audience's rules and the Cedar policies (actions `token_exchange` and
//! `client_credentials`, resource `Audience::"<name>"`). Errors follow RFC 6749 §5.2.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use portcullis_authn::jwks::{KeyStore, Policy};
use portcullis_authn::{AuthnError, ClientCert, Issuer, RouteAuthenticator};
use portcullis_authz::{Policies, RouteAuthz};
use portcullis_config::{AuthorizationConfig, Invalid, IssuerConfig, KeyFetchConfig, Listener, TokenServiceConfig};
use portcullis_core::{AuthnMethod, Principal, PrincipalKind};
use portcullis_jose::{HeaderPolicy, Jws, parse_object_no_duplicates};
use portcullis_state::State;
use serde_json::{Map, Value, json};

use crate::propagate::{expiry, identity_claims, sign};
use crate::signing_keys::{KeyRing, unix_now};

/// Where the JWK Set is served.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Where the discovery document is served.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where tokens are issued.
pub const TOKEN_PATH: &str = "/oauth2/token";

const GRANT_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ASSERTION_JWT: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of issued tokens when the audience does not say.
const DEFAULT_LIFETIME: u64 = 300;
/// Largest token request body.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// Most parameters in a token request.
const MAX_FORM_PARAMS: usize = 32;
/// How long a client may take to send its token request body.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(10);

/// An endpoint of the token service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /.well-known/jwks.json`.
    Jwks,
    /// `GET /.well-known/openid-configuration`.
    Discovery,
    /// `POST /oauth2/token`.
    Token,
}

impl Endpoint {
    /// The endpoint at `path`, if any.
    pub fn at(path: &str) -> Option<Endpoint> {
        match path {
            JWKS_PATH => Some(Endpoint::Jwks),
            DISCOVERY_PATH => Some(Endpoint::Discovery),
            TOKEN_PATH => Some(Endpoint::Token),
            _ => None,
        }
    }
}

/// An RFC 6749 §5.2 error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthError {
    /// `400`, `401` (`invalid_client`) or `503` (a dependency is down: fail closed).
    pub status: StatusCode,
    /// The `error` code.
    pub error: &'static str,
    /// A short, secret-free `error_description`.
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        let status = match error {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        OAuthError { status, error, description: description.into() }
    }

    /// `invalid_request` (`400`): the request itself is malformed.
    pub fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_request", description)
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        Bytes::from(json!({"error": self.error, "error_description": self.description}).to_string())
    }
}

/// A subject or actor token that was refused: unavailable dependencies fail closed.
fn token_error(e: AuthnError, which: &str) -> OAuthError {
    match e {
        AuthnError::Unavailable { .. } => {
            OAuthError::new("temporarily_unavailable", format!("the {which} cannot be checked now"))
        }
        AuthnError::Invalid { description, .. } | AuthnError::BadRequest { description, .. } => {
            OAuthError::new("invalid_grant", format!("the {which} is not valid: {description}"))
        }
        _ => OAuthError::new("invalid_grant", format!("the {which} is not valid")),
    }
}

/// What the token service knows of the caller's connection.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The verified client certificate of the connection.
    pub client_cert: Option<&'a ClientCert>,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The request came over TLS.
    pub tls: bool,
    /// The host the client addressed.
    pub host: &'a str,
}

/// A successful token response body.
pub type TokenResponse = Bytes;

struct AudienceGrant {
    scopes: Option<Vec<String>>,
    lifetime: u64,
    exchange: Option<RouteAuthz>,
    client_credentials: Option<RouteAuthz>,
}

struct Client {
    issuer: Issuer,
    scopes: Vec<String>,
}

/// The token service of one configuration.
pub struct TokenService {
    issuer: String,
    ring: Arc<KeyRing>,
    discovery: Bytes,
    on_public: bool,
    on_admin: bool,
    audiences: HashMap<String, AudienceGrant>,
    /// Checks subject and actor tokens of the configured issuers and introspection.
    tokens: Option<RouteAuthenticator>,
    clients: HashMap<String, Client>,
    state: Option<State>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl TokenService {
    /// Builds the service. `tokens` checks subject and actor tokens; `state` remembers
    /// client assertions (replay).
    pub fn new(
        cfg: &TokenServiceConfig,
        ring: Arc<KeyRing>,
        authorization: &AuthorizationConfig,
        policies: Option<&Arc<Policies>>,
        tokens: Option<RouteAuthenticator>,
        state: Option<State>,
    ) -> Result<TokenService, Vec<Invalid>> {
        let mut errors = Vec::new();
        let base = cfg.issuer.trim_end_matches('/');
        let token_url = format!("{base}{TOKEN_PATH}");
        let audiences = cfg
            .audiences
            .iter()
            .map(|(name, a)| {
                let grant = |action: &str, rules: &Option<portcullis_config::AuthorizeConfig>| {
                    rules.as_ref().map(|r| RouteAuthz::for_audience(name, action, r, authorization, policies))
                };
                let g = AudienceGrant {
                    scopes: a.scopes.clone(),
                    lifetime: a.lifetime.map_or(DEFAULT_LIFETIME, |l| l.get().as_secs().max(1)),
                    exchange: grant("token_exchange", &a.exchange),
                    client_credentials: grant("client_credentials", &a.client_credentials),
                };
                (name.clone(), g)
            })
            .collect();
        let mut clients = HashMap::new();
        for (i, c) in cfg.clients.iter().enumerate() {
            match client(c, &token_url, &cfg.issuer) {
                Ok(issuer) => {
                    clients.insert(c.id.clone(), Client { issuer, scopes: c.scopes.clone() });
                }
                Err((key, msg)) => errors.push(Invalid::new(format!("token_service.clients[{i}].{key}"), msg)),
            }
        }
        if !clients.is_empty() && state.is_none() {
            errors.push(Invalid::new("state.backend", "client assertions need the shared state (replay protection)"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let discovery = json!({
            "issuer": cfg.issuer,
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "token_endpoint": token_url,
            "grant_types_supported": [GRANT_EXCHANGE, GRANT_CLIENT_CREDENTIALS],
            "token_endpoint_auth_methods_supported": ["tls_client_auth", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "EdDSA", "PS256", "RS256"],
            "id_token_signing_alg_values_supported": [cfg.keys.algorithm],
            "tls_client_certificate_bound_access_tokens": true,
        });
        Ok(TokenService {
            issuer: cfg.issuer.clone(),
            ring,
            discovery: Bytes::from(discovery.to_string()),
            on_public: cfg.serve_on.contains(&Listener::Public),
            on_admin: cfg.serve_on.contains(&Listener::Admin),
            audiences,
            tokens,
            clients,
            state,
        })
    }

    /// Whether the endpoints are served on the listener.
    pub fn serves(&self, listener: Listener) -> bool {
        match listener {
            Listener::Public => self.on_public,
            Listener::Admin => self.on_admin,
        }
    }

    /// The JWK Set document.
    pub fn jwks(&self) -> Bytes {
        self.ring.keys().jwks.clone()
    }

    /// The discovery document.
    pub fn discovery(&self) -> Bytes {
        self.discovery.clone()
    }

    /// Handles a token request (`form`, the `application/x-www-form-urlencoded` body): the
    /// JSON body of a `200`, or the error.
    pub async fn token(&self, form: &[u8], req: &Caller<'_>) -> Result<TokenResponse, OAuthError> {
        let form = Form::parse(form)?;
        match form.one("grant_type")? {
            Some(GRANT_EXCHANGE) => self.exchange(&form, req).await,
            Some(GRANT_CLIENT_CREDENTIALS) => self.client_credentials(&form, req).await,
            Some(_) => Err(OAuthError::new("unsupported_grant_type", "use token exchange or client credentials")),
            None => Err(OAuthError::new("invalid_request", "grant_type is missing")),
        }
    }

    async fn exchange(&self, form: &Form<'_>, req: &Caller<'_>) -> Result<TokenResponse, OAuthError> {
        let subject_token = form.required("subject_token")?;
        token_type(form.required("subject_token_type")?, "subject_token_type")?;
        let requested = form.one("requested_token_type")?;
        if let Some(t) = requested {
            token_type(t, "requested_token_type")?;
        }
        let audience_name = audience_param(form)?;
        // The subject token is checked before the audience is looked up: which audiences
        // exist is not told to whoever asks.
        let (subject, own_subject) = self.check_token(subject_token, req, "subject token").await?;
        let (name, audience) = self.audience(audience_name)?;

        let actor = match form.one("actor_token")? {
            Some(t) => {
                token_type(form.required("actor_token_type")?, "actor_token_type")?;
                let (actor, own) = self.check_token(t, req, "actor token").await?;
                // A token this gateway issued is a bearer credential any of its recipients
                // could replay: an actor proves itself with its own credential.
                if own {
                    return Err(OAuthError::new(
                        "invalid_grant",
                        "an actor token must come from an identity provider, not from this gateway",
                    ));
                }
                Some(actor)
            }
            None if form.one("actor_token_type")?.is_some() => {
                return Err(OAuthError::new("invalid_request", "actor_token_type without actor_token"));
            }
            None => req.client_cert.map(|c| c.principal.clone()),
        };
        // A token this gateway handed a service is exchanged by that service proving who it
        // is (its certificate or its own token), never by whoever holds the token.
        if own_subject && actor.is_none() {
            return Err(OAuthError::new(
                "invalid_grant",
                "exchanging a token this gateway issued needs an actor: a client certificate or an actor_token",
            ));
        }
        // RFC 8693 §4.4: a subject token may name who may act for it.
        if let Some(may_act) = subject.claims.as_ref().and_then(|c| c.get("may_act")) {
            let allowed = actor.as_ref().is_some_and(|a| {
                let sub_ok =
                    may_act.get("sub").and_then(Value::as_str).is_some_and(|s| Some(s) == actor_id(a).as_deref());
                let iss_ok = may_act.get("iss").and_then(Value::as_str).is_none_or(|i| Some(i) == a.issuer.as_deref());
                sub_ok && iss_ok
            });
            if !allowed {
                return Err(OAuthError::new("invalid_grant", "the subject token does not let this actor act for it"));
            }
        }

        let rules = audience.exchange.as_ref().ok_or_else(|| {
            OAuthError::new("unauthorized_client", format!("no exchange for audience `{name}` is allowed"))
        })?;
        let judged = actor.as_ref().unwrap_or(&subject);
        authorize(rules, judged, name, req, &subject)?;

        let scopes = grant_scopes(form.one("scope")?, Some(&subject.scopes), audience.scopes.as_deref())?;
        let now = unix_now();
        let exp = expiry(&subject, now, audience.lifetime);
        let mut claims = identity_claims(&subject, &self.issuer, name, now, exp);
        if let Some(actor) = &actor {
            // RFC 8693 §4.3: the client that requested the token is the actor.
            if let Some(client) = actor.client_id.as_deref().map(str::to_string).or_else(|| actor_id(actor)) {
                claims.insert("client_id".into(), json!(client));
            }
            // The current actor, with the earlier chain nested inside (RFC 8693 §4.1).
            let mut act = Map::new();
            act.insert("sub".into(), json!(actor_id(actor).unwrap_or_default()));
            if let Some(prev) = subject.claims.as_ref().and_then(|c| c.get("act")).filter(|a| a.is_object()) {
                act.insert("act".into(), prev.clone());
            }
            claims.insert("act".into(), Value::Object(act));
        }
        let issued = if requested == Some(TYPE_JWT) { TYPE_JWT } else { TYPE_ACCESS_TOKEN };
        self.issue(claims, &scopes, now, exp, Some(issued))
    }

    async fn client_credentials(&self, form: &Form<'_>, req: &Caller<'_>) -> Result<TokenResponse, OAuthError> {
        // A registered client holds its scopes; a certificate's (thumbprint) none of its own.
        let (client, thumbprint) = match form.one("client_assertion")? {
            Some(assertion) => {
                if form.one("client_assertion_type")? != Some(ASSERTION_JWT) {
                    return Err(OAuthError::new("invalid_request", "client_assertion_type must be jwt-bearer"));
                }
                (self.client_assertion(assertion).await?, None)
            }
            None => match req.client_cert {
                Some(cert) => (cert.principal.clone(), Some(cert.thumbprint.clone())),
                None => {
                    return Err(OAuthError::new(
                        "invalid_client",
                        "authenticate with a client certificate (tls_client_auth) or a client assertion",
                    ));
                }
            },
        };
        if let Some(id) = form.one("client_id")?
            && Some(id) != client.subject.as_deref()
        {
            return Err(OAuthError::new("invalid_client", "client_id does not match the client's credential"));
        }
        let (name, audience) = self.audience(audience_param(form)?)?;
        let rules = audience.client_credentials.as_ref().ok_or_else(|| {
            OAuthError::new("unauthorized_client", format!("no client may obtain tokens for audience `{name}`"))
        })?;
        authorize(rules, &client, name, req, &client)?;
        // A workload holds no scopes of its own: the audience's list bounds what it may ask,
        // and without a list it gets none.
        let held = match (&thumbprint, &audience.scopes) {
            (None, _) => Some(&client.scopes[..]),
            (Some(_), Some(_)) => None,
            (Some(_), None) => Some(&[][..]),
        };
        let scopes = grant_scopes(form.one("scope")?, held, audience.scopes.as_deref())?;
        let now = unix_now();
        let exp = now + audience.lifetime;
        let mut claims = identity_claims(&client, &self.issuer, name, now, exp);
        if let Some(x5t) = thumbprint {
            // RFC 8705 §3: the token is bound to the certificate it was obtained with.
            claims.insert("cnf".into(), json!({ "x5t#S256": x5t }));
        }
        self.issue(claims, &scopes, now, exp, None)
    }

    fn audience<'s>(&'s self, name: &str) -> Result<(&'s str, &'s AudienceGrant), OAuthError> {
        self.audiences
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| OAuthError::new("invalid_target", "the gateway issues no tokens for this audience"))
    }

    /// A token of ours (checked with our keys: `true`) or of an issuer the gateway accepts.
    async fn check_token(
        &self,
        token: &str,
        req: &Caller<'_>,
        which: &str,
    ) -> Result<(Arc<Principal>, bool), OAuthError> {
        let own = self.own_token(token);
        let is_own = own.is_some();
        let principal = match own {
            Some(result) => result.map_err(|e| token_error(e, which))?,
            None => match &self.tokens {
                Some(a) => a.token(token).await.map_err(|e| token_error(e, which))?,
                None => {
                    return Err(OAuthError::new(
                        "invalid_grant",
                        format!("the {which} is not one this gateway accepts"),
                    ));
                }
            },
        };
        if let Some(cnf) = &principal.confirmation {
            if cnf.jkt.is_some() {
                return Err(OAuthError::new("invalid_grant", format!("the {which} is DPoP-bound")));
            }
            if let Some(x5t) = &cnf.x5t_s256
                && req.client_cert.is_none_or(|c| c.thumbprint != *x5t)
            {
                return Err(OAuthError::new(
                    "invalid_grant",
                    format!("the {which} is bound to a client certificate this connection did not present"),
                ));
            }
        }
        Ok((principal, is_own))
    }

    /// `Some` when the token names this gateway as its issuer: then it is checked here.
    fn own_token(&self, token: &str) -> Option<Result<Arc<Principal>, AuthnError>> {
        let jws = Jws::parse(token, HeaderPolicy::default()).ok()?;
        let claims = parse_object_no_duplicates(&jws.payload).ok()?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return None;
        }
        Some(self.verify_own(&jws, claims))
    }

    fn verify_own(&self, jws: &Jws<'_>, claims: Map<String, Value>) -> Result<Arc<Principal>, AuthnError> {
        let keys = self.ring.keys();
        let verifier = jws
            .header
            .kid
            .as_deref()
            .and_then(|kid| keys.verifier(kid))
            .ok_or_else(|| AuthnError::invalid("key_unknown", "no key of this gateway fits the token"))?;
        verifier.verify(jws.header.alg, jws.signing_input(), &jws.signature)?;
        let now = unix_now();
        let exp =
            claims.get("exp").and_then(Value::as_u64).ok_or_else(|| AuthnError::invalid("exp_missing", "no exp"))?;
        if now > exp {
            return Err(AuthnError::invalid("token_expired", "the token has expired"));
        }
        let iat = claims.get("iat").and_then(Value::as_u64);
        if claims.contains_key("encrypted_claims") {
            return Err(AuthnError::invalid("token_encrypted", "a token with encrypted claims cannot be exchanged"));
        }
        let mut p = portcullis_authn::jwt::principal_from_own_claims(
            claims,
            AuthnMethod::Jwt,
            Some(self.issuer.as_str().into()),
            Some(exp),
            iat,
        )?;
        if p.subject.is_none() {
            p.kind = PrincipalKind::Client;
        }
        Ok(Arc::new(p))
    }

    /// `private_key_jwt`: the client's assertion, signed by its registered key, for this
    /// token endpoint, used once.
    async fn client_assertion(&self, assertion: &str) -> Result<Arc<Principal>, OAuthError> {
        let bad = |d: &str| OAuthError::new("invalid_client", format!("the client assertion is not valid: {d}"));
        let jws = Jws::parse(assertion, HeaderPolicy::default()).map_err(|e| bad(&e.to_string()))?;
        let claims = parse_object_no_duplicates(&jws.payload).map_err(|_| bad("its claims are not a JSON object"))?;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default().to_string();
        let client = self.clients.get(&iss).ok_or_else(|| bad("no registered client signed it"))?;
        if claims.get("sub").and_then(Value::as_str) != Some(iss.as_str()) {
            return Err(bad("sub must equal iss, the client id"));
        }
        let jti = claims.get("jti").and_then(Value::as_str).unwrap_or_default().to_string();
        let (mut p, _) = client.issuer.verify(jws).await.map_err(|e| match e {
            AuthnError::Unavailable { .. } => {
                OAuthError::new("temporarily_unavailable", "the client's keys are unavailable")
            }
            AuthnError::Invalid { description, .. } => bad(&description),
            _ => bad("refused"),
        })?;
        if jti.is_empty() {
            return Err(bad("it has no jti"));
        }
        let now = unix_now();
        let ttl = p.expires_at.unwrap_or(now).saturating_sub(now) + 60;
        let state = self.state.as_ref().ok_or_else(|| OAuthError::new("temporarily_unavailable", "no replay store"))?;
        let key = format!("{iss}\n{jti}");
        match state.insert_once("client_assertion", key.as_bytes(), Duration::from_secs(ttl)).await {
            Ok(true) => {}
            Ok(false) => return Err(bad("it was used before")),
            Err(e) => {
                // The state backend logs an outage once; this is one request of it.
                tracing::debug!(error = %e, "client assertion replay check failed");
                return Err(OAuthError::new("temporarily_unavailable", "the assertion cannot be checked now"));
            }
        }
        p.kind = PrincipalKind::Client;
        p.client_id = Some(iss.as_str().into());
        p.subject = Some(iss.as_str().into());
        p.scopes = client.scopes.iter().map(|s| Arc::from(s.as_str())).collect();
        Ok(Arc::new(p))
    }

    fn issue(
        &self,
        mut claims: Map<String, Value>,
        scopes: &[String],
        now: u64,
        exp: u64,
        issued_token_type: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        claims.remove("scope");
        if !scopes.is_empty() {
            claims.insert("scope".into(), json!(scopes.join(" ")));
        }
        let keys = self.ring.keys();
        let token = sign(&keys, claims).map_err(|e| {
            tracing::error!(error = %e, "signing an issued token failed");
            OAuthError::new("temporarily_unavailable", "the token could not be signed")
        })?;
        let mut body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": exp.saturating_sub(now),
        });
        if let Some(t) = issued_token_type {
            body["issued_token_type"] = json!(t);
        }
        if !scopes.is_empty() {
            body["scope"] = json!(scopes.join(" "));
        }
        Ok(Bytes::from(body.to_string()))
    }
}

/// The `audience` parameter (RFC 8693 `resource` URIs are not used to name audiences).
fn audience_param<'f>(form: &'f Form<'_>) -> Result<&'f str, OAuthError> {
    if form.one("resource")?.is_some() {
        return Err(OAuthError::new("invalid_target", "name the target with `audience`, not `resource`"));
    }
    form.required("audience")
}

/// Decides whether `judged` may obtain a token of `audience`.
fn authorize(
    rules: &RouteAuthz,
    judged: &Arc<Principal>,
    audience: &str,
    req: &Caller<'_>,
    subject: &Principal,
) -> Result<(), OAuthError> {
    let params: Vec<(Arc<str>, Box<str>)> = subject
        .subject
        .iter()
        .map(|s| (Arc::from("subject"), Box::from(&**s)))
        .chain(subject.client_id.iter().map(|c| (Arc::from("subject_client"), Box::from(&**c))))
        .collect();
    let input = portcullis_authz::Input {
        principal: judged,
        route: audience,
        method: "POST",
        host: req.host,
        path: TOKEN_PATH,
        params: &params,
        client_ip: req.client_ip,
        now: SystemTime::now(),
        tls: req.tls,
        mtls: req.client_cert.is_some(),
        risk: None,
    };
    let d = rules.decide(&input);
    if d.allowed {
        return Ok(());
    }
    tracing::info!(audience, code = d.code, policies = ?d.policies, errors = ?d.errors, "token request denied");
    Err(OAuthError::new(
        "unauthorized_client",
        format!("not allowed to obtain tokens for audience `{audience}`: {}", d.detail),
    ))
}

/// Who an actor is, for `act.sub`.
fn actor_id(p: &Principal) -> Option<String> {
    p.spiffe_id.as_deref().or(p.subject.as_deref()).or(p.client_id.as_deref()).map(str::to_string)
}

fn token_type(t: &str, param: &str) -> Result<(), OAuthError> {
    if t == TYPE_ACCESS_TOKEN || t == TYPE_JWT {
        Ok(())
    } else {
        Err(OAuthError::new("invalid_request", format!("{param}: only access tokens and JWTs are accepted")))
    }
}

/// The scopes of an issued token. Asked-for scopes must all be held (by the subject) and
/// allowed (by the audience), else `invalid_scope`; without a request, everything held that
/// the audience allows.
fn grant_scopes(
    requested: Option<&str>,
    held: Option<&[Arc<str>]>,
    allowed: Option<&[String]>,
) -> Result<Vec<String>, OAuthError> {
    let held_ok = |s: &str| held.is_none_or(|h| h.iter().any(|x| &**x == s));
    let allowed_ok = |s: &str| allowed.is_none_or(|a| a.iter().any(|x| x == s));
    match requested {
        Some(r) => {
            let mut out: Vec<String> = Vec::new();
            for s in r.split(' ').filter(|s| !s.is_empty()) {
                if !held_ok(s) {
                    return Err(OAuthError::new("invalid_scope", format!("`{s}` is more than the subject holds")));
                }
                if !allowed_ok(s) {
                    return Err(OAuthError::new("invalid_scope", format!("`{s}` is not granted for this audience")));
                }
                if !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
            Ok(out)
        }
        None => Ok(match (held, allowed) {
            (Some(h), _) => h.iter().map(|s| s.to_string()).filter(|s| allowed_ok(s)).collect(),
            (None, Some(a)) => a.to_vec(),
            (None, None) => Vec::new(),
        }),
    }
}

/// A `private_key_jwt` client's assertion verifier: an issuer whose `iss` is the client id,
/// whose keys are the client's, and whose audience is this token endpoint.
fn client(
    c: &portcullis_config::TokenClientConfig,
    token_url: &str,
    issuer: &str,
) -> Result<Issuer, (&'static str, String)> {
    let fetch = KeyFetchConfig::default();
    let policy = Policy {
        min_cache: fetch.min_cache.get(),
        max_cache: fetch.max_cache.get(),
        refetch_interval: fetch.refetch_interval.get(),
        stale_for: fetch.stale_for.get(),
        timeout: fetch.timeout.get(),
        allow_http: false,
    };
    let store = KeyStore::from_file(&c.id, &c.jwks_file, policy).map_err(|e| ("jwks_file", e))?;
    let cfg: IssuerConfig = serde_json::from_value(json!({
        "id": c.id,
        "issuer": c.id,
        "jwks_file": c.jwks_file,
        "audiences": [token_url, issuer],
        "algorithms": ["ES256", "ES384", "EdDSA", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512"],
        "required_claims": ["jti"],
        "leeway": "30s",
    }))
    .map_err(|e| ("id", e.to_string()))?;
    Issuer::new(&cfg, Some(store))
}

/// A parsed form: each parameter at most once (RFC 6749 §3.2).
struct Form<'a> {
    pairs: Vec<(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
}

impl<'a> Form<'a> {
    fn parse(body: &'a [u8]) -> Result<Form<'a>, OAuthError> {
        if body.len() > MAX_FORM_BYTES {
            return Err(OAuthError::new("invalid_request", "the request is too large"));
        }
        let mut pairs = Vec::new();
        for pair in url::form_urlencoded::parse(body) {
            // A token request has a handful of parameters; many more is an attack on the
            // duplicate check below.
            if pairs.len() == MAX_FORM_PARAMS {
                return Err(OAuthError::new("invalid_request", "too many parameters"));
            }
            pairs.push(pair);
        }
        for (i, (k, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(other, _)| other == k) {
                return Err(OAuthError::new("invalid_request", format!("`{k}` is given more than once")));
            }
        }
        Ok(Form { pairs })
    }

    fn one(&self, name: &str) -> Result<Option<&str>, OAuthError> {
        Ok(self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_ref()).filter(|v| !v.is_empty()))
    }

    fn required(&self, name: &str) -> Result<&str, OAuthError> {
        self.one(name)?.ok_or_else(|| OAuthError::new("invalid_request", format!("`{name}` is missing")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(s: &[&str]) -> Vec<Arc<str>> {
        s.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn scopes_are_never_widened() {
        let h = held(&["a", "b", "c"]);
        let allowed = vec!["b".to_string(), "c".to_string(), "d".to_string()];
        // Nothing asked: what is held and allowed.
        assert_eq!(grant_scopes(None, Some(&h), Some(&allowed)).unwrap(), ["b", "c"]);
        // Down-scoping.
        assert_eq!(grant_scopes(Some("c"), Some(&h), Some(&allowed)).unwrap(), ["c"]);
        // More than held, or than the audience allows.
        assert_eq!(grant_scopes(Some("b d"), Some(&h), Some(&allowed)).unwrap_err().error, "invalid_scope");
        assert_eq!(grant_scopes(Some("a"), Some(&h), Some(&allowed)).unwrap_err().error, "invalid_scope");
        // No audience limit: anything held.
        assert_eq!(grant_scopes(Some("a b"), Some(&h), None).unwrap(), ["a", "b"]);
        // A workload asking within the audience's list.
        assert_eq!(grant_scopes(Some("d"), None, Some(&allowed)).unwrap(), ["d"]);
        assert_eq!(grant_scopes(Some("x"), None, Some(&allowed)).unwrap_err().error, "invalid_scope");
        // Holding nothing: nothing can be asked.
        assert_eq!(grant_scopes(Some("a"), Some(&[]), None).unwrap_err().error, "invalid_scope");
    }

    #[test]
    fn forms_refuse_repeated_parameters() {
        assert!(Form::parse(b"grant_type=a&grant_type=b").is_err());
        // Many parameters are refused before the quadratic duplicate check.
        let many: Vec<String> = (0..10_000).map(|i| format!("k{i}=v")).collect();
        let started = std::time::Instant::now();
        assert_eq!(Form::parse(many.join("&").as_bytes()).err().map(|e| e.error), Some("invalid_request"));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        let f = Form::parse(b"a=1&b=x%20y&c=").unwrap();
        assert_eq!(f.one("b").unwrap(), Some("x y"));
        assert_eq!(f.one("c").unwrap(), None);
        assert_eq!(f.required("z").unwrap_err().error, "invalid_request");
    }

    #[test]
    fn errors_have_their_status() {
        assert_eq!(OAuthError::new("invalid_client", "").status, StatusCode::UNAUTHORIZED);
        assert_eq!(OAuthError::new("invalid_grant", "").status, StatusCode::BAD_REQUEST);
        assert_eq!(OAuthError::new("temporarily_unavailable", "").status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_slice(&OAuthError::new("invalid_scope", "too much").body()).unwrap();
        assert_eq!(body, json!({"error": "invalid_scope", "error_description": "too much"}));
    }
}
