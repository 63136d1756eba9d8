//! What both benchmarks need: the release `rampart-control` pinned to core 0
//! (when `taskset` exists), an admin mTLS channel to it, and its CPU and
//! memory as /proc reports them.

#![allow(dead_code)] // each bench uses part of this

use std::process::{Command, Stdio};
use std::time::Duration;

use rampart_certs::tls::{CurrentSvid, PeerPolicy, client_config};
use rampart_certs::well_known::control_plane_id;
use rampart_certs::{Svid, TrustBundle};
use tonic::transport::Channel;

/// A running control plane on ephemeral ports, killed on drop.
pub struct ControlPlane {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub grpc_addr: String,
    pub bundle: TrustBundle,
    pub admin: Svid,
    /// Whether it is pinned to core 0.
    pub pinned: bool,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlane {
    /// Starts it and waits for its discovery file and admin credential.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let exe = env!("CARGO_BIN_EXE_rampart-control");
        let pinned = Command::new("taskset").arg("-V").output().is_ok();
        let mut cmd = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", exe]);
            c
        } else {
            Command::new(exe)
        };
        let mut child = cmd
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rampart-control");
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(dir.path().join("control-plane.json")) {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                let admin = dir.path().join("admin");
                let read = |name: &str| std::fs::read(admin.join(name)).unwrap();
                let bundle = TrustBundle::from_pem_detect(&read("bundle.pem")).unwrap();
                let admin = Svid::from_pem(&read("cert-chain.pem"), &read("key.pem")).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                return Self {
                    grpc_addr: value["grpc_addr"].as_str().unwrap().to_owned(),
                    child,
                    _dir: dir,
                    bundle,
                    admin,
                    pinned,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("rampart-control did not start");
    }

    /// A new mTLS channel presenting the admin SVID.
    pub async fn channel(&self) -> Channel {
        let server = PeerPolicy::exactly(control_plane_id(self.bundle.trust_domain()));
        let tls = client_config(
            Some(CurrentSvid::new(&self.admin).unwrap()),
            &self.bundle,
            server,
        )
        .unwrap();
        rampart_api::connect(&self.grpc_addr, tls).await.unwrap()
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// CPU seconds (user + system) used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (in parentheses): utime is the 12th
        // and stime the 13th, in clock ticks (100 per second on Linux).
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }
}
