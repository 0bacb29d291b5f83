//! The SSRF guard: a canary listener on loopback accepts no connection from a guarded adapter,
//! for literal addresses and for a host name that resolves to loopback; the allow-list lets the
//! request through.

mod support;

use std::sync::atomic::Ordering;

use emissions_core::{Emissions, RetryPolicy};
use emissions_webhook::{AddressPolicy, Error, WebhookBuilderExt, WebhookEndpoint};
use support::{SECRET, always, canary, dead_letters, loopback, receiver};

fn guarded(name: &str, url: &str) -> WebhookEndpoint {
    WebhookEndpoint::new(name, url)
        .secret(SECRET)
        .retry(RetryPolicy::none())
}

#[tokio::test]
async fn literal_internal_addresses_fail_at_build_time() {
    let (port, connections) = canary().await;
    for host in [
        "127.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
        "2130706433",
        "127.1",
    ] {
        let url = format!("http://{host}:{port}/hooks");
        match guarded("canary", &url).build().unwrap_err() {
            Error::Config {
                endpoint,
                field,
                reason,
            } => {
                assert_eq!((endpoint.as_str(), field), ("canary", "url"));
                assert!(reason.contains("refused to connect"), "{reason}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_host_name_resolving_to_loopback_is_refused_at_connect_time() {
    let (port, connections) = canary().await;
    let url = format!("http://localhost:{port}/hooks");
    let (dead, hook) = dead_letters();
    let emissions = Emissions::builder()
        .webhook(guarded("sneaky", &url).dead_letter(hook))
        .unwrap()
        .start()
        .await
        .unwrap();
    let outcome = emissions.emit_now("a", &1).await.unwrap().settled().await;
    assert_eq!(outcome.adapter("sneaky").unwrap().failed, 1);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the guard let a connection through"
    );
    let dead = dead.lock().unwrap();
    assert!(
        dead[0].2.starts_with("refused to connect to localhost"),
        "{}",
        dead[0].2
    );
    assert_eq!(dead[0].3, 1, "a refused address is not retried");
}

#[tokio::test]
async fn the_allow_list_lets_local_development_through() {
    let local = receiver(always(200)).await;
    let by_name = local.url.replace("127.0.0.1", "localhost");
    let emissions = Emissions::builder()
        .webhook(guarded("literal", &local.url).address_policy(loopback()))
        .unwrap()
        .webhook(guarded("named", &by_name).address_policy(loopback()))
        .unwrap()
        .start()
        .await
        .unwrap();
    let outcome = emissions.emit_now("a", &1).await.unwrap().settled().await;
    assert!(outcome.is_delivered(), "{outcome:?}");
    assert_eq!(local.requests().len(), 2);
}

#[tokio::test]
async fn an_allow_list_for_one_address_does_not_open_its_neighbours() {
    let (port, connections) = canary().await;
    let policy = AddressPolicy::default().allow("127.0.0.2/32".parse().unwrap());
    let url = format!("http://127.0.0.1:{port}/hooks");
    let err = guarded("neighbour", &url)
        .address_policy(policy)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config { field: "url", .. }));
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}
