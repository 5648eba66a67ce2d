//! Compact JWS (RFC 7515 §7.1): `header.payload.signature`, each base64url.
//!
//! The header is judged before any key is looked at: the algorithm must be one the caller
//! accepts (`none` never, in any spelling), keys named by the token itself are refused
//! (`jku`, `x5u`, `x5c` always; `jwk` unless the caller expects one, as a DPoP proof does),
//! and nothing critical we do not implement is tolerated (`crit`, `b64`, `zip`).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::{Algorithm, Error, Jwk, b64};

/// Longest `kid` accepted.
const MAX_KID: usize = 256;

/// What a caller expects of the header beyond the common rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderPolicy {
    /// The header must carry a public `jwk` (DPoP proofs, RFC 9449 §4.2).
    pub embedded_jwk: bool,
}

/// The parts of a JWS header Portcullis uses.
#[derive(Clone, Debug)]
pub struct Header {
    /// The signature algorithm.
    pub alg: Algorithm,
    /// The key id, if any.
    pub kid: Option<String>,
    /// The media type, if any.
    pub typ: Option<String>,
    /// The embedded public key, where the policy expects one.
    pub jwk: Option<Jwk>,
}

/// A parsed compact JWS. The signature is not verified yet.
#[derive(Clone, Debug)]
pub struct Jws<'a> {
    /// The header.
    pub header: Header,
    /// The decoded payload.
    pub payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
    signing_input: &'a str,
}

impl<'a> Jws<'a> {
    /// Parses `token` and checks its header against the common rules and `policy`.
    pub fn parse(token: &'a str, policy: HeaderPolicy) -> Result<Jws<'a>, Error> {
        let mut parts = token.splitn(4, '.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::Malformed("not three dot-separated parts"));
        };
        if parts.next().is_some() {
            return Err(Error::Malformed("encrypted or nested tokens are not accepted"));
        }
        if h.is_empty() {
            return Err(Error::Malformed("empty header"));
        }
        let header_bytes = b64::decode(h).ok_or(Error::Malformed("header is not base64url"))?;
        // The header first, so that an unsigned token is refused as what it is.
        let header = parse_header(&header_bytes, policy)?;
        if s.is_empty() {
            return Err(Error::Malformed("empty signature"));
        }
        let payload = b64::decode(p).ok_or(Error::Malformed("payload is not base64url"))?;
        let signature = b64::decode(s).ok_or(Error::Malformed("signature is not base64url"))?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        Ok(Jws { header, payload, signature, signing_input })
    }

    /// The bytes the signature covers: `header.payload` as sent.
    pub fn signing_input(&self) -> &[u8] {
        self.signing_input.as_bytes()
    }
}

/// A header member the rules look at.
#[derive(Default)]
enum Member {
    #[default]
    Absent,
    Text(String),
    /// Present, not a string.
    Other,
}

impl Member {
    fn read<'de, A: MapAccess<'de>>(access: &mut A) -> Result<Member, A::Error> {
        Ok(match access.next_value::<crate::json::Text>()?.0 {
            Some(t) => Member::Text(t.into_owned()),
            None => Member::Other,
        })
    }
}

/// The header's members as the rules need them; the rest are checked and skipped.
#[derive(Default)]
struct RawHeader {
    alg: Member,
    kid: Member,
    typ: Member,
    jwk: Option<Value>,
    /// `jku`, `x5u`, `x5c` present.
    named_keys: [bool; 3],
    /// `crit`, `b64` or `zip` present.
    crit: bool,
}

const NAMED_KEYS: [&str; 3] = ["jku", "x5u", "x5c"];

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawHeader, A::Error> {
        let mut header = RawHeader::default();
        let mut names = crate::json::Names::default();
        while let Some(crate::json::Name(name)) = access.next_key()? {
            match &*name {
                "alg" => header.alg = Member::read(&mut access)?,
                "kid" => header.kid = Member::read(&mut access)?,
                "typ" => header.typ = Member::read(&mut access)?,
                "jwk" => header.jwk = Some(access.next_value()?),
                other => {
                    if let Some(i) = NAMED_KEYS.iter().position(|k| *k == other) {
                        header.named_keys[i] = true;
                    }
                    header.crit |= matches!(other, "crit" | "b64" | "zip");
                    access.next_value::<crate::json::Skip>()?;
                }
            }
            names.add(name)?;
        }
        names.finish()?;
        Ok(header)
    }
}

