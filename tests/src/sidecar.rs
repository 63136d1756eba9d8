//! Real `rampart-proxy` sidecars (and an Envoy with rampart-proxy as its
//! SDS agent) joined to a test's control plane.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{ControlPlane, Logs, apps, bin, envoy, eventually, free_port, http_get, python};

/// A rampart-proxy command joining `cp` with `token`, serving the Workload
/// API on `socket`, and the address of its admin port.
pub fn proxy(cp: &ControlPlane, token: &str, socket: &Path) -> (Command, String) {
    proxy_joining(&bin("rampart-proxy"), cp, token, socket)
}

/// [`proxy`] with the build at `binary`.
fn proxy_joining(
    binary: &Path,
    cp: &ControlPlane,
    token: &str,
    socket: &Path,
) -> (Command, String) {
    let anchor = cp.data_dir.join("admin/bundle.pem");
    proxy_to(binary, &cp.grpc_addr, &anchor, token, socket)
}

/// A rampart-proxy command for the control plane at `addr`, which it
/// authenticates with the roots in `trust_anchor` (a real one, or a
/// [`crate::scripted::ScriptedControlPlane`]), and its admin address.
pub fn proxy_to(
    binary: &Path,
    addr: &str,
    trust_anchor: &Path,
    token: &str,
    socket: &Path,
) -> (Command, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(binary);
    cmd.args(["--control-plane", addr])
        .args(["--admin-addr", &admin])
        .arg("--trust-anchor")
        .arg(trust_anchor)
        .arg("--workload-api-socket")
        .arg(socket)
        .env("RAMPART_JOIN_TOKEN", token);
    (cmd, admin)
}

/// A running rampart-proxy sidecar; killed when dropped.
pub struct Sidecar {
    pub child: Child,
    pub admin: String,
    pub logs: Logs,
    /// What it wrote on stdout: access log lines.
    pub stdout: Logs,
}

/// How a [`Sidecar`] starts: which build, how long its SVIDs live, and
/// its flags (service, ports, outbound listeners...).
pub struct SidecarBuilder<'a> {
    cp: &'a ControlPlane,
    dir: &'a Path,
    service_account: &'a str,
    binary: PathBuf,
    ttl: Option<u64>,
    args: Vec<String>,
}

impl SidecarBuilder<'_> {
    /// Another build of rampart-proxy (the benchmark's baseline).
    pub fn binary(mut self, binary: &Path) -> Self {
        self.binary = binary.to_owned();
        self
    }

    /// SVIDs valid this many seconds (`None`: the CA's default).
    pub fn ttl(mut self, seconds: impl Into<Option<u64>>) -> Self {
        self.ttl = seconds.into();
        self
    }

    /// Flags of rampart-proxy, after the ones that join the control plane.
    pub fn args(mut self, args: &[String]) -> Self {
        self.args.extend_from_slice(args);
        self
    }

    /// Joins with a fresh token and starts the process.
    pub async fn start(self) -> Sidecar {
        let token = self.cp.join_token("default", self.service_account, 0).await;
        let socket = self
            .dir
            .join(format!("{}-{}.sock", self.service_account, free_port()));
        let (mut command, admin) = proxy_joining(&self.binary, self.cp, &token, &socket);
        if let Some(ttl) = self.ttl {
            command.args(["--svid-ttl-seconds", &ttl.to_string()]);
        }
        command.args(&self.args);
        Sidecar::spawn(command, admin)
    }
}

impl Sidecar {
    /// Runs a rampart-proxy `command` (from [`proxy_to`]) with its admin
    /// port at `admin`, its output captured; killed when dropped.
    pub fn spawn(mut command: Command, admin: String) -> Sidecar {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting rampart-proxy");
        let (logs, stdout) = (Logs::default(), Logs::default());
        logs.capture(child.stderr.take().unwrap());
        stdout.capture(child.stdout.take().unwrap());
        Sidecar {
            child,
            admin,
            logs,
            stdout,
        }
    }

