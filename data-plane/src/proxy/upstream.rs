//! Upstream clusters as the traffic path sees them: endpoints with their
//! live state (requests in flight, consecutive failures, ejection), load
//! balancing, circuit-breaker counters and connection pools. The state
//! outlives configuration updates: an endpoint that stays in its cluster
//! keeps its pool and counters, so an xDS push drops nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rampart_plan::Plan;
use rampart_plan::cluster::{Balance, ClusterPlan};
use rampart_plan::endpoint::{EndpointPlan, Locality};
use rand::Rng;

use super::clock::ticks;
use super::pool::{Pool, Target};

/// Every cluster's live state, by name.
pub struct Upstreams {
    clusters: RwLock<HashMap<String, Arc<ClusterState>>>,
    /// Where this proxy runs: endpoints nearest to it are preferred.
    locality: Option<Locality>,
}

impl Upstreams {
    pub fn new(locality: Option<Locality>) -> Upstreams {
        Upstreams {
            clusters: RwLock::default(),
            locality,
        }
    }

    /// Brings the live state in line with `plan`, keeping what is unchanged.
    pub fn sync(&self, plan: &Plan) {
        let mut clusters = self.clusters.write().expect("upstreams lock");
        clusters.retain(|name, _| plan.clusters.contains_key(name));
        let here = self.locality.as_ref();
        for (name, cluster) in &plan.clusters {
            match clusters.get(name) {
                Some(state) => state.update(cluster.clone(), here),
                None => {
                    let state = ClusterState::new(cluster.clone(), here);
                    clusters.insert(name.clone(), Arc::new(state));
                }
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<ClusterState>> {
        self.clusters
            .read()
            .expect("upstreams lock")
            .get(name)
            .cloned()
    }
}

pub struct ClusterState {
    /// The cluster's name (shared by the metrics of every request).
    pub name: Arc<str>,
    plan: RwLock<Arc<ClusterPlan>>,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    /// Some endpoints are nearer this proxy than others ([`Endpoint::rank`]).
    ranked: AtomicBool,
    next: AtomicUsize,
    /// Requests in flight (for `max_requests`).
    pub requests: AtomicU32,
    /// Retries in flight (for `max_retries`).
    pub retries: AtomicU32,
    /// Requests waiting for a connection (for `max_pending_requests`).
    pub pending: AtomicU32,
    /// Open connections, all endpoints (for `max_connections`).
    pub connections: Arc<AtomicU32>,
}

pub struct Endpoint {
    pub address: SocketAddr,
    pub mtls: bool,
    weight: AtomicU32,
    /// Requests in flight, for least-request balancing.
    pub active: AtomicU32,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Ejected until this time ([`clock::ticks`]; 0: never ejected). An atomic:
    /// every pick reads it for every endpoint.
    ejected_until: AtomicU64,
    /// Its distance from this proxy ([`Locality::distance`]; 0 if the proxy
    /// has no locality): only the nearest usable endpoints are picked.
    rank: AtomicU8,
    pub pool: Pool,
}

impl Endpoint {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > ticks(now)
    }

    /// How to reach this endpoint of `cluster` (whose plan is `plan`).
    pub fn target<'a>(&self, plan: &'a ClusterPlan, cluster: &'a ClusterState) -> Target<'a> {
        Target {
            address: self.address,
            mtls: if self.mtls {
                plan.mtls.as_deref()
            } else {
                None
            },
            connect_timeout: plan.connect_timeout,
            http2: plan.http2,
            max_connections: plan.limits.max_connections,
            connections: &cluster.connections,
        }
    }
}

/// What a finished attempt tells outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx, a reset or a failed connection.
    Failure,
}

impl ClusterState {
    fn new(plan: Arc<ClusterPlan>, here: Option<&Locality>) -> ClusterState {
        let state = ClusterState {
            name: plan.name.as_str().into(),
            plan: RwLock::new(plan.clone()),
            endpoints: RwLock::new(Arc::new(Vec::new())),
            ranked: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            connections: Arc::new(AtomicU32::new(0)),
        };
        state.update(plan, here);
        state
    }

