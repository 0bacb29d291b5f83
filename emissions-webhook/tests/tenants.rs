//! Webhook endpoints managed at runtime (`Tenants`), against real receivers on loopback: added
//! to a running instance they receive their selection, removed they receive nothing more and
//! what was queued for them ends counted, replaced they switch URL, and a hanging customer
//! never holds up another.

mod support;

use std::time::Duration;

use emissions_core::{Emissions, RetryPolicy};
use emissions_webhook::{Error, Tenants, WebhookEndpoint};
use serde_json::json;
use support::{Reply, always, endpoint, receiver};

async fn instance(tenants: &Tenants) -> Emissions {
    Emissions::builder()
        .adapter(tenants)
        .unwrap()
        .start()
        .await
        .unwrap()
}

async fn commit(emissions: &Emissions, names: &[&'static str]) {
    let buffer = emissions.start();
    for (i, name) in names.iter().enumerate() {
        buffer.emit(*name, &json!({"i": i})).unwrap();
    }
    buffer.commit().await.unwrap().settled().await;
}

#[tokio::test]
async fn endpoints_added_at_runtime_receive_their_selection_and_removed_ones_nothing_more() {
    let tenants = Tenants::new("customers");
    let emissions = instance(&tenants).await;
    commit(&emissions, &["order_created"]).await; // before any endpoint: filtered
    let (acme, globex) = (receiver(always(200)).await, receiver(always(200)).await);
    tenants
        .add(endpoint("acme", &acme.url).events(["order_created", "order_paid"]))
        .await
        .unwrap();
    tenants.add(endpoint("globex", &globex.url)).await.unwrap();
    assert_eq!(tenants.names(), ["acme", "globex"]);

    commit(
        &emissions,
        &["order_created", "user_signed_up", "order_paid"],
    )
    .await;
    let acme_got = acme.wait_for(2).await;
    let globex_got = globex.wait_for(3).await;
    let types = |got: &[support::Received]| got.iter().map(|r| r.event_type()).collect::<Vec<_>>();
    assert_eq!(types(&acme_got), ["order_created", "order_paid"]);
    assert_eq!(
        types(&globex_got),
        ["order_created", "user_signed_up", "order_paid"]
    );
    // One event, one identity: both customers see the same id.
    assert_eq!(acme_got[0].webhook_id(), globex_got[0].webhook_id());
    support::verifier()
        .verify(&acme_got[0].headers, &acme_got[0].body)
        .unwrap();

    let report = tenants
        .remove("acme", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(report.name, "acme");
    assert_eq!(
        (report.counts.committed, report.counts.delivered),
        (2, 2),
        "{report:?}"
    );
    assert!(
        tenants
            .remove("acme", Duration::from_secs(1))
            .await
            .is_none()
    );
    commit(&emissions, &["order_created"]).await;
    globex.wait_for(4).await;
    assert_eq!(
        acme.requests().len(),
        2,
        "a removed endpoint receives nothing more"
    );
    // The receiver has the request a moment before the endpoint records the answer.
    tokio::time::timeout(Duration::from_secs(5), async {
        while tenants.stats("globex").unwrap().counts.delivered < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("globex's count reaches 4");

    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_balanced());
    let adapter = report.adapter("customers").unwrap();
    assert_eq!(adapter.counts.filtered, 1, "the commit before any endpoint");
    assert!(adapter.shutdown_error.is_none());
    let ended: Vec<String> = tenants.ended().iter().map(|r| r.name.clone()).collect();
    assert_eq!(ended, ["acme", "globex"]);
    assert!(matches!(
        tenants.add(endpoint("late", &globex.url)).await,
        Err(Error::Start(_))
    ));
}

#[tokio::test]
async fn what_was_queued_for_a_removed_endpoint_ends_counted() {
    let tenants = Tenants::new("customers");
    let emissions = instance(&tenants).await;
    let hanging = receiver(|_| Reply::Hang).await;
    tenants
        .add(
            endpoint("stuck", &hanging.url)
                .timeout(Duration::from_secs(30))
                .retry(RetryPolicy::none()),
        )
        .await
        .unwrap();
    let buffer = emissions.start();
    for i in 0..5 {
        buffer.emit("order_created", &json!({"i": i})).unwrap();
    }
    buffer.commit().await.unwrap().settled().await;
    hanging.wait_for(1).await;
    let report = tenants
        .remove("stuck", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(report.counts.committed, 5);
    assert!(report.counts.is_balanced(), "{report:?}");
    assert_eq!(
        report.counts.dropped, 5,
        "cut off by the drain time: {report:?}"
    );
    assert!(report.deadline_exceeded);

    // A caller that stops waiting does not stop the removal: the report still lands.
    tenants
        .add(endpoint("stuck", &hanging.url).timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    emissions.emit_now("order_created", &1).await.unwrap();
    hanging.wait_for(2).await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(10),
        tenants.remove("stuck", Duration::from_millis(200)),
    )
    .await;
    assert!(cancelled.is_err(), "the wait was cut short");
    assert!(tenants.names().is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ended = tenants.ended();
    assert_eq!(ended.len(), 2);
    assert_eq!(ended[1].counts.committed, 1);
    assert!(ended[1].counts.is_balanced(), "{:?}", ended[1]);
    emissions.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_hanging_customer_never_holds_up_another() {
    let tenants = Tenants::new("customers");
    let emissions = instance(&tenants).await;
    let (hanging, fine) = (receiver(|_| Reply::Hang).await, receiver(always(200)).await);
    tenants
        .add(endpoint("stuck", &hanging.url).timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    tenants.add(endpoint("fine", &fine.url)).await.unwrap();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        emissions.emit_now("order_created", &1).await.unwrap();
        let n = fine.requests().len();
        fine.wait_for(n + 1).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Shutdown drains both within the deadline and names the one that did not deliver.
    let report = emissions.shutdown(Duration::from_millis(500)).await;
    assert!(report.is_balanced());
    let error = report.adapter("customers").unwrap().shutdown_error.clone();
    assert!(
        error.as_deref().is_some_and(|e| e.contains("stuck: ")),
        "{error:?}"
    );
    let ended = tenants.ended();
    let stuck = ended.iter().find(|r| r.name == "stuck").unwrap();
    assert!(stuck.counts.is_balanced());
    assert_eq!(stuck.counts.delivered, 0);
    let fine_report = ended.iter().find(|r| r.name == "fine").unwrap();
    assert_eq!(fine_report.counts.delivered, 3);
}

#[tokio::test]
async fn a_replaced_endpoint_switches_url_and_the_old_one_reports() {
    let tenants = Tenants::new("customers");
    let emissions = instance(&tenants).await;
    let (old, new) = (receiver(always(200)).await, receiver(always(200)).await);
    tenants.add(endpoint("acme", &old.url)).await.unwrap();
    commit(&emissions, &["a"]).await;
    old.wait_for(1).await;
    let report = tenants
        .replace(endpoint("acme", &new.url), Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the old endpoint's report");
    assert_eq!(report.counts.delivered, 1);
    commit(&emissions, &["b"]).await;
    assert_eq!(new.wait_for(1).await[0].event_type(), "b");
    assert_eq!(old.requests().len(), 1);
    emissions.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_or_duplicate_endpoints_are_refused_naming_the_endpoint_and_field() {
    let tenants = Tenants::new("customers");
    let hooks = receiver(always(200)).await;
    tenants.add(endpoint("acme", &hooks.url)).await.unwrap();
    match tenants.add(endpoint("acme", &hooks.url)).await.unwrap_err() {
        Error::Config {
            endpoint, field, ..
        } => assert_eq!((endpoint.as_str(), field), ("acme", "name")),
        other => panic!("{other:?}"),
    }
    let err = tenants
        .add(WebhookEndpoint::new("bad", "ftp://x.example.com").secret(support::SECRET))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "webhook endpoint `bad`: invalid `url`: scheme `ftp` is not supported; use http or https"
    );
    let blocking = endpoint("slow", &hooks.url).queue(
        emissions_core::AdapterOptions::default().overflow(emissions_core::OverflowPolicy::Block),
    );
    match tenants.add(blocking).await.unwrap_err() {
        Error::Config {
            endpoint, field, ..
        } => assert_eq!((endpoint.as_str(), field), ("slow", "overflow")),
        other => panic!("{other:?}"),
    }
    assert_eq!(tenants.names(), ["acme"]);
}
