//! [`TraceContext`]: W3C trace-context propagation into event headers.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Layer;
use crate::{BatchOutcome, Event, Publisher, Receipt, Result};

/// Injects the current `tracing` span's OpenTelemetry context as W3C `traceparent` (and
/// `tracestate` when set) headers into every event, so consumers can continue the trace. Needs a
/// `tracing_opentelemetry` layer in the subscriber; without a sampled span nothing is added.
/// Headers the event already has under those names are replaced.
#[derive(Debug)]
pub struct TraceContext<P> {
    inner: P,
    propagator: TraceContextPropagator,
}

struct HeaderInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl<P: Publisher> TraceContext<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        Self {
            inner,
            propagator: TraceContextPropagator::new(),
        }
    }

    fn inject(&self, event: Event) -> Event {
        let cx = tracing::Span::current().context();
        let mut headers = event.headers().clone();
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(&mut headers));
        event.with_headers(headers)
    }
}

impl<P: Publisher> Layer for TraceContext<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    async fn publish(&self, event: Event) -> Result<Receipt> {
        let event = self.inject(event);
        self.inner.publish(event).await
    }

    async fn publish_batch(&self, events: Vec<Event>) -> BatchOutcome {
        let events = events.into_iter().map(|e| self.inject(e)).collect();
        self.inner.publish_batch(events).await
    }
}
