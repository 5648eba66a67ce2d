//! Finding every typing error in one run.
//!
//! Serde stops at the first error. To report them all, the config is typed again and again
//! from a tree of the YAML document: each error found is recorded, the node it is about is
//! neutralised (an unknown key is dropped, a missing key or a wrong value is replaced by a
//! stand-in that types as anything), and typing is retried, until it succeeds or a bound is
//! reached. Scalars are typed by serde-saphyr itself, from their own YAML text, so each value
//! means exactly what it means in the real load; only mappings and sequences are walked here.
//! Nothing here knows the config's keys: it works for any `Deserialize` type.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};

/// A node of the YAML document, with the key path it has in the file.
#[derive(Clone, Debug)]
pub(super) struct Item {
    /// Key path in the file, e.g. `routes[2].match`.
    pub path: String,
    /// The node.
    pub value: Value,
}

/// What a node is.
#[derive(Clone, Debug)]
pub(super) enum Value {
    /// A mapping: its keys, in order, and their values.
    Map(Vec<(String, Item)>),
    /// A sequence.
    Seq(Vec<Item>),
    /// A scalar: the YAML text that reproduces it on its own, and its value as text.
    Scalar {
        /// A one-line YAML document with just this scalar (typed as in the file).
        yaml: String,
        /// The value as text, for messages.
        text: String,
    },
    /// A stand-in for a neutralised node: types as whatever is asked of it.
    Poison,
}

impl Item {
    fn find_mut(&mut self, path: &str) -> Option<&mut Item> {
        if self.path == path {
            return Some(self);
        }
        let below = |child: &str| path.strip_prefix(child).is_some_and(|r| r.starts_with(['.', '[']) || r.is_empty());
        match &mut self.value {
            Value::Map(entries) => entries.iter_mut().map(|(_, v)| v).find(|v| below(&v.path))?.find_mut(path),
            Value::Seq(items) => items.iter_mut().find(|v| below(&v.path))?.find_mut(path),
            _ => None,
        }
    }

    /// The node at `path`, if the document has it.
    pub fn find(&self, path: &str) -> Option<&Item> {
        if self.path == path {
            return Some(self);
        }
        let below = |child: &str| path.strip_prefix(child).is_some_and(|r| r.starts_with(['.', '[']) || r.is_empty());
        match &self.value {
            Value::Map(entries) => entries.iter().map(|(_, v)| v).find(|v| below(&v.path))?.find(path),
            Value::Seq(items) => items.iter().find(|v| below(&v.path))?.find(path),
            _ => None,
        }
    }

    /// Removes the node at `path` from its parent; false when it is the root or absent.
    fn remove(&mut self, path: &str) -> bool {
        let Some((parent, _)) = split_last(path) else { return false };
        let Some(p) = self.find_mut(parent) else { return false };
        match &mut p.value {
            Value::Map(entries) => {
                let before = entries.len();
                entries.retain(|(_, v)| v.path != path);
                entries.len() != before
            }
            Value::Seq(items) => {
                let before = items.len();
                items.retain(|v| v.path != path);
                items.len() != before
            }
            _ => false,
        }
    }
}

