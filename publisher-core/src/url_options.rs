//! [`UrlOptions`]: a URL's query parameters, decoded once and taken by name, for every
//! backend's `from_url`.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// The `name=value` pairs of a URL's query, percent-decoded, each taken once by the backend
/// that knows it. [`UrlOptions::finish`] refuses what is left (a misspelled or unknown name),
/// naming it; a backend that passes unknown names on (Kafka's librdkafka properties) takes
/// them with [`UrlOptions::into_rest`] instead.
///
/// Values never appear in errors about names (a mistyped `password:secret` would show the
/// secret); a value that does not parse is quoted only by typed getters, whose values are not
/// secrets.
#[derive(Debug)]
pub struct UrlOptions {
    backend: &'static str,
    pairs: Vec<(String, String)>,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl UrlOptions {
    /// Parses `query`, the part of a URL after `?` (without it).
    ///
    /// # Errors
    /// `Config` naming `url` when a pair has no `=`.
    pub fn parse(backend: &'static str, query: &str) -> Result<Self> {
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::config(
                    backend,
                    "url",
                    "a query parameter has no `=`: expected name=value pairs joined by `&`",
                )
            })?;
            pairs.push((decode(k), decode(v)));
        }
        Ok(Self { backend, pairs })
    }

    /// The query of `url` (everything after its first `?`), and `url` without it.
    ///
    /// # Errors
    /// As [`UrlOptions::parse`].
    pub fn split(backend: &'static str, url: &str) -> Result<(String, Self)> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        Ok((base.to_owned(), Self::parse(backend, query)?))
    }

    /// Takes `name` (its last value when given more than once).
    pub fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.pairs.retain(|(k, v)| {
            if k == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Takes `name` as `true`/`false` (or `1`/`0`).
    ///
    /// # Errors
    /// `Config` naming `field` when it is neither.
    pub fn take_bool(&mut self, name: &str, field: &'static str) -> Result<Option<bool>> {
        self.take(name)
            .map(|v| match v.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(Error::config(
                    self.backend,
                    field,
                    format!("`{v}` is not true or false"),
                )),
            })
            .transpose()
    }

    /// Takes `name` parsed as `T` (a number, an enum with `FromStr`).
    ///
    /// # Errors
    /// `Config` naming `field` when it does not parse; `what` says what was expected.
    pub fn take_parsed<T: FromStr>(
        &mut self,
        name: &str,
        field: &'static str,
        what: &str,
    ) -> Result<Option<T>> {
        self.take(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| Error::config(self.backend, field, format!("`{v}` is not {what}")))
            })
            .transpose()
    }

    /// Takes `name` as a duration in humantime form (`500ms`, `2s`, `1m`).
    ///
    /// # Errors
    /// `Config` naming `field` when it does not parse.
    pub fn take_duration(&mut self, name: &str, field: &'static str) -> Result<Option<Duration>> {
        self.take(name)
            .map(|v| {
                humantime::parse_duration(&v).map_err(|e| {
                    Error::config(self.backend, field, format!("`{v}` is not a duration: {e}"))
                })
            })
            .transpose()
    }

    /// Takes `name` as milliseconds (`250`).
    ///
    /// # Errors
    /// `Config` naming `field` when it is not a number.
    pub fn take_millis(&mut self, name: &str, field: &'static str) -> Result<Option<Duration>> {
        Ok(self
            .take_parsed::<u64>(name, field, "a number of milliseconds")?
            .map(Duration::from_millis))
    }

    /// What no getter took, in URL order.
    pub fn into_rest(self) -> Vec<(String, String)> {
        self.pairs
    }

    /// Ends parsing: a parameter no getter took is an error naming it and listing `known`.
    ///
    /// # Errors
    /// `Config` naming `url`.
    pub fn finish(self, known: &[&str]) -> Result<()> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(Error::config(
                self.backend,
                "url",
                format!(
                    "unknown query parameter `{name}` (known: {})",
                    known.join(", ")
                ),
            )),
        }
    }
}

/// A URL that shows with its password (or token) hidden in `Debug` and `Display`: the type of
/// every config's `url`, so that a config can derive `Debug`. Serializes as the plain string.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RedactedUrl(String);

impl From<String> for RedactedUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for RedactedUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl PartialEq<&str> for RedactedUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A secret (a token, a key seed) that shows as `***` in `Debug`. Serializes as the plain
/// string.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself: for authenticating, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl RedactedUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, secrets included: for connecting, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as it may be shown.
    pub fn redacted(&self) -> Cow<'_, str> {
        Cow::Owned(crate::config::redact_url(&self.0))
    }
}

impl std::fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_typed_and_unknown_names_refused() {
        let mut o = UrlOptions::parse("x", "name=a%20b&flag=1&n=42&d=250ms&ms=7&n=43&extra=s3cret")
            .unwrap();
        assert_eq!(o.take("name").as_deref(), Some("a b"));
        assert_eq!(o.take_bool("flag", "flag").unwrap(), Some(true));
        assert_eq!(
            o.take_parsed::<u32>("n", "n", "a number").unwrap(),
            Some(43)
        );
        assert_eq!(
            o.take_duration("d", "d").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            o.take_millis("ms", "ms").unwrap(),
            Some(Duration::from_millis(7))
        );
        assert_eq!(o.take("absent"), None);
        let e = o.finish(&["name", "flag"]).unwrap_err();
        assert_eq!(e.field(), Some("url"));
        assert!(e.message().contains("`extra`"), "{e}");
        assert!(!e.message().contains("s3cret"), "{e}");

        let mut o = UrlOptions::parse("x", "flag=maybe").unwrap();
        assert_eq!(
            o.take_bool("flag", "flag").unwrap_err().field(),
            Some("flag")
        );
        assert!(
            UrlOptions::parse("x", "password:s3cret")
                .is_err_and(|e| !e.to_string().contains("s3cret"))
        );
    }

    #[test]
    fn a_redacted_url_never_shows_its_password() {
        let u = RedactedUrl::new("amqp://guest:s3cret@host:5672/%2f");
        assert!(!format!("{u} {u:?}").contains("s3cret"));
        assert_eq!(u.expose(), "amqp://guest:s3cret@host:5672/%2f");
    }
}
