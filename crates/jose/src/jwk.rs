//! JSON Web Keys (RFC 7517, RFC 7518 §6, RFC 8037) and RFC 7638 thumbprints.
//!
//! A key is usable with an algorithm only if everything about it agrees: its type and curve,
//! and, where the key states them, its `alg`, its `use` (`sig`) and its `key_ops` (`verify`).
//! RSA keys must have at least 2048 bits. Symmetric (`oct`) keys are never used from a key
//! set: HMAC needs a secret configured on the gateway.

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use serde_json::{Map, Value};

use crate::rsa::RsaKey;
use crate::{Algorithm, Error, b64};

/// The key material of a JWK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA public key.
    Rsa {
        /// Modulus, big-endian.
        n: Vec<u8>,
        /// Public exponent, big-endian.
        e: Vec<u8>,
    },
    /// EC public key on P-256 (`p384: false`) or P-384.
    Ec {
        /// P-384 rather than P-256.
        p384: bool,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
    /// Ed25519 public key.
    Ed25519 {
        /// The public key.
        x: Vec<u8>,
    },
    /// A symmetric key (never used from a key set).
    Oct,
}

/// A parsed public JWK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    /// `kid`.
    pub kid: Option<String>,
    /// `alg`, if the key restricts it.
    pub alg: Option<String>,
    /// `use`, if stated.
    pub key_use: Option<String>,
    /// `key_ops`, if stated.
    pub key_ops: Option<Vec<String>>,
    /// The key material.
    pub kind: KeyKind,
    /// Whether the JWK carried private members (`d`, `p`, `q`...).
    pub has_private: bool,
    /// The RFC 7638 thumbprint (SHA-256, base64url).
    pub thumbprint: String,
}

fn string(map: &Map<String, Value>, k: &str) -> Result<Option<String>, Error> {
    match map.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::BadKey("a member has the wrong type")),
    }
}

fn bytes(map: &Map<String, Value>, k: &'static str) -> Result<(String, Vec<u8>), Error> {
    let s = string(map, k)?.ok_or(Error::BadKey("a required member is missing"))?;
    let b = b64::decode(&s).ok_or(Error::BadKey("a member is not base64url"))?;
    Ok((s, b))
}

/// The RFC 7638 thumbprint of the required members, given in lexicographic order.
pub fn thumbprint_sha256(members: &[(&str, &str)]) -> String {
    let mut json = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(k).unwrap_or_default());
        json.push(':');
        json.push_str(&serde_json::to_string(v).unwrap_or_default());
    }
    json.push('}');
    b64::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, json.as_bytes()).as_ref())
}

impl Jwk {
    /// Parses one JWK object.
    pub fn from_value(v: Value) -> Result<Jwk, Error> {
        let Value::Object(map) = v else { return Err(Error::BadKey("not a JSON object")) };
        let kty = string(&map, "kty")?.ok_or(Error::BadKey("no kty"))?;
        let has_private = ["d", "p", "q", "dp", "dq", "qi", "oth"].iter().any(|k| map.contains_key(*k));
        let (kind, thumbprint) = match kty.as_str() {
            "RSA" => {
                let (n64, n) = bytes(&map, "n")?;
                let (e64, e) = bytes(&map, "e")?;
                let tp = thumbprint_sha256(&[("e", &e64), ("kty", "RSA"), ("n", &n64)]);
                (KeyKind::Rsa { n, e }, tp)
            }
            "EC" => {
                let crv = string(&map, "crv")?.ok_or(Error::BadKey("no crv"))?;
                let (p384, len) = match crv.as_str() {
                    "P-256" => (false, 32),
                    "P-384" => (true, 48),
                    _ => return Err(Error::BadKey("unsupported curve")),
                };
                let (x64, x) = bytes(&map, "x")?;
                let (y64, y) = bytes(&map, "y")?;
                if x.len() != len || y.len() != len {
                    return Err(Error::BadKey("EC coordinates of the wrong length"));
                }
                let tp = thumbprint_sha256(&[("crv", &crv), ("kty", "EC"), ("x", &x64), ("y", &y64)]);
                (KeyKind::Ec { p384, x, y }, tp)
            }
            "OKP" => {
                let crv = string(&map, "crv")?.ok_or(Error::BadKey("no crv"))?;
                if crv != "Ed25519" {
                    return Err(Error::BadKey("unsupported curve"));
                }
                let (x64, x) = bytes(&map, "x")?;
                if x.len() != 32 {
                    return Err(Error::BadKey("Ed25519 key of the wrong length"));
                }
                let tp = thumbprint_sha256(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", &x64)]);
                (KeyKind::Ed25519 { x }, tp)
            }
            "oct" => {
                let (k64, _) = bytes(&map, "k")?;
                (KeyKind::Oct, thumbprint_sha256(&[("k", &k64), ("kty", "oct")]))
            }
            _ => return Err(Error::BadKey("unsupported key type")),
        };
        let key_ops = match map.get("key_ops") {
            None => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(Error::BadKey("key_ops is not a list of strings"))?,
            ),
            Some(_) => return Err(Error::BadKey("key_ops is not a list")),
        };
        Ok(Jwk {
            kid: string(&map, "kid")?,
            alg: string(&map, "alg")?,
            key_use: string(&map, "use")?,
            key_ops,
            kind,
            has_private,
            thumbprint,
        })
    }

