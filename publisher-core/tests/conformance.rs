//! The memory publisher passes the whole conformance suite.

use publisher_core::testing::{MemoryProbe, ProbeHarness, memory_harness};

async fn harness() -> ProbeHarness<MemoryProbe> {
    memory_harness()
}

publisher_core::conformance_tests!(harness);
