//! The gateway's signing keys: loaded from files or generated, rotated with overlap, and
//! published as a JWK Set.
//!
//! Generated keys rotate on a schedule. Each key is published one period before it starts
//! signing (verifiers that cache the JWKS learn it in time) and stays published one period
//! after it stops (tokens it signed outlive it); the config makes the period longer than
//! any token's lifetime. Rotation happens when a signer is asked for after it is due, so no
//! timer task is needed and an idle gateway does no work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use portcullis_config::SigningKeysConfig;
use portcullis_core::FileStamp;
use portcullis_jose::{Algorithm, SigningKey, VerifyingKey};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The keys at one moment: the one that signs, and every one that is published.
#[derive(Debug)]
pub struct Keys {
    /// Signs new tokens.
    pub current: Arc<SigningKey>,
    /// Published besides `current`: the next key (generated keys) or the other files, and
    /// the previous key.
    others: Vec<Arc<SigningKey>>,
    /// Verifiers of every published key, by key id.
    verifiers: HashMap<String, VerifyingKey>,
    /// The JWK Set document.
    pub jwks: Bytes,
    /// When generated keys rotate next (seconds since the epoch); never for files.
    rotate_at: Option<u64>,
    /// Changes at each rotation.
    pub generation: u64,
}

impl Keys {
    fn new(current: Arc<SigningKey>, others: Vec<Arc<SigningKey>>, rotate_at: Option<u64>, generation: u64) -> Keys {
        let all: Vec<&Arc<SigningKey>> = std::iter::once(&current).chain(&others).collect();
        let jwks = serde_json::json!({ "keys": all.iter().map(|k| k.public_jwk()).collect::<Vec<_>>() });
        let verifiers = all.iter().map(|k| (k.kid().to_string(), k.verifying_key())).collect();
        Keys { jwks: Bytes::from(jwks.to_string()), current, others, verifiers, rotate_at, generation }
    }

    /// The verifier of a published key.
    pub fn verifier(&self, kid: &str) -> Option<&VerifyingKey> {
        self.verifiers.get(kid)
    }
}

/// The signing keys of one configuration, shared by every route and the token endpoint.
#[derive(Debug)]
pub struct KeyRing {
    keys: ArcSwap<Keys>,
    /// Generated keys: their algorithm and rotation period (seconds).
    generated: Option<(Algorithm, u64)>,
    /// Taken only to rotate.
    rotating: Mutex<()>,
}

impl KeyRing {
    /// Loads the configured key files, or generates keys. Errors name the key.
    pub fn new(cfg: &SigningKeysConfig) -> Result<KeyRing, (String, String)> {
        let alg = Algorithm::parse(&cfg.algorithm)
            .ok_or_else(|| ("algorithm".to_string(), format!("`{}` is not a signing algorithm", cfg.algorithm)))?;
        if cfg.files.is_empty() {
            let every = cfg.rotate_every.get().as_secs().max(1);
            let current = generate(alg).map_err(|e| ("algorithm".to_string(), e))?;
            let next = generate(alg).map_err(|e| ("algorithm".to_string(), e))?;
            let keys = Keys::new(current, vec![next], Some(unix_now() + every), 1);
            return Ok(KeyRing {
                keys: ArcSwap::from_pointee(keys),
                generated: Some((alg, every)),
                rotating: Mutex::new(()),
            });
        }
        let mut loaded = Vec::new();
        for (i, path) in cfg.files.iter().enumerate() {
            let at = format!("files[{i}]");
            let der = PrivateKeyDer::from_pem_file(path)
                .map_err(|e| (at.clone(), format!("{}: no private key in it ({e})", path.display())))?;
            let PrivateKeyDer::Pkcs8(der) = der else {
                return Err((
                    at,
                    format!(
                        "{}: not a PKCS#8 key (convert it: openssl pkcs8 -topk8 -nocrypt -in key.pem)",
                        path.display()
                    ),
                ));
            };
            let key = SigningKey::from_pkcs8(alg, "", der.secret_pkcs8_der())
                .map_err(|e| (at, format!("{}: {e} (algorithm {alg})", path.display())))?;
            let kid = key.thumbprint();
            loaded.push(Arc::new(key.with_kid(kid)));
        }
        let current = loaded.remove(0);
        Ok(KeyRing {
            keys: ArcSwap::from_pointee(Keys::new(current, loaded, None, 1)),
            generated: None,
            rotating: Mutex::new(()),
        })
    }

