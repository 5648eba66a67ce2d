//! Routes: which requests they match, where they go, and how they are secured.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{ByteSize, Duration};

/// A route: a set of requests, the upstream they go to, and how they must authenticate.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in metrics, logs and policies.
    pub id: String,
    /// Which requests the route takes. The most specific matching route wins.
    #[serde(rename = "match", default)]
    pub matches: RouteMatch,
    /// Where requests go: a URL (`http://127.0.0.1:8080`), the name of an entry in
    /// `upstreams`, or `echo` (a built-in upstream that answers with what it received).
    #[serde(serialize_with = "crate::values::serialize_url_text_redacted")]
    pub upstream: String,
    /// How callers authenticate; required (default deny). Several methods may be listed; a
    /// request must satisfy one. `[none]` makes the route public, visibly.
    #[serde(default)]
    pub authenticate: Option<Vec<AuthMethod>>,
    /// Where credentials may be found besides `Authorization: Bearer` (or the API-key header).
    #[serde(default)]
    pub credentials: Option<CredentialsConfig>,
    /// Accept only certificate-bound access tokens (RFC 8705): the token's `cnf.x5t#S256`
    /// must be the thumbprint of the client certificate of the TLS connection. (A token that
    /// is bound is held to its certificate on every route; this makes binding mandatory.)
    #[serde(default)]
    pub certificate_bound: bool,
    /// Only tokens from these issuers (ids in `issuers`); all issuers when absent.
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    /// What an authenticated caller must have to be let through.
    #[serde(default)]
    pub authorize: Option<AuthorizeConfig>,
    /// Timeouts for this route, overriding the upstream's.
    #[serde(default)]
    pub timeouts: Option<RouteTimeouts>,
    /// Limits for this route, overriding the listener's.
    #[serde(default)]
    pub limits: Option<RouteLimits>,
    /// Client addresses allowed and denied (`server.trusted_proxies` decides which address
    /// is the client's), checked before authentication; a refusal is `403`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ips: Option<crate::IpRulesConfig>,
    /// Rate limits for this route; a request must be within all of them (and within its
    /// plan's). A refusal is `429` with `Retry-After`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::RateLimitConfig>,
    /// Quotas for this route, counted in calendar windows; a refusal is `429` with a
    /// `quota-exceeded` problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<crate::QuotaConfig>,
    /// The media types a request body may have (`application/json`, `text/*`); a body of
    /// another type, or without `Content-Type`, gets `415`. All types when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_types: Option<Vec<String>>,
    /// Limits on JSON request bodies (nesting, members, string and array lengths), checked as
    /// the body arrives; a body over them or not JSON gets `400`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_limits: Option<crate::JsonLimitsConfig>,
    /// Requests in flight on this route at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::ConcurrencyConfig>,
    /// What the upstream learns of the caller: an internal token, identity headers, or (only
    /// when asked) the caller's own credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagate: Option<crate::PropagateConfig>,
    /// Path rewriting before forwarding.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// The protocols an HTTP/1.1 client may upgrade its connection to through this route
    /// (names from the `Upgrade` field, matched without case, versions ignored). Offers of
    /// anything else are dropped and the request is served as plain HTTP. Default:
    /// `[websocket]`; `[]` turns upgrades off. `h2c` is never allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrades: Option<Vec<String>>,
}

impl RouteConfig {
    /// The upgrades a route allows when it does not say.
    pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];
}

/// What a route matches. Every condition given must hold. At most one of `path`,
/// `path_prefix` and `path_template`; none means every path.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Host name (`api.example.com`) or wildcard (`*.example.com`), without port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Exact path, e.g. `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix on segment boundaries: `/orders` matches `/orders` and `/orders/7`, not
    /// `/orders-archive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Path with named parameters, e.g. `/orders/{id}/items/{item}`; each parameter matches
    /// one segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    /// HTTP methods; all methods when absent. `HEAD` is taken wherever `GET` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// What happens to a request this route's host and path match but whose method it does
    /// not list: `refuse` (`405` with `Allow`) or `next_route` (a less specific route may take
    /// it). Default `refuse`: a path the route claims is never served by a broader route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_methods: Option<OtherMethods>,
    /// Compare the path without regard to ASCII case, for upstreams that do (IIS, some Spring
    /// set-ups). Default: `server.ignore_path_case`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_case: Option<bool>,
    /// Accept paths whose segments carry parameters (`/cart;jsessionid=A1/items`), which
    /// servlet containers strip before they resolve dot segments. Default `false`: a path with
    /// `;` (or `%3B`) in a segment is refused with `400`. When `true`, the request is taken
    /// only if the path read with its parameters removed, read with them as part of their
    /// segments, and as forwarded all lead to this route; routes and policies see the first
    /// reading, and the upstream gets the normalised path with its parameters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_parameters: bool,
}

