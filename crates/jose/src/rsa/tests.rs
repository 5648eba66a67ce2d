//! The arithmetic against an independent big-integer implementation (num-bigint), and every
//! verdict against aws-lc's. On a CPU without AVX-512 IFMA there is nothing here to test: each
//! test says so and checks that no key is made for the vector unit.

use std::sync::OnceLock;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, KeyPair, ParsedPublicKey, RsaKeyPair};
use num_bigint::BigUint;
use proptest::prelude::*;

use super::*;

fn skip() -> bool {
    if ifma::available() {
        return false;
    }
    eprintln!("this CPU has no AVX-512 IFMA: RSA stays on aws-lc");
    true
}

/// `s^e mod n` by the module's arithmetic, for a modulus of `V` vectors.
fn pow_v<const V: usize>(n: &[u8], e: u64, s: &[u8]) -> BigUint {
    let m = ifma::Modulus::<V>::new(n, e);
    let mut sl = [[0u64; 8]; V];
    ifma::to_limbs(s, sl.as_flattened_mut());
    let r = m.pow(&sl);
    r.as_flattened().iter().rev().fold(BigUint::ZERO, |acc, &w| (acc << 52u32) + BigUint::from(w))
}

fn pow(n: &BigUint, e: u64, s: &BigUint) -> BigUint {
    let nb = n.to_bytes_be();
    let sb = s.to_bytes_be();
    let bits = n.bits() as usize;
    match (bits + 2).div_ceil(52).div_ceil(8) {
        5 => pow_v::<5>(&nb, e, &sb),
        8 => pow_v::<8>(&nb, e, &sb),
        10 => pow_v::<10>(&nb, e, &sb),
        v => panic!("no width for {bits} bits ({v} vectors)"),
    }
}

/// An odd number of exactly `bits` bits from `seed` bytes (repeated as needed).
fn odd_modulus(bits: usize, seed: &[u8]) -> BigUint {
    let bytes: Vec<u8> = seed.iter().copied().cycle().take(bits.div_ceil(8)).collect();
    let mut n = BigUint::from_bytes_be(&bytes) % (BigUint::from(1u8) << bits);
    n.set_bit(bits as u64 - 1, true);
    n.set_bit(0, true);
    n
}

#[test]
fn exponentiation_agrees_with_num_bigint_at_the_edges() {
    if skip() {
        return;
    }
    // Moduli whose limbs are all ones or nearly so carry at every step; the largest bit
    // lengths each width serves leave the least headroom above 4n.
    let mut moduli = Vec::new();
    for bits in [2048usize, 2078, 3072, 3326, 4096] {
        moduli.push((BigUint::from(1u8) << bits) - 1u8);
        moduli.push((BigUint::from(1u8) << (bits - 1)) + 1u8);
        moduli.push(odd_modulus(bits, &[0xa5, 0x3c, 0xff, 0x01]));
    }
    for n in &moduli {
        let one = BigUint::from(1u8);
        let bases = [BigUint::ZERO, one.clone(), BigUint::from(2u8), n - 1u8, n - 2u8, n >> 1, (n >> 7) | &one];
        for e in [3u64, 17, 65537, (1 << 33) - 1, u64::MAX] {
            for s in &bases {
                assert_eq!(pow(n, e, s), s.modpow(&BigUint::from(e), n), "n = {n:x}, e = {e}, s = {s:x}");
            }
        }
    }
}

