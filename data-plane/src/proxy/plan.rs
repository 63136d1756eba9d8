//! The xDS resources the proxy holds, compiled into the plain structures the
//! traffic path reads: listeners (filter chains, RBAC, where to send),
//! route tables, clusters and their endpoints. Compiling is also how the
//! proxy validates an update before ACKing it: anything it would not carry
//! faithfully (an unknown filter, a route match it cannot evaluate) is an
//! error naming the resource and the field, and the update is NACKed.
//! A reference to something not yet received (a route, a cluster) is not an
//! error: the request gets a 503 that says so until it arrives.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::Rbac;
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::access_log::{AccessLogPlan, Of};
use super::proto::{checked_duration, duration, percent};
use super::rate_limit::TokenBucket;
use crate::xds_client::Config;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use rampart_api::xds::{CaptureMetadata, TypeUrl};

/// Everything the traffic path needs, compiled once per xDS update.
#[derive(Debug, Default)]
pub struct Plan {
    /// The proxy takes captured traffic (`--capture`): only then is
    /// `captured` built, which costs about half of an update's work at
    /// 1,000 services (docs/benchmarks.md). Kept from plan to plan.
    pub capture: bool,
    pub listeners: BTreeMap<String, Arc<ListenerPlan>>,
    /// With traffic capture: for each service endpoint address (and
    /// virtual IP), the (unbound) listener that handles connections
    /// redirected there.
    pub captured: HashMap<SocketAddr, Arc<ListenerPlan>>,
    pub routes: HashMap<String, Arc<RouteTable>>,
    pub clusters: HashMap<String, Arc<ClusterPlan>>,
    /// Route tables held at their previous version while the clusters of
    /// the new one warm, and since when (see [`WARMING_TIMEOUT`]).
    pub held_back: HashMap<String, Instant>,
    /// What each cluster and route table was compiled from, so that an
    /// update compiles only what it changed (an endpoint move in a mesh of
    /// 1,000 services recompiled all of them: docs/benchmarks.md).
    compiled: Compiled,
}

/// Compiled clusters and route tables with the exact resources (and, for a
/// cluster, its endpoints) they came from. Bytes are compared rather than
/// versions: a state-of-the-world server may resend a resource unchanged
/// under a new version, and nothing obliges a server to version honestly.
/// A compiled cluster is the plan's own (`Plan::clusters`); a route table
/// is kept here, since the plan may hold an older one back while clusters
/// warm.
#[derive(Debug, Default)]
struct Compiled {
    /// Each cluster's resource and its endpoints (none: warming).
    clusters: HashMap<String, (Arc<Any>, Option<Arc<Any>>)>,
    routes: HashMap<String, (Arc<Any>, Arc<RouteTable>)>,
}

