//! [`PublisherConfig`]: any backend, described in TOML or environment variables.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use publisher_core::{Error, Result};

pub use crate::backends::PublisherConfig;
use crate::from_url::FACADE;

fn figment_error(e: figment::Error) -> Error {
    let field = e
        .path
        .iter()
        .filter(|p| !p.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(".");
    let err = Error::config(
        FACADE,
        if field.is_empty() {
            "config".to_owned()
        } else {
            field
        },
        e.to_string(),
    );
    err.with_source(e)
}

impl PublisherConfig {
    /// Reads a TOML file, then lets `PUBLISHER__…` environment variables override it.
    ///
    /// # Errors
    /// `Config` naming the field at fault (or `config` when no backend is described).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::extract(
            Figment::new()
                .merge(Toml::file_exact(path.as_ref()))
                .merge(Env::prefixed("PUBLISHER__").split("__")),
        )
    }

    /// Reads `PUBLISHER__…` environment variables only.
    ///
    /// # Errors
    /// As [`PublisherConfig::load`].
    pub fn from_env() -> Result<Self> {
        Self::extract(Figment::new().merge(Env::prefixed("PUBLISHER__").split("__")))
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// As [`PublisherConfig::load`].
    pub fn from_toml(text: &str) -> Result<Self> {
        Self::extract(Figment::new().merge(Toml::string(text)))
    }

    fn extract(figment: Figment) -> Result<Self> {
        figment.extract().map_err(figment_error)
    }
}
