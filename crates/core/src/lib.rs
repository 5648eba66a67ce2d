//! Types every stage of the request pipeline shares: who the caller is ([`Principal`]) and
//! what went wrong ([`Problem`]), turned into an HTTP response in exactly one place.

#![forbid(unsafe_code)]

mod principal;
mod problem;
pub mod spiffe;

pub use principal::{AuthnMethod, ClaimPath, Claims, Confirmation, Consumer, Principal, PrincipalKind};
pub use problem::{Challenge, ChallengeScheme, Problem, Side};
