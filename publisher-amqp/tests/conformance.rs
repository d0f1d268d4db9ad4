//! Every conformance and history scenario against a real RabbitMQ, read back by consuming a
//! queue bound for the test with lapin (unique names per run, deleted afterwards).

mod support;

publisher_core::conformance_tests!(support::harness);
