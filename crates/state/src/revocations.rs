//! Revocations: credentials, subjects, clients, sessions and workloads that must be refused
//! from now on, whatever their signatures say.
//!
//! Every replica checks a request against its own copy of the list (a lookup, no round
//! trip). With `memory` the copy is the list. With Redis the list is a hash
//! (`<prefix>{revocations}`, one field per revocation, readable by key) and a version counter
//! bumped by every change; each replica reads the counter every 250 ms and the list when it
//! moved (and every 10 s regardless), so a revocation posted to one replica is enforced by
//! all within a second, and one that missed a change still catches up. A copy that could
//! not be refreshed for 3 s is stale: the requests it would judge are refused (fail closed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};

/// What a revocation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A token, by its `jti`.
    Jti,
    /// Every credential of a subject issued up to the revocation.
    Sub,
    /// Every credential of a client application issued up to the revocation.
    ClientId,
    /// Every credential of a session (`sid`) issued up to the revocation.
    Sid,
    /// A workload, by its SPIFFE ID.
    SpiffeId,
    /// A token, by the base64url SHA-256 of it as sent (for tokens without a `jti`, or
    /// opaque ones).
    TokenSha256,
}

impl Kind {
    /// Every kind, in the order the admin API lists them.
    pub const ALL: [Kind; 6] = [Kind::Jti, Kind::Sub, Kind::ClientId, Kind::Sid, Kind::SpiffeId, Kind::TokenSha256];

    /// The name in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Sub => "sub",
            Kind::ClientId => "client_id",
            Kind::Sid => "sid",
            Kind::SpiffeId => "spiffe_id",
            Kind::TokenSha256 => "token_sha256",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// What it names.
    pub kind: Kind,
    /// The `jti`, subject, client, session or SPIFFE ID.
    pub value: String,
    /// When it was made (ms since the epoch): credentials issued after it pass (but a `jti`
    /// or a SPIFFE ID is refused whenever it was issued).
    pub at_ms: u64,
    /// When it lapses (ms since the epoch).
    pub expires_ms: u64,
}

/// What a request's caller is, as revocations judge it.
#[derive(Default)]
pub struct Subject<'a> {
    /// The token's `jti`.
    pub jti: Option<&'a str>,
    /// The subject.
    pub sub: Option<&'a str>,
    /// The client application.
    pub client_id: Option<&'a str>,
    /// The session (`sid`), read only when some session is revoked.
    pub sid: Option<&'a dyn Fn() -> Option<String>>,
    /// The SPIFFE ID.
    pub spiffe_id: Option<&'a str>,
    /// The base64url SHA-256 of the token as sent, computed only when some token is revoked
    /// so.
    pub token_sha256: Option<&'a dyn Fn() -> Option<String>>,
    /// When the credential was issued (seconds since the epoch).
    pub issued_at: Option<u64>,
}

/// The revocations a replica knows now: by kind, value → (made, lapses), in ms since the
/// epoch (looked up by `&str`, without an allocation).
#[derive(Debug, Default)]
pub struct Revoked {
    by_kind: [HashMap<Box<str>, (u64, u64)>; 6],
}

impl Revoked {
    fn new(list: impl IntoIterator<Item = Revocation>, now_ms: u64) -> Revoked {
        let mut r = Revoked::default();
        for rev in list.into_iter().filter(|r| r.expires_ms > now_ms) {
            r.by_kind[rev.kind as usize].insert(rev.value.into(), (rev.at_ms, rev.expires_ms));
        }
        r
    }

    /// Whether nothing is revoked (the common case: nothing to look up).
    pub fn is_empty(&self) -> bool {
        self.by_kind.iter().all(HashMap::is_empty)
    }

