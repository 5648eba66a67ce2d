//! Rules that span keys: unique names, references that resolve, default deny, exclusive
//! choices. Rules about a single value's content (a URL, a path template, a certificate
//! file) belong to the component that compiles that value and are reported the same way.

use std::collections::{HashMap, HashSet};

use crate::{AuthMethod, Config, ECHO_UPSTREAM, Invalid, StateBackend};

/// Checks the rules that span keys; returns every problem found.
pub(crate) fn validate(config: &Config) -> Vec<Invalid> {
    let mut out = Vec::new();
    server(config, &mut out);
    issuers(config, &mut out);
    upstreams(config, &mut out);
    api_keys(config, &mut out);
    routes(config, &mut out);
    authorization(config, &mut out);
    workload(config, &mut out);
    token_service(config, &mut out);
    propagation(config, &mut out);
    let st = &config.state;
    let named = [st.redis_url.is_some(), st.redis.sentinel.is_some(), st.redis.cluster.is_some()];
    match named.iter().filter(|n| **n).count() {
        0 if st.backend == StateBackend::Redis => out.push(Invalid::new(
            "state.redis_url",
            "`backend: redis` needs `redis_url` (e.g. redis://127.0.0.1:6379), `redis.sentinel` or `redis.cluster`",
        )),
        n if n > 1 => {
            let at = if st.redis.cluster.is_some() { "state.redis.cluster" } else { "state.redis.sentinel" };
            out.push(Invalid::new(at, "give one of `redis_url`, `redis.sentinel` and `redis.cluster`"));
        }
        _ => {}
    }
    if let Some(url) = &config.state.redis_url
        && !matches!(url.scheme(), "redis" | "rediss")
    {
        out.push(Invalid::new("state.redis_url", "must be a redis:// or rediss:// URL"));
    }
    state(config, &mut out);
    limits(config, &mut out);
    out
}

