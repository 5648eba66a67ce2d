//! Types every stage of the request pipeline shares: who the caller is ([`Principal`]),
//! what went wrong ([`Problem`]), turned into an HTTP response in exactly one place, and the
//! per-worker caches of work done for a principal ([`ByPrincipal`]). [`FileStamp`] says whether
//! a file named by a config changed, for what is kept across reloads.

#![forbid(unsafe_code)]

mod by_principal;
mod file_stamp;
mod principal;
mod problem;
pub mod spiffe;

pub use by_principal::ByPrincipal;
pub use file_stamp::FileStamp;
pub use principal::{AuthnMethod, ClaimPath, Claims, Confirmation, Consumer, Principal, PrincipalKind};
pub use problem::{Challenge, ChallengeScheme, Problem, Side};
