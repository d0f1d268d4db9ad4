//! Every conformance scenario against a real Redis, in stream mode (read back with XRANGE) and
//! pub/sub mode (read back by a SUBSCRIBE connection).

mod support;

mod stream {
    publisher_core::conformance_tests!(super::support::stream_harness);
}

mod pubsub {
    publisher_core::conformance_tests!(super::support::pubsub_harness);
}
