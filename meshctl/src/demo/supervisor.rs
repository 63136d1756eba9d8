//! Starting everything the demo needs, watching it, and stopping it all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rampart_api::admin::admin_service_client::AdminServiceClient;
use rampart_api::admin::{
    ApplyResourcesRequest, CreateJoinTokenRequest, GetResourcesRequest, SourceText,
};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use super::load::{self, Stats};
use super::show::{self, Snapshot};
use super::{
    AppState, PROMETHEUS_TARGETS, State, VERSIONS, View, data_dir, model, running, state_path,
};
use crate::client::Target;

/// The demo's processes, by name; all killed when the demo stops.
#[derive(Default)]
struct Children(BTreeMap<String, Child>);

impl Children {
    fn spawn(&mut self, name: &str, mut command: Command, log: &Path) -> anyhow::Result<u32> {
        let log = std::fs::File::create(log)
            .with_context(|| format!("creating the log {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().unwrap_or(0);
        self.0.insert(name.to_owned(), child);
        Ok(pid)
    }

    fn pids(&self) -> BTreeMap<String, u32> {
        self.0
            .iter()
            .filter_map(|(n, c)| Some((n.clone(), c.id()?)))
            .collect()
    }

    /// Names of the processes that have exited.
    fn exited(&mut self) -> Vec<String> {
        self.0
            .iter_mut()
            .filter_map(|(n, c)| matches!(c.try_wait(), Ok(Some(_))).then(|| n.clone()))
            .collect()
    }

    async fn stop_all(&mut self) {
        for child in self.0.values_mut() {
            let _ = child.start_kill();
        }
        for child in self.0.values_mut() {
            let _ = child.wait().await;
        }
    }
}

/// rampart-control and rampart-proxy, next to this meshctl.
struct Bins {
    dir: PathBuf,
}

impl Bins {
    fn locate() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe().context("finding meshctl's own path")?;
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        for bin in ["rampart-control", "rampart-proxy"] {
            if !dir.join(bin).exists() {
                bail!(
                    "{bin} is not next to meshctl in {}: build them together (cargo build --workspace --bins)",
                    dir.display()
                );
            }
        }
        Ok(Bins { dir })
    }

    fn command(&self, bin: &str) -> Command {
        Command::new(self.dir.join(bin))
    }
}

/// A loopback port nothing listens on, never one handed out before by this
/// process: the kernel may give the same free port to two `bind(0)` calls
/// in a row once the first socket is closed, and two of the demo's
/// listeners on one port would send its traffic to the wrong process.
fn free_port() -> anyhow::Result<SocketAddr> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let addr = socket.local_addr()?;
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return Ok(addr);
        }
    }
}

/// Everything one run of the demo holds.
struct Demo {
    dir: PathBuf,
    bins: Bins,
    children: Children,
    state: State,
    grpc: String,
}