fn limits(config: &Config, out: &mut Vec<Invalid>) {
    let mut check = |limits: &[crate::RateLimitConfig],
                     quotas: &[crate::QuotaConfig],
                     at: &dyn Fn(usize, &str) -> String,
                     qat: &dyn Fn(usize, &str) -> String| {
        let mut names = HashSet::new();
        for (j, q) in quotas.iter().enumerate() {
            if q.limit == 0 {
                out.push(Invalid::new(qat(j, "limit"), "must be at least 1"));
            }
            if let crate::QuotaWindow::Every(d) = q.per
                && (d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(86_400))
            {
                out.push(Invalid::new(qat(j, "per"), "a duration from 1s to 1d, or hour, day, week, month"));
            }
            let name = q.name.clone().unwrap_or_else(|| q.per.name());
            if !names.insert(name.clone()) {
                out.push(Invalid::new(
                    qat(j, "name"),
                    format!("`{name}` names another limit here too; give each a `name`"),
                ));
            }
        }
        for (j, l) in limits.iter().enumerate() {
            if l.limit == 0 {
                out.push(Invalid::new(at(j, "limit"), "must be at least 1"));
            }
            if l.mode == crate::LimitMode::Approximate && l.on_error == crate::FailMode::Closed {
                out.push(Invalid::new(
                    at(j, "on_error"),
                    "an approximate limit goes on with local counts when Redis is down: `closed` would never apply; use `mode: exact`",
                ));
            }
            let per = l.per.get();
            if per < std::time::Duration::from_millis(1) {
                out.push(Invalid::new(at(j, "per"), "must be at least 1ms"));
            } else if per > std::time::Duration::from_secs(366 * 86_400) {
                out.push(Invalid::new(at(j, "per"), "at most 366d; use a quota for longer periods"));
            } else if l.limit > 0 && per.as_micros() / u128::from(l.limit) == 0 {
                out.push(Invalid::new(at(j, "limit"), "more than one request per microsecond cannot be counted"));
            }
            if l.burst == Some(0) {
                out.push(Invalid::new(at(j, "burst"), "must be at least 1"));
            }
            let interval = per.as_micros().div_ceil(u128::from(l.limit.max(1)));
            if u128::from(l.burst.unwrap_or(l.limit)).saturating_mul(interval) > 366 * 86_400 * 1_000_000 {
                out.push(Invalid::new(at(j, "burst"), "a burst that takes more than 366d to refill"));
            }
            let name = l.name.clone().unwrap_or_else(|| l.key.name());
            if let Some(n) = &l.name
                && (n.is_empty()
                    || n.len() > 64
                    || !n.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\'))
            {
                out.push(Invalid::new(at(j, "name"), "1 to 64 printable ASCII characters, without `\"` and `\\`"));
            }
            if !names.insert(name.clone()) {
                out.push(Invalid::new(
                    at(j, "name"),
                    format!("`{name}` names another limit here too; give each a `name`"),
                ));
            }
        }
    };
    for (i, r) in config.routes.iter().enumerate() {
        check(&r.rate_limits, &r.quotas, &|j, k| format!("routes[{i}].rate_limits[{j}].{k}"), &|j, k| {
            format!("routes[{i}].quotas[{j}].{k}")
        });
    }
    for (name, plan) in &config.plans {
        check(&plan.rate_limits, &plan.quotas, &|j, k| format!("plans.{name}.rate_limits[{j}].{k}"), &|j, k| {
            format!("plans.{name}.quotas[{j}].{k}")
        });
    }
    if let Some(keys) = &config.api_keys
        && !config.plans.is_empty()
    {
        for (i, c) in keys.consumers.iter().enumerate() {
            if let Some(plan) = &c.plan
                && !config.plans.contains_key(plan)
            {
                out.push(Invalid::new(format!("api_keys.consumers[{i}].plan"), format!("no plan `{plan}` in `plans`")));
            }
        }
    }
    let concurrency = config
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((format!("routes[{i}].concurrency"), r.concurrency.as_ref()?)))
        .chain(
            config
                .upstreams
                .iter()
                .filter_map(|(n, u)| Some((format!("upstreams.{n}.concurrency"), u.concurrency.as_ref()?))),
        );
    for (at, c) in concurrency {
        if c.max == 0 {
            out.push(Invalid::new(format!("{at}.max"), "must be at least 1"));
        }
        if c.queue > 0 && c.wait.get().is_zero() {
            out.push(Invalid::new(format!("{at}.wait"), "must be more than zero when `queue` is given"));
        }
        if c.wait.get() > std::time::Duration::from_secs(60) {
            out.push(Invalid::new(format!("{at}.wait"), "at most 60s"));
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        for (j, t) in r.content_types.iter().flatten().enumerate() {
            let (ty, sub) = t.split_once('/').unwrap_or((t, ""));
            let token = |s: &str| !s.is_empty() && s.bytes().all(is_tchar);
            if !token(ty) || ty == "*" || !(sub == "*" || token(sub)) {
                out.push(Invalid::new(
                    format!("routes[{i}].content_types[{j}]"),
                    "a media type such as `application/json`, or `text/*`",
                ));
            }
        }
        if let Some(j) = &r.json_limits {
            for (k, v) in [
                ("max_depth", u64::from(j.max_depth)),
                ("max_keys", j.max_keys.into()),
                ("max_string_length", j.max_string_length.into()),
                ("max_array_length", j.max_array_length.into()),
                ("max_members", j.max_members),
            ] {
                if v == 0 {
                    out.push(Invalid::new(format!("routes[{i}].json_limits.{k}"), "must be at least 1"));
                }
            }
        }
    }
    if let Some(plan) = &config.default_plan
        && !config.plans.contains_key(plan)
    {
        out.push(Invalid::new("default_plan", format!("no plan `{plan}` in `plans`")));
    }
    if config.plan_claim.as_deref().is_some_and(str::is_empty) {
        out.push(Invalid::new("plan_claim", "must not be empty"));
    }
}

/// An absolute path without a query, fragment, escapes or dot segments.
fn plain_path(p: &str) -> bool {
    p.starts_with('/') && !p.contains(['?', '#', '%']) && !p.split('/').any(|s| s == "." || s == "..")
}

/// The issuers an event receiver takes tokens from: at least one, each one of `issuers`.
fn receivers_issuers(config: &Config, ids: &[String], at: &str, out: &mut Vec<Invalid>) {
    if ids.is_empty() {
        out.push(Invalid::new(at, "name the ids (in `issuers`) whose tokens are taken"));
    }
    for (i, id) in ids.iter().enumerate() {
        if !config.issuers.iter().any(|c| c.id == *id) {
            out.push(Invalid::new(format!("{at}[{i}]"), format!("no issuer `{id}` in `issuers`")));
        }
    }
}

fn state(config: &Config, out: &mut Vec<Invalid>) {
    let s = &config.state;
    let r = &s.redis;
    if s.backend == StateBackend::Redis
        && let Some(url) = &s.redis_url
    {
        if url.host_str().is_none_or(str::is_empty) {
            out.push(Invalid::new("state.redis_url", "names no host, e.g. redis://127.0.0.1:6379"));
        }
        if url.path().len() > 1 && url.path()[1..].parse::<u32>().is_err() {
            out.push(Invalid::new("state.redis_url", "the path must be a database number, e.g. redis://host:6379/0"));
        }
        if r.tls.is_some() && url.scheme() != "rediss" {
            out.push(Invalid::new("state.redis.tls", "TLS settings need a rediss:// URL"));
        }
    }
    if r.timeout.get().is_zero() {
        out.push(Invalid::new("state.redis.timeout", "must be more than zero"));
    }
    if r.timeout.get() > std::time::Duration::from_secs(10) {
        out.push(Invalid::new("state.redis.timeout", "at most 10s: a request waits this long when Redis is down"));
    }
    if r.sync_interval.get() < std::time::Duration::from_millis(10)
        || r.sync_interval.get() > std::time::Duration::from_secs(10)
    {
        out.push(Invalid::new("state.redis.sync_interval", "from 10ms to 10s"));
    }
    if r.key_prefix.len() > 128 {
        out.push(Invalid::new("state.redis.key_prefix", "at most 128 bytes"));
    }
    if let Some(tls) = &r.tls
        && tls.cert.is_some() != tls.key.is_some()
    {
        let at = if tls.cert.is_some() { "state.redis.tls.key" } else { "state.redis.tls.cert" };
        out.push(Invalid::new(at, "`cert` and `key` go together"));
    }
    if r.username.is_some() && r.password.is_none() {
        out.push(Invalid::new("state.redis.password", "`username` needs `password`"));
    }
    let nodes = |list: &[String], at: &str, out: &mut Vec<Invalid>| {
        if list.is_empty() {
            out.push(Invalid::new(format!("{at}.nodes"), "name at least one node, as host:port"));
        }
        for (i, n) in list.iter().enumerate() {
            if crate::state::host_port(n).is_none() {
                out.push(Invalid::new(format!("{at}.nodes[{i}]"), format!("`{n}` is not host:port")));
            }
        }
    };
    if let Some(sentinel) = &r.sentinel {
        nodes(&sentinel.nodes, "state.redis.sentinel", out);
        if sentinel.master.is_empty() {
            out.push(Invalid::new("state.redis.sentinel.master", "must not be empty"));
        }
        if sentinel.username.is_some() && sentinel.password.is_none() {
            out.push(Invalid::new("state.redis.sentinel.password", "`username` needs `password`"));
        }
    }
    if let Some(cluster) = &r.cluster {
        nodes(&cluster.nodes, "state.redis.cluster", out);
        if r.db != 0 {
            out.push(Invalid::new("state.redis.db", "a Redis Cluster has only database 0"));
        }
    }
    if r.db != 0 && r.sentinel.is_none() {
        out.push(Invalid::new(
            "state.redis.db",
            "only with `sentinel`: give the database in `redis_url` (redis://host:6379/2)",
        ));
    }
    let u = &config.usage;
    if u.retention.get() < std::time::Duration::from_secs(3600) {
        out.push(Invalid::new("usage.retention", "at least 1h: usage is counted by the hour"));
    }
    if u.retention.get() > std::time::Duration::from_secs(800 * 86_400) {
        out.push(Invalid::new("usage.retention", "at most 800d"));
    }
    if let Some(l) = &config.backchannel_logout {
        if l.client_ids.is_empty() || l.client_ids.iter().any(String::is_empty) {
            out.push(Invalid::new(
                "backchannel_logout.client_ids",
                "name the gateway's client ids at the identity providers",
            ));
        }
        if !plain_path(&l.path) {
            out.push(Invalid::new("backchannel_logout.path", "a plain absolute path, e.g. /oidc/backchannel-logout"));
        }
        receivers_issuers(config, &l.issuers, "backchannel_logout.issuers", out);
    }
    if let Some(sig) = &config.shared_signals {
        if sig.audiences.is_empty() || sig.audiences.iter().any(String::is_empty) {
            out.push(Invalid::new("shared_signals.audiences", "name the receiver's ids at the transmitters"));
        }
        if !plain_path(&sig.path) {
            out.push(Invalid::new("shared_signals.path", "a plain absolute path, e.g. /ssf/events"));
        }
        receivers_issuers(config, &sig.issuers, "shared_signals.issuers", out);
        if config.backchannel_logout.as_ref().is_some_and(|l| l.path == sig.path) {
            out.push(Invalid::new("shared_signals.path", "the same as `backchannel_logout.path`"));
        }
    }
    if let Some(b) = &config.brute_force {
        if b.max_failures == 0 {
            out.push(Invalid::new("brute_force.max_failures", "at least 1"));
        }
        for (key, d) in [("brute_force.window", b.window), ("brute_force.block_for", b.block_for)] {
            if d.get() < std::time::Duration::from_secs(1) || d.get() > std::time::Duration::from_secs(86_400) {
                out.push(Invalid::new(key, "from 1s to 1d"));
            }
        }
    }
    if u.max_series < 1000 {
        out.push(Invalid::new("usage.max_series", "at least 1000"));
    }
}

fn server(config: &Config, out: &mut Vec<Invalid>) {
    let s = &config.server;
    if let Some(tls) = &s.tls
        && tls.client_ca.is_none()
        && config.spiffe.trust_domains.is_empty()
        && tls.client_auth == crate::ClientAuth::Required
    {
        out.push(Invalid::new(
            "server.tls.client_auth",
            "`required` needs `client_ca` (the CAs that sign client certificates) or `spiffe.trust_domains`",
        ));
    }
    let l = &s.limits;
    if l.max_header_bytes.bytes() < 1024 {
        out.push(Invalid::new("server.limits.max_header_bytes", "must be at least 1KiB"));
    }
    if l.max_header_bytes.bytes() > 1024 * 1024 {
        out.push(Invalid::new("server.limits.max_header_bytes", "must be at most 1MiB"));
    }
    if l.max_headers == 0 {
        out.push(Invalid::new("server.limits.max_headers", "must be at least 1"));
    }
    if l.max_connections == 0 {
        out.push(Invalid::new("server.limits.max_connections", "must be at least 1"));
    }
    if l.max_concurrent_streams == 0 {
        out.push(Invalid::new("server.limits.max_concurrent_streams", "must be at least 1"));
    }
    if l.header_read_timeout.get().is_zero() {
        out.push(Invalid::new("server.limits.header_read_timeout", "must be longer than zero"));
    }
    if s.workers == Some(0) {
        out.push(Invalid::new("server.workers", "must be at least 1"));
    }
    if let Some(admin) = &config.admin
        && admin.listen == s.listen
    {
        out.push(Invalid::new("admin.listen", "must differ from server.listen"));
    }
    if let Some(admin) = &config.admin {
        admin.validate(out);
    }
}

fn issuers(config: &Config, out: &mut Vec<Invalid>) {
    let mut ids = HashSet::new();
    let mut iss = HashMap::new();
    for (i, issuer) in config.issuers.iter().enumerate() {
        let at = |k: &str| format!("issuers[{i}].{k}");
        if issuer.id.is_empty() {
            out.push(Invalid::new(at("id"), "must not be empty"));
        } else if !ids.insert(issuer.id.as_str()) {
            out.push(Invalid::new(at("id"), format!("duplicate issuer id `{}`", issuer.id)));
        }
        if let Some(first) = iss.insert(issuer.issuer.as_str(), i) {
            out.push(Invalid::new(
                at("issuer"),
                format!("`{}` is already configured by issuers[{first}]; one issuer, one entry", issuer.issuer),
            ));
        }
        let sources = [issuer.jwks_file.is_some(), issuer.jwks_uri.is_some(), issuer.discovery];
        match sources.iter().filter(|s| **s).count() {
            0 if issuer.hmac_secret.is_some() => {}
            1 => {}
            _ => out.push(Invalid::new(
                format!("issuers[{i}]"),
                "needs exactly one key source: `jwks_file`, `jwks_uri` or `discovery: true` (or only `hmac_secret`)",
            )),
        }
        if issuer.audiences.is_empty() {
            out.push(Invalid::new(
                at("audiences"),
                "list at least one audience; tokens for other audiences are refused",
            ));
        }
        if issuer.algorithms.is_empty() {
            out.push(Invalid::new(at("algorithms"), "list at least one algorithm"));
        }
    }
}

fn api_keys(config: &Config, out: &mut Vec<Invalid>) {
    let Some(keys) = &config.api_keys else { return };
    if http::HeaderName::from_bytes(keys.header.as_bytes()).is_err() {
        out.push(Invalid::new("api_keys.header", format!("`{}` is not a valid header name", keys.header)));
    }
    let mut names = HashSet::new();
    let mut hashes = HashMap::new();
    for (i, c) in keys.consumers.iter().enumerate() {
        if c.name.is_empty() || !names.insert(c.name.as_str()) {
            out.push(Invalid::new(format!("api_keys.consumers[{i}].name"), "must be unique and not empty"));
        }
        if c.keys.is_empty() {
            out.push(Invalid::new(format!("api_keys.consumers[{i}].keys"), "list at least one key hash"));
        }
        for (j, k) in c.keys.iter().enumerate() {
            let at = format!("api_keys.consumers[{i}].keys[{j}]");
            let hex = k.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(Invalid::new(
                    at,
                    "keys are stored as hashes: `sha256:` and 64 hex digits (`portcullis apikey new` makes one)",
                ));
            } else if let Some(first) = hashes.insert(hex.to_ascii_lowercase(), i) {
                out.push(Invalid::new(at, format!("the same key is already given to api_keys.consumers[{first}]")));
            }
        }
    }
}