    /// Parses a JWK Set (`{"keys": [...]}`). Keys that cannot be used are left out and their
    /// problems returned beside the usable ones, so one odd key does not disable an issuer.
    pub fn parse_set(json: &[u8]) -> Result<(Vec<Jwk>, Vec<String>), Error> {
        let v: Value = serde_json::from_slice(json).map_err(|_| Error::BadKey("the key set is not JSON"))?;
        let Some(Value::Array(keys)) = v.get("keys") else {
            return Err(Error::BadKey("the key set has no `keys` list"));
        };
        let mut good = Vec::new();
        let mut skipped = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let kid = k.get("kid").and_then(Value::as_str).unwrap_or("?").chars().take(64).collect::<String>();
            match Jwk::from_value(k.clone()) {
                Ok(j) if j.has_private => skipped.push(format!("key {i} (kid {kid}) has private members; not used")),
                Ok(j) => good.push(j),
                Err(e) => skipped.push(format!("key {i} (kid {kid}): {e}")),
            }
        }
        Ok((good, skipped))
    }

    /// The size in bits of an RSA key's modulus (leading zero bytes not counted); `None` for
    /// other keys.
    pub fn rsa_bits(&self) -> Option<usize> {
        match &self.kind {
            KeyKind::Rsa { n, .. } => {
                let n = strip_zeros(n);
                Some((n.len() * 8).saturating_sub(n.first().map_or(8, |b| b.leading_zeros() as usize)))
            }
            _ => None,
        }
    }

    /// Whether this key may verify signatures made with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        let type_fits = match (&self.kind, alg) {
            (KeyKind::Rsa { .. }, a) => matches!(
                a,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            (KeyKind::Ec { p384: false, .. }, a) => a == Algorithm::ES256,
            (KeyKind::Ec { p384: true, .. }, a) => a == Algorithm::ES384,
            (KeyKind::Ed25519 { .. }, a) => a == Algorithm::EdDSA,
            (KeyKind::Oct, _) => false,
        };
        let alg_fits = self.alg.as_deref().is_none_or(|a| Algorithm::parse(a) == Some(alg));
        let use_fits = self.key_use.as_deref().is_none_or(|u| u == "sig");
        let ops_fit = self.key_ops.as_ref().is_none_or(|ops| ops.iter().any(|o| o == "verify"));
        type_fits && alg_fits && use_fits && ops_fit
    }

    /// A verifier for the algorithms in `algs` this key fits.
    pub fn verifying_key(&self, algs: &[Algorithm]) -> Result<VerifyingKey, Error> {
        let mut parsed = Vec::new();
        for &alg in algs.iter().filter(|a| self.fits(**a)) {
            let key = match &self.kind {
                KeyKind::Rsa { n, e } => {
                    // Some issuers pad the modulus with a zero byte; the value is the same.
                    let n = strip_zeros(n);
                    let e = strip_zeros(e);
                    RsaPublicKeyComponents { n, e }
                        .to_parsed_public_key(rsa_params(alg))
                        .map_err(|_| Error::BadKey("invalid RSA key"))?
                }
                KeyKind::Ec { p384, x, y } => {
                    let mut point = Vec::with_capacity(1 + x.len() + y.len());
                    point.push(4);
                    point.extend_from_slice(x);
                    point.extend_from_slice(y);
                    let a =
                        if *p384 { &signature::ECDSA_P384_SHA384_FIXED } else { &signature::ECDSA_P256_SHA256_FIXED };
                    ParsedPublicKey::new(a, point).map_err(|_| Error::BadKey("invalid EC key"))?
                }
                KeyKind::Ed25519 { x } => {
                    ParsedPublicKey::new(&signature::ED25519, x).map_err(|_| Error::BadKey("invalid Ed25519 key"))?
                }
                KeyKind::Oct => continue,
            };
            parsed.push((alg, key));
        }
        if parsed.is_empty() {
            return Err(Error::KeyMismatch);
        }
        // PKCS#1 v1.5 signatures are checked on the vector unit where the CPU has one and the
        // key meets the rules aws-lc applies when it verifies (see `rsa`).
        let rsa = match &self.kind {
            KeyKind::Rsa { n, e } if parsed.iter().any(|(a, _)| is_pkcs1(*a)) => RsaKey::new(n, e),
            _ => None,
        };
        Ok(VerifyingKey { inner: Inner::Public(parsed, rsa) })
    }
}

