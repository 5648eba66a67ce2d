//! Compact JWE (RFC 7516 §7.1) with one key management mode and one cipher: ECDH-ES in
//! Direct Key Agreement mode (RFC 7518 §4.6) and A256GCM (RFC 7518 §5.3), on P-256, P-384
//! (RFC 7518 §6.2) or X25519 (RFC 8037).
//!
//! The sender makes a fresh ephemeral key pair for every message, agrees a secret with the
//! recipient's public key, and derives the AES-256-GCM key from it with the Concat KDF
//! (NIST SP 800-56A, as RFC 7518 §4.6.2 fixes its inputs). The ephemeral public key travels
//! in the protected header (`epk`), the encrypted key segment is empty, and the whole
//! protected header, as sent, is the additional authenticated data.
//!
//! The gateway only ever holds the recipient's *public* key to encrypt: a JWK with private
//! members is refused there. Decryption is kept small and strict (no `zip`, no `crit`, only
//! the one algorithm pair, the `epk` on the recipient's own curve); it serves the tests and
//! whatever later needs to open such tokens.

use aws_lc_rs::aead::{self, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::digest;
use serde_json::{Map, Value, json};

use crate::{Error, b64, parse_object_no_duplicates};

/// The key management algorithm (RFC 7518 §4.6).
const ALG: &str = "ECDH-ES";
/// The content encryption algorithm (RFC 7518 §5.3).
const ENC: &str = "A256GCM";
/// AES-256 key length in bits, the Concat KDF's `keydatalen`.
const KEY_BITS: u32 = 256;
/// GCM initialisation vector length (RFC 7518 §5.3: 96 bits).
const IV_LEN: usize = 12;
/// GCM authentication tag length (RFC 7518 §5.3: 128 bits).
const TAG_LEN: usize = 16;
/// Longest `kid` accepted, in a key or a header.
const MAX_KID: usize = 256;
/// Longest decoded `apu` or `apv` accepted when decrypting.
const MAX_PARTY_INFO: usize = 256;
/// Members that only a private (or symmetric) JWK has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A curve ECDH-ES can agree keys on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    X25519,
}

impl Curve {
    /// The JWK `crv` name.
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::X25519 => "X25519",
        }
    }

    fn agreement(self) -> &'static agreement::Algorithm {
        match self {
            Curve::P256 => &agreement::ECDH_P256,
            Curve::P384 => &agreement::ECDH_P384,
            Curve::X25519 => &agreement::X25519,
        }
    }

    /// The length of a coordinate, of an X25519 key, and of a private scalar.
    fn len(self) -> usize {
        match self {
            Curve::P256 | Curve::X25519 => 32,
            Curve::P384 => 48,
        }
    }

    /// The public JWK members for `point` (uncompressed `04 || x || y` for EC, the raw key
    /// for X25519), as aws-lc-rs encodes public keys.
    fn public_jwk(self, point: &[u8]) -> Result<Map<String, Value>, Error> {
        let mut jwk = Map::new();
        jwk.insert("crv".into(), json!(self.name()));
        if self == Curve::X25519 {
            if point.len() != self.len() {
                return Err(Error::Crypto("unexpected X25519 public key length"));
            }
            jwk.insert("kty".into(), json!("OKP"));
            jwk.insert("x".into(), json!(b64::encode(point)));
        } else {
            let n = self.len();
            if point.len() != 1 + 2 * n || point[0] != 4 {
                return Err(Error::Crypto("unexpected EC public key encoding"));
            }
            jwk.insert("kty".into(), json!("EC"));
            jwk.insert("x".into(), json!(b64::encode(&point[1..1 + n])));
            jwk.insert("y".into(), json!(b64::encode(&point[1 + n..])));
        }
        Ok(jwk)
    }
}

fn string<'a>(map: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, &'static str> {
    match map.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("a member has the wrong type"),
    }
}

/// A fixed-length base64url member.
fn fixed(map: &Map<String, Value>, k: &str, len: usize) -> Result<Vec<u8>, &'static str> {
    let s = string(map, k)?.ok_or("a required key member is missing")?;
    let b = b64::decode(s).ok_or("a key member is not base64url")?;
    if b.len() != len {
        return Err("a key member has the wrong length for its curve");
    }
    Ok(b)
}

/// The curve and public point of a JWK (`kty`, `crv`, `x`, `y`), encoded as aws-lc-rs takes
/// it. Only lengths are checked here; whether the point is on the curve is for aws-lc-rs.
fn public_point(map: &Map<String, Value>) -> Result<(Curve, Vec<u8>), &'static str> {
    let kty = string(map, "kty")?.ok_or("no kty")?;
    let crv = string(map, "crv")?.ok_or("no crv")?;
    let curve = match (kty, crv) {
        ("EC", "P-256") => Curve::P256,
        ("EC", "P-384") => Curve::P384,
        ("OKP", "X25519") => Curve::X25519,
        ("EC" | "OKP", _) => return Err("unsupported curve (P-256, P-384 and X25519 are accepted)"),
        _ => return Err("unsupported key type (EC and OKP are accepted)"),
    };
    let x = fixed(map, "x", curve.len())?;
    if curve == Curve::X25519 {
        return Ok((curve, x));
    }
    let y = fixed(map, "y", curve.len())?;
    let mut point = Vec::with_capacity(1 + 2 * curve.len());
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok((curve, point))
}