/// `R^2 mod n`, made by Montgomery squaring after a short run of doublings, is exactly what
/// num-bigint computes, for every width and at the edges of each.
#[test]
fn montgomery_constant_agrees_with_num_bigint() {
    if skip() {
        return;
    }
    fn rr_v<const V: usize>(n: &BigUint) -> BigUint {
        let m = ifma::Modulus::<V>::new(&n.to_bytes_be(), 65537);
        m.rr().as_flattened().iter().rev().fold(BigUint::ZERO, |acc, &w| (acc << 52u32) + BigUint::from(w))
    }
    for bits in [2048usize, 2049, 2078, 2079, 3072, 3326, 4096, 4097] {
        for n in [
            (BigUint::from(1u8) << bits) - 1u8,
            (BigUint::from(1u8) << (bits - 1)) + 1u8,
            odd_modulus(bits, &[0xa5, 0x3c, 0xff, 0x01]),
            odd_modulus(bits, &[0x80, 0x00, 0x00, 0x00, 0x01]),
        ] {
            let (vectors, got) = match (bits + 2).div_ceil(52).div_ceil(8) {
                5 => (5, rr_v::<5>(&n)),
                8 => (8, rr_v::<8>(&n)),
                10 => (10, rr_v::<10>(&n)),
                _ => continue,
            };
            let r = BigUint::from(1u8) << (52 * 8 * vectors);
            assert_eq!(got, (&r * &r) % &n, "{bits} bits, n = {n:x}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn exponentiation_agrees_with_num_bigint(
        bits in prop::sample::select(vec![2048usize, 2056, 2078, 3072, 3326, 4096]),
        seed in prop::collection::vec(any::<u8>(), 1..64),
        base in prop::collection::vec(any::<u8>(), 1..520),
        e in prop_oneof![Just(65537u64), Just(3u64), (1u64..1 << 33).prop_map(|e| e | 1)],
    ) {
        if skip() {
            return Ok(());
        }
        let n = odd_modulus(bits, &seed);
        let s = BigUint::from_bytes_be(&base) % &n;
        prop_assert_eq!(pow(&n, e, &s), s.modpow(&BigUint::from(e), &n));
    }
}

struct Signer {
    pair: RsaKeyPair,
    n: Vec<u8>,
    e: Vec<u8>,
}

fn signers() -> &'static [Signer] {
    static KEYS: OnceLock<Vec<Signer>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [KeySize::Rsa2048, KeySize::Rsa3072, KeySize::Rsa4096]
            .into_iter()
            .map(|size| {
                let pair = RsaKeyPair::generate(size).unwrap();
                let c: PublicKeyComponents<Vec<u8>> = pair.public_key().into();
                Signer { n: c.n, e: c.e, pair }
            })
            .collect()
    })
}

