//! Independent implementations, in Python, that the tests check our output with: the
//! `standardwebhooks` and `cloudevents` packages, which `cargo xtask ci` installs and names in
//! `EMISSIONS_PYTHONPATH`. Shared by the crates' tests with `#[path]`.
//!
//! Without that variable the checks are skipped (plain `cargo test`), except under
//! `EMISSIONS_REQUIRE_SERVICES=1` (`cargo xtask ci`), where a missing package is a failure.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;

/// The CloudEvents parser script.
const CLOUDEVENTS: &str = include_str!("cloudevents_parse.py");

/// Where the packages are, or `None` when the check is to be skipped.
pub fn python_path() -> Option<String> {
    match std::env::var("EMISSIONS_PYTHONPATH") {
        Ok(path) => Some(path),
        Err(_) if std::env::var("EMISSIONS_REQUIRE_SERVICES").is_ok() => {
            panic!("EMISSIONS_PYTHONPATH is not set: cargo xtask ci installs the Python packages")
        }
        Err(_) => {
            eprintln!("skipped: run under `cargo xtask ci` to check with the Python packages");
            None
        }
    }
}

/// Runs `script` with `input` as JSON on stdin and returns its stdout as JSON; panics with
/// Python's error output when it fails.
pub fn run(pythonpath: &str, script: &str, input: &serde_json::Value) -> serde_json::Value {
    let mut child = Command::new("python3")
        .args(["-c", script])
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
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Python check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// Base64, as the scripts take bodies.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Parses messages with the CloudEvents SDK (see `cloudevents_parse.py` for their shape);
/// `None` when skipped. Each answer is `{"attributes": {…}, "data": …}`.
pub fn cloudevents(messages: Vec<serde_json::Value>) -> Option<Vec<serde_json::Value>> {
    let pythonpath = python_path()?;
    let answer = run(
        &pythonpath,
        CLOUDEVENTS,
        &serde_json::Value::Array(messages),
    );
    Some(answer.as_array().expect("a list").clone())
}

/// Asserts that what the SDK read (`{"attributes","data"}`) is `event` from `source`: spec
/// version, id, source, type, content type, time to the microsecond, and the data.
pub fn assert_cloudevent(parsed: &serde_json::Value, event: &emissions_core::Event, source: &str) {
    let attributes = &parsed["attributes"];
    assert_eq!(attributes["specversion"], "1.0");
    assert_eq!(attributes["id"], event.id().to_string());
    assert_eq!(attributes["source"], source);
    assert_eq!(attributes["type"], event.name());
    assert_eq!(attributes["datacontenttype"], "application/json");
    let time = attributes["time"]
        .as_str()
        .expect("a time")
        .replace("+00:00", "Z");
    let micros =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    assert_eq!(
        micros(humantime::parse_rfc3339(&time).unwrap()),
        micros(event.emitted_at())
    );
    assert_eq!(parsed["data"], event.payload_json());
}