/// `(parent, last key)` of a key path; `None` for the root.
fn split_last(path: &str) -> Option<(&str, &str)> {
    if path.is_empty() {
        return None;
    }
    match path.rfind(['.', '[']) {
        Some(i) if path.as_bytes()[i] == b'[' => Some((&path[..i], &path[i..])),
        Some(i) => Some((&path[..i], &path[i + 1..])),
        None => Some(("", path)),
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

/// Whether `path` is `base` or lies below it.
pub(super) fn is_within(path: &str, base: &str) -> bool {
    base.is_empty() || path.strip_prefix(base).is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
}

/// One typing error: where, and what serde (or serde-saphyr) said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    /// Key path of the node the error is about.
    pub path: String,
    /// The message, as the deserializer wrote it.
    pub message: String,
}

/// What a run of [`collect`] found.
pub(super) struct Collected<T> {
    /// Every typing error, in the order found.
    pub errors: Vec<Found>,
    /// The value typed once every error was neutralised, if that succeeded.
    pub value: Option<T>,
    /// Paths whose nodes were neutralised: errors reported later about them (or above or
    /// below them) are consequences of the stand-ins, not of the file.
    pub touched: Vec<String>,
    /// Sequences an item was removed from: later indices no longer match the file.
    pub shifted: Vec<String>,
}

/// At most this many typing attempts; at most this many errors are reported.
const MAX_PASSES: usize = 400;
const MAX_ERRORS: usize = 100;
/// Stand-in values a poisoned scalar tries in turn (see [`PoisonDe`]).
const ATTEMPTS: usize = 6;

/// Types `root` as `T` again and again, recording each error and neutralising its node.
pub(super) fn collect<T: de::DeserializeOwned>(
    mut root: Item,
    options: &dyn Fn() -> serde_saphyr::Options,
) -> Collected<T> {
    let mut out = Collected { errors: Vec::new(), value: None, touched: Vec::new(), shifted: Vec::new() };
    // State of each poisoned node: which stand-in it offers, and which keys it supplies.
    let mut poison: HashMap<String, PoisonState> = HashMap::new();
    // Top-level poisoned nodes and the keys removed from the document.
    let mut poisoned_roots: BTreeSet<String> = BTreeSet::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    for _ in 0..MAX_PASSES {
        let de = De { item: &root, ctx: &Ctx { options, poison: &poison } };
        let err = match T::deserialize(de) {
            Ok(v) => {
                out.value = Some(v);
                break;
            }
            Err(e) => e,
        };
        let path = err.path.clone().unwrap_or_default();
        // An error inside a stand-in: try another stand-in, or give the node up.
        if let Some(base) = poisoned_roots.iter().rev().find(|b| is_within(&path, b)).cloned() {
            let state = poison.entry(path.clone()).or_default();
            match &err.kind {
                Kind::MissingField(k) if !state.fields.contains(k) => {
                    state.fields.insert(k.clone());
                }
                _ if state.attempt + 1 < ATTEMPTS => state.attempt += 1,
                _ => {
                    poison.retain(|p, _| !is_within(p, &base));
                    poisoned_roots.remove(&base);
                    if !give_up(&mut root, &base, &mut removed, &mut out.shifted) {
                        break;
                    }
                }
            }
            continue;
        }
        // A required key this run removed: the mapping that needs it is given up instead.
        if let Kind::MissingField(k) = &err.kind
            && removed.contains(&child_path(&path, k))
        {
            if path.is_empty() || root.find(&path).is_none() {
                break;
            }
            poisoned_roots.insert(path.clone());
            out.touched.push(path.clone());
            set_poison(&mut root, &path);
            continue;
        }

        let found = Found { path: path.clone(), message: err.message.clone() };
        if out.errors.contains(&found) || out.errors.len() >= MAX_ERRORS {
            break;
        }
        out.errors.push(found);
        out.touched.push(path.clone());
        match &err.kind {
            Kind::UnknownField => {
                if !root.remove(&path) {
                    break;
                }
            }
            Kind::MissingField(k) => {
                let Some(Item { value: Value::Map(entries), .. }) = root.find_mut(&path) else { break };
                let at = child_path(&path, k);
                entries.push((k.clone(), Item { path: at.clone(), value: Value::Poison }));
                poisoned_roots.insert(at.clone());
                out.touched.push(at);
            }
            Kind::Other => {
                if path.is_empty() || root.find(&path).is_none() {
                    break;
                }
                poisoned_roots.insert(path.clone());
                set_poison(&mut root, &path);
            }
        }
    }
    out
}

fn set_poison(root: &mut Item, path: &str) {
    if let Some(item) = root.find_mut(path) {
        item.value = Value::Poison;
    }
}

/// Removes a node no stand-in satisfies; false when nothing can be removed.
fn give_up(root: &mut Item, path: &str, removed: &mut BTreeSet<String>, shifted: &mut Vec<String>) -> bool {
    if !root.remove(path) {
        return false;
    }
    removed.insert(path.to_string());
    if path.ends_with(']')
        && let Some((parent, _)) = split_last(path)
    {
        shifted.push(parent.to_string());
    }
    true
}

#[derive(Clone, Debug, Default)]
struct PoisonState {
    attempt: usize,
    fields: BTreeSet<String>,
}

/// What every deserializer of one pass shares.
struct Ctx<'a> {
    options: &'a dyn Fn() -> serde_saphyr::Options,
    poison: &'a HashMap<String, PoisonState>,
}

