//! A token's claims as a verifier reads them: the registered claims it checks and the ones a
//! principal is made of, borrowed from the decoded payload; every other member is checked and
//! skipped without being built ([`crate::json`]). The payload itself can be kept for whatever
//! wants the rest.
//!
//! Why not `serde_json::Map`: reading every claim into a map, and later freeing it when the
//! verified token leaves the cache, was about a quarter of what a token costs besides its
//! signature check. Why not a `#[derive(Deserialize)]` struct: it would not see repeated
//! members it does not know, and a repeated member is refused whichever it is.

use std::borrow::Cow;
use std::fmt;

use crate::json::{Name, Names, Skip, Text, read_object};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A claim's value, as far as the checks look at it.
#[derive(Debug, Default, PartialEq)]
pub enum Claim<'a> {
    /// Not in the token.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// A number.
    Number(f64),
    /// A string.
    Text(Cow<'a, str>),
    /// An array: the strings in it (other elements are not looked at).
    List(Vec<Cow<'a, str>>),
    /// An object: its `jkt` and `x5t#S256` members where they are strings (as in `cnf`).
    Object {
        /// `jkt`, if a string.
        jkt: Option<Cow<'a, str>>,
        /// `x5t#S256`, if a string.
        x5t_s256: Option<Cow<'a, str>>,
        /// Whether the object has anything else: another member (`jwk`, `kid`, `jku`, any
        /// name), or a `jkt` or `x5t#S256` that is not a string. For `cnf` (RFC 7800) that is
        /// a confirmation method a verifier of only those two cannot check.
        other: bool,
    },
    /// `true` or `false`.
    Bool,
}

/// The claims the verifier and the principal need, and the names of all of them.
#[derive(Debug, Default)]
pub struct TokenClaims<'a> {
    /// `iss`.
    pub iss: Claim<'a>,
    /// `sub`.
    pub sub: Claim<'a>,
    /// `aud`.
    pub aud: Claim<'a>,
    /// `exp`.
    pub exp: Claim<'a>,
    /// `nbf`.
    pub nbf: Claim<'a>,
    /// `iat`.
    pub iat: Claim<'a>,
    /// `jti`.
    pub jti: Claim<'a>,
    /// `client_id`.
    pub client_id: Claim<'a>,
    /// `azp`.
    pub azp: Claim<'a>,
    /// `scope`.
    pub scope: Claim<'a>,
    /// `scp`.
    pub scp: Claim<'a>,
    /// `cnf`.
    pub cnf: Claim<'a>,
    names: Names<'a>,
}

impl<'a> TokenClaims<'a> {
    /// Reads a JSON object whose members all have different names.
    pub fn parse(json: &'a [u8]) -> Result<TokenClaims<'a>, crate::Error> {
        read_object(json, ClaimsVisitor, "not a JSON object")
    }

    /// Whether the token has a claim of this name (even `null`).
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

struct ClaimsVisitor;

impl<'de> Visitor<'de> for ClaimsVisitor {
    type Value = TokenClaims<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TokenClaims<'de>, A::Error> {
        let mut claims = TokenClaims::default();
        while let Some(Name(name)) = access.next_key()? {
            let slot = match &*name {
                "iss" => &mut claims.iss,
                "sub" => &mut claims.sub,
                "aud" => &mut claims.aud,
                "exp" => &mut claims.exp,
                "nbf" => &mut claims.nbf,
                "iat" => &mut claims.iat,
                "jti" => &mut claims.jti,
                "client_id" => &mut claims.client_id,
                "azp" => &mut claims.azp,
                "scope" => &mut claims.scope,
                "scp" => &mut claims.scp,
                "cnf" => &mut claims.cnf,
                _ => {
                    claims.names.add(name)?;
                    access.next_value::<Skip>()?;
                    continue;
                }
            };
            claims.names.add(name)?;
            *slot = access.next_value()?;
        }
        claims.names.finish()?;
        Ok(claims)
    }
}

impl<'de> Deserialize<'de> for Claim<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ClaimVisitor)
    }
}

struct ClaimVisitor;

