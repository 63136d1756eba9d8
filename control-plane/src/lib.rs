//! rampart-control-plane: the CA that issues SPIFFE identities, the admin API
//! for meshctl, metrics and health; xDS and admission come next. One process
//! with the embedded sled store runs a whole standalone mesh.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod admission;
pub mod ca;
pub mod discovery;
mod files;
mod grpc;
mod identity;
pub mod k8s;
pub mod metrics;
pub mod model_store;
pub mod names;
pub mod peer;
pub mod store;
pub mod xds;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use rampart_api::admin::admin_service_server::AdminServiceServer;
use rampart_api::ca::certificate_service_server::CertificateServiceServer;
use rampart_certs::tls::{ClientAuth, PeerPolicy, server_config};
use rampart_certs::{SpiffeId, SvidLifetimes, TrustDomain};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use ca::CaSource;

/// Everything `rampart-control` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub trust_domain: TrustDomain,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub ca_source: CaSource,
    pub lifetimes: SvidLifetimes,
    /// Quiet time after a model change before proxies are updated.
    pub xds_debounce: Duration,
    /// How long a disconnected sidecar stays an endpoint.
    pub endpoint_grace: Duration,
    /// Extra DNS names or IPs for the serving certificate.
    pub serving_hosts: Vec<String>,
    /// Development only: plaintext xDS on this loopback address.
    pub dev_plaintext_xds: Option<SocketAddr>,
    /// Take identities (and, later, the mesh) from the Kubernetes API server.
    pub kubernetes: bool,
    /// Serve the admission webhooks (HTTPS) here.
    pub webhook_addr: Option<SocketAddr>,
    /// What injected sidecars run and dial.
    pub sidecar: SidecarSettings,
    /// The MutatingWebhookConfiguration whose caBundle is kept equal to
    /// the mesh's root bundle (needs `kubernetes`).
    pub webhook_configuration: Option<String>,
    /// The ValidatingWebhookConfiguration (of `/validate`) kept the same way.
    pub validating_webhook_configuration: Option<String>,
    /// How image registries are reached (for image signatures).
    pub registries: RegistrySettings,
    /// How often running pods are judged again even when nothing in the
    /// cluster changed (image signatures and reports change in registries).
    pub policy_recheck: Duration,
    /// The namespace the control plane runs in (its Lease, its CA Secret).
    pub namespace: String,
    /// The Lease replicas elect their leader with.
    pub leader_lease: String,
    /// This replica's name in the Lease.
    pub replica_id: String,
    /// Keep the CA root in this Secret (in `namespace`) instead of the data
    /// directory, so replicas share it.
    pub ca_secret: Option<String>,
    /// The least time each phase of a root rotation lasts.
    pub root_rotation_settle: Duration,
}

/// The injected sidecar's image, the control plane address it dials, and
/// whether it runs as a native sidecar.
#[derive(Debug, Clone)]
pub struct SidecarSettings {
    pub image: String,
    pub control_plane: String,
    /// None: native when the API server is 1.29 or newer (always outside
    /// Kubernetes, where only `meshctl inject`-style use applies).
    pub native: Option<bool>,
}

/// How the security policy reaches image registries.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Registries (`host:port`) spoken to in plain HTTP.
    pub plain_http: Vec<String>,
    /// The bound on each registry call (the webhook itself has 5 s).
    pub timeout: Duration,
    /// A Docker config.json with registry credentials.
    pub auth_file: Option<PathBuf>,
}

/// Written to `<data-dir>/control-plane.json` once the listeners are bound,
/// so meshctl (and tests) find the control plane without being told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    #[serde(default)]
    pub webhook_addr: Option<SocketAddr>,
    pub trust_domain: String,
    pub pid: u32,
}

/// How long SIGTERM waits for in-flight calls before the process exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// File name of [`Discovery`] in the data directory.
pub const DISCOVERY_FILE: &str = "control-plane.json";