/// Why typing stopped.
#[derive(Debug)]
pub(super) struct Error {
    path: Option<String>,
    kind: Kind,
    message: String,
}

#[derive(Debug)]
enum Kind {
    UnknownField,
    MissingField(String),
    Other,
}

impl Error {
    fn other(message: impl Into<String>) -> Self {
        Error { path: None, kind: Kind::Other, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error::other(msg.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = if expected.is_empty() {
            format!("unknown field `{field}`, there are no fields")
        } else {
            format!("unknown field `{field}`, expected one of {}", expected.join(", "))
        };
        Error { path: None, kind: Kind::UnknownField, message }
    }

    fn missing_field(field: &'static str) -> Self {
        Error { path: None, kind: Kind::MissingField(field.to_string()), message: format!("missing field `{field}`") }
    }
}

/// Gives an error that no node claimed yet to the node at `path`.
fn claim<T>(r: Result<T, Error>, path: &str) -> Result<T, Error> {
    r.map_err(|mut e| {
        e.path.get_or_insert_with(|| path.to_string());
        e
    })
}

/// Deserializes one node of the tree.
#[derive(Clone, Copy)]
struct De<'t, 'c> {
    item: &'t Item,
    ctx: &'c Ctx<'c>,
}

/// A scalar is handed to serde-saphyr, so that it types exactly as in the real load.
macro_rules! scalar {
    ($self:ident, $yaml:ident, |$de:ident| $call:expr) => {{
        let result = serde_saphyr::with_deserializer_from_str_with_options($yaml, ($self.ctx.options)(), |$de| $call);
        result.map_err(|e| Error::other(super::clean_message(&e)))
    }};
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*) => $container:ident;)*) => {$(
        fn $method<V: Visitor<'t>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Error> {
            match &self.item.value {
                Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.$method($($arg,)* visitor)),
                Value::Poison => PoisonDe { path: &self.item.path, ctx: self.ctx }.$method($($arg,)* visitor),
                _ => self.$container(visitor),
            }
        }
    )*};
}

impl<'t> De<'t, '_> {
    /// A mapping or sequence where a single value was expected.
    fn not_scalar<V: Visitor<'t>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::other(match self.item.value {
            Value::Map(_) => "expected a single value, found a mapping",
            _ => "expected a single value, found a list",
        }))
    }
}

impl<'t> Deserializer<'t> for De<'t, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.item.value {
            Value::Map(entries) => visitor.visit_map(MapAcc { entries: entries.iter(), value: None, ctx: self.ctx }),
            Value::Seq(items) => visitor.visit_seq(SeqAcc { items: items.iter(), ctx: self.ctx }),
            Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.deserialize_any(visitor)),
            Value::Poison => PoisonDe { path: &self.item.path, ctx: self.ctx }.deserialize_any(visitor),
        }
    }

    fn deserialize_seq<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.item.value {
            Value::Seq(items) => visitor.visit_seq(SeqAcc { items: items.iter(), ctx: self.ctx }),
            Value::Map(_) => Err(Error::other("expected sequence start")),
            Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.deserialize_seq(visitor)),
            Value::Poison => PoisonDe { path: &self.item.path, ctx: self.ctx }.deserialize_seq(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.item.value {
            Value::Map(entries) => visitor.visit_map(MapAcc { entries: entries.iter(), value: None, ctx: self.ctx }),
            Value::Seq(_) => Err(Error::other("expected mapping start")),
            Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.deserialize_map(visitor)),
            Value::Poison => PoisonDe { path: &self.item.path, ctx: self.ctx }.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'t>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.item.value {
            Value::Map(entries) => visitor.visit_map(MapAcc { entries: entries.iter(), value: None, ctx: self.ctx }),
            Value::Seq(_) => Err(Error::other("expected mapping start")),
            Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.deserialize_struct(name, fields, visitor)),
            Value::Poison => {
                PoisonDe { path: &self.item.path, ctx: self.ctx }.deserialize_struct(name, fields, visitor)
            }
        }
    }

    fn deserialize_option<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.item.value {
            Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.deserialize_option(visitor)),
            Value::Poison => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'t>>(self, name: &'static str, visitor: V) -> Result<V::Value, Error> {
        match &self.item.value {
            Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.deserialize_newtype_struct(name, visitor)),
            _ => visitor.visit_newtype_struct(self),
        }
    }

    fn deserialize_enum<V: Visitor<'t>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.item.value {
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor.visit_enum(EnumAcc { key, value, ctx: self.ctx })
            }
            Value::Map(_) => Err(Error::other("expected one value, found a mapping of several keys")),
            Value::Seq(_) => Err(Error::other("expected one value, found a list")),
            Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.deserialize_enum(name, variants, visitor)),
            Value::Poison => {
                PoisonDe { path: &self.item.path, ctx: self.ctx }.deserialize_enum(name, variants, visitor)
            }
        }
    }

    fn deserialize_ignored_any<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_tuple<V: Visitor<'t>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'t>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    forward! {
        deserialize_bool() => not_scalar;
        deserialize_i8() => not_scalar;
        deserialize_i16() => not_scalar;
        deserialize_i32() => not_scalar;
        deserialize_i64() => not_scalar;
        deserialize_i128() => not_scalar;
        deserialize_u8() => not_scalar;
        deserialize_u16() => not_scalar;
        deserialize_u32() => not_scalar;
        deserialize_u64() => not_scalar;
        deserialize_u128() => not_scalar;
        deserialize_f32() => not_scalar;
        deserialize_f64() => not_scalar;
        deserialize_char() => not_scalar;
        deserialize_str() => not_scalar;
        deserialize_string() => not_scalar;
        deserialize_bytes() => not_scalar;
        deserialize_byte_buf() => not_scalar;
        deserialize_unit() => not_scalar;
        deserialize_identifier() => not_scalar;
    }

    fn deserialize_unit_struct<V: Visitor<'t>>(self, name: &'static str, visitor: V) -> Result<V::Value, Error> {
        match &self.item.value {
            Value::Scalar { yaml, .. } => scalar!(self, yaml, |d| d.deserialize_unit_struct(name, visitor)),
            Value::Poison => visitor.visit_unit(),
            _ => self.not_scalar(visitor),
        }
    }
}

