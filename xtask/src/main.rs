//! Project automation. `cargo xtask ci` is exactly what CI runs.

mod bench;
mod browser;
mod ci;
mod kafka_tls;
mod postgres;
mod services;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

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
        Some("ci") => ci::ci(),
        Some("bench") => bench::bench(),
        Some("browser") => browser::browser_check(),
        Some("db") => match args.get(1).map(String::as_str) {
            Some("start") => postgres::db_start(),
            Some("stop") => postgres::db_stop(),
            other => Err(format!("unknown db command {other:?}\n\n{USAGE}")),
        },
        Some("broker") => match args.get(1).map(String::as_str) {
            Some("start") => services::broker_start(),
            Some("stop") => services::broker_stop(),
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

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// Runs one step, echoing it; fails with the step's name.
pub(crate) fn step(name: &str, mut command: Command) -> Result<(), String> {
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

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}