/// What a route does with a method it does not list.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OtherMethods {
    /// `405 Method Not Allowed` with the route's methods in `Allow`.
    #[default]
    Refuse,
    /// Let the next, less specific, matching route take the request.
    NextRoute,
}

/// A way for callers to authenticate.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A JWT access token (`Authorization: Bearer`), checked against the configured issuers.
    Jwt,
    /// An opaque token checked by OAuth 2.0 token introspection (RFC 7662).
    Introspection,
    /// An API key of a configured consumer.
    ApiKey,
    /// A client certificate (mutual TLS), including SPIFFE X.509-SVIDs.
    Mtls,
    /// A DPoP-bound access token with its proof (RFC 9449).
    Dpop,
    /// No authentication: the route is public.
    None,
}

impl AuthMethod {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::Introspection => "introspection",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Mtls => "mtls",
            AuthMethod::Dpop => "dpop",
            AuthMethod::None => "none",
        }
    }
}

/// Other places a bearer token may come from. RFC 6750 §2: a request must use only one.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// A request header whose whole value is the token, e.g. `X-Access-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A query parameter holding the token (off unless named: URLs end up in logs and
    /// browser histories, RFC 6750 §5.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// Rules an authenticated caller must satisfy. Every rule given must hold; within a list
/// rule (`roles`, `subjects`...), one match is enough. With `authorization.cedar` configured,
/// the Cedar policies must allow the request too.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeConfig {
    /// Scopes the caller must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Scopes of which the caller must hold at least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_scopes: Vec<String>,
    /// Roles (from `authorization.roles_claim`) of which the caller must hold at least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Groups (from `authorization.groups_claim`) of which the caller must be in at least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Subjects (`sub`, certificate identity or API consumer) allowed, exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Client applications (`client_id` / `azp`) allowed, exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// SPIFFE IDs allowed: exact (`spiffe://example.org/ns/prod/sa/api`), with `*` standing
    /// for exactly one path segment (`spiffe://example.org/ns/*/sa/api`), or ending in `/**`
    /// for anything below (`spiffe://example.org/ns/prod/**`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spiffe_ids: Vec<String>,
    /// Step-up (RFC 9470): the authentication context classes (`acr` claim) of which the
    /// caller's token must carry one, e.g. `[phr, phrh]`. Otherwise `401`
    /// `insufficient_user_authentication` with `acr_values`, and the client authenticates
    /// again, more strongly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acr_values: Vec<String>,
    /// Step-up (RFC 9470): how long ago the user may have authenticated (`auth_time` claim)
    /// at most. Otherwise `401` `insufficient_user_authentication` with `max_age`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// The Cedar action for this route's requests (declared in the schema); the HTTP method
    /// (`Action::"GET"`...) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Whether the Cedar policies judge this route. Default: yes for authenticated routes when
    /// `authorization.cedar` is configured; no for public ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cedar: Option<bool>,
}

/// Per-route timeouts.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    /// Time from sending the request until the upstream's response headers arrive (the
    /// upstream's `timeouts.request` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// An upgraded connection (WebSocket and the like) that carries no data either way for
    /// this long is closed. Default: 5 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_idle: Option<Duration>,
}

impl RouteTimeouts {
    /// How long an upgraded connection may sit idle when the route does not say.
    pub const DEFAULT_TUNNEL_IDLE: std::time::Duration = std::time::Duration::from_secs(300);
}

/// Per-route limits.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    /// Largest request body for this route; larger gets `413`.
    pub max_body_bytes: ByteSize,
}

/// How the path is rewritten before forwarding.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched `match.path_prefix`: a route matching `/api/orders` with
    /// `rewrite: { path_prefix: /orders }` forwards `/api/orders/7` as `/orders/7`.
    pub path_prefix: String,
}