struct MapAcc<'t, 'c> {
    entries: std::slice::Iter<'t, (String, Item)>,
    value: Option<&'t Item>,
    ctx: &'c Ctx<'c>,
}

impl<'t> de::MapAccess<'t> for MapAcc<'t, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'t>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        self.value = Some(value);
        let de: de::value::StrDeserializer<'_, Error> = key.as_str().into_deserializer();
        claim(seed.deserialize(de), &value.path).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'t>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let item = self.value.take().ok_or_else(|| Error::other("a value without its key"))?;
        claim(seed.deserialize(De { item, ctx: self.ctx }), &item.path)
    }
}

struct SeqAcc<'t, 'c> {
    items: std::slice::Iter<'t, Item>,
    ctx: &'c Ctx<'c>,
}

impl<'t> de::SeqAccess<'t> for SeqAcc<'t, '_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'t>>(&mut self, seed: S) -> Result<Option<S::Value>, Error> {
        let Some(item) = self.items.next() else { return Ok(None) };
        claim(seed.deserialize(De { item, ctx: self.ctx }), &item.path).map(Some)
    }
}

/// An enum written as a mapping of one key: `{ variant: value }`.
struct EnumAcc<'t, 'c> {
    key: &'t str,
    value: &'t Item,
    ctx: &'c Ctx<'c>,
}

impl<'t, 'c> de::EnumAccess<'t> for EnumAcc<'t, 'c> {
    type Error = Error;
    type Variant = De<'t, 'c>;

    fn variant_seed<S: DeserializeSeed<'t>>(self, seed: S) -> Result<(S::Value, Self::Variant), Error> {
        let de: de::value::StrDeserializer<'_, Error> = self.key.into_deserializer();
        let v = claim(seed.deserialize(de), &self.value.path)?;
        Ok((v, De { item: self.value, ctx: self.ctx }))
    }
}

impl<'t> de::VariantAccess<'t> for De<'t, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        claim(de::Deserialize::deserialize(self), &self.item.path)
    }

    fn newtype_variant_seed<S: DeserializeSeed<'t>>(self, seed: S) -> Result<S::Value, Error> {
        claim(seed.deserialize(self), &self.item.path)
    }

    fn tuple_variant<V: Visitor<'t>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        claim(self.deserialize_seq(visitor), &self.item.path)
    }

    fn struct_variant<V: Visitor<'t>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        claim(self.deserialize_struct("", fields, visitor), &self.item.path)
    }
}