/// Runs the control plane until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    files::private_dir(&config.data_dir)?;
    let store = store::Store::open(&config.data_dir.join("store"))
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let tokens = store.join_tokens()?;
    let streams = xds::StreamRegistry::default();
    let kube = match config.kubernetes {
        false => None,
        true => Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API server (KUBECONFIG or in-cluster)")?,
        ),
    };
    // The roots the control plane owns and rotates (in its data directory,
    // or in a cluster with --ca-secret in a Secret every replica shares),
    // or a plug-in CA it only reads.
    let (ca, owned) = match &config.ca_source {
        ca::CaSource::PlugIn(dir) => (
            ca::plug_in(dir, &config.trust_domain, config.lifetimes)?,
            None,
        ),
        ca::CaSource::SelfSigned { intermediate } => {
            let store = match (&config.ca_secret, &kube) {
                (Some(name), Some(client)) => ca::RootStore::Secret(Box::new(
                    ca::secret_roots::SecretRoots::new(client.clone(), &config.namespace, name),
                )),
                _ => ca::RootStore::Files(ca::RootFiles::in_data_dir(&config.data_dir)),
            };
            let (ca, set) = ca::from_store(
                &store,
                &config.trust_domain,
                *intermediate,
                config.lifetimes,
            )
            .await?;
            (ca, Some((store, *intermediate, set)))
        }
    };
    let ca = ca::CaHandle::new(ca);
    // The bundle every proxy is served follows the CA through rotations.
    let roots = follow_ca(&ca, |ca| ca.bundle().to_pem());
    let registrations =
        discovery::Registrations::load(store.registrations()?, config.endpoint_grace);
    {
        let streams = streams.clone();
        registrations.set_connected(move || !streams.is_empty());
    }
    let cluster = match &kube {
        None => None,
        Some(client) => Some(k8s::discovery::Discovery::start(client.clone()).await?),
    };
    // In a cluster the model lives in the API server (custom resources).
    let mesh: model_store::Mesh = match &kube {
        None => model_store::Mesh::Embedded(store.mesh()?),
        Some(client) => model_store::Mesh::Kubernetes(
            k8s::mesh_store::KubeMeshStore::start(client.clone()).await?,
        ),
    };
    let snapshots = xds::spawn_snapshot_builder(
        mesh.clone(),
        xds::Sources {
            registrations: registrations.clone(),
            trust_domain: config.trust_domain.to_string(),
            roots: roots.clone(),
            kubernetes: cluster.clone(),
        },
        config.xds_debounce,
    );
    let metrics = metrics::Metrics::new();
    // Now and whenever the CA changes: the admin credential under its
    // signing root, and the CA gauges.
    let refresh = {
        let (data_dir, metrics) = (config.data_dir.clone(), metrics.clone());
        move |ca: &rampart_certs::CertificateAuthority| {
            metrics.ca_expiry.set(ca.chain_not_after().unix_timestamp());
            metrics
                .root_expiry
                .set(ca.root_not_after().unix_timestamp());
            metrics.trusted_roots.set(ca.bundle().roots().len() as i64);
            admin::write_admin_credential(&data_dir, ca)
        }
    };
    refresh(&ca.current())?;
    on_ca_change(&ca, move |ca| {
        if let Err(e) = refresh(ca) {
            tracing::error!(
                error = format!("{e:#}"),
                "rewriting the admin credential for the new CA failed"
            );
        }
    });

    let mut hosts = identity::ServingHosts {
        dns_names: vec!["localhost".to_owned()],
        ips: vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ],
    };
    if !config.grpc_addr.ip().is_unspecified() && !config.grpc_addr.ip().is_loopback() {
        hosts.ips.push(config.grpc_addr.ip());
    }
    for host in &config.serving_hosts {
        match host.parse::<IpAddr>() {
            Ok(ip) => hosts.ips.push(ip),
            Err(_) => hosts.dns_names.push(host.clone()),
        }
    }
    let identity = identity::serving_identity(ca.clone(), hosts)?;
    // Clients are verified against the bundle of the moment: new
    // connections follow a rotation, open ones are left alone.
    let client_auth = ClientAuth::Optional(PeerPolicy::TrustDomain(config.trust_domain.clone()));
    let tls = server_config(identity.clone(), ca.current().bundle(), client_auth.clone())?;
    let (grpc_tls_tx, grpc_tls) = tokio::sync::watch::channel(Arc::new(tls.clone()));
    on_ca_change(&ca, move |ca| {
        match server_config(identity.clone(), ca.bundle(), client_auth.clone()) {
            Ok(config) => {
                grpc_tls_tx.send_replace(Arc::new(config));
            }
            Err(e) => {
                tracing::error!(error = %e, "the new trust bundle cannot verify clients; keeping the last one")
            }
        }
    });

    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    let http_listener = TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", config.metrics_addr))?;
    let webhook_listener = match config.webhook_addr {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the webhook address {addr}"))?,
        ),
    };
    let discovery = Discovery {
        grpc_addr: grpc_listener.local_addr()?,
        metrics_addr: http_listener.local_addr()?,
        webhook_addr: webhook_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?,
        trust_domain: config.trust_domain.to_string(),
        pid: std::process::id(),
    };
    files::write_private(
        &config.data_dir.join(DISCOVERY_FILE),
        &serde_json::to_vec_pretty(&discovery)?,
    )?;

    spawn_token_purge(tokens.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http = tokio::spawn(admin::serve_http(
        http_listener,
        metrics.clone(),
        ready.clone(),
        stopped(stop_rx.clone()),
    ));
    // Every replica serves; one leads the singletons (and root rotations).
    let leadership = kube.as_ref().map(|client| {
        k8s::leader::campaign(
            client.clone(),
            &config.namespace,
            &config.leader_lease,
            config.replica_id.clone(),
        )
    });
    let rotator = owned.map(|(store, intermediate, set)| {
        let cluster = match (&store, &kube, &leadership, &config.ca_secret) {
            (ca::RootStore::Secret(_), Some(client), Some(leadership), Some(secret)) => {
                Some(ca::Cluster {
                    leading: leadership.watch(),
                    reports: ca::rotation_reports::Reports::new(
                        client.clone(),
                        &config.namespace,
                        &format!("{secret}-rotation"),
                        &config.replica_id,
                    ),
                })
            }
            _ => None,
        };
        let rotator = ca::Rotator::new(
            ca::RotatorConfig {
                store,
                trust_domain: config.trust_domain.clone(),
                intermediate,
                lifetimes: config.lifetimes,
                settle: config.root_rotation_settle,
                cluster,
            },
            set,
            ca.clone(),
            streams.clone(),
            snapshots.clone(),
        );
        rotator.spawn();
        rotator
    });
    let ads = xds::AdsServer::new(
        snapshots,
        metrics.clone(),
        streams.clone(),
        Arc::new(xds::MeshSource::new(registrations)),
    );
    let plaintext = match config.dev_plaintext_xds {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the plaintext xDS address {addr}"))?;
            tracing::warn!(
                address = %addr,
                "PLAINTEXT xDS IS ON (--dev-plaintext-xds): unauthenticated local clients get the mesh configuration; never use this in production"
            );
            let anonymous = SpiffeId::new(config.trust_domain.clone(), "/rampart/dev-plaintext")?;
            let server = tonic::transport::Server::builder()
                .add_service(xds::AdsService::new(ads.clone().anonymous_as(anonymous)))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stopped(stop_rx.clone()),
                );
            Some(tokio::spawn(server))
        }
    };
    // What pods are judged by, at admission and while they run.
    let policy = admission::PolicyInputs {
        mesh: mesh.clone(),
        // The pod-security.kubernetes.io labels of namespaces count too.
        namespaces: match &kube {
            None => None,
            Some(client) => Some(k8s::namespaces::Namespaces::start(client.clone()).await?),
        },
        root_namespace: config.namespace.clone(),
        signatures: Arc::new(rampart_api::image_verifier::ImageVerifier::new(
            registry_client(&config.registries)?,
        )),
    };
    let running = cluster.map(|cluster| {
        admission::running::spawn(
            policy.clone(),
            admission::running::PodSource {
                revision: cluster.revision(),
                pods: Box::new(move || cluster.pods()),
            },
            metrics.clone(),
            config.policy_recheck,
        )
    });
    let reviewer = kube.clone().map(k8s::TokenReviewer::new);
    let webhooks = match webhook_listener {
        None => None,
        Some(listener) => {
            let native = match (config.sidecar.native, &kube) {
                (Some(native), _) => native,
                (None, Some(client)) => k8s::supports_native_sidecars(client).await?,
                (None, None) => true,
            };
            let mut tls = tls.clone();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let webhook = Arc::new(admission::WebhookConfig {
                template: rampart_api::inject::Template {
                    image: config.sidecar.image.clone(),
                    control_plane: config.sidecar.control_plane.clone(),
                    native_sidecar: native,
                },
                policy: policy.clone(),
                audit: admission::AuditTrail::new(
                    metrics.clone(),
                    kube.clone(),
                    &config.replica_id,
                ),
                metrics: metrics.clone(),
            });
            tracing::info!(addr = %listener.local_addr()?, native_sidecar = native, "serving the admission webhooks (/inject, /validate)");
            Some(tokio::spawn(admission::serve(
                listener,
                Arc::new(tls),
                webhook,
                stopped(stop_rx.clone()),
            )))
        }
    };
    if let (Some(client), Some(leadership)) = (&kube, &leadership) {
        // The bundle as it changes in a root rotation: each singleton starts
        // again with the new one.
        let bundle = roots;
        use k8s::webhook_config::{WebhookKind, keep_ca_bundle};
        let configurations = [
            (WebhookKind::Mutating, &config.webhook_configuration),
            (
                WebhookKind::Validating,
                &config.validating_webhook_configuration,
            ),
        ];
        for (kind, name) in configurations {
            let Some(name) = name.clone() else { continue };
            let (client, bundle) = (client.clone(), bundle.clone());
            leadership.run_while_leading("webhook caBundle", move || {
                let (client, name) = (client.clone(), name.clone());
                with_latest(bundle.clone(), move |pem| {
                    keep_ca_bundle(client.clone(), kind, name.clone(), pem)
                })
            });
        }
        let client = client.clone();
        leadership.run_while_leading("root bundle ConfigMaps", move || {
            let client = client.clone();
            with_latest(bundle.clone(), move |pem| {
                k8s::root_bundle::publish(client.clone(), pem)
            })
        });
    }
    let grpc = tonic::transport::Server::builder()
        // Pings find proxies that vanished without closing their streams.
        .http2_keepalive_interval(Some(rampart_api::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(rampart_api::KEEPALIVE_TIMEOUT))
        .add_service(CertificateServiceServer::new(ca::CaService::new(
            ca.clone(),
            tokens.clone(),
            reviewer,
            metrics.clone(),
        )))
        .add_service(xds::AdsService::new(ads))
        .add_service(AdminServiceServer::new(admin::AdminService::new(
            ca.clone(),
            tokens,
            mesh,
            streams,
            running,
            rotator,
            metrics,
        )))
        .serve_with_incoming_shutdown(
            grpc::tls_incoming(grpc_listener, grpc_tls),
            stopped(stop_rx),
        );
    let grpc = tokio::spawn(grpc);
    ready.store(true, Ordering::Release);
    tracing::info!(
        grpc = %discovery.grpc_addr,
        metrics = %discovery.metrics_addr,
        trust_domain = %config.trust_domain,
        data_dir = %config.data_dir.display(),
        "rampart-control ready"
    );

    shutdown.await;
    tracing::info!("shutting down");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    // In-flight calls get a deadline to finish; idle clients that keep their
    // connection open must not hold the process forever.
    match tokio::time::timeout(SHUTDOWN_GRACE, async { (grpc.await, http.await) }).await {
        Ok((grpc, http)) => {
            grpc??;
            http??;
            if let Some(plaintext) = plaintext {
                plaintext.await??;
            }
            if let Some(webhooks) = webhooks {
                webhooks.await??;
            }
        }
        Err(_) => tracing::warn!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace period; closing them"
        ),
    }
    store.flush().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs `f` each time the CA changes (a root rotation's steps), for as
/// long as the process runs.
fn on_ca_change(
    ca: &ca::CaHandle,
    mut f: impl FnMut(&rampart_certs::CertificateAuthority) + Send + 'static,
) {
    let mut changes = ca.subscribe();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let ca = changes.borrow_and_update().clone();
            f(&ca);
        }
    });
}

