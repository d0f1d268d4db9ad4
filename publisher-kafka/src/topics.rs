//! [`KnownTopics`]: a topic's existence checked once, before its first record, so that a
//! missing topic fails at once and by name instead of after `message_timeout`.
//!
//! librdkafka keeps a record for a topic it has no metadata for in its queue until
//! `topic.metadata.propagation.max.ms` or `message.timeout.ms` runs out, then fails it with a
//! timeout, which reads as "outcome unknown, retry". We ask the broker first: one metadata
//! request for that one topic (never for every topic), once per topic, shared by every publish
//! that waits for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use publisher_core::{Error, ErrorKind, Result};
use rdkafka::error::RDKafkaErrorCode as Code;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;

use crate::BACKEND;

/// More distinct topics than this and the cache starts over (each topic is then checked again
/// once): a bound on memory for publishers that name topics per tenant or per key.
const MAX_TOPICS: usize = 10_000;

/// How long a "no such topic" answer is reused before the broker is asked again (the topic
/// may be created at any moment; meanwhile publishes to it do not each cost a round trip).
const MISSING_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Topic {
    /// The broker reported the topic with its partitions.
    known: AtomicBool,
    /// One metadata request at a time per topic; the others wait for its answer. Holds the
    /// last answer that was not "exists", and when it came.
    checking: tokio::sync::Mutex<Option<(Instant, Failed)>>,
}

/// A lookup that failed the publish.
#[derive(Clone)]
enum Failed {
    Refused(Code),
    Unreachable(String),
}

/// The topics the broker confirmed exist.
#[derive(Default)]
pub(crate) struct KnownTopics {
    topics: RwLock<HashMap<String, Arc<Topic>, foldhash::fast::RandomState>>,
}

/// What the broker said of a topic.
enum Answer {
    Exists,
    /// It does not exist, or we may not see it: the record cannot be delivered.
    Refused(Code),
    /// An answer that settles nothing (a topic being created, a leader being elected): send
    /// and let librdkafka's own retries and timeouts decide.
    Unsure,
    /// No answer within the wait (brokers down or unreachable): nothing was sent.
    Unreachable(String),
}

impl KnownTopics {
    /// Ok when the topic is known or the broker's answer settles nothing; `Rejected` naming the
    /// topic when the broker says it does not exist (auto-creation off) or may not be written;
    /// `Connect` (retryable, nothing sent) when no broker answered within `wait`.
    pub(crate) async fn check(
        &self,
        producer: &FutureProducer,
        topic: &str,
        wait: Duration,
    ) -> Result<()> {
        let entry = {
            let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
            match topics.get(topic) {
                Some(t) if t.known.load(Ordering::Acquire) => return Ok(()),
                Some(t) => Some(t.clone()),
                None => None,
            }
        };
        let entry = match entry {
            Some(t) => t,
            None => {
                let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
                if topics.len() >= MAX_TOPICS {
                    topics.clear();
                }
                topics.entry(topic.to_owned()).or_default().clone()
            }
        };
        let queued = Instant::now();
        let mut last = entry.checking.lock().await;
        if entry.known.load(Ordering::Acquire) {
            return Ok(());
        }
        // A refusal is reused for a second; "unreachable" only by those who waited for the
        // lookup that found it (so N waiters never take N lookups in turn).
        match &*last {
            Some((at, Failed::Refused(code))) if at.elapsed() < MISSING_FOR => {
                return Err(refused(topic, *code));
            }
            Some((at, Failed::Unreachable(why))) if *at >= queued => {
                return Err(unreachable(topic, wait, why));
            }
            _ => {}
        }
        match ask(producer, topic, wait).await {
            Answer::Exists => {
                entry.known.store(true, Ordering::Release);
                *last = None;
                Ok(())
            }
            Answer::Unsure => Ok(()),
            Answer::Refused(code) => {
                *last = Some((Instant::now(), Failed::Refused(code)));
                Err(refused(topic, code))
            }
            Answer::Unreachable(why) => {
                let e = unreachable(topic, wait, &why);
                *last = Some((Instant::now(), Failed::Unreachable(why)));
                Err(e)
            }
        }
    }
}

impl KnownTopics {
    /// Whether the broker confirmed `topic` exists: the lookup every publish makes first,
    /// without waiting.
    pub(crate) fn is_known(&self, topic: &str) -> bool {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics
            .get(topic)
            .is_some_and(|t| t.known.load(Ordering::Acquire))
    }

    /// A topic the broker confirmed, if any.
    pub(crate) fn any_known(&self) -> Option<String> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics
            .iter()
            .find(|(_, t)| t.known.load(Ordering::Acquire))
            .map(|(name, _)| name.clone())
    }
}

fn unreachable(topic: &str, wait: Duration, why: &str) -> Error {
    Error::new(
        ErrorKind::Connect,
        BACKEND,
        format!("could not look up topic `{topic}` within {wait:?} ({why}); nothing was sent"),
    )
}

fn refused(topic: &str, code: Code) -> Error {
    let why = match code {
        Code::TopicAuthorizationFailed => "this client may not write to it",
        Code::InvalidTopic => "the name is not a valid Kafka topic name",
        _ => "it does not exist and the broker does not create topics on demand",
    };
    Error::new(
        ErrorKind::Rejected,
        BACKEND,
        format!("topic `{topic}`: {why} ({code:?})"),
    )
    .with_field("topic")
}

async fn ask(producer: &FutureProducer, topic: &str, wait: Duration) -> Answer {
    let (producer, name) = (producer.clone(), topic.to_owned());
    // A blocking librdkafka call: off the async worker, bounded by `wait`.
    let fetch = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&name), Timeout::After(wait))
    });
    let metadata = match tokio::time::timeout(wait + Duration::from_millis(200), fetch).await {
        Ok(Ok(Ok(metadata))) => metadata,
        Ok(Ok(Err(e))) => return Answer::Unreachable(e.to_string()),
        Ok(Err(e)) => return Answer::Unreachable(format!("lookup task failed: {e}")),
        Err(_) => return Answer::Unreachable("no answer".into()),
    };
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Answer::Unsure;
    };
    match t.error().map(Code::from) {
        None if !t.partitions().is_empty() => Answer::Exists,
        Some(
            code @ (Code::UnknownTopicOrPartition
            | Code::UnknownTopic
            | Code::TopicAuthorizationFailed
            | Code::InvalidTopic),
        ) => Answer::Refused(code),
        _ => Answer::Unsure,
    }
}
