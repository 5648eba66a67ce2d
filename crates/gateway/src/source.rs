//! Taking the config from signed bundles served over HTTP(S) (`config.source` in a bootstrap
//! file): fetched with `If-None-Match`, verified (signature, digests, a version newer than
//! the running one), unpacked into a folder of the cache, then loaded like a local config by
//! the caller. The last bundle taken is kept in the cache, so that a restart while the server
//! is away still serves it.

use std::path::PathBuf;
use std::time::Duration;

use portcullis_config::BundleSource;

use crate::bundle::{self, PublicKey, Verified};

/// The file the last bundle taken is kept in, in the cache folder.
const LAST_GOOD: &str = "last-good.tar";

/// A bundle ready to be loaded.
pub struct Fetched {
    /// What was verified.
    pub bundle: Verified,
    /// The bundle file.
    pub bytes: Vec<u8>,
    /// The folder it was unpacked into.
    pub dir: PathBuf,
    /// Its config there.
    pub config: PathBuf,
    /// Where it came from (the URL, or the cache).
    pub from: String,
}

/// What a gateway may start with: see [`Source::first`].
pub struct Start {
    /// A bundle from the server, newer than the cached one.
    pub fresh: Option<Fetched>,
    /// The last bundle taken.
    pub cached: Option<Fetched>,
    /// Why the server's bundle cannot be had or taken, if so: its version (when signed),
    /// and the reason.
    pub problem: Option<(Option<u64>, String)>,
}

/// What a poll found.
pub enum Polled {
    /// Nothing newer.
    Unchanged,
    /// A bundle to take.
    New(Box<Fetched>),
    /// A bundle that must not be taken, and why (with its version, if signed).
    Refused(Option<u64>, String),
    /// The server could not be asked.
    Unreachable(String),
}

/// A bundle source.
pub struct Source {
    config: BundleSource,
    keys: Vec<PublicKey>,
    client: reqwest::Client,
    cache: PathBuf,
    etag: Option<String>,
    /// The version and digest of the bundle in service.
    running: Option<(u64, String)>,
    /// Polls made.
    polls: u64,
    /// The digest of the last bundle refused: fetched again, it is not refused again.
    refused: Option<String>,
}

