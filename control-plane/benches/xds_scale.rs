//! xDS at scale: N ADS streams that behave like proxies (subscribe to every
//! cluster and its endpoints, ACK every response) against the real
//! rampart-control, over a model of 1,000 services x 3 endpoints.
//!
//! Reports, for SotW and delta: time until all N are synced, control-plane
//! RSS per connected stream, time from one endpoint change to every stream
//! having it (p50/p99/max, client side), and control-plane CPU seconds spent
//! on that push.
//!
//! Run: `cargo bench -p rampart-control-plane --bench xds_scale -- [N ...] [sotw|delta] [scoped] [--soak=SECONDS]`
//! (`--soak=600`: then one endpoint change a second for ten minutes, with the
//! control plane's RSS and the convergence p50/p99 printed each minute.)
//! (default 1000, both variants). With `scoped`, every stream is a sidecar
//! declaring `rampart.dependencies` of 10 services (svc-0, whose endpoint
//! changes, and 9 others), as a workload that calls 10 services would;
//! without it every stream takes the whole mesh. The control plane is
//! pinned to core 0, the load to core 1.
//! Streams share HTTP/2 connections (100 streams per connection), so this
//! measures the xDS work, not 10,000 TLS handshakes.

mod common;

use std::process::Command;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::ControlPlane;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use rampart_api::admin::admin_service_client::AdminServiceClient;
use rampart_api::admin::{ApplyResourcesRequest, SourceText};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 3;
const STREAMS_PER_CONNECTION: usize = 100;
/// Services a scoped proxy depends on.
const DEPENDENCIES: usize = 10;
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The model as several texts: one parse takes at most 1,024 documents.
fn model(changed_port: u16) -> Vec<String> {
    let mut texts = Vec::new();
    let mut yaml = String::new();
    for s in 0..SERVICES {
        if s > 0 && s % 200 == 0 {
            texts.push(std::mem::take(&mut yaml));
        }
        yaml.push_str(&format!(
            "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: svc-{s}}}\nspec: {{ports: [{{name: http, port: 80, protocol: http}}]}}\n---\n"
        ));
        for e in 0..ENDPOINTS {
            let port = if s == 0 && e == 0 {
                changed_port
            } else {
                8000 + e as u16
            };
            yaml.push_str(&format!(
                "apiVersion: rampart.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: svc-{s}-{e}}}\nspec: {{service: svc-{s}, address: 10.0.{}.{}, ports: {{http: {port}}}}}\n---\n",
                s / 250,
                (s % 250) + 1
            ));
        }
    }
    texts.push(yaml);
    texts
}

/// svc-0's first endpoint on a new port.
fn changed_entry() -> String {
    moved_entry(9000)
}

/// svc-0's first endpoint on `port`: each new port is a real change.
fn moved_entry(port: u16) -> String {
    format!(
        "apiVersion: rampart.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: svc-0-0}}\nspec: {{service: svc-0, address: 10.0.0.1, ports: {{http: {port}}}}}\n"
    )
}

fn cluster(s: usize) -> String {
    format!("outbound|80||svc-{s}.default")
}

/// Applies the model (as several texts) through the admin API.
async fn apply(cp: &ControlPlane, texts: Vec<String>) {
    let sources = texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| SourceText {
            source: format!("scale-{i}"),
            text,
        })
        .collect();
    AdminServiceClient::new(cp.channel().await)
        .apply_resources(ApplyResourcesRequest {
            sources,
            dry_run: false,
        })
        .await
        .unwrap();
}

/// What one simulated proxy asks for: its node and the clusters whose
/// endpoints it subscribes to.
fn proxy_node(id: usize, scoped: bool) -> (Node, Vec<String>) {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    if !scoped {
        let node = Node {
            id: format!("proxy-{id}"),
            ..Default::default()
        };
        return (node, (0..SERVICES).map(cluster).collect());
    }
    // svc-0 (the one that changes) and 9 others spread by id.
    let services: Vec<usize> = std::iter::once(0)
        .chain((1..DEPENDENCIES).map(|k| 1 + (id * 7 + k * 97) % (SERVICES - 1)))
        .collect();
    let dependencies: Vec<String> = services
        .iter()
        .map(|s| format!("svc-{s}.default"))
        .collect();
    let string = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let node = Node {
        id: format!("proxy-{id}"),
        metadata: Some(Struct {
            fields: [
                ("rampart.sidecar".to_owned(), string("true".into())),
                (
                    "rampart.dependencies".to_owned(),
                    string(dependencies.join(",")),
                ),
            ]
            .into(),
        }),
        ..Default::default()
    };
    (node, services.into_iter().map(cluster).collect())
}