    fn update(&self, plan: Arc<ClusterPlan>, here: Option<&Locality>) {
        let rank = |e: &EndpointPlan| here.map_or(0, |h| h.distance(&e.locality));
        let old = self.endpoints.read().expect("endpoints lock").clone();
        let by_address: HashMap<(SocketAddr, bool), &Arc<Endpoint>> =
            old.iter().map(|e| ((e.address, e.mtls), e)).collect();
        let endpoints = plan
            .endpoints
            .iter()
            .map(|e| match by_address.get(&(e.address, e.mtls)) {
                Some(kept) => {
                    kept.weight.store(e.weight, Ordering::Relaxed);
                    kept.rank.store(rank(e), Ordering::Relaxed);
                    Arc::clone(kept)
                }
                None => Arc::new(Endpoint {
                    address: e.address,
                    mtls: e.mtls,
                    weight: AtomicU32::new(e.weight),
                    active: AtomicU32::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejections: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    rank: AtomicU8::new(rank(e)),
                    pool: Pool::default(),
                }),
            })
            .collect();
        let ranks = plan.endpoints.iter().map(rank);
        let ranked = ranks.clone().min() != ranks.max();
        self.ranked.store(ranked, Ordering::Relaxed);
        *self.endpoints.write().expect("endpoints lock") = Arc::new(endpoints);
        *self.plan.write().expect("cluster plan lock") = plan;
    }

    pub fn plan(&self) -> Arc<ClusterPlan> {
        self.plan.read().expect("cluster plan lock").clone()
    }

    /// Picks an endpoint, avoiding ejected ones and those in `avoid` (the
    /// ones a retry already tried, as Istio's `previous_hosts` retry
    /// predicate does) while others remain. `hash` keys RING_HASH.
    pub fn pick(&self, hash: Option<u64>, avoid: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let all = self.endpoints.read().expect("endpoints lock").clone();
        let now = Instant::now();
        // The candidates are counted and indexed in place: no list is
        // built on the request path. Every endpoint ejected: Envoy's
        // "panic mode", use them all.
        let panic = all.iter().all(|e| e.ejected(now));
        let healthy = |e: &Arc<Endpoint>| panic || !e.ejected(now);
        let untried = |e: &Arc<Endpoint>| healthy(e) && !avoid.contains(&e.address);
        let some_untried = !avoid.is_empty() && all.iter().any(untried);
        let open = move |e: &&Arc<Endpoint>| {
            if some_untried { untried(e) } else { healthy(e) }
        };
        // Locality: the nearest tier that has an open endpoint takes it
        // all; the next one only once none is left (ejected or tried).
        let rank = |e: &Arc<Endpoint>| e.rank.load(Ordering::Relaxed);
        let nearest = match self.ranked.load(Ordering::Relaxed) {
            true => all.iter().filter(open).map(rank).min().unwrap_or(0),
            false => 0,
        };
        let usable = move |e: &&Arc<Endpoint>| open(e) && rank(e) == nearest;
        let candidates = || all.iter().filter(usable);
        let n = candidates().count();
        if n == 0 {
            return None;
        }
        let nth = |i: usize| candidates().nth(i).expect("i < n");
        let chosen = match self.plan().balance {
            _ if n == 1 => nth(0),
            Balance::RoundRobin => nth(self.next.fetch_add(1, Ordering::Relaxed) % n),
            Balance::Random => nth(rand::rng().random_range(0..n)),
            Balance::LeastRequest => {
                // Power of two choices, weighted by endpoint weight.
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let load = |e: &Endpoint| {
                    f64::from(e.active.load(Ordering::Relaxed) + 1)
                        / f64::from(e.weight.load(Ordering::Relaxed).max(1))
                };
                let (a, b) = (nth(a), nth(b));
                if load(b) < load(a) { b } else { a }
            }
            Balance::RingHash => {
                // Rendezvous hashing: the same key keeps its endpoint, and
                // losing one endpoint moves only that endpoint's keys.
                let key = hash.unwrap_or_else(|| rand::rng().random());
                candidates()
                    .max_by_key(|e| mix(key, &e.address))
                    .expect("n > 0")
            }
        };
        Some(chosen.clone())
    }

