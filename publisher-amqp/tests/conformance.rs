//! Every conformance and history scenario against a real RabbitMQ, read back by consuming a
//! queue bound for the test with lapin (unique names per run, deleted afterwards).
//!
//! The history scenarios ignored below expose the AMQP defects that issue 14 fixes; run them
//! with `cargo test -p publisher-amqp --test conformance -- --ignored`.

mod support;

publisher_core::conformance_tests!(support::harness; ignore {
    history_mixed_c64 = "issue 14: basic.return is pinned on whichever confirm completes next, \
        so concurrent unroutable and routable publishes get each other's outcomes",
    history_mixed_c1024 = "issue 14: returns are attributed to the wrong publish under concurrency",
    history_mixed_batches = "issue 14: returns are attributed to the wrong event inside batches",
    history_oversized_among_small = "issue 14: an oversized message closes the shared channel \
        (406) and its neighbours get its error; sizes are not checked before sending",
});
