//! API keys: consumers hold keys, the gateway holds only their SHA-256 hashes.
//!
//! A presented key is hashed and looked up by its hash. Learning anything from the timing of
//! that lookup says something about a hash, not about a stored key; the final comparison of
//! the full digest is constant-time anyway. Keys are generated with 256 bits of randomness
//! (`portcullis apikey new`), so a fast hash is the right one: there is nothing to brute-force.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use portcullis_config::ApiKeysConfig;
use portcullis_core::{AuthnMethod, Consumer, Principal, PrincipalKind};

use crate::AuthnError;
use crate::cache::{Digest, digest};

/// Consumers by the hashes of their keys.
#[derive(Debug)]
pub struct ApiKeys {
    /// The header keys come in.
    pub header: HeaderName,
    /// Buckets by the first eight bytes of the digest.
    by_prefix: HashMap<u64, Vec<(Digest, Arc<Principal>)>>,
}

fn prefix(d: &Digest) -> u64 {
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Decodes `sha256:<64 hex>`.
pub fn parse_hash(s: &str) -> Option<Digest> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let h = (pair[0] as char).to_digit(16)?;
        let l = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(h * 16 + l).ok()?;
    }
    Some(out)
}

/// The `sha256:<hex>` form of a key, as stored in the config.
pub fn hash_key(key: &str) -> String {
    let d = digest(key.as_bytes());
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A new random API key: `pk_` and 43 base64url characters (256 bits).
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap_or_else(|_| panic!("the system random source failed"));
    format!("pk_{}", portcullis_jose::b64::encode(&bytes))
}

impl ApiKeys {
    /// Builds the lookup table (the config was validated: hashes are well-formed).
    pub fn new(cfg: &ApiKeysConfig) -> Result<ApiKeys, String> {
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| format!("`{}` is not a header name", cfg.header))?;
        let mut by_prefix: HashMap<u64, Vec<(Digest, Arc<Principal>)>> = HashMap::new();
        for c in &cfg.consumers {
            let mut p = Principal::new(PrincipalKind::Client, AuthnMethod::ApiKey);
            p.subject = Some(c.name.as_str().into());
            p.client_id = p.subject.clone();
            p.scopes = c.scopes.iter().map(|s| Arc::from(s.as_str())).collect();
            p.consumer = Some(Consumer { name: c.name.as_str().into(), plan: c.plan.as_deref().map(Arc::from) });
            let p = Arc::new(p);
            for (i, k) in c.keys.iter().enumerate() {
                // Never echo the entry: a raw key pasted in place of its hash is a secret.
                let d = parse_hash(k).ok_or_else(|| {
                    format!(
                        "consumer `{}`: keys[{i}] is not a key hash; write `sha256:` and 64 hex digits (`portcullis apikey hash` makes one)",
                        c.name
                    )
                })?;
                by_prefix.entry(prefix(&d)).or_default().push((d, p.clone()));
            }
        }
        Ok(ApiKeys { header, by_prefix })
    }

    /// The consumer a presented key belongs to.
    pub fn check(&self, presented: &[u8]) -> Result<Arc<Principal>, AuthnError> {
        let d = digest(presented);
        let found = self.by_prefix.get(&prefix(&d)).and_then(|bucket| {
            bucket
                .iter()
                .find(|(h, _)| aws_lc_rs::constant_time::verify_slices_are_equal(h, &d).is_ok())
                .map(|(_, p)| p.clone())
        });
        found.ok_or_else(|| AuthnError::invalid("api_key_unknown", "the API key is not valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::ConsumerConfig;

    #[test]
    fn keys_are_found_by_hash_only() {
        let key = new_key();
        assert!(key.starts_with("pk_") && key.len() == 46);
        assert_ne!(new_key(), key);
        let cfg = ApiKeysConfig {
            header: "x-api-key".into(),
            consumers: vec![ConsumerConfig {
                name: "acme".into(),
                plan: Some("gold".into()),
                scopes: vec!["a".into()],
                keys: vec![hash_key(&key)],
            }],
        };
        let keys = ApiKeys::new(&cfg).unwrap();
        let p = keys.check(key.as_bytes()).unwrap();
        assert_eq!(p.subject.as_deref(), Some("acme"));
        assert_eq!(p.consumer.as_ref().unwrap().plan.as_deref(), Some("gold"));
        assert!(p.has_scope("a"));
        assert_eq!(keys.check(b"pk_wrong").unwrap_err().code(), "api_key_unknown");
        assert!(!format!("{keys:?}").contains(&key));
    }

    #[test]
    fn hash_format() {
        assert_eq!(hash_key("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(parse_hash("sha256:zz").is_none());
        assert!(parse_hash("md5:00").is_none());
        assert_eq!(parse_hash(&hash_key("abc")).unwrap()[0], 0xba);
    }
}
