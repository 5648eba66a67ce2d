//! Signing compact JWS: the gateway's own tokens (ES256 or EdDSA by default) and test data.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Map, Value, json};

use crate::{Algorithm, Error, Jwk, VerifyingKey, b64};

enum Inner {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private key that signs compact JWS.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    inner: Inner,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("alg", &self.alg).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key for `alg` (ES256, ES384, EdDSA, or RS256/PS256 with 2048 bits).
    pub fn generate(alg: Algorithm, kid: impl Into<String>) -> Result<SigningKey, Error> {
        let inner = match alg {
            Algorithm::ES256 => Inner::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| Error::BadKey("keygen"))?,
            ),
            Algorithm::ES384 => Inner::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)
                    .map_err(|_| Error::BadKey("keygen"))?,
            ),
            Algorithm::EdDSA => Inner::Ed(Ed25519KeyPair::generate().map_err(|_| Error::BadKey("keygen"))?),
            Algorithm::RS256 | Algorithm::PS256 => {
                Inner::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|_| Error::BadKey("keygen"))?)
            }
            _ => return Err(Error::AlgNotAllowed(alg.name().into())),
        };
        Ok(SigningKey { alg, kid: kid.into(), inner })
    }

    /// A key from PKCS#8 DER.
    pub fn from_pkcs8(alg: Algorithm, kid: impl Into<String>, der: &[u8]) -> Result<SigningKey, Error> {
        let bad = |_| Error::BadKey("not a PKCS#8 key for this algorithm");
        let inner = match alg {
            Algorithm::ES256 => {
                Inner::Ec(EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(bad)?)
            }
            Algorithm::ES384 => {
                Inner::Ec(EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der).map_err(bad)?)
            }
            Algorithm::EdDSA => Inner::Ed(Ed25519KeyPair::from_pkcs8(der).map_err(bad)?),
            Algorithm::RS256 | Algorithm::PS256 => Inner::Rsa(RsaKeyPair::from_pkcs8(der).map_err(bad)?),
            _ => return Err(Error::AlgNotAllowed(alg.name().into())),
        };
        Ok(SigningKey { alg, kid: kid.into(), inner })
    }

    /// The same key under another key id.
    pub fn with_kid(mut self, kid: impl Into<String>) -> SigningKey {
        self.kid = kid.into();
        self
    }

    /// The RFC 7638 thumbprint of the public key: a key id that names the key itself.
    pub fn thumbprint(&self) -> String {
        Jwk::from_value(self.public_jwk()).map(|j| j.thumbprint).unwrap_or_default()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (with `kid`, `alg` and `use`).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.inner {
            Inner::Ec(k) => {
                let point = k.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                json!({
                    "kty": "EC",
                    "crv": if half == 48 { "P-384" } else { "P-256" },
                    "x": b64::encode(&point[1..1 + half]),
                    "y": b64::encode(&point[1 + half..]),
                })
            }
            Inner::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(k.public_key().as_ref())}),
            Inner::Rsa(k) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "n": b64::encode(&c.n), "e": b64::encode(&c.e)})
            }
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg.name());
        jwk["use"] = json!("sig");
        jwk
    }

    /// A verifier for this key's signatures.
    pub fn verifying_key(&self) -> VerifyingKey {
        Jwk::from_value(self.public_jwk())
            .and_then(|j| j.verifying_key(&[self.alg]))
            .unwrap_or_else(|_| unreachable_key())
    }

    /// Signs `payload` as a compact JWS. `header` gets `alg` and `kid` set.
    pub fn sign(&self, mut header: Map<String, Value>, payload: &[u8]) -> Result<String, Error> {
        header.insert("alg".into(), json!(self.alg.name()));
        header.entry("kid").or_insert_with(|| json!(self.kid));
        let mut out = b64::encode(Value::Object(header).to_string().as_bytes());
        out.push('.');
        out.push_str(&b64::encode(payload));
        let sig = self.sign_raw(out.as_bytes())?;
        out.push('.');
        out.push_str(&b64::encode(&sig));
        Ok(out)
    }

    /// A raw signature over `message`.
    pub fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Ec(k) => Ok(k.sign(&rng, message).map_err(|_| Error::BadKey("sign"))?.as_ref().to_vec()),
            Inner::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
            Inner::Rsa(k) => {
                let enc: &'static dyn signature::RsaEncoding = if self.alg == Algorithm::PS256 {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(enc, &rng, message, &mut sig).map_err(|_| Error::BadKey("sign"))?;
                Ok(sig)
            }
        }
    }
}

