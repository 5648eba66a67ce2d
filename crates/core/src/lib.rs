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

/// Appends `n` in decimal, without `fmt`'s machinery (a sixth of a response's own cost when
/// the transport wrote lengths with it).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
