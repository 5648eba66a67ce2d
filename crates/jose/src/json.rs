//! Reading a token's JSON objects member by member, as strictly as `serde_json::Value` would
//! read them, but building only the members a caller asks for.
//!
//! A JOSE header or a token's claims are read on every uncached token. Reading them whole into
//! a `serde_json::Map` (a tree of small allocations, freed again when the token is done with)
//! cost more than everything else about the token except its signature.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::Error;

/// Above this many members, repeated names are found by sorting rather than by comparing each
/// new name with those before it.
const LINEAR_NAMES: usize = 32;

/// A member name: borrowed from the JSON text unless it had escapes.
pub struct Name<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor).map(Name)
    }
}

/// A string, borrowed from the JSON text unless it had escapes.
struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A value that matters only if it is a string (an array element, a member of an object):
/// `Some` for a string, `None` for anything else, which is still read and checked.
pub struct Text<'a>(pub Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor { keep: true }).map(Text)
    }
}

/// A value read and checked as strictly as `serde_json::Value` reads it (strings are UTF-8
/// without lone surrogates, numbers in range), then dropped. `serde::de::IgnoredAny` would
/// skip strings unchecked, so text a later full read refuses could pass here.
pub struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor { keep: false }).map(|_| Skip)
    }
}

/// `keep`: whether a string is wanted, or only checked.
struct AnyVisitor {
    keep: bool,
}

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.keep.then(|| Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(None)
    }
}

/// The names of an object's members, for refusing repeated ones (RFC 7515 §4, RFC 7519 §4:
/// accepting the last of two would invite confusion between two parsers).
#[derive(Debug, Default)]
pub struct Names<'a>(Vec<Cow<'a, str>>);

impl<'a> Names<'a> {
    /// Adds a member's name. Fails on a name seen before (found here for the first
    /// [`LINEAR_NAMES`] names, by [`Names::finish`] after that).
    pub fn add<E: de::Error>(&mut self, name: Cow<'a, str>) -> Result<(), E> {
        if self.0.len() < LINEAR_NAMES && self.0.contains(&name) {
            return Err(duplicate(&name));
        }
        self.0.push(name);
        Ok(())
    }

    /// Checks the names past the first [`LINEAR_NAMES`]; call once all are added.
    pub fn finish<E: de::Error>(&self) -> Result<(), E> {
        if self.0.len() > LINEAR_NAMES {
            let mut sorted: Vec<&str> = self.0.iter().map(|n| &**n).collect();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(duplicate(w[0]));
            }
        }
        Ok(())
    }

    /// Whether a member of this name was there.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

fn duplicate<E: de::Error>(name: &str) -> E {
    E::custom(format_args!("duplicate:{name}"))
}

/// Reads one JSON object from `bytes` with `visitor` (which reports repeated names through
/// [`Names`]); nothing may follow it. `what` names the object in the error.
pub fn read_object<'de, V: Visitor<'de>>(bytes: &'de [u8], visitor: V, what: &'static str) -> Result<V::Value, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = de.deserialize_map(visitor).map_err(|e| match e.to_string().strip_prefix("duplicate:") {
        Some(rest) => Error::Duplicate(rest.split(' ').next().unwrap_or("").chars().take(32).collect()),
        None => Error::Malformed(what),
    })?;
    de.end().map_err(|_| Error::Malformed("trailing characters after the JSON object"))?;
    Ok(value)
}
