//! The cluster-wide feed against a real Kafka-protocol broker (`EMISSIONS_KAFKA_BROKERS`;
//! `cargo xtask ci` starts one): two app instances, each with its own feed on the topic its
//! Kafka adapter writes; clients see events committed on either instance, exactly once, in
//! key order, each only their own, and resume on the other instance.
#![cfg(feature = "kafka")]

#[path = "../../emissions-kafka/tests/support/mod.rs"]
mod broker;
mod support;

use std::time::Duration;

use emissions_core::{CloudEvents, Emissions};
use emissions_kafka::{KafkaEndpoint, ValueFormat};
use emissions_websocket::{KafkaSource, LiveFeed};
use rdkafka::ClientConfig;
use serde_json::{Value, json};
use support::*;

/// The broker and a new topic of `partitions` partitions; `None` (the test is skipped)
/// without a broker.
async fn fresh_topic(partitions: i32) -> Option<(String, String)> {
    let brokers = broker::brokers()?;
    let topic = format!("feed-{}", uuid::Uuid::now_v7().simple());
    broker::create_topic(&brokers, &topic, partitions).await;
    Some((brokers, topic))
}

/// One instance of the service: its engine writes to Kafka (keyed by user, envelope values so
/// the metadata reaches `may_see`); its feed reads every instance's events from Kafka.
async fn instance(brokers: &str, topic: &str) -> App {
    instance_writing(brokers, topic, |kafka| kafka.value(ValueFormat::Envelope)).await
}

/// One instance whose Kafka adapter writes records as `format` makes it.
async fn instance_writing(
    brokers: &str,
    topic: &str,
    format: impl FnOnce(KafkaEndpoint) -> KafkaEndpoint,
) -> App {
    let kafka = format(
        KafkaEndpoint::new("kafka", brokers)
            .topic(topic)
            .key_from_metadata("user_id"),
    );
    let emissions = Emissions::builder()
        .adapter(kafka)
        .unwrap()
        .start()
        .await
        .unwrap();
    let feed = LiveFeed::builder()
        .events(["order_*"])
        .history(4096)
        .build_on_kafka(Users, KafkaSource::new(brokers, [topic]))
        .await
        .unwrap();
    assert!(feed.adapter().is_err(), "a Kafka feed has no adapter");
    mount(emissions, feed).await
}

