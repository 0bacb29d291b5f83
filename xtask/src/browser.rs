//! The live page in headless Chromium: the WebSocket example's pages, two users, checked
//! from the DOM Chromium renders (`cargo xtask browser`, and a step of `ci`).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cargo;
use crate::services::ensure_chromium;

/// Loads `url` in headless Chromium and returns the DOM after the page has run.
fn dump_dom(url: &str) -> Result<String, String> {
    let profile = std::env::temp_dir().join(format!("emissions-chromium-{}", std::process::id()));
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("could not run chromium: {e}"))?;
    let _ = std::fs::remove_dir_all(&profile);
    if !output.status.success() {
        return Err(format!("chromium exited with {}", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs the live-page example and checks in headless Chromium that each of its two users,
/// signed in, sees their own orders and none of the other's, over WebSocket and over SSE,
/// and that a subscription filter narrows the page.
pub(crate) fn browser_check() -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    ensure_chromium()?;
    println!("\n==> browser check: the live WebSocket page in headless Chromium");
    let mut example = cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "emissions-examples",
            "--bin",
            "websocket",
            "--",
            "--for",
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start the websocket example: {e}"))?;
    let result = (|| {
        let stdout = example.stdout.take().ok_or("no stdout")?;
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .map_err(|e| e.to_string())?;
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or_else(|| format!("no page URL in {first:?}"))?
            .to_owned();
        // Let the simulated order flow commit a few orders of each user.
        std::thread::sleep(Duration::from_secs(3));
        // Each user signs in and sees their own orders only, over WebSocket and over SSE.
        let mut shown = Vec::new();
        for (user, other) in [("alice", "bob"), ("bob", "alice")] {
            for (page, connected) in [
                ("/", "id=\"status\" class=\"connected\""),
                // The SSE page stops after 4 events, so that the headless browser's load ends.
                ("/sse%3Fsample%3D4", "id=\"status\" class=\"open\""),
            ] {
                let dom = dump_dom(&format!("{url}login?user={user}&next={page}"))?;
                let own = dom.matches(&format!("data-user=\"{user}\"")).count();
                let others = dom.matches(&format!("data-user=\"{other}\"")).count();
                if !dom.contains(connected) {
                    return Err(format!("{user}'s page {page} did not connect"));
                }
                if own < 2 || !dom.contains("data-name=\"order_created\"") {
                    return Err(format!(
                        "{user}'s page {page} shows {own} of their events; expected their orders"
                    ));
                }
                if others > 0 || dom.contains("audit_logged") {
                    return Err(format!(
                        "{user}'s page {page} shows {others} events of {other} (or an internal event)"
                    ));
                }
                shown.push(format!("{user} {page}: {own}"));
            }
        }
        // A subscription narrows what the page shows, within what the user may see.
        let filtered = dump_dom(&format!(
            "{url}login?user=alice&next=/%3Ffilter%3Dorder_shipped"
        ))?;
        let all = filtered.matches("<li class=\"event\"").count();
        let shipped = filtered
            .matches("data-name=\"order_shipped\" data-user=\"alice\"")
            .count();
        if shipped == 0 || shipped != all {
            return Err(format!(
                "alice's filtered page shows {all} events, {shipped} of them her order_shipped"
            ));
        }
        println!(
            "browser check: each user sees only their own orders ({}), none of the other's, no internal events; alice's filtered page shows {shipped} order_shipped only",
            shown.join(", ")
        );
        Ok(())
    })();
    let _ = example.kill();
    let _ = example.wait();
    result
}
