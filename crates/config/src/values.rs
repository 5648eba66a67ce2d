//! Value types that appear throughout the config: durations, byte sizes and secrets.
//!
//! Each parses from the human form an operator writes (`10s`, `16KiB`, `{ env: NAME }`) at
//! load time, so a bad value is reported with its key and line, and serialises back to a form
//! that is safe to show (a secret never round-trips).

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time written as `250ms`, `10s`, `5m` or `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// The standard-library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

/// The longest duration a config may give.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 366 * 86_400);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `250ms`, `10s` or `5m`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                let d = humantime::parse_duration(v.trim())
                    .map_err(|e| E::custom(format!("invalid duration `{v}`: {e} (write e.g. `250ms`, `10s`, `5m`)")))?;
                // Deadlines are computed as now + duration: bounded, they cannot overflow.
                if d > MAX_DURATION {
                    return Err(E::custom(format!("invalid duration `{v}`: longer than 100 years")));
                }
                Ok(Duration(d))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!("a duration needs a unit: write `{v}s` or `{v}ms`")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!("a duration needs a unit: write `{v}s` or `{v}ms`")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(self.0))
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration with a unit: `250ms`, `10s`, `5m`, `1h`.",
            "pattern": "^\\s*([0-9]+\\s*(ns|us|ms|s|sec|m|min|h|hr|d)\\s*)+$"
        })
    }
}

/// A size in bytes, written as a number of bytes or with a unit: `16KiB`, `10MB`, `1GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as `16KiB`, `10MiB` or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("a size cannot be negative: {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| ByteSize(b.as_u64()))
                    .map_err(|_| E::custom(format!("invalid size `{v}` (write e.g. `16KiB`, `10MiB`, `1GiB`)")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a number of bytes, or a number with a unit (`16KiB`, `10MB`, `1GiB`).",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([KMGT]i?B?|B)?\\s*$" }
            ]
        })
    }
}

/// Where a secret comes from. Only the resolved value is secret; the source may be shown.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config file itself.
    Inline,
    /// Read from an environment variable at load.
    Env(String),
    /// Read from a file at load (trailing newline removed).
    File(PathBuf),
}

/// A secret value (password, shared key, client secret). Written inline, or as
/// `{ env: VAR }` or `{ file: path }`. It never appears in logs, `Debug` output or config
/// dumps: those show `<redacted>` or where the value came from.
#[derive(Clone)]
pub struct Secret {
    source: SecretSource,
    value: Arc<str>,
}

