//! Project automation. `cargo xtask ci` is exactly what CI runs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The independent Standard Webhooks implementation the webhook tests verify against.
const PYTHON_VERIFIER: &str = "standardwebhooks==1.1.0";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci    provisions what the tests need (the Python `standardwebhooks` package, into
        target/python), then: fmt check, clippy (-D warnings, all targets and features), every
        test (unit, integration, property, doc) with all features and core's with none, cargo
        doc with warnings denied, and the README's main command";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
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

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Installs the Python verifier into `target/python` unless it is already there.
fn provision_python(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target").join("python");
    if dir.join("standardwebhooks").join("webhooks.py").exists() {
        return Ok(dir);
    }
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
    ])
    .arg(&dir)
    .arg(PYTHON_VERIFIER);
    step(
        "provision: pip install standardwebhooks (independent verifier)",
        pip,
    )?;
    Ok(dir)
}

fn ci() -> Result<(), String> {
    let root = workspace_root();
    let python = provision_python(&root)?;
    let python = python.to_str().ok_or("non-UTF-8 path")?;
    let services: &[(&str, &str)] = &[
        ("EMISSIONS_PYTHONPATH", python),
        ("EMISSIONS_REQUIRE_SERVICES", "1"),
    ];
    let steps: &[Step] = &[
        ("cargo fmt --check", &["fmt", "--all", "--", "--check"], &[]),
        (
            "cargo clippy -D warnings (all targets, all features)",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        ),
        // Unit, integration, property and doc tests; doctests deny warnings through the crates'
        // `#![doc(test(attr(deny(warnings))))]`.
        (
            "cargo test --workspace --all-features",
            &["test", "--workspace", "--all-features"],
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
            &["doc", "--workspace", "--no-deps", "--all-features"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        ),
        (
            "README main command: the webhook example",
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
    println!("\nxtask ci: all steps passed");
    Ok(())
}