impl<'de> Visitor<'de> for ClaimVisitor {
    type Value = Claim<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Claim::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Claim::Bool)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Claim::Number(v as f64))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Claim::Number(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Claim::Number(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Claim::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Claim::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Claim::Text(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut list = Vec::new();
        while let Some(Text(e)) = seq.next_element()? {
            list.extend(e);
        }
        Ok(Claim::List(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Within a claim, a repeated member counts as its last value, as in a JSON map.
        // `None`: absent; `Some(None)`: there, but not a string.
        let (mut jkt, mut x5t_s256, mut unknown) = (None, None, false);
        while let Some(Name(name)) = map.next_key()? {
            let slot = match &*name {
                "jkt" => &mut jkt,
                "x5t#S256" => &mut x5t_s256,
                _ => {
                    map.next_value::<Skip>()?;
                    unknown = true;
                    continue;
                }
            };
            *slot = Some(map.next_value::<Text>()?.0);
        }
        let other = unknown || matches!(jkt, Some(None)) || matches!(x5t_s256, Some(None));
        Ok(Claim::Object { jkt: jkt.flatten(), x5t_s256: x5t_s256.flatten(), other })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn parse(v: &str) -> Result<TokenClaims<'_>, crate::Error> {
        TokenClaims::parse(v.as_bytes())
    }

    #[test]
    fn reads_what_the_checks_need_and_skips_the_rest() {
        let text = r#"{"iss":"https://idp","sub":"al\u0069ce","aud":["a",1,"b",{"x":1}],"exp":1.8e9,"nbf":-1,
            "iat":17,"jti":null,"client_id":true,"scope":"r w","scp":["x"],"cnf":{"jkt":"T","jkt2":[1],"x5t#S256":2},
            "other":{"deep":[1,{"a":"b"}]},"\u0065mail":"e"}"#;
        let c = parse(text).unwrap();
        assert_eq!(c.iss, Claim::Text("https://idp".into()));
        assert_eq!(c.sub, Claim::Text("alice".into()), "escapes are decoded");
        assert_eq!(c.aud, Claim::List(vec!["a".into(), "b".into()]));
        assert_eq!(c.exp, Claim::Number(1.8e9));
        assert_eq!(c.nbf, Claim::Number(-1.0));
        assert_eq!(c.iat, Claim::Number(17.0));
        assert_eq!(c.jti, Claim::Null);
        assert_eq!(c.client_id, Claim::Bool);
        assert_eq!(c.azp, Claim::Absent);
        assert_eq!(c.scope, Claim::Text("r w".into()));
        assert_eq!(c.scp, Claim::List(vec!["x".into()]));
        assert_eq!(c.cnf, Claim::Object { jkt: Some("T".into()), x5t_s256: None, other: true });
        fn cnf(text: &str) -> Claim<'_> {
            parse(text).unwrap().cnf
        }
        assert_eq!(
            cnf(r#"{"cnf":{"jkt":"T"}}"#),
            Claim::Object { jkt: Some("T".into()), x5t_s256: None, other: false }
        );
        assert_eq!(
            cnf(r#"{"cnf":{"jkt":"T","x5t#S256":"X"}}"#),
            Claim::Object { jkt: Some("T".into()), x5t_s256: Some("X".into()), other: false }
        );
        // What a verifier of `jkt` and `x5t#S256` cannot check is marked, never dropped.
        for text in [
            r#"{"cnf":{"jkt":["T"]}}"#,
            r#"{"cnf":{"x5t#S256":null}}"#,
            r#"{"cnf":{"jwk":{"kty":"EC"}}}"#,
            r#"{"cnf":{"kid":"k"}}"#,
            r#"{"cnf":{"jkt":"T","jku":"https://x"}}"#,
            r#"{"cnf":{"jkt":"T","jkt":7}}"#,
        ] {
            assert!(matches!(cnf(text), Claim::Object { other: true, .. }), "{text}");
        }
        // A repeated member counts as its last value, as in a JSON map.
        assert_eq!(
            cnf(r#"{"cnf":{"jkt":7,"jkt":"T"}}"#),
            Claim::Object { jkt: Some("T".into()), x5t_s256: None, other: false }
        );
        assert!(c.has("other") && c.has("email") && c.has("jti") && !c.has("azp"));
    }

    #[test]
    fn refuses_repeated_members_whatever_they_are() {
        for text in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"x":1,"y":2,"x":3}"#,
            r#"{"exp":1,"\u0065xp":2}"#,
            r#"{"a":{"b":1},"a":null}"#,
        ] {
            assert!(matches!(parse(text), Err(crate::Error::Duplicate(_))), "{text}");
        }
        // Past the linear check, too.
        let mut many: serde_json::Map<String, Value> = (0..100).map(|i| (format!("c{i}"), json!(i))).collect();
        many.insert("sub".into(), json!("s"));
        let text = serde_json::to_string(&many).unwrap();
        assert!(parse(&text).is_ok());
        let repeated = format!("{},\"c57\":0}}", text.trim_end_matches('}'));
        assert!(matches!(parse(&repeated), Err(crate::Error::Duplicate(n)) if n == "c57"));
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for text in ["", "[]", "\"x\"", "{", r#"{"a":1} {}"#, r#"{"a":1}x"#, r#"{"a":}"#, "{\"a\":\"\\ud800\"}"] {
            assert!(matches!(parse(text), Err(crate::Error::Malformed(_))), "{text}");
        }
        // Bytes that are not UTF-8, in a member no check looks at.
        assert!(TokenClaims::parse(b"{\"x\":\"\xff\"}").is_err());
        assert!(TokenClaims::parse(b"{\"x\":[{\"y\":\"\xc3\"}]}").is_err());
        assert!(TokenClaims::parse(b"{\"x\":1e400}").is_err());
    }

    proptest! {
        /// Whatever the bytes, the reader agrees with serde_json on whether they are one JSON
        /// object without repeated names, and finds the same `sub` and `exp`.
        #[test]
        fn agrees_with_serde_json(obj in proptest::collection::vec(
            ("(sub|exp|aud|x|y|cnf)", prop_oneof![
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|n| json!(n)),
                "[a-z\\\\\"é]{0,4}".prop_map(|s| json!(s)),
                Just(json!(null)),
                Just(json!(["a", 2])),
                Just(json!({"jkt": "k"})),
            ]),
            0..6,
        )) {
            let text = format!("{{{}}}", obj.iter().map(|(k, v)| format!("{}:{v}", json!(k))).collect::<Vec<_>>().join(","));
            let mut seen = std::collections::HashSet::new();
            let unique = obj.iter().all(|(k, _)| seen.insert(k.clone()));
            let ours = parse(&text);
            prop_assert_eq!(ours.is_ok(), unique, "{}", text);
            if let Ok(c) = ours {
                let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
                match map.get("sub") {
                    None => prop_assert_eq!(&c.sub, &Claim::Absent),
                    Some(Value::String(s)) => prop_assert_eq!(&c.sub, &Claim::Text(s.as_str().into())),
                    Some(_) => prop_assert!(!matches!(c.sub, Claim::Text(_) | Claim::Absent)),
                }
                match map.get("exp").and_then(Value::as_f64) {
                    Some(f) => prop_assert_eq!(&c.exp, &Claim::Number(f)),
                    None => prop_assert!(!matches!(c.exp, Claim::Number(_))),
                }
            }
        }
    }
}