/// A value computed from the CA, kept current as the CA changes.
fn follow_ca<T: Send + Sync + 'static>(
    ca: &ca::CaHandle,
    of: impl Fn(&rampart_certs::CertificateAuthority) -> T + Send + 'static,
) -> tokio::sync::watch::Receiver<T> {
    let (tx, rx) = tokio::sync::watch::channel(of(&ca.current()));
    on_ca_change(ca, move |ca| {
        tx.send_replace(of(ca));
    });
    rx
}

/// Runs `task` with the latest value of `values`, starting it again
/// whenever the value changes.
async fn with_latest<T, F, Fut>(mut values: tokio::sync::watch::Receiver<T>, task: F)
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let value = values.borrow_and_update().clone();
        tokio::select! {
            _ = task(value) => return,
            changed = values.changed() => if changed.is_err() { return },
        }
    }
}

/// The registry client of the security policy's image lookups.
fn registry_client(settings: &RegistrySettings) -> anyhow::Result<rampart_api::oci::Registry> {
    rampart_api::oci::Registry::new(settings.plain_http.clone(), settings.timeout)?
        .with_credentials_file(settings.auth_file.as_deref())
        .map_err(anyhow::Error::msg)
}

fn spawn_token_purge(tokens: store::JoinTokens) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match tokens.purge_expired(Duration::from_secs(24 * 3600)) {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "removed expired join tokens"),
                Err(e) => tracing::warn!(error = %e, "purging expired join tokens failed"),
            }
        }
    });
}