/// The rules a key states about its own use, shared by both sides: `use` must be `enc`,
/// `alg` must be ECDH-ES, `key_ops` must allow key derivation. Returns the `kid`.
fn usage(map: &Map<String, Value>) -> Result<Option<String>, Error> {
    if string(map, "use").map_err(Error::BadKey)?.is_some_and(|u| u != "enc") {
        return Err(Error::BadKey("the key's `use` is not `enc`"));
    }
    if string(map, "alg").map_err(Error::BadKey)?.is_some_and(|a| a != ALG) {
        return Err(Error::BadKey("the key's `alg` is not ECDH-ES"));
    }
    match map.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) => {
            if !ops.iter().all(Value::is_string) {
                return Err(Error::BadKey("key_ops is not a list of strings"));
            }
            if !ops.iter().any(|o| o == "deriveKey" || o == "deriveBits") {
                return Err(Error::BadKey("the key's key_ops allow neither deriveKey nor deriveBits"));
            }
        }
        Some(_) => return Err(Error::BadKey("key_ops is not a list")),
    }
    match string(map, "kid").map_err(Error::BadKey)? {
        Some(k) if k.len() > MAX_KID => Err(Error::BadKey("kid is too long")),
        k => Ok(k.map(str::to_string)),
    }
}

/// The Concat KDF of NIST SP 800-56A §5.8.1 with SHA-256, as RFC 7518 §4.6.2 instantiates
/// it: `OtherInfo` is AlgorithmID (`enc` in Direct Key Agreement mode), PartyUInfo (`apu`)
/// and PartyVInfo (`apv`), each with a 32-bit big-endian length prefix, then SuppPubInfo
/// (`keydatalen` in bits, 32-bit big-endian); SuppPrivInfo is empty.
fn concat_kdf(z: &[u8], enc: &str, apu: &[u8], apv: &[u8], keydatalen_bits: u32) -> Result<Vec<u8>, Error> {
    if keydatalen_bits == 0 || !keydatalen_bits.is_multiple_of(8) {
        return Err(Error::Crypto("key length is not a whole number of bytes"));
    }
    let mut other_info = Vec::with_capacity(16 + enc.len() + apu.len() + apv.len());
    for field in [enc.as_bytes(), apu, apv] {
        let len = u32::try_from(field.len()).map_err(|_| Error::Crypto("KDF input too long"))?;
        other_info.extend_from_slice(&len.to_be_bytes());
        other_info.extend_from_slice(field);
    }
    other_info.extend_from_slice(&keydatalen_bits.to_be_bytes());
    let want = keydatalen_bits as usize / 8;
    let mut out = Vec::with_capacity(want + digest::SHA256_OUTPUT_LEN);
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(&other_info);
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(want);
    Ok(out)
}

/// The A256GCM content key from the shared secret `z`.
fn content_key(z: &[u8], apu: &[u8], apv: &[u8]) -> Result<RandomizedNonceKey, Error> {
    let key = concat_kdf(z, ENC, apu, apv, KEY_BITS)?;
    RandomizedNonceKey::new(&aead::AES_256_GCM, &key).map_err(|_| Error::Crypto("AES-256-GCM key setup failed"))
}

/// A recipient's public key for JWE key agreement (ECDH-ES with A256GCM).
#[derive(Clone)]
pub struct EncryptionKey {
    curve: Curve,
    /// The validated public key, as aws-lc-rs takes it.
    point: Vec<u8>,
    kid: Option<String>,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("kid", &self.kid)
            .field("curve", &self.curve.name())
            .finish_non_exhaustive()
    }
}

impl EncryptionKey {
    /// From a public JWK: EC P-256, EC P-384 or OKP X25519. Refused: private members (a
    /// configuration must never hold the recipient's private key), a `use` other than `enc`,
    /// an `alg` other than `ECDH-ES`, `key_ops` that allow neither `deriveKey` nor
    /// `deriveBits`, coordinates of the wrong length, a point that is not a valid public key
    /// on its curve (checked now, by a trial agreement, rather than at the first message),
    /// and any other key type or curve.
    pub fn from_jwk(jwk: &Value) -> Result<EncryptionKey, Error> {
        let Value::Object(map) = jwk else { return Err(Error::BadKey("not a JSON object")) };
        if PRIVATE_MEMBERS.iter().any(|k| map.contains_key(*k)) {
            return Err(Error::BadKey("the JWK holds private key material; configure the public key only"));
        }
        let kid = usage(map)?;
        let (curve, point) = public_point(map).map_err(Error::BadKey)?;
        let trial = PrivateKey::generate(curve.agreement()).map_err(|_| Error::Crypto("key generation failed"))?;
        agreement::agree(
            &trial,
            UnparsedPublicKey::new(curve.agreement(), &point),
            Error::BadKey("the public key is not a valid point on its curve"),
            |_| Ok(()),
        )?;
        Ok(EncryptionKey { curve, point, kid })
    }

    /// From JSON text: a single JWK, or a JWK Set (`{"keys": [...]}`) with exactly one key
    /// usable for encryption. A set in which any key holds private members is refused whole.
    pub fn from_json(text: &[u8]) -> Result<EncryptionKey, Error> {
        let v: Value = serde_json::from_slice(text).map_err(|_| Error::BadKey("the key is not JSON"))?;
        let Some(keys) = v.get("keys") else { return EncryptionKey::from_jwk(&v) };
        let Value::Array(keys) = keys else { return Err(Error::BadKey("`keys` is not a list")) };
        let leaked = |k: &Value| k.as_object().is_some_and(|m| PRIVATE_MEMBERS.iter().any(|p| m.contains_key(*p)));
        if keys.iter().any(leaked) {
            return Err(Error::BadKey("the key set holds private key material; configure public keys only"));
        }
        let mut usable = Vec::new();
        let mut last_error = Error::BadKey("the key set is empty");
        for k in keys {
            match EncryptionKey::from_jwk(k) {
                Ok(key) => usable.push(key),
                Err(e) => last_error = e,
            }
        }
        match usable.len() {
            1 => Ok(usable.remove(0)),
            0 if keys.len() == 1 => Err(last_error),
            0 => Err(Error::BadKey("the key set has no key usable for ECDH-ES encryption")),
            _ => Err(Error::BadKey("the key set has more than one key usable for encryption; keep exactly one")),
        }
    }