/// More idle connections than this per endpoint and worker is a mistake, not a need.
const MAX_IDLE_CONNECTIONS: usize = 65_536;

fn upstreams(config: &Config, out: &mut Vec<Invalid>) {
    for (name, up) in &config.upstreams {
        let at = |k: &str| format!("upstreams.{name}.{k}");
        if name == ECHO_UPSTREAM {
            out.push(Invalid::new(format!("upstreams.{name}"), "`echo` is the built-in upstream; choose another name"));
        }
        if up.endpoints.is_empty() {
            out.push(Invalid::new(at("endpoints"), "list at least one endpoint URL"));
        }
        for (key, d) in [("timeouts.connect", up.timeouts.connect), ("timeouts.request", up.timeouts.request)] {
            if d.get().is_zero() {
                out.push(Invalid::new(at(key), "must be longer than zero"));
            }
        }
        if up.max_idle_connections > MAX_IDLE_CONNECTIONS {
            out.push(Invalid::new(
                at("max_idle_connections"),
                format!("must be at most {MAX_IDLE_CONNECTIONS} (per endpoint and worker)"),
            ));
        }
        let h = &up.health;
        if h.consecutive_failures == 0 {
            out.push(Invalid::new(at("health.consecutive_failures"), "must be at least 1"));
        }
        if h.max_ejection_time < h.ejection_time {
            out.push(Invalid::new(at("health.max_ejection_time"), "must not be shorter than ejection_time"));
        }
        let Some(tls) = &up.tls else { continue };
        if tls.cert.is_some() != tls.key.is_some() {
            out.push(Invalid::new(at("tls"), "`cert` and `key` go together"));
        }
        if tls.svid && tls.cert.is_some() {
            out.push(Invalid::new(at("tls.svid"), "present either the gateway's SVID or `cert`, not both"));
        }
        if tls.svid && config.spiffe.svid.is_none() {
            out.push(Invalid::new(at("tls.svid"), "needs `spiffe.svid`, the gateway's own SVID"));
        }
        if let Some(id) = &tls.spiffe_id {
            if let Some(problem) =
                spiffe_pattern_problem(id).or(id.contains('*').then_some("an exact SPIFFE ID, no `*`"))
            {
                out.push(Invalid::new(at("tls.spiffe_id"), problem));
            } else if let Some(domain) = trust_domain(id)
                && !config.spiffe.trust_domains.contains_key(domain)
            {
                out.push(Invalid::new(
                    at("tls.spiffe_id"),
                    format!("no bundle for trust domain `{domain}` in `spiffe.trust_domains`"),
                ));
            }
            if tls.ca.is_some() {
                out.push(Invalid::new(at("tls.ca"), "with `spiffe_id`, the trust domain's bundle is the CA"));
            }
        }
    }
}

