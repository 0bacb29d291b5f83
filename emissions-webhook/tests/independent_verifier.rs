//! Our signatures checked by an independent implementation: the `standardwebhooks` Python
//! package, installed by `cargo xtask ci` (which sets `EMISSIONS_PYTHONPATH`). Under plain
//! `cargo test` without it the test says so and passes; under `cargo xtask ci`
//! (`EMISSIONS_REQUIRE_SERVICES=1`) a missing package is a failure.

#[path = "../../xtask/python/independent.rs"]
mod independent;
mod support;

use emissions_core::Emissions;
use emissions_webhook::{Secret, Verifier};
use serde_json::json;
use support::{always, endpoint, receiver};

const ROTATED: &str = "whsec_dGhpcnR5LXR3by1ieXRlcy1vZi1zZWNyZXQtbWF0ZXJpYWwh";

const SCRIPT: &str = r#"
import base64, json, sys
from datetime import datetime, timezone
from standardwebhooks.webhooks import Webhook

cases = json.load(sys.stdin)
for case in cases:
    body = base64.b64decode(case["body"])
    for secret in case["secrets"]:
        Webhook(secret).verify(body, case["headers"])
# The other direction: a signature made by the Python package, for us to verify.
now = datetime.now(tz=timezone.utc)
signed = Webhook(cases[0]["secrets"][0]).sign("msg_python", now, '{"from":"python"}')
print(json.dumps({"verified": len(cases), "timestamp": int(now.timestamp()), "signature": signed}))
"#;

#[tokio::test]
async fn the_standardwebhooks_python_package_verifies_our_requests() {
    let Some(pythonpath) = independent::python_path() else {
        return;
    };
    let hooks = receiver(always(200)).await;
    let emissions = Emissions::builder()
        .adapter(endpoint("py", &hooks.url).secret(ROTATED))
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    buffer
        .emit("order_created", &json!({"id": 1, "note": "ünïcode ✓"}))
        .unwrap();
    buffer
        .emit("order_shipped", &json!({"id": 1, "lines": [1, 2, 3]}))
        .unwrap();
    buffer.commit().await.unwrap().settled().await;

    let cases: Vec<serde_json::Value> = hooks
        .requests()
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, serde_json::Value> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
                .iter()
                .map(|h| (h.to_string(), json!(r.headers[*h].to_str().unwrap())))
                .collect();
            json!({"body": independent::b64(&r.body), "headers": headers, "secrets": [support::SECRET, ROTATED]})
        })
        .collect();
    assert_eq!(cases.len(), 2);

    let answer = independent::run(&pythonpath, SCRIPT, &json!(cases));
    assert_eq!(answer["verified"], 2);

    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", "msg_python".parse().unwrap());
    headers.insert(
        "webhook-timestamp",
        answer["timestamp"].to_string().parse().unwrap(),
    );
    headers.insert(
        "webhook-signature",
        answer["signature"].as_str().unwrap().parse().unwrap(),
    );
    let ours = Verifier::new([Secret::parse(support::SECRET).unwrap()]);
    ours.verify(&headers, br#"{"from":"python"}"#)
        .expect("our verifier accepts Python's signature");
}