    /// Records an attempt's outcome; returns true if it ejected the endpoint.
    pub fn record(&self, endpoint: &Endpoint, outcome: Outcome) -> bool {
        let Some(outlier) = self.plan().outlier else {
            return false;
        };
        if outcome == Outcome::Success {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            return false;
        }
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < outlier.consecutive_5xx {
            return false;
        }
        let now = Instant::now();
        let all = self.endpoints.read().expect("endpoints lock").clone();
        let ejected = all.iter().filter(|e| e.ejected(now)).count();
        // Envoy ejects at least one endpoint whatever the percentage.
        let allowed = ((all.len() as u64 * u64::from(outlier.max_ejection_percent)) / 100).max(1);
        if ejected as u64 >= allowed || endpoint.ejected(now) {
            return false;
        }
        let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = outlier.base_ejection.saturating_mul(times.min(10));
        endpoint
            .ejected_until
            .store(ticks(now + time), Ordering::Relaxed);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(cluster = %self.plan().name, endpoint = %endpoint.address, ejected_for_ms = time.as_millis() as u64, "outlier detection ejected an endpoint");
        true
    }
}

fn mix(key: u64, address: &SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    address.hash(&mut h);
    h.finish()
}

/// Held while a request is in flight against a cluster and an endpoint.
pub struct InFlight {
    counter: Arc<ClusterState>,
    endpoint: Option<Arc<Endpoint>>,
}

impl InFlight {
    /// Counts a request against `max_requests`; `None` if the breaker is open.
    pub fn request(cluster: &Arc<ClusterState>) -> Option<InFlight> {
        let max = cluster.plan().limits.max_requests;
        if cluster.requests.fetch_add(1, Ordering::AcqRel) >= max {
            cluster.requests.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight {
            counter: cluster.clone(),
            endpoint: None,
        })
    }