fn routes(config: &Config, out: &mut Vec<Invalid>) {
    let mut ids = HashSet::new();
    for (i, route) in config.routes.iter().enumerate() {
        let at = |k: &str| format!("routes[{i}].{k}");
        if route.id.is_empty() {
            out.push(Invalid::new(at("id"), "must not be empty"));
        } else if !route.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            out.push(Invalid::new(at("id"), "use letters, digits and `-_.:` only"));
        } else if !ids.insert(route.id.as_str()) {
            out.push(Invalid::new(at("id"), format!("duplicate route id `{}`", route.id)));
        }

        let m = &route.matches;
        let kinds = [m.path.is_some(), m.path_prefix.is_some(), m.path_template.is_some()];
        if kinds.iter().filter(|k| **k).count() > 1 {
            out.push(Invalid::new(at("match"), "use at most one of `path`, `path_prefix` and `path_template`"));
        }
        if route.rewrite.is_some() && m.path_prefix.is_none() {
            out.push(Invalid::new(at("rewrite"), "`rewrite.path_prefix` needs `match.path_prefix`"));
        }
        if let Some(t) = &route.timeouts {
            for (key, d) in [("request", t.request), ("tunnel_idle", t.tunnel_idle)] {
                if d.is_some_and(|d| d.get().is_zero()) {
                    out.push(Invalid::new(at(&format!("timeouts.{key}")), "must be longer than zero"));
                }
            }
        }

        for (j, proto) in route.upgrades.iter().flatten().enumerate() {
            let key = at(&format!("upgrades[{j}]"));
            if proto.is_empty() || !proto.bytes().all(is_tchar) {
                out.push(Invalid::new(key, "a protocol name: letters, digits and `!#$%&'*+-.^_`|~` only"));
            } else if proto.eq_ignore_ascii_case("h2c") {
                out.push(Invalid::new(
                    key,
                    "`h2c` is never relayed: the upstream would take requests the gateway never sees",
                ));
            }
        }

        if let Some(ids) = &route.issuers {
            for (j, id) in ids.iter().enumerate() {
                if !config.issuers.iter().any(|i| &i.id == id) {
                    out.push(Invalid::new(
                        format!("routes[{i}].issuers[{j}]"),
                        format!("no issuer `{id}` in `issuers`"),
                    ));
                }
            }
        }

        let upstream = route.upstream.as_str();
        if upstream != ECHO_UPSTREAM && !upstream.contains("://") && !config.upstreams.contains_key(upstream) {
            let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
            out.push(Invalid::new(
                at("upstream"),
                format!(
                    "`{upstream}` is neither a URL, `echo`, nor a name in `upstreams` (known: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ));
        }

        match &route.authenticate {
            None => out.push(Invalid::new(
                at("authenticate"),
                "missing: every route must say how callers authenticate (default deny); \
                 e.g. `authenticate: [jwt]`, or `authenticate: [none]` for a public route",
            )),
            Some(methods) if methods.is_empty() => out.push(Invalid::new(
                at("authenticate"),
                "empty: list at least one method, or `[none]` for a public route",
            )),
            Some(methods) => {
                let public = methods.contains(&AuthMethod::None);
                if public && methods.len() > 1 {
                    out.push(Invalid::new(at("authenticate"), "`none` cannot be combined with other methods"));
                }
                let mut seen = HashSet::new();
                for (j, m) in methods.iter().enumerate() {
                    if !seen.insert(*m) {
                        out.push(Invalid::new(format!("routes[{i}].authenticate[{j}]"), "listed twice"));
                    }
                }
                if methods.contains(&AuthMethod::Jwt) && config.issuers.is_empty() {
                    out.push(Invalid::new(at("authenticate"), "`jwt` needs at least one entry in `issuers`"));
                }
                if methods.contains(&AuthMethod::Dpop)
                    && config.issuers.is_empty()
                    && !methods.contains(&AuthMethod::Introspection)
                {
                    out.push(Invalid::new(
                        at("authenticate"),
                        "`dpop` checks its tokens as JWTs of `issuers` or by `introspection` (listed on the route)",
                    ));
                }
                if methods.contains(&AuthMethod::Introspection) && config.introspection.is_none() {
                    out.push(Invalid::new(
                        at("authenticate"),
                        "`introspection` needs the top-level `introspection` block",
                    ));
                }
                if methods.contains(&AuthMethod::ApiKey) && config.api_keys.is_none() {
                    out.push(Invalid::new(at("authenticate"), "`api_key` needs the top-level `api_keys` block"));
                }
                let tls = config.server.tls.as_ref();
                if methods.contains(&AuthMethod::Mtls)
                    && !tls.is_some_and(|t| t.client_ca.is_some() || !config.spiffe.trust_domains.is_empty())
                {
                    out.push(Invalid::new(
                        at("authenticate"),
                        "`mtls` needs `server.tls` with `client_ca` or `spiffe.trust_domains` to verify certificates",
                    ));
                }
                if route.certificate_bound {
                    if !methods.iter().any(|m| matches!(m, AuthMethod::Jwt | AuthMethod::Introspection)) {
                        out.push(Invalid::new(
                            at("certificate_bound"),
                            "needs a token method (`jwt` or `introspection`)",
                        ));
                    }
                    if !tls.is_some_and(|t| t.client_ca.is_some() || !config.spiffe.trust_domains.is_empty()) {
                        out.push(Invalid::new(
                            at("certificate_bound"),
                            "needs `server.tls` with `client_ca` or `spiffe.trust_domains`: tokens are bound to client certificates",
                        ));
                    }
                }
                if public && route.authorize.as_ref().is_some_and(has_identity_rules) {
                    out.push(Invalid::new(
                        at("authorize"),
                        "a public route (`authenticate: [none]`) has no caller to check",
                    ));
                }
            }
        }
    }
}

fn has_identity_rules(a: &crate::AuthorizeConfig) -> bool {
    [&a.scopes, &a.any_scopes, &a.roles, &a.groups, &a.subjects, &a.clients, &a.spiffe_ids, &a.acr_values]
        .iter()
        .any(|l| !l.is_empty())
        || a.max_age.is_some()
}

/// `spiffe://<trust domain>/<path>`, where a path segment may be `*` and the last may be `**`.
fn spiffe_pattern_problem(p: &str) -> Option<&'static str> {
    let Some(rest) = p.strip_prefix("spiffe://") else {
        return Some("a SPIFFE ID starts with `spiffe://`");
    };
    let mut parts = rest.split('/');
    let domain = parts.next().unwrap_or_default();
    if domain.is_empty() || !domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Some("the trust domain must be lower-case letters, digits, `-`, `.` or `_`");
    }
    let segments: Vec<&str> = parts.collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Some("empty path segment");
        }
        if *seg == "**" && i + 1 != segments.len() {
            return Some("`**` may only be the last segment");
        }
        if seg.contains('*') && *seg != "*" && *seg != "**" {
            return Some("`*` stands for a whole segment");
        }
        if *seg == "." || *seg == ".." {
            return Some("`.` and `..` segments are not allowed");
        }
    }
    None
}

