//! `rampart-proxy`: Rampart's sidecar. It gets and keeps the workload's
//! SPIFFE identity, serves the SPIFFE Workload API (and SDS for an Envoy
//! beside it), and carries the workload's traffic over mTLS as the control
//! plane configures it over xDS (`proxy`).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use rampart_proxy::{
    admin, identity, init, metrics, proxy, sds, uds_authority, wait, workload_api, xds_client,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use rampart_api::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use rampart_certs::TrustBundle;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use identity::{BootstrapError, CaClient};

/// The Rampart sidecar proxy.
#[derive(Parser, Debug)]
#[command(name = "rampart-proxy", version)]
struct Args {
    /// Control plane gRPC address (host:port).
    #[arg(long, default_value = "127.0.0.1:15012")]
    control_plane: String,
    /// PEM roots that authenticate the control plane (`meshctl ca bundle`).
    #[arg(long)]
    trust_anchor: PathBuf,
    /// One-time join token (`meshctl token create`). Prefer the environment
    /// variable: command lines are visible to other users.
    #[arg(
        long,
        env = "RAMPART_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    join_token: Option<String>,
    /// Or, in Kubernetes: the projected ServiceAccount token (audience
    /// rampart-ca), read again on every attempt since the kubelet rotates it.
    #[arg(long, env = "RAMPART_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Serve the SPIFFE Workload API on this unix socket.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET_PATH")]
    workload_api_socket: PathBuf,
    /// Also serve Envoy's Secret Discovery Service (`default`, `ROOTCA`) on
    /// this unix socket, as the local agent of an Envoy sidecar.
    #[arg(long)]
    sds_socket: Option<PathBuf>,
    /// Admin port: /live, /ready, /metrics (port 0: any free port, logged).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: std::net::SocketAddr,
    /// Only the identity agent (Workload API, SDS for an Envoy beside it):
    /// no xDS stream of its own.
    #[arg(long)]
    agent_only: bool,
    /// Node id on the xDS stream; also the name of the endpoint it registers
    /// (default: SERVICE-HOSTNAME, or HOSTNAME).
    #[arg(long)]
    node_id: Option<String>,
    /// The service this workload serves (in its SVID's namespace).
    #[arg(long)]
    service: Option<String>,
    /// Where peers reach this proxy (with --service).
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    /// NAME=PORT: for service port NAME, the port this proxy listens on for peers (repeatable).
    #[arg(long = "port", value_parser = parse_port)]
    ports: Vec<(String, u16)>,
    /// NAME=PORT: for service port NAME, where the app listens on 127.0.0.1 (repeatable).
    #[arg(long = "app-port", value_parser = parse_port)]
    app_ports: Vec<(String, u16)>,
    /// KEY=VALUE workload label (repeatable).
    #[arg(long = "label", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    /// SVC.NS this workload calls (repeatable); default: every service.
    #[arg(long = "dependency")]
    dependencies: Vec<String>,
    /// LOCAL_IP:PORT=SVC.NS:PORT outbound listener (repeatable).
    #[arg(long = "outbound")]
    outbound: Vec<rampart_api::xds::OutboundListener>,
    /// Ask for SVIDs valid this many seconds (default: the CA's default, 24h).
    #[arg(long)]
    svid_ttl_seconds: Option<u64>,
    /// Worker threads for traffic (default: one per CPU). A sidecar beside
    /// a small workload usually wants 1 or 2.
    #[arg(long, env = "RAMPART_PROXY_THREADS")]
    threads: Option<usize>,
    /// Use state-of-the-world ADS instead of delta (for control planes
    /// without delta support).
    #[arg(long)]
    xds_sotw: bool,
    /// Take the traffic `rampart-proxy init` redirects: inbound on
    /// --inbound-capture-port, outbound on --outbound-capture-port. Inbound
    /// listeners are then reached by the port a connection was going to.
    #[arg(long)]
    capture: bool,
    #[arg(long, default_value_t = 15006)]
    inbound_capture_port: u16,
    #[arg(long, default_value_t = 15001)]
    outbound_capture_port: u16,
    /// On SIGTERM or /drain, how long in-flight requests get to finish.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Where this workload runs, `region[/zone[/sub-zone]]`: its endpoint is
    /// registered there, and calls go to the nearest endpoints that are
    /// up (same sub-zone, zone, region, then anywhere).
    #[arg(long, value_parser = rampart_plan::endpoint::Locality::parse)]
    locality: Option<rampart_plan::endpoint::Locality>,
}

/// `NAME=VALUE`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// `NAME=PORT` with PORT 1-65535.
fn parse_port(s: &str) -> Result<(String, u16), String> {
    let (name, port) = parse_pair(s)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((name, p)),
        _ => Err(format!("{s:?}: {port:?} is not a port (1-65535)")),
    }
}

