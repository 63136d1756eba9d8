//! Driving `meshctl demo` from tests: its live view as JSON snapshots,
//! its steps, and the routes it reports.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bin;

pub const HTTP: &str = "frontend -> backend (http)";
pub const GRPC: &str = "frontend -> backend (grpc)";
pub const CLIENT: &str = "client -> frontend (http)";

/// A running `meshctl demo -o json`, its snapshots arriving on a channel.
pub struct Demo {
    pub child: Child,
    dir: std::path::PathBuf,
    snapshots: mpsc::Receiver<Value>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Demo {
    pub fn start(dir: &Path) -> Demo {
        Self::start_with_env(dir, &[])
    }

    /// The same, with `env` set for meshctl and every process it starts.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Demo {
        let mut child = Command::new(bin("meshctl"))
            .arg("--data-dir")
            .arg(dir)
            .args(["demo", "-o", "json"])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a test that fails can kill it all.
            .process_group(0)
            .spawn()
            .expect("starting meshctl demo");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, snapshots) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Demo {
            child,
            dir: dir.to_owned(),
            snapshots,
            stderr,
        }
    }

    /// Waits (up to `seconds`) for a snapshot satisfying `check`; panics
    /// with the last one and the demo's output if none does.
    pub fn until(&self, what: &str, seconds: u64, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(v) = self.snapshots.recv_timeout(Duration::from_secs(1)) {
                if check(&v) {
                    return v;
                }
                last = v;
            }
        }
        panic!(
            "{what}: not seen in {seconds} s\nlast snapshot (handshake refusals by sidecar and reason in refused_by_reason): {last:#}\ndemo stderr:\n{}\n{}",
            self.stderr.lock().unwrap_or_else(|e| e.into_inner()),
            self.log_tails(40)
        );
    }

    /// The last `lines` lines of every log the demo writes (control plane,
    /// apps, sidecars), to tell why a check failed.
    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "--- {} (last {} lines)\n",
                log.display(),
                tail.len()
            ));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Ctrl-C; the demo's exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Demo {
    /// Ctrl-C (the demo stops what it started), and if it has not exited
    /// within 10 s, SIGKILL to its whole process group.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        let _ = self.child.wait();
    }
}

/// `meshctl --data-dir DIR ARGS`; its stdout, or a panic with its stderr.
pub fn meshctl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("meshctl"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One route of a snapshot.
pub fn route<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {snapshot}"))
}

/// The percent of a route's successful calls `version` answered.
pub fn share(snapshot: &Value, route_name: &str, version: &str) -> f64 {
    route(snapshot, route_name)["versions"][version]
        .as_f64()
        .unwrap_or(0.0)
}

/// A route's success percent.
pub fn success(snapshot: &Value, route_name: &str) -> f64 {
    route(snapshot, route_name)["success"].as_f64().unwrap()
}