/// The authorization block and each route's rules against it.
fn authorization(config: &Config, out: &mut Vec<Invalid>) {
    let authz = &config.authorization;
    for (key, value) in [("roles_claim", &authz.roles_claim), ("groups_claim", &authz.groups_claim)] {
        if value.is_empty() || value.split('.').any(str::is_empty) {
            out.push(Invalid::new(format!("authorization.{key}"), "a dotted claim path, e.g. `realm_access.roles`"));
        }
    }
    if authz.cedar.as_ref().is_some_and(|c| c.policies.is_empty()) {
        out.push(Invalid::new("authorization.cedar.policies", "at least one policy file or folder"));
    }
    for (i, route) in config.routes.iter().enumerate() {
        let Some(a) = &route.authorize else { continue };
        for (j, p) in a.spiffe_ids.iter().enumerate() {
            if let Some(problem) = spiffe_pattern_problem(p) {
                out.push(Invalid::new(format!("routes[{i}].authorize.spiffe_ids[{j}]"), problem));
            }
        }
        if authz.cedar.is_none() {
            if a.cedar == Some(true) {
                out.push(Invalid::new(format!("routes[{i}].authorize.cedar"), "needs `authorization.cedar`"));
            }
            if a.action.is_some() {
                out.push(Invalid::new(format!("routes[{i}].authorize.action"), "needs `authorization.cedar`"));
            }
        }
        if a.action.as_deref().is_some_and(str::is_empty) {
            out.push(Invalid::new(format!("routes[{i}].authorize.action"), "must not be empty"));
        }
        for (j, acr) in a.acr_values.iter().enumerate() {
            if acr.is_empty() || !acr.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                out.push(Invalid::new(
                    format!("routes[{i}].authorize.acr_values[{j}]"),
                    "a class name of printable characters, without spaces or quotes",
                ));
            }
        }
        if a.max_age.is_some_and(|m| m.get() < std::time::Duration::from_secs(1)) {
            out.push(Invalid::new(format!("routes[{i}].authorize.max_age"), "at least 1s"));
        }
    }
}

