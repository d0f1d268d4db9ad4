//! `--receipts FILE`: one JSON line per input line, so that an operator can reconcile with the
//! broker or resend exactly what failed.
//!
//! ```text
//! {"line":1,"id":"0193…","ok":true,"position":{"stream_entry":"1700000000000-0"},"maybe_duplicate":false}
//! {"line":2,"id":"0193…","ok":false,"error":{"kind":"outcome_unknown","retryable":true,"message":"…"}}
//! {"line":3,"id":null,"ok":false,"error":{"kind":"invalid_input","retryable":false,"message":"…"}}
//! ```
//!
//! Lines come in the order their outcomes are known, not in input order. `maybe_duplicate` is
//! true when an earlier attempt of that line (under `--retry`) ended with an unknown outcome:
//! the broker may hold that copy too (same event id).

use std::path::Path;

use publisher::{Error, Position, Uuid};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What became of one input line.
#[derive(Debug)]
pub enum Outcome {
    /// Published: where the broker put it, and whether an earlier attempt may have too.
    Published {
        position: Position,
        maybe_duplicate: bool,
    },
    /// Not published (the error says whether the broker may hold it).
    Failed(Error),
    /// Not an event (invalid JSON, no topic…).
    Invalid(String),
    /// Read, but not sent: evpub was interrupted first.
    NotSent,
}

/// Sends receipt lines to the writer task; a no-op without `--receipts`.
#[derive(Debug, Clone)]
pub struct Receipts(Option<mpsc::Sender<String>>);

/// The writer task: its result says whether every receipt was written.
pub type Writer = JoinHandle<std::io::Result<()>>;

impl Receipts {
    /// No receipts.
    pub fn none() -> Self {
        Self(None)
    }

    /// Receipts written to `path` (created or truncated).
    ///
    /// # Errors
    /// When the file cannot be created.
    pub async fn to_file(path: &Path) -> std::io::Result<(Self, Writer)> {
        let file = tokio::fs::File::create(path).await?;
        let (tx, mut rx) = mpsc::channel::<String>(4096);
        let writer = tokio::spawn(async move {
            let mut out = BufWriter::new(file);
            while let Some(line) = rx.recv().await {
                out.write_all(line.as_bytes()).await?;
            }
            out.flush().await?;
            out.into_inner().sync_all().await
        });
        Ok((Self(Some(tx)), writer))
    }

    /// Records the outcome of input line `line` (event `id`, when it became one).
    pub async fn record(&self, line: usize, id: Option<Uuid>, outcome: &Outcome) {
        let Some(tx) = &self.0 else {
            return;
        };
        let mut text = receipt(line, id, outcome).to_string();
        text.push('\n');
        // A writer that failed has said so through its result; nothing more to do here.
        let _ = tx.send(text).await;
    }
}

fn receipt(line: usize, id: Option<Uuid>, outcome: &Outcome) -> Value {
    let id = id.map(|id| id.to_string());
    match outcome {
        Outcome::Published {
            position,
            maybe_duplicate,
        } => json!({
            "line": line,
            "id": id,
            "ok": true,
            "position": position_json(position),
            "maybe_duplicate": maybe_duplicate,
        }),
        Outcome::Failed(e) => json!({
            "line": line,
            "id": id,
            "ok": false,
            "error": {
                "kind": e.kind().as_str(),
                "retryable": e.is_retryable(),
                "message": e.to_string(),
            },
        }),
        Outcome::Invalid(message) => json!({
            "line": line,
            "id": id,
            "ok": false,
            "error": {"kind": "invalid_input", "retryable": false, "message": message},
        }),
        Outcome::NotSent => json!({
            "line": line,
            "id": id,
            "ok": false,
            "error": {
                "kind": "not_sent",
                "retryable": true,
                "message": "evpub was interrupted before publishing it",
            },
        }),
    }
}

fn position_json(position: &Position) -> Value {
    match position {
        Position::StreamEntry(id) => json!({ "stream_entry": id }),
        Position::Receivers(n) => json!({ "receivers": n }),
        Position::Partition { partition, offset } => {
            json!({ "partition": partition, "offset": offset })
        }
        Position::DeliveryTag(tag) => json!({ "delivery_tag": tag }),
        Position::Sequence(n) => json!({ "sequence": n }),
        Position::Stream {
            stream,
            sequence,
            duplicate,
        } => json!({ "stream": stream, "sequence": sequence, "duplicate": duplicate }),
        Position::Spooled { sequence } => json!({ "spooled": sequence }),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_say_what_happened_and_where() {
        let id = Uuid::now_v7();
        let ok = receipt(
            3,
            Some(id),
            &Outcome::Published {
                position: Position::Partition {
                    partition: 2,
                    offset: 41,
                },
                maybe_duplicate: true,
            },
        );
        assert_eq!(ok["line"], 3);
        assert_eq!(ok["id"], id.to_string());
        assert_eq!(ok["position"]["offset"], 41);
        assert_eq!(ok["maybe_duplicate"], true);
        let failed = receipt(
            4,
            Some(id),
            &Outcome::Failed(Error::timeout(
                "redis",
                "waiting for the reply",
                Default::default(),
            )),
        );
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["error"]["retryable"], true);
        let invalid = receipt(5, None, &Outcome::Invalid("invalid JSON".into()));
        assert_eq!(invalid["id"], Value::Null);
        assert_eq!(invalid["error"]["kind"], "invalid_input");
    }
}
