//! Our signatures checked by an independent implementation: the `standardwebhooks` Python
//! package, installed by `cargo xtask ci` (which sets `EMISSIONS_PYTHONPATH`). Under plain
//! `cargo test` without it the test says so and passes; under `cargo xtask ci`
//! (`EMISSIONS_REQUIRE_SERVICES=1`) a missing package is a failure.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use emissions_core::Emissions;
use emissions_webhook::{Secret, Verifier, WebhookBuilderExt};
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

fn python_path() -> Option<String> {
    match std::env::var("EMISSIONS_PYTHONPATH") {
        Ok(path) => Some(path),
        Err(_) if std::env::var("EMISSIONS_REQUIRE_SERVICES").is_ok() => {
            panic!("EMISSIONS_PYTHONPATH is not set: cargo xtask ci installs `standardwebhooks`")
        }
        Err(_) => None,
    }
}

#[tokio::test]
async fn the_standardwebhooks_python_package_verifies_our_requests() {
    let Some(pythonpath) = python_path() else {
        eprintln!("skipped: run under `cargo xtask ci` to verify with the Python package");
        return;
    };
    let hooks = receiver(always(200)).await;
    let emissions = Emissions::builder()
        .webhook(endpoint("py", &hooks.url).secret(ROTATED))
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

    let b64 = base64::engine::general_purpose::STANDARD;
    let cases: Vec<serde_json::Value> = hooks
        .requests()
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, serde_json::Value> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
                .iter()
                .map(|h| (h.to_string(), json!(r.headers[*h].to_str().unwrap())))
                .collect();
            json!({"body": b64.encode(&r.body), "headers": headers, "secrets": [support::SECRET, ROTATED]})
        })
        .collect();
    assert_eq!(cases.len(), 2);

    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .env("PYTHONPATH", pythonpath)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&cases).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python verification failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
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