/// The trust domain of a SPIFFE ID (checked by `spiffe_pattern_problem` first).
fn trust_domain(id: &str) -> Option<&str> {
    id.strip_prefix("spiffe://")?.split('/').next()
}

/// SPIFFE trust domains and DPoP settings.
fn workload(config: &Config, out: &mut Vec<Invalid>) {
    for domain in config.spiffe.trust_domains.keys() {
        if spiffe_pattern_problem(&format!("spiffe://{domain}")).is_some() || domain.contains('/') {
            out.push(Invalid::new(
                format!("spiffe.trust_domains.{domain}"),
                "a trust domain name: lower-case letters, digits, `-`, `.` or `_` (e.g. `example.org`)",
            ));
        }
    }
    let d = &config.dpop;
    if d.algorithms.is_empty() {
        out.push(Invalid::new("dpop.algorithms", "list at least one algorithm"));
    }
    for (i, alg) in d.algorithms.iter().enumerate() {
        if !["ES256", "ES384", "EdDSA", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512"].contains(&alg.as_str()) {
            out.push(Invalid::new(
                format!("dpop.algorithms[{i}]"),
                format!("`{alg}` is not an asymmetric JWS algorithm (ES256, ES384, EdDSA, PS256, RS256...)"),
            ));
        }
    }
    if d.max_age.get().is_zero() {
        out.push(Invalid::new("dpop.max_age", "must be longer than zero"));
    }
    if d.nonce_lifetime.get().is_zero() {
        out.push(Invalid::new("dpop.nonce_lifetime", "must be longer than zero"));
    }
    if d.nonce_secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
        out.push(Invalid::new("dpop.nonce_secret", "use at least 16 characters"));
    }
}

