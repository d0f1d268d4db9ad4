//! The whole conformance suite on every backend, with every publisher built by
//! `publisher::from_url`: the facade path is what is proven.

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            suite!(@each $backend;
                publish_and_read_back,
                batch_results_per_event,
                concurrent_publishes_all_delivered,
                close_is_idempotent_and_concurrent,
                publish_after_close_is_closed,
                close_during_publishes_loses_nothing,
                health_reflects_state,
                invalid_event_is_typed,
                drop_without_close_leaves_no_task
            );
        }
    };
    (@each $backend:ident; $($scenario:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                // None: the broker is missing and the reason was printed (a failure under CI).
                let Some(suite) = publisher_integration::suites::$backend().await else {
                    return;
                };
                publisher_core::testing::$scenario(&suite).await;
            }
        )*
    };
}

suite!(redis_stream);
suite!(redis_pubsub);
suite!(amqp);
suite!(kafka);
suite!(nats);
suite!(console);
