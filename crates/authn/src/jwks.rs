//! Signing keys of an issuer: where they come from, how long they are trusted, and how they
//! are refreshed.
//!
//! - A key set comes from a file, a JWKS URL, or OIDC discovery (`{issuer}/.well-known/
//!   openid-configuration`, whose `issuer` must match, then its `jwks_uri`). Fetches use HTTPS;
//!   plain HTTP only to loopback or when explicitly allowed.
//! - A fetched set is fresh for its `Cache-Control: max-age`, bounded by `min_cache` and
//!   `max_cache`, and refreshed in the background before it goes stale.
//! - A token with an unknown `kid` may force a refetch, at most once per `refetch_interval`
//!   (concurrent requests wait for the same fetch), so made-up `kid`s cannot hammer the
//!   identity provider through the gateway.
//! - If the identity provider is unreachable, the last good set keeps serving for
//!   `stale_for` after it went stale; then verification fails closed.
//! - A key that disappears from the set is retired: tokens it verified stop being accepted,
//!   even from the verified-token cache.
//!
//! Fetching and refreshing run on the control thread; workers read the current set with one
//! atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use portcullis_config::values::RedactedUrl;
use portcullis_jose::{Algorithm, Jwk, VerifyingKey};
use tokio::sync::{Notify, watch};
use url::Url;

/// Largest key set or discovery document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// A key and its verifier. `retired` turns true when the key leaves its set; `usable_until`
/// follows the set's `stale_for` deadline, so that tokens it verified stop being accepted
/// from the cache when the set itself may no longer be used.
#[derive(Debug)]
pub struct Key {
    /// The JWK.
    pub jwk: Jwk,
    /// Its verifier.
    pub verifier: VerifyingKey,
    retired: AtomicBool,
    /// Seconds since the epoch; `u64::MAX` for keys that never go stale (files, secrets).
    usable_until: AtomicU64,
}

impl Key {
    /// A usable key.
    pub fn new(jwk: Jwk, verifier: VerifyingKey) -> Arc<Key> {
        Arc::new(Key { jwk, verifier, retired: AtomicBool::new(false), usable_until: AtomicU64::new(u64::MAX) })
    }

    /// Whether the key left its set (tokens it verified are no longer accepted).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Whether tokens this key verified may still be accepted at `now` (seconds since the
    /// epoch): the key is in its set and the set is within its `stale_for` allowance.
    pub fn usable_at(&self, now: u64) -> bool {
        !self.is_retired() && now < self.usable_until.load(Ordering::Acquire)
    }
}

/// A set of keys and how long it may be used.
#[derive(Debug)]
pub struct KeySet {
    /// The keys.
    pub keys: Vec<Arc<Key>>,
    fresh_until: Instant,
    usable_until: Instant,
}

/// What a key lookup found.
pub enum Lookup {
    /// The key to verify with.
    Found(Arc<Key>),
    /// No key fits (unknown `kid`, or none of the right type).
    Unknown,
    /// Several keys of the set share the token's `kid` and fit its `alg` (RFC 7517 §4.5
    /// asks sets not to do this, but allows it): the signature decides among them.
    Several(Vec<Arc<Key>>),
    /// Several keys fit a token without `kid`.
    Ambiguous,
    /// There are no usable keys: never fetched, or stale for too long.
    Unavailable,
}

/// Where keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// A local JWKS file (already read).
    File,
    /// A JWKS URL.
    Uri(Url),
    /// OIDC discovery for this issuer.
    Discovery(String),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File => f.write_str("File"),
            Source::Uri(u) => write!(f, "Uri({})", RedactedUrl(u.as_str())),
            Source::Discovery(issuer) => write!(f, "Discovery({})", RedactedUrl(issuer)),
        }
    }
}

/// Fetch and cache policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Shortest freshness.
    pub min_cache: Duration,
    /// Longest freshness.
    pub max_cache: Duration,
    /// Least time between two forced refetches.
    pub refetch_interval: Duration,
    /// How long stale keys keep serving when refreshing fails.
    pub stale_for: Duration,
    /// Timeout of a fetch.
    pub timeout: Duration,
    /// Plain HTTP allowed to any host.
    pub allow_http: bool,
}

