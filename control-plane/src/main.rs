//! `rampart-control`: the Rampart control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rampart_certs::{SvidLifetimes, TrustDomain};
use rampart_control_plane::{CaSource, Config, run};

/// The Rampart control plane: CA (SPIFFE X.509-SVIDs) and admin API, on the
/// embedded sled store in DATA_DIR.
#[derive(Parser, Debug)]
#[command(name = "rampart-control", version)]
struct Args {
    /// Directory for the store, the CA keys and the admin credential (created 0700).
    #[arg(long, env = "RAMPART_DATA_DIR")]
    data_dir: PathBuf,
    /// Trust domain of every identity this control plane issues.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// gRPC over TLS: CA service, admin API (and xDS later).
    #[arg(long, default_value = "127.0.0.1:15012")]
    grpc_addr: SocketAddr,
    /// HTTP: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:15014")]
    metrics_addr: SocketAddr,
    /// Sign SVIDs with an intermediate CA generated at start (the root stays offline in memory use).
    #[arg(long)]
    intermediate_ca: bool,
    /// Plug-in CA directory: ca-cert.pem, ca-key.pem, root-cert.pem, optional cert-chain.pem.
    #[arg(long, conflicts_with = "intermediate_ca")]
    plugin_ca_dir: Option<PathBuf>,
    /// Lifetime of an SVID when the workload asks for none (e.g. 24h, 90m, 3600s).
    #[arg(long, default_value = "24h", value_parser = rampart_api::duration::parse)]
    default_svid_ttl: Duration,
    /// Longest SVID lifetime granted; longer requests are cut to this.
    #[arg(long, default_value = "2160h", value_parser = rampart_api::duration::parse)]
    max_svid_ttl: Duration,
    /// Quiet time after a model change before proxies are updated (bounded at 2s).
    #[arg(long, default_value = "100ms", value_parser = rampart_api::duration::parse)]
    xds_debounce: Duration,
    /// How long a sidecar's endpoint stays after its xDS stream closes (it
    /// keeps its registration if it reconnects within this time).
    #[arg(long, default_value = "30s", value_parser = rampart_api::duration::parse)]
    endpoint_grace: Duration,
    /// The least time each phase of a root rotation (`meshctl ca
    /// rotate-root`) lasts, beyond waiting for every connected proxy: time
    /// for what is not an xDS client (tools holding the bundle, proxies
    /// reconnecting) to follow.
    #[arg(long, default_value = "1m", value_parser = rampart_api::duration::parse)]
    root_rotation_settle: Duration,
    /// DEVELOPMENT ONLY: also serve xDS (nothing else) in plaintext on this
    /// loopback address, for local clients without certificates. Callers
    /// are anonymous: they get the shared configuration, never a sidecar's.
    #[arg(long, value_parser = parse_loopback)]
    dev_plaintext_xds: Option<SocketAddr>,
    /// Run in a Kubernetes cluster: accept ServiceAccount tokens (audience
    /// rampart-ca, checked by TokenReview). The API server is found from
    /// KUBECONFIG or, in a pod, the in-cluster configuration.
    #[arg(long)]
    kubernetes: bool,
    /// Serve the admission webhooks (/inject, /validate) over HTTPS on this address,
    /// with the serving certificate (add the webhook's Service name with
    /// --serving-host).
    #[arg(long)]
    webhook_addr: Option<SocketAddr>,
    /// The image injected sidecars run (it must have rampart-proxy on its PATH).
    #[arg(long, default_value = concat!("rampart/rampart-proxy:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    /// The control plane address injected sidecars dial.
    #[arg(long, default_value = "rampart-control.rampart-system.svc:15012")]
    sidecar_control_plane: String,
    /// Inject native sidecars (restartPolicy: Always init containers):
    /// auto = when the API server is 1.29 or newer.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    native_sidecar: String,
    /// Keep the caBundle of this MutatingWebhookConfiguration equal to the
    /// mesh's root bundle.
    #[arg(long, requires = "kubernetes")]
    webhook_configuration: Option<String>,
    /// Keep the caBundle of this ValidatingWebhookConfiguration (the
    /// security policy's, /validate) equal to the mesh's root bundle.
    #[arg(long, requires = "kubernetes")]
    validating_webhook_configuration: Option<String>,
    /// The namespace this control plane runs in: its leader Lease and CA
    /// Secret live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "rampart-system")]
    namespace: String,
    /// The Lease the replicas elect a leader with (in --namespace).
    #[arg(long, default_value = "rampart-control")]
    leader_lease: String,
    /// This replica's name in the Lease (default: the pod name, else
    /// HOSTNAME-PID).
    #[arg(long, env = "POD_NAME")]
    replica_id: Option<String>,
    /// Keep the CA root in this Secret (in --namespace) so every replica
    /// signs with the same key; created with a new root if missing.
    #[arg(long, requires = "kubernetes", conflicts_with_all = ["plugin_ca_dir", "intermediate_ca"])]
    ca_secret: Option<String>,
    /// Speak plain HTTP to this image registry (host:port) when checking
    /// image signatures; repeatable. For local test registries only.
    #[arg(long = "registry-plain-http")]
    registry_plain_http: Vec<String>,
    /// The bound on each image registry call of the security policy (the
    /// API server gives the webhook 5 s in all).
    #[arg(long, default_value = "2s", value_parser = rampart_api::duration::parse)]
    registry_timeout: Duration,
    /// Registry credentials for the security policy's image lookups: a
    /// Docker config.json (e.g. a mounted kubernetes.io/dockerconfigjson
    /// Secret's `.dockerconfigjson`); without it, registries are asked
    /// anonymously.
    #[arg(long)]
    registry_auth: Option<std::path::PathBuf>,
    /// How often running pods are judged by the security policy again when
    /// nothing in the cluster changed (signatures and vulnerability reports
    /// change in the registries); changes are judged within a second.
    #[arg(long, default_value = "5m", value_parser = rampart_api::duration::parse)]
    policy_recheck_interval: Duration,
    /// Extra DNS name or IP in the serving certificate, for clients that
    /// check hostnames (repeatable; localhost and loopback are always there).
    #[arg(long = "serving-host", value_parser = parse_serving_host)]
    serving_hosts: Vec<String>,
}