    /// The key id, sent as `kid` in the header.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Encrypts `plaintext` as a compact JWE. The protected header holds `alg` (ECDH-ES),
    /// `enc` (A256GCM), `epk` (the fresh ephemeral public key), `kid` if the key has one and
    /// `cty` if given; the encrypted key segment is empty, the IV is 96 random bits, and the
    /// additional authenticated data is the protected header as sent (RFC 7516 §5.1).
    pub fn encrypt(&self, plaintext: &[u8], cty: Option<&str>) -> Result<String, Error> {
        self.encrypt_with_typ(plaintext, cty, None)
    }

    /// As [`EncryptionKey::encrypt`], with a `typ` header member as well if given.
    pub fn encrypt_with_typ(&self, plaintext: &[u8], cty: Option<&str>, typ: Option<&str>) -> Result<String, Error> {
        let mut header = Map::new();
        if let Some(kid) = &self.kid {
            header.insert("kid".into(), json!(kid));
        }
        if let Some(cty) = cty {
            header.insert("cty".into(), json!(cty));
        }
        if let Some(typ) = typ {
            header.insert("typ".into(), json!(typ));
        }
        self.seal(header, &[], &[], plaintext)
    }

    /// Encrypts with `header` (to which `alg`, `enc` and `epk` are added) and the given
    /// PartyUInfo and PartyVInfo, which the caller has put in `header` as `apu` and `apv`.
    fn seal(&self, mut header: Map<String, Value>, apu: &[u8], apv: &[u8], plaintext: &[u8]) -> Result<String, Error> {
        let alg = self.curve.agreement();
        let ephemeral = PrivateKey::generate(alg).map_err(|_| Error::Crypto("ephemeral key generation failed"))?;
        let epk = ephemeral.compute_public_key().map_err(|_| Error::Crypto("ephemeral public key"))?;
        let key = agreement::agree(
            &ephemeral,
            UnparsedPublicKey::new(alg, &self.point),
            Error::Crypto("key agreement failed"),
            |z| content_key(z, apu, apv),
        )?;
        header.insert("alg".into(), json!(ALG));
        header.insert("enc".into(), json!(ENC));
        header.insert("epk".into(), Value::Object(self.curve.public_jwk(epk.as_ref())?));
        let protected = b64::encode(Value::Object(header).to_string().as_bytes());
        let mut ciphertext = plaintext.to_vec();
        let (nonce, tag) = key
            .seal_in_place_separate_tag(Aad::from(protected.as_bytes()), &mut ciphertext)
            .map_err(|_| Error::Crypto("encryption failed"))?;
        let iv: &[u8; IV_LEN] = nonce.as_ref();
        Ok(format!("{protected}..{}.{}.{}", b64::encode(iv), b64::encode(&ciphertext), b64::encode(tag.as_ref())))
    }
}

/// A recipient's private key, to open compact JWE made with ECDH-ES and A256GCM.
pub struct DecryptionKey {
    curve: Curve,
    key: PrivateKey,
    kid: Option<String>,
}

impl std::fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptionKey")
            .field("kid", &self.kid)
            .field("curve", &self.curve.name())
            .finish_non_exhaustive()
    }
}