/// Commits `n` events alternating between alice and bob.
async fn orders(app: &App, n: usize) -> Vec<emissions_core::Event> {
    let events: Vec<(&'static str, &str)> = (0..n)
        .map(|i| ("order_created", if i % 2 == 0 { "alice" } else { "bob" }))
        .collect();
    commit(&app.emissions, &events).await
}

fn seqs(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["event"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_every_instances_events_once_in_order_and_resumes_on_the_other_instance() {
    let Some((brokers, topic)) = fresh_topic(3).await else {
        return;
    };
    let a = instance(&brokers, &topic).await;
    let b = instance(&brokers, &topic).await;

    // Alice on A, bob on A, alice by SSE on B; orders committed on B.
    let mut alice = ws(&a, "alice", "").await;
    let mut bob = ws(&a, "bob", "").await;
    let mut alice_sse = Sse::open(b.addr, "alice", "", None).await.unwrap();
    until("the SSE client registered", || {
        b.feed.stats().connected == 1
    })
    .await;
    let committed_on_b = orders(&b, 40).await;
    let alice_ids: Vec<String> = committed_on_b
        .iter()
        .filter(|e| e.metadata()["user_id"] == "alice")
        .map(|e| e.id().to_string())
        .collect();
    let bob_ids: Vec<String> = committed_on_b
        .iter()
        .filter(|e| e.metadata()["user_id"] == "bob")
        .map(|e| e.id().to_string())
        .collect();
    let seen = events(&mut alice, 20).await;
    assert_eq!(
        seqs(&seen),
        alice_ids,
        "alice's events, once each, in commit (key) order"
    );
    quiet(&mut alice).await;
    assert_eq!(seqs(&events(&mut bob, 20).await), bob_ids);
    quiet(&mut bob).await;
    let mut sse_ids = Vec::new();
    for _ in 0..20 {
        let (_, id, data) = alice_sse.next().await.unwrap();
        assert_eq!(id.as_deref(), data["position"].as_str());
        sse_ids.push(data["event"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        sse_ids, alice_ids,
        "the same stream through SSE on the other instance"
    );

    // Alice goes away after her 10th event on A; more orders are committed on A and B; she
    // comes back on B with her position and gets exactly what she missed.
    let position = seen[9]["position"].as_str().unwrap().to_owned();
    drop(alice);
    orders(&a, 10).await;
    orders(&b, 10).await;
    let mut back = ws(&b, "alice", &format!("since={position}")).await;
    // What B had consumed when she came back is replayed, then `resume`, then the rest live
    // (B may still be reading the newest orders from Kafka): 20 events in all, once each.
    let mut missed = Vec::new();
    let mut resumed_after = None;
    while missed.len() < 20 {
        let frame = next_json(&mut back).await;
        if frame["type"] == "resume" {
            assert_eq!(frame["recovered"], true, "{frame}");
            assert_eq!(frame["missed"], missed.len(), "{frame}");
            resumed_after = Some(missed.len());
            continue;
        }
        missed.push(frame);
    }
    if resumed_after.is_none() {
        let frame = next_json(&mut back).await;
        assert_eq!(
            frame,
            json!({"type": "resume", "recovered": true, "missed": 20})
        );
    }
    let missed_ids = seqs(&missed);
    assert_eq!(
        &missed_ids[..10],
        &alice_ids[10..],
        "the rest of the first orders"
    );
    assert!(missed.iter().all(|f| f["event"]["data"]["user"] == "alice"));
    let unique: std::collections::HashSet<&String> = missed_ids.iter().collect();
    assert_eq!(unique.len(), 20, "no duplicates");
    quiet(&mut back).await;

    // Live again, from either instance.
    let more = commit(
        &a.emissions,
        &[("order_paid", "alice"), ("order_paid", "bob")],
    )
    .await;
    let live = events(&mut back, 1).await;
    assert_eq!(live[0]["event"]["id"], more[0].id().to_string());
    quiet(&mut back).await;

    // A position of another stream is refused in the feed, not misread.
    let mut stranger = ws(&a, "alice", "since=kffffffffffffffff.1.1.1").await;
    assert_eq!(next_json(&mut stranger).await["recovered"], false);
    assert_eq!(a.feed.stats().authorization_panics, 0);
    a.feed.shutdown(Duration::from_secs(5)).await;
    b.feed.shutdown(Duration::from_secs(5)).await;
}

/// A deploy: a fresh instance starts while a client reconnects to it with a position far
/// back; it answers once it has read its history — all of the missed events, or
/// `recovered: false` — never `recovered: true` with a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_on_a_fresh_instance_gets_every_missed_event() {
    let Some((brokers, topic)) = fresh_topic(1).await else {
        return;
    };
    let a = instance(&brokers, &topic).await;
    let mut alice = ws(&a, "alice", "").await;
    let first = commit(&a.emissions, &[("order_created", "alice"); 3]).await;
    let seen = events(&mut alice, 3).await;
    let position = seen[0]["position"].as_str().unwrap().to_owned();
    drop(alice);
    // 1 000 more, about 2 KB each: several fetches for a new consumer.
    let rest = commit_padded(&a.emissions, 1000, "alice", 2000).await;
    let expected: Vec<String> = first[1..]
        .iter()
        .chain(&rest)
        .map(|e| e.id().to_string())
        .collect();
    let b = instance(&brokers, &topic).await;
    let mut back = ws(&b, "alice", &format!("since={position}")).await;
    let missed = events(&mut back, expected.len()).await;
    assert_eq!(seqs(&missed), expected);
    assert_eq!(
        next_json(&mut back).await,
        json!({"type": "resume", "recovered": true, "missed": expected.len()})
    );
}

/// History read at start is kept for resume, never sent live: a client connected while it
/// loads is not behind on it (and not cut off as slow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connected_while_history_loads_is_not_behind() {
    let Some((brokers, topic)) = fresh_topic(1).await else {
        return;
    };
    let a = instance(&brokers, &topic).await;
    commit_padded(&a.emissions, 3000, "alice", 1000).await;
    // The broker's high watermark may trail what it acknowledged (tansu's does): records
    // beyond it when an instance starts are live for that instance.
    let reported = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "watermarks")
            .create()
            .unwrap();
        probe
            .fetch_watermarks(&topic, 0, Duration::from_secs(5))
            .unwrap()
            .1
    };
    let b = instance(&brokers, &topic).await;
    let mut alice = ws(&b, "alice", "").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Enough live events for the feed to check every connection's lag.
    let live = commit(&a.emissions, &[("order_paid", "alice"); 300]).await;
    // Live: the new event, after at most the records the watermark did not cover yet.
    let mut before = 0;
    loop {
        let frame = events(&mut alice, 1).await.remove(0);
        if frame["event"]["id"] == live[0].id().to_string() {
            break;
        }
        before += 1;
    }
    assert!(
        before <= 3000 - reported,
        "{before} history frames sent live (the watermark covered {reported})"
    );
    let rest = events(&mut alice, 299).await;
    assert_eq!(
        rest.last().unwrap()["event"]["id"],
        live[299].id().to_string()
    );
    assert_eq!(
        b.feed
            .stats()
            .disconnects_for(emissions_websocket::Disconnect::Slow),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_reads_the_kafka_adapters_cloudevents_records_back_as_the_same_events() {
    for cloudevents in [
        CloudEvents::binary("/orders"),
        CloudEvents::structured("/orders"),
    ] {
        let Some((brokers, topic)) = fresh_topic(1).await else {
            return;
        };
        let ce = cloudevents.clone();
        let app = instance_writing(&brokers, &topic, |kafka| kafka.cloudevents(ce)).await;
        let mut alice = ws(&app, "alice", "").await;
        let sent = orders(&app, 6).await;
        let alices: Vec<_> = sent
            .iter()
            .filter(|e| e.metadata()["user_id"] == "alice")
            .collect();
        let seen = events(&mut alice, 3).await;
        for (frame, event) in seen.iter().zip(&alices) {
            let envelope = &frame["event"];
            assert_eq!(envelope["id"], event.id().to_string(), "{cloudevents:?}");
            assert_eq!(envelope["type"], event.name());
            assert_eq!(envelope["data"], event.payload_json());
            assert_eq!(
                envelope["metadata"]["user_id"], "alice",
                "may_see read it back"
            );
            assert_eq!(
                envelope["time"],
                emissions_core::envelope::rfc3339(event.emitted_at())
            );
        }
        quiet(&mut alice).await;
        app.emissions.shutdown(Duration::from_secs(5)).await;
    }
}
