//! The incremental (delta) protocol for one ADS stream, as a pure state
//! machine. Per type: the subscription, the version of each resource the
//! client holds, and the responses awaiting an ACK.
//!
//! Rules (xDS protocol, "Incremental xDS"):
//! * each resource has its own version; a response carries only what
//!   changed, and `removed_resources` for what is gone or does not exist;
//! * `initial_resource_versions` on the first request after a reconnect says
//!   what the client already has, so nothing unchanged is re-sent;
//! * subscription changes are honoured even when the nonce is stale, and a
//!   name just subscribed is always answered (with the resource, or as
//!   removed if it does not exist);
//! * a NACKed response leaves the client's versions as they were, and the
//!   rejected versions are not sent again.
//! * make-before-break: updates go out clusters first, then endpoints,
//!   listeners, routes; removals go out after all updates.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::snapshot::{Entry, Snapshot, TypeUrl};
use super::sotw::{Event, Nack, Sent, mix};

/// What one response changed, kept until the client answers it.
#[derive(Debug, Clone)]
struct Pending {
    /// name -> version the client had before (None = did not have it).
    previous: BTreeMap<String, Option<u64>>,
    /// name -> version sent (None = removed).
    sent: BTreeMap<String, Option<u64>>,
}

/// What the client holds: name -> content hash, and the XOR of
/// [`mix`] over those pairs, kept as entries change so the type's version
/// never needs a walk over every name.
#[derive(Debug, Clone, Default)]
struct Held {
    versions: BTreeMap<String, u64>,
    bits: u64,
}

impl Held {
    fn set(&mut self, name: &str, version: Option<u64>) {
        let old = match version {
            Some(v) => self.versions.insert(name.to_owned(), v),
            None => self.versions.remove(name),
        };
        if let Some(o) = old {
            self.bits ^= mix(name, Some(o));
        }
        if let Some(v) = version {
            self.bits ^= mix(name, Some(v));
        }
    }

    fn get(&self, name: &str) -> Option<&u64> {
        self.versions.get(name)
    }

    fn contains_key(&self, name: &str) -> bool {
        self.versions.contains_key(name)
    }

    fn version(&self) -> String {
        format!("{:016x}", self.bits)
    }

    /// The state of a type as last sent (nothing in flight), for proxy-status.
    fn as_sent(&self) -> Sent {
        Sent {
            version: self.version(),
            version_bits: self.bits,
            nonce: String::new(),
            names_hash: 0,
            resources: self.versions.len(),
        }
    }
}

/// Per-type delta state.
#[derive(Debug, Clone, Default)]
pub struct DeltaTypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds (optimistically including unanswered sends),
    /// as content hashes: 8 bytes a version, compared without formatting.
    client: Held,
    /// Names subscribed since the last response: always answered.
    fresh: BTreeSet<String>,
    /// Versions the client rejected, never sent again.
    rejected: BTreeSet<(String, u64)>,
    pending: BTreeMap<String, Pending>,
    /// The last response (for proxy-status).
    pub sent: Option<Sent>,
    pub acked_version: Option<String>,
    pub nack: Option<Nack>,
    started: bool,
    /// The snapshot the last diff of this type was computed against: while
    /// the type's map is still that very map, there is nothing to diff.
    checked_against: Option<std::sync::Arc<Snapshot>>,
}

/// One delta stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    pub node: Option<Node>,
    pub types: BTreeMap<TypeUrl, DeltaTypeState>,
    nonces: u64,
}

/// The wire form of a resource version.
fn wire_version(hash: u64) -> String {
    format!("{hash:016x}")
}

/// A version a client reports (`initial_resource_versions`); anything we did
/// not write never matches, so the resource is sent.
fn parse_version(version: &str) -> Option<u64> {
    (version.len() == 16)
        .then(|| u64::from_str_radix(version, 16).ok())
        .flatten()
}

impl DeltaStream {
    /// Whether `request` is within `limits`: subscriptions add up, so the
    /// ones this type holds already count.
    pub fn check(&self, request: &DeltaDiscoveryRequest) -> Result<(), String> {
        let held = TypeUrl::parse(&request.type_url)
            .and_then(|t| self.types.get(&t))
            .map_or(0, |state| state.names.len());
        super::limits::check_names(
            &request.type_url,
            request
                .resource_names_subscribe
                .iter()
                .chain(request.initial_resource_versions.keys()),
            held,
        )?;
        super::limits::check_names(&request.type_url, &request.resource_names_unsubscribe, 0)
    }