/// Whether two held resources are the same message: the same allocation
/// (kept from an earlier update) or, failing that, the same bytes.
fn same(a: &Arc<Any>, b: &Arc<Any>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// [`same`], for resources that may be absent.
fn same_or_both_absent(a: Option<&Arc<Any>>, b: Option<&Arc<Any>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// How long a new route table waits for its clusters to warm before it is
/// used anyway (Envoy's default `initial_fetch_timeout`): a cluster whose
/// endpoints never come must not pin the old routes for ever.
pub const WARMING_TIMEOUT: Duration = Duration::from_secs(15);

impl Plan {
    /// When the first held-back route table stops waiting, if any is.
    pub fn warming_deadline(&self) -> Option<Instant> {
        self.held_back
            .values()
            .min()
            .map(|since| *since + WARMING_TIMEOUT)
    }
}

#[derive(Debug, PartialEq)]
pub struct ListenerPlan {
    pub name: String,
    pub address: SocketAddr,
    pub chains: Vec<ChainPlan>,
    /// Bound to its address (false: only reached through capture).
    pub bind: bool,
    /// A sidecar's inbound listener (`inbound|PORT`): with capture it is
    /// reached through the inbound capture port instead of being bound.
    pub inbound: bool,
}

/// Which connections a filter chain takes, told apart on the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Any,
    Tls,
    Plaintext,
}

impl Transport {
    /// Whether a chain of this transport takes a connection that is (or is
    /// not) TLS.
    pub fn takes(self, tls: bool) -> bool {
        match self {
            Transport::Any => true,
            Transport::Tls => tls,
            Transport::Plaintext => !tls,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct ChainPlan {
    pub name: String,
    pub transport: Transport,
    /// The application protocols the chain takes (`filter_chain_match.
    /// application_protocols`; empty: any): under TLS the ALPN negotiated,
    /// in plaintext `http/1.1` or `h2c` as detected on the first bytes.
    pub application_protocols: Vec<String>,
    /// Terminate TLS, requiring a client SVID (the mesh's mTLS).
    pub terminate_mtls: bool,
    /// Checked once per connection, before any byte reaches the app.
    pub network_rbac: Vec<Rbac>,
    pub app: App,
}

#[derive(Debug, PartialEq)]
pub enum App {
    Http(HttpPlan),
    Tcp {
        cluster: String,
        /// Close the connection after this long with no byte either way
        /// (`TcpProxy.idle_timeout`; Envoy's default 1 h; None: never).
        idle_timeout: Option<Duration>,
        /// One JSON line per connection on stdout, if configured.
        access_log: Option<Arc<AccessLogPlan>>,
    },
}

/// How long a downstream HTTP connection may stay open doing nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpTimeouts {
    /// Close (gracefully) after this long with no request in flight
    /// (`common_http_protocol_options.idle_timeout`; Envoy's default 1 h).
    pub idle: Option<Duration>,
    /// An HTTP/1.x request head must be complete this long after its first
    /// byte arrived, or the connection is closed (`request_headers_timeout`;
    /// off unless set, as in Envoy).
    pub request_headers: Option<Duration>,
}

/// Envoy's default for the HTTP connection and TCP proxy idle timeouts.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            idle: Some(DEFAULT_IDLE_TIMEOUT),
            request_headers: None,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct HttpPlan {
    /// Checked per request, DENY and ALLOW in order.
    pub rbac: Vec<Rbac>,
    pub routes: Routes,
    /// Tell the app the caller's SPIFFE ID (`x-forwarded-client-cert`).
    pub forward_client_identity: bool,
    pub timeouts: HttpTimeouts,
    /// One JSON line per request on stdout, if configured.
    pub access_log: Option<Arc<AccessLogPlan>>,
    /// A local rate limit, checked after the RBAC filters.
    pub rate_limit: Option<Arc<TokenBucket>>,
}

#[derive(Debug, PartialEq)]
pub enum Routes {
    Named(String),
    Inline(Arc<RouteTable>),
}

#[derive(Debug, PartialEq)]
pub struct RouteTable {
    pub name: String,
    pub hosts: Vec<VirtualHost>,
}

#[derive(Debug, PartialEq)]
pub struct VirtualHost {
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, PartialEq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug, PartialEq)]
pub struct Route {
    pub path: PathMatch,
    /// (cluster, weight); one entry for a plain cluster.
    pub clusters: Vec<(String, u32)>,
    /// Whole-request deadline (headers), `None` for none.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPlan>,
    /// (cluster, percent of requests copied there).
    pub mirrors: Vec<(String, f64)>,
    pub fault: Option<FaultPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPlan {
    pub attempts: u32,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_refused_stream: bool,
    /// gRPC statuses (by number) that are retried.
    pub grpc_statuses: Vec<u32>,
    pub per_try_timeout: Option<Duration>,
    pub backoff: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// (delay, percent).
    pub delay: Option<(Duration, f64)>,
    /// (HTTP status, percent).
    pub abort: Option<(u16, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    LeastRequest,
    RoundRobin,
    RingHash,
    Random,
}

#[derive(Debug, PartialEq)]
pub struct ClusterPlan {
    pub name: String,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Speak HTTP/2 to plaintext endpoints (on mTLS, ALPN decides).
    pub http2: bool,
    /// mTLS to endpoints marked `tls: mtls`: the SPIFFE IDs accepted.
    pub mtls: Option<Vec<String>>,
    pub limits: Limits,
    pub outlier: Option<OutlierPlan>,
    pub endpoints: Vec<EndpointPlan>,
    /// Endpoints come over EDS (and are in `endpoints` once they have).
    pub eds: bool,
    /// An EDS cluster whose endpoints have not arrived yet.
    pub warming: bool,
    /// The service port is declared `auto` (cluster metadata
    /// `rampart.protocol`): a captured connection to it is told HTTP from
    /// opaque TCP on its first bytes.
    pub detect_protocol: bool,
    /// The service's virtual IPs (cluster metadata `rampart.addresses`):
    /// captured connections to them on the service port come here too.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Retries in flight at most this percent of requests in flight (but
    /// always `min` allowed); replaces `max_retries` when set, as in Envoy.
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub percent: f64,
    pub min: u32,
}

impl Default for Limits {
    /// Envoy's defaults.
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPlan {
    pub consecutive_5xx: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointPlan {
    pub address: SocketAddr,
    pub weight: u32,
    pub mtls: bool,
    pub locality: Locality,
}

/// Where an endpoint, or this proxy, runs (any part may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// As it was written: `region[/zone[/sub-zone]]`.
impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [&self.region, &self.zone, &self.sub_zone];
        let given: Vec<&str> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.as_str())
            .collect();
        f.write_str(&given.join("/"))
    }
}

impl Locality {
    /// `region/zone/sub-zone`, the last two optional; each part letters,
    /// digits, `.`, `_` or `-`.
    pub fn parse(text: &str) -> std::result::Result<Locality, String> {
        let parts = rampart_api::locality::parse(text)?;
        let part = |i: usize| parts.get(i).map_or(String::new(), |p| (*p).to_owned());
        Ok(Locality {
            region: part(0),
            zone: part(1),
            sub_zone: part(2),
        })
    }

    /// How far `other` is from here, in Istio's failover order: 0 the same
    /// sub-zone, 1 the same zone, 2 the same region, 3 elsewhere.
    pub fn distance(&self, other: &Locality) -> u8 {
        if self.region != other.region {
            3
        } else if self.zone != other.zone {
            2
        } else if self.sub_zone != other.sub_zone {
            1
        } else {
            0
        }
    }
}

/// Why an update cannot be carried; names the resource and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {reason}")]
pub struct PlanError {
    pub resource: String,
    pub reason: String,
}

type Result<T> = std::result::Result<T, String>;

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const LOCAL_RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const HTTP_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Where the control plane puts what only Rampart reads.
pub const METADATA_NAMESPACE: &str = "rampart";
const FAULT_FILTER: &str = "envoy.filters.http.fault";

fn decode<M: Message + Default>(any: &Any, expected: &str) -> Result<M> {
    if any.type_url != expected {
        return Err(format!("is a {}, expected {expected}", any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("does not decode: {e}"))
}

fn socket_addr(address: Option<&Address>) -> Result<SocketAddr> {
    let Some(address::Address::SocketAddress(s)) = address.and_then(|a| a.address.as_ref()) else {
        return Err("address: only socket addresses are supported".to_owned());
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = s.port_specifier else {
        return Err("address: needs a port_value".to_owned());
    };
    let ip: std::net::IpAddr = s
        .address
        .parse()
        .map_err(|_| format!("address: {:?} is not an IP address", s.address))?;
    let port = u16::try_from(port).map_err(|_| format!("address: port {port} is out of range"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Compiles what `config` holds; every problem is reported.
pub fn compile(config: &Config, previous: &Plan) -> std::result::Result<Plan, Vec<PlanError>> {
    let mut plan = Plan::default();
    let mut errors = Vec::new();
    let mut record = |resource: &str, reason: String| {
        errors.push(PlanError {
            resource: resource.to_owned(),
            reason,
        })
    };
    let held = |type_url: TypeUrl| {
        config
            .types
            .get(&type_url)
            .into_iter()
            .flat_map(|m| m.iter())
    };
    let assignments: HashMap<&str, &Arc<Any>> = held(TypeUrl::Endpoint)
        .map(|(n, h)| (n.as_str(), &h.resource))
        .collect();
    for (name, h) in held(TypeUrl::Cluster) {
        let assignment = assignments.get(name.as_str()).copied();
        let unchanged = previous
            .compiled
            .clusters
            .get(name)
            .filter(|(c, a)| same(c, &h.resource) && same_or_both_absent(a.as_ref(), assignment))
            .and_then(|_| previous.clusters.get(name));
        let compiled = match unchanged {
            Some(c) => Ok(c.clone()),
            None => decode::<Cluster>(&h.resource, TypeUrl::Cluster.as_str())
                .and_then(|c| cluster_plan(&c, assignment.map(|a| &**a)))
                .map(Arc::new),
        };
        match compiled {
            Ok(c) => {
                plan.clusters.insert(name.clone(), c);
                let sources = (h.resource.clone(), assignment.cloned());
                plan.compiled.clusters.insert(name.clone(), sources);
            }
            Err(e) => record(name, e),
        }
    }
    for (name, h) in held(TypeUrl::Route) {
        let compiled = match previous.compiled.routes.get(name) {
            Some((r, table)) if same(r, &h.resource) => Ok(table.clone()),
            _ => decode::<RouteConfiguration>(&h.resource, TypeUrl::Route.as_str())
                .and_then(|r| route_table(&r))
                .map(Arc::new),
        };
        match compiled {
            Ok(r) => {
                plan.routes.insert(name.clone(), r.clone());
                plan.compiled
                    .routes
                    .insert(name.clone(), (h.resource.clone(), r));
            }
            Err(e) => record(name, e),
        }
    }
    keep_routes_until_clusters_warm(&mut plan, previous);
    let mut bound: HashMap<SocketAddr, &str> = HashMap::new();
    for (name, h) in held(TypeUrl::Listener) {
        match decode::<Listener>(&h.resource, TypeUrl::Listener.as_str())
            .and_then(|l| listener_plan(&l))
        {
            Ok(Some(l)) => {
                if let Some(other) = bound.insert(l.address, name) {
                    record(name, format!("address {} is also {other}'s", l.address));
                    continue;
                }
                plan.listeners.insert(name.clone(), Arc::new(l));
            }
            Ok(None) => {} // an API listener: for gRPC clients, nothing to bind
            Err(e) => record(name, e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    plan.capture = previous.capture;
    if plan.capture {
        capture_listeners(&mut plan);
    }
    Ok(plan)
}

/// Make before break: a route table that sends traffic to a cluster the
/// proxy does not hold yet, or whose endpoints have not arrived (they are
/// asked for only once the cluster has), keeps its previous version until
/// they have, as Envoy warms clusters; a new traffic split then never
/// answers 503 while it settles. A route table that is new has no previous
/// version and is used as it is.
fn keep_routes_until_clusters_warm(plan: &mut Plan, previous: &Plan) {
    let Plan {
        routes,
        clusters,
        held_back,
        ..
    } = plan;
    let ready = |table: &RouteTable| {
        table
            .clusters()
            .all(|c| clusters.get(c).is_some_and(|p| !p.warming))
    };
    let now = Instant::now();
    for (name, table) in routes.iter_mut() {
        if !ready(table)
            && let Some(old) = previous.routes.get(name)
            && ready(old)
        {
            let since = previous.held_back.get(name).copied().unwrap_or(now);
            if now.duration_since(since) < WARMING_TIMEOUT {
                *table = old.clone();
                held_back.insert(name.clone(), since);
            } else {
                tracing::warn!(route = %name, waited_s = WARMING_TIMEOUT.as_secs(), "clusters of a new route table did not warm in time; using it anyway (their requests get 503 until endpoints arrive)");
            }
        }
    }
}

/// The listeners redirected outbound connections take, by destination: an
/// endpoint of a service port goes to that port's routes (HTTP) or cluster
/// (TCP); for an `auto` port, to the routes if the first bytes are HTTP,
/// else to the cluster. Subset clusters (`outbound|PORT|SUBSET|...`) are skipped: the
/// service's own cluster holds every endpoint.
fn capture_listeners(plan: &mut Plan) {
    let mut names: Vec<&String> = plan.clusters.keys().collect();
    names.sort();
    for name in names {
        let Some((host, port)) = service_cluster(name) else {
            continue;
        };
        let route = format!("{host}:{port}");
        let cluster = &plan.clusters[name];
        let chain = |app_protocols: &[&str], app: App| ChainPlan {
            name: "captured".to_owned(),
            transport: Transport::Any,
            application_protocols: app_protocols.iter().map(|p| (*p).to_owned()).collect(),
            terminate_mtls: false,
            network_rbac: Vec::new(),
            app,
        };
        let http = || {
            App::Http(HttpPlan {
                rbac: Vec::new(),
                routes: Routes::Named(route.clone()),
                forward_client_identity: false,
                timeouts: HttpTimeouts::default(),
                access_log: None,
                rate_limit: None,
            })
        };
        let tcp = || App::Tcp {
            cluster: name.clone(),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            access_log: None,
        };
        let chains = match (plan.routes.contains_key(&route), cluster.detect_protocol) {
            (true, true) => vec![chain(&["http/1.1", "h2c"], http()), chain(&[], tcp())],
            (true, false) => vec![chain(&[], http())],
            (false, _) => vec![chain(&[], tcp())],
        };
        // The service's virtual IPs on the service port, then its endpoints.
        let port: Option<u16> = port.parse().ok();
        let virtual_ips = cluster
            .addresses
            .iter()
            .filter_map(|ip| Some(SocketAddr::new(*ip, port?)));
        let destinations: Vec<SocketAddr> = virtual_ips
            .chain(cluster.endpoints.iter().map(|e| e.address))
            .collect();
        let Some(&address) = destinations.first() else {
            continue;
        };
        let listener = Arc::new(ListenerPlan {
            name: format!("capture|{name}"),
            address,
            chains,
            bind: false,
            inbound: false,
        });
        for destination in destinations {
            plan.captured
                .entry(destination)
                .or_insert_with(|| listener.clone());
        }
        plan.listeners.insert(listener.name.clone(), listener);
    }
}

/// The host (`SVC.NS`) and port of a service port's own cluster
/// (`outbound|PORT||SVC.NS`); `None` for subset and inbound clusters.
fn service_cluster(cluster: &str) -> Option<(&str, &str)> {
    let mut parts = cluster.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(port), Some(""), Some(host)) => Some((host, port)),
        _ => None,
    }
}

/// The route configuration (`SVC.NS:PORT`) of a service port's own cluster
/// (`outbound|PORT||SVC.NS`); `None` for subset and inbound clusters.
pub fn service_route(cluster: &str) -> Option<String> {
    let (host, port) = service_cluster(cluster)?;
    Some(format!("{host}:{port}"))
}

impl Plan {
    /// An empty plan for a proxy that takes captured traffic or not.
    pub fn new(capture: bool) -> Plan {
        Plan {
            capture,
            ..Plan::default()
        }
    }

    /// The inbound listener for connections that were going to `port`.
    pub fn inbound_for_port(&self, port: u16) -> Option<String> {
        self.listeners
            .values()
            .find(|l| l.inbound && l.address.port() == port)
            .map(|l| l.name.clone())
    }
}

/// Compiles one listener (`None` for an API listener, which binds nothing).
pub fn listener_plan(listener: &Listener) -> Result<Option<ListenerPlan>> {
    if listener.api_listener.is_some() {
        return Ok(None);
    }
    let address = socket_addr(listener.address.as_ref())?;
    for f in &listener.listener_filters {
        match &f.config_type {
            Some(envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType::TypedConfig(any))
                if any.type_url == TLS_INSPECTOR || any.type_url == HTTP_INSPECTOR => {}
            _ => return Err(format!("listener filter {:?} is not supported (only the TLS and HTTP inspectors)", f.name)),
        }
    }
    let mut chains = Vec::new();
    for (i, chain) in listener.filter_chains.iter().enumerate() {
        let at = |e: String| format!("filter_chains[{i}]: {e}");
        let matching = chain.filter_chain_match.clone().unwrap_or_default();
        let transport = match matching.transport_protocol.as_str() {
            "" => Transport::Any,
            "tls" => Transport::Tls,
            "raw_buffer" => Transport::Plaintext,
            other => {
                return Err(at(format!("transport_protocol {other:?} is not supported")));
            }
        };
        let unsupported = [
            ("destination_port", matching.destination_port.is_some()),
            ("prefix_ranges", !matching.prefix_ranges.is_empty()),
            (
                "direct_source_prefix_ranges",
                !matching.direct_source_prefix_ranges.is_empty(),
            ),
            (
                "source_prefix_ranges",
                !matching.source_prefix_ranges.is_empty(),
            ),
            ("source_ports", !matching.source_ports.is_empty()),
            ("server_names", !matching.server_names.is_empty()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(at(format!("filter_chain_match.{field} is not supported")));
        }
        let terminate_mtls = match &chain.transport_socket {
            None => false,
            Some(socket) => {
                let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
                    return Err(at("transport_socket has no typed_config".to_owned()));
                };
                let tls: DownstreamTlsContext = decode(any, DOWNSTREAM_TLS).map_err(at)?;
                if !tls.require_client_certificate.is_some_and(|b| b.value) {
                    return Err(at("TLS without a required client certificate is not supported (the mesh is mTLS)".to_owned()));
                }
                true
            }
        };
        let mut network_rbac = Vec::new();
        let mut app = None;
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(at(format!("filter {:?} has no typed_config", f.name)));
            };
            if app.is_some() {
                return Err(at(format!(
                    "filter {:?} comes after the terminal filter",
                    f.name
                )));
            }
            match any.type_url.as_str() {
                NETWORK_RBAC => {
                    let r: NetworkRbac = decode(any, NETWORK_RBAC).map_err(at)?;
                    if let Some(rules) = r.rules {
                        super::rbac::validate(&rules).map_err(at)?;
                        network_rbac.push(rules);
                    }
                }
                TCP_PROXY => {
                    let t: TcpProxy = decode(any, TCP_PROXY).map_err(at)?;
                    let idle_timeout = checked_duration(
                        "tcp_proxy.idle_timeout",
                        t.idle_timeout.as_ref(),
                        Some(DEFAULT_IDLE_TIMEOUT),
                    )
                    .map_err(at)?;
                    let access_log =
                        super::access_log::compile(&t.access_log, Of::Tcp).map_err(at)?;
                    match t.cluster_specifier {
                        Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) => {
                            app = Some(App::Tcp {
                                cluster,
                                idle_timeout,
                                access_log,
                            })
                        }
                        _ => return Err(at("tcp_proxy needs a single cluster".to_owned())),
                    }
                }
                HCM => {
                    let m: HttpConnectionManager = decode(any, HCM).map_err(at)?;
                    app = Some(App::Http(http_plan(&m).map_err(at)?));
                }
                other => return Err(at(format!("network filter {other} is not supported"))),
            }
        }
        let Some(app) = app else {
            return Err(at(
                "no terminal filter (http_connection_manager or tcp_proxy)".to_owned(),
            ));
        };
        if !matching.application_protocols.is_empty()
            && transport == Transport::Tls
            && !terminate_mtls
        {
            return Err(at("application_protocols on TLS passed through is not supported (the proxy matches the ALPN it negotiates itself)".to_owned()));
        }
        chains.push(ChainPlan {
            name: chain.name.clone(),
            transport,
            application_protocols: matching.application_protocols,
            terminate_mtls,
            network_rbac,
            app,
        });
    }
    if chains.is_empty() {
        return Err("no filter chains".to_owned());
    }
    // Chains told apart by ALPN are chosen after the handshake, so the
    // handshake must not depend on which one is chosen.
    for tls in [true, false] {
        let on = |c: &&ChainPlan| c.transport.takes(tls);
        let by_protocol = chains
            .iter()
            .filter(on)
            .any(|c| !c.application_protocols.is_empty());
        let mut terminate = chains.iter().filter(on).map(|c| c.terminate_mtls);
        let first = terminate.next();
        if by_protocol && terminate.any(|t| Some(t) != first) {
            return Err("filter chains that differ in application_protocols must all terminate mTLS or none (the chain is chosen by the negotiated ALPN)".to_owned());
        }
    }
    Ok(Some(ListenerPlan {
        name: listener.name.clone(),
        address,
        chains,
        bind: true,
        inbound: listener.name.starts_with("inbound|"),
    }))
}

fn http_plan(manager: &HttpConnectionManager) -> Result<HttpPlan> {
    let mut rbac = Vec::new();
    let mut rate_limit = None;
    for f in &manager.http_filters {
        let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(format!("http filter {:?} has no typed_config", f.name));
        };
        match any.type_url.as_str() {
            HTTP_RBAC => {
                let r: HttpRbac = decode(any, HTTP_RBAC)?;
                if let Some(rules) = r.rules {
                    super::rbac::validate(&rules)?;
                    rbac.push(rules);
                }
            }
            LOCAL_RATE_LIMIT => {
                if rate_limit.is_some() {
                    return Err("only one local_ratelimit filter is supported".to_owned());
                }
                let config: LocalRateLimit = decode(any, LOCAL_RATE_LIMIT)?;
                rate_limit = super::rate_limit::compile(&config)?.map(Arc::new);
            }
            // Faults come per route; the filter itself does nothing.
            FAULT | ROUTER => {}
            other => return Err(format!("http filter {other} is not supported")),
        }
    }
    let routes = match &manager.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            Routes::Named(rds.route_config_name.clone())
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(r)) => {
            Routes::Inline(Arc::new(route_table(r)?))
        }
        _ => return Err("http_connection_manager needs rds or route_config".to_owned()),
    };
    let timeouts = HttpTimeouts {
        idle: checked_duration(
            "common_http_protocol_options.idle_timeout",
            manager
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout.as_ref()),
            Some(DEFAULT_IDLE_TIMEOUT),
        )?,
        request_headers: checked_duration(
            "request_headers_timeout",
            manager.request_headers_timeout.as_ref(),
            None,
        )?,
    };
    Ok(HttpPlan {
        rbac,
        routes,
        forward_client_identity: manager.forward_client_cert_details
            != http_connection_manager::ForwardClientCertDetails::Sanitize as i32,
        timeouts,
        access_log: super::access_log::compile(&manager.access_log, Of::Http)?,
        rate_limit,
    })
}

fn route_table(config: &RouteConfiguration) -> Result<RouteTable> {
    let mut hosts = Vec::new();
    for (h, host) in config.virtual_hosts.iter().enumerate() {
        let mut routes = Vec::new();
        for (r, route) in host.routes.iter().enumerate() {
            let at = |e: String| format!("virtual_hosts[{h}].routes[{r}]: {e}");
            routes.push(route_plan(route).map_err(at)?);
        }
        hosts.push(VirtualHost {
            domains: host
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            routes,
        });
    }
    Ok(RouteTable {
        name: config.name.clone(),
        hosts,
    })
}

fn route_plan(route: &envoy_types::pb::envoy::config::route::v3::Route) -> Result<Route> {
    let m = route.r#match.as_ref().ok_or("no match")?;
    if !m.headers.is_empty() || !m.query_parameters.is_empty() {
        return Err("header and query matches are not supported".to_owned());
    }
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        _ => return Err("only prefix and path matches are supported".to_owned()),
    };
    let Some(route::Action::Route(action)) = &route.action else {
        return Err("only route actions are supported".to_owned());
    };
    let clusters = match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.map_or(0, |w| w.value)))
            .collect(),
        _ => return Err("needs a cluster or weighted clusters".to_owned()),
    };
    if clusters.iter().all(|(_, w)| *w == 0) {
        return Err("weighted clusters all have weight 0".to_owned());
    }
    let retry = action.retry_policy.as_ref().map(|r| {
        let on: Vec<&str> = r.retry_on.split(',').map(str::trim).collect();
        let has = |c: &str| on.contains(&c);
        let grpc = [
            ("cancelled", 1),
            ("deadline-exceeded", 4),
            ("resource-exhausted", 8),
            ("internal", 13),
            ("unavailable", 14),
        ];
        RetryPlan {
            attempts: r.num_retries.map_or(1, |n| n.value),
            on_5xx: has("5xx"),
            on_gateway_error: has("gateway-error"),
            on_connect_failure: has("connect-failure") || has("5xx") || has("gateway-error"),
            on_reset: has("reset") || has("5xx") || has("gateway-error"),
            on_refused_stream: has("refused-stream") || has("5xx"),
            grpc_statuses: grpc
                .iter()
                .filter(|(name, _)| has(name))
                .map(|(_, code)| *code)
                .collect(),
            per_try_timeout: duration(r.per_try_timeout.as_ref()),
            backoff: r
                .retry_back_off
                .as_ref()
                .and_then(|b| duration(b.base_interval.as_ref()))
                .unwrap_or(Duration::from_millis(25)),
        }
    });
    let mirrors = action
        .request_mirror_policies
        .iter()
        .map(|m| {
            (
                m.cluster.clone(),
                percent(
                    m.runtime_fraction
                        .as_ref()
                        .and_then(|f| f.default_value.as_ref()),
                ),
            )
        })
        .collect();
    let fault = match route.typed_per_filter_config.get(FAULT_FILTER) {
        None => None,
        Some(any) => {
            use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
            use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort;
            let f: HttpFault = decode(any, FAULT)?;
            let delay = match f.delay {
                None => None,
                Some(d) => match d.fault_delay_secifier {
                    Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)) => Some((
                        duration(Some(&fixed)).unwrap_or_default(),
                        percent(d.percentage.as_ref()),
                    )),
                    _ => return Err("fault delay: only fixed delays are supported".to_owned()),
                },
            };
            let abort = match f.abort {
                None => None,
                Some(a) => match a.error_type {
                    Some(fault_abort::ErrorType::HttpStatus(code)) => {
                        let code = u16::try_from(code)
                            .ok()
                            .filter(|c| (200..600).contains(c))
                            .ok_or(format!("fault abort: {code} is not an HTTP status"))?;
                        Some((code, percent(a.percentage.as_ref())))
                    }
                    _ => return Err("fault abort: only HTTP statuses are supported".to_owned()),
                },
            };
            Some(FaultPlan { delay, abort })
        }
    };
    Ok(Route {
        path,
        clusters,
        timeout: duration(action.timeout.as_ref()),
        retry,
        mirrors,
        fault,
    })
}