    /// The revocation that refuses `who`, if any.
    pub fn refuses(&self, who: &Subject<'_>) -> Option<Kind> {
        if self.is_empty() {
            return None;
        }
        let now = now_ms();
        let issued_ms = who.issued_at.map(|s| s.saturating_mul(1000));
        let hit = |kind: Kind, value: Option<&str>| {
            let (at, expires) = self.by_kind[kind as usize].get(value?)?;
            if *expires <= now {
                return None;
            }
            // A credential issued after a subject's, client's or session's revocation is a
            // new one (a new login): it passes. One that does not say when it was issued
            // does not.
            let refused = match kind {
                Kind::Jti | Kind::SpiffeId | Kind::TokenSha256 => true,
                _ => issued_ms.is_none_or(|iat| iat <= *at),
            };
            refused.then_some(kind)
        };
        let has = |k: Kind| !self.by_kind[k as usize].is_empty();
        (has(Kind::Jti).then(|| hit(Kind::Jti, who.jti)).flatten())
            .or_else(|| has(Kind::Sub).then(|| hit(Kind::Sub, who.sub)).flatten())
            .or_else(|| has(Kind::ClientId).then(|| hit(Kind::ClientId, who.client_id)).flatten())
            .or_else(|| has(Kind::SpiffeId).then(|| hit(Kind::SpiffeId, who.spiffe_id)).flatten())
            .or_else(|| {
                let sid = has(Kind::Sid).then(|| who.sid.and_then(|f| f())).flatten();
                hit(Kind::Sid, sid.as_deref())
            })
            .or_else(|| {
                let hash = has(Kind::TokenSha256).then(|| who.token_sha256.and_then(|f| f())).flatten();
                hit(Kind::TokenSha256, hash.as_deref())
            })
    }

