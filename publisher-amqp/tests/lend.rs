//! A connection lent by the caller is used, and never closed by us.

mod support;

use std::sync::Arc;

use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use publisher_amqp::AmqpPublisher;
use publisher_core::testing::unique_name;
use publisher_core::{Event, Publisher};
use support::{Client, amqp_url};

#[tokio::test]
async fn lent_connection_is_used_and_survives_close() {
    if support::missing() {
        return;
    }
    let client = Client::connect().await;
    let queue = unique_name("publisher-test.lent");
    client.declare_queue(&queue, FieldTable::default()).await;
    let conn = Arc::new(
        Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap(),
    );
    let publisher = AmqpPublisher::builder()
        .lend_connection(conn.clone())
        .build()
        .await
        .unwrap();
    publisher
        .publish(Event::text(queue.clone(), "via lent connection"))
        .await
        .unwrap();
    publisher.close().await.unwrap();
    publisher.close().await.unwrap();
    assert!(
        conn.status().connected(),
        "a lent connection must not be closed"
    );
    // Still the caller's to use.
    let channel = conn.create_channel().await.unwrap();
    channel.close(200, "done".into()).await.unwrap();
    assert_eq!(client.message_count(&queue).await, 1);
    client.delete_queue(&queue).await;
    conn.close(200, "test done".into()).await.unwrap();
}