fn cluster_plan(cluster: &Cluster, assignment: Option<&Any>) -> Result<ClusterPlan> {
    use cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    let eds = match cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32 => true,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Static as i32 => false,
        _ => return Err("only STATIC and EDS clusters are supported".to_owned()),
    };
    let balance = match LbPolicy::try_from(cluster.lb_policy) {
        Ok(LbPolicy::LeastRequest) => Balance::LeastRequest,
        Ok(LbPolicy::RoundRobin) => Balance::RoundRobin,
        Ok(LbPolicy::RingHash) => Balance::RingHash,
        Ok(LbPolicy::Random) => Balance::Random,
        _ => return Err(format!("lb_policy {} is not supported", cluster.lb_policy)),
    };
    let http2 = match cluster.typed_extension_protocol_options.get(HTTP_OPTIONS) {
        None => false,
        Some(any) => {
            let o: HttpProtocolOptions = decode(
                any,
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            )?;
            use http_protocol_options::{
                UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
            };
            matches!(
                o.upstream_protocol_options,
                Some(UpstreamProtocolOptions::ExplicitHttpConfig(c))
                    if matches!(c.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_)))
            )
        }
    };
    let CaptureMetadata {
        detect_protocol,
        addresses,
    } = CaptureMetadata::from_cluster(cluster).map_err(|e| e.to_string())?;
    let mut mtls = None;
    for m in &cluster.transport_socket_matches {
        let wants_mtls = m
            .r#match
            .as_ref()
            .and_then(|s| s.fields.get("tls"))
            .is_some_and(|v| {
                matches!(&v.kind, Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) if s == "mtls")
            });
        if !wants_mtls {
            return Err(format!(
                "transport_socket_matches {:?}: only the match tls=mtls is supported",
                m.name
            ));
        }
        let Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) = m
            .transport_socket
            .as_ref()
            .and_then(|s| s.config_type.as_ref())
        else {
            return Err(format!(
                "transport_socket_matches {:?}: no typed_config",
                m.name
            ));
        };
        let tls: UpstreamTlsContext = decode(any, UPSTREAM_TLS)?;
        mtls = Some(expected_sans(&tls)?);
    }
    if cluster.transport_socket.is_some() {
        return Err(
            "a cluster-wide transport_socket is not supported (use transport_socket_matches)"
                .to_owned(),
        );
    }
    let limits = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|c| c.thresholds.first())
        .map(|t| {
            let d = Limits::default();
            Limits {
                max_connections: t.max_connections.map_or(d.max_connections, |v| v.value),
                max_pending: t.max_pending_requests.map_or(d.max_pending, |v| v.value),
                max_requests: t.max_requests.map_or(d.max_requests, |v| v.value),
                max_retries: t.max_retries.map_or(d.max_retries, |v| v.value),
                retry_budget: t.retry_budget.map(|b| RetryBudget {
                    percent: b.budget_percent.map_or(20.0, |p| p.value),
                    min: b.min_retry_concurrency.map_or(3, |v| v.value),
                }),
            }
        })
        .unwrap_or_default();
    let outlier = cluster.outlier_detection.as_ref().map(|o| OutlierPlan {
        consecutive_5xx: o.consecutive_5xx.map_or(5, |v| v.value),
        base_ejection: duration(o.base_ejection_time.as_ref()).unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: o.max_ejection_percent.map_or(10, |v| v.value),
    });
    let endpoints = match (eds, assignment, &cluster.load_assignment) {
        (true, Some(any), _) => {
            let a: ClusterLoadAssignment = decode(any, TypeUrl::Endpoint.as_str())?;
            endpoint_plans(&a).map_err(|e| format!("endpoints: {e}"))?
        }
        (true, None, _) => Vec::new(),
        (false, _, Some(a)) => endpoint_plans(a)?,
        (false, _, None) => return Err("a STATIC cluster needs a load_assignment".to_owned()),
    };
    Ok(ClusterPlan {
        name: cluster.name.clone(),
        balance,
        connect_timeout: duration(cluster.connect_timeout.as_ref())
            .unwrap_or(Duration::from_secs(5)),
        http2,
        mtls,
        limits,
        outlier,
        endpoints,
        eds,
        warming: eds && assignment.is_none(),
        detect_protocol,
        addresses,
    })
}