/// Shared progress of all simulated proxies.
#[derive(Default)]
struct Progress {
    /// Streams that have received (and ACKed) endpoints, per round.
    synced: AtomicUsize,
    /// Client-side microseconds since `epoch` at which each stream got the change.
    changed_at: std::sync::Mutex<Vec<u64>>,
    round: AtomicU64,
}

async fn sotw_proxy(
    channel: Channel,
    (node, names): (Node, Vec<String>),
    progress: Arc<Progress>,
    epoch: Instant,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut eds_requested = false;
    let mut eds_versions = 0;
    while let Ok(Some(r)) = responses.message().await {
        let ack = DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: if r.type_url == EDS {
                names.clone()
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        if r.type_url == EDS {
            eds_versions += 1;
            record(&progress, eds_versions, epoch);
        }
        if tx.send(ack).await.is_err() {
            return;
        }
        if r.type_url == CDS && !eds_requested {
            eds_requested = true;
            let eds = DiscoveryRequest {
                type_url: EDS.into(),
                resource_names: names.clone(),
                ..Default::default()
            };
            if tx.send(eds).await.is_err() {
                return;
            }
        }
    }
}

async fn delta_proxy(
    channel: Channel,
    (node, names): (Node, Vec<String>),
    progress: Arc<Progress>,
    epoch: Instant,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut eds_requested = false;
    let mut eds_versions = 0;
    while let Ok(Some(r)) = responses.message().await {
        if r.type_url == EDS {
            eds_versions += 1;
            record(&progress, eds_versions, epoch);
        }
        let ack = DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
        if r.type_url == CDS && !eds_requested {
            eds_requested = true;
            let eds = DeltaDiscoveryRequest {
                type_url: EDS.into(),
                resource_names_subscribe: names.clone(),
                ..Default::default()
            };
            if tx.send(eds).await.is_err() {
                return;
            }
        }
    }
}

/// Round 1 = initial endpoints; round 2 = the change (and, soaking, each
/// later round one more change).
fn record(progress: &Progress, eds_versions: u64, epoch: Instant) {
    if eds_versions == progress.round.load(Ordering::Acquire) {
        if eds_versions == 2 {
            progress
                .changed_at
                .lock()
                .unwrap()
                .push(epoch.elapsed().as_micros() as u64);
        }
        progress.synced.fetch_add(1, Ordering::AcqRel);
    }
}

async fn wait_for(progress: &Progress, n: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while progress.synced.load(Ordering::Acquire) < n {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn run(n: usize, delta: bool, scoped: bool) {
    let cp = ControlPlane::start();
    apply(&cp, model(8000)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = cp.rss_kib();
    let progress = Arc::new(Progress::default());
    progress.round.store(1, Ordering::Release);
    let epoch = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(cp.channel().await);
    }
    for id in 0..n {
        let channel = channels[id / STREAMS_PER_CONNECTION].clone();
        let progress = progress.clone();
        let node = proxy_node(id, scoped);
        if delta {
            tokio::spawn(delta_proxy(channel, node, progress, epoch));
        } else {
            tokio::spawn(sotw_proxy(channel, node, progress, epoch));
        }
    }
    let synced = wait_for(&progress, n, Duration::from_secs(600)).await;
    let initial = epoch.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = cp.rss_kib();

    progress.synced.store(0, Ordering::Release);
    progress.round.store(2, Ordering::Release);
    let cpu_before = cp.cpu_seconds();
    let change_start = epoch.elapsed().as_micros() as u64;
    // One endpoint moves: the change an operator or a VM restart makes.
    apply(&cp, vec![changed_entry()]).await;
    let converged = wait_for(&progress, n, Duration::from_secs(600)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = cp.cpu_seconds() - cpu_before;
    let mut times: Vec<u64> = progress
        .changed_at
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.saturating_sub(change_start))
        .collect();
    times.sort();
    let pct = |p: f64| percentile_ms(&times, p);
    if let Some(seconds) = soak_seconds() {
        soak(&cp, &progress, n, seconds).await;
    }
    println!(
        "{:<5}{} N={n:<6} initial sync {:>7.2}s{}  RSS {:>7.1} MiB -> {:>7.1} MiB ({:>5.1} KiB/stream)  endpoint change -> all: p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms{}  CP CPU for the push {:.2}s",
        if delta { "delta" } else { "sotw" },
        if scoped { " scoped" } else { "" },
        initial.as_secs_f64(),
        if synced { "" } else { " (INCOMPLETE)" },
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
        pct(0.50),
        pct(0.99),
        times.last().copied().unwrap_or(0) as f64 / 1000.0,
        if converged { "" } else { " (INCOMPLETE)" },
        cpu,
    );
}

/// `--soak=SECONDS`: after the measurements, one endpoint change a second
/// for that long.
fn soak_seconds() -> Option<u64> {
    std::env::args().find_map(|a| a.strip_prefix("--soak=")?.parse().ok())
}

/// One change a second for `seconds`, each waited for until every stream
/// has it: per minute, the control plane's RSS and the p50/p99 of the time
/// from a change to the last stream having it (memory should stay flat and
/// convergence steady).
async fn soak(cp: &ControlPlane, progress: &Progress, n: usize, seconds: u64) {
    println!("soak: one endpoint change a second for {seconds}s, N={n}");
    println!("  minute  changes  RSS MiB  all-have-it p50 ms  p99 ms  max ms  missed");
    let started = Instant::now();
    // Per minute: the convergence times (µs) and the changes never converged.
    let mut minute: Vec<u64> = Vec::new();
    let mut missed = 0;
    let mut round = 2;
    let mut reported = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let tick = Instant::now();
        round += 1;
        progress.synced.store(0, Ordering::Release);
        progress.round.store(round, Ordering::Release);
        apply(cp, vec![moved_entry(9000 + (round % 1000) as u16)]).await;
        if wait_for(progress, n, Duration::from_secs(10)).await {
            minute.push(tick.elapsed().as_micros() as u64);
        } else {
            missed += 1;
        }
        if started.elapsed() >= Duration::from_secs(60 * (reported + 1)) {
            reported += 1;
            report_minute(cp, reported, &mut minute, &mut missed);
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    if !minute.is_empty() || missed > 0 {
        report_minute(cp, reported + 1, &mut minute, &mut missed);
    }
}

/// The `p` quantile of sorted microseconds, in milliseconds (0 if none).
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// Prints one soak minute and starts the next.
fn report_minute(cp: &ControlPlane, index: u64, minute: &mut Vec<u64>, missed: &mut u32) {
    minute.sort();
    let pct = |p: f64| percentile_ms(minute, p);
    println!(
        "  {index:>6}  {:>7}  {:>7.1}  {:>18.1}  {:>6.1}  {:>6.1}  {missed:>6}",
        minute.len(),
        cp.rss_kib() as f64 / 1024.0,
        pct(0.50),
        pct(0.99),
        minute.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    minute.clear();
    *missed = 0;
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![1000] } else { sizes };
    // `sotw` or `delta` among the arguments runs only that variant.
    let only: Vec<String> = std::env::args()
        .filter(|a| a == "sotw" || a == "delta")
        .collect();
    let variants: Vec<bool> = [false, true]
        .into_iter()
        .filter(|delta| only.is_empty() || only.iter().any(|o| (o == "delta") == *delta))
        .collect();
    // The load runs on core 1; the control plane is pinned to core 0.
    let _ = Command::new("taskset")
        .args(["-p", "-c", "1", &std::process::id().to_string()])
        .output();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let scoped = std::env::args().any(|a| a == "scoped");
    println!(
        "xDS scale: {SERVICES} services x {ENDPOINTS} endpoints; every stream subscribes to {}",
        if scoped {
            "the clusters and endpoints of its 10 dependencies"
        } else {
            "all clusters and endpoints"
        }
    );
    for n in sizes {
        for &delta in &variants {
            runtime.block_on(run(n, delta, scoped));
        }
    }
}
