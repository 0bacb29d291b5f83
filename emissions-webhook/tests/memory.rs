//! Nothing is kept per event once the core gives up on it: 500 events of 100 KiB sent to a
//! closed port leave no bodies behind. (Its own test binary: the allocator counts the whole
//! process.)

mod support;

use std::alloc::System;
use std::time::Duration;

use emissions_core::{AdapterOptions, Emissions, RetryPolicy};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use support::endpoint;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[tokio::test]
async fn events_given_up_on_leave_no_bodies_behind() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let emissions = Emissions::builder()
        .adapter(
            endpoint("closed", &format!("http://127.0.0.1:{closed}/hooks"))
                .retry(RetryPolicy::schedule([Duration::from_millis(1)]))
                .queue(AdapterOptions::default().capacity(1_000)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    // Warm up the client and the pipeline before measuring.
    emissions
        .emit_now("warm_up", &"x")
        .await
        .unwrap()
        .settled()
        .await;

    let region = Region::new(GLOBAL);
    let payload = "x".repeat(100 * 1024);
    for _ in 0..500 {
        let outcome = emissions
            .emit_now("order_created", &payload)
            .await
            .unwrap()
            .settled()
            .await;
        assert_eq!(outcome.adapter("closed").unwrap().failed, 1);
    }
    let change = region.change();
    let live = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    // 500 × 100 KiB is 50 MB; what stays must be far below one tenth of it.
    assert!(
        live < 5_000_000,
        "{live} bytes still held after 500 failed events"
    );
}
