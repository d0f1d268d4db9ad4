//! Several nodes in one URL, and quorum queues.

mod support;

use lapin::types::{AMQPValue, FieldTable};
use publisher_amqp::AmqpPublisher;
use publisher_core::testing::{free_port, unique_name};
use publisher_core::{Event, HealthStatus, Publisher};
use support::{Client, amqp_addr};

/// `amqp://guest:guest@<dead>,<the shared node>/%2f`: nothing listens on the first port, so the
/// publisher connects to the second, and its publishes are confirmed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_connect_to_the_first_that_answers() {
    if support::missing() {
        return;
    }
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.hosts");
    client.declare_queue(&queue, FieldTable::default()).await;
    let live = amqp_addr();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{},{}:{}/%2f",
        free_port(),
        live.ip(),
        live.port()
    );
    let p = AmqpPublisher::from_url(&url).await.expect("publisher");
    let health = p.health().await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health}");
    for i in 0..10 {
        p.publish(Event::text(queue.as_str(), format!("event {i}")))
            .await
            .expect("confirmed by the node that answered");
    }
    let got = client.drain(&queue).await;
    assert_eq!(got.len(), 10);
    p.close().await.expect("close");
    client.delete_queue(&queue).await;
}

/// A quorum queue confirms only once a quorum of its replicas has the message (on one node,
/// that node's log): publishes to it are confirmed and read back, a nack would be an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_confirm_and_hold_what_was_published() {
    if support::missing() {
        return;
    }
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.quorum");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    client
        .0
        .declare_durable_queue_with(&queue, args)
        .await
        .expect("quorum queue");
    let p = AmqpPublisher::from_url(&support::amqp_url())
        .await
        .expect("publisher");
    let events: Vec<Event> = (0..200)
        .map(|i| Event::text(queue.as_str(), format!("quorum {i}")))
        .collect();
    let outcome = p.publish_batch(events.clone()).await;
    for r in outcome.results() {
        r.as_ref().expect("confirmed");
    }
    let single = Event::text(queue.as_str(), "single");
    p.publish(single.clone()).await.expect("confirmed");
    let got = client.drain(&queue).await;
    let payloads: Vec<_> = got.iter().map(|e| e.payload().clone()).collect();
    let mut want: Vec<_> = events.iter().map(|e| e.payload().clone()).collect();
    want.push(single.payload().clone());
    assert_eq!(payloads, want);
    p.close().await.expect("close");
    client.delete_queue(&queue).await;
}