    /// Every revocation in force, by kind and value.
    pub fn list(&self) -> Vec<Revocation> {
        let now = now_ms();
        let mut out: Vec<Revocation> = Kind::ALL
            .into_iter()
            .flat_map(|kind| {
                self.by_kind[kind as usize].iter().map(move |(value, (at, expires))| Revocation {
                    kind,
                    value: value.to_string(),
                    at_ms: *at,
                    expires_ms: *expires,
                })
            })
            .filter(|r| r.expires_ms > now)
            .collect();
        out.sort_by(|a, b| (a.kind, &a.value).cmp(&(b.kind, &b.value)));
        out
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A replica's copy of the list, and how fresh it is. Read on every authenticated request:
/// no lock, no reference count.
#[derive(Debug)]
pub(crate) struct Copy {
    current: ArcSwap<Revoked>,
    /// When the copy was last read from the shared list, in ms after `epoch` (0: never).
    refreshed: AtomicU64,
    epoch: Instant,
    shared: bool,
}

/// How long a copy may go without a refresh before it is stale.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(3);
/// How often the version is read.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// How often the whole list is read even when the version did not move.
pub(crate) const FULL_READ: Duration = Duration::from_secs(10);

impl Copy {
    /// A copy that is the list itself (one replica).
    pub(crate) fn local() -> Copy {
        Copy { current: ArcSwap::default(), refreshed: AtomicU64::new(0), epoch: Instant::now(), shared: false }
    }

    /// A copy of a shared list, stale until first read.
    pub(crate) fn shared() -> Copy {
        Copy { shared: true, ..Copy::local() }
    }

    /// The revocations now; `None` if the copy is stale.
    pub(crate) fn view(&self) -> Option<Guard<Arc<Revoked>>> {
        if self.shared {
            let refreshed = self.refreshed.load(Ordering::Acquire);
            let now = self.epoch.elapsed().as_millis() as u64 + 1;
            if refreshed == 0 || now.saturating_sub(refreshed) > STALE_AFTER.as_millis() as u64 {
                return None;
            }
        }
        Some(self.current.load())
    }

    /// Replaces the copy with `list`, read just now.
    pub(crate) fn replace(&self, list: Vec<Revocation>) {
        self.current.store(Arc::new(Revoked::new(list, now_ms())));
        self.fresh();
    }

    /// The copy was found to be current.
    pub(crate) fn fresh(&self) {
        self.refreshed.store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::Release);
    }

    /// Adds or removes one revocation in the copy (the list itself, or ahead of the next read).
    pub(crate) fn apply(&self, add: Option<Revocation>, remove: Option<(Kind, &str)>) {
        let old = self.current.load();
        let mut list = old.list();
        if let Some((kind, value)) = remove {
            list.retain(|r| !(r.kind == kind && r.value == value));
        }
        if let Some(r) = add {
            list.retain(|o| !(o.kind == r.kind && o.value == r.value));
            list.push(r);
        }
        self.current.store(Arc::new(Revoked::new(list, now_ms())));
    }
}

/// The field of a revocation in the shared hash, and its value: `<kind>\n<value>` and
/// `<at_ms> <expires_ms>`.
pub(crate) fn encode(r: &Revocation) -> (String, String) {
    (format!("{}\n{}", r.kind.as_str(), r.value), format!("{} {}", r.at_ms, r.expires_ms))
}

/// Reads a field of the shared hash; `Err` names what is wrong, never the value.
pub(crate) fn decode(field: &[u8], value: &[u8]) -> Result<Revocation, &'static str> {
    let field = std::str::from_utf8(field).map_err(|_| "a field that is not UTF-8")?;
    let (kind, name) = field.split_once('\n').ok_or("a field without a kind")?;
    let kind = Kind::parse(kind).ok_or("an unknown kind")?;
    let value = std::str::from_utf8(value).map_err(|_| "a value that is not UTF-8")?;
    let (at, expires) = value.split_once(' ').ok_or("a value without two times")?;
    let at_ms = at.parse().map_err(|_| "a revocation time that is not a number")?;
    let expires_ms = expires.parse().map_err(|_| "an expiry that is not a number")?;
    Ok(Revocation { kind, value: name.to_string(), at_ms, expires_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(kind: Kind, value: &str, at_ms: u64) -> Revocation {
        Revocation { kind, value: value.into(), at_ms, expires_ms: now_ms() + 60_000 }
    }

    #[test]
    fn a_subject_is_refused_for_credentials_issued_up_to_its_revocation() {
        let at = now_ms();
        let r = Revoked::new([rev(Kind::Sub, "alice", at), rev(Kind::Jti, "t1", at)], now_ms());
        let before = Subject { sub: Some("alice"), issued_at: Some(at / 1000 - 10), ..Subject::default() };
        assert_eq!(r.refuses(&before), Some(Kind::Sub));
        let after = Subject { sub: Some("alice"), issued_at: Some(at / 1000 + 10), ..Subject::default() };
        assert_eq!(r.refuses(&after), None);
        let undated = Subject { sub: Some("alice"), ..Subject::default() };
        assert_eq!(r.refuses(&undated), Some(Kind::Sub));
        // A revoked jti is refused whenever it was issued.
        let token =
            Subject { jti: Some("t1"), sub: Some("bob"), issued_at: Some(at / 1000 + 10), ..Subject::default() };
        assert_eq!(r.refuses(&token), Some(Kind::Jti));
        assert_eq!(r.refuses(&Subject { sub: Some("bob"), ..Subject::default() }), None);
    }

    #[test]
    fn sessions_are_read_only_when_one_is_revoked() {
        let read = std::cell::Cell::new(0);
        let sid = || {
            read.set(read.get() + 1);
            Some("s1".to_string())
        };
        let who = Subject { sub: Some("x"), sid: Some(&sid), ..Subject::default() };
        assert_eq!(Revoked::new([rev(Kind::Sub, "y", now_ms())], now_ms()).refuses(&who), None);
        assert_eq!(read.get(), 0);
        assert_eq!(Revoked::new([rev(Kind::Sid, "s1", now_ms())], now_ms()).refuses(&who), Some(Kind::Sid));
        assert_eq!(read.get(), 1);
    }

    #[test]
    fn lapsed_revocations_are_forgotten_and_fields_round_trip() {
        let lapsed = Revocation { expires_ms: now_ms() - 1, ..rev(Kind::Jti, "old", 0) };
        assert!(Revoked::new([lapsed], now_ms()).is_empty());
        let r = rev(Kind::SpiffeId, "spiffe://example.org/a b", 5);
        let (f, v) = encode(&r);
        assert_eq!(decode(f.as_bytes(), v.as_bytes()), Ok(r));
        assert!(decode(b"nope\nx", b"1 2").is_err());
        assert!(decode(b"jti\nx", b"1").is_err());
    }

    #[test]
    fn a_shared_copy_is_stale_until_read_and_after_a_silence() {
        let c = Copy::shared();
        assert!(c.view().is_none());
        c.replace(vec![]);
        assert!(c.view().is_some());
        // As if last read 3 s ago and a little more.
        let long_ago = Copy { epoch: Instant::now() - STALE_AFTER - Duration::from_millis(50), ..Copy::shared() };
        long_ago.refreshed.store(1, Ordering::Release);
        assert!(long_ago.view().is_none());
        assert!(Copy::local().view().is_some());
    }
}
