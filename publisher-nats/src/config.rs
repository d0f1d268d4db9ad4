//! [`NatsConfig`]: where the NATS server is, how to authenticate, and the bounds.

use std::path::PathBuf;

use publisher_core::{Error, RedactedUrl, Result, Secret, Timeouts, UrlOptions};
use serde::{Deserialize, Serialize};

use crate::BACKEND;

fn bad(
    field: impl Into<std::borrow::Cow<'static, str>>,
    message: impl Into<std::borrow::Cow<'static, str>>,
) -> Error {
    Error::config(BACKEND, field, message)
}

/// How a [`NatsPublisher`](crate::NatsPublisher) connects and publishes. Every field has a
/// documented default; secrets never appear in `Debug`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// The server: `nats://host:4222` or `tls://host:4222`, with `user:password@` or `token@`
    /// when the server wants them. Default: `nats://127.0.0.1:4222`.
    pub url: RedactedUrl,
    /// A token, when not given in the URL. Default: none.
    pub token: Option<Secret>,
    /// A credentials file (JWT and nkey seed). Default: none.
    pub creds_file: Option<PathBuf>,
    /// An nkey seed (`SU…`). Default: none.
    pub nkey_seed: Option<Secret>,
    /// The connection's name, as the server lists it. Default: `publisher-nats`.
    pub connection_name: String,
    /// Most publishes awaiting their PubAck at once; a publish beyond waits (bounded by its
    /// timeout). Default: 10,000.
    pub max_ack_inflight: usize,
    /// Timeouts: `connect` bounds connecting, `publish` each publish including its PubAck.
    pub timeouts: Timeouts,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            token: None,
            creds_file: None,
            nkey_seed: None,
            connection_name: "publisher-nats".into(),
            max_ack_inflight: 10_000,
            timeouts: Timeouts::default(),
        }
    }
}

impl NatsConfig {
    /// Parses `nats://[user:password@|token@]host[:port][?creds=PATH&connection_name=NAME&max_ack_inflight=N]`
    /// (or `tls://…`). Query values are percent-decoded; an unknown parameter is an error
    /// naming it.
    ///
    /// # Errors
    /// `Config` naming the field at fault.
    pub fn from_url(url: &str) -> Result<Self> {
        let (base, mut options) = UrlOptions::split(BACKEND, url)?;
        let mut cfg = NatsConfig {
            url: base.into(),
            ..NatsConfig::default()
        };
        if let Some(path) = options.take("creds") {
            cfg.creds_file = Some(PathBuf::from(path));
        }
        if let Some(name) = options.take("connection_name") {
            cfg.connection_name = name;
        }
        if let Some(n) = options.take_parsed("max_ack_inflight", "max_ack_inflight", "a number")? {
            cfg.max_ack_inflight = n;
        }
        options.finish(&["creds", "connection_name", "max_ack_inflight"])?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// `Config` naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let u = url::Url::parse(self.url.expose())
            .map_err(|e| bad("url", format!("malformed NATS URL `{}`: {e}", self.url)))?;
        if !crate::SCHEMES.contains(&u.scheme()) {
            return Err(bad(
                "url",
                format!("expected nats:// or tls://, got `{}://`", u.scheme()),
            ));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(bad("url", "the URL names no host"));
        }
        if self.connection_name.is_empty() {
            return Err(bad("connection_name", "must not be empty"));
        }
        if self.max_ack_inflight == 0 {
            return Err(bad("max_ack_inflight", "must be at least 1"));
        }
        self.timeouts.validate(BACKEND)
    }

    /// The connect options and the server address (without credentials).
    pub(crate) async fn connect_options(&self) -> Result<(async_nats::ConnectOptions, String)> {
        let mut u = url::Url::parse(self.url.expose())
            .map_err(|e| bad("url", format!("malformed NATS URL `{}`: {e}", self.url)))?;
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.connection_name)
            .connection_timeout(self.timeouts.connect)
            .request_timeout(Some(self.timeouts.publish));
        let user = percent_encoding::percent_decode_str(u.username())
            .decode_utf8_lossy()
            .into_owned();
        let password = u.password().map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        });
        match (user.is_empty(), password) {
            (false, Some(password)) => options = options.user_and_password(user, password),
            (false, None) => options = options.token(user),
            _ => {}
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.expose().to_owned());
        }
        if let Some(path) = &self.creds_file {
            options = options.credentials_file(path).await.map_err(|e| {
                bad(
                    "creds_file",
                    format!("cannot read credentials file {}: {e}", path.display()),
                )
            })?;
        }
        if u.scheme() == "tls" {
            options = options.require_tls(true);
        }
        let _ = u.set_username("");
        let _ = u.set_password(None);
        let scheme_free = u.to_string();
        Ok((options, scheme_free))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_decoded_and_unknown_ones_refused() {
        let c = NatsConfig::from_url(
            "nats://127.0.0.1:4222?connection_name=a%20b&max_ack_inflight=5&creds=%2Ftmp%2Fx.creds",
        )
        .unwrap();
        assert_eq!(c.connection_name, "a b");
        assert_eq!(c.max_ack_inflight, 5);
        assert_eq!(
            c.creds_file.as_deref(),
            Some(std::path::Path::new("/tmp/x.creds"))
        );
        assert_eq!(c.url, "nats://127.0.0.1:4222");
        let e = NatsConfig::from_url("nats://127.0.0.1:4222?max_ack=5").unwrap_err();
        assert!(e.to_string().contains("`max_ack`"), "{e}");
        let e = NatsConfig::from_url("nats://127.0.0.1:4222?max_ack_inflight=lots").unwrap_err();
        assert_eq!(e.field(), Some("max_ack_inflight"));
        let e = NatsConfig::from_url("redis://127.0.0.1").unwrap_err();
        assert_eq!(e.field(), Some("url"));
    }

    #[test]
    fn secrets_never_show() {
        let c = NatsConfig {
            nkey_seed: Some("SUSECRETSEED".into()),
            token: Some("tok-secret".into()),
            ..NatsConfig::from_url("nats://alice:pw-secret@127.0.0.1:4222").unwrap()
        };
        let shown = format!("{c:?}");
        for secret in ["pw-secret", "SUSECRETSEED", "tok-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let c = NatsConfig::from_url("nats://s3cr3t-token@127.0.0.1:4222").unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-token"));
        let e = NatsConfig::from_url("nats://u:pw-secret@127.0.0.1:4222?bogus=1").unwrap_err();
        assert!(!e.to_string().contains("pw-secret"), "{e}");
    }
}