/// `meshctl demo`: starts the mesh, shows it live until Ctrl-C, stops it.
pub async fn run(target: &Target, rate: u32, view: View) -> anyhow::Result<()> {
    let dir = data_dir(target.data_dir.as_deref());
    if let Some(state) = running(&dir) {
        bail!(
            "a demo is already running on {} (pid {}): use its steps (meshctl demo split ...) or stop it with Ctrl-C first",
            dir.display(),
            state.pid
        );
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    stop_leftovers(&dir);
    let earlier = dir.join("ca").exists();
    let mut demo = Demo {
        bins: Bins::locate()?,
        children: Children::default(),
        state: State {
            pid: std::process::id(),
            ..State::default()
        },
        grpc: String::new(),
        dir: dir.clone(),
    };
    let result = demo.start_and_watch(earlier, rate, view).await;
    demo.children.stop_all().await;
    let _ = std::fs::remove_file(state_path(&dir));
    eprintln!(
        "\nstopped everything the demo started; the mesh's state stays in {} (run meshctl demo again to reuse it)",
        dir.display()
    );
    result
}

impl Demo {
    async fn start_and_watch(
        &mut self,
        earlier: bool,
        rate: u32,
        view: View,
    ) -> anyhow::Result<()> {
        let target = Target {
            data_dir: Some(self.dir.clone()),
            control_plane: None,
            credentials: None,
        };
        eprintln!(
            "starting rampart-control on its embedded store in {} ...",
            self.dir.display()
        );
        self.start_control_plane().await?;
        let mut admin = target.admin().await?;
        self.apply_model(&mut admin, earlier).await?;

        eprintln!("starting the apps and their rampart-proxy sidecars ...");
        let entry = self.start_workloads(&mut admin).await?;
        self.save()?;
        self.write_prometheus_targets()?;

        let started = std::time::Instant::now();
        let stats = Arc::new(Stats::default());
        let traffic = tokio::spawn(load::generate(entry, rate, stats.clone()));
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let result = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break Ok(()),
                _ = terminate.recv() => break Ok(()),
                _ = tick.tick() => {}
            }
            if let Err(e) = self.revive_requested() {
                eprintln!("reviving a backend failed: {e:#}");
            }
            let exited = self.children.exited();
            if exited.iter().any(|n| n == "rampart-control") {
                break Err(anyhow::anyhow!(
                    "rampart-control exited; see {}",
                    self.dir.join("logs/rampart-control.log").display()
                ));
            }
            let snapshot =
                Snapshot::collect(started.elapsed(), &self.state, stats.window(), exited).await;
            show::render(&snapshot, view, &self.dir);
        };
        traffic.abort();
        result
    }

    async fn start_control_plane(&mut self) -> anyhow::Result<Discovery> {
        // A control plane killed just before (the leftovers of a demo stopped
        // with SIGKILL) can hold the store's lock a moment longer on a busy
        // host: a start refused for the lock is tried again for up to 10 s.
        for _ in 0..20 {
            if let Some(discovery) = self.try_start_control_plane().await? {
                return Ok(discovery);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!(
            "another rampart-control is using {}: stop it (or its meshctl demo) first, or pass another --data-dir",
            self.dir.display()
        )
    }

    /// `None` if the store is locked by another process.
    async fn try_start_control_plane(&mut self) -> anyhow::Result<Option<Discovery>> {
        let discovery_path = self.dir.join("control-plane.json");
        let _ = std::fs::remove_file(&discovery_path);
        let mut command = self.bins.command("rampart-control");
        command
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(["--endpoint-grace", "5s"]);
        let log = self.dir.join("logs/rampart-control.log");
        let pid = self.children.spawn("rampart-control", command, &log)?;
        for _ in 0..300 {
            if let Ok(text) = std::fs::read_to_string(&discovery_path)
                && let Ok(d) = serde_json::from_str::<Discovery>(&text)
                && d.pid == pid
            {
                self.grpc = d.grpc_addr.clone();
                self.state.control_plane_metrics = d.metrics_addr.clone();
                eprintln!(
                    "rampart-control: gRPC (mTLS) {}, metrics http://{}/metrics",
                    d.grpc_addr, d.metrics_addr
                );
                return Ok(Some(d));
            }
            if !self.children.exited().is_empty() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                if log.contains("could not acquire lock") {
                    return Ok(None);
                }
                bail!("rampart-control exited at start:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "rampart-control did not start in 30 s; see {}",
            log.display()
        )
    }

    /// The services always; the backend's policy only the first time, so a
    /// split applied in an earlier run is still there.
    async fn apply_model(
        &self,
        admin: &mut AdminServiceClient<Channel>,
        earlier: bool,
    ) -> anyhow::Result<()> {
        let existing = admin
            .get_resources(GetResourcesRequest {
                kind: "all".to_owned(),
                namespace: model::NAMESPACE.to_owned(),
                name: String::new(),
            })
            .await
            .map(|r| r.into_inner().resources_json)
            .unwrap_or_default();
        let names: Vec<String> = existing.iter().filter_map(|j| describe(j)).collect();
        if earlier {
            eprintln!(
                "found the mesh of an earlier run in {}: its CA and root (so every identity's trust), join tokens and {} resources: {}",
                self.dir.display(),
                names.len(),
                names.join(", ")
            );
        }
        let mut texts = vec![("demo services", model::SERVICES.to_owned())];
        if !names.iter().any(|n| n == "trafficpolicy/backend") {
            texts.push(("demo backend policy", model::backend_policy(None)));
        }
        apply(admin, &texts).await
    }

    async fn start_workloads(
        &mut self,
        admin: &mut AdminServiceClient<Channel>,
    ) -> anyhow::Result<SocketAddr> {
        // Backends: one app (HTTP + gRPC) and one sidecar per version.
        for version in VERSIONS {
            let (http, grpc) = (free_port()?, free_port()?);
            self.start_app(
                &format!("backend-{version}"),
                vec![
                    "backend".into(),
                    "--version".into(),
                    version.into(),
                    "--http".into(),
                    http.to_string(),
                    "--grpc".into(),
                    grpc.to_string(),
                ],
            )?;
            let (http_in, grpc_in) = (free_port()?, free_port()?);
            self.start_sidecar(
                admin,
                &format!("backend-{version}"),
                "backend",
                &[
                    "--service".into(),
                    "backend".into(),
                    "--label".into(),
                    "app=backend".into(),
                    "--label".into(),
                    format!("version={version}"),
                    "--port".into(),
                    format!("http={}", http_in.port()),
                    "--port".into(),
                    format!("grpc={}", grpc_in.port()),
                    "--app-port".into(),
                    format!("http={}", http.port()),
                    "--app-port".into(),
                    format!("grpc={}", grpc.port()),
                ],
            )
            .await?;
        }
        // The frontend calls the backend through its sidecar.
        let (app, inbound, to_http, to_grpc) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        self.start_app(
            "frontend",
            vec![
                "frontend".into(),
                "--listen".into(),
                app.to_string(),
                "--backend-http".into(),
                to_http.to_string(),
                "--backend-grpc".into(),
                to_grpc.to_string(),
            ],
        )?;
        self.start_sidecar(
            admin,
            "frontend",
            "frontend",
            &[
                "--service".into(),
                "frontend".into(),
                "--label".into(),
                "app=frontend".into(),
                "--port".into(),
                format!("http={}", inbound.port()),
                "--app-port".into(),
                format!("http={}", app.port()),
                "--outbound".into(),
                format!("{to_http}=backend.demo:8080"),
                "--outbound".into(),
                format!("{to_grpc}=backend.demo:9090"),
            ],
        )
        .await?;
        // The client (the traffic generator in this process) calls the frontend.
        let entry = free_port()?;
        self.start_sidecar(
            admin,
            "client",
            "client",
            &["--outbound".into(), format!("{entry}=frontend.demo:8080")],
        )
        .await?;
        Ok(entry)
    }

    fn start_app(&mut self, name: &str, args: Vec<String>) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.args(["demo", "app"]).args(&args);
        let log = self.dir.join(format!("logs/{name}.log"));
        let pid = self.children.spawn(name, command, &log)?;
        self.state
            .apps
            .insert(name.to_owned(), AppState { pid, args });
        Ok(())
    }

    async fn start_sidecar(
        &mut self,
        admin: &mut AdminServiceClient<Channel>,
        name: &str,
        service_account: &str,
        args: &[String],
    ) -> anyhow::Result<()> {
        let token = admin
            .create_join_token(CreateJoinTokenRequest {
                namespace: model::NAMESPACE.to_owned(),
                service_account: service_account.to_owned(),
                ttl_seconds: 600,
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating a join token for {name}: {}", e.message()))?
            .into_inner();
        let admin_addr = free_port()?;
        let mut command = self.bins.command("rampart-proxy");
        command
            // The token goes by environment, never on a command line others can read.
            .env("RAMPART_JOIN_TOKEN", &token.token)
            .args(["--control-plane", &self.grpc])
            .arg("--trust-anchor")
            .arg(self.dir.join("admin/bundle.pem"))
            .arg("--workload-api-socket")
            .arg(self.dir.join(format!("{name}-workload.sock")))
            .args(["--node-id", name])
            .args(["--admin-addr", &admin_addr.to_string()])
            .args(["--svid-ttl-seconds", "60"])
            .args(args);
        let log = self.dir.join(format!("logs/{name}-proxy.log"));
        self.children
            .spawn(&format!("{name} sidecar"), command, &log)?;
        eprintln!(
            "  {name}: sidecar for {} (admin http://{admin_addr})",
            token.spiffe_id
        );
        self.state
            .sidecars
            .insert(name.to_owned(), admin_addr.to_string());
        Ok(())
    }

    /// Every metrics endpoint, as a Prometheus file_sd target list
    /// (deploy/prometheus/prometheus.yml reads it), labelled with what
    /// the dashboards select on: component, namespace, workload.
    fn write_prometheus_targets(&self) -> anyhow::Result<()> {
        let mut groups = vec![serde_json::json!({
            "targets": [self.state.control_plane_metrics],
            "labels": {"component": "control-plane"},
        })];
        for (workload, admin) in &self.state.sidecars {
            groups.push(serde_json::json!({
                "targets": [admin],
                "labels": {"component": "proxy", "namespace": model::NAMESPACE, "workload": workload},
            }));
        }
        let path = self.dir.join(PROMETHEUS_TARGETS);
        std::fs::write(&path, serde_json::to_vec_pretty(&groups)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn save(&mut self) -> anyhow::Result<()> {
        self.state.children = self.children.pids();
        let path = state_path(&self.dir);
        std::fs::write(&path, serde_json::to_vec_pretty(&self.state)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Restarts the apps `meshctl demo revive` asked for (a file per app).
    fn revive_requested(&mut self) -> anyhow::Result<()> {
        for version in VERSIONS {
            let request = self.dir.join(format!("revive-backend-{version}"));
            if !request.exists() {
                continue;
            }
            let _ = std::fs::remove_file(&request);
            let name = format!("backend-{version}");
            let args = self.state.apps.get(&name).map(|a| a.args.clone());
            if let Some(args) = args {
                if let Some(mut old) = self.children.0.remove(&name) {
                    let _ = old.start_kill();
                }
                self.start_app(&name, args)?;
                self.save()?;
            }
        }
        Ok(())
    }
}

/// Stops what an earlier demo on `dir` left running when it could not
/// clean up (it was killed with SIGKILL): the processes its state file
/// lists that are still the demo's (their command line says so).
fn stop_leftovers(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(state_path(dir)) else {
        return;
    };
    let Ok(state) = serde_json::from_str::<State>(&text) else {
        return;
    };
    let marker = dir.display().to_string();
    let mut stopped = Vec::new();
    for (name, pid) in &state.children {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        let ours = cmdline.contains(&marker)
            || state.apps.get(name).is_some_and(|a| {
                cmdline.contains("demo app") && cmdline.contains(&a.args.join(" "))
            });
        if ours
            && std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        {
            stopped.push(*pid);
        }
    }
    if !stopped.is_empty() {
        // A killed process holds its files (the store's lock) until it has
        // exited: wait for that (a zombie holds nothing) before starting again.
        let running = |pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z')
            })
        };
        for _ in 0..100 {
            if !stopped.iter().any(running) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "stopped {} processes an earlier demo on {} left running",
            stopped.len(),
            dir.display()
        );
    }
    let _ = std::fs::remove_file(state_path(dir));
}

#[derive(serde::Deserialize)]
struct Discovery {
    grpc_addr: String,
    metrics_addr: String,
    pid: u32,
}

/// `kind/name` of a resource the admin API returned as JSON.
fn describe(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(format!(
        "{}/{}",
        v["kind"].as_str()?.to_ascii_lowercase(),
        v["metadata"]["name"].as_str()?
    ))
}

/// Applies YAML texts (each labelled for error messages), all or nothing.
pub async fn apply(
    admin: &mut AdminServiceClient<Channel>,
    texts: &[(&str, String)],
) -> anyhow::Result<()> {
    let sources = texts
        .iter()
        .map(|(source, text)| SourceText {
            source: (*source).to_owned(),
            text: text.clone(),
        })
        .collect();
    admin
        .apply_resources(ApplyResourcesRequest {
            sources,
            dry_run: false,
        })
        .await
        .map_err(crate::client::rpc_error)?;
    Ok(())
}
