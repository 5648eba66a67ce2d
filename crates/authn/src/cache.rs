//! The verified-credential cache: a repeated token costs a hash and a lookup, not a signature
//! verification or an introspection call.
//!
//! Why not a concurrent cache crate: every worker is a thread with its own event loop, so a
//! thread-local map needs no lock and no atomic on the hot path; a shared concurrent cache
//! (moka) would add its synchronisation and admission bookkeeping to every lookup. The price is
//! that each worker verifies a token once. Bounded size, FIFO eviction.
//!
//! Verified JWTs are keyed by the token itself, in a map with a fast hash seeded randomly per
//! process (foldhash): a lookup hashes the token once and compares it in full, a fraction of a
//! SHA-256 of it, and a token can only ever find its own entry. Only tokens whose signature
//! verified are stored, so nothing an attacker makes up takes cache memory (and lookups of
//! made-up tokens only probe; they cannot build colliding chains).
//! Opaque tokens (introspection) are keyed by their SHA-256 digest instead: inactive ones are
//! cached too (negative caching), and those are not worth keeping whole.
//!
//! An entry is used only if its owner (the issuer or introspection endpoint of the *current*
//! config) is one the route accepts, its key is still in its set and the set within its
//! `stale_for` allowance (else verification would fail closed too), and the token has not
//! expired (`exp` plus the issuer's leeway, as verification judges it).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use portcullis_core::Principal;

use crate::jwks::Key;

/// Entries per worker and kind of credential.
pub const CAPACITY: usize = 16 * 1024;

/// The SHA-256 digest of a credential.
pub type Digest = [u8; 32];

/// SHA-256 of `credential`.
pub fn digest(credential: &[u8]) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, credential);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Digests are already uniformly distributed: their first bytes are the hash.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

/// A cached outcome.
pub struct Entry<O> {
    /// The principal (`None`: the credential was found inactive, for negative caching).
    pub principal: Option<Arc<Principal>>,
    /// Who vouched: the issuer or endpoint object of the config current when cached.
    pub owner: Arc<O>,
    /// The key that verified a JWT.
    pub key: Option<Arc<Key>>,
    /// Usable while `now <= until` (seconds since the epoch).
    pub until: u64,
}

/// A bounded map of credentials (`K`: the token, or its digest) to outcomes.
pub struct Cache<K, O, S = RandomState> {
    map: HashMap<K, Entry<O>, S>,
    order: VecDeque<K>,
    capacity: usize,
}

/// The cache of opaque tokens, keyed by digest.
pub type DigestCache<O> = Cache<Digest, O, BuildHasherDefault<Prehashed>>;

impl<K, O, S: Default> Default for Cache<K, O, S> {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl<K, O, S: Default> Cache<K, O, S> {
    /// An empty cache of at most `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Cache { map: HashMap::default(), order: VecDeque::new(), capacity }
    }
}

impl<K: Hash + Eq + Clone, O, S: BuildHasher> Cache<K, O, S> {
    /// The outcome for `key` if it may be used now by someone who accepts `owner_ok`.
    /// Expired and retired entries are removed.
    pub fn get<Q>(&mut self, key: &Q, now: u64, owner_ok: impl Fn(&Arc<O>) -> bool) -> Option<Option<Arc<Principal>>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let e = self.map.get(key)?;
        if now > e.until || e.key.as_ref().is_some_and(|k| !k.usable_at(now)) {
            self.map.remove(key);
            return None;
        }
        if !owner_ok(&e.owner) {
            return None;
        }
        Some(e.principal.clone())
    }

    /// Remembers an outcome.
    pub fn insert(&mut self, key: K, entry: Entry<O>) {
        if self.map.len() >= self.capacity {
            while let Some(old) = self.order.pop_front() {
                if self.map.remove(&old).is_some() {
                    break;
                }
            }
        }
        if self.map.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
        // Keep the order list from growing with entries removed on lookup.
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order.retain(|d| map.contains_key(d));
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{AuthnMethod, PrincipalKind};

    fn principal() -> Option<Arc<Principal>> {
        Some(Arc::new(Principal::new(PrincipalKind::User, AuthnMethod::Jwt)))
    }

    #[test]
    fn expiry_owner_and_eviction() {
        let owner = Arc::new(1u8);
        let other = Arc::new(1u8);
        let mut c: DigestCache<u8> = Cache::with_capacity(2);
        let (a, b, d) = (digest(b"a"), digest(b"b"), digest(b"d"));
        c.insert(a, Entry { principal: principal(), owner: owner.clone(), key: None, until: 100 });
        assert!(c.get(&a, 100, |o| Arc::ptr_eq(o, &owner)).is_some());
        assert!(c.get(&a, 100, |o| Arc::ptr_eq(o, &other)).is_none(), "another config's issuer does not count");
        assert!(c.get(&a, 101, |_| true).is_none(), "expired");
        assert_eq!(c.len(), 0);
        c.insert(a, Entry { principal: principal(), owner: owner.clone(), key: None, until: 100 });
        c.insert(b, Entry { principal: principal(), owner: owner.clone(), key: None, until: 100 });
        c.insert(d, Entry { principal: None, owner: owner.clone(), key: None, until: 100 });
        assert_eq!(c.len(), 2);
        assert!(c.get(&a, 0, |_| true).is_none(), "the oldest was evicted");
        assert!(matches!(c.get(&d, 0, |_| true), Some(None)), "negative entries are kept too");
    }

    #[test]
    fn tokens_find_only_their_own_entry() {
        let owner = Arc::new(1u8);
        let mut c: Cache<Arc<str>, u8> = Cache::with_capacity(4);
        c.insert(Arc::from("aaa.bbb.ccc"), Entry { principal: principal(), owner, key: None, until: 100 });
        assert!(c.get("aaa.bbb.ccc", 0, |_| true).is_some());
        assert!(c.get("aaa.bbb.ccd", 0, |_| true).is_none());
        assert!(c.get("aaa.bbb.cc", 0, |_| true).is_none());
    }

    #[test]
    fn retired_keys_invalidate_entries() {
        let jwk = portcullis_jose::Jwk::from_value(
            serde_json::json!({"kty":"OKP","crv":"Ed25519","x": portcullis_jose::b64::encode(&[9; 32])}),
        )
        .unwrap();
        let key = Key::new(jwk.clone(), jwk.verifying_key(&[portcullis_jose::Algorithm::EdDSA]).unwrap());
        let mut c: DigestCache<u8> = Cache::default();
        let a = digest(b"a");
        c.insert(a, Entry { principal: principal(), owner: Arc::new(0), key: Some(key.clone()), until: 100 });
        assert!(c.get(&a, 0, |_| true).is_some());
        crate::jwks::retire_for_test(&key);
        assert!(c.get(&a, 0, |_| true).is_none());
    }
}
