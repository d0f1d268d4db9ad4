//! [`ConsoleConfig`]: where lines go, in which format, flushed when.

use std::path::PathBuf;

use publisher_core::{Error, Result, Timeouts, UrlOptions};
use serde::{Deserialize, Serialize};

use crate::BACKEND;

/// Where the console publisher writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Standard output (default).
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Text when the target is a terminal, JSON lines otherwise (default).
    #[default]
    Auto,
    /// One JSON object per line (see the crate docs for the fields).
    Json,
    /// A readable line: time, topic, key, headers, payload. Payloads must be UTF-8.
    Text,
}

/// When buffered lines are flushed to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FlushPolicy {
    /// After every event, before `publish` returns Ok (default): Ok means written and flushed.
    #[default]
    Event,
    /// After each `publish_batch` and at `close`; `publish` returns Ok once the line is in the
    /// buffer. Faster; a crash can lose buffered lines. A full buffer (64 KiB) is written
    /// beside the publishes, which wait only when 1 MiB of lines waits for a slower output.
    /// After a write failed or stalled past the publish timeout, publishes are refused
    /// (`Unavailable`), and close counts the lines it could not write.
    Batch,
}

/// Configuration of the console publisher. Every field has a documented default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where to write. Default: stdout.
    pub target: Target,
    /// Line format. Default: auto (text on a terminal, JSON otherwise).
    pub format: Format,
    /// Flush policy. Default: every event.
    pub flush: FlushPolicy,
    /// ANSI colours in the text format. Default: none (`None` means: on a terminal unless
    /// `NO_COLOR` is set).
    pub color: Option<bool>,
    /// Timeouts; `publish` bounds a write to a stalled pipe. Default: [`Timeouts::default`].
    pub timeouts: Timeouts,
}

impl ConsoleConfig {
    /// Parses `console://stdout`, `console://stderr` or `console:///path/to/file`, with optional
    /// `?format=json|text|auto&flush=event|batch&color=true|false`.
    ///
    /// # Errors
    /// `Config` naming `url` (wrong scheme, unknown target) or the query parameter at fault.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("console://").ok_or_else(|| {
            Error::config(
                BACKEND,
                "url",
                format!("expected a console:// URL, got `{url}`"),
            )
        })?;
        let (target, mut options) = UrlOptions::split(BACKEND, rest)?;
        let target = percent_encoding::percent_decode_str(&target)
            .decode_utf8_lossy()
            .into_owned();
        let mut cfg = ConsoleConfig {
            target: match target.as_str() {
                "" | "stdout" => Target::Stdout,
                "stderr" => Target::Stderr,
                path if path.starts_with('/') => Target::File(PathBuf::from(path)),
                other => {
                    return Err(Error::config(
                        BACKEND,
                        "url",
                        format!(
                            "unknown console target `{other}`: use console://stdout, \
                             console://stderr or console:///absolute/path"
                        ),
                    ));
                }
            },
            ..Default::default()
        };
        if let Some(v) = options.take("format") {
            cfg.format = match v.as_str() {
                "auto" => Format::Auto,
                "json" => Format::Json,
                "text" => Format::Text,
                _ => return Err(bad_param("format", &v, "auto, json or text")),
            }
        }
        if let Some(v) = options.take("flush") {
            cfg.flush = match v.as_str() {
                "event" => FlushPolicy::Event,
                "batch" => FlushPolicy::Batch,
                _ => return Err(bad_param("flush", &v, "event or batch")),
            }
        }
        if let Some(color) = options.take_bool("color", "color")? {
            cfg.color = Some(color);
        }
        options.finish(&["format", "flush", "color"])?;
        Ok(cfg)
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// `Config` naming the invalid field.
    pub fn validate(&self) -> Result<()> {
        self.timeouts.validate(BACKEND)?;
        if let Target::File(path) = &self.target
            && path.as_os_str().is_empty()
        {
            return Err(Error::config(
                BACKEND,
                "target",
                "file path must not be empty",
            ));
        }
        Ok(())
    }
}

fn bad_param(name: &'static str, value: &str, expected: &str) -> Error {
    Error::config(
        BACKEND,
        name,
        format!("invalid value `{value}`: expected {expected}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use publisher_core::ErrorKind;

    #[test]
    fn parses_targets_and_query() {
        assert_eq!(
            ConsoleConfig::from_url("console://stdout").unwrap().target,
            Target::Stdout
        );
        let c = ConsoleConfig::from_url("console://stderr?format=json&flush=batch&color=false")
            .unwrap();
        assert_eq!(c.target, Target::Stderr);
        assert_eq!(c.format, Format::Json);
        assert_eq!(c.flush, FlushPolicy::Batch);
        assert_eq!(c.color, Some(false));
        assert_eq!(
            ConsoleConfig::from_url("console:///tmp/x.jsonl")
                .unwrap()
                .target,
            Target::File("/tmp/x.jsonl".into())
        );
    }

    #[test]
    fn bad_urls_name_the_field() {
        let e = ConsoleConfig::from_url("redis://x").unwrap_err();
        assert_eq!((e.kind(), e.field()), (ErrorKind::Config, Some("url")));
        let e = ConsoleConfig::from_url("console://printer").unwrap_err();
        assert_eq!(e.field(), Some("url"));
        let e = ConsoleConfig::from_url("console://stdout?format=xml").unwrap_err();
        assert_eq!(e.field(), Some("format"));
        let e = ConsoleConfig::from_url("console://stdout?colour=1").unwrap_err();
        assert!(e.message().contains("colour"));
    }
}
