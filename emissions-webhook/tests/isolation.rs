//! One event's failures cost no other event anything: per-event attempts, retries beside the
//! queue, and per-key order only where asked for — against a real receiver on loopback.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use emissions_core::{Emissions, RetryPolicy};
use serde_json::json;
use support::{Received, Reply, dead_letters, endpoint, receiver_per_event};

/// Requests per event number (`data.n`), in arrival order.
fn by_event(requests: &[Received]) -> HashMap<u64, Vec<Received>> {
    let mut map: HashMap<u64, Vec<Received>> = HashMap::new();
    for request in requests {
        let n = request.data()["n"].as_u64().unwrap();
        map.entry(n).or_default().push(request.clone());
    }
    map
}

#[tokio::test]
async fn a_receiver_failing_every_event_three_times_still_gets_all_fifty() {
    let receiver = receiver_per_event(|_, attempt| {
        if attempt <= 3 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let (dead, hook) = dead_letters();
    let emissions = Emissions::builder()
        .adapter(
            endpoint("hooks", &receiver.url)
                .retry(RetryPolicy::schedule([Duration::from_millis(20); 3]))
                .dead_letter(hook),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    for n in 0..50u64 {
        buffer.emit("order_created", &json!({ "n": n })).unwrap();
    }
    let outcome = buffer.commit().await.unwrap().settled().await;
    let counts = outcome.adapter("hooks").unwrap();
    assert_eq!((counts.delivered, counts.failed), (50, 0), "{counts:?}");
    assert!(dead.lock().unwrap().is_empty());
    let requests = by_event(&receiver.requests());
    assert_eq!(requests.len(), 50);
    for (n, sent) in &requests {
        assert_eq!(sent.len(), 4, "event {n} was sent {} times", sent.len());
        assert!(sent.iter().all(|r| r.webhook_id() == sent[0].webhook_id()));
    }
}

#[tokio::test]
async fn an_event_that_always_fails_delays_and_fails_no_other_event() {
    // Event 0 always gets a 500; its retries are at least half a second apart.
    let receiver = receiver_per_event(|received, _| {
        if received.data()["n"] == 0 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let (dead, hook) = dead_letters();
    let emissions = Emissions::builder()
        .adapter(
            endpoint("hooks", &receiver.url)
                .retry(RetryPolicy::schedule([Duration::from_secs(1); 3]))
                .dead_letter(hook),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    for n in 0..=20u64 {
        emissions
            .emit_now("order_created", &json!({ "n": n }))
            .await
            .unwrap();
    }
    emissions.settled().await;
    let requests = by_event(&receiver.requests());
    let poison = &requests[&0];
    assert_eq!(poison.len(), 4);
    for n in 1..=20 {
        let sent = &requests[&n];
        assert_eq!(sent.len(), 1, "event {n}");
        assert!(
            sent[0].at < poison[1].at,
            "event {n} waited for the poison's retry"
        );
    }
    let dead = dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].2.starts_with("receiver answered 500"),
        "{:?}",
        dead[0]
    );
    assert_eq!(dead[0].3, 4);
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    let counts = report.adapter("hooks").unwrap().counts;
    assert_eq!((counts.delivered, counts.failed), (20, 1));
}

#[tokio::test]
async fn with_a_key_a_retrying_event_holds_back_only_its_own_key_in_order() {
    // Event 0 (key a) fails twice, then succeeds. Events 1–3 are key a, 4–8 key b.
    let receiver = receiver_per_event(|received, attempt| {
        if received.data()["n"] == 0 && attempt <= 2 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let emissions = Emissions::builder()
        .adapter(
            endpoint("hooks", &receiver.url)
                .concurrency(4)
                .retry(RetryPolicy::schedule([Duration::from_secs(1); 3]))
                .ordered_by(|e| e.payload_json()["key"].as_str().map(str::to_owned)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    for n in 0..9u64 {
        let key = if n <= 3 { "a" } else { "b" };
        buffer
            .emit("order_updated", &json!({ "n": n, "key": key }))
            .unwrap();
    }
    let outcome = buffer.commit().await.unwrap().settled().await;
    assert!(outcome.is_delivered(), "{outcome:?}");
    let requests = receiver.requests();
    let per_event = by_event(&requests);
    let poison = &per_event[&0];
    assert_eq!(poison.len(), 3);
    for n in 1..9 {
        assert_eq!(per_event[&n].len(), 1, "event {n} sent once, never charged");
    }
    for n in 4..9 {
        assert!(per_event[&n][0].at < poison[1].at, "key b waited for key a");
    }
    let key_a: Vec<u64> = requests
        .iter()
        .filter(|r| r.data()["key"] == "a")
        .map(|r| r.data()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(key_a, [0, 0, 0, 1, 2, 3]);
}