fn params(alg: Algorithm) -> (&'static dyn signature::RsaEncoding, &'static signature::RsaParameters) {
    match alg {
        Algorithm::RS384 => (&signature::RSA_PKCS1_SHA384, &signature::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => (&signature::RSA_PKCS1_SHA512, &signature::RSA_PKCS1_2048_8192_SHA512),
        _ => (&signature::RSA_PKCS1_SHA256, &signature::RSA_PKCS1_2048_8192_SHA256),
    }
}

fn sign(signer: &Signer, alg: Algorithm, message: &[u8]) -> Vec<u8> {
    let mut sig = vec![0; signer.pair.public_modulus_len()];
    signer.pair.sign(params(alg).0, &SystemRandom::new(), message, &mut sig).unwrap();
    sig
}

/// aws-lc's verdict and ours, for one signature.
fn verdicts(signer: &Signer, alg: Algorithm, message: &[u8], sig: &[u8]) -> (bool, bool) {
    let theirs = ParsedPublicKey::new(params(alg).1, signer.pair.public_key().as_ref()).unwrap();
    let ours = RsaKey::new(&signer.n, &signer.e).expect("a key for the vector unit");
    (theirs.verify_sig(message, sig).is_ok(), ours.verify(alg, message, sig))
}

const PKCS1: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

#[test]
fn good_signatures_pass_and_every_kind_of_bad_one_fails_as_with_aws_lc() {
    if skip() {
        for s in signers() {
            assert!(RsaKey::new(&s.n, &s.e).is_none());
        }
        return;
    }
    for signer in signers() {
        let n = BigUint::from_bytes_be(&signer.n);
        let k = signer.n.len();
        let be = |x: &BigUint| {
            let b = x.to_bytes_be();
            let mut out = vec![0; k.saturating_sub(b.len())];
            out.extend(b);
            out
        };
        for alg in PKCS1 {
            let message = b"header.payload";
            let good = sign(signer, alg, message);
            assert_eq!(verdicts(signer, alg, message, &good), (true, true), "{alg} {k}");
            // A leading zero byte on the modulus (as some issuers send it) changes nothing.
            let mut padded = vec![0];
            padded.extend(&signer.n);
            assert!(RsaKey::new(&padded, &signer.e).unwrap().verify(alg, message, &good));

            let mut bad: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
                ("other message", b"header.payloaD".to_vec(), good.clone()),
                ("s = 0", message.to_vec(), vec![0; k]),
                ("s = 1", message.to_vec(), be(&BigUint::from(1u8))),
                ("s = n - 1", message.to_vec(), be(&(&n - 1u8))),
                ("s = n", message.to_vec(), signer.n.clone()),
                ("s = n + good", message.to_vec(), be(&(&n + BigUint::from_bytes_be(&good)))),
                ("all ones", message.to_vec(), vec![0xff; k]),
                ("one byte short", message.to_vec(), good[1..].to_vec()),
                ("one byte long", message.to_vec(), [&[0u8][..], &good].concat()),
                ("empty", message.to_vec(), Vec::new()),
            ];
            for i in [0, k / 2, k - 1] {
                let mut flipped = good.clone();
                flipped[i] ^= 0x10;
                bad.push(("a flipped bit", message.to_vec(), flipped));
            }
            for (what, m, sig) in &bad {
                assert_eq!(verdicts(signer, alg, m, sig), (false, false), "{alg} {k}: {what}");
            }
            // Another digest's signature is not this one's.
            for other in PKCS1.into_iter().filter(|a| *a != alg) {
                assert_eq!(verdicts(signer, other, message, &good), (false, false), "{alg} as {other}");
            }
            // Only PKCS#1 v1.5 is served here.
            assert!(!RsaKey::new(&signer.n, &signer.e).unwrap().verify(Algorithm::PS256, message, &good));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random damage to a good signature, and random signatures: the two verdicts agree.
    #[test]
    fn verdicts_agree_with_aws_lc(
        which in 0usize..3,
        alg in prop::sample::select(PKCS1.to_vec()),
        message in prop::collection::vec(any::<u8>(), 0..200),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        random in prop::option::of(prop::collection::vec(any::<u8>(), 1..64)),
    ) {
        if skip() {
            return Ok(());
        }
        let signer = &signers()[which];
        // A random signature is as long as the modulus, so that it reaches the arithmetic.
        let k = signer.n.len();
        let random = random.map(|r| r.iter().copied().cycle().take(k).collect::<Vec<u8>>());
        let mut sig = random.unwrap_or_else(|| sign(signer, alg, &message));
        if !sig.is_empty() {
            for (i, x) in &damage {
                let i = i.index(sig.len());
                sig[i] ^= x;
            }
        }
        let (theirs, ours) = verdicts(signer, alg, &message, &sig);
        prop_assert_eq!(theirs, ours);
    }
}

#[test]
fn keys_the_vector_unit_does_not_serve_are_left_to_aws_lc() {
    if skip() {
        return;
    }
    let n2048 = &signers()[0].n;
    assert!(RsaKey::new(n2048, &[1, 0, 1]).is_some());
    assert!(RsaKey::new(n2048, &[3]).is_some());
    assert!(RsaKey::new(n2048, &[1, 0xff, 0xff, 0xff, 0xff]).is_some(), "2^33 - 1");
    // What aws-lc refuses when it verifies: an even modulus; an exponent below 3, even, or
    // of more than 33 bits (so also one wider than 64 bits); fewer than 2048 bits, even in
    // 256 bytes.
    let mut even = n2048.clone();
    *even.last_mut().unwrap() &= 0xfe;
    assert!(RsaKey::new(&even, &[1, 0, 1]).is_none());
    assert!(RsaKey::new(n2048, &[1]).is_none());
    assert!(RsaKey::new(n2048, &[4]).is_none());
    assert!(RsaKey::new(n2048, &[1, 0, 0, 0, 0x02]).is_none(), "even");
    assert!(RsaKey::new(n2048, &[2, 0, 0, 0, 1]).is_none(), "2^33 + 1");
    assert!(RsaKey::new(n2048, &[1; 9]).is_none());
    let mut short = n2048.clone();
    short[0] = 0x7f;
    assert!(RsaKey::new(&short, &[1, 0, 1]).is_none(), "2047 bits");
    short[0] = 0x01;
    assert!(RsaKey::new(&short, &[1, 0, 1]).is_none(), "2041 bits");
    assert!(RsaKey::new(&[], &[1, 0, 1]).is_none());
    assert!(RsaKey::new(&[0; 256], &[1, 0, 1]).is_none());
    // Shorter than 2048 bits, longer than 4096, and a width between the ones served.
    assert!(RsaKey::new(&n2048[1..], &[1, 0, 1]).is_none());
    assert!(RsaKey::new(&vec![0xc5; 513], &[1, 0, 1]).is_none());
    assert!(RsaKey::new(&[&[0xc5u8][..], &vec![0x37; 299]].concat(), &[1, 0, 1]).is_none());
}

/// The private exponent of a key pair, read from its PKCS #8 encoding (RFC 5208, RFC 8017
/// A.1.2): enough DER to walk two sequences.
fn private_exponent(pair: &RsaKeyPair) -> BigUint {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (b[0], b[1]);
        let (len, at) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            (b[2..2 + n].iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)), 2 + n)
        };
        (tag, &b[at..at + len], &b[at + len..])
    }
    let der: Pkcs8V1Der<'static> = pair.as_der().unwrap();
    let (_, info, _) = tlv(der.as_ref());
    let (_, _version, rest) = tlv(info);
    let (_, _algorithm, rest) = tlv(rest);
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    let (_, fields, _) = tlv(key);
    let mut rest = fields;
    let mut ints = Vec::new();
    for _ in 0..4 {
        let (tag, int, next) = tlv(rest);
        assert_eq!(tag, 0x02);
        ints.push(BigUint::from_bytes_be(int));
        rest = next;
    }
    ints.swap_remove(3) // version, n, e, d
}

