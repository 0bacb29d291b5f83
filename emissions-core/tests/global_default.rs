//! The process-wide default instance. Alone in its own test binary: it sets process state.

use emissions_core::{Emissions, Error};
use emissions_testing::TestAdapter;

#[tokio::test]
async fn global_default_is_used_outside_scopes_and_set_once() {
    assert!(matches!(emissions_core::current(), Err(Error::NoInstance)));
    assert!(matches!(emissions_core::start(), Err(Error::NoInstance)));
    let adapter = TestAdapter::new();
    let recorder = adapter.recorder();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("test", adapter))
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions_core::set_global_default(emissions.clone()).unwrap();
    assert!(matches!(
        emissions_core::set_global_default(emissions.clone()),
        Err(Error::GlobalDefaultAlreadySet)
    ));
    emissions_core::transaction(async {
        emissions_core::emit("global", &1)?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    emissions.settled().await;
    assert_eq!(
        recorder
            .events()
            .iter()
            .map(|e| e.name().to_owned())
            .collect::<Vec<_>>(),
        ["global"]
    );
}