#[cold]
fn unreachable_key() -> VerifyingKey {
    // The public JWK of a key we generated always parses; if it ever did not, a verifier
    // that accepts nothing is the safe answer.
    VerifyingKey::hmac(&[0; 32], &[Algorithm::HS512]).unwrap_or_else(|_| panic!("HMAC key construction cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeaderPolicy, Jws};

    #[test]
    fn sign_and_verify_every_signing_algorithm() {
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256] {
            let key = SigningKey::generate(alg, "k1").unwrap();
            let token = key.sign(Map::new(), br#"{"sub":"alice"}"#).unwrap();
            let jws = Jws::parse(&token, HeaderPolicy::default()).unwrap();
            assert_eq!(jws.header.alg, alg);
            assert_eq!(jws.header.kid.as_deref(), Some("k1"));
            let verifier = Jwk::from_value(key.public_jwk()).unwrap().verifying_key(&Algorithm::ALL).unwrap();
            assert!(verifier.verify(alg, jws.signing_input(), &jws.signature).is_ok(), "{alg}");
            // Any change to what was signed breaks the signature.
            assert!(verifier.verify(alg, b"other", &jws.signature).is_err());
            let mut bad = jws.signature.clone();
            bad[0] ^= 1;
            assert!(verifier.verify(alg, jws.signing_input(), &bad).is_err());
        }
    }

    #[test]
    fn a_key_verifies_only_its_algorithms() {
        let key = SigningKey::generate(Algorithm::ES256, "k").unwrap();
        let token = key.sign(Map::new(), b"{}").unwrap();
        let jws = Jws::parse(&token, HeaderPolicy::default()).unwrap();
        let verifier = key.verifying_key();
        assert_eq!(verifier.verify(Algorithm::ES384, jws.signing_input(), &jws.signature), Err(Error::KeyMismatch));
    }

    proptest::proptest! {
        /// Flipping any bit of a signed token makes it fail to parse or to verify.
        #[test]
        fn tampering_is_detected(pos in 0usize..2000, bit in 0u8..8) {
            thread_local! {
                static KEY: SigningKey = SigningKey::generate(Algorithm::ES256, "k").unwrap();
            }
            KEY.with(|key| {
                let token = key.sign(Map::new(), br#"{"sub":"alice","scope":"a b"}"#).unwrap();
                let mut bytes = token.clone().into_bytes();
                let pos = pos % bytes.len();
                bytes[pos] ^= 1 << bit;
                if let Ok(t) = String::from_utf8(bytes)
                    && let Ok(jws) = Jws::parse(&t, HeaderPolicy::default())
                {
                    // Some flips only change unused low bits of the last base64
                    // character, which strict decoding refuses; any parse must fail to verify.
                    let verifier = key.verifying_key();
                    proptest::prop_assert!(t == token || verifier.verify(jws.header.alg, jws.signing_input(), &jws.signature).is_err());
                }
                Ok(())
            })?;
        }

        /// Replacing any one byte of a signed token with any other byte makes it fail to
        /// parse or to verify, for every signing algorithm.
        #[test]
        fn any_byte_change_is_detected(which in 0usize..5, pos in 0usize..2000, byte in proptest::num::u8::ANY) {
            thread_local! {
                static SIGNED: Vec<(VerifyingKey, String)> =
                    [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256]
                        .into_iter()
                        .map(|alg| {
                            let key = SigningKey::generate(alg, "k").unwrap();
                            let token = key.sign(Map::new(), br#"{"sub":"alice","exp":1800000000}"#).unwrap();
                            (key.verifying_key(), token)
                        })
                        .collect();
            }
            SIGNED.with(|signed| {
                let (verifier, token) = &signed[which];
                let mut bytes = token.clone().into_bytes();
                let pos = pos % bytes.len();
                if bytes[pos] == byte {
                    return Ok(());
                }
                bytes[pos] = byte;
                if let Ok(t) = String::from_utf8(bytes)
                    && let Ok(jws) = Jws::parse(&t, HeaderPolicy::default())
                {
                    proptest::prop_assert!(verifier.verify(jws.header.alg, jws.signing_input(), &jws.signature).is_err());
                }
                Ok(())
            })?;
        }
    }
}