/// Encodings that are nearly EMSA-PKCS1-v1_5, signed with the private key: the lenient
/// parsers of other libraries have accepted such ones. Only the exact encoding passes.
#[test]
fn signatures_over_near_miss_encodings_fail_as_with_aws_lc() {
    if skip() {
        return;
    }
    let signer = &signers()[0];
    let (n, d) = (BigUint::from_bytes_be(&signer.n), private_exponent(&signer.pair));
    let k = signer.n.len();
    let message = b"header.payload";
    let hash = digest::digest(&digest::SHA256, message);
    let hash = hash.as_ref();
    let em = |prefix: &[u8], hash: &[u8], tail: &[u8], ps: usize| {
        let mut em = vec![0x00, 0x01];
        em.extend(std::iter::repeat_n(0xff, ps));
        em.push(0);
        em.extend(prefix);
        em.extend(hash);
        em.extend(tail);
        assert!(em.len() <= k, "{} > {k}", em.len());
        em.splice(2..2, std::iter::repeat_n(0xff, k - em.len()));
        em
    };
    let sign_raw = |em: &[u8]| {
        let s = BigUint::from_bytes_be(em).modpow(&d, &n).to_bytes_be();
        [vec![0; k - s.len()], s].concat()
    };
    let exact = em(&SHA256_PREFIX, hash, &[], 0);
    assert_eq!(verdicts(signer, Algorithm::RS256, message, &sign_raw(&exact)), (true, true), "the exact encoding");

    let no_null = [&[0x30, 0x2f, 0x30, 0x0b][..], &SHA256_PREFIX[4..15], &[0x04, 0x20]].concat();
    let mut near: Vec<(&str, Vec<u8>)> = vec![
        ("DigestInfo without the NULL", em(&no_null, hash, &[], 0)),
        ("bytes after the digest", em(&SHA256_PREFIX, hash, &[0; 8], 0)),
        ("SHA-384's prefix", em(&SHA384_PREFIX, hash, &[], 0)),
        ("another message's digest", em(&SHA256_PREFIX, digest::digest(&digest::SHA256, b"other").as_ref(), &[], 0)),
    ];
    let mut block_type_2 = exact.clone();
    block_type_2[1] = 2;
    near.push(("block type 2", block_type_2));
    let mut hole = exact.clone();
    hole[10] = 0xfe;
    near.push(("padding not all FF", hole));
    let mut no_zero = exact.clone();
    no_zero[k - 52] = 0xff;
    near.push(("no zero before the DigestInfo", no_zero));
    for (what, em) in near {
        assert_eq!(verdicts(signer, Algorithm::RS256, message, &sign_raw(&em)), (false, false), "{what}");
    }
}
