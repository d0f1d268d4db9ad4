//! Health reports.

use std::time::Duration;

/// Whether a publisher can currently publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HealthStatus {
    /// The broker answered within the health timeout.
    Healthy,
    /// The broker answered, but something is off (slow, partially reachable).
    Degraded,
    /// The broker did not answer, or the publisher is closed.
    Unhealthy,
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// A health report: status, the backend, round-trip latency when measured, and a detail line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// The backend name.
    pub backend: &'static str,
    /// Round-trip latency of the check, when one was made.
    pub latency: Option<Duration>,
    /// A human-readable detail (`PONG`, `3 brokers`, the error that made it unhealthy).
    pub detail: String,
}

impl Health {
    /// A healthy report.
    pub fn healthy(
        backend: &'static str,
        latency: Option<Duration>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status: HealthStatus::Healthy,
            backend,
            latency,
            detail: detail.into(),
        }
    }

    /// An unhealthy report.
    pub fn unhealthy(backend: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Unhealthy,
            backend,
            latency: None,
            detail: detail.into(),
        }
    }

    /// The report of a closed publisher.
    pub fn closed(backend: &'static str) -> Self {
        Self::unhealthy(backend, "publisher is closed")
    }

    /// Whether the status is [`HealthStatus::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.backend, self.status)?;
        if let Some(l) = self.latency {
            write!(f, " in {l:.1?}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}