/// `pairs` as a map; a name given twice is a mistake worth saying.
fn unique<V: Clone>(flag: &str, pairs: &[(String, V)]) -> anyhow::Result<BTreeMap<String, V>> {
    let mut out = BTreeMap::new();
    for (name, value) in pairs {
        if out.insert(name.clone(), value.clone()).is_some() {
            anyhow::bail!("{flag} {name}=... is given twice");
        }
    }
    Ok(out)
}

/// The xDS node: who this proxy is and what it serves and calls. The
/// control plane validates every field (and takes the identity from the SVID).
fn node(args: &Args) -> anyhow::Result<envoy_types::pb::envoy::config::core::v3::Node> {
    use envoy_types::pb::envoy::config::core::v3::{Node, node::UserAgentVersionType};
    use rampart_api::xds::{Serves, SidecarMetadata};
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let id = args.node_id.clone().unwrap_or_else(|| match &args.service {
        Some(service) => format!("{service}-{hostname}"),
        None => hostname,
    });
    let serves = match &args.service {
        None => None,
        Some(service) => Some(Serves {
            service: service.clone(),
            address: args.address,
            ports: unique("--port", &args.ports)?,
            app_ports: unique("--app-port", &args.app_ports)?,
        }),
    };
    let metadata = SidecarMetadata {
        sidecar: true,
        // Where operators reach this proxy's admin endpoints (meshctl identity).
        admin: Some(args.admin_addr),
        serves,
        labels: unique("--label", &args.labels)?,
        locality: args.locality.as_ref().map(ToString::to_string),
        dependencies: (!args.dependencies.is_empty())
            .then(|| args.dependencies.iter().cloned().collect()),
        outbound: (!args.outbound.is_empty()).then(|| args.outbound.clone()),
    };
    Ok(Node {
        id,
        user_agent_name: "rampart-proxy".to_owned(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_owned(),
        )),
        metadata: Some(metadata.to_struct()),
        ..Default::default()
    })
}

