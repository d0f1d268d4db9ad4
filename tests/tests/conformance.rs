//! The whole conformance suite on every backend, with every publisher built by
//! `publisher::from_url`: the facade path is what is proven.

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            macro_rules! scenario {
                ($scenario:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $scenario() {
                        // None: the broker is missing and the reason was printed (a failure
                        // under CI).
                        let Some(suite) = publisher_integration::suites::$backend().await else {
                            return;
                        };
                        publisher_core::testing::$scenario(&suite).await;
                    }
                };
            }
            // The conformance scenarios; the history ones run in each backend's own crate,
            // where a harness can cut connections and restart a broker of its own.
            publisher_core::for_each_scenario!(conformance: scenario);
        }
    };
}

suite!(redis_stream);
suite!(redis_pubsub);
suite!(amqp);
suite!(kafka);
suite!(nats);
suite!(console);