fn is_pkcs1(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
}

/// `b` without its leading zero bytes (one zero stays of a number that is all zeros).
pub(crate) fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len().saturating_sub(1));
    &b[i..]
}

fn rsa_params(alg: Algorithm) -> &'static signature::RsaParameters {
    match alg {
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

/// A key ready to verify signatures, parsed once for each algorithm it may be used with.
pub struct VerifyingKey {
    inner: Inner,
}

enum Inner {
    Public(Vec<(Algorithm, ParsedPublicKey)>, Option<RsaKey>),
    Hmac(Vec<(Algorithm, aws_lc_rs::hmac::Key)>),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<&str> = self.algorithms().map(Algorithm::name).collect();
        f.debug_struct("VerifyingKey").field("algorithms", &algs).finish()
    }
}

impl VerifyingKey {
    /// A verifier for a shared HMAC secret configured on the gateway.
    pub fn hmac(secret: &[u8], algs: &[Algorithm]) -> Result<VerifyingKey, Error> {
        let keys: Vec<_> = algs
            .iter()
            .filter_map(|&a| {
                let h = match a {
                    Algorithm::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
                    Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                    Algorithm::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
                    _ => return None,
                };
                Some((a, aws_lc_rs::hmac::Key::new(h, secret)))
            })
            .collect();
        if keys.is_empty() || secret.len() < 32 {
            return Err(Error::BadKey("an HMAC secret must be at least 32 bytes, with an HS algorithm"));
        }
        Ok(VerifyingKey { inner: Inner::Hmac(keys) })
    }

    /// The algorithms this key verifies.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        let (a, b) = match &self.inner {
            Inner::Public(v, _) => (Some(v.iter().map(|(a, _)| *a)), None),
            Inner::Hmac(v) => (None, Some(v.iter().map(|(a, _)| *a))),
        };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }

    /// Whether this key verifies `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.algorithms().any(|a| a == alg)
    }

    /// Verifies `signature` over `message` with `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        match &self.inner {
            Inner::Public(keys, rsa) => {
                let key = keys.iter().find(|(a, _)| *a == alg).map(|(_, k)| k).ok_or(Error::KeyMismatch)?;
                if let Some(rsa) = rsa.as_ref().filter(|_| is_pkcs1(alg)) {
                    return if rsa.verify(alg, message, signature) { Ok(()) } else { Err(Error::BadSignature) };
                }
                if matches!(alg, Algorithm::ES256 | Algorithm::ES384) && !ecdsa_signature_in_range(alg, signature) {
                    return Err(Error::BadSignature);
                }
                key.verify_sig(message, signature).map_err(|_| Error::BadSignature)
            }
            Inner::Hmac(keys) => {
                let key = keys.iter().find(|(a, _)| *a == alg).map(|(_, k)| k).ok_or(Error::KeyMismatch)?;
                aws_lc_rs::hmac::verify(key, message, signature).map_err(|_| Error::BadSignature)
            }
        }
    }
}