fn parse_header(bytes: &[u8], policy: HeaderPolicy) -> Result<Header, Error> {
    let raw = crate::json::read_object(bytes, HeaderVisitor, "header is not a JSON object")?;
    let alg = match &raw.alg {
        Member::Text(a) if a.eq_ignore_ascii_case("none") => return Err(Error::AlgNone),
        Member::Text(a) => Algorithm::parse(a).ok_or_else(|| Error::AlgNotAllowed(a.chars().take(32).collect()))?,
        _ => return Err(Error::Malformed("header has no alg")),
    };
    if let Some(i) = raw.named_keys.iter().position(|present| *present) {
        return Err(Error::KeyInHeader(NAMED_KEYS[i]));
    }
    if raw.crit {
        return Err(Error::Crit);
    }
    let jwk = match (raw.jwk, policy.embedded_jwk) {
        (Some(_), false) => return Err(Error::KeyInHeader("jwk")),
        (None, true) => return Err(Error::Malformed("the header has no jwk")),
        (None, false) => None,
        (Some(v), true) => {
            // A key the token carries itself is only ever a public key of a key pair: a
            // private part is a leak to refuse, a symmetric key would let anyone sign.
            let jwk = Jwk::from_value(v)?;
            if jwk.has_private {
                return Err(Error::BadKey("the embedded jwk holds private key material"));
            }
            if matches!(jwk.kind, crate::KeyKind::Oct) {
                return Err(Error::BadKey("the embedded jwk is a symmetric key"));
            }
            Some(jwk)
        }
    };
    let kid = match raw.kid {
        Member::Absent => None,
        Member::Text(k) if k.len() <= MAX_KID => Some(k),
        _ => return Err(Error::Malformed("kid is not a short string")),
    };
    let typ = match raw.typ {
        Member::Absent => None,
        Member::Text(t) => Some(t),
        Member::Other => return Err(Error::Malformed("typ is not a string")),
    };
    Ok(Header { alg, kid, typ, jwk })
}