/// Claims every internal token sets itself; a claim mapping may not replace them.
/// (`scp` and `azp` too: verifiers read them as scopes and client, which would undo the
/// narrowing.)
pub const RESERVED_CLAIMS: [&str; 17] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "scope",
    "scp",
    "client_id",
    "azp",
    "auth_method",
    "spiffe_id",
    "act",
    "may_act",
    "cnf",
    "encrypted_claims",
];

/// Paths the token service answers before routing.
const SERVICE_PATHS: [&str; 3] = ["/.well-known/jwks.json", "/.well-known/openid-configuration", "/oauth2/token"];

/// Sources an identity header may carry (besides `claims.<path>`).
pub const HEADER_SOURCES: [&str; 8] =
    ["subject", "client_id", "issuer", "scopes", "auth_method", "spiffe_id", "consumer", "plan"];

/// The token service block.
fn token_service(config: &Config, out: &mut Vec<Invalid>) {
    let Some(ts) = &config.token_service else { return };
    match url::Url::parse(&ts.issuer) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.query().is_none() && u.fragment().is_none() => {}
        _ => out.push(Invalid::new(
            "token_service.issuer",
            "an http(s) URL without query or fragment, e.g. https://gateway.internal",
        )),
    }
    if !["ES256", "ES384", "EdDSA", "PS256", "RS256"].contains(&ts.keys.algorithm.as_str()) {
        out.push(Invalid::new(
            "token_service.keys.algorithm",
            format!("`{}`: use ES256, ES384, EdDSA, PS256 or RS256", ts.keys.algorithm),
        ));
    }
    let longest = ts
        .audiences
        .values()
        .filter_map(|a| a.lifetime)
        .chain([ts.internal_token_lifetime])
        .chain(config.routes.iter().filter_map(|r| r.propagate.as_ref()?.internal_token.as_ref()?.lifetime))
        .map(|d| d.get())
        .max()
        .unwrap_or_default()
        .max(std::time::Duration::from_secs(300));
    if ts.keys.files.is_empty() && ts.keys.rotate_every.get() <= longest {
        out.push(Invalid::new(
            "token_service.keys.rotate_every",
            format!("must be longer than the longest token lifetime ({}s)", longest.as_secs()),
        ));
    }
    if ts.serve_on.contains(&crate::Listener::Public) {
        for (i, r) in config.routes.iter().enumerate() {
            if let Some(p) = r.matches.path.as_deref().filter(|p| SERVICE_PATHS.contains(p)) {
                out.push(Invalid::new(
                    format!("routes[{i}].match.path"),
                    format!("`{p}` is served by the token service on the public listener"),
                ));
            }
        }
    }
    if ts.internal_token_lifetime.get().is_zero() {
        out.push(Invalid::new("token_service.internal_token_lifetime", "must be longer than zero"));
    }
    if ts.serve_on.is_empty() {
        out.push(Invalid::new("token_service.serve_on", "name at least one listener: `public` or `admin`"));
    }
    if ts.serve_on.contains(&crate::Listener::Admin) && config.admin.is_none() {
        out.push(Invalid::new("token_service.serve_on", "`admin` needs the `admin` listener"));
    }
    for (name, a) in &ts.audiences {
        let at = |k: &str| format!("token_service.audiences.{name}.{k}");
        if name.is_empty() {
            out.push(Invalid::new("token_service.audiences", "an audience name must not be empty"));
        }
        if a.lifetime.is_some_and(|l| l.get().is_zero()) {
            out.push(Invalid::new(at("lifetime"), "must be longer than zero"));
        }
        for (key, rules) in [("exchange", &a.exchange), ("client_credentials", &a.client_credentials)] {
            let Some(rules) = rules else { continue };
            for (j, p) in rules.spiffe_ids.iter().enumerate() {
                if let Some(problem) = spiffe_pattern_problem(p) {
                    out.push(Invalid::new(at(&format!("{key}.spiffe_ids[{j}]")), problem));
                }
            }
            if config.authorization.cedar.is_none() && (rules.cedar == Some(true) || rules.action.is_some()) {
                out.push(Invalid::new(at(key), "`cedar` and `action` need `authorization.cedar`"));
            }
        }
    }
    let mut ids = HashSet::new();
    for (i, c) in ts.clients.iter().enumerate() {
        if c.id.is_empty() {
            out.push(Invalid::new(format!("token_service.clients[{i}].id"), "must not be empty"));
        } else if !ids.insert(c.id.as_str()) {
            out.push(Invalid::new(format!("token_service.clients[{i}].id"), format!("duplicate client `{}`", c.id)));
        }
    }
}