/// The URI SANs an upstream TLS context requires of the server.
fn expected_sans(tls: &UpstreamTlsContext) -> Result<Vec<String>> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let common = tls
        .common_tls_context
        .as_ref()
        .ok_or("mTLS without a common_tls_context")?;
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) =
        &common.validation_context_type
    else {
        return Err(
            "mTLS needs a combined validation context (ROOTCA plus SAN matchers)".to_owned(),
        );
    };
    let mut out = Vec::new();
    for m in combined
        .default_validation_context
        .iter()
        .flat_map(|v| &v.match_typed_subject_alt_names)
    {
        match m.matcher.as_ref().and_then(|s| s.match_pattern.as_ref()) {
            Some(MatchPattern::Exact(id)) => out.push(id.clone()),
            _ => return Err("SAN matchers must be exact SPIFFE IDs".to_owned()),
        }
    }
    Ok(out)
}

/// The endpoints new requests may go to. Draining ones (EDS health status
/// DRAINING: a terminating pod that still serves) finish what they have and
/// get nothing new, unless every endpoint drains (a rollout of a single
/// replica): then they are all there is, as Envoy's panic mode would do.
fn endpoint_plans(assignment: &ClusterLoadAssignment) -> Result<Vec<EndpointPlan>> {
    let draining = HealthStatus::Draining as i32;
    let mut out = Vec::new();
    let mut drained = Vec::new();
    for locality in &assignment.endpoints {
        for e in &locality.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                return Err("an endpoint without an address".to_owned());
            };
            let mtls = e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"))
                .and_then(|s| s.fields.get("tls"))
                .is_some_and(|v| matches!(&v.kind, Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) if s == "mtls"));
            let at = locality.locality.as_ref();
            let into = if e.health_status == draining {
                &mut drained
            } else {
                &mut out
            };
            into.push(EndpointPlan {
                address: socket_addr(endpoint.address.as_ref())?,
                weight: e.load_balancing_weight.map_or(1, |w| w.value.max(1)),
                mtls,
                locality: Locality {
                    region: at.map_or(String::new(), |l| l.region.clone()),
                    zone: at.map_or(String::new(), |l| l.zone.clone()),
                    sub_zone: at.map_or(String::new(), |l| l.sub_zone.clone()),
                },
            });
        }
    }
    Ok(if out.is_empty() { drained } else { out })
}

