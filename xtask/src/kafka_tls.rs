//! A Kafka broker reached over TLS, for the TLS tests: a second tansu that advertises a
//! TLS-terminating proxy in front of it (`xtask/python/tls_proxy.py`), with a self-signed
//! certificate for `localhost`/`127.0.0.1` made by the `openssl` command.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::services::{Broker, start_tansu};
use crate::{free_port, step};

/// The TLS address tests connect to.
pub(crate) const TLS_BROKERS_VAR: &str = "EMISSIONS_KAFKA_TLS_BROKERS";
/// The CA file (the self-signed certificate) tests trust.
pub(crate) const TLS_CA_VAR: &str = "EMISSIONS_KAFKA_TLS_CA";

/// The broker and its proxy; both stop when dropped.
pub(crate) struct TlsBroker {
    _broker: Broker,
    proxy: Child,
    pub(crate) address: String,
    pub(crate) ca: PathBuf,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
    }
}

/// The certificate and key in `target/tls`, made once.
fn certificate(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let dir = root.join("target").join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut openssl = Command::new("openssl");
    openssl
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    step(
        "provision: a self-signed certificate for the TLS broker",
        openssl,
    )?;
    Ok((cert, key))
}

/// Starts the proxied broker and waits until the proxy accepts connections.
pub(crate) fn start(root: &Path) -> Result<TlsBroker, String> {
    let (cert, key) = certificate(root)?;
    let tls_port = free_port()?;
    let broker = start_tansu(root, "tls-broker", Some(tls_port))?;
    let upstream = broker.address.rsplit_once(':').map(|(_, p)| p.to_owned());
    let upstream = upstream.ok_or("broker address without a port")?;
    let script = root.join("xtask").join("python").join("tls_proxy.py");
    println!("\n==> starting a TLS proxy on 127.0.0.1:{tls_port} for that broker");
    let proxy = Command::new("python3")
        .arg(&script)
        .arg(&cert)
        .arg(&key)
        .arg(tls_port.to_string())
        .arg(&upstream)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", script.display()))?;
    let mut tls = TlsBroker {
        _broker: broker,
        proxy,
        address: format!("127.0.0.1:{tls_port}"),
        ca: cert,
    };
    let started = Instant::now();
    while TcpStream::connect(&tls.address).is_err() {
        if let Ok(Some(status)) = tls.proxy.try_wait() {
            return Err(format!("the TLS proxy exited ({status})"));
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the TLS proxy did not listen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(tls)
}

/// `cargo xtask broker tls`: runs the TLS broker until interrupted.
pub(crate) fn run(root: &Path) -> Result<(), String> {
    let tls = start(root)?;
    println!("export {TLS_BROKERS_VAR}={}", tls.address);
    println!("export {TLS_CA_VAR}={}", tls.ca.display());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