/// The keys of one source, shared by every issuer using that source and kept across
/// config reloads while the source is unchanged.
pub struct KeyStore {
    /// For logs: the issuer id that first configured this source.
    label: String,
    source: Source,
    policy: Policy,
    client: Option<reqwest::Client>,
    set: ArcSwapOption<KeySet>,
    generation: watch::Sender<u64>,
    refetch: Arc<Notify>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last forced refetch (`u64::MAX`: never).
    last_forced: AtomicU64,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("label", &self.label).field("source", &self.source).finish_non_exhaustive()
    }
}

/// Whether `url` may be fetched: HTTPS, or HTTP to loopback (or anywhere with `allow_http`).
/// Errors show the URL with its credentials hidden.
pub fn check_url(url: &str, allow_http: bool) -> Result<Url, String> {
    let u = portcullis_config::values::parse_url(url)?;
    let url = RedactedUrl(url);
    match u.scheme() {
        "https" => Ok(u),
        "http" if allow_http || is_loopback(&u) => Ok(u),
        "http" => {
            Err(format!("`{url}`: keys must be fetched over HTTPS (plain HTTP only to loopback or with allow_http)"))
        }
        _ => Err(format!("`{url}`: not an http(s) URL")),
    }
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// An HTTP client for fetching keys, documents and introspection results.
pub fn http_client(timeout: Duration, ca: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", ca.display()))? {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| e.to_string())
}

fn key_set_from(json: &[u8], label: &str) -> Result<Vec<Arc<Key>>, String> {
    let (jwks, skipped) = Jwk::parse_set(json).map_err(|e| e.to_string())?;
    for s in skipped {
        tracing::warn!(issuer = label, problem = %s, "key left out of the key set");
    }
    let keys = jwks
        .into_iter()
        .filter_map(|jwk| {
            let verifier = jwk.verifying_key(&Algorithm::ALL).ok()?;
            Some(Key::new(jwk, verifier))
        })
        .collect();
    Ok(keys)
}

impl KeyStore {
    /// A store with keys read from a JWKS file.
    pub fn from_file(label: &str, path: &std::path::Path, policy: Policy) -> Result<Arc<KeyStore>, String> {
        let json = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let keys = key_set_from(&json, label)?;
        if keys.is_empty() {
            return Err(format!("{} holds no usable signing key", path.display()));
        }
        let store = KeyStore::new(label, Source::File, policy, None);
        // A file is trusted until it changes (a change reloads the config).
        let forever = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
        store.set.store(Some(Arc::new(KeySet { keys, fresh_until: forever, usable_until: forever })));
        Ok(store)
    }

    /// A store that fetches keys from `source`. The background refresh starts if a tokio
    /// runtime is running (not in `check`).
    pub fn fetching(label: &str, source: Source, policy: Policy, client: reqwest::Client) -> Arc<KeyStore> {
        let store = KeyStore::new(label, source, policy, Some(client));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(refresher(Arc::downgrade(&store), store.refetch.clone()));
        }
        store
    }

    fn new(label: &str, source: Source, policy: Policy, client: Option<reqwest::Client>) -> Arc<KeyStore> {
        Arc::new(KeyStore {
            label: label.to_string(),
            source,
            policy,
            client,
            set: ArcSwapOption::empty(),
            generation: watch::channel(0).0,
            refetch: Arc::new(Notify::new()),
            epoch: Instant::now(),
            last_forced: AtomicU64::new(u64::MAX),
        })
    }

    /// Whether a usable key set is loaded (readiness).
    pub fn ready(&self) -> bool {
        self.set.load().as_ref().is_some_and(|s| Instant::now() < s.usable_until)
    }

    /// The key for a token's `kid` and `alg`. Without a `kid`, the one key that fits `alg`.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let guard = self.set.load();
        let Some(set) = guard.as_ref() else { return Lookup::Unavailable };
        if Instant::now() >= set.usable_until {
            return Lookup::Unavailable;
        }
        let fits = |k: &&Arc<Key>| k.jwk.fits(alg) && k.verifier.supports(alg);
        match kid {
            Some(kid) => {
                let mut fitting = set.keys.iter().filter(|k| k.jwk.kid.as_deref() == Some(kid)).filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Lookup::Found(k.clone()),
                    (Some(a), Some(b)) => Lookup::Several([a, b].into_iter().chain(fitting).cloned().collect()),
                    (None, _) => Lookup::Unknown,
                }
            }
            None => {
                let mut fitting = set.keys.iter().filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Lookup::Found(k.clone()),
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                    (None, _) => Lookup::Unknown,
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// For a token whose `kid` is unknown: refetch the keys, unless a forced refetch
    /// happened less than `refetch_interval` ago, and wait (at most `wait`) for the result.
    /// Returns whether a newer set arrived.
    pub async fn refetch_unknown_kid(&self, wait: Duration) -> bool {
        if self.client.is_none() {
            return false;
        }
        let now = self.now_ms();
        let interval = u64::try_from(self.policy.refetch_interval.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_forced.load(Ordering::Acquire);
        let due = last == u64::MAX || now.saturating_sub(last) >= interval;
        if !due {
            return false;
        }
        let mut rx = self.generation.subscribe();
        let before = *rx.borrow_and_update();
        // One request wins the right to trigger; the others wait for the same fetch.
        if self.last_forced.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.refetch.notify_one();
        }
        tokio::time::timeout(wait, rx.wait_for(|g| *g != before)).await.is_ok_and(|r| r.is_ok())
    }

    async fn fetch(&self) -> Result<(Vec<Arc<Key>>, Duration), String> {
        let client = self.client.as_ref().ok_or("no HTTP client")?;
        let jwks_uri = match &self.source {
            Source::File => return Err("file sources are not fetched".into()),
            Source::Uri(u) => u.clone(),
            Source::Discovery(issuer) => {
                let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
                let url = check_url(&url, self.policy.allow_http)?;
                let (doc, _) = get(client, url).await?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&doc).map_err(|_| "the discovery document is not JSON")?;
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer.as_str()) {
                    return Err("the discovery document names another issuer".into());
                }
                let uri =
                    doc.get("jwks_uri").and_then(|v| v.as_str()).ok_or("the discovery document has no jwks_uri")?;
                check_url(uri, self.policy.allow_http)?
            }
        };
        let (body, max_age) = get(client, jwks_uri).await?;
        let keys = key_set_from(&body, &self.label)?;
        let fresh = max_age.unwrap_or(self.policy.min_cache).clamp(self.policy.min_cache, self.policy.max_cache);
        Ok((keys, fresh))
    }

    /// Installs a fetched set: keys already known keep their identity (and cached tokens),
    /// keys that disappeared are retired.
    fn install(&self, keys: Vec<Arc<Key>>, fresh: Duration) {
        let old = self.set.load_full();
        let keys: Vec<Arc<Key>> = keys
            .into_iter()
            .map(|k| old.as_ref().and_then(|o| o.keys.iter().find(|x| x.jwk == k.jwk).cloned()).unwrap_or(k))
            .collect();
        if let Some(old) = &old {
            for k in &old.keys {
                if !keys.iter().any(|n| Arc::ptr_eq(n, k)) {
                    k.retired.store(true, Ordering::Release);
                    tracing::info!(issuer = %self.label, kid = ?k.jwk.kid, "signing key retired");
                }
            }
        }
        let now = Instant::now();
        let count = keys.len();
        // Floored to the second: the cache never outlives the set.
        let usable_until = crate::jwt::unix_now().saturating_add((fresh + self.policy.stale_for).as_secs());
        for k in &keys {
            k.usable_until.store(usable_until, Ordering::Release);
        }
        self.set.store(Some(Arc::new(KeySet {
            keys,
            fresh_until: now + fresh,
            usable_until: now + fresh + self.policy.stale_for,
        })));
        self.generation.send_modify(|g| *g += 1);
        tracing::info!(issuer = %self.label, keys = count, fresh_seconds = fresh.as_secs(), "signing keys loaded");
    }

    /// When the current set should be refreshed: at 80% of its freshness.
    fn refresh_at(&self) -> Instant {
        match self.set.load().as_ref() {
            Some(s) => {
                let left = s.fresh_until.saturating_duration_since(Instant::now());
                Instant::now() + left.mul_f32(0.8).max(Duration::from_secs(1))
            }
            None => Instant::now(),
        }
    }
}

