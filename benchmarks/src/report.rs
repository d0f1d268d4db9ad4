//! The side-by-side table and its JSON.

use std::time::Duration;

use serde::Serialize;

use crate::workload::Sample;

/// One backend × workload: every repetition of raw and ours.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Backend name.
    pub backend: String,
    /// Workload label.
    pub workload: String,
    /// Events per run.
    pub events: u64,
    /// Raw events/s per repetition.
    pub raw_rates: Vec<f64>,
    /// Our events/s per repetition.
    pub ours_rates: Vec<f64>,
    /// ours/raw per repetition (pairs measured back to back).
    pub ratios: Vec<f64>,
    /// Raw p50 / p99 latency (µs) over all repetitions.
    pub raw_p50_us: u64,
    /// Raw p99 latency (µs).
    pub raw_p99_us: u64,
    /// Our p50 latency (µs).
    pub ours_p50_us: u64,
    /// Our p99 latency (µs).
    pub ours_p99_us: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn merged(samples: &[Sample], p: f64) -> Duration {
    let mut all: Vec<Duration> = samples.iter().flat_map(|s| s.latencies.clone()).collect();
    all.sort_unstable();
    if all.is_empty() {
        return Duration::ZERO;
    }
    all[((all.len() - 1) as f64 * p).round() as usize]
}

impl Row {
    /// Builds a row from paired samples.
    pub fn new(backend: &str, workload: &str, raw: &[Sample], ours: &[Sample]) -> Self {
        let raw_rates: Vec<f64> = raw.iter().map(Sample::rate).collect();
        let ours_rates: Vec<f64> = ours.iter().map(Sample::rate).collect();
        let ratios = raw_rates
            .iter()
            .zip(&ours_rates)
            .map(|(r, o)| o / r.max(1e-9))
            .collect();
        Self {
            backend: backend.to_owned(),
            workload: workload.to_owned(),
            events: raw.first().map_or(0, |s| s.events),
            raw_rates,
            ours_rates,
            ratios,
            raw_p50_us: merged(raw, 0.5).as_micros() as u64,
            raw_p99_us: merged(raw, 0.99).as_micros() as u64,
            ours_p50_us: merged(ours, 0.5).as_micros() as u64,
            ours_p99_us: merged(ours, 0.99).as_micros() as u64,
        }
    }

    /// Median raw events/s.
    pub fn raw_rate(&self) -> f64 {
        median(&self.raw_rates)
    }

    /// Median ours events/s.
    pub fn ours_rate(&self) -> f64 {
        median(&self.ours_rates)
    }

    /// Median ours/raw.
    pub fn ratio(&self) -> f64 {
        median(&self.ratios)
    }

    /// A ceiling workload: 1,024 or more single publishes in flight, or batches of 10,000 or
    /// more.
    pub fn is_ceiling(&self) -> bool {
        let n = |prefix: &str| {
            self.workload
                .strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
        };
        n("single c=").is_some_and(|c| c >= 1024) || n("batch ").is_some_and(|s| s >= 10_000)
    }

    fn ratio_min(&self) -> f64 {
        self.ratios.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn ratio_max(&self) -> f64 {
        self.ratios.iter().copied().fold(0.0, f64::max)
    }
}

/// Prints the table to stdout.
pub fn print(rows: &[Row]) {
    println!(
        "{:<8} {:<13} {:>8} {:>12} {:>12} {:>7} {:>15} {:>17} {:>17}",
        "backend",
        "workload",
        "events",
        "raw ev/s",
        "ours ev/s",
        "ratio",
        "ratio min..max",
        "raw p50/p99 µs",
        "ours p50/p99 µs"
    );
    for r in rows {
        println!(
            "{:<8} {:<13} {:>8} {:>12.0} {:>12.0} {:>7.3} {:>15} {:>17} {:>17}",
            r.backend,
            r.workload,
            r.events,
            r.raw_rate(),
            r.ours_rate(),
            r.ratio(),
            format!("{:.3}..{:.3}", r.ratio_min(), r.ratio_max()),
            format!("{}/{}", r.raw_p50_us, r.raw_p99_us),
            format!("{}/{}", r.ours_p50_us, r.ours_p99_us),
        );
    }
}

/// A target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is claimed.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether the claim held.
    pub met: bool,
}

/// Checks the published targets against `rows`.
pub fn checks(rows: &[Row]) -> Vec<Check> {
    let mut out = Vec::new();
    for r in rows {
        out.push(Check {
            target: format!("{} {}: ours/raw >= 0.95", r.backend, r.workload),
            measured: format!("{:.3}", r.ratio()),
            met: r.ratio() >= 0.95,
        });
    }
    // At the ceiling, the latency a caller sees stays near the raw client's.
    for r in rows.iter().filter(|r| r.is_ceiling()) {
        let x = r.ours_p99_us as f64 / (r.raw_p99_us as f64).max(1.0);
        out.push(Check {
            target: format!("{} {}: ours p99 <= 1.2x raw p99", r.backend, r.workload),
            measured: format!("{x:.2}x ({} vs {} µs)", r.ours_p99_us, r.raw_p99_us),
            met: x <= 1.2,
        });
    }
    let find = |b: &str, w: &str| rows.iter().find(|r| r.backend == b && r.workload == w);
    if let (Some(batch), Some(single)) = (find("redis", "batch 1000"), find("redis", "single c=1"))
    {
        let x = batch.ours_rate() / single.ours_rate().max(1e-9);
        out.push(Check {
            target: "redis publish_batch(1000) >= 10x single publish at c=1".into(),
            measured: format!("{x:.1}x"),
            met: x >= 10.0,
        });
    }
    if let Some(c) = rows
        .iter()
        .filter(|r| r.backend == "console")
        .max_by(|a, b| a.ours_rate().total_cmp(&b.ours_rate()))
    {
        out.push(Check {
            target: "console >= 1,000,000 events/s of JSON lines to a file".into(),
            measured: format!("{:.0} events/s ({})", c.ours_rate(), c.workload),
            met: c.ours_rate() >= 1_000_000.0,
        });
    }
    out
}