impl Source {
    /// Reads the public keys and makes the cache folder.
    pub fn new(config: BundleSource) -> Result<Source, String> {
        let keys = config.public_keys.iter().map(|p| PublicKey::read(p)).collect::<Result<Vec<_>, _>>()?;
        let cache = config.cache.clone().unwrap_or_else(|| PathBuf::from("bundles"));
        std::fs::create_dir_all(&cache)
            .map_err(|e| format!("config.source.cache: cannot make {}: {e}", cache.display()))?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.poll_interval.get().clamp(Duration::from_secs(1), Duration::from_secs(10)))
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("config.source.ca: cannot read {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("config.source.ca: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("config.source: {e}"))?;
        Ok(Source { config, keys, client, cache, etag: None, running: None, polls: 0, refused: None })
    }

    /// How often to poll.
    pub fn interval(&self) -> Duration {
        self.config.poll_interval.get()
    }

    /// The bundles to start with: the server's if it has a newer one than the cache, and the
    /// cache's (the last bundle taken), with why the server's is not to be used, if it is
    /// not. A cached bundle sets the version to beat, so a server that serves an older one
    /// (a rollback) is refused at start too.
    pub async fn first(&mut self) -> Start {
        let mut start = Start { fresh: None, cached: None, problem: None };
        let path = self.cache.join(LAST_GOOD);
        if let Ok(bytes) = std::fs::read(&path) {
            match bundle::verify(&bytes, &self.keys).and_then(|b| {
                let (dir, config) = self.unpack(&b)?;
                Ok(Fetched { bundle: b, bytes, dir, config, from: "cache".into() })
            }) {
                Ok(f) => {
                    self.running = Some((f.bundle.manifest.version, f.bundle.digest.clone()));
                    start.cached = Some(f);
                }
                Err(e) => {
                    tracing::warn!(cache = %path.display(), error = %e, "config: the cached bundle is not usable")
                }
            }
        }
        match self.poll().await {
            Polled::New(f) => start.fresh = Some(*f),
            Polled::Unchanged => {}
            Polled::Refused(version, why) => start.problem = Some((version, why)),
            Polled::Unreachable(why) => start.problem = Some((None, format!("the server cannot be reached: {why}"))),
        }
        start
    }

    /// The URL, for logs (its credentials hidden).
    pub fn url(&self) -> String {
        let mut u = self.config.url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("****"));
        }
        u.to_string()
    }

    /// Asks the server for a newer bundle.
    pub async fn poll(&mut self) -> Polled {
        let mut req = self.client.get(self.config.url.clone());
        // Every tenth poll asks without the ETag: a static server's ETag is the file's
        // modification time (in seconds) and size, and a bundle replaced within a second by
        // one of the same size (tar pads files to 512 bytes) would keep the old one's.
        self.polls = self.polls.wrapping_add(1);
        if let Some(etag) = self.etag.as_ref().filter(|_| !self.polls.is_multiple_of(10)) {
            req = req.header(http::header::IF_NONE_MATCH, etag);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Polled::Unreachable(e.without_url().to_string()),
        };
        match resp.status() {
            reqwest::StatusCode::NOT_MODIFIED => return Polled::Unchanged,
            reqwest::StatusCode::OK => {}
            s => return Polled::Unreachable(format!("status {}", s.as_u16())),
        }
        let etag = resp.headers().get(http::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
        if resp.content_length().is_some_and(|l| l > bundle::MAX_BUNDLE as u64) {
            return Polled::Refused(None, "the bundle is too large".into());
        }
        let mut resp = resp;
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    bytes.extend_from_slice(&c);
                    if bytes.len() > bundle::MAX_BUNDLE + (1 << 20) {
                        return Polled::Refused(None, "the bundle is too large".into());
                    }
                }
                Ok(None) => break,
                Err(e) => return Polled::Unreachable(e.without_url().to_string()),
            }
        }
        // Whatever it holds, this response is not asked for again.
        self.etag = etag;
        let whole = bundle::digest(&bytes);
        if self.refused.as_ref() == Some(&whole) {
            return Polled::Unchanged;
        }
        let verified = match bundle::verify(&bytes, &self.keys) {
            Ok(v) => v,
            Err(e) => {
                self.refused = Some(whole);
                return Polled::Refused(None, e);
            }
        };
        let version = verified.manifest.version;
        if let Some((running, digest)) = &self.running {
            if *digest == verified.digest {
                return Polled::Unchanged;
            }
            if version <= *running {
                self.refused = Some(whole);
                return Polled::Refused(
                    Some(version),
                    format!("version {version} is not newer than the running {running} (no rollback)"),
                );
            }
        }
        match self.unpack(&verified) {
            Ok((dir, config)) => {
                Polled::New(Box::new(Fetched { bundle: verified, bytes, dir, config, from: self.url() }))
            }
            Err(e) => {
                self.refused = Some(whole);
                Polled::Refused(Some(version), e)
            }
        }
    }

    /// Unpacks a bundle into a folder of its own in the cache: the folder, and the config.
    fn unpack(&self, b: &Verified) -> Result<(PathBuf, PathBuf), String> {
        let dir = self.cache.join(format!("v{}-{}", b.manifest.version, &b.digest[..12]));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
        let config = b.extract(&dir)?;
        Ok((dir, config))
    }

    /// The bundle `f` is in service: it is the version to beat, and the one a restart
    /// without the server starts with. Other unpacked bundles are removed.
    pub fn taken(&mut self, f: &Fetched) {
        self.running = Some((f.bundle.manifest.version, f.bundle.digest.clone()));
        let tmp = self.cache.join(format!("{LAST_GOOD}.tmp"));
        let kept = std::fs::write(&tmp, &f.bytes).and_then(|()| std::fs::rename(&tmp, self.cache.join(LAST_GOOD)));
        if let Err(e) = kept {
            tracing::warn!(error = %e, cache = %self.cache.display(), "config: the bundle cannot be cached; a restart needs the server");
        }
        if let Ok(entries) = std::fs::read_dir(&self.cache) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() && p != f.dir && e.file_name().to_string_lossy().starts_with('v') {
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
    }

    /// A bundle that was unpacked but not taken (its config is invalid) is removed, and not
    /// refused again when fetched again.
    pub fn dropped(&mut self, f: &Fetched) {
        self.refused = Some(f.bundle.digest.clone());
        if f.dir.starts_with(&self.cache) {
            let _ = std::fs::remove_dir_all(&f.dir);
        }
    }
}