/// Parses a JSON object whose top-level member names are all different (RFC 7515 §4 and
/// RFC 7519 §4 allow rejecting duplicates; accepting the last one invites confusion between
/// two parsers).
pub fn parse_object_no_duplicates(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    struct Whole;
    impl<'de> Visitor<'de> for Whole {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = Map::new();
            let mut names = crate::json::Names::default();
            while let Some(crate::json::Name(name)) = access.next_key()? {
                let value: Value = access.next_value()?;
                let key = name.to_string();
                names.add(name)?;
                map.insert(key, value);
            }
            names.finish()?;
            Ok(map)
        }
    }
    crate::json::read_object(bytes, Whole, "not a JSON object")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64::encode(header.as_bytes()), b64::encode(payload.as_bytes()))
    }

    fn parse(header: &str) -> Result<Header, Error> {
        let t = token(header, "{}");
        Jws::parse(&t, HeaderPolicy::default()).map(|j| j.header)
    }

    #[test]
    fn accepts_a_plain_header() {
        let h = parse(r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#).unwrap();
        assert_eq!(h.alg, Algorithm::RS256);
        assert_eq!(h.kid.as_deref(), Some("k1"));
        assert_eq!(h.typ.as_deref(), Some("at+jwt"));
    }

    #[test]
    fn refuses_none_in_any_spelling() {
        for a in ["none", "None", "NONE", "nOnE"] {
            assert_eq!(parse(&format!(r#"{{"alg":"{a}"}}"#)).unwrap_err(), Error::AlgNone, "{a}");
        }
        assert!(matches!(parse(r#"{"alg":"rs256"}"#), Err(Error::AlgNotAllowed(_))), "names are case-sensitive");
        assert!(matches!(parse(r#"{"alg":""}"#), Err(Error::AlgNotAllowed(_))));
        assert!(matches!(parse(r#"{"alg":1}"#), Err(Error::Malformed(_))));
        assert!(matches!(parse(r#"{}"#), Err(Error::Malformed(_))));
    }

    #[test]
    fn refuses_keys_named_by_the_token() {
        for (k, v) in
            [("jku", r#""https://evil/jwks""#), ("x5u", r#""https://evil/c""#), ("x5c", r#"["MII"]"#), ("jwk", "{}")]
        {
            let h = format!(r#"{{"alg":"RS256","{k}":{v}}}"#);
            assert!(matches!(parse(&h), Err(Error::KeyInHeader(_))), "{k}");
        }
    }

    #[test]
    fn refuses_critical_extensions() {
        for h in [
            r#"{"alg":"RS256","crit":["exp"]}"#,
            r#"{"alg":"RS256","crit":[]}"#,
            r#"{"alg":"RS256","b64":false}"#,
            r#"{"alg":"RS256","zip":"DEF"}"#,
        ] {
            assert_eq!(parse(h).unwrap_err(), Error::Crit, "{h}");
        }
    }

    #[test]
    fn refuses_duplicates_and_junk() {
        assert!(matches!(parse(r#"{"alg":"RS256","alg":"HS256"}"#), Err(Error::Duplicate(_))));
        assert!(matches!(parse(r#"{"alg":"RS256"} x"#), Err(Error::Malformed(_))));
        assert!(matches!(parse(r#"["alg"]"#), Err(Error::Malformed(_))));
        assert!(matches!(parse(r#"{"alg":"RS256","kid":7}"#), Err(Error::Malformed(_))));
        let long_kid = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(300));
        assert!(matches!(parse(&long_kid), Err(Error::Malformed(_))));
    }

    #[test]
    fn refuses_malformed_compact_forms() {
        let policy = HeaderPolicy::default();
        for t in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "a.b.c.d.e",
            ".e30.c2ln",
            "eyJhbGciOiJSUzI1NiJ9.e30.",
            "eyJhbGciOiJSUzI1NiJ9.e30=.c2ln",
        ] {
            assert!(Jws::parse(t, policy).is_err(), "{t:?}");
        }
    }

    #[test]
    fn the_signing_input_is_what_was_sent() {
        let t = token(r#"{"alg":"ES256"}"#, r#"{"a":1}"#);
        let j = Jws::parse(&t, HeaderPolicy::default()).unwrap();
        assert_eq!(j.signing_input(), t.rsplit_once('.').unwrap().0.as_bytes());
        assert_eq!(j.payload, br#"{"a":1}"#);
        assert_eq!(j.signature, b"sig");
    }

    #[test]
    fn dpop_style_headers_require_a_jwk() {
        let policy = HeaderPolicy { embedded_jwk: true };
        let t = token(r#"{"alg":"ES256","typ":"dpop+jwt"}"#, "{}");
        assert!(Jws::parse(&t, policy).is_err());
    }

    /// A JSON value for a header member: the types headers hold, nested a little.
    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("RS256".to_string()),
                Just("ES256".to_string()),
                Just("EdDSA".to_string()),
                Just("none".to_string()),
                Just("EC".to_string()),
                Just("P-256".to_string()),
                "\\PC{0,12}",
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(member_name(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Member names, mostly the ones the header rules look at.
    fn member_name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::sample::select(vec![
                "alg", "kid", "typ", "jwk", "jku", "x5u", "x5c", "crit", "b64", "zip", "kty", "crv", "x", "y", "n",
                "e",
            ])
            .prop_map(str::to_string),
            "[a-z]{1,6}",
        ]
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = Jws::parse(&s, HeaderPolicy::default());
            let _ = Jws::parse(&s, HeaderPolicy { embedded_jwk: true });
        }

        /// Token-shaped input (a base64url JSON header, arbitrary payload and signature)
        /// reaches the header rules; parsing never panics, and what it accepts is exactly
        /// what was sent.
        #[test]
        fn token_shaped_input(
            header in proptest::collection::btree_map(member_name(), json_value(), 0..6),
            alg in proptest::option::of(proptest::sample::select(vec!["RS256", "ES256", "EdDSA", "HS256", "none", "NONE"])),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            signature in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let mut header: Map<String, Value> = header.into_iter().collect();
            if let Some(alg) = alg {
                header.insert("alg".into(), Value::String(alg.into()));
            }
            // The header's own `alg` (the generated members may hold one too).
            let effective = header.get("alg").and_then(Value::as_str).map(str::to_owned);
            let h = b64::encode(Value::Object(header).to_string().as_bytes());
            let t = format!("{h}.{}.{}", b64::encode(&payload), b64::encode(&signature));
            for policy in [HeaderPolicy::default(), HeaderPolicy { embedded_jwk: true }] {
                if let Ok(j) = Jws::parse(&t, policy) {
                    proptest::prop_assert!(effective.as_deref().is_some_and(|a| !a.eq_ignore_ascii_case("none")));
                    proptest::prop_assert_eq!(&j.payload, &payload);
                    proptest::prop_assert_eq!(&j.signature, &signature);
                    proptest::prop_assert_eq!(j.signing_input(), t.rsplit_once('.').unwrap().0.as_bytes());
                }
            }
        }

        /// A repeated member name is refused, however its second occurrence is spelt
        /// (`"alg"` and `"\u0061lg"` are the same name); distinct names are all kept.
        #[test]
        fn duplicate_members_are_refused(
            names in proptest::collection::btree_set("[a-z]{1,8}", 1..8),
            pick in proptest::num::usize::ANY,
            escape in proptest::bool::ANY,
        ) {
            let names: Vec<String> = names.into_iter().collect();
            let members: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("\"{n}\":{i}")).collect();
            let unique = format!("{{{}}}", members.join(","));
            proptest::prop_assert_eq!(parse_object_no_duplicates(unique.as_bytes()).unwrap().len(), names.len());
            let dup = &names[pick % names.len()];
            let spelt = if escape { format!("\\u{:04x}{}", dup.as_bytes()[0], &dup[1..]) } else { dup.clone() };
            let repeated = format!("{{{},\"{spelt}\":null}}", members.join(","));
            proptest::prop_assert_eq!(parse_object_no_duplicates(repeated.as_bytes()), Err(Error::Duplicate(dup.clone())));
        }
    }
}
