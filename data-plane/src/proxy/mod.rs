//! The traffic path of rampart-proxy. Each connection goes through named
//! steps: accept (`listener`) → detect TLS or plaintext on the first bytes
//! → terminate mTLS and learn the caller's SPIFFE ID (`tls`) → policy
//! (`rbac`) → route (`http`) → balance (`upstream`) → connect (`pool`).
//! Inbound and outbound are the same steps driven by different listeners,
//! all of them configured by the control plane over xDS (`plan` compiles
//! what it sends). A configuration change applies to the next connection
//! and the next request; nothing open is dropped.

pub mod access_log;
mod body;
pub mod capture;
mod clock;
pub mod detect;
mod downstream;
pub mod error;
mod grpc_status;
mod h2_upstream;
pub mod http;
pub mod listener;
mod local_reply;
mod outgoing;
pub mod pool;
mod timeouts;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::metrics::ProxyMetrics;
use crate::metrics::traffic::{self, ListenerLabels};
use rampart_plan::Plan;
use rampart_plan::endpoint::Locality;
use rampart_plan::rbac::Decision;
use tls::Tls;
use upstream::Upstreams;

/// What every connection and request shares.
pub struct Proxy {
    plan: RwLock<Arc<Plan>>,
    /// Traffic arrives through the capture ports: inbound listeners are
    /// reached by port through 15006 instead of being bound.
    capture: bool,
    /// Connections open, for draining.
    open: AtomicUsize,
    closed: Notify,
    pub upstreams: Upstreams,
    pub tls: Arc<Tls>,
    metrics: Arc<ProxyMetrics>,
    /// Where access log lines go (stdout, buffered).
    pub access_log: Arc<access_log::Writer>,
}

impl Proxy {
    pub fn new(
        tls: Arc<Tls>,
        metrics: Arc<ProxyMetrics>,
        capture: bool,
        locality: Option<Locality>,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            plan: RwLock::new(Arc::new(Plan::default())),
            capture,
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            upstreams: Upstreams::new(locality),
            tls,
            metrics,
            access_log: Default::default(),
        })
    }

    pub fn plan(&self) -> Arc<Plan> {
        self.plan.read().expect("plan lock").clone()
    }

    pub fn metrics(&self) -> &traffic::TrafficMetrics {
        &self.metrics.traffic
    }

    /// Counts a connection until the guard drops.
    fn opened(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Waits until no connection is open or `deadline` passes; returns how
    /// many are still open.
    pub async fn wait_idle(&self, deadline: std::time::Duration) -> usize {
        let wait = async {
            loop {
                let closed = self.closed.notified();
                if self.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.open.load(Ordering::Acquire)
    }

    /// Counts a request or connection refused by a circuit breaker.
    fn record_overflow(&self, cluster: &str, limit: &'static str) {
        let labels = traffic::OverflowLabels {
            cluster: cluster.to_owned(),
            limit,
        };
        self.metrics().overflows.get_or_create(&labels).inc();
    }

    fn record_authz(&self, protocol: &'static str, decision: Decision, peer: Option<&str>) {
        let labels = traffic::AuthzLabels {
            protocol,
            decision: match decision {
                Decision::Allow => "allow",
                Decision::Deny { .. } => "deny",
            },
            source_identity: peer.unwrap_or_default().to_owned(),
        };
        self.metrics().authz.get_or_create(&labels).inc();
    }
}

/// Resolves once `flag` is true (or its sender is gone).
pub async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|f| *f).await;
}

struct Open(Arc<Proxy>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_waiters();
    }
}

/// A bound listener and how to stop its accept loop.
struct Bound {
    address: SocketAddr,
    stop: watch::Sender<bool>,
}

/// How often a listener whose address was taken is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Applies every plan published on `plans` until `drain` turns true, then
/// stops accepting; open connections finish on their own (HTTP ones are
/// told to close after their current requests). A listener that cannot
/// bind (its address is taken) is counted and tried again every few
/// seconds, not only at the next update.
pub async fn run(
    proxy: Arc<Proxy>,
    mut plans: watch::Receiver<Arc<Plan>>,
    mut drain: watch::Receiver<bool>,
) {
    let mut bound: HashMap<String, Bound> = HashMap::new();
    'plans: loop {
        let plan = plans.borrow_and_update().clone();
        proxy.upstreams.sync(&plan);
        *proxy.plan.write().expect("plan lock") = plan.clone();
        bound.retain(|name, b| {
            let keep = plan.listeners.get(name).is_some_and(|l| l.address == b.address);
            if !keep {
                let _ = b.stop.send(true);
                tracing::info!(listener = %name, address = %b.address, "listener removed; open connections continue");
            }
            keep
        });
        loop {
            let unbound = bind_listeners(&proxy, &plan, &mut bound, &drain).await;
            tokio::select! {
                changed = plans.changed() => match changed {
                    Ok(()) => continue 'plans,
                    Err(_) => break 'plans,
                },
                _ = until_true(&mut drain) => break 'plans,
                _ = tokio::time::sleep(BIND_RETRY), if unbound => {}
            }
        }
    }
    for (_, b) in bound {
        let _ = b.stop.send(true);
    }
}

/// Binds the plan's listeners that are not bound yet; true if any could not be.
async fn bind_listeners(
    proxy: &Arc<Proxy>,
    plan: &Plan,
    bound: &mut HashMap<String, Bound>,
    drain: &watch::Receiver<bool>,
) -> bool {
    let mut unbound = false;
    for (name, l) in &plan.listeners {
        let captured_inbound = proxy.capture && l.inbound;
        if bound.contains_key(name) || !l.bind || captured_inbound {
            continue;
        }
        match tokio::net::TcpListener::bind(l.address).await {
            Ok(socket) => {
                let (stop, stopped) = watch::channel(false);
                tracing::info!(listener = %name, address = %l.address, "listening");
                tokio::spawn(listener::accept(
                    proxy.clone(),
                    name.clone(),
                    socket,
                    stopped,
                    drain.clone(),
                ));
                bound.insert(
                    name.clone(),
                    Bound {
                        address: l.address,
                        stop,
                    },
                );
            }
            Err(e) => {
                unbound = true;
                proxy
                    .metrics()
                    .bind_failures
                    .get_or_create(&ListenerLabels {
                        listener: name.clone(),
                    })
                    .inc();
                tracing::error!(listener = %name, address = %l.address, error = %e, retry_in_s = BIND_RETRY.as_secs(), "cannot bind the listener");
            }
        }
    }
    unbound
}