/// A stand-in value: answers whatever is asked of it with an empty or zero value. Where that
/// is refused (a socket address cannot be empty), the next typing pass offers the next
/// stand-in; a struct supplies only the keys it turned out to need.
#[derive(Clone, Copy)]
struct PoisonDe<'p, 'c> {
    path: &'p str,
    ctx: &'c Ctx<'c>,
}

/// Text stand-ins, tried in turn.
const TEXT: [&str; ATTEMPTS] = ["", "0s", "0.0.0.0:0", "http://invalid/", "0", "x"];

impl PoisonDe<'_, '_> {
    fn state(&self) -> PoisonState {
        self.ctx.poison.get(self.path).cloned().unwrap_or_default()
    }
}

impl<'t> Deserializer<'t> for PoisonDe<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.state().attempt {
            0 => visitor.visit_str("0s"),
            1 => visitor.visit_u64(0),
            2 => visitor.visit_unit(),
            3 => visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<((), ())>())),
            4 => visitor.visit_seq(de::value::SeqDeserializer::new(std::iter::empty::<()>())),
            _ => visitor.visit_bool(false),
        }
    }

    fn deserialize_bool<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_i64<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(0)
    }

    fn deserialize_u64<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(0)
    }

    fn deserialize_f64<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.0)
    }

    fn deserialize_char<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char('x')
    }

    fn deserialize_str<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(TEXT[self.state().attempt.min(ATTEMPTS - 1)])
    }

    fn deserialize_bytes<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(b"")
    }

    fn deserialize_option<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_none()
    }

    fn deserialize_unit<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'t>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'t>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(de::value::SeqDeserializer::new(std::iter::empty::<()>()))
    }

    fn deserialize_tuple<V: Visitor<'t>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'t>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<((), ())>()))
    }

    fn deserialize_struct<V: Visitor<'t>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let fields: Vec<String> = self.state().fields.into_iter().collect();
        visitor.visit_map(PoisonFields { parent: self.path, fields: fields.into_iter(), current: None, ctx: self.ctx })
    }

    fn deserialize_enum<V: Visitor<'t>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Some(first) = variants.first() else { return Err(Error::other("an enum without variants")) };
        visitor.visit_enum(PoisonEnum { variant: first, inner: self })
    }

    fn deserialize_ignored_any<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! { <V: Visitor<'t>> i128 u128 }

    fn deserialize_i8<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i16<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i32<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_u8<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u16<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u32<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_f32<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }
    fn deserialize_string<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }
    fn deserialize_identifier<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }
    fn deserialize_byte_buf<V: Visitor<'t>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }
}

/// The keys a poisoned struct turned out to need, each with a stand-in value.
struct PoisonFields<'p, 'c> {
    parent: &'p str,
    fields: std::vec::IntoIter<String>,
    current: Option<String>,
    ctx: &'c Ctx<'c>,
}

impl<'t> de::MapAccess<'t> for PoisonFields<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'t>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.next() else { return Ok(None) };
        let path = child_path(self.parent, &field);
        let de: de::value::StrDeserializer<'_, Error> = field.as_str().into_deserializer();
        let key = claim(seed.deserialize(de), &path)?;
        self.current = Some(path);
        Ok(Some(key))
    }

    fn next_value_seed<S: DeserializeSeed<'t>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let path = self.current.take().unwrap_or_default();
        claim(seed.deserialize(PoisonDe { path: &path, ctx: self.ctx }), &path)
    }
}

/// A poisoned enum: its first variant, with stand-in contents.
struct PoisonEnum<'p, 'c> {
    variant: &'static str,
    inner: PoisonDe<'p, 'c>,
}

impl<'t, 'p, 'c> de::EnumAccess<'t> for PoisonEnum<'p, 'c> {
    type Error = Error;
    type Variant = PoisonDe<'p, 'c>;

    fn variant_seed<S: DeserializeSeed<'t>>(self, seed: S) -> Result<(S::Value, Self::Variant), Error> {
        let de: de::value::StrDeserializer<'_, Error> = self.variant.into_deserializer();
        Ok((seed.deserialize(de)?, self.inner))
    }
}

impl<'t> de::VariantAccess<'t> for PoisonDe<'_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'t>>(self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'t>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'t>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        self.deserialize_struct("", fields, visitor)
    }
}