/// Each route's `propagate` block.
fn propagation(config: &Config, out: &mut Vec<Invalid>) {
    for (i, route) in config.routes.iter().enumerate() {
        let Some(p) = &route.propagate else { continue };
        let at = |k: &str| format!("routes[{i}].propagate.{k}");
        for (name, source) in &p.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                out.push(Invalid::new(at(&format!("headers.{name}")), "not a valid header name"));
            } else if is_protected_header(name) {
                out.push(Invalid::new(
                    at(&format!("headers.{name}")),
                    "a header the gateway manages; choose another name",
                ));
            }
            let ok = HEADER_SOURCES.contains(&source.as_str())
                || source
                    .strip_prefix("claims.")
                    .is_some_and(|path| !path.is_empty() && !path.split('.').any(str::is_empty));
            if !ok {
                out.push(Invalid::new(
                    at(&format!("headers.{name}")),
                    format!("`{source}`: use one of {} or `claims.<path>`", HEADER_SOURCES.join(", ")),
                ));
            }
        }
        let Some(t) = &p.internal_token else { continue };
        if config.token_service.is_none() {
            out.push(Invalid::new(at("internal_token"), "needs the top-level `token_service` (the signing keys)"));
        }
        let header = t.header.as_deref().unwrap_or("authorization");
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            out.push(Invalid::new(at("internal_token.header"), "not a valid header name"));
        } else if header.eq_ignore_ascii_case("authorization") && p.passthrough {
            out.push(Invalid::new(
                at("passthrough"),
                "the internal token takes `Authorization`: pass the credential through or replace it, not both \
                 (or give the internal token another `header`)",
            ));
        } else if !header.eq_ignore_ascii_case("authorization") && is_protected_header(header) {
            out.push(Invalid::new(at("internal_token.header"), "a header the gateway manages; choose another name"));
        }
        if p.headers.keys().any(|h| h.eq_ignore_ascii_case(header)) {
            out.push(Invalid::new(at("internal_token.header"), "also set by `headers`"));
        }
        if t.lifetime.is_some_and(|l| l.get().is_zero()) {
            out.push(Invalid::new(at("internal_token.lifetime"), "must be longer than zero"));
        }
        if t.audience.as_deref().is_some_and(str::is_empty) {
            out.push(Invalid::new(at("internal_token.audience"), "must not be empty"));
        }
        for (claim, path) in &t.claims {
            if RESERVED_CLAIMS.contains(&claim.as_str()) || claim.is_empty() {
                out.push(Invalid::new(
                    at(&format!("internal_token.claims.{claim}")),
                    "a claim the gateway sets itself (or empty); choose another name",
                ));
            }
            if path.is_empty() || path.split('.').any(str::is_empty) {
                out.push(Invalid::new(
                    at(&format!("internal_token.claims.{claim}")),
                    "a dotted claim path, e.g. `org.tenant`",
                ));
            }
        }
        if let Some(claims) = t.encrypt.as_ref().and_then(|e| e.claims.as_ref()) {
            if claims.is_empty() {
                out.push(Invalid::new(
                    at("internal_token.encrypt.claims"),
                    "list at least one claim, or leave out `claims` to encrypt the whole token",
                ));
            }
            for (j, c) in claims.iter().enumerate() {
                if !t.claims.contains_key(c) && !["sub", "client_id", "scope", "auth_method"].contains(&c.as_str()) {
                    out.push(Invalid::new(
                        at(&format!("internal_token.encrypt.claims[{j}]")),
                        format!("`{c}` is not a claim of this token (see `internal_token.claims`)"),
                    ));
                }
            }
        }
    }
}

/// Headers whose meaning the gateway owns (framing, forwarding, its own identity headers).
fn is_protected_header(name: &str) -> bool {
    [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "keep-alive",
        "authorization",
        "dpop",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "cookie",
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(name))
}

/// A character of an RFC 9110 `token` (§5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