    /// A sidecar with the identity `default/<service_account>` joining
    /// `cp`, its sockets in `dir`; see [`SidecarBuilder`].
    pub fn builder<'a>(
        cp: &'a ControlPlane,
        dir: &'a Path,
        service_account: &'a str,
    ) -> SidecarBuilder<'a> {
        SidecarBuilder {
            cp,
            dir,
            service_account,
            binary: bin("rampart-proxy"),
            ttl: None,
            args: Vec::new(),
        }
    }

    /// A sidecar for `service_account` (node id `<account>-1`) with one
    /// outbound listener to `target` (`SVC.NS:PORT`); returns it and the
    /// address the app calls.
    pub async fn caller(
        cp: &ControlPlane,
        dir: &Path,
        service_account: &str,
        ttl: Option<u64>,
        target: &str,
    ) -> (Sidecar, String) {
        let (sidecar, mut entries) =
            Sidecar::caller_of(cp, dir, service_account, ttl, &[target]).await;
        (sidecar, entries.remove(0))
    }

    /// For each of `versions`, an echo app (its answers say
    /// `name=<version>`) behind a sidecar of service `echo` labeled
    /// `version=<version>`, with SVIDs of `ttl` seconds.
    pub async fn echo_versions(
        cp: &ControlPlane,
        dir: &Path,
        ttl: Option<u64>,
        versions: &[&str],
    ) -> Vec<(Sidecar, apps::Echo)> {
        let mut out = Vec::new();
        for version in versions {
            let app = apps::echo(version).await;
            let args = [
                "--node-id".into(),
                format!("echo-{version}"),
                "--service".into(),
                "echo".into(),
                "--label".into(),
                format!("version={version}"),
                "--port".into(),
                format!("http={}", free_port()),
                "--app-port".into(),
                format!("http={}", app.port),
            ];
            out.push((
                Sidecar::builder(cp, dir, "echo")
                    .ttl(ttl)
                    .args(&args)
                    .start()
                    .await,
                app,
            ));
        }
        out
    }

    /// [`Sidecar::caller`] with an outbound listener for each of `targets`;
    /// the addresses the app calls, in the same order.
    pub async fn caller_of(
        cp: &ControlPlane,
        dir: &Path,
        service_account: &str,
        ttl: Option<u64>,
        targets: &[&str],
    ) -> (Sidecar, Vec<String>) {
        let entries: Vec<String> = targets
            .iter()
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut args = vec!["--node-id".to_owned(), format!("{service_account}-1")];
        for (entry, target) in entries.iter().zip(targets) {
            args.extend(["--outbound".to_owned(), format!("{entry}={target}")]);
        }
        (
            Sidecar::builder(cp, dir, service_account)
                .ttl(ttl)
                .args(&args)
                .start()
                .await,
            entries,
        )
    }

    /// Whether its process is still alive (not exited, not a zombie):
    /// the same process, never restarted.
    pub fn is_running(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        // The state follows the command name in parentheses.
        stat.ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
            .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
    }

    /// Its /metrics text.
    pub async fn metrics(&self) -> String {
        http_get(&self.admin, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// SIGTERM, then waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Envoy sidecar configured by rampart-control, with a rampart-proxy
/// as its local SDS agent (`--agent-only --sds-socket`, as istio-agent is
/// for Istio's Envoy); both are killed when this is dropped.
pub struct EnvoySidecar {
    pub agent: Sidecar,
    pub envoy: Child,
    log: PathBuf,
}

impl EnvoySidecar {
    /// Starts the agent for `default/<service_account>`, then an Envoy with
    /// node id `node_id`, node metadata `rampart.sidecar=true` plus
    /// `metadata` (`KEY=VALUE`), bootstrapped by scripts/envoy_bootstrap.py.
    /// `prefix` runs before Envoy's command line (e.g. `taskset -c 1`).
    pub async fn start(
        cp: &ControlPlane,
        dir: &Path,
        node_id: &str,
        service_account: &str,
        metadata: &[String],
        prefix: &[&str],
    ) -> EnvoySidecar {
        let sds = dir.join(format!("{node_id}-sds.sock"));
        let agent_args = [
            "--agent-only".to_owned(),
            "--sds-socket".to_owned(),
            sds.display().to_string(),
        ];
        let agent = Sidecar::builder(cp, dir, service_account)
            .args(&agent_args)
            .start()
            .await;
        let socket = eventually(100, || async { sds.exists() }).await;
        assert!(
            socket,
            "no SDS socket from the agent:\n{}",
            agent.logs.text()
        );
        let bootstrap = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/envoy_bootstrap.py"))
            .args([
                node_id,
                &free_port().to_string(),
                sds.to_str().unwrap(),
                &cp.grpc_addr,
            ])
            .arg("rampart.sidecar=true")
            .args(metadata)
            .output()
            .expect("running scripts/envoy_bootstrap.py");
        assert!(
            bootstrap.status.success(),
            "{}",
            String::from_utf8_lossy(&bootstrap.stderr)
        );
        let config = dir.join(format!("{node_id}-envoy.json"));
        std::fs::write(&config, &bootstrap.stdout).unwrap();
        let log = dir.join(format!("{node_id}-envoy.log"));
        let out = std::fs::File::create(&log).unwrap();
        let (program, args) = match prefix.split_first() {
            Some((first, rest)) => (
                PathBuf::from(first),
                rest.iter()
                    .map(|a| a.into())
                    .chain([envoy().into_os_string()])
                    .collect::<Vec<std::ffi::OsString>>(),
            ),
            None => (envoy(), Vec::new()),
        };
        let envoy = Command::new(program)
            .args(args)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .stdout(out.try_clone().unwrap())
            .stderr(Stdio::from(out))
            .spawn()
            .expect("starting Envoy");
        EnvoySidecar { agent, envoy, log }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EnvoySidecar {
    fn drop(&mut self) {
        let _ = self.envoy.kill();
        let _ = self.envoy.wait();
    }
}
