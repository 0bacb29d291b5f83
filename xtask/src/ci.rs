//! `cargo xtask ci`: what CI runs, in order — the MSRV claim, provisioning, then the steps
//! (as data: a name, cargo's arguments, the environment).

use std::path::Path;
use std::process::Command;

use crate::services::{BROKERS_VAR, brokers_for_run, provision_python, runs};
use crate::{browser, cargo, kafka_tls, postgres, step, workspace_root};

/// Every feature of the workspace that builds without system libraries beyond OpenSSL's
/// (`--all-features` would also ask for librdkafka, Cyrus SASL, Kerberos and CMake through
/// emissions-kafka's pass-through features `dynamic-linking`, `sasl`, `gssapi` and
/// `cmake-build`, which are rdkafka's own and not built here).
const CI_FEATURES: &str = "emissions-core/tower,emissions-core/axum,emissions-core/opentelemetry,\
emissions-outbox/sqlite,emissions-outbox/postgres,emissions-outbox/opentelemetry,\
emissions-testing/outbox,emissions-webhook/rustls,emissions-webhook/native-tls,\
emissions-websocket/kafka,emissions-kafka/ssl,emissions-kafka/zstd";

/// A CI step: its name, cargo's arguments, and extra environment variables.
type Step<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

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
    let mut version = cargo();
    version.args(["deny", "--version"]);
    if runs(version) {
        return Ok(());
    }
    let mut install = cargo();
    install.args(["install", "cargo-deny", "--locked", "--version", CARGO_DENY]);
    step(
        "provision: cargo install cargo-deny (supply-chain checks)",
        install,
    )
}

/// `cargo package --workspace` verifies each crate against the others served from a local
/// registry under `target/package`. Cargo unpacks that registry's crates into
/// `$CARGO_HOME/registry/src/-<hash of its path>/` and reuses an unpacked copy of the same
/// name and version without comparing it with the new archive, so a checkout packaged before
/// at the same path would verify against its old sources. Removes the workspace crates'
/// unpacked copies from local registries (directories without a host name) first.
fn forget_unpacked_workspace_crates() -> Result<(), String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    let Some(Ok(registries)) = home.map(|home| std::fs::read_dir(home.join("registry/src"))) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for unpacked in std::fs::read_dir(registry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if unpacked
                .file_name()
                .to_string_lossy()
                .starts_with("emissions-")
            {
                std::fs::remove_dir_all(unpacked.path())
                    .map_err(|e| format!("removing {}: {e}", unpacked.path().display()))?;
            }
        }
    }
    Ok(())
}

pub(crate) fn ci() -> Result<(), String> {
    let root = workspace_root();
    check_msrv(&root)?;
    forget_unpacked_workspace_crates()?;
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
    browser::browser_check()?;
    println!("\nxtask ci: all steps passed");
    Ok(())
}
