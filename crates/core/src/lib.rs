//! Types every stage of the request pipeline shares: who the caller is ([`Principal`]),
//! what went wrong ([`Problem`]), turned into an HTTP response in exactly one place, and the
//! per-worker caches of work done for a principal ([`ByPrincipal`]).

#![forbid(unsafe_code)]

mod by_principal;
mod principal;
mod problem;
pub mod spiffe;

pub use by_principal::ByPrincipal;
pub use principal::{AuthnMethod, ClaimPath, Claims, Confirmation, Consumer, Principal, PrincipalKind};
pub use problem::{Challenge, ChallengeScheme, Problem, Side};
