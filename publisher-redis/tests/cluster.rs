//! Redis Cluster and Sentinel, on clusters of the test's own (the node failure scenario of the
//! history suite runs in `conformance.rs`): routing by slot, batches over many slots, health,
//! and a master killed under load without WAIT.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use publisher_core::{ErrorKind, Event, HealthStatus, Publisher};
use publisher_redis::testing::xrange;
use publisher_redis::{Mode, RedisConfig, RedisPublisher};
use support::cluster::{RedisCluster, Sentineled, opener, tools_missing};

fn topics(n: usize) -> Vec<String> {
    let run = uuid::Uuid::now_v7();
    (0..n)
        .map(|i| format!("publisher-test.cluster.{run}.{i}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_by_slot_and_a_batch_over_many_slots_gets_one_result_per_event() {
    if tools_missing() {
        return;
    }
    let cluster = RedisCluster::start().await;
    let p = opener(cluster.url(), 0)().await.expect("publisher");
    let health = p.health().await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health}");
    assert!(
        health
            .to_string()
            .contains("cluster_state:ok on every master (3)"),
        "{health}"
    );

    let topics = topics(24);
    let mut sent: HashMap<String, Vec<Event>> = HashMap::new();
    for (i, topic) in topics.iter().enumerate() {
        let e = Event::text(topic.as_str(), format!("single {i}"));
        p.publish(e.clone()).await.expect("publish");
        sent.entry(topic.clone()).or_default().push(e);
    }
    let batch: Vec<Event> = (0..600)
        .map(|i| Event::text(topics[i % topics.len()].as_str(), format!("batch {i}")))
        .collect();
    let outcome = p.publish_batch(batch.clone()).await;
    assert_eq!(outcome.results().len(), batch.len());
    for (e, r) in batch.iter().zip(outcome.results()) {
        r.as_ref().expect("every event of the batch confirmed");
        sent.entry(e.topic().to_owned())
            .or_default()
            .push(e.clone());
    }

    // Read back with redis-rs's own cluster client: every stream holds exactly what was sent
    // to it, in order, and the topics live on more than one master.
    let mut conn = publisher_redis::testing::connect(&cluster.url())
        .await
        .expect("probe");
    let mut masters = HashSet::new();
    for topic in &topics {
        let got = xrange(&mut conn, topic).await.expect("xrange");
        let want = &sent[topic];
        let payloads = |v: &[Event]| v.iter().map(|e| e.payload().clone()).collect::<Vec<_>>();
        assert_eq!(payloads(&got), payloads(want), "stream {topic}");
        masters.insert(cluster.master_of(topic).await);
    }
    assert!(
        masters.len() > 1,
        "24 topics all on one master: {masters:?}"
    );
    p.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_without_wait_loses_nothing_the_surviving_masters_acknowledged() {
    if tools_missing() {
        return;
    }
    let cluster = Arc::new(RedisCluster::start().await);
    let p: Arc<dyn Publisher> = Arc::from(opener(cluster.url(), 0)().await.expect("publisher"));
    let topics = Arc::new(topics(12));
    // Who served each stream when the master was killed.
    let mut owner = HashMap::new();
    for topic in topics.iter() {
        owner.insert(topic.clone(), cluster.master_of(topic).await);
    }
    let victim = owner[&topics[0]];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::<(Event, bool)>::new()));
    for w in 0..16 {
        let (p, topics, outcomes, stop) =
            (p.clone(), topics.clone(), outcomes.clone(), stop.clone());
        workers.spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let e = Event::text(topics[(w + i) % topics.len()].as_str(), format!("{w}/{i}"));
                i += 1;
                let r = p.publish(e.clone()).await;
                if let Err(err) = &r {
                    assert!(
                        matches!(
                            err.kind(),
                            ErrorKind::OutcomeUnknown
                                | ErrorKind::Connect
                                | ErrorKind::Unavailable
                                | ErrorKind::Timeout
                        ),
                        "a failure the fault does not explain: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                outcomes.lock().unwrap().push((e, r.is_ok()));
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.kill_master_of(&topics[0]).await, victim);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(w) = workers.join_next().await {
        w.expect("worker");
    }

    // Recovered without a new publisher: a publish to the failed-over slot succeeds.
    p.publish(Event::text(topics[0].as_str(), "after"))
        .await
        .expect("the publisher recovered");

    let mut conn = publisher_redis::testing::connect(&cluster.url())
        .await
        .expect("probe");
    let mut held: HashSet<(String, bytes::Bytes)> = HashSet::new();
    for topic in topics.iter() {
        for e in xrange(&mut conn, topic).await.expect("xrange") {
            held.insert((topic.clone(), e.payload().clone()));
        }
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let (mut lost_on_survivors, mut lost_on_victim, mut ok) = (0, 0, 0);
    for (e, was_ok) in &outcomes {
        if !was_ok {
            continue;
        }
        ok += 1;
        if !held.contains(&(e.topic().to_owned(), e.payload().clone())) {
            if owner[e.topic()] == victim {
                lost_on_victim += 1;
            } else {
                lost_on_survivors += 1;
            }
        }
    }
    println!(
        "redis cluster, a master killed without WAIT: {} publishes, {ok} ok, {} failed (typed), \
         lost on surviving masters {lost_on_survivors}, lost on the killed master's slots \
         {lost_on_victim} (asynchronous replication: wait_replicas closes that window)",
        outcomes.len(),
        outcomes.len() - ok
    );
    assert!(
        ok < outcomes.len(),
        "the kill failed no publish: it came too late"
    );
    assert_eq!(lost_on_survivors, 0);
    p.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_name_the_master_and_a_new_one_after_a_failover() {
    if tools_missing() {
        return;
    }
    let servers = Sentineled::start().await;
    let p = opener(servers.url(), 0)().await.expect("publisher");
    let health = p.health().await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health}");
    let topic = topics(1).remove(0);
    p.publish(Event::text(topic.as_str(), "before"))
        .await
        .expect("publish to the first master");
    // Replicated before the kill (read on the replica itself), so the new master holds it.
    let mut replica =
        publisher_redis::testing::connect(&format!("redis://127.0.0.1:{}", servers.replica_port()))
            .await
            .expect("replica");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while xrange(&mut replica, &topic)
        .await
        .expect("xrange")
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never got it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    servers.kill_master().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match p.publish(Event::text(topic.as_str(), "after")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut conn = publisher_redis::testing::connect(&servers.url())
        .await
        .expect("probe on the new master");
    let got = xrange(&mut conn, &topic).await.expect("xrange");
    let payloads: Vec<_> = got.iter().map(|e| e.payload().clone()).collect();
    assert_eq!(
        payloads.first().map(|b| &b[..]),
        Some(&b"before"[..]),
        "the entry before the failover was replicated"
    );
    assert_eq!(payloads.last().map(|b| &b[..]), Some(&b"after"[..]));
    p.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_pubsub_reaches_a_subscriber_on_another_node() {
    use futures::StreamExt;
    if tools_missing() {
        return;
    }
    let cluster = RedisCluster::start().await;
    let channel = topics(1).remove(0);
    // A subscriber on a master that does not serve the channel's slot: the cluster forwards
    // every PUBLISH to every node.
    let owner = cluster.master_of(&channel).await;
    let other = cluster
        .ports()
        .into_iter()
        .find(|p| *p != owner)
        .expect("another node");
    let client = redis::Client::open(format!("redis://127.0.0.1:{other}")).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&channel).await.expect("subscribe");
    let mut messages = pubsub.into_on_message();
    let p = RedisPublisher::builder()
        .config(RedisConfig {
            mode: Mode::Pubsub,
            ..RedisConfig::from_url(&cluster.url()).expect("url")
        })
        .build()
        .expect("publisher");
    let sent = Event::text(channel.as_str(), "to every node");
    p.publish(sent.clone()).await.expect("published");
    let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("a message within 10 s")
        .expect("a message");
    let got = publisher_core::envelope::Envelope::parse(msg.get_payload_bytes())
        .and_then(publisher_core::envelope::Envelope::into_event)
        .expect("an envelope");
    assert_eq!(got.id(), sent.id());
    assert_eq!(got.payload(), sent.payload());
    p.close().await.expect("close");
}

/// A slot moving between masters: a key already migrated answers `ASK` on the old master, and
/// the publish follows it with `ASKING` to the new one; after the move, `MOVED` is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_key_is_followed_by_ask_then_moved() {
    if tools_missing() {
        return;
    }
    let cluster = RedisCluster::start().await;
    let topic = topics(1).remove(0);
    let p = opener(cluster.url(), 0)().await.expect("publisher");
    p.publish(Event::text(topic.as_str(), "before"))
        .await
        .expect("before");
    let source = cluster.master_of(&topic).await;
    let target = cluster
        .masters()
        .await
        .into_iter()
        .find(|m| *m != source)
        .expect("another master");
    let slot = cluster.keyslot(&topic).await;
    let (source_id, target_id) = (cluster.id(source).await, cluster.id(target).await);
    cluster
        .run(
            target,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
        )
        .await;
    cluster
        .run(
            source,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
        )
        .await;
    cluster
        .run(
            source,
            &[
                "MIGRATE",
                "127.0.0.1",
                &target.to_string(),
                "",
                "0",
                "5000",
                "KEYS",
                &topic,
            ],
        )
        .await;

    // The old master answers ASK for the migrated key: the publish lands on the new one.
    p.publish(Event::text(topic.as_str(), "during"))
        .await
        .expect("ASK followed");
    assert_eq!(
        cluster.xlen_asking(target, &topic).await,
        2,
        "both entries on the new master"
    );

    for port in cluster.masters().await {
        cluster
            .run(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id])
            .await;
    }
    p.publish(Event::text(topic.as_str(), "after"))
        .await
        .expect("MOVED followed");
    let mut conn = publisher_redis::testing::connect(&cluster.url())
        .await
        .expect("probe");
    let got: Vec<_> = xrange(&mut conn, &topic)
        .await
        .expect("xrange")
        .iter()
        .map(|e| e.payload().clone())
        .collect();
    assert_eq!(
        got,
        ["before", "during", "after"].map(|s| bytes::Bytes::from_static(s.as_bytes()))
    );
    p.close().await.expect("close");
}
