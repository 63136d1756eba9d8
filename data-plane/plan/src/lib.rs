//! rampart-plan: the xDS resources rampart-proxy holds, compiled into the
//! plain structures its traffic path reads, and the RBAC evaluator that
//! judges a caller against them. No I/O: meshctl uses the same code to
//! explain a decision offline.
//!
//! The compiled plan has: listeners (filter chains, RBAC, where to send),
//! route tables, clusters and their endpoints. Compiling is also how the
//! proxy validates an update before ACKing it: anything it would not carry
//! faithfully (an unknown filter, a route match it cannot evaluate) is an
//! error naming the resource and the field, and the update is NACKed.
//! A reference to something not yet received (a route, a cluster) is not an
//! error: the request gets a 503 that says so until it arrives.

pub mod access_log;
pub mod capture;
pub mod cluster;
pub mod connection_manager;
pub mod endpoint;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod listener;
mod proto;
pub mod rate_limit;
pub mod rbac;
pub mod resources;
pub mod route;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use rampart_api::xds::TypeUrl;

use capture::capture_listeners;
use cluster::{ClusterPlan, cluster_plan};
use listener::{ListenerPlan, listener_plan};
use proto::decode;
use resources::Config;
use route::{RouteTable, route_table};

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

    /// When the first held-back route table stops waiting, if any is.
    pub fn warming_deadline(&self) -> Option<Instant> {
        self.held_back
            .values()
            .min()
            .map(|since| *since + WARMING_TIMEOUT)
    }
}

/// Why an update cannot be carried; names the resource and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {reason}")]
pub struct PlanError {
    pub resource: String,
    pub reason: Refusal,
}

/// Why a resource, or a part of one, is refused (NACKed). The text says
/// what and where, for the NACK's `error_detail` and the proxy's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Valid Envoy configuration the proxy does not implement (a filter, a
    /// matcher, a cluster type): refused rather than carried half-way.
    #[error("{0}")]
    Unsupported(String),
    /// Malformed or contradictory configuration: no proxy could carry it.
    #[error("{0}")]
    Invalid(String),
}

impl Refusal {
    pub fn unsupported(what: impl Into<String>) -> Refusal {
        Refusal::Unsupported(what.into())
    }

    pub fn invalid(what: impl Into<String>) -> Refusal {
        Refusal::Invalid(what.into())
    }

    /// The same refusal, said of `field` (`filter_chains[0]`, `endpoints`).
    pub fn at(self, field: impl std::fmt::Display) -> Refusal {
        match self {
            Refusal::Unsupported(what) => Refusal::Unsupported(format!("{field}: {what}")),
            Refusal::Invalid(what) => Refusal::Invalid(format!("{field}: {what}")),
        }
    }
}

/// What compiling one resource gives: the compiled value or why not.
pub(crate) type Result<T> = std::result::Result<T, Refusal>;

/// Compiles what `config` holds; every problem is reported.
pub fn compile(config: &Config, previous: &Plan) -> std::result::Result<Plan, Vec<PlanError>> {
    let mut plan = Plan::default();
    let mut errors = Vec::new();
    let mut record = |resource: &str, reason: Refusal| {
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
                    record(
                        name,
                        Refusal::invalid(format!("address {} is also {other}'s", l.address)),
                    );
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

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::util::pack_any;

    use super::*;
    use crate::fixtures::{config, hold, target};

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

    #[test]
    fn a_resource_of_another_type_is_refused_by_name() {
        let any = pack_any(RouteConfiguration::default());
        let error = decode::<Cluster>(&any, "type.googleapis.com/envoy.config.cluster.v3.Cluster")
            .unwrap_err()
            .to_string();
        assert!(error.contains("RouteConfiguration"), "{error}");
        assert!(error.contains("expected type.googleapis.com/envoy.config.cluster.v3.Cluster"));
    }
}
