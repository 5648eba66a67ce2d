//! [`ByPrincipal`]: a worker's small cache of what it worked out for a principal.

use std::collections::VecDeque;
use std::collections::hash_map::{Entry, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use crate::Principal;

/// A bounded map keyed by a principal's identity (the address of its `Arc`) and a `K`.
///
/// For per-worker caches of work done for one credential: a credential's requests share one
/// principal (the token caches hand out the same `Arc`), so its address names the credential
/// and costs nothing to compare or hash.
///
/// Invariant: every entry holds its principal's `Arc`, so no other principal can be given that
/// address while the entry lives. A lookup by address therefore finds only entries made for
/// the principal it is given, never one left by a principal since dropped whose address was
/// reused. A lookup hashes the address (and `K`) and allocates nothing.
///
/// At most `capacity` entries are kept: inserting a new one into a full map drops the oldest
/// (and with it, perhaps, the last reference to its principal).
pub struct ByPrincipal<V, K = ()> {
    entries: HashMap<(usize, K), Held<V>, foldhash::fast::RandomState>,
    /// The keys of `entries`, the oldest first.
    order: VecDeque<(usize, K)>,
    capacity: usize,
}

/// An entry: the value, and the principal whose address keys it.
struct Held<V> {
    /// Keeps the address in the key from being given to another principal.
    _principal: Arc<Principal>,
    value: V,
}

fn address(principal: &Arc<Principal>) -> usize {
    Arc::as_ptr(principal).addr()
}

impl<V, K: Copy + Eq + Hash> ByPrincipal<V, K> {
    /// An empty map that keeps at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        ByPrincipal { entries: HashMap::default(), order: VecDeque::new(), capacity }
    }

    /// The value kept for `principal` and `key`.
    pub fn get(&self, principal: &Arc<Principal>, key: K) -> Option<&V> {
        self.entries.get(&(address(principal), key)).map(|h| &h.value)
    }

    /// Keeps `value` for `principal` and `key`, replacing the value kept for them (which keeps
    /// its place in the order) or, when the map is full, dropping the oldest entry; returns
    /// the value as kept.
    pub fn insert(&mut self, principal: &Arc<Principal>, key: K, value: V) -> &mut V {
        let k = (address(principal), key);
        if !self.entries.contains_key(&k) {
            while self.entries.len() >= self.capacity {
                let Some(oldest) = self.order.pop_front() else { break };
                self.entries.remove(&oldest);
            }
            self.order.push_back(k);
        }
        match self.entries.entry(k) {
            // The entry holds this very principal: its address cannot belong to another.
            Entry::Occupied(e) => {
                let held = e.into_mut();
                held.value = value;
                &mut held.value
            }
            Entry::Vacant(e) => &mut e.insert(Held { _principal: principal.clone(), value }).value,
        }
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl<V, K> std::fmt::Debug for ByPrincipal<V, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByPrincipal")
            .field("len", &self.entries.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthnMethod, PrincipalKind};

    fn principal(subject: &str) -> Arc<Principal> {
        let mut p = Principal::new(PrincipalKind::User, AuthnMethod::Jwt);
        p.subject = Some(subject.into());
        Arc::new(p)
    }

    #[test]
    fn values_are_kept_by_principal_and_key() {
        let mut cache: ByPrincipal<&str, u64> = ByPrincipal::new(8);
        let (alice, bob) = (principal("alice"), principal("bob"));
        cache.insert(&alice, 1, "alice 1");
        cache.insert(&alice, 2, "alice 2");
        cache.insert(&bob, 1, "bob 1");
        assert_eq!(cache.get(&alice, 1), Some(&"alice 1"));
        assert_eq!(cache.get(&alice, 2), Some(&"alice 2"));
        assert_eq!(cache.get(&bob, 1), Some(&"bob 1"));
        assert_eq!(cache.get(&bob, 2), None);
        // An equal principal is another credential: identity, not equality, is the key.
        assert_eq!(cache.get(&principal("alice"), 1), None);
        assert_eq!(cache.get(&alice.clone(), 1), Some(&"alice 1"), "the same `Arc`, shared");
        *cache.insert(&alice, 1, "alice 1 again") = "alice 1, changed";
        assert_eq!(cache.get(&alice, 1), Some(&"alice 1, changed"));
        assert_eq!(cache.len(), 3);
    }

    /// While its entry lives, a principal the cache was given is kept alive, so no new
    /// principal gets its address; once its entry is dropped, a principal that does get the
    /// address finds nothing.
    #[test]
    fn a_dropped_principal_s_entry_is_never_found_by_another() {
        let mut cache: ByPrincipal<String> = ByPrincipal::new(1);
        let first = principal("first");
        let address_of_first = address(&first);
        cache.insert(&first, (), "first's".into());
        drop(first);
        for i in 0..64 {
            let p = principal(&format!("other {i}"));
            assert_ne!(address(&p), address_of_first, "the entry holds the first principal");
            assert_eq!(cache.get(&p, ()), None);
        }
        // A new entry drops the first one, and the first principal with it: the allocator may
        // now give its address to a new principal (it usually does at once), which must not
        // find the first one's value.
        let second = principal("second");
        cache.insert(&second, (), "second's".into());
        for i in 0..64 {
            let p = principal(&format!("later {i}"));
            assert_eq!(cache.get(&p, ()), None, "principal {i} is not the first one");
        }
        assert_eq!(cache.get(&second, ()).map(String::as_str), Some("second's"));
    }

    #[test]
    fn at_most_capacity_entries_are_kept_the_oldest_dropped_first() {
        let mut cache: ByPrincipal<usize, u8> = ByPrincipal::new(4);
        assert_eq!(cache.capacity(), 4);
        let callers: Vec<Arc<Principal>> = (0..10).map(|i| principal(&format!("u{i}"))).collect();
        for (i, p) in callers.iter().enumerate() {
            cache.insert(p, 0, i);
            assert!(cache.len() <= 4);
            // Replacing a kept value neither grows the map nor moves the entry.
            cache.insert(p, 0, i);
            assert!(cache.len() <= 4);
        }
        assert_eq!(cache.len(), 4);
        for (i, p) in callers.iter().enumerate() {
            assert_eq!(cache.get(p, 0), (i >= 6).then_some(&i), "caller {i}");
        }
        // Dropped entries drop their principals: only the cache and `callers` held them.
        assert!(callers[..6].iter().all(|p| Arc::strong_count(p) == 1));
        assert!(callers[6..].iter().all(|p| Arc::strong_count(p) == 2));
        // A replaced value keeps its place: the oldest kept entry is still dropped first.
        cache.insert(&callers[6], 0, 60);
        cache.insert(&callers[0], 0, 0);
        assert_eq!(cache.get(&callers[6], 0), None);
        assert_eq!(cache.get(&callers[7], 0), Some(&7));
        assert_eq!(ByPrincipal::<(), ()>::new(0).capacity(), 1, "at least one entry");
    }
}
