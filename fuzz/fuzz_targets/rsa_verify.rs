//! RS256/384/512 verification on the vector unit against aws-lc: for a good signature with
//! fuzzer-chosen damage, and for fuzzer-chosen signatures, the gateway's verifier and aws-lc's
//! give the same verdict, for 2048- and 3072-bit keys. (On a CPU without AVX-512 IFMA both
//! sides are aws-lc and this checks only the dispatch.)
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, KeyPair, ParsedPublicKey, RsaKeyPair};
use libfuzzer_sys::fuzz_target;
use portcullis_jose::{Algorithm, Jwk, VerifyingKey, b64};

struct Key {
    pair: RsaKeyPair,
    gateway: VerifyingKey,
}

fn keys() -> &'static [Key; 2] {
    static KEYS: OnceLock<[Key; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [KeySize::Rsa2048, KeySize::Rsa3072].map(|size| {
            let pair = RsaKeyPair::generate(size).expect("keygen");
            let c: PublicKeyComponents<Vec<u8>> = pair.public_key().into();
            let jwk = serde_json::json!({"kty": "RSA", "n": b64::encode(&c.n), "e": b64::encode(&c.e)});
            let algs = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
            let gateway = Jwk::from_value(jwk).expect("jwk").verifying_key(&algs).expect("key");
            Key { pair, gateway }
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let [key_sel, alg_sel, mode, split, rest @ ..] = data else { return };
    let key = &keys()[usize::from(key_sel & 1)];
    let (alg, encoding, params): (_, &'static dyn signature::RsaEncoding, _) = match alg_sel % 3 {
        0 => (Algorithm::RS256, &signature::RSA_PKCS1_SHA256, &signature::RSA_PKCS1_2048_8192_SHA256),
        1 => (Algorithm::RS384, &signature::RSA_PKCS1_SHA384, &signature::RSA_PKCS1_2048_8192_SHA384),
        _ => (Algorithm::RS512, &signature::RSA_PKCS1_SHA512, &signature::RSA_PKCS1_2048_8192_SHA512),
    };
    let split = usize::from(*split).min(rest.len());
    let (message, tail) = rest.split_at(split);
    let signature = if mode & 1 == 0 {
        // A good signature, then damage: XOR the tail's bytes in from a fuzzer-chosen offset.
        let mut sig = vec![0; key.pair.public_modulus_len()];
        key.pair.sign(encoding, &SystemRandom::new(), message, &mut sig).expect("sign");
        let at = usize::from(mode >> 1) * sig.len() / 128;
        for (s, d) in sig.iter_mut().skip(at).zip(tail) {
            *s ^= d;
        }
        sig
    } else {
        tail.to_vec()
    };
    let theirs = ParsedPublicKey::new(params, key.pair.public_key().as_ref()).expect("key");
    let expected = theirs.verify_sig(message, &signature).is_ok();
    let got = key.gateway.verify(alg, message, &signature).is_ok();
    assert_eq!(got, expected, "verdicts differ for {alg} over {message:?} with {signature:?}");
});