    /// Handles a request; returns what happened and the reply, if any.
    pub fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &std::sync::Arc<Snapshot>,
    ) -> (Option<Event>, Option<DeltaDiscoveryResponse>) {
        if self.node.is_none() {
            self.node = request.node.clone();
        }
        let Some(type_url) = TypeUrl::parse(&request.type_url) else {
            return (Some(Event::UnknownType(request.type_url)), None);
        };
        let state = self.types.entry(type_url).or_default();
        if !state.started {
            state.started = true;
            for (name, version) in &request.initial_resource_versions {
                if let Some(v) = parse_version(version) {
                    state.client.set(name, Some(v));
                }
            }
            if !request.initial_resource_versions.is_empty() {
                // A resumed client holds these already: in sync with them
                // until a response says otherwise (for proxy-status).
                state.sent = Some(state.client.as_sent());
                state.acked_version = state.sent.as_ref().map(|s| s.version.clone());
            }
            // Legacy wildcard: a first request naming nothing means everything.
            if request.resource_names_subscribe.is_empty() && type_url.supports_wildcard() {
                state.wildcard = true;
            }
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
                state.fresh.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.fresh.remove(name);
                if !state.wildcard {
                    state.client.set(name, None);
                }
            }
        }

        let mut event = None;
        if !request.response_nonce.is_empty() {
            match state.pending.remove(&request.response_nonce) {
                None => event = Some(Event::Stale { type_url }),
                Some(pending) => {
                    let version = state
                        .sent
                        .as_ref()
                        .map(|s| s.version.clone())
                        .unwrap_or_default();
                    if let Some(error) = request.error_detail {
                        for (name, previous) in &pending.previous {
                            state.client.set(name, *previous);
                        }
                        for (name, sent) in pending.sent {
                            if let Some(v) = sent {
                                state.rejected.insert((name, v));
                            }
                        }
                        state.nack = Some(Nack {
                            version: version.clone(),
                            message: error.message.clone(),
                        });
                        event = Some(Event::Nack {
                            type_url,
                            version,
                            message: error.message,
                        });
                    } else {
                        // With several responses in flight, the type is only
                        // synced once the last one is ACKed.
                        if state.pending.is_empty() {
                            state.acked_version = Some(version.clone());
                        }
                        state.nack = None;
                        event = Some(Event::Ack { type_url, version });
                    }
                }
            }
        }
        // The common case, a plain ACK while nothing changed: O(1).
        let plain_ack = !request.response_nonce.is_empty()
            && request.resource_names_subscribe.is_empty()
            && request.resource_names_unsubscribe.is_empty();
        if plain_ack && self.unchanged_since_checked(type_url, snapshot) {
            return (event, None);
        }
        let candidates = self.candidates(type_url, snapshot);
        let updates = self.diff(type_url, snapshot, true, candidates);
        (event, updates)
    }

    fn unchanged_since_checked(&self, type_url: TypeUrl, snapshot: &Snapshot) -> bool {
        self.types.get(&type_url).is_some_and(|state| {
            state.fresh.is_empty()
                && state
                    .checked_against
                    .as_ref()
                    .is_some_and(|checked| checked.shares(snapshot, type_url))
        })
    }

    /// The resources of `view` this stream subscribes to, by type then name.
    pub fn served<'a>(&self, view: &'a Snapshot) -> Vec<(TypeUrl, &'a String, &'a Entry)> {
        self.types
            .iter()
            .flat_map(|(t, state)| {
                Self::desired(state, *t, view, None)
                    .into_iter()
                    .map(|(n, e)| (*t, n, e))
            })
            .collect()
    }

    /// Replies made necessary by a new snapshot: updates in
    /// make-before-break order, then removals.
    pub fn on_snapshot(
        &mut self,
        snapshot: &std::sync::Arc<Snapshot>,
    ) -> Vec<DeltaDiscoveryResponse> {
        let started: Vec<(TypeUrl, Option<&[String]>)> = TypeUrl::ORDER
            .into_iter()
            .filter(|t| self.types.contains_key(t) && !self.unchanged_since_checked(*t, snapshot))
            .map(|t| (t, self.candidates(t, snapshot)))
            .collect();
        let mut out: Vec<_> = started
            .iter()
            .filter_map(|(t, candidates)| self.diff(*t, snapshot, false, *candidates))
            .collect();
        out.extend(
            started
                .iter()
                .filter_map(|(t, candidates)| self.removals(*t, snapshot, *candidates)),
        );
        out
    }

    /// The only names of `type_url` that can need a reply: those changed
    /// since the snapshot this type was last diffed against, if that was the
    /// previous one and nothing was subscribed since. None: any name can.
    fn candidates<'a>(&self, type_url: TypeUrl, snapshot: &'a Snapshot) -> Option<&'a [String]> {
        let state = self.types.get(&type_url)?;
        if !state.fresh.is_empty() {
            return None;
        }
        snapshot.changes_since(state.checked_against.as_ref()?, type_url)
    }

    /// What the client should hold, restricted to `candidates` if given.
    fn desired<'a>(
        state: &DeltaTypeState,
        type_url: TypeUrl,
        snapshot: &'a Snapshot,
        candidates: Option<&'a [String]>,
    ) -> BTreeMap<&'a String, &'a Entry> {
        match candidates {
            Some(names) => names
                .iter()
                .filter(|n| state.wildcard || state.names.contains(*n))
                .filter_map(|n| snapshot.get_key_value(type_url, n))
                .collect(),
            None if state.wildcard => snapshot.of(type_url).collect(),
            None => state
                .names
                .iter()
                .filter_map(|n| snapshot.get_key_value(type_url, n))
                .collect(),
        }
    }

    /// Updates (and, when `with_removals`, removals) for one type.
    fn diff(
        &mut self,
        type_url: TypeUrl,
        snapshot: &std::sync::Arc<Snapshot>,
        with_removals: bool,
        candidates: Option<&[String]>,
    ) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(&type_url)?;
        let desired = Self::desired(state, type_url, snapshot, candidates);
        let mut resources = Vec::new();
        let mut sent = BTreeMap::new();
        let mut previous = BTreeMap::new();
        for (name, entry) in &desired {
            let changed = state.client.get(name) != Some(&entry.hash);
            let fresh = state.fresh.contains(*name);
            if fresh || (changed && !state.rejected.contains(&((*name).clone(), entry.hash))) {
                resources.push(Resource {
                    name: (*name).clone(),
                    version: wire_version(entry.hash),
                    resource: Some(entry.any.clone()),
                    ..Default::default()
                });
                previous.insert((*name).clone(), state.client.get(name).copied());
                sent.insert((*name).clone(), Some(entry.hash));
            }
        }
        let mut removed = Vec::new();
        if with_removals {
            removed = Self::removed_names(state, &desired, candidates);
            for name in &removed {
                previous.insert(name.clone(), state.client.get(name).copied());
                sent.insert(name.clone(), None);
            }
        }
        state.fresh.clear();
        // (on_snapshot runs the removals for this same snapshot right after.)
        state.checked_against = Some(snapshot.clone());
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        Some(self.respond(type_url, resources, removed, previous, sent))
    }

    fn removals(
        &mut self,
        type_url: TypeUrl,
        snapshot: &Snapshot,
        candidates: Option<&[String]>,
    ) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(&type_url)?;
        let desired = Self::desired(state, type_url, snapshot, candidates);
        let removed = Self::removed_names(state, &desired, candidates);
        if removed.is_empty() {
            return None;
        }
        let previous = removed
            .iter()
            .map(|n| (n.clone(), state.client.get(n).copied()))
            .collect();
        let sent = removed.iter().map(|n| (n.clone(), None)).collect();
        Some(self.respond(type_url, Vec::new(), removed, previous, sent))
    }

    /// Names the client holds (or explicitly asked for) that are not
    /// desired; only among `candidates` if given.
    fn removed_names(
        state: &DeltaTypeState,
        desired: &BTreeMap<&String, &Entry>,
        candidates: Option<&[String]>,
    ) -> Vec<String> {
        if let Some(names) = candidates {
            return names
                .iter()
                .filter(|n| state.client.contains_key(n) && !desired.contains_key(n))
                .cloned()
                .collect();
        }
        let held = state.client.versions.keys();
        let asked_missing = state
            .names
            .iter()
            .filter(|n| !state.client.contains_key(n) && state.fresh.contains(*n));
        // A subscribed name that never existed is answered once as removed
        // ("does not exist"), while it is fresh; not on every push.
        let removed: BTreeSet<String> = held
            .chain(asked_missing)
            .filter(|n| !desired.contains_key(n))
            .cloned()
            .collect();
        removed.into_iter().collect()
    }

    fn respond(
        &mut self,
        type_url: TypeUrl,
        resources: Vec<Resource>,
        removed: Vec<String>,
        previous: BTreeMap<String, Option<u64>>,
        sent: BTreeMap<String, Option<u64>>,
    ) -> DeltaDiscoveryResponse {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let state = self.types.get_mut(&type_url).expect("type state exists");
        for (name, version) in &sent {
            state.client.set(name, *version);
        }
        let version = state.client.version();
        state.sent = Some(Sent {
            nonce: nonce.clone(),
            ..state.client.as_sent()
        });
        state
            .pending
            .insert(nonce.clone(), Pending { previous, sent });
        DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.as_str().to_owned(),
            nonce,
            removed_resources: removed,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    const MODEL: &str = include_str!("../../../docs/examples/echo.yaml");
    const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

    fn snapshot(yaml: &str) -> std::sync::Arc<Snapshot> {
        std::sync::Arc::new(crate::xds::translate::test_snapshot(yaml))
    }

    fn request(
        type_url: &str,
        subscribe: &[&str],
        unsubscribe: &[&str],
        nonce: &str,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_changes_are_sent_and_removals_follow_updates() {
        let snap = snapshot(MODEL);
        let mut s = DeltaStream::default();
        let (_, first) = s.on_request(request(CDS, &[], &[], ""), &snap);
        let first = first.unwrap();
        assert_eq!(first.resources.len(), 6, "wildcard: every cluster");
        let (event, none) = s.on_request(request(CDS, &[], &[], &first.nonce), &snap);
        assert!(matches!(event, Some(Event::Ack { .. })));
        assert!(none.is_none());

        // One cluster changes: only it is sent.
        let ring = MODEL.replace(
            "timeout: 2s",
            "timeout: 2s\n  ports: [grpc]\n  loadBalancer: RING_HASH",
        );
        let pushed = s.on_snapshot(&snapshot(&ring));
        let names: Vec<_> = pushed
            .iter()
            .flat_map(|r| r.resources.iter().map(|r| r.name.clone()))
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("outbound|50051|")),
            "{names:?}"
        );
        assert_eq!(names.len(), 3);
        // The split now covers only the grpc port: the http subsets go, last.
        let last = pushed.last().unwrap();
        assert!(last.resources.is_empty());
        assert_eq!(
            last.removed_resources,
            vec![
                "outbound|8080|version=v1|echo.default",
                "outbound|8080|version=v2|echo.default"
            ]
        );

        // The http port disappears: its cluster is removed, after the updates.
        let fewer = MODEL.replace(", {name: http, port: 8080, protocol: http}", "");
        let pushed = s.on_snapshot(&snapshot(&fewer));
        assert_eq!(pushed.len(), 2, "updates, then removals");
        assert_eq!(pushed[0].resources.len(), 3);
        assert_eq!(
            pushed[1].removed_resources,
            vec!["outbound|8080||echo.default"]
        );
    }

    /// The fast path (only names changed since the previous snapshot) must
    /// answer exactly what a full diff answers.
    #[test]
    fn diffing_only_changed_names_answers_what_a_full_diff_does() {
        let models = [
            MODEL.to_owned(),
            MODEL.replace("50062", "50063"),
            MODEL.replace(", {name: http, port: 8080, protocol: http}", ""),
            MODEL.to_owned(),
        ];
        let summary =
            |responses: Vec<DeltaDiscoveryResponse>| -> Vec<(String, Vec<String>, Vec<String>)> {
                responses
                    .into_iter()
                    .map(|r| {
                        let names = r.resources.iter().map(|x| x.name.clone()).collect();
                        (r.type_url, names, r.removed_resources)
                    })
                    .collect()
            };
        let sequence = crate::xds::translate::test_sequence(&models);
        let (mut fast, mut full) = (DeltaStream::default(), DeltaStream::default());
        for stream in [&mut fast, &mut full] {
            let snap = &sequence[0].0;
            let (_, cds) = stream.on_request(request(CDS, &[], &[], ""), snap);
            stream.on_request(request(CDS, &[], &[], &cds.unwrap().nonce), snap);
            let names = [
                "outbound|50051||echo.default",
                "outbound|8080||echo.default",
                "outbound|50051|version=v2|echo.default",
            ];
            let (_, eds) = stream.on_request(request(EDS, &names, &[], ""), snap);
            stream.on_request(request(EDS, &[], &[], &eds.unwrap().nonce), snap);
        }
        for (i, pair) in sequence.windows(2).enumerate() {
            let ((previous, _), (with_changes, plain)) = (&pair[0], &pair[1]);
            for t in [TypeUrl::Cluster, TypeUrl::Endpoint] {
                if !with_changes.shares(previous, t) {
                    assert!(with_changes.changes_since(previous, t).is_some(), "{t:?}");
                }
            }
            let fast_out = summary(fast.on_snapshot(with_changes));
            let full_out = summary(full.on_snapshot(plain));
            assert_eq!(fast_out, full_out, "after model {}", i + 1);
        }
    }

    #[test]
    fn reconnect_with_initial_versions_sends_nothing_unchanged() {
        let snap = snapshot(MODEL);
        let mut s = DeltaStream::default();
        let (_, first) = s.on_request(request(CDS, &[], &[], ""), &snap);
        let held: std::collections::HashMap<String, String> = first
            .unwrap()
            .resources
            .into_iter()
            .map(|r| (r.name, r.version))
            .collect();
        let mut again = DeltaStream::default();
        let mut req = request(CDS, &[], &[], "");
        req.initial_resource_versions = held;
        let (_, reply) = again.on_request(req, &snap);
        assert!(reply.is_none(), "nothing changed while disconnected");
        let state = &again.types[&TypeUrl::Cluster];
        assert_eq!(
            state.acked_version,
            state.sent.as_ref().map(|s| s.version.clone()),
            "and the type counts as in sync"
        );
    }

    #[test]
    fn subscribing_a_missing_resource_answers_does_not_exist_once() {
        let snap = snapshot(MODEL);
        let mut s = DeltaStream::default();
        let (_, reply) = s.on_request(request(EDS, &["outbound|1|x|nope.default"], &[], ""), &snap);
        let reply = reply.unwrap();
        assert_eq!(
            reply.removed_resources,
            vec!["outbound|1|x|nope.default".to_string()]
        );
        let (_, again) = s.on_request(request(EDS, &[], &[], &reply.nonce), &snap);
        assert!(again.is_none());
        assert!(
            s.on_snapshot(&snapshot(&MODEL.replace("50062", "50063")))
                .is_empty(),
            "still nothing to say about it"
        );
    }

    #[test]
    fn a_nack_keeps_the_old_versions_and_the_rejected_one_is_not_resent() {
        let snap = snapshot(MODEL);
        let mut s = DeltaStream::default();
        let name = "outbound|50051|version=v2|echo.default";
        let (_, first) = s.on_request(request(EDS, &[name], &[], ""), &snap);
        s.on_request(request(EDS, &[], &[], &first.unwrap().nonce), &snap);
        let moved = snapshot(&MODEL.replace("50062", "50063"));
        let pushed = s.on_snapshot(&moved);
        assert_eq!(pushed.len(), 1);
        let mut nack = request(EDS, &[], &[], &pushed[0].nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "no".into(),
            details: vec![],
        });
        let (event, reply) = s.on_request(nack, &moved);
        assert!(matches!(event, Some(Event::Nack { .. })));
        assert!(reply.is_none(), "the rejected version is not sent again");
        assert!(s.on_snapshot(&moved).is_empty());
        let fixed = s.on_snapshot(&snapshot(&MODEL.replace("50062", "50064")));
        assert_eq!(fixed.len(), 1, "a new version goes out");
    }
}