/// A loopback IP:port (the plaintext listener must not leave the machine).
fn parse_loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not IP:PORT (e.g. 127.0.0.1:15010)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: plaintext xDS is for local development only (use 127.0.0.1 or [::1])"
        ));
    }
    Ok(addr)
}

/// An IP address or a DNS name (labels of letters, digits and '-').
fn parse_serving_host(s: &str) -> Result<String, String> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "{s:?} is neither an IP address nor a DNS name (e.g. rampart.example.com)"
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if args.default_svid_ttl.is_zero() || args.default_svid_ttl > args.max_svid_ttl {
        anyhow::bail!("--default-svid-ttl must be positive and at most --max-svid-ttl");
    }
    let config = Config {
        data_dir: args.data_dir,
        trust_domain: args.trust_domain,
        grpc_addr: args.grpc_addr,
        metrics_addr: args.metrics_addr,
        ca_source: match args.plugin_ca_dir {
            Some(dir) => CaSource::PlugIn(dir),
            None => CaSource::SelfSigned {
                intermediate: args.intermediate_ca,
            },
        },
        lifetimes: SvidLifetimes {
            default_ttl: args.default_svid_ttl,
            max_ttl: args.max_svid_ttl,
        },
        xds_debounce: args.xds_debounce,
        endpoint_grace: args.endpoint_grace,
        root_rotation_settle: args.root_rotation_settle,
        serving_hosts: args.serving_hosts,
        dev_plaintext_xds: args.dev_plaintext_xds,
        kubernetes: args.kubernetes,
        webhook_addr: args.webhook_addr,
        sidecar: rampart_control_plane::SidecarSettings {
            image: args.sidecar_image,
            control_plane: args.sidecar_control_plane,
            native: match args.native_sidecar.as_str() {
                "always" => Some(true),
                "never" => Some(false),
                _ => None,
            },
        },
        webhook_configuration: args.webhook_configuration,
        validating_webhook_configuration: args.validating_webhook_configuration,
        registries: rampart_control_plane::RegistrySettings {
            plain_http: args.registry_plain_http,
            timeout: args.registry_timeout,
            auth_file: args.registry_auth,
        },
        policy_recheck: args.policy_recheck_interval,
        namespace: args.namespace,
        leader_lease: args.leader_lease,
        replica_id: args.replica_id.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "rampart-control".into());
            format!("{host}-{}", std::process::id())
        }),
        ca_secret: args.ca_secret,
    };
    run(config, shutdown_signal())
        .await
        .context("rampart-control failed")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