/// `r || s` of the right length with neither half zero. (aws-lc rejects zero and
/// out-of-range values too; this keeps the rule visible and independent of the library.)
fn ecdsa_signature_in_range(alg: Algorithm, sig: &[u8]) -> bool {
    let half = if alg == Algorithm::ES384 { 48 } else { 32 };
    sig.len() == 2 * half && sig[..half].iter().any(|&b| b != 0) && sig[half..].iter().any(|&b| b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = Jwk::from_value(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(jwk.thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn keys_must_fit_the_algorithm() {
        let ec = Jwk::from_value(json!({"kty":"EC","crv":"P-256","x":b64::encode(&[1;32]),"y":b64::encode(&[2;32])}))
            .unwrap();
        assert!(ec.fits(Algorithm::ES256));
        assert!(!ec.fits(Algorithm::ES384));
        assert!(!ec.fits(Algorithm::RS256));
        assert!(!ec.fits(Algorithm::HS256));
        let mut restricted = ec.clone();
        restricted.alg = Some("ES384".into());
        assert!(!restricted.fits(Algorithm::ES256), "the key's own alg wins");
        let mut enc = ec.clone();
        enc.key_use = Some("enc".into());
        assert!(!enc.fits(Algorithm::ES256));
        let mut ops = ec.clone();
        ops.key_ops = Some(vec!["sign".into()]);
        assert!(!ops.fits(Algorithm::ES256));
        let oct = Jwk::from_value(json!({"kty":"oct","k":"c2VjcmV0"})).unwrap();
        assert!(Algorithm::ALL.iter().all(|a| !oct.fits(*a)), "symmetric keys never verify from a key set");
    }

    #[test]
    fn key_sets_skip_bad_and_private_keys() {
        let set = json!({"keys":[
            {"kty":"OKP","crv":"Ed25519","x":b64::encode(&[7;32]),"kid":"good"},
            {"kty":"OKP","crv":"Ed25519","x":b64::encode(&[7;32]),"d":b64::encode(&[1;32]),"kid":"leaked"},
            {"kty":"EC","crv":"P-521","x":"AA","y":"AA","kid":"odd"},
            {"kty":"RSA","kid":"broken"}
        ]});
        let (good, skipped) = Jwk::parse_set(set.to_string().as_bytes()).unwrap();
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].kid.as_deref(), Some("good"));
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(Jwk::parse_set(b"{}").is_err());
        assert!(Jwk::parse_set(b"not json").is_err());
    }

    #[test]
    fn ecdsa_zero_and_short_signatures() {
        assert!(!ecdsa_signature_in_range(Algorithm::ES256, &[0; 64]));
        let mut s = [1u8; 64];
        s[32..].fill(0);
        assert!(!ecdsa_signature_in_range(Algorithm::ES256, &s), "s = 0");
        assert!(!ecdsa_signature_in_range(Algorithm::ES256, &[1; 63]));
        assert!(ecdsa_signature_in_range(Algorithm::ES256, &[1; 64]));
        assert!(!ecdsa_signature_in_range(Algorithm::ES384, &[1; 64]));
    }

    #[test]
    fn hmac_needs_a_real_secret() {
        assert!(VerifyingKey::hmac(b"short", &[Algorithm::HS256]).is_err());
        assert!(VerifyingKey::hmac(&[1; 32], &[Algorithm::RS256]).is_err());
        let k = VerifyingKey::hmac(&[1; 32], &[Algorithm::HS256]).unwrap();
        let tag = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[1; 32]), b"m");
        assert!(k.verify(Algorithm::HS256, b"m", tag.as_ref()).is_ok());
        assert_eq!(k.verify(Algorithm::HS256, b"n", tag.as_ref()), Err(Error::BadSignature));
        assert_eq!(k.verify(Algorithm::HS384, b"m", tag.as_ref()), Err(Error::KeyMismatch));
    }
}
