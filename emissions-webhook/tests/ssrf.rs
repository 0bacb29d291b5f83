//! The SSRF guard: a canary listener on loopback accepts no connection from a guarded adapter,
//! for literal addresses and for a host name that resolves to loopback; the allow-list lets the
//! request through.

mod support;

use std::sync::atomic::Ordering;

use emissions_core::{Emissions, RetryPolicy};
use emissions_webhook::{AddressPolicy, Error, WebhookEndpoint};
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
        .adapter(guarded("sneaky", &url).dead_letter(hook))
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
        .adapter(guarded("literal", &local.url).address_policy(loopback()))
        .unwrap()
        .adapter(guarded("named", &by_name).address_policy(loopback()))
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

/// An endpoint `gone` at `url` on the default schedule (5 s, 5 min, … about a day), with its
/// dead letters.
async fn unresolvable(url: &str) -> (Emissions, support::Dead) {
    let (dead, hook) = dead_letters();
    let emissions = Emissions::builder()
        .adapter(
            WebhookEndpoint::new("gone", url)
                .secret(SECRET)
                .dead_letter(hook),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    (emissions, dead)
}

#[tokio::test]
async fn a_host_name_that_does_not_resolve_fails_at_once_instead_of_waiting_out_the_schedule() {
    // The failure must not enter the day-long schedule.
    let (emissions, dead) = unresolvable("http://tenant-gone.invalid/hooks").await;
    let receipt = emissions.emit_now("a", &1).await.unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), receipt.settled())
        .await
        .expect("settled within the resolve bound, not the retry schedule");
    assert_eq!(outcome.adapter("gone").unwrap().failed, 1);
    let dead = dead.lock().unwrap();
    assert!(
        dead[0]
            .2
            .starts_with("host `tenant-gone.invalid` does not resolve"),
        "{}",
        dead[0].2
    );
    assert_eq!(dead[0].3, 1, "one attempt");
}

#[tokio::test]
async fn a_backlog_for_a_name_that_does_not_resolve_fails_at_once_after_the_first() {
    let (emissions, dead) = unresolvable("http://tenant-gone-too.invalid/hooks").await;
    let buffer = emissions.start();
    for n in 0..20 {
        buffer.emit("a", &n).unwrap();
    }
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        buffer.commit().await.unwrap().settled(),
    )
    .await
    .expect("settled");
    assert_eq!(outcome.adapter("gone").unwrap().failed, 20);
    // One resolve bound (under 3 s), then the remembered answer: not twenty bounds in a row.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        dead.lock()
            .unwrap()
            .iter()
            .all(|d| d.2.contains("does not resolve"))
    );
}

#[tokio::test]
async fn through_an_egress_proxy_the_proxy_resolves_the_name() {
    // A real HTTP server on loopback plays the proxy: the request reaches it in absolute form,
    // for a host name that does not resolve here.
    let proxy = receiver(always(200)).await;
    let emissions = Emissions::builder()
        .adapter(
            WebhookEndpoint::new("tenant", "http://tenant.invalid/hooks")
                .secret(SECRET)
                .proxy(proxy.url.as_str()),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let outcome = emissions.emit_now("a", &1).await.unwrap().settled().await;
    assert_eq!(outcome.adapter("tenant").unwrap().delivered, 1);
    let requests = proxy.requests();
    assert_eq!(requests[0].headers["host"], "tenant.invalid");
    support::verifier()
        .verify(&requests[0].headers, &requests[0].body)
        .unwrap();
    // Literal internal addresses are still refused, proxy or not.
    assert!(
        WebhookEndpoint::new("x", "http://10.0.0.1/hooks")
            .secret(SECRET)
            .proxy(proxy.url.as_str())
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn many_endpoints_share_one_client() {
    let hooks = receiver(always(200)).await;
    let client = reqwest::Client::new();
    let mut builder = Emissions::builder();
    for tenant in ["acme", "globex", "initech"] {
        builder = builder
            .adapter(
                WebhookEndpoint::new(tenant, format!("{}/{tenant}", hooks.url))
                    .secret(SECRET)
                    // A literal loopback URL is still checked with a client of one's own.
                    .address_policy(loopback())
                    .client(client.clone()),
            )
            .unwrap();
    }
    let emissions = builder.start().await.unwrap();
    let outcome = emissions.emit_now("a", &1).await.unwrap().settled().await;
    for tenant in ["acme", "globex", "initech"] {
        assert_eq!(outcome.adapter(tenant).unwrap().delivered, 1, "{tenant}");
    }
    assert_eq!(hooks.requests().len(), 3);
    let err = WebhookEndpoint::new("both", "https://x.example.com/")
        .secret(SECRET)
        .client(client)
        .proxy("http://10.0.0.5:4750")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("invalid `proxy`"), "{err}");
}