impl DecryptionKey {
    /// From a private JWK: EC P-256 or P-384, or OKP X25519, with `d` and its public members,
    /// which must match `d`. `use`, `alg` and `key_ops`, where stated, must allow ECDH-ES.
    pub fn from_jwk(jwk: &Value) -> Result<DecryptionKey, Error> {
        let Value::Object(map) = jwk else { return Err(Error::BadKey("not a JSON object")) };
        let kid = usage(map)?;
        let (curve, point) = public_point(map).map_err(Error::BadKey)?;
        if !map.contains_key("d") {
            return Err(Error::BadKey("the JWK has no private key (`d`)"));
        }
        let d = fixed(map, "d", curve.len()).map_err(Error::BadKey)?;
        let key = PrivateKey::from_private_key(curve.agreement(), &d)
            .map_err(|_| Error::BadKey("the private key is not valid for its curve"))?;
        let public =
            key.compute_public_key().map_err(|_| Error::BadKey("the private key is not valid for its curve"))?;
        if public.as_ref() != point.as_slice() {
            return Err(Error::BadKey("the private key does not match the JWK's public members"));
        }
        Ok(DecryptionKey { curve, key, kid })
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Decrypts a compact JWE: five segments, a protected header that is a JSON object without
    /// duplicate members, `alg` ECDH-ES and `enc` A256GCM, an `epk` on this key's curve, an
    /// empty encrypted key, a 96-bit IV and a 128-bit tag. `zip` and `crit` are refused, as are
    /// keys named by the header (`jku`, `x5u`, `x5c`, `jwk`), and a `kid` other than this
    /// key's when both are known.
    pub fn decrypt(&self, compact: &str) -> Result<Vec<u8>, Error> {
        let parts: Vec<&str> = compact.splitn(6, '.').collect();
        let [h, encrypted_key, iv, ciphertext, tag] = parts[..] else {
            return Err(Error::Malformed("not five dot-separated parts"));
        };
        if h.is_empty() {
            return Err(Error::Malformed("empty header"));
        }
        let header = b64::decode(h).ok_or(Error::Malformed("header is not base64url"))?;
        let header = parse_object_no_duplicates(&header).map_err(|e| match e {
            Error::Duplicate(k) => Error::Duplicate(k),
            _ => Error::Malformed("header is not a JSON object"),
        })?;
        let inputs = self.check_header(&header)?;
        if !encrypted_key.is_empty() {
            return Err(Error::Malformed("the encrypted key must be empty with ECDH-ES"));
        }
        let iv = b64::decode(iv).ok_or(Error::Malformed("IV is not base64url"))?;
        let iv: [u8; IV_LEN] = iv.try_into().map_err(|_| Error::Malformed("IV is not 96 bits"))?;
        let tag = b64::decode(tag).ok_or(Error::Malformed("tag is not base64url"))?;
        if tag.len() != TAG_LEN {
            return Err(Error::Malformed("tag is not 128 bits"));
        }
        let mut buffer = b64::decode(ciphertext).ok_or(Error::Malformed("ciphertext is not base64url"))?;
        let key = agreement::agree(
            &self.key,
            UnparsedPublicKey::new(self.curve.agreement(), &inputs.epk),
            Error::Malformed("epk is not a valid public key"),
            |z| content_key(z, &inputs.apu, &inputs.apv),
        )?;
        buffer.extend_from_slice(&tag);
        let len = key
            .open_in_place(Nonce::from(&iv), Aad::from(h.as_bytes()), &mut buffer)
            .map_err(|_| Error::Decrypt)?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }

    /// Checks the protected header; returns what the key agreement takes from it.
    fn check_header(&self, header: &Map<String, Value>) -> Result<AgreementInputs, Error> {
        let text = |k: &str| match header.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(Error::Malformed("a header member has the wrong type")),
        };
        match text("alg")? {
            None => return Err(Error::Malformed("header has no alg")),
            Some(ALG) => {}
            Some(a) => return Err(Error::AlgNotAllowed(a.chars().take(32).collect())),
        }
        match text("enc")? {
            None => return Err(Error::Malformed("header has no enc")),
            Some(ENC) => {}
            Some(e) => return Err(Error::AlgNotAllowed(e.chars().take(32).collect())),
        }
        if header.contains_key("crit") || header.contains_key("zip") {
            return Err(Error::Crit);
        }
        for name in ["jku", "x5u", "x5c", "jwk"] {
            if header.contains_key(name) {
                return Err(Error::KeyInHeader(name));
            }
        }
        match text("kid")? {
            Some(k) if k.len() > MAX_KID => return Err(Error::Malformed("kid is not a short string")),
            Some(k) if self.kid.as_deref().is_some_and(|mine| mine != k) => return Err(Error::NoKey),
            _ => {}
        }
        text("cty")?;
        text("typ")?;
        let Some(Value::Object(epk)) = header.get("epk") else {
            return Err(Error::Malformed("header has no epk object"));
        };
        if PRIVATE_MEMBERS.iter().any(|k| epk.contains_key(*k)) {
            return Err(Error::Malformed("epk holds private key material"));
        }
        let (curve, point) = public_point(epk).map_err(|_| Error::Malformed("epk is not a usable public JWK"))?;
        if curve != self.curve {
            return Err(Error::KeyMismatch);
        }
        let party_info = |k: &str| -> Result<Vec<u8>, Error> {
            let Some(s) = text(k)? else { return Ok(Vec::new()) };
            match b64::decode(s) {
                Some(b) if b.len() <= MAX_PARTY_INFO => Ok(b),
                Some(_) => Err(Error::Malformed("apu or apv is too long")),
                None => Err(Error::Malformed("apu or apv is not base64url")),
            }
        };
        Ok(AgreementInputs { epk: point, apu: party_info("apu")?, apv: party_info("apv")? })
    }
}

