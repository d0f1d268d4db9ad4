//! Every conformance scenario against a real Kafka-protocol broker (tansu in CI, or
//! `PUBLISHER_TEST_KAFKA_BROKERS`), read back with an rdkafka consumer.

mod support;

publisher_core::conformance_tests!(support::harness);