    pub fn on(&mut self, endpoint: Arc<Endpoint>) {
        if let Some(old) = self.endpoint.take() {
            old.active.fetch_sub(1, Ordering::AcqRel);
        }
        endpoint.active.fetch_add(1, Ordering::AcqRel);
        self.endpoint = Some(endpoint);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.requests.fetch_sub(1, Ordering::AcqRel);
        if let Some(e) = &self.endpoint {
            e.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Which of a cluster's limits a [`Slot`] counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Retries in flight: `max_retries`, or the retry budget when set.
    Retry,
    /// Requests waiting for a connection: `max_pending_requests`.
    Pending,
}

/// A place under one of a cluster's limits, given back on drop.
pub struct Slot {
    cluster: Arc<ClusterState>,
    limit: Limit,
}

impl ClusterState {
    fn counter(&self, limit: Limit) -> &AtomicU32 {
        match limit {
            Limit::Retry => &self.retries,
            Limit::Pending => &self.pending,
        }
    }
}

impl Slot {
    /// A place under `limit`, or `None` if the cluster is at it.
    pub fn take(cluster: &Arc<ClusterState>, limit: Limit) -> Option<Slot> {
        let limits = cluster.plan().limits;
        let max = match (limit, limits.retry_budget) {
            (Limit::Pending, _) => limits.max_pending,
            (Limit::Retry, None) => limits.max_retries,
            (Limit::Retry, Some(b)) => {
                let active = f64::from(cluster.requests.load(Ordering::Acquire));
                ((active * b.percent / 100.0) as u32).max(b.min)
            }
        };
        let counter = cluster.counter(limit);
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot {
            cluster: cluster.clone(),
            limit,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.cluster
            .counter(self.limit)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// Backoff before retry `n` (1-based): exponential with full jitter, capped
/// at ten times the base, as Envoy does.
pub fn backoff(base: Duration, n: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << n.min(10)).min(base * 10);
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_plan::cluster::{Limits, RetryBudget};

    fn cluster(limits: Limits) -> Arc<ClusterState> {
        with_endpoints(limits, &[])
    }

    fn with_endpoints(limits: Limits, addresses: &[SocketAddr]) -> Arc<ClusterState> {
        let endpoints = addresses
            .iter()
            .map(|&address| EndpointPlan {
                address,
                weight: 1,
                mtls: false,
                locality: Locality::default(),
            })
            .collect();
        Arc::new(ClusterState::new(
            Arc::new(ClusterPlan {
                name: "c".to_owned(),
                balance: Balance::RoundRobin,
                connect_timeout: Duration::from_secs(1),
                http2: false,
                mtls: None,
                limits,
                outlier: None,
                endpoints,
                eds: true,
                warming: false,
                detect_protocol: false,
                addresses: Vec::new(),
            }),
            None,
        ))
    }

    #[test]
    fn the_retry_budget_scales_with_requests_in_flight() {
        let limits = Limits {
            retry_budget: Some(RetryBudget {
                percent: 20.0,
                min: 2,
            }),
            ..Limits::default()
        };
        let c = cluster(limits);
        // Few requests: the minimum applies.
        let slots: Vec<_> = std::iter::from_fn(|| Slot::take(&c, Limit::Retry))
            .take(10)
            .collect();
        assert_eq!(slots.len(), 2);
        drop(slots);
        // 50 in flight: 20 % of them.
        let in_flight: Vec<_> = (0..50).map(|_| InFlight::request(&c).unwrap()).collect();
        let slots: Vec<_> = std::iter::from_fn(|| Slot::take(&c, Limit::Retry))
            .take(100)
            .collect();
        assert_eq!(slots.len(), 10);
        drop(in_flight);
    }

    #[test]
    fn max_requests_opens_the_breaker() {
        let c = cluster(Limits {
            max_requests: 2,
            ..Limits::default()
        });
        let a = InFlight::request(&c).unwrap();
        let _b = InFlight::request(&c).unwrap();
        assert!(InFlight::request(&c).is_none());
        drop(a);
        assert!(InFlight::request(&c).is_some());
    }

    #[test]
    fn a_retry_avoids_every_endpoint_tried_while_others_remain() {
        let [a, b, c]: [SocketAddr; 3] =
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].map(|s| s.parse().unwrap());
        let state = with_endpoints(Limits::default(), &[a, b, c]);
        // Whatever the round-robin position, the one left untried is picked.
        for _ in 0..6 {
            assert_eq!(state.pick(None, &[a, b]).unwrap().address, c);
            assert_eq!(state.pick(None, &[c, a]).unwrap().address, b);
        }
        // All tried: any of them rather than none.
        assert!(state.pick(None, &[a, b, c]).is_some());
    }

    #[test]
    fn the_nearest_tier_with_an_endpoint_up_takes_the_traffic() {
        let here = Locality::parse("r1/z1").unwrap();
        let at = |address: &str, locality: &str| EndpointPlan {
            address: address.parse().unwrap(),
            weight: 1,
            mtls: false,
            locality: Locality::parse(locality).unwrap(),
        };
        let (near, zone, far) = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80");
        let plan = ClusterPlan {
            name: "c".to_owned(),
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            http2: false,
            mtls: None,
            limits: Limits::default(),
            outlier: None,
            endpoints: vec![at(far, "r2/z1"), at(zone, "r1/z2"), at(near, "r1/z1")],
            eds: true,
            warming: false,
            detect_protocol: false,
            addresses: Vec::new(),
        };
        let state = ClusterState::new(Arc::new(plan), Some(&here));
        let picked = |avoid: &[SocketAddr]| state.pick(None, avoid).unwrap().address.to_string();
        for _ in 0..5 {
            assert_eq!(picked(&[]), near);
        }
        // The near one tried (or ejected): the same region next, then anywhere.
        assert_eq!(picked(&[near.parse().unwrap()]), zone);
        assert_eq!(picked(&[near.parse().unwrap(), zone.parse().unwrap()]), far);
        // A proxy with no locality spreads over all of them.
        let anywhere = ClusterState::new(state.plan(), None);
        let seen: std::collections::HashSet<String> = (0..6)
            .map(|_| anywhere.pick(None, &[]).unwrap().address.to_string())
            .collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn localities_parse_and_measure_distance() {
        let here = Locality::parse("us-east1/b").unwrap();
        assert_eq!(here.to_string(), "us-east1/b");
        assert_eq!(here.distance(&Locality::parse("us-east1/b").unwrap()), 0);
        assert_eq!(
            here.distance(&Locality::parse("us-east1/b/rack9").unwrap()),
            1
        );
        assert_eq!(here.distance(&Locality::parse("us-east1/c").unwrap()), 2);
        assert_eq!(here.distance(&Locality::parse("eu-west1/b").unwrap()), 3);
        assert_eq!(here.distance(&Locality::default()), 3);
        for bad in ["", "a//b", "a/b/c/d", "a b"] {
            let e = Locality::parse(bad).unwrap_err();
            assert!(e.contains("is not a locality"), "{e}");
        }
    }
}