    /// The keys now, rotating first if a rotation is due.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys_at(unix_now())
    }

    /// The keys at `now` (seconds since the epoch, as the caller read the clock), rotating
    /// first if a rotation is due.
    pub fn keys_at(&self, now: u64) -> Arc<Keys> {
        let keys = self.keys.load_full();
        match (keys.rotate_at, self.generated) {
            (Some(at), Some((alg, every))) if now >= at => self.rotate(alg, every, false).unwrap_or(keys),
            _ => keys,
        }
    }

    /// Next becomes current, current becomes previous, a new next is made: when due, or
    /// now when `force`d.
    fn rotate(&self, alg: Algorithm, every: u64, force: bool) -> Option<Arc<Keys>> {
        let _guard = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        let keys = self.keys.load_full();
        if !force && keys.rotate_at.is_some_and(|at| unix_now() < at) {
            return Some(keys); // rotated by another thread meanwhile
        }
        let next = match generate(alg) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "signing key rotation failed; the current key keeps signing");
                return None;
            }
        };
        let upcoming = keys.others.first().cloned().unwrap_or_else(|| next.clone());
        let rotated = Arc::new(Keys::new(
            upcoming,
            vec![next, keys.current.clone()],
            Some(unix_now() + every),
            keys.generation + 1,
        ));
        tracing::info!(kid = rotated.current.kid(), "signing key rotated");
        self.keys.store(rotated.clone());
        Some(rotated)
    }

    /// Rotates now (generated keys only), for tests and operators.
    pub fn rotate_now(&self) -> bool {
        match self.generated {
            Some((alg, every)) => self.rotate(alg, every, true).is_some(),
            None => false,
        }
    }
}

fn generate(alg: Algorithm) -> Result<Arc<SigningKey>, String> {
    let key = SigningKey::generate(alg, "").map_err(|e| e.to_string())?;
    let kid = key.thumbprint();
    Ok(Arc::new(key.with_kid(kid)))
}

/// The gateway's signing key rings, kept across reloads: a reload whose signing settings (and
/// key files) did not change keeps its keys, so tokens already handed out stay verifiable.
#[derive(Debug, Default)]
pub struct KeyRings {
    rings: Mutex<HashMap<RingSource, Weak<KeyRing>>>,
}

/// What makes two signing-key settings one key ring: the settings, and the key files as they
/// are on disk.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RingSource {
    settings: SigningKeysConfig,
    files: Vec<FileStamp>,
}

impl RingSource {
    fn of(cfg: &SigningKeysConfig) -> RingSource {
        RingSource { settings: cfg.clone(), files: cfg.files.iter().map(|f| FileStamp::of(f)).collect() }
    }
}

impl KeyRings {
    /// The key ring for `cfg`, the same as before when nothing changed.
    pub fn ring(&self, cfg: &SigningKeysConfig) -> Result<Arc<KeyRing>, (String, String)> {
        let source = RingSource::of(cfg);
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.retain(|_, w| w.strong_count() > 0);
        if let Some(r) = rings.get(&source).and_then(Weak::upgrade) {
            return Ok(r);
        }
        let ring = Arc::new(KeyRing::new(cfg)?);
        rings.insert(source, Arc::downgrade(&ring));
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kids(keys: &Keys) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&keys.jwks).unwrap();
        v["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn generated_keys_rotate_with_overlap() {
        let ring = KeyRing::new(&SigningKeysConfig::default()).unwrap();
        let first = ring.keys();
        let published = kids(&first);
        // The current key and the next one are published.
        assert_eq!(published.len(), 2);
        assert_eq!(published[0], first.current.kid());
        let next_kid = published[1].clone();

        assert!(ring.rotate_now());
        let second = ring.keys();
        // The announced key signs now; the old one is still published; a new next appears.
        assert_eq!(second.current.kid(), next_kid);
        let published = kids(&second);
        assert!(published.contains(&first.current.kid().to_string()));
        assert_eq!(published.len(), 3);
        assert!(second.verifier(first.current.kid()).is_some());
        assert_eq!(second.generation, first.generation + 1);

        // One more rotation retires the first key.
        assert!(ring.rotate_now());
        let third = ring.keys();
        assert!(!kids(&third).contains(&first.current.kid().to_string()));
        assert!(third.verifier(first.current.kid()).is_none());
    }

    #[test]
    fn key_rings_are_kept_while_their_settings_are_unchanged() {
        let rings = KeyRings::default();
        let cfg = SigningKeysConfig::default();
        let first = rings.ring(&cfg).unwrap();
        assert!(Arc::ptr_eq(&first, &rings.ring(&cfg.clone()).unwrap()), "the same settings");
        let other = SigningKeysConfig { rotate_every: portcullis_config::values::Duration::from_secs(3600), ..cfg };
        assert!(!Arc::ptr_eq(&first, &rings.ring(&other).unwrap()), "other settings");
    }

    #[test]
    fn key_ids_are_thumbprints() {
        let ring = KeyRing::new(&SigningKeysConfig { algorithm: "EdDSA".into(), ..Default::default() }).unwrap();
        let keys = ring.keys();
        let jwk = portcullis_jose::Jwk::from_value(keys.current.public_jwk()).unwrap();
        assert_eq!(jwk.thumbprint, keys.current.kid());
        assert_eq!(keys.current.algorithm(), Algorithm::EdDSA);
    }

    #[test]
    fn key_files_are_loaded_and_checked() {
        let dir = std::env::temp_dir().join(format!("portcullis-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        let cfg = SigningKeysConfig { files: vec![bad], ..Default::default() };
        let (at, msg) = KeyRing::new(&cfg).unwrap_err();
        assert_eq!(at, "files[0]");
        assert!(msg.contains("no private key"), "{msg}");
    }
}