/// What the key agreement takes from a header.
struct AgreementInputs {
    /// The sender's ephemeral public key, as aws-lc-rs takes it.
    epk: Vec<u8>,
    /// PartyUInfo, decoded (empty if absent).
    apu: Vec<u8>,
    /// PartyVInfo, decoded (empty if absent).
    apv: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin, EcPrivateKeyBin};

    use super::*;

    const CURVES: [Curve; 3] = [Curve::P256, Curve::P384, Curve::X25519];

    /// A fresh key pair as (public JWK, private JWK), both with `kid`, `use` and `alg`.
    fn key_pair(curve: Curve, kid: &str) -> (Value, Value) {
        let key = PrivateKey::generate(curve.agreement()).unwrap();
        let mut public = curve.public_jwk(key.compute_public_key().unwrap().as_ref()).unwrap();
        public.insert("kid".into(), json!(kid));
        public.insert("use".into(), json!("enc"));
        public.insert("alg".into(), json!("ECDH-ES"));
        let d = match curve {
            Curve::X25519 => AsBigEndian::<Curve25519SeedBin>::as_be_bytes(&key).unwrap().as_ref().to_vec(),
            _ => AsBigEndian::<EcPrivateKeyBin>::as_be_bytes(&key).unwrap().as_ref().to_vec(),
        };
        let mut private = public.clone();
        private.insert("d".into(), json!(b64::encode(&d)));
        (Value::Object(public), Value::Object(private))
    }

    fn keys(curve: Curve) -> (EncryptionKey, DecryptionKey) {
        let (public, private) = key_pair(curve, "k1");
        (EncryptionKey::from_jwk(&public).unwrap(), DecryptionKey::from_jwk(&private).unwrap())
    }

    fn header_of(token: &str) -> Map<String, Value> {
        let h = token.split('.').next().unwrap();
        parse_object_no_duplicates(&b64::decode(h).unwrap()).unwrap()
    }

    /// Sets member `k` to `v`, or removes it.
    fn with_member(map: &mut Map<String, Value>, k: &str, v: Option<Value>) {
        match v {
            Some(v) => map.insert(k.into(), v),
            None => map.remove(k),
        };
    }

    /// `token` with its header changed by `f` (which breaks the tag, but the header rules
    /// come first).
    fn reheader(token: &str, f: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut header = header_of(token);
        f(&mut header);
        let (_, rest) = token.split_once('.').unwrap();
        format!("{}.{rest}", b64::encode(Value::Object(header).to_string().as_bytes()))
    }

    #[test]
    fn round_trip_on_every_curve() {
        for curve in CURVES {
            let (enc, dec) = keys(curve);
            let plaintext = br#"{"sub":"alice","scope":"read"}"#;
            let token = enc.encrypt(plaintext, Some("JWT")).unwrap();
            assert_eq!(dec.decrypt(&token).unwrap(), plaintext, "{curve:?}");

            let parts: Vec<&str> = token.split('.').collect();
            assert_eq!(parts.len(), 5);
            assert_eq!(parts[1], "", "no encrypted key in direct mode");
            assert_eq!(b64::decode(parts[2]).unwrap().len(), IV_LEN);
            assert_eq!(b64::decode(parts[3]).unwrap().len(), plaintext.len());
            assert_eq!(b64::decode(parts[4]).unwrap().len(), TAG_LEN);
            let header = header_of(&token);
            assert_eq!(header["alg"], "ECDH-ES");
            assert_eq!(header["enc"], "A256GCM");
            assert_eq!(header["kid"], "k1");
            assert_eq!(header["cty"], "JWT");
            assert!(!header.contains_key("typ"));
            let epk = header["epk"].as_object().unwrap();
            assert_eq!(epk["crv"], curve.name());
            assert_eq!(epk["kty"], if curve == Curve::X25519 { "OKP" } else { "EC" });
            assert_eq!(epk.contains_key("y"), curve != Curve::X25519);
            assert!(!epk.contains_key("d"));
            assert_eq!(public_point(epk).unwrap().0, curve);

            // A fresh ephemeral key and IV every time.
            let again = enc.encrypt(plaintext, Some("JWT")).unwrap();
            assert_ne!(again, token);
            let again_parts: Vec<&str> = again.split('.').collect();
            assert_ne!(header_of(&again)["epk"], header["epk"]);
            assert_ne!(again_parts[2], parts[2]);
            assert_ne!(again_parts[3], parts[3]);
            assert_eq!(dec.decrypt(&again).unwrap(), plaintext);
        }
    }

    #[test]
    fn optional_header_members() {
        let (enc, dec) = keys(Curve::X25519);
        let token = enc.encrypt(b"", None).unwrap();
        let header = header_of(&token);
        assert!(!header.contains_key("cty") && !header.contains_key("typ"));
        assert_eq!(token.split('.').nth(3), Some(""), "empty plaintext, empty ciphertext");
        assert_eq!(dec.decrypt(&token).unwrap(), b"");
        let token = enc.encrypt_with_typ(b"x", Some("JWT"), Some("secevent+jwt")).unwrap();
        assert_eq!(header_of(&token)["typ"], "secevent+jwt");
        assert_eq!(dec.decrypt(&token).unwrap(), b"x");

        let (public, _) = key_pair(Curve::P256, "unused");
        let mut public = public.as_object().unwrap().clone();
        public.remove("kid");
        let anonymous = EncryptionKey::from_jwk(&Value::Object(public)).unwrap();
        assert_eq!(anonymous.kid(), None);
        assert!(!header_of(&anonymous.encrypt(b"x", None).unwrap()).contains_key("kid"));
    }

    #[test]
    fn debug_shows_kid_and_curve_only() {
        let (enc, dec) = keys(Curve::P384);
        assert_eq!(format!("{enc:?}"), r#"EncryptionKey { kid: Some("k1"), curve: "P-384", .. }"#);
        assert_eq!(format!("{dec:?}"), r#"DecryptionKey { kid: Some("k1"), curve: "P-384", .. }"#);
    }

    /// RFC 7518 Appendix C: ECDH-ES with A128GCM between Alice (ephemeral) and Bob.
    #[test]
    fn rfc7518_appendix_c() {
        let alice = json!({"kty":"EC","crv":"P-256",
            "x":"gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "y":"SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps",
            "d":"0_NxaRPUMQoAJt50Gz8YiTr8gRTwyEaCumd-MToTmIo"});
        let bob = json!({"kty":"EC","crv":"P-256",
            "x":"weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ",
            "y":"e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck",
            "d":"VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw"});
        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49, 110, 163, 218, 128,
            106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        // Both sides agree on the RFC's Z.
        for (mine, theirs) in [(&bob, &alice), (&alice, &bob)] {
            let key = DecryptionKey::from_jwk(mine).unwrap();
            let (_, point) = public_point(theirs.as_object().unwrap()).unwrap();
            let agreed = agreement::agree(&key.key, UnparsedPublicKey::new(&agreement::ECDH_P256, &point), (), |z| {
                Ok(z.to_vec())
            })
            .unwrap();
            assert_eq!(agreed, z);
        }
        let derived = concat_kdf(&z, "A128GCM", b"Alice", b"Bob", 128).unwrap();
        assert_eq!(b64::encode(&derived), "VqqN6vgjbSBcIijNcacQGg");
        // The public key of the RFC's Bob is a valid encryption key.
        let mut bob_public = bob.as_object().unwrap().clone();
        bob_public.remove("d");
        assert!(EncryptionKey::from_jwk(&Value::Object(bob_public)).is_ok());
    }

    #[test]
    fn concat_kdf_lengths() {
        // Longer than one SHA-256 block: the counter goes on, and the first block is a prefix.
        let long = concat_kdf(b"z", "A256GCM", b"", b"", 512).unwrap();
        assert_eq!(long.len(), 64);
        let short = concat_kdf(b"z", "A256GCM", b"", b"", 256).unwrap();
        assert_ne!(short[..], long[..32], "keydatalen is part of OtherInfo");
        assert!(concat_kdf(b"z", "A256GCM", b"", b"", 0).is_err());
        assert!(concat_kdf(b"z", "A256GCM", b"", b"", 100).is_err());
    }

    #[test]
    fn apu_and_apv_are_honoured_when_decrypting() {
        let (enc, dec) = keys(Curve::P256);
        let mut header = Map::new();
        header.insert("apu".into(), json!(b64::encode(b"Alice")));
        header.insert("apv".into(), json!(b64::encode(b"Bob")));
        let token = enc.seal(header.clone(), b"Alice", b"Bob", b"hello").unwrap();
        assert_eq!(dec.decrypt(&token).unwrap(), b"hello");
        // Party info in the KDF that the header does not state: another key, no decryption.
        header.remove("apv");
        let token = enc.seal(header, b"Alice", b"Bob", b"hello").unwrap();
        assert_eq!(dec.decrypt(&token), Err(Error::Decrypt));
    }

    #[test]
    fn every_changed_byte_is_detected() {
        let (enc, dec) = keys(Curve::P256);
        let token = enc.encrypt(b"the quick brown fox", Some("JWT")).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        for segment in [0, 2, 3, 4] {
            let bytes = b64::decode(parts[segment]).unwrap();
            for i in 0..bytes.len() {
                for bit in [0, 3, 7] {
                    let mut changed = bytes.clone();
                    changed[i] ^= 1 << bit;
                    let mut p = parts.clone();
                    let encoded = b64::encode(&changed);
                    p[segment] = &encoded;
                    assert!(dec.decrypt(&p.join(".")).is_err(), "segment {segment} byte {i} bit {bit}");
                }
            }
        }
        // Dropping or adding ciphertext bytes too.
        let mut p = parts.clone();
        let shorter = b64::encode(&b64::decode(parts[3]).unwrap()[1..]);
        p[3] = &shorter;
        assert_eq!(dec.decrypt(&p.join(".")), Err(Error::Decrypt));
    }

    #[test]
    fn another_key_does_not_decrypt() {
        for curve in CURVES {
            let (enc, _) = keys(curve);
            let (_, other) = keys(curve);
            let token = enc.encrypt(b"secret", None).unwrap();
            assert_eq!(other.decrypt(&token), Err(Error::Decrypt), "{curve:?}");
        }
        // A key on another curve is told apart by the epk.
        let (enc, _) = keys(Curve::P256);
        let (_, other) = keys(Curve::X25519);
        assert_eq!(other.decrypt(&enc.encrypt(b"secret", None).unwrap()), Err(Error::KeyMismatch));
        // A kid that names another key.
        let (public, private) = key_pair(Curve::P256, "a");
        let mut private = private.as_object().unwrap().clone();
        private.insert("kid".into(), json!("b"));
        let token = EncryptionKey::from_jwk(&public).unwrap().encrypt(b"secret", None).unwrap();
        assert_eq!(DecryptionKey::from_jwk(&Value::Object(private)).unwrap().decrypt(&token), Err(Error::NoKey));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let (enc, dec) = keys(Curve::P256);
        let token = enc.encrypt(b"payload", None).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let with = |i: usize, s: &str| {
            let mut p = parts.clone();
            p[i] = s;
            p.join(".")
        };
        for t in [
            String::new(),
            ".".into(),
            "a.b.c".into(),
            parts[..4].join("."),
            format!("{token}."),
            format!("{token}.x"),
            with(0, ""),
            with(0, "e30"),
            with(0, "!!"),
            with(0, &b64::encode(b"[1]")),
            with(0, &b64::encode(b"{\"alg\":\"ECDH-ES\"} x")),
            with(1, "AAAA"),
            with(2, "AAAA"),
            with(2, "AAAAAAAAAAAAAAAAAAAAAAAA"),
            with(2, "!"),
            with(3, "!"),
            with(3, "a"),
            with(4, &b64::encode(&[0; 15])),
            with(4, &b64::encode(&[0; 17])),
            with(4, ""),
            with(2, &format!("{}=", parts[2])),
        ] {
            assert!(dec.decrypt(&t).is_err(), "{t:?}");
        }

        let refused = |k: &str, v: Option<Value>| dec.decrypt(&reheader(&token, |h| with_member(h, k, v))).unwrap_err();
        assert_eq!(refused("alg", Some(json!("dir"))), Error::AlgNotAllowed("dir".into()));
        assert_eq!(refused("alg", Some(json!("none"))), Error::AlgNotAllowed("none".into()));
        assert_eq!(refused("alg", Some(json!("ECDH-ES+A256KW"))), Error::AlgNotAllowed("ECDH-ES+A256KW".into()));
        assert!(matches!(refused("alg", None), Error::Malformed(_)));
        assert!(matches!(refused("alg", Some(json!(1))), Error::Malformed(_)));
        assert_eq!(refused("enc", Some(json!("A128CBC-HS256"))), Error::AlgNotAllowed("A128CBC-HS256".into()));
        assert_eq!(refused("enc", Some(json!("A128GCM"))), Error::AlgNotAllowed("A128GCM".into()));
        assert!(matches!(refused("enc", None), Error::Malformed(_)));
        assert_eq!(refused("zip", Some(json!("DEF"))), Error::Crit);
        assert_eq!(refused("crit", Some(json!([]))), Error::Crit);
        assert_eq!(refused("crit", Some(json!(["exp"]))), Error::Crit);
        assert_eq!(refused("jku", Some(json!("https://evil"))), Error::KeyInHeader("jku"));
        assert_eq!(refused("jwk", Some(json!({}))), Error::KeyInHeader("jwk"));
        assert!(matches!(refused("kid", Some(json!(7))), Error::Malformed(_)));
        assert!(matches!(refused("kid", Some(json!("k".repeat(300)))), Error::Malformed(_)));
        assert!(matches!(refused("cty", Some(json!({}))), Error::Malformed(_)));
        assert!(matches!(refused("apu", Some(json!("!"))), Error::Malformed(_)));
        assert!(matches!(refused("apv", Some(json!(b64::encode(&[0; 300])))), Error::Malformed(_)));
        assert_eq!(refused("apu", Some(json!("QWxpY2U"))), Error::Decrypt);

        // The ephemeral key.
        assert!(matches!(refused("epk", None), Error::Malformed(_)));
        assert!(matches!(refused("epk", Some(json!("x"))), Error::Malformed(_)));
        let (other_curve, _) = key_pair(Curve::P384, "x");
        assert_eq!(refused("epk", Some(other_curve.clone())), Error::KeyMismatch);
        let (x25519, _) = key_pair(Curve::X25519, "x");
        assert_eq!(refused("epk", Some(x25519.clone())), Error::KeyMismatch);
        let epk = header_of(&token)["epk"].clone();
        let with_epk = |k: &str, v: Option<Value>| {
            let mut e = epk.as_object().unwrap().clone();
            with_member(&mut e, k, v);
            refused("epk", Some(Value::Object(e)))
        };
        assert!(matches!(with_epk("d", Some(json!(b64::encode(&[1; 32])))), Error::Malformed(_)));
        assert!(matches!(with_epk("y", None), Error::Malformed(_)));
        assert!(matches!(with_epk("x", Some(json!(b64::encode(&[1; 31])))), Error::Malformed(_)));
        assert!(matches!(with_epk("crv", Some(json!("P-521"))), Error::Malformed(_)));
        assert!(matches!(with_epk("kty", Some(json!("RSA"))), Error::Malformed(_)));
        // A point that is not on the curve.
        let off = with_epk("y", Some(json!(b64::encode(&[1; 32]))));
        assert_eq!(off, Error::Malformed("epk is not a valid public key"));

        // A duplicate header member.
        let h = b64::encode(br#"{"alg":"ECDH-ES","alg":"dir"}"#);
        assert!(matches!(dec.decrypt(&with(0, &h)), Err(Error::Duplicate(_))));
    }

    #[test]
    fn x25519_low_order_points_are_refused() {
        // The all-zero key and 1 are of small order: the shared secret would be all zeros.
        for x in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let jwk = json!({"kty":"OKP","crv":"X25519","x": b64::encode(&x)});
            assert!(EncryptionKey::from_jwk(&jwk).is_err());
        }
        let (enc, dec) = keys(Curve::X25519);
        let token = enc.encrypt(b"m", None).unwrap();
        let low = reheader(&token, |h| {
            h.insert("epk".into(), json!({"kty":"OKP","crv":"X25519","x": b64::encode(&[0; 32])}));
        });
        assert_eq!(dec.decrypt(&low), Err(Error::Malformed("epk is not a valid public key")));
    }

    #[test]
    fn encryption_keys_must_be_public_and_for_ecdh_es() {
        let (public, private) = key_pair(Curve::P256, "k");
        assert!(EncryptionKey::from_jwk(&public).is_ok());
        let changed = |k: &str, v: Option<Value>| {
            let mut m = public.as_object().unwrap().clone();
            with_member(&mut m, k, v);
            EncryptionKey::from_jwk(&Value::Object(m))
        };
        let refused = |k: &str, v: Option<Value>| changed(k, v).unwrap_err();
        assert!(matches!(EncryptionKey::from_jwk(&private), Err(Error::BadKey(m)) if m.contains("private")));
        for member in ["p", "q", "k"] {
            assert!(matches!(refused(member, Some(json!("AQAB"))), Error::BadKey(_)));
        }
        assert!(matches!(refused("use", Some(json!("sig"))), Error::BadKey(_)));
        assert!(matches!(refused("use", Some(json!(1))), Error::BadKey(_)));
        assert!(matches!(refused("alg", Some(json!("RSA-OAEP"))), Error::BadKey(_)));
        assert!(matches!(refused("alg", Some(json!("ECDH-ES+A256KW"))), Error::BadKey(_)));
        assert!(matches!(refused("key_ops", Some(json!(["encrypt"]))), Error::BadKey(_)));
        assert!(matches!(refused("key_ops", Some(json!([]))), Error::BadKey(_)));
        assert!(matches!(refused("key_ops", Some(json!("deriveKey"))), Error::BadKey(_)));
        assert!(matches!(refused("key_ops", Some(json!(["deriveKey", 1]))), Error::BadKey(_)));
        assert!(changed("key_ops", Some(json!(["deriveKey"]))).is_ok());
        assert!(changed("key_ops", Some(json!(["deriveBits", "other"]))).is_ok());
        assert!(changed("use", None).is_ok());
        assert!(changed("alg", None).is_ok());
        assert!(matches!(refused("kid", Some(json!(3))), Error::BadKey(_)));
        assert!(matches!(refused("kid", Some(json!("k".repeat(300)))), Error::BadKey(_)));
        // Coordinates.
        assert!(matches!(refused("x", Some(json!(b64::encode(&[1; 31])))), Error::BadKey(_)));
        assert!(matches!(refused("y", Some(json!(b64::encode(&[1; 48])))), Error::BadKey(_)));
        assert!(matches!(refused("x", Some(json!("not base64!"))), Error::BadKey(_)));
        assert!(matches!(refused("y", None), Error::BadKey(_)));
        let off_curve = refused("y", Some(json!(b64::encode(&[1; 32]))));
        assert_eq!(off_curve, Error::BadKey("the public key is not a valid point on its curve"));
        // Key types and curves.
        assert!(matches!(refused("crv", Some(json!("P-521"))), Error::BadKey(_)));
        assert!(matches!(refused("crv", Some(json!("secp256k1"))), Error::BadKey(_)));
        assert!(matches!(refused("kty", Some(json!("RSA"))), Error::BadKey(_)));
        assert!(matches!(refused("kty", None), Error::BadKey(_)));
        let ed25519 = json!({"kty":"OKP","crv":"Ed25519","x": b64::encode(&[9; 32])});
        assert!(matches!(EncryptionKey::from_jwk(&ed25519), Err(Error::BadKey(_))));
        assert!(matches!(EncryptionKey::from_jwk(&json!({"kty":"oct","k":"AAAA"})), Err(Error::BadKey(_))));
        assert!(matches!(EncryptionKey::from_jwk(&json!([])), Err(Error::BadKey(_))));
    }

    #[test]
    fn decryption_keys_need_a_matching_private_key() {
        for curve in CURVES {
            let (public, private) = key_pair(curve, "k");
            assert!(DecryptionKey::from_jwk(&private).is_ok());
            assert!(matches!(DecryptionKey::from_jwk(&public), Err(Error::BadKey(m)) if m.contains("no private")));
            let (_, other) = key_pair(curve, "k");
            let mut mixed = private.as_object().unwrap().clone();
            mixed.insert("d".into(), other["d"].clone());
            assert!(
                matches!(DecryptionKey::from_jwk(&Value::Object(mixed)), Err(Error::BadKey(m)) if m.contains("match"))
            );
            let mut short = private.as_object().unwrap().clone();
            short.insert("d".into(), json!(b64::encode(&[1; 16])));
            assert!(DecryptionKey::from_jwk(&Value::Object(short)).is_err());
            let mut sig = private.as_object().unwrap().clone();
            sig.insert("use".into(), json!("sig"));
            assert!(DecryptionKey::from_jwk(&Value::Object(sig)).is_err());
        }
        // A P-256 scalar of zero, or not below the group order, is no key.
        let (_, private) = key_pair(Curve::P256, "k");
        for d in [[0u8; 32], [0xff; 32]] {
            let mut bad = private.as_object().unwrap().clone();
            bad.insert("d".into(), json!(b64::encode(&d)));
            assert!(DecryptionKey::from_jwk(&Value::Object(bad)).is_err());
        }
    }

    #[test]
    fn keys_from_json_text() {
        let (a, _) = key_pair(Curve::P256, "a");
        let (b, b_private) = key_pair(Curve::X25519, "b");
        let mut sig = b.as_object().unwrap().clone();
        sig.insert("use".into(), json!("sig"));
        sig.insert("kid".into(), json!("s"));
        let sig = Value::Object(sig);

        assert_eq!(EncryptionKey::from_json(a.to_string().as_bytes()).unwrap().kid(), Some("a"));
        let set = |keys: Vec<&Value>| json!({ "keys": keys }).to_string();
        assert_eq!(EncryptionKey::from_json(set(vec![&sig, &a]).as_bytes()).unwrap().kid(), Some("a"));
        assert_eq!(EncryptionKey::from_json(set(vec![&b]).as_bytes()).unwrap().kid(), Some("b"));
        let two = EncryptionKey::from_json(set(vec![&a, &b]).as_bytes()).unwrap_err();
        assert!(matches!(two, Error::BadKey(m) if m.contains("more than one")));
        let none = EncryptionKey::from_json(set(vec![&sig, &sig]).as_bytes()).unwrap_err();
        assert!(matches!(none, Error::BadKey(m) if m.contains("no key usable")));
        // With a single key, its own problem is the answer.
        let only_sig = EncryptionKey::from_json(set(vec![&sig]).as_bytes()).unwrap_err();
        assert!(matches!(only_sig, Error::BadKey(m) if m.contains("`use`")));
        let leaked = EncryptionKey::from_json(set(vec![&a, &b_private]).as_bytes()).unwrap_err();
        assert!(matches!(leaked, Error::BadKey(m) if m.contains("private")));
        assert!(EncryptionKey::from_json(set(vec![]).as_bytes()).is_err());
        assert!(EncryptionKey::from_json(br#"{"keys":{}}"#).is_err());
        assert!(EncryptionKey::from_json(b"not json").is_err());
        assert!(EncryptionKey::from_json(b"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn decrypt_never_panics(s in "\\PC{0,300}") {
            thread_local! {
                static KEY: DecryptionKey = keys(Curve::P256).1;
            }
            KEY.with(|key| {
                let _ = key.decrypt(&s);
            });
        }

        /// Token-shaped input: five segments of arbitrary base64url, or a real token with one
        /// character replaced, never panics and never decrypts to anything.
        #[test]
        fn changed_tokens_never_decrypt(
            segments in proptest::collection::vec("[A-Za-z0-9_-]{0,40}", 5),
            pos in proptest::num::usize::ANY,
            replacement in proptest::char::any(),
        ) {
            thread_local! {
                static PAIR: (DecryptionKey, String) = {
                    let (enc, dec) = keys(Curve::X25519);
                    let token = enc.encrypt(b"payload", Some("JWT")).unwrap();
                    (dec, token)
                };
            }
            PAIR.with(|(key, token)| {
                proptest::prop_assert!(key.decrypt(&segments.join(".")).is_err());
                let mut chars: Vec<char> = token.chars().collect();
                let pos = pos % chars.len();
                if chars[pos] != replacement {
                    chars[pos] = replacement;
                    let changed: String = chars.into_iter().collect();
                    proptest::prop_assert!(key.decrypt(&changed).is_err());
                }
                Ok(())
            })?;
        }
    }
}
