//! RSASSA-PKCS1-v1_5 verification (RFC 8017 §8.2.2) on AVX-512 IFMA, for RS256, RS384 and
//! RS512 with 2048-, 3072- and 4096-bit keys.
//!
//! Why by hand: checking a fresh RS256 token's signature is the largest single cost a gateway
//! pays for it, and aws-lc (like OpenSSL) runs the RSA public operation on 64-bit scalar
//! Montgomery code; its AVX-512 IFMA code serves only private-key operations. The 52-bit
//! multiply-add instructions do the same arithmetic in eight lanes at once, which makes the
//! verification about twice as fast. No crate offers that. The scope is kept to what needs no
//! care beyond correctness: every input of a verification (key, signature, message) is public,
//! so the code need not be constant-time, and the check is the RFC's "encode and compare":
//! `s^e mod n` must equal, limb for limb, the one encoding of the message's digest, so
//! nothing is parsed out of attacker-chosen bytes.
//!
//! Everything else (PSS, other key sizes, other CPUs) stays on aws-lc, which also parses every
//! key first; a key is served here only if it meets the size and exponent rules aws-lc applies
//! when it verifies, so both give the same verdicts. The arithmetic is tested against an
//! independent big-integer implementation, and every verdict against aws-lc's (unit and
//! property tests here, and a fuzz target).

use aws_lc_rs::digest;

use crate::Algorithm;
use crate::jwk::strip_zeros;

/// A 2048-, 3072- or 4096-bit RSA public key ready for verification on AVX-512 IFMA, or
/// nothing where the CPU lacks it or the key does not fit.
pub(crate) struct RsaKey {
    /// The modulus, big-endian, without leading zeros: its length is the signature's.
    n: Vec<u8>,
    width: Width,
}

/// The key's arithmetic, sized by its number of 8-limb vectors.
enum Width {
    #[cfg(target_arch = "x86_64")]
    V5(Box<ifma::Modulus<5>>),
    #[cfg(target_arch = "x86_64")]
    V8(Box<ifma::Modulus<8>>),
    #[cfg(target_arch = "x86_64")]
    V10(Box<ifma::Modulus<10>>),
}

/// The largest modulus in bytes (4096 bits).
const MAX_BYTES: usize = 512;

impl RsaKey {
    /// A key for modulus `n` and exponent `e` (big-endian), if this CPU has AVX-512 IFMA and
    /// the key is one of the sizes served here.
    ///
    /// aws-lc checks a key's size and exponent only when it verifies, so the same rules are
    /// applied here, and a key outside them is left to aws-lc (which refuses its signatures):
    /// at least 2048 bits, an odd modulus, an odd exponent from 3 to 2^33 - 1.
    pub(crate) fn new(n: &[u8], e: &[u8]) -> Option<RsaKey> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        let bits = (n.len() * 8).saturating_sub(n.first()?.leading_zeros() as usize);
        if bits < 2048 || n.len() > MAX_BYTES || e.len() > 8 || n[n.len() - 1] & 1 == 0 {
            return None;
        }
        let e = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        if e < 3 || e & 1 == 0 || e >= 1 << 33 {
            return None;
        }
        let width = Width::new(n, bits, e)?;
        Some(RsaKey { n: n.to_vec(), width })
    }

    /// Whether `signature` is `message`'s RSASSA-PKCS1-v1_5 signature with `alg`'s digest.
    /// `alg` must be RS256, RS384 or RS512; any other is refused.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        let k = self.n.len();
        // RFC 8017 §8.2.2 step 1 and §5.2.2 step 1: exactly k octets, and s < n.
        if signature.len() != k || signature >= self.n.as_slice() {
            return false;
        }
        let (algorithm, prefix) = match alg {
            Algorithm::RS256 => (&digest::SHA256, &SHA256_PREFIX[..]),
            Algorithm::RS384 => (&digest::SHA384, &SHA384_PREFIX[..]),
            Algorithm::RS512 => (&digest::SHA512, &SHA512_PREFIX[..]),
            _ => return false,
        };
        let hash = digest::digest(algorithm, message);
        let mut em = [0u8; MAX_BYTES];
        encode(&mut em[..k], prefix, hash.as_ref());
        self.width.matches(signature, &em[..k])
    }
}

/// EMSA-PKCS1-v1_5 (RFC 8017 §9.2): `00 01 FF..FF 00 || DigestInfo`. `em` is at least 256
/// bytes, far more than the 11 + 83 the longest digest needs.
fn encode(em: &mut [u8], prefix: &[u8], hash: &[u8]) {
    let t = prefix.len() + hash.len();
    let k = em.len();
    em[0] = 0;
    em[1] = 1;
    em[2..k - t - 1].fill(0xff);
    em[k - t - 1] = 0;
    em[k - t..k - hash.len()].copy_from_slice(prefix);
    em[k - hash.len()..].copy_from_slice(hash);
}

/// The DER prefixes of DigestInfo (RFC 8017 §9.2, note 1), with the NULL parameters.
const SHA256_PREFIX: [u8; 19] =
    [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];
const SHA384_PREFIX: [u8; 19] =
    [0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30];
const SHA512_PREFIX: [u8; 19] =
    [0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40];

impl Width {
    #[cfg(target_arch = "x86_64")]
    fn new(n: &[u8], bits: usize, e: u64) -> Option<Width> {
        if !ifma::available() {
            return None;
        }
        // R = 2^(52 * 8 * V) must exceed 4n for the almost-Montgomery bound.
        let vectors = (bits + 2).div_ceil(52).div_ceil(8);
        Some(match vectors {
            5 => Width::V5(Box::new(ifma::Modulus::new(n, e))),
            8 => Width::V8(Box::new(ifma::Modulus::new(n, e))),
            10 => Width::V10(Box::new(ifma::Modulus::new(n, e))),
            _ => return None,
        })
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn new(_n: &[u8], _bits: usize, _e: u64) -> Option<Width> {
        None
    }

    /// Whether `s^e mod n` equals `em` (both big-endian, as long as the modulus).
    fn matches(&self, s: &[u8], em: &[u8]) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Width::V5(m) => m.matches(s, em),
            #[cfg(target_arch = "x86_64")]
            Width::V8(m) => m.matches(s, em),
            #[cfg(target_arch = "x86_64")]
            Width::V10(m) => m.matches(s, em),
            #[cfg(not(target_arch = "x86_64"))]
            _ => {
                let _ = (s, em);
                false
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod ifma;

#[cfg(test)]
mod tests;
