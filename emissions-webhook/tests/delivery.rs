//! Delivery policy against real HTTP receivers on loopback; schedules on tokio's paused clock.

mod support;

use std::time::Duration;

use emissions_core::telemetry::names;
use emissions_core::{Emissions, RetryPolicy};
use emissions_testing::TestEmissions;
use serde_json::json;
use support::{Reply, always, dead_letters, endpoint, receiver, verifier};

async fn start(endpoint: emissions_webhook::WebhookEndpoint) -> Emissions {
    Emissions::builder()
        .adapter(endpoint)
        .unwrap()
        .start()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_500_three_times_then_200_is_sent_exactly_four_times_on_schedule() {
    let hooks = receiver(|n| Reply::Status(if n < 3 { 500 } else { 200 })).await;
    let emissions = start(endpoint("billing", &hooks.url)).await;
    let outcome = emissions
        .emit_now("order_created", &json!({"id": 1}))
        .await
        .unwrap()
        .settled()
        .await;
    assert_eq!(outcome.adapter("billing").unwrap().delivered, 1);

    let requests = hooks.requests();
    assert_eq!(requests.len(), 4);
    let id = requests[0].headers["webhook-id"].clone();
    for request in &requests {
        assert_eq!(
            request.headers["webhook-id"], id,
            "same id on every attempt"
        );
        assert_eq!(request.headers["content-type"], "application/json");
        verifier()
            .verify(&request.headers, &request.body)
            .expect("valid signature");
        assert_eq!(request.body, requests[0].body, "body built once");
    }
    // The default schedule: 5 s, 5 min, 30 min, each jittered into [d/2, d].
    for (pair, base) in requests.windows(2).zip([5, 300, 1800]) {
        let gap = pair[1].at - pair[0].at;
        let base = Duration::from_secs(base);
        assert!(
            gap >= base / 2 && gap <= base + Duration::from_secs(1),
            "{gap:?} vs {base:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_429_is_honoured() {
    let hooks = receiver(|n| {
        if n == 0 {
            Reply::WithHeader(429, "retry-after", "120".into())
        } else {
            Reply::Status(204)
        }
    })
    .await;
    let emissions = start(endpoint("limited", &hooks.url)).await;
    emissions.emit_now("a", &1).await.unwrap().settled().await;
    let requests = hooks.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_secs(120) && gap < Duration::from_secs(121),
        "{gap:?}"
    );
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let hooks = receiver(always(410)).await;
    let (dead, hook) = dead_letters();
    let emissions = start(endpoint("gone", &hooks.url).dead_letter(hook)).await;
    for i in 0..3 {
        emissions
            .emit_now("order_created", &i)
            .await
            .unwrap()
            .settled()
            .await;
    }
    assert_eq!(hooks.requests().len(), 1, "no request after the 410");
    let counts = emissions.stats().adapter("gone").unwrap().counts;
    assert_eq!((counts.delivered, counts.failed), (0, 3));
    let dead = dead.lock().unwrap();
    assert_eq!(dead.len(), 3);
    assert!(dead[0].2.contains("410"), "{}", dead[0].2);
    assert_eq!(
        dead[1].2,
        "endpoint disabled: the receiver answered 410 Gone"
    );
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let elsewhere = receiver(always(200)).await;
    let target = elsewhere.url.clone();
    let hooks = receiver(move |_| Reply::WithHeader(302, "location", target.clone())).await;
    let (dead, hook) = dead_letters();
    let emissions = start(endpoint("moved", &hooks.url).dead_letter(hook)).await;
    emissions.emit_now("a", &1).await.unwrap().settled().await;
    assert_eq!(hooks.requests().len(), 1);
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
    assert_eq!(dead.lock().unwrap()[0].3, 1, "not retried");
}

#[tokio::test]
async fn other_client_errors_are_dead_lettered_at_once() {
    let hooks = receiver(always(400)).await;
    let (dead, hook) = dead_letters();
    let emissions = start(endpoint("strict", &hooks.url).dead_letter(hook)).await;
    emissions.emit_now("a", &1).await.unwrap().settled().await;
    assert_eq!(hooks.requests().len(), 1);
    let dead = dead.lock().unwrap();
    assert_eq!(dead[0].0, "strict");
    assert_eq!(dead[0].1, ["a"]);
    assert_eq!(dead[0].2, "receiver answered 400: ok");
    assert_eq!(dead[0].3, 1);
}

#[tokio::test(start_paused = true)]
async fn a_hung_endpoint_is_cut_at_the_timeout() {
    let hooks = receiver(|_| Reply::Hang).await;
    let (dead, hook) = dead_letters();
    let emissions = start(
        endpoint("hung", &hooks.url)
            .retry(RetryPolicy::none())
            .dead_letter(hook),
    )
    .await;
    let started = tokio::time::Instant::now();
    emissions.emit_now("a", &1).await.unwrap().settled().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(15) && elapsed < Duration::from_secs(16),
        "{elapsed:?}"
    );
    let dead = dead.lock().unwrap();
    assert!(dead[0].2.starts_with("request failed"), "{}", dead[0].2);
}

#[tokio::test]
async fn an_endless_response_body_is_not_read_to_the_end() {
    let hooks = receiver(|_| Reply::EndlessBody).await;
    let emissions = start(
        endpoint("chatty", &hooks.url)
            .timeout(Duration::from_secs(10))
            .retry(RetryPolicy::none()),
    )
    .await;
    let outcome = emissions.emit_now("a", &1).await.unwrap().settled().await;
    // Reading the whole body would have run into the timeout and failed the event.
    assert_eq!(outcome.adapter("chatty").unwrap().delivered, 1);
    assert_eq!(hooks.requests().len(), 1);
}

#[tokio::test]
async fn an_oversized_payload_is_rejected_without_a_request() {
    let hooks = receiver(always(200)).await;
    let (dead, hook) = dead_letters();
    let emissions = start(
        endpoint("small", &hooks.url)
            .max_payload_bytes(512)
            .dead_letter(hook),
    )
    .await;
    emissions
        .emit_now("big", &"x".repeat(1024))
        .await
        .unwrap()
        .settled()
        .await;
    emissions
        .emit_now("small", &"x")
        .await
        .unwrap()
        .settled()
        .await;
    let requests = hooks.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].event_type(), "small");
    let dead = dead.lock().unwrap();
    assert!(dead[0].2.starts_with("payload of "), "{}", dead[0].2);
    assert!(
        dead[0].2.ends_with("exceeds the cap of 512 bytes"),
        "{}",
        dead[0].2
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_event_never_keeps_the_ones_after_it_waiting() {
    let hooks = receiver(|n| Reply::Status(if n < 2 { 503 } else { 200 })).await;
    let emissions = start(endpoint("unordered", &hooks.url)).await;
    let buffer = emissions.start();
    for i in 0..5 {
        buffer.emit(format!("e{i}"), &i).unwrap();
    }
    buffer.commit().await.unwrap().settled().await;
    let order: Vec<String> = hooks.requests().iter().map(|r| r.event_type()).collect();
    // e0 and e1 failed together and are retried together, after the others went through.
    assert_eq!(order, ["e0", "e1", "e2", "e3", "e4", "e0", "e1"]);
}

#[tokio::test(start_paused = true)]
async fn with_one_key_a_retried_event_holds_back_the_later_ones() {
    let hooks = receiver(|n| Reply::Status(if n < 2 { 503 } else { 200 })).await;
    let emissions = start(endpoint("ordered", &hooks.url).ordered_by(|_| Some("one".into()))).await;
    let buffer = emissions.start();
    for i in 0..5 {
        buffer.emit(format!("e{i}"), &i).unwrap();
    }
    buffer.commit().await.unwrap().settled().await;
    let order: Vec<String> = hooks.requests().iter().map(|r| r.event_type()).collect();
    assert_eq!(order, ["e0", "e0", "e0", "e1", "e2", "e3", "e4"]);
}

#[tokio::test]
async fn the_envelope_carries_id_type_timestamp_data_metadata_and_trace_context() {
    let hooks = receiver(always(200)).await;
    let t = TestEmissions::start_with(
        Emissions::builder()
            .adapter(endpoint("shape", &hooks.url).header("x-tenant", "acme"))
            .unwrap(),
    )
    .await
    .unwrap();
    let buffer = t.emissions().start();
    let mut meta = emissions_core::Metadata::new();
    meta.insert(
        "traceparent".into(),
        json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    buffer
        .emit_with_metadata("order_created", &json!({"item": "widget"}), meta)
        .unwrap();
    buffer.commit().await.unwrap().settled().await;
    let sent = t.events().await.remove(0);
    let request = hooks.requests().remove(0);
    let body = request.json();
    assert_eq!(body["id"], sent.id().to_string());
    assert_eq!(body["type"], "order_created");
    assert_eq!(body["data"], json!({"item": "widget"}));
    assert!(body["time"].as_str().unwrap().starts_with("20"));
    assert_eq!(
        body["metadata"]["traceparent"],
        sent.metadata()["traceparent"]
    );
    assert_eq!(
        request.headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(request.headers["x-tenant"], "acme");
    assert_eq!(
        request.headers["webhook-id"],
        sent.id().to_string().as_str()
    );
}

#[tokio::test]
async fn only_interested_events_are_sent() {
    emissions_core::topic_router! {
        struct Topics { "orders" => ["order_created"], "users" => ["user_created"] }
    }
    let by_name = receiver(always(200)).await;
    let by_topic = receiver(always(200)).await;
    let emissions = Emissions::builder()
        .adapter(endpoint("names", &by_name.url).events(["user_created"]))
        .unwrap()
        .adapter(endpoint("topics", &by_topic.url).topics(Topics, ["orders"]))
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    for name in ["order_created", "user_created", "other"] {
        buffer.emit(name, &1).unwrap();
    }
    buffer.commit().await.unwrap().settled().await;
    let types = |r: &support::Receiver| {
        r.requests()
            .iter()
            .map(|x| x.event_type())
            .collect::<Vec<_>>()
    };
    assert_eq!(types(&by_name), ["user_created"]);
    assert_eq!(types(&by_topic), ["order_created"]);
    let stats = emissions.stats();
    assert_eq!(stats.adapter("names").unwrap().counts.filtered, 2);
}

#[tokio::test]
async fn concurrency_sends_a_batch_in_parallel_and_reports_each_event() {
    // Replies go by arrival order, which concurrency scrambles: the failures reported must
    // still be the events whose requests were refused.
    let hooks = receiver(|n| Reply::Status(if n % 2 == 0 { 200 } else { 422 })).await;
    let dead = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = dead.clone();
    let emissions = start(
        endpoint("parallel", &hooks.url)
            .concurrency(4)
            .dead_letter(move |d| {
                let mut sink = sink.lock().unwrap();
                sink.extend(d.events.iter().map(|e| e.payload_json().as_i64().unwrap()));
            }),
    )
    .await;
    let buffer = emissions.start();
    for i in 0..8 {
        buffer.emit("job", &i).unwrap();
    }
    let outcome = buffer.commit().await.unwrap().settled().await;
    let counts = outcome.adapter("parallel").unwrap();
    assert_eq!((counts.delivered, counts.failed), (4, 4));
    let requests = hooks.requests();
    assert_eq!(requests.len(), 8);
    let mut refused: Vec<i64> = requests
        .iter()
        .skip(1)
        .step_by(2)
        .map(|r| r.json()["data"].as_i64().unwrap())
        .collect();
    refused.sort_unstable();
    let mut dead = dead.lock().unwrap().clone();
    dead.sort_unstable();
    assert_eq!(dead, refused);
}

#[tokio::test]
async fn two_endpoints_one_down_the_other_receives_everything() {
    let healthy = receiver(always(200)).await;
    let down = receiver(always(503)).await;
    let emissions = Emissions::builder()
        .adapter(endpoint("healthy", &healthy.url))
        .unwrap()
        .adapter(endpoint("down", &down.url))
        .unwrap()
        .start()
        .await
        .unwrap();
    let seen = {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        emissions.attach_observer(move |e| sink.lock().unwrap().push(e.name()));
        seen
    };
    for i in 0..50 {
        let buffer = emissions.start();
        buffer.emit("order_created", &i).unwrap();
        buffer.commit().await.unwrap();
    }
    let received = healthy.wait_for(50).await;
    let ids: Vec<i64> = received
        .iter()
        .map(|r| r.json()["data"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (0..50).collect::<Vec<_>>());
    // Meanwhile the other endpoint is still retrying its first event.
    assert_eq!(
        emissions.stats().adapter("down").unwrap().counts.delivered,
        0
    );

    let report = emissions.shutdown(Duration::from_secs(1)).await;
    assert!(report.is_balanced(), "{report:?}");
    let healthy = report.adapter("healthy").unwrap().counts;
    assert_eq!((healthy.committed, healthy.delivered), (50, 50));
    let down = report.adapter("down").unwrap().counts;
    assert_eq!(down.committed, 50);
    assert_eq!(down.delivered + down.failed + down.dropped, 50);
    assert!(seen.lock().unwrap().contains(&names::ADAPTER_ERROR));
}

#[tokio::test]
async fn adapter_telemetry_reports_batches_and_failures() {
    let hooks = receiver(|n| Reply::Status(if n == 0 { 503 } else { 200 })).await;
    let emissions = start(
        endpoint("observed", &hooks.url).retry(RetryPolicy::schedule([Duration::from_millis(10)])),
    )
    .await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    emissions.attach_observer(move |e| {
        sink.lock().unwrap().push((e.name(), e.metadata()));
    });
    emissions.emit_now("a", &1).await.unwrap().settled().await;
    let seen = seen.lock().unwrap();
    let meta = |name: &str| -> Vec<_> {
        seen.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, m)| m.clone())
            .collect()
    };
    let errors = meta(names::ADAPTER_ERROR);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains(&("adapter", json!("observed"))));
    assert!(errors[0].contains(&("reason", json!("receiver answered 503: ok"))));
    assert!(errors[0].contains(&("event_count", json!(1))));
    let successes = meta(names::ADAPTER_SUCCESS);
    assert_eq!(successes.len(), 1);
    assert!(successes[0].contains(&("event_count", json!(1))));
}
