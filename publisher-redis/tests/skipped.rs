//! The run's list of skipped backends. `cargo test --workspace` runs the test binaries package by
//! package in name order, and this is the last binary of the last package (`publisher-redis`,
//! `skipped` after its other tests), so a run with missing brokers ends with what it did not
//! test (only the doc tests come after). Each test binary that skipped a backend said so as it
//! happened, and recorded it for this list.

fn main() {
    publisher_core::testing::report_skips();
}