impl RouteTable {
    /// Every cluster its routes send requests to.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .iter()
            .flat_map(|h| &h.routes)
            .flat_map(|r| &r.clusters)
            .map(|(c, _)| c.as_str())
    }

    /// The route for `host` (port stripped, lower-case) and `path`:
    /// exact domain, then `*.suffix`/`prefix*` wildcards, then `*`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        };
        let host = host.as_ref();
        let bare = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let matches = |d: &str| {
            d == host
                || d == bare
                || d.strip_prefix('*')
                    .is_some_and(|s| !s.is_empty() && bare.ends_with(s))
                || d.strip_suffix('*')
                    .is_some_and(|p| !p.is_empty() && bare.starts_with(p))
        };
        let vhost = self
            .hosts
            .iter()
            .find(|v| v.domains.iter().any(|d| d != "*" && matches(d)))
            .or_else(|| {
                self.hosts
                    .iter()
                    .find(|v| v.domains.iter().any(|d| d == "*"))
            })?;
        let path_only = path.split(['?', '#']).next().unwrap_or(path);
        vhost.routes.iter().find(|r| match &r.path {
            PathMatch::Prefix(p) => path_only.starts_with(p.as_str()),
            PathMatch::Exact(p) => path_only == p,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
    };
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, RouteMatch, VirtualHost, route, route_action, route_match,
    };
    use envoy_types::util::pack_any;

    use super::*;
    use crate::xds_client::Held;

    fn hold(config: &mut Config, type_url: TypeUrl, name: &str, resource: Any) {
        config.types.entry(type_url).or_default().insert(
            name.to_owned(),
            Held {
                version: "1".to_owned(),
                resource: Arc::new(resource),
            },
        );
    }

    /// EDS clusters `a` and `b` (only `a` has endpoints) and the route
    /// table `r` sending everything to `to`.
    pub(crate) fn config(to: &str) -> Config {
        let mut config = Config::default();
        for name in ["a", "b"] {
            let cluster = Cluster {
                name: name.to_owned(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
                eds_cluster_config: Some(EdsClusterConfig::default()),
                ..Default::default()
            };
            hold(&mut config, TypeUrl::Cluster, name, pack_any(cluster));
        }
        let assignment = ClusterLoadAssignment {
            cluster_name: "a".to_owned(),
            ..Default::default()
        };
        hold(&mut config, TypeUrl::Endpoint, "a", pack_any(assignment));
        let table = RouteConfiguration {
            name: "r".to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: "all".to_owned(),
                domains: vec!["*".to_owned()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            to.to_owned(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        hold(&mut config, TypeUrl::Route, "r", pack_any(table));
        config
    }

    pub(crate) fn target(plan: &Plan) -> Vec<&str> {
        plan.routes["r"].clusters().collect()
    }

    #[test]
    fn an_update_compiles_only_what_it_changed() {
        let first = compile(&config("a"), &Plan::default()).unwrap();
        let mut next = config("a");
        let arrived = ClusterLoadAssignment {
            cluster_name: "b".to_owned(),
            ..Default::default()
        };
        hold(&mut next, TypeUrl::Endpoint, "b", pack_any(arrived.clone()));
        let second = compile(&next, &first).unwrap();
        // `a` and the route table are the very same compiled values...
        assert!(Arc::ptr_eq(&first.clusters["a"], &second.clusters["a"]));
        assert!(Arc::ptr_eq(&first.routes["r"], &second.routes["r"]));
        // ...`b`, whose endpoints arrived, is compiled again and warm now.
        assert!(first.clusters["b"].warming);
        assert!(!second.clusters["b"].warming);
        // A changed route table is compiled again.
        let mut to_b = config("b");
        hold(&mut to_b, TypeUrl::Endpoint, "b", pack_any(arrived));
        let third = compile(&to_b, &second).unwrap();
        assert_eq!(target(&third), ["b"]);
        assert!(Arc::ptr_eq(&second.clusters["b"], &third.clusters["b"]));
    }

    #[test]
    fn a_route_to_a_cold_cluster_waits_for_it_but_not_for_ever() {
        let first = compile(&config("a"), &Plan::default()).unwrap();
        assert_eq!(target(&first), ["a"]);
        assert_eq!(first.warming_deadline(), None);

        // `b` has no endpoints yet: the old table stays, with a deadline.
        let held = compile(&config("b"), &first).unwrap();
        assert_eq!(target(&held), ["a"]);
        let deadline = held.warming_deadline().expect("a deadline");
        assert!(deadline > Instant::now() + WARMING_TIMEOUT - Duration::from_secs(2));
        // Compiled again within the wait (another update came): still held,
        // and the wait is not restarted.
        let again = compile(&config("b"), &held).unwrap();
        assert_eq!(target(&again), ["a"]);
        assert_eq!(again.warming_deadline(), Some(deadline));

        // Once the wait has run out, the new table is used as it is.
        let mut waited = again;
        for since in waited.held_back.values_mut() {
            *since -= WARMING_TIMEOUT;
        }
        let given_up = compile(&config("b"), &waited).unwrap();
        assert_eq!(target(&given_up), ["b"]);
        assert_eq!(given_up.warming_deadline(), None);
    }

    fn with_addresses(name: &str, addresses: &[&str]) -> Config {
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
        let values = addresses
            .iter()
            .map(|a| Value {
                kind: Some(Kind::StringValue((*a).to_owned())),
            })
            .collect();
        let fields = [(
            "addresses".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue { values })),
            },
        )];
        let cluster = Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            metadata: Some(Metadata {
                filter_metadata: [(
                    METADATA_NAMESPACE.to_owned(),
                    Struct {
                        fields: fields.into(),
                    },
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut config = Config::default();
        hold(&mut config, TypeUrl::Cluster, name, pack_any(cluster));
        config
    }

    #[test]
    fn a_service_address_on_the_service_port_is_captured_for_its_cluster() {
        let name = "outbound|8080||web.default";
        let capturing = Plan::new(true);
        let plan = compile(
            &with_addresses(name, &["10.96.0.10", "fd00::10"]),
            &capturing,
        )
        .unwrap();
        for destination in ["10.96.0.10:8080", "[fd00::10]:8080"] {
            let listener = &plan.captured[&destination.parse::<SocketAddr>().unwrap()];
            assert_eq!(listener.name, format!("capture|{name}"), "{destination}");
        }
        // Only on the service port.
        assert_eq!(plan.captured.len(), 2);
        // Kept from plan to plan; without capture nothing is built for it.
        assert!(plan.capture);
        let plain = compile(&with_addresses(name, &["10.96.0.10"]), &Plan::default()).unwrap();
        assert!(plain.captured.is_empty());

        let refused = compile(&with_addresses(name, &["10.96.0.300"]), &capturing);
        let errors = refused.expect_err("a bad address is refused");
        let error = errors.iter().map(ToString::to_string).collect::<String>();
        assert!(
            error.contains("\"10.96.0.300\" is not an IP address"),
            "{error}"
        );
    }
    #[test]
    fn connection_timeouts_read_as_envoy_reads_them() {
        use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as Common;
        use envoy_types::pb::google::protobuf::Duration as Pb;
        let secs = |s: i64| {
            Some(Pb {
                seconds: s,
                nanos: 0,
            })
        };
        let http = |manager: HttpConnectionManager| {
            let manager = HttpConnectionManager {
                route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(
                    Default::default(),
                )),
                ..manager
            };
            http_plan(&manager).map(|p| p.timeouts)
        };
        // Unset: Envoy's defaults (1 h idle, no request headers timeout).
        assert_eq!(
            http(HttpConnectionManager::default()),
            Ok(HttpTimeouts::default())
        );
        let set = http(HttpConnectionManager {
            common_http_protocol_options: Some(Common {
                idle_timeout: secs(0),
                ..Default::default()
            }),
            request_headers_timeout: secs(10),
            ..Default::default()
        });
        // Zero turns a timeout off.
        assert_eq!(
            set,
            Ok(HttpTimeouts {
                idle: None,
                request_headers: Some(Duration::from_secs(10)),
            })
        );
        let negative = http(HttpConnectionManager {
            request_headers_timeout: secs(-1),
            ..Default::default()
        });
        let error = negative.expect_err("a negative timeout is refused");
        assert!(
            error.starts_with("request_headers_timeout: -1s 0ns is not a valid duration"),
            "{error}"
        );
    }

    #[test]
    fn draining_endpoints_get_new_requests_only_when_all_drain() {
        use envoy_types::pb::envoy::config::core::v3::SocketAddress;
        use envoy_types::pb::envoy::config::endpoint::v3::{
            Endpoint, LbEndpoint, LocalityLbEndpoints,
        };
        let endpoint = |port: u32, status: HealthStatus| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            health_status: status as i32,
            ..Default::default()
        };
        let assignment = |endpoints: Vec<LbEndpoint>| ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: endpoints,
                ..Default::default()
            }],
            ..Default::default()
        };
        let ports = |a: &ClusterLoadAssignment| -> Vec<u16> {
            endpoint_plans(a)
                .unwrap()
                .iter()
                .map(|e| e.address.port())
                .collect()
        };
        let mixed = assignment(vec![
            endpoint(1, HealthStatus::Unknown),
            endpoint(2, HealthStatus::Draining),
        ]);
        assert_eq!(ports(&mixed), [1]);
        let all = assignment(vec![
            endpoint(2, HealthStatus::Draining),
            endpoint(3, HealthStatus::Draining),
        ]);
        assert_eq!(ports(&all), [2, 3]);
    }

    #[test]
    fn addresses_are_read_as_envoy_reads_them_and_the_rest_refused() {
        use envoy_types::pb::envoy::config::core::v3::{Pipe, SocketAddress};
        let socket = |ip: &str, port: Option<u32>| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: port.map(socket_address::PortSpecifier::PortValue),
                ..Default::default()
            })),
        };
        assert_eq!(
            socket_addr(Some(&socket("10.0.0.1", Some(8080)))),
            Ok("10.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            socket_addr(Some(&socket("::1", Some(53)))),
            Ok("[::1]:53".parse().unwrap())
        );
        let pipe = Address {
            address: Some(address::Address::Pipe(Pipe {
                path: "/run/x.sock".into(),
                ..Default::default()
            })),
        };
        for (address, why) in [
            (None, "only socket addresses"),
            (Some(pipe), "only socket addresses"),
            (Some(socket("10.0.0.1", None)), "needs a port_value"),
            (Some(socket("web.shop", Some(80))), "is not an IP address"),
            (Some(socket("10.0.0.1", Some(70000))), "out of range"),
        ] {
            let error = socket_addr(address.as_ref()).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn timeouts_unset_zero_and_malformed_read_as_envoy_reads_them() {
        use envoy_types::pb::google::protobuf::Duration as Pb;
        let default = Some(Duration::from_secs(15));
        assert_eq!(checked_duration("t", None, default), Ok(default));
        let zero = Pb {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(checked_duration("t", Some(&zero), default), Ok(None));
        let half = Pb {
            seconds: 0,
            nanos: 500_000_000,
        };
        assert_eq!(
            checked_duration("t", Some(&half), default),
            Ok(Some(Duration::from_millis(500)))
        );
        for bad in [
            Pb {
                seconds: -1,
                nanos: 0,
            },
            Pb {
                seconds: 1,
                nanos: 1_000_000_000,
            },
            Pb {
                seconds: 1,
                nanos: -1,
            },
        ] {
            let error = checked_duration("idle_timeout", Some(&bad), default).unwrap_err();
            assert!(error.starts_with("idle_timeout:"), "{error}");
        }
    }

    #[test]
    fn only_a_service_port_s_own_cluster_names_a_route_table() {
        assert_eq!(
            service_route("outbound|8080||web.shop").as_deref(),
            Some("web.shop:8080")
        );
        for other in [
            "outbound|8080|v1|web.shop",
            "inbound|8080|http|web.shop",
            "outbound|8080",
            "",
        ] {
            assert_eq!(service_route(other), None, "{other}");
        }
    }

    #[test]
    fn a_resource_of_another_type_is_refused_by_name() {
        let any = pack_any(RouteConfiguration::default());
        let error = decode::<Cluster>(&any, "type.googleapis.com/envoy.config.cluster.v3.Cluster")
            .unwrap_err();
        assert!(error.contains("RouteConfiguration"), "{error}");
        assert!(error.contains("expected type.googleapis.com/envoy.config.cluster.v3.Cluster"));
    }
}
