//! `meshctl demo`: the whole mesh on the embedded default, on loopback, in
//! one command. rampart-control on its sled store in a data directory, a
//! frontend calling two versions of a backend over HTTP and gRPC, a client
//! calling the frontend, each workload behind its own rampart-proxy with
//! its own SPIFFE identity, and a live view of what the traffic does.
//! The steps of the tutorial (`split`, `deny`, `allow`, `kill`, `revive`,
//! `reset`) act on a running demo from another shell.

pub mod apps;
mod load;
mod model;
mod show;
mod steps;
mod supervisor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use steps::step;
pub use supervisor::run;

/// The backend's versions.
pub const VERSIONS: [&str; 2] = ["v1", "v2"];

/// Where the demo keeps its state when no `--data-dir` is given.
pub const DEFAULT_DIR: &str = ".rampart";

#[derive(clap::Subcommand, Debug)]
pub enum Step {
    /// Split the backend's traffic between versions, e.g. `v1=90,v2=10`.
    Split { weights: String },
    /// Deny the frontend the backend's HTTP API (`/api/*`); gRPC stays allowed.
    Deny,
    /// Remove the deny policy.
    Allow,
    /// Kill a backend version's app (its sidecar stays): outlier detection routes around it.
    Kill { version: String },
    /// Start a killed backend version's app again.
    Revive { version: String },
    /// Back to the start: no split, no deny policy, every backend running.
    Reset,
    /// Run one of the demo's apps (the demo starts these itself).
    #[command(hide = true)]
    App {
        #[command(subcommand)]
        app: App,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum App {
    Backend {
        #[arg(long)]
        version: String,
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        grpc: SocketAddr,
    },
    Frontend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        backend_http: SocketAddr,
        #[arg(long)]
        backend_grpc: SocketAddr,
    },
}

/// How the live view prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// A table, redrawn in place on a terminal.
    Table,
    /// One JSON object per refresh, for scripts and tests.
    Json,
}

/// What a running demo writes for its steps to find: its pid, the apps'
/// pids and addresses, the sidecars' admin addresses.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub pid: u32,
    pub apps: std::collections::BTreeMap<String, AppState>,
    /// Every process it started (apps included), by name.
    #[serde(default)]
    pub children: std::collections::BTreeMap<String, u32>,
    pub sidecars: std::collections::BTreeMap<String, String>,
    pub control_plane_metrics: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AppState {
    pub pid: u32,
    pub args: Vec<String>,
}

const STATE_FILE: &str = "demo.json";

/// The demo's metrics endpoints for Prometheus, in the data directory.
pub const PROMETHEUS_TARGETS: &str = "prometheus-targets.json";

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// The state of a demo running on `dir`, if one is.
fn running(dir: &Path) -> Option<State> {
    let text = std::fs::read_to_string(state_path(dir)).ok()?;
    let state: State = serde_json::from_str(&text).ok()?;
    alive(state.pid).then_some(state)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The data directory: `--data-dir`, else `.rampart`.
pub fn data_dir(given: Option<&Path>) -> PathBuf {
    given.map_or_else(|| PathBuf::from(DEFAULT_DIR), Path::to_path_buf)
}

/// Runs a demo app (hidden `meshctl demo app`).
pub async fn app(app: App) -> anyhow::Result<()> {
    match app {
        App::Backend {
            version,
            http,
            grpc,
        } => apps::backend(version, http, grpc).await,
        App::Frontend {
            listen,
            backend_http,
            backend_grpc,
        } => apps::frontend(listen, backend_http, backend_grpc).await,
    }
}