impl Secret {
    /// A secret whose value is known (tests, generated values).
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self { source: SecretSource::Inline, value: value.into() }
    }

    /// The secret value. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the value came from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// Reads `{ env }` and `{ file }` secrets; file paths are relative to `base`.
    pub fn resolve(&mut self, base: &Path) -> Result<(), String> {
        match &mut self.source {
            SecretSource::Inline => Ok(()),
            SecretSource::Env(name) => {
                let v =
                    std::env::var(name.as_str()).map_err(|_| format!("environment variable `{name}` is not set"))?;
                self.value = v.into();
                Ok(())
            }
            SecretSource::File(path) => {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
                let v = std::fs::read_to_string(&*path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
                self.value = v.trim_end_matches(['\r', '\n']).into();
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.value == other.value
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a secret: a string, `{ env: VARIABLE }` or `{ file: path }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            // YAML reads some plain scalars as numbers or booleans, which would change the
            // secret (`0x1F`, `1e3`, `yes`); they are refused, and never echoed.
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let key: String = map.next_key()?.ok_or_else(|| de::Error::custom("a secret needs `env` or `file`"))?;
                let val: String = map.next_value()?;
                let source = match key.as_str() {
                    "env" => SecretSource::Env(val),
                    "file" => SecretSource::File(PathBuf::from(val)),
                    // An unknown key is not echoed: it may be a mistyped secret (`{s3cr3t: x}`).
                    _ => return Err(de::Error::custom("a secret written as a mapping takes `env` or `file`")),
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("a secret takes exactly one of `env` or `file`"));
                }
                Ok(Secret { source, value: "".into() })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The error for a secret written as something other than text; it does not show the value.
fn not_text<E: de::Error>() -> E {
    E::custom("a secret must be a string: write it in quotes (the value is not shown here)")
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.source {
            SecretSource::Inline => serializer.serialize_str("<redacted>"),
            SecretSource::Env(name) => {
                let mut m = serializer.serialize_map(Some(1))?;
                m.serialize_entry("env", name)?;
                m.end()
            }
            SecretSource::File(path) => {
                let mut m = serializer.serialize_map(Some(1))?;
                m.serialize_entry("file", path)?;
                m.end()
            }
        }
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A secret: inline string, `{ env: VARIABLE }` or `{ file: path }`. Never logged or shown.",
            "anyOf": [
                { "type": "string" },
                { "type": "object", "properties": { "env": { "type": "string" } }, "required": ["env"], "additionalProperties": false },
                { "type": "object", "properties": { "file": { "type": "string" } }, "required": ["file"], "additionalProperties": false }
            ]
        })
    }
}

/// A configured URL as it may be shown in logs, error messages and config dumps: a password
/// in it is replaced by `***`, and so is a user name given without a password (it may be a
/// token), and the value of a query (or fragment) parameter whose name says it holds a
/// secret (`api_key`, `access_token`, `client_secret`, `X-Amz-Signature`, `password`,
/// `sig`...). Everything else is kept. Text that does not parse as a URL loses everything
/// between its scheme and its last `@`.
///
/// Every place that prints a configured URL prints it through this.
#[derive(Clone, Copy, Debug)]
pub struct RedactedUrl<'a>(pub &'a str);

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.0))
    }
}

/// The marker that replaces credentials in a shown URL.
const HIDDEN: &str = "***";

/// `text` with the credentials of the URL it holds replaced (see [`RedactedUrl`]).
pub fn redact_url(text: &str) -> Cow<'_, str> {
    match redact_userinfo(text) {
        Cow::Borrowed(t) => redact_query(t),
        Cow::Owned(t) => match redact_query(&t) {
            Cow::Owned(both) => Cow::Owned(both),
            Cow::Borrowed(_) => Cow::Owned(t),
        },
    }
}

/// Whether a query parameter's name says that its value is a secret.
fn secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["key", "token", "secret", "password", "passwd", "pwd", "credential", "auth", "signature"]
        .iter()
        .any(|w| name.contains(w))
        || matches!(name.as_str(), "sig" | "code")
}

/// The secret-looking values of the query and of the fragment (where OAuth puts tokens too)
/// replaced, the rest kept as written (no re-encoding).
fn redact_query(text: &str) -> Cow<'_, str> {
    let Some(start) = text.find(['?', '#']) else { return Cow::Borrowed(text) };
    let (base, rest) = text.split_at(start);
    let mut out = String::with_capacity(text.len());
    out.push_str(base);
    let mut hidden = false;
    for (i, part) in rest.split('#').enumerate() {
        if i > 0 {
            out.push('#');
        }
        let pairs = match part.strip_prefix('?') {
            Some(query) if i == 0 => {
                out.push('?');
                query
            }
            _ => part,
        };
        for (j, pair) in pairs.split('&').enumerate() {
            if j > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, v)) if !v.is_empty() && secret_parameter(k) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(HIDDEN);
                    hidden = true;
                }
                _ => out.push_str(pair),
            }
        }
    }
    if hidden { Cow::Owned(out) } else { Cow::Borrowed(text) }
}

fn redact_userinfo(text: &str) -> Cow<'_, str> {
    match url::Url::parse(text) {
        Ok(u) if u.password().is_none() && u.username().is_empty() => Cow::Borrowed(text),
        Ok(mut u) => {
            let hidden = if u.password().is_some() {
                u.set_password(Some(HIDDEN)).is_ok()
            } else {
                u.set_username(HIDDEN).is_ok()
            };
            if hidden { Cow::Owned(u.into()) } else { redact_unparsed(text) }
        }
        Err(_) => redact_unparsed(text),
    }
}

/// Hides everything between the scheme (`…://`, if any) and the last `@`: the only safe
/// reading of text that is not a valid URL.
fn redact_unparsed(text: &str) -> Cow<'_, str> {
    let start = text.find("://").map_or(0, |i| i + 3);
    match text[start..].rfind('@') {
        Some(at) => Cow::Owned(format!("{}{HIDDEN}{}", &text[..start], &text[start + at..])),
        None => Cow::Borrowed(text),
    }
}

/// Parses a configured URL. The error says what is wrong and shows the URL only with its
/// credentials hidden.
pub fn parse_url(text: &str) -> Result<url::Url, String> {
    url::Url::parse(text).map_err(|e| format!("`{}` is not a valid URL: {e}", RedactedUrl(text)))
}

/// Serialises a URL with its credentials hidden (for config dumps).
pub fn serialize_url_redacted<S: Serializer>(url: &url::Url, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&RedactedUrl(url.as_str()))
}

/// Serialises an optional URL with its credentials hidden (for config dumps).
pub fn serialize_opt_url_redacted<S: Serializer>(url: &Option<url::Url>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => serializer.serialize_some(&RedactedUrl(u.as_str()).to_string()),
        None => serializer.serialize_none(),
    }
}

/// Serialises URL text with its credentials hidden (for config dumps).
pub fn serialize_url_text_redacted<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&RedactedUrl(text))
}

