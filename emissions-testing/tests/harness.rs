//! The harness itself: assertions fail when they should, and parallel tests stay isolated.

use emissions_testing::{TestEmissions, assert_emitted, assert_emitted_in_order, refute_emitted};

async fn committed(t: &TestEmissions, names: &[&'static str]) {
    let buffer = t.emissions().start();
    for name in names {
        buffer
            .emit(*name, &serde_json::json!({"name": name}))
            .unwrap();
    }
    buffer.commit().await.unwrap();
}

#[tokio::test]
async fn assertions_fail_with_a_useful_message() {
    let t = TestEmissions::start().await;
    committed(&t, &["a", "b"]).await;
    let missing = t.expect_emitted("c", |_| true).await.unwrap_err();
    assert!(
        missing.contains("`c`") && missing.contains("[\"a\", \"b\"]"),
        "{missing}"
    );
    let unmatched = t
        .expect_emitted("a", |e| e.payload_json()["name"] == "z")
        .await
        .unwrap_err();
    assert!(unmatched.contains("none matched"), "{unmatched}");
    assert!(t.expect_not_emitted("a", |_| true).await.is_err());
    assert!(t.expect_in_order(&["b", "a"]).await.is_err());
    assert!(t.expect_in_order(&["a", "b"]).await.is_ok());
}

#[tokio::test]
#[should_panic(expected = "expected `missing` to be emitted")]
async fn assert_emitted_panics_when_absent() {
    let t = TestEmissions::start().await;
    assert_emitted!(t, "missing");
}

#[tokio::test]
#[should_panic(expected = "expected `present` not to be emitted")]
async fn refute_emitted_panics_when_present() {
    let t = TestEmissions::start().await;
    committed(&t, &["present"]).await;
    refute_emitted!(t, "present");
}

#[tokio::test]
#[should_panic(expected = "not found in order")]
async fn in_order_panics_on_wrong_order() {
    let t = TestEmissions::start().await;
    committed(&t, &["second", "first"]).await;
    assert_emitted_in_order!(t, ["first", "second"]);
}

#[tokio::test]
async fn refute_waits_for_delivery_instead_of_passing_early() {
    let t = TestEmissions::start().await;
    // Many events in flight: refute must still see the last one.
    let buffer = t.emissions().start();
    for _ in 0..5000 {
        buffer.emit("noise", &0).unwrap();
    }
    buffer.emit("needle", &1).unwrap();
    buffer.commit().await.unwrap();
    assert!(t.expect_not_emitted("needle", |_| true).await.is_err());
}

#[test]
fn parallel_tests_in_threads_never_share_events() {
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let t = TestEmissions::start().await;
                    let name = format!("thread_{i}");
                    t.run(emissions_core::transaction(async {
                        for _ in 0..100 {
                            emissions_core::emit(name.clone(), &i)?;
                        }
                        Ok::<_, emissions_core::Error>(())
                    }))
                    .await
                    .unwrap();
                    let events = t.events().await;
                    assert_eq!(events.len(), 100);
                    assert!(events.iter().all(|e| e.name() == name));
                })
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}