/// Runs `rampart-proxy NAME ...`: its own flags, its own exit status.
fn subcommand<A: Parser>(name: &str, run: impl FnOnce(&A) -> anyhow::Result<()>) -> ExitCode {
    let args = A::parse_from(std::env::args().skip(1));
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart-proxy {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("init") => return subcommand::<init::InitArgs>("init", init::run),
        Some("wait") => return subcommand::<wait::WaitArgs>("wait", wait::run),
        _ => {}
    }
    let args = Args::parse();
    // One thread: a current-thread runtime (no work stealing, no cross-thread
    // wake-ups); more: a multi-thread runtime with that many workers.
    let mut runtime = match args.threads {
        Some(0) => {
            eprintln!("rampart-proxy: --threads must be at least 1");
            return ExitCode::FAILURE;
        }
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(start(args)),
        Err(e) => {
            eprintln!("rampart-proxy: starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: Args) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    let anchor_pem = std::fs::read(&args.trust_anchor)
        .with_context(|| format!("reading the trust anchor {}", args.trust_anchor.display()))?;
    let trust_anchor = TrustBundle::from_pem_detect(&anchor_pem)
        .with_context(|| format!("loading the trust anchor {}", args.trust_anchor.display()))?;
    let client = CaClient {
        control_plane: args.control_plane.clone(),
        trust_anchor,
        svid_ttl: args.svid_ttl_seconds.map(Duration::from_secs),
    };

    let metrics = metrics::ProxyMetrics::new();
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
    // The address actually bound (port 0 picks one), for the node metadata.
    args.admin_addr = admin_listener.local_addr()?;
    tracing::info!(address = %args.admin_addr, "admin: /live /ready /metrics /certs /config_dump");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (config_tx, config) =
        tokio::sync::watch::channel(Arc::new(rampart_plan::resources::Config::default()));
    let drain_tx = Arc::new(tokio::sync::watch::channel(false).0);
    let drain = drain_tx.subscribe();
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        config,
        drain_tx.clone(),
        wait_for(stopped.clone()),
    ));

    let credential = match (&args.join_token, &args.token_file) {
        (Some(token), _) => Credential::JoinToken(token.clone()),
        (None, Some(path)) => Credential::TokenFile(path.clone()),
        (None, None) => unreachable!("clap requires one of them"),
    };
    let identity = bootstrap(&client, &credential).await?;
    metrics.svid_in_use(&identity.svid);
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        spiffe_id = %identity.svid.spiffe_id(),
        serial = %identity.svid.serial_hex(),
        not_after = %identity.svid.not_after(),
        "obtained SVID"
    );
    let tls = proxy::tls::Tls::new(&identity)?;
    let (updates, current) = tokio::sync::watch::channel(Arc::new(identity));
    let traffic = if args.agent_only {
        None
    } else {
        let settings = xds_client::Settings {
            control_plane: args.control_plane.clone(),
            node: node(&args)?,
            capture: args.capture,
            sotw: args.xds_sotw,
        };
        let first = Arc::new(rampart_plan::Plan::new(args.capture));
        let (plan_tx, plans) = tokio::sync::watch::channel(first);
        let outputs = xds_client::Outputs {
            config: config_tx,
            plan: plan_tx,
            identity: updates.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(xds_client::run(settings, outputs));
        tokio::spawn(tls.clone().follow(current.clone()));
        let proxy = proxy::Proxy::new(tls, metrics.clone(), args.capture, args.locality.clone());
        tokio::spawn(proxy.access_log.clone().run());
        if args.capture {
            use proxy::capture::{Direction, accept};
            for (port, direction) in [
                (args.inbound_capture_port, Direction::Inbound),
                (args.outbound_capture_port, Direction::Outbound),
            ] {
                let socket = tokio::net::TcpListener::bind(("0.0.0.0", port))
                    .await
                    .with_context(|| format!("binding the capture port {port}"))?;
                tokio::spawn(accept(proxy.clone(), socket, direction, drain.clone()));
                // IPv6 on a socket of its own: a dual-stack one would report
                // IPv4 connections as mapped addresses, whose original
                // destination is asked for differently.
                match proxy::capture::bind_v6_only(port) {
                    Ok(socket) => {
                        tokio::spawn(accept(proxy.clone(), socket, direction, drain.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(port, error = %e, "no IPv6 capture (IPv6 off in this network namespace?); IPv4 only")
                    }
                }
            }
            tracing::info!(
                inbound = args.inbound_capture_port,
                outbound = args.outbound_capture_port,
                "taking captured traffic"
            );
        }
        tokio::spawn(proxy::run(proxy.clone(), plans, drain.clone()));
        Some(proxy)
    };
    tokio::spawn(identity::keep_renewed(client, updates, metrics));

    let sds = match &args.sds_socket {
        None => None,
        Some(path) => {
            let server = tonic::transport::Server::builder()
                .add_service(SecretDiscoveryServiceServer::new(sds::Sds::new(
                    current.clone(),
                )))
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(bind_socket(path)?),
                    wait_for(stopped.clone()),
                );
            tracing::info!(socket = %path.display(), "serving SDS (default, ROOTCA) for Envoy");
            Some(tokio::spawn(server))
        }
    };
    let socket = &args.workload_api_socket;
    let listener = bind_socket(socket)?;
    tracing::info!(socket = %socket.display(), "serving the SPIFFE Workload API");
    let workload_api = tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(
            workload_api::WorkloadApi::new(current),
        ))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|conn| conn.map(uds_authority::shim)),
            wait_for(stopped),
        );
    let workload_api = tokio::spawn(workload_api);
    shutdown_signal().await;
    // Stop taking connections, let in-flight requests finish, then go.
    drain_tx.send_replace(true);
    if let Some(proxy) = traffic {
        tracing::info!(
            deadline_s = args.drain_seconds,
            "draining: no new connections; finishing in-flight requests"
        );
        let left = proxy
            .wait_idle(Duration::from_secs(args.drain_seconds))
            .await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain deadline reached; closing the connections still open"
            );
        }
        proxy.access_log.flush_now();
    }
    let _ = stop.send(true);
    workload_api.await?.context("Workload API server")?;
    let _ = std::fs::remove_file(socket);
    if let (Some(server), Some(path)) = (sds, &args.sds_socket) {
        server.await?.context("SDS server")?;
        let _ = std::fs::remove_file(path);
    }
    admin.await?.context("admin server")?;
    Ok(())
}

/// Binds a unix socket, replacing a stale one from an earlier run.
fn bind_socket(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding the socket {}", path.display()))
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// What proves the workload's identity for its first SVID.
enum Credential {
    JoinToken(String),
    TokenFile(PathBuf),
}

impl Credential {
    fn token(&self) -> anyhow::Result<String> {
        match self {
            Credential::JoinToken(token) => Ok(token.clone()),
            Credential::TokenFile(path) => {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?;
                let token = token.trim();
                anyhow::ensure!(
                    !token.is_empty(),
                    "the token file {} is empty",
                    path.display()
                );
                Ok(token.to_owned())
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Credential::JoinToken(_) => "join token",
            Credential::TokenFile(_) => "ServiceAccount token",
        }
    }
}

/// Gets the first SVID, waiting out an unreachable control plane (it may
/// start after the proxy) and a token file not yet mounted; a refused
/// token ends the process at once.
async fn bootstrap(
    client: &CaClient,
    credential: &Credential,
) -> anyhow::Result<identity::Identity> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = match credential.token() {
            Ok(token) => client.bootstrap(&token).await,
            Err(e) => Err(BootstrapError::Other(e)),
        };
        match attempt {
            Ok(identity) => return Ok(identity),
            Err(BootstrapError::Refused(reason)) => {
                anyhow::bail!("{} refused: {reason}", credential.kind())
            }
            Err(BootstrapError::Other(e)) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "cannot get the first SVID yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