/// Serialises optional URL text with its credentials hidden (for config dumps).
pub fn serialize_opt_url_text_redacted<S: Serializer>(text: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match text {
        Some(t) => serializer.serialize_some(&redact_url(t)),
        None => serializer.serialize_none(),
    }
}

/// Serialises a list of URL texts with their credentials hidden (for config dumps).
pub fn serialize_url_texts_redacted<S: Serializer>(texts: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(texts.iter().map(|t| redact_url(t)))
}

/// Deserialises an optional URL; a malformed one is an error that never shows its
/// credentials (serde's own error would echo the whole text).
pub fn deserialize_opt_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<url::Url>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) => parse_url(&text).map(Some).map_err(de::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, String> {
        serde_saphyr::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(yaml::<Duration>("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(yaml::<Duration>("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(yaml::<Duration>("10").unwrap_err().contains("needs a unit"));
        assert!(yaml::<Duration>("ten").unwrap_err().contains("invalid duration"));
        assert_eq!(yaml::<Duration>("100y").unwrap(), Duration::from_secs(3_155_760_000));
        assert!(yaml::<Duration>("101y").unwrap_err().contains("longer than 100 years"));
        assert!(yaml::<Duration>("300000000000y").unwrap_err().contains("invalid duration"));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(yaml::<ByteSize>("16KiB").unwrap(), ByteSize::kib(16));
        assert_eq!(yaml::<ByteSize>("1024").unwrap(), ByteSize(1024));
        assert_eq!(yaml::<ByteSize>("10 MiB").unwrap(), ByteSize::mib(10));
        assert!(yaml::<ByteSize>("-1").is_err());
        assert!(yaml::<ByteSize>("lots").unwrap_err().contains("invalid size"));
    }

    #[test]
    fn secrets_never_show() {
        let s: Secret = yaml("hunter2").unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        let mut e: Secret = yaml("{ env: PORTCULLIS_TEST_SECRET_UNSET }").unwrap();
        assert!(e.resolve(Path::new(".")).unwrap_err().contains("not set"));
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"env":"PORTCULLIS_TEST_SECRET_UNSET"}"#);
        assert!(yaml::<Secret>("{ env: A, file: b }").is_err());
    }

    #[test]
    fn url_passwords_are_redacted() {
        #[derive(Serialize)]
        struct W {
            #[serde(serialize_with = "serialize_url_redacted")]
            u: url::Url,
        }
        let w = W { u: "redis://user:pa55@127.0.0.1:6379/0".parse().unwrap() };
        let s = serde_json::to_string(&w).unwrap();
        assert_eq!(s, r#"{"u":"redis://user:***@127.0.0.1:6379/0"}"#);
    }

    #[test]
    fn shown_urls_hide_credentials() {
        let shown = |s: &str| RedactedUrl(s).to_string();
        // A password is hidden; the user name and the rest stay.
        assert_eq!(shown("https://gw:pa55@idp.example/jwks?x=1"), "https://gw:***@idp.example/jwks?x=1");
        assert_eq!(shown("redis://:pa55@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
        // `@` and `:` inside the password.
        assert_eq!(shown("http://u:p@s:s@host/"), "http://u:***@host/");
        // A user name alone may be a token.
        assert_eq!(shown("https://ghp_t0ken@idp.example/"), "https://***@idp.example/");
        // Nothing to hide: shown exactly as written.
        assert_eq!(shown("https://idp.example/jwks"), "https://idp.example/jwks");
        assert_eq!(shown("orders"), "orders");
        // Not a URL: everything up to the last `@` after the scheme goes.
        assert_eq!(shown("redis://:pa55@127.0.0.1:6379:bad"), "redis://***@127.0.0.1:6379:bad");
        assert_eq!(shown("http://u:pa/55@host"), "http://***@host");
        assert_eq!(shown("//:pa55@host:1"), "***@host:1");
        assert!(!parse_url("redis://:pa55@h:1:2").unwrap_err().contains("pa55"));
        // Query parameters named for secrets lose their values; the others stay as written.
        assert_eq!(
            shown("https://idp.example/jwks?tenant=acme&api_key=s3cr3t&X-Amz-Signature=ab%2Fc#top"),
            "https://idp.example/jwks?tenant=acme&api_key=***&X-Amz-Signature=***#top"
        );
        assert_eq!(shown("https://u:p@h/x?access_token=t&sig=1"), "https://u:***@h/x?access_token=***&sig=***");
        assert_eq!(shown("https://idp.example/jwks?tenant=a%20b"), "https://idp.example/jwks?tenant=a%20b");
        assert_eq!(shown("https://h/?client_secret="), "https://h/?client_secret=", "nothing to hide");
        assert_eq!(shown("https://h/cb#state=x&access_token=t"), "https://h/cb#state=x&access_token=***");
    }

    proptest::proptest! {
        /// Whatever the text, showing it never panics and never shows the value of a
        /// parameter named for a secret, nor a password.
        #[test]
        fn shown_urls_never_show_a_secret(
            base in "(https?://|redis://|)([a-z]{1,5}(:[a-z@]{0,5})?@)?[a-z.]{1,8}(:[0-9]{1,5})?(/[a-z./]{0,8})?",
            pairs in proptest::collection::vec(("[a-zA-Z_-]{0,12}", "[A-Za-z0-9%&=#?/]{0,10}"), 0..4),
            secret in "[A-Z]{6}[0-9]{2}",
            name in "(api_key|access_token|X-Amz-Signature|client_secret|sig|Password)",
        ) {
            let mut query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            query.insert(query.len() / 2, format!("{name}={secret}"));
            let text = format!("{base}?{}", query.join("&"));
            let shown = RedactedUrl(&text).to_string();
            proptest::prop_assert!(!shown.contains(&secret), "{text} -> {shown}");
            let with_password = format!("https://user:{secret}@host/x");
            proptest::prop_assert!(!RedactedUrl(&with_password).to_string().contains(&secret));
        }
    }
}
