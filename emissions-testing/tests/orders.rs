//! The original library's `MyApp.OrdersTest`, in Rust.
#![allow(unreachable_pub)] // `my_app` stands for an application crate

use emissions_testing::{TestEmissions, assert_emitted, refute_emitted};
use serde_json::{Value, json};

mod my_app {
    pub mod orders {
        use serde_json::{Value, json};

        #[derive(Debug)]
        pub enum OrderError {
            Invalid,
            Emissions(#[allow(dead_code)] emissions_core::Error),
        }

        impl From<emissions_core::Error> for OrderError {
            fn from(e: emissions_core::Error) -> Self {
                OrderError::Emissions(e)
            }
        }

        pub async fn create(params: Value) -> Result<Value, OrderError> {
            emissions_core::transaction(async {
                if params.get("invalid").is_some() {
                    return Err(OrderError::Invalid);
                }
                let order = json!({"item": params["item"], "qty": params["qty"]});
                let mut meta = emissions_core::Metadata::new();
                meta.insert("source".into(), "api".into());
                emissions_core::emit_with_metadata("order_created", &order, meta)?;
                Ok(order)
            })
            .await
        }
    }
}

#[tokio::test]
async fn creating_an_order_emits_order_created() {
    let t = TestEmissions::start().await;
    t.run(my_app::orders::create(json!({"item": "widget", "qty": 5})))
        .await
        .unwrap();
    assert_emitted!(t, "order_created");
    let event = assert_emitted!(t, "order_created", |event| {
        event.payload_json()["item"] == "widget"
    });
    assert_eq!(event.metadata()["source"], "api");
}

#[tokio::test]
async fn failed_order_does_not_emit_events() {
    let t = TestEmissions::start().await;
    let result: Result<Value, _> = t
        .run(my_app::orders::create(json!({"invalid": true})))
        .await;
    assert!(matches!(result, Err(my_app::orders::OrderError::Invalid)));
    refute_emitted!(t, "order_created");
}
