//! The memory publisher passes the whole conformance suite.

use publisher_core::testing::MemoryHarness;

async fn harness() -> MemoryHarness {
    MemoryHarness::default()
}

publisher_core::conformance_tests!(harness);