/// Retires a key (tests).
#[cfg(test)]
pub(crate) fn retire_for_test(k: &Key) {
    k.retired.store(true, Ordering::Release);
}

impl Drop for KeyStore {
    fn drop(&mut self) {
        // Keys of a store nobody uses any more are retired, and its refresher stops.
        if let Some(set) = self.set.load().as_ref() {
            for k in &set.keys {
                k.retired.store(true, Ordering::Release);
            }
        }
        self.refetch.notify_one();
    }
}

/// GET a document: status 200, at most [`MAX_DOCUMENT`] bytes; also its `max-age`. Errors
/// show the URL with its credentials hidden.
async fn get(client: &reqwest::Client, target: Url) -> Result<(Vec<u8>, Option<Duration>), String> {
    let shown = RedactedUrl(target.as_str()).to_string();
    let url = &shown;
    let resp = client
        .get(target)
        .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
        .send()
        .await
        .map_err(|e| format!("fetching {url}: {}", short(e)))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("fetching {url}: status {}", resp.status().as_u16()));
    }
    let max_age = resp.headers().get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
    if resp.content_length().is_some_and(|l| l > MAX_DOCUMENT as u64) {
        return Err(format!("fetching {url}: document too large"));
    }
    let mut body = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("fetching {url}: {}", short(e)))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT {
            return Err(format!("fetching {url}: document too large"));
        }
    }
    Ok((body, max_age))
}

