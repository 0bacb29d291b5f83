//! A throwaway PostgreSQL cluster for the outbox tests: Debian's `postgresql` package (installed
//! when missing), `initdb` into `target/postgres` (or a temporary folder when the `postgres`
//! user cannot reach the checkout), a free loopback port, started as the `postgres` user when
//! running as root (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where tests find PostgreSQL; when unset, `cargo xtask ci` starts a cluster.
pub(crate) const DATABASE_VAR: &str = "EMISSIONS_DATABASE_URL";

/// A running cluster; stopped (and its data removed) when dropped.
pub(crate) struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    pub(crate) url: String,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

impl Postgres {
    /// `program` from the cluster's binaries, run as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        command(&self.bin, program, self.as_postgres)
    }
}

fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    let path = bin.join(program);
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The newest installed PostgreSQL's binary folder.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Installs Debian's `postgresql` when no server is installed.
fn ensure_installed() -> Result<PathBuf, String> {
    if let Some(bin) = find_bin() {
        return Ok(bin);
    }
    crate::services::apt_install(&["postgresql"], "provision: apt-get install postgresql")?;
    find_bin().ok_or_else(|| "postgresql installed but no initdb under /usr/lib/postgresql".into())
}

/// Starts a fresh cluster with a database `emissions`, trusting loopback connections.
pub(crate) fn start(root: &Path) -> Result<Postgres, String> {
    let bin = ensure_installed()?;
    let as_postgres = is_root();
    let port = crate::free_port()?;
    let base = root.join("target").join("postgres");
    let base = if !as_postgres || reachable_by_postgres(root) {
        base
    } else {
        std::env::temp_dir().join("emissions-postgres")
    };
    let data = base.join(format!("data-{port}"));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    if as_postgres {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&base)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "could not hand {} to the postgres user",
                base.display()
            ));
        }
    }
    let cluster = Postgres {
        bin,
        data: data.clone(),
        as_postgres,
        url: format!("postgres://postgres@127.0.0.1:{port}/emissions"),
    };
    println!(
        "\n==> starting PostgreSQL on 127.0.0.1:{port} (data: {})",
        data.display()
    );
    let init = cluster
        .command("initdb")
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("initdb: {e}"))?;
    if !init.success() {
        return Err("initdb failed".into());
    }
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        data.display()
    );
    let log = data.join("server.log");
    let started = cluster
        .command("pg_ctl")
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(&log)
        .args(["-w", "start"])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("pg_ctl: {e}"))?;
    if !started.success() {
        return Err(format!("PostgreSQL did not start; see {}", log.display()));
    }
    let began = Instant::now();
    loop {
        let created = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-q",
            ])
            .args(["-c", "CREATE DATABASE emissions"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if created.is_ok_and(|s| s.success()) {
            break;
        }
        if began.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "could not create the database; see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(cluster)
}

/// Whether the `postgres` user can reach (traverse) the checkout.
fn reachable_by_postgres(root: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(root)
        .status()
        .is_ok_and(|s| s.success())
}

/// The database to test against: `EMISSIONS_DATABASE_URL`, else a cluster started now (kept
/// alive by the returned guard).
pub(crate) fn for_run(root: &Path) -> Result<(Option<Postgres>, String), String> {
    match std::env::var(DATABASE_VAR) {
        Ok(url) => Ok((None, url)),
        Err(_) => {
            let cluster = start(root)?;
            let url = cluster.url.clone();
            Ok((Some(cluster), url))
        }
    }
}

/// `cargo xtask db start`: leaves a cluster running and prints the variable to use.
pub(crate) fn db_start() -> Result<(), String> {
    let root = crate::workspace_root();
    let cluster = start(&root)?;
    let state = root.join("target").join("postgres").join("running");
    std::fs::create_dir_all(state.parent().expect("has a parent")).map_err(|e| e.to_string())?;
    std::fs::write(&state, cluster.data.display().to_string()).map_err(|e| e.to_string())?;
    println!("export {DATABASE_VAR}={}", cluster.url);
    std::mem::forget(cluster);
    Ok(())
}

/// `cargo xtask db stop`.
pub(crate) fn db_stop() -> Result<(), String> {
    let root = crate::workspace_root();
    let state = root.join("target").join("postgres").join("running");
    let data = std::fs::read_to_string(&state)
        .map_err(|_| "no cluster started by `cargo xtask db start`".to_owned())?;
    let bin = find_bin().ok_or("PostgreSQL is not installed")?;
    let stopped = command(&bin, "pg_ctl", is_root())
        .args(["-D", data.trim(), "-m", "fast", "-w", "stop"])
        .status()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_dir_all(data.trim());
    if stopped.success() {
        println!("PostgreSQL stopped");
        Ok(())
    } else {
        Err("pg_ctl stop failed".into())
    }
}
