//! Every conformance and history scenario against a real NATS server with JetStream (the
//! local one, or `PUBLISHER_TEST_NATS_URL`), read back through the stream's own API.

mod support;

publisher_core::conformance_tests!(support::harness);