/// What went wrong, without the URL (the caller names it, with its credentials hidden).
fn short(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        e.without_url().to_string()
    }
}

/// `max-age` from a `Cache-Control` value; `no-store`/`no-cache` mean zero (then bounded by
/// `min_cache`).
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for d in cache_control.split(',').map(str::trim) {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some(v) = d.strip_prefix("max-age=").or_else(|| d.strip_prefix("s-maxage=")) {
            age = v.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs).or(age);
        }
    }
    age
}

/// Keeps a store's keys fresh: fetches at start, then before they go stale, and at once when
/// a forced refetch is requested. Failures back off from 1 s to 60 s; the last good keys
/// keep serving meanwhile (within `stale_for`).
async fn refresher(store: Weak<KeyStore>, wake: Arc<Notify>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let next = {
            let Some(s) = store.upgrade() else { return };
            match s.fetch().await {
                Ok((keys, fresh)) => {
                    s.install(keys, fresh);
                    backoff = Duration::from_secs(1);
                    s.refresh_at()
                }
                Err(e) => {
                    let ready = s.ready();
                    tracing::warn!(issuer = %s.label, error = %e, serving_stale_keys = ready, "cannot refresh signing keys");
                    let at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    at
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("max-age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn urls_must_be_https_except_loopback() {
        assert!(check_url("https://idp.example/jwks", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks", false).is_ok());
        assert!(check_url("http://[::1]/jwks", false).is_ok());
        assert!(check_url("http://localhost/jwks", false).is_ok());
        assert!(check_url("http://idp.example/jwks", false).unwrap_err().contains("HTTPS"));
        assert!(check_url("http://idp.example/jwks", true).is_ok());
        assert!(check_url("ftp://idp.example/jwks", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }

    #[test]
    fn url_errors_hide_credentials() {
        for bad in [
            "http://gw:pa55word@idp.example/jwks",
            "ftp://gw:pa55word@idp.example/jwks",
            "https://gw:pa55word@idp.example:99999/jwks",
            "//gw:pa55word@idp.example/jwks",
        ] {
            let e = check_url(bad, false).unwrap_err();
            assert!(!e.contains("pa55word") && e.contains("idp.example"), "{e}");
        }
        assert_eq!(
            format!("{:?}", Source::Uri(Url::parse("https://gw:pa55word@idp/k").unwrap())),
            "Uri(https://gw:***@idp/k)"
        );
    }
}
