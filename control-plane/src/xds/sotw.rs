//! The state-of-the-world protocol for one ADS stream, as a pure state
//! machine: requests and snapshots in, responses out. Per type: what the
//! client subscribed to, what was last sent (version, nonce, names), what it
//! ACKed and what it NACKed.
//!
//! Rules (xDS protocol, "ACK/NACK and resource type instance version"):
//! * a request whose nonce is not the latest sent is stale: its
//!   subscription is recorded (envoy#10363) but it gets no reply;
//! * `error_detail` makes a request a NACK of the version last sent; that
//!   version is not sent again, the client keeps its last good config;
//! * the first request of a type on a stream always gets a reply;
//! * otherwise a reply goes out only when its content (version) or the set
//!   of names changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::snapshot::{Entry, Snapshot, TypeUrl};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    Wildcard,
    /// Shared by every stream that names the same set (see [`shared`]).
    Names(Arc<BTreeSet<String>>),
}

/// One copy of each distinct subscription set, for every stream naming it:
/// proxies of a mesh mostly subscribe to the same names, and a set of a
/// thousand names is most of a SotW stream's own memory.
fn shared(names: BTreeSet<String>, bits: u64) -> Arc<BTreeSet<String>> {
    type Sets = HashMap<(u64, usize), Weak<BTreeSet<String>>>;
    static SETS: OnceLock<Mutex<Sets>> = OnceLock::new();
    let mut sets = SETS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (bits, names.len());
    if let Some(existing) = sets.get(&key).and_then(Weak::upgrade)
        && *existing == names
    {
        return existing;
    }
    if sets.len() >= 1024 {
        sets.retain(|_, set| set.strong_count() > 0);
    }
    let set = Arc::new(names);
    sets.insert(key, Arc::downgrade(&set));
    set
}

/// The last response of a type.
#[derive(Debug, Clone)]
pub struct Sent {
    pub version: String,
    /// `version` as a number: the XOR of [`mix`] over the (name, content)
    /// pairs sent, so a push can update it from the changed names alone.
    pub version_bits: u64,
    pub nonce: String,
    /// XOR of [`mix`] over the names the response answered (only compared,
    /// so a set of thousands of names is not kept per stream and type).
    pub names_hash: u64,
    /// How many resources the client holds after this response.
    pub resources: usize,
}

/// A stable 64-bit hash of a name and, for versions, its content hash.
/// Combined by XOR, which is order-independent and can be updated by
/// XOR-ing out the old pair and in the new one. (Names in a set are unique,
/// so nothing cancels out.)
pub fn mix(name: &str, content: Option<u64>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    name.hash(&mut hasher);
    content.hash(&mut hasher);
    hasher.finish()
}

/// XOR of [`mix`] over names.
pub fn hash_names<'a>(names: impl IntoIterator<Item = &'a String>) -> u64 {
    names.into_iter().fold(0, |acc, n| acc ^ mix(n, None))
}

/// A rejected version and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: String,
    pub message: String,
}

/// Per type: last sent, last ACKed version, last NACK.
pub type TypeSummary<'a> = (
    TypeUrl,
    Option<&'a Sent>,
    Option<&'a String>,
    Option<&'a Nack>,
);

/// Per-type protocol state.
#[derive(Debug, Clone)]
pub struct TypeState {
    subscription: Subscription,
    ever_named: bool,
    /// Names subscribed since the last response (always included).
    added: BTreeSet<String>,
    /// The snapshot the last response was computed from: EDS and RDS
    /// responses then carry only what changed since (the protocol allows
    /// any subset for them), instead of every subscribed resource.
    sent_from: Option<std::sync::Arc<Snapshot>>,
    /// [`hash_names`] of a named subscription: a request naming the same
    /// set is recognised without building it.
    subscription_bits: u64,
    /// The subscription changed since the last response.
    subscription_changed: bool,
    pub sent: Option<Sent>,
    pub acked_version: Option<String>,
    pub nack: Option<Nack>,
}

/// What the stream learned from a request, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ack {
        type_url: TypeUrl,
        version: String,
    },
    Nack {
        type_url: TypeUrl,
        version: String,
        message: String,
    },
    Stale {
        type_url: TypeUrl,
    },
    UnknownType(String),
}

/// One stream's state.
#[derive(Debug, Default)]
pub struct SotwStream {
    pub node: Option<Node>,
    pub types: BTreeMap<TypeUrl, TypeState>,
    nonces: u64,
}

impl SotwStream {
    /// Whether `request` is within `limits` (a SotW request names its
    /// whole subscription, so nothing accumulates).
    pub fn check(&self, request: &DiscoveryRequest) -> Result<(), String> {
        super::limits::check_names(&request.type_url, &request.resource_names, 0)
    }

    /// Handles a request; returns what happened and the reply, if any.
    pub fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &std::sync::Arc<Snapshot>,
    ) -> (Option<Event>, Option<DiscoveryResponse>) {
        if self.node.is_none() {
            self.node = request.node.clone();
        }
        let Some(type_url) = TypeUrl::parse(&request.type_url) else {
            return (Some(Event::UnknownType(request.type_url)), None);
        };
        let state = self.types.entry(type_url).or_insert_with(|| TypeState {
            subscription: Subscription::Wildcard,
            ever_named: false,
            added: BTreeSet::new(),
            sent_from: None,
            subscription_bits: 0,
            subscription_changed: false,
            sent: None,
            acked_version: None,
            nack: None,
        });
        // Legacy wildcard rule: an empty list is "everything" until the client
        // names something; "*" is always everything.
        let requested = &request.resource_names;
        let wildcard = requested.iter().any(|n| n == "*")
            || (requested.is_empty() && !state.ever_named && type_url.supports_wildcard());
        let bits = hash_names(requested);
        // Most requests are ACKs naming the same set again: recognise it by
        // its hash and size instead of building a set of every name.
        let same_subscription = match &state.subscription {
            Subscription::Wildcard => wildcard,
            Subscription::Names(old) => {
                !wildcard && bits == state.subscription_bits && old.len() == requested.len()
            }
        };
        if !same_subscription {
            let subscription = if wildcard {
                Subscription::Wildcard
            } else {
                state.ever_named = true;
                let names: BTreeSet<String> = requested.iter().cloned().collect();
                // (Recomputed: a request may repeat a name, the set does not.)
                state.subscription_bits = hash_names(&names);
                Subscription::Names(shared(names, state.subscription_bits))
            };
            if let (Subscription::Names(old), Subscription::Names(new)) =
                (&state.subscription, &subscription)
            {
                state.added.extend(new.difference(old).cloned());
            } else {
                state.sent_from = None; // a different kind of subscription: send it all
            }
            state.subscription = subscription;
            state.subscription_changed = true;
        }

        let first = request.response_nonce.is_empty();
        let sent = state.sent.as_ref();
        if !first && sent.is_none_or(|s| s.nonce != request.response_nonce) {
            return (Some(Event::Stale { type_url }), None);
        }
        let event = match (first, sent, request.error_detail) {
            (true, _, _) | (_, None, _) => None,
            (false, Some(sent), Some(error)) => {
                let nack = Nack {
                    version: sent.version.clone(),
                    message: error.message,
                };
                state.nack = Some(nack.clone());
                Some(Event::Nack {
                    type_url,
                    version: nack.version,
                    message: nack.message,
                })
            }
            (false, Some(sent), None) => {
                state.acked_version = Some(sent.version.clone());
                state.nack = None;
                Some(Event::Ack {
                    type_url,
                    version: sent.version.clone(),
                })
            }
        };
        // The common case, an ACK with the same subscription for resources
        // that have not changed since: nothing to send, found in O(1).
        let settled = !first
            && same_subscription
            && state.added.is_empty()
            && state
                .sent_from
                .as_ref()
                .is_some_and(|from| from.shares(snapshot, type_url));
        if settled {
            return (event, None);
        }
        let response = self.respond(type_url, snapshot, first);
        (event, response)
    }

    /// The resources of `view` this stream subscribes to, by type then name.
    pub fn served<'a>(&self, view: &'a Snapshot) -> Vec<(TypeUrl, &'a String, &'a Entry)> {
        let mut out = Vec::new();
        for (t, state) in &self.types {
            match &state.subscription {
                Subscription::Wildcard => out.extend(view.of(*t).map(|(n, e)| (*t, n, e))),
                Subscription::Names(names) => out.extend(
                    names
                        .iter()
                        .filter_map(|n| view.get_key_value(*t, n))
                        .map(|(n, e)| (*t, n, e)),
                ),
            }
        }
        out
    }

    /// Replies made necessary by a new snapshot, in make-before-break order.
    pub fn on_snapshot(&mut self, snapshot: &std::sync::Arc<Snapshot>) -> Vec<DiscoveryResponse> {
        let requested: Vec<TypeUrl> = TypeUrl::ORDER
            .into_iter()
            .filter(|t| self.types.get(t).is_some_and(|s| s.sent.is_some()))
            .collect();
        // A type whose resources are the very map last sent from cannot have
        // changed: skip it without looking inside.
        let touched: Vec<TypeUrl> = requested
            .into_iter()
            .filter(|t| {
                let state = &self.types[t];
                !(state.added.is_empty()
                    && state
                        .sent_from
                        .as_ref()
                        .is_some_and(|from| from.shares(snapshot, *t)))
            })
            .collect();
        touched
            .into_iter()
            .filter_map(|t| self.respond(t, snapshot, false))
            .collect()
    }

    fn respond(
        &mut self,
        type_url: TypeUrl,
        snapshot: &std::sync::Arc<Snapshot>,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(&type_url)?;
        let subscribed = |name: &String| match &state.subscription {
            Subscription::Wildcard => true,
            Subscription::Names(names) => names.contains(name),
        };
        // A stream that sent from the previous snapshot, with an unchanged
        // subscription, updates its version from the changed names alone.
        let changed: Option<Vec<&String>> = match (&state.sent, &state.sent_from) {
            (Some(_), Some(from))
                if !force && !state.subscription_changed && state.added.is_empty() =>
            {
                snapshot
                    .changes_since(from, type_url)
                    .map(|names| names.iter().filter(|n| subscribed(n)).collect())
            }
            _ => None,
        };
        let (version_bits, names_hash, count) = match (&changed, &state.sent, &state.sent_from) {
            (Some(names), Some(sent), Some(from)) => {
                let (mut version, mut present, mut count) =
                    (sent.version_bits, sent.names_hash, sent.resources);
                for name in names {
                    let old = from.get(type_url, name).map(|e| e.hash);
                    let new = snapshot.get(type_url, name).map(|e| e.hash);
                    if let Some(h) = old {
                        version ^= mix(name, Some(h));
                    }
                    if let Some(h) = new {
                        version ^= mix(name, Some(h));
                    }
                    if old.is_some() != new.is_some() {
                        // Wildcard: the answered names are the present ones.
                        if matches!(state.subscription, Subscription::Wildcard) {
                            present ^= mix(name, None);
                        }
                        count = if new.is_some() { count + 1 } else { count - 1 };
                    }
                }
                (version, present, count)
            }
            _ => {
                let entries = Self::entries(&state.subscription, type_url, snapshot);
                let version = entries
                    .iter()
                    .fold(0, |acc, (n, e)| acc ^ mix(n, Some(e.hash)));
                let names_hash = match &state.subscription {
                    Subscription::Wildcard => hash_names(entries.iter().map(|(n, _)| *n)),
                    Subscription::Names(_) => state.subscription_bits,
                };
                (version, names_hash, entries.len())
            }
        };
        let version = format!("{version_bits:016x}");
        if !force {
            let unchanged = state
                .sent
                .as_ref()
                .is_some_and(|s| s.version_bits == version_bits && s.names_hash == names_hash);
            let rejected = state.nack.as_ref().is_some_and(|n| n.version == version);
            if unchanged || rejected {
                state.subscription_changed = false;
                return None;
            }
        }
        // LDS and CDS responses must hold everything; EDS and RDS only what
        // changed since the last response (or was just subscribed).
        let partial = matches!(type_url, TypeUrl::Endpoint | TypeUrl::Route) && !force;
        let resources = match (&changed, &state.sent_from, partial) {
            (Some(names), _, true) => names
                .iter()
                .filter_map(|n| snapshot.get(type_url, n))
                .map(|e| e.any.clone())
                .collect(),
            (None, Some(from), true) => Self::entries(&state.subscription, type_url, snapshot)
                .into_iter()
                .filter(|(name, entry)| {
                    state.added.contains(*name)
                        || from
                            .get(type_url, name)
                            .is_none_or(|old| old.hash != entry.hash)
                })
                .map(|(_, e)| e.any.clone())
                .collect(),
            _ => Self::entries(&state.subscription, type_url, snapshot)
                .into_iter()
                .map(|(_, e)| e.any.clone())
                .collect(),
        };
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.as_str().to_owned(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        state.added.clear();
        state.subscription_changed = false;
        state.sent_from = Some(snapshot.clone());
        state.sent = Some(Sent {
            version,
            version_bits,
            nonce,
            names_hash,
            resources: count,
        });
        Some(response)
    }

    /// The subscribed resources present in `snapshot`, in name order.
    fn entries<'a>(
        subscription: &Subscription,
        type_url: TypeUrl,
        snapshot: &'a Snapshot,
    ) -> Vec<(&'a String, &'a Entry)> {
        match subscription {
            Subscription::Wildcard => snapshot.of(type_url).collect(),
            Subscription::Names(names) => names
                .iter()
                .filter_map(|n| snapshot.get_key_value(type_url, n))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    const MODEL: &str = include_str!("../../../docs/examples/echo.yaml");
    const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const EDS_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

    fn snapshot(yaml: &str) -> std::sync::Arc<Snapshot> {
        std::sync::Arc::new(crate::xds::translate::test_snapshot(yaml))
    }

    fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    /// Versions and pushes updated from the changed names alone must equal
    /// those computed from every subscribed resource.
    #[test]
    fn updating_versions_from_changed_names_matches_a_full_computation() {
        const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let models = [
            MODEL.to_owned(),
            MODEL.replace("50062", "50063"),
            MODEL.replace(", {name: http, port: 8080, protocol: http}", ""),
            MODEL
                .replace("weight: 80", "weight: 70")
                .replace("weight: 20", "weight: 30"),
            MODEL.to_owned(),
        ];
        let sequence = crate::xds::translate::test_sequence(&models);
        let summary = |responses: Vec<DiscoveryResponse>| -> Vec<(String, String, usize)> {
            responses
                .into_iter()
                .map(|r| (r.type_url, r.version_info, r.resources.len()))
                .collect()
        };
        let (mut fast, mut full) = (SotwStream::default(), SotwStream::default());
        let names = [
            "outbound|50051||echo.default",
            "outbound|8080||echo.default",
            "outbound|50051|version=v2|echo.default",
        ];
        for stream in [&mut fast, &mut full] {
            let snap = &sequence[0].0;
            let (_, cds) = stream.on_request(request(CDS, &[], "", ""), snap);
            let cds = cds.unwrap();
            stream.on_request(request(CDS, &[], &cds.version_info, &cds.nonce), snap);
            let (_, eds) = stream.on_request(request(EDS, &names, "", ""), snap);
            let eds = eds.unwrap();
            stream.on_request(request(EDS, &names, &eds.version_info, &eds.nonce), snap);
        }
        for (i, (with_changes, plain)) in sequence.iter().enumerate().skip(1) {
            let fast_out = summary(fast.on_snapshot(with_changes));
            let full_out = summary(full.on_snapshot(plain));
            assert_eq!(fast_out, full_out, "after model {i}");
            if i <= 2 {
                assert!(
                    !fast_out.is_empty(),
                    "model {i} changes clusters or endpoints"
                );
            }
            // Both ACK what they got.
            for stream in [&mut fast, &mut full] {
                for t in [CDS, EDS] {
                    let state = &stream.types[&TypeUrl::parse(t).unwrap()];
                    let sent = state.sent.clone().unwrap();
                    let subscribed: &[&str] = if t == EDS { &names } else { &[] };
                    stream.on_request(request(t, subscribed, &sent.version, &sent.nonce), plain);
                }
            }
        }
    }

    #[test]
    fn streams_naming_the_same_set_share_one_copy_of_it() {
        let snap = snapshot(MODEL);
        let names = [
            "outbound|50051||echo.default",
            "outbound|8080||echo.default",
        ];
        let (mut a, mut b) = (SotwStream::default(), SotwStream::default());
        a.on_request(request(EDS_URL, &names, "", ""), &snap);
        b.on_request(request(EDS_URL, &[names[1], names[0]], "", ""), &snap);
        let set = |s: &SotwStream| match &s.types[&TypeUrl::Endpoint].subscription {
            Subscription::Names(n) => n.clone(),
            Subscription::Wildcard => panic!("named"),
        };
        assert!(Arc::ptr_eq(&set(&a), &set(&b)));
        b.on_request(request(EDS_URL, &names[..1], "", ""), &snap);
        assert!(
            !Arc::ptr_eq(&set(&a), &set(&b)),
            "a different set is its own"
        );
    }

    #[test]
    fn named_subscription_ack_and_no_resend_of_the_same_content() {
        let snap = snapshot(MODEL);
        let mut s = SotwStream::default();
        let (event, reply) = s.on_request(request(LDS, &["echo.default:50051"], "", ""), &snap);
        assert_eq!(event, None);
        let reply = reply.expect("first request gets a reply");
        assert_eq!(reply.resources.len(), 1);
        let (event, again) = s.on_request(
            request(
                LDS,
                &["echo.default:50051"],
                &reply.version_info,
                &reply.nonce,
            ),
            &snap,
        );
        assert_eq!(
            event,
            Some(Event::Ack {
                type_url: TypeUrl::Listener,
                version: reply.version_info.clone()
            })
        );
        assert!(again.is_none(), "an ACK of unchanged content gets no reply");
        assert!(
            s.on_snapshot(&snap).is_empty(),
            "the same snapshot pushes nothing"
        );
    }

    #[test]
    fn a_nacked_version_is_not_sent_again_but_a_new_one_is() {
        let snap = snapshot(MODEL);
        let mut s = SotwStream::default();
        let (_, reply) = s.on_request(request(CDS, &[], "", ""), &snap);
        let reply = reply.unwrap();
        assert_eq!(reply.resources.len(), 6, "empty names on CDS = wildcard");
        let mut nack = request(CDS, &[], "", &reply.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "bad cluster".into(),
            details: vec![],
        });
        let (event, again) = s.on_request(nack, &snap);
        assert!(matches!(event, Some(Event::Nack { ref message, .. }) if message == "bad cluster"));
        assert!(again.is_none());
        assert!(
            s.on_snapshot(&snap).is_empty(),
            "the rejected version stays unsent"
        );
        assert_eq!(
            s.types[&TypeUrl::Cluster].nack.as_ref().unwrap().version,
            reply.version_info
        );
        let changed =
            snapshot(&MODEL.replace("timeout: 2s", "timeout: 2s\n  loadBalancer: RING_HASH"));
        let pushed = s.on_snapshot(&changed);
        assert_eq!(pushed.len(), 1);
        assert_ne!(pushed[0].version_info, reply.version_info);
    }

    #[test]
    fn stale_nonces_get_no_reply_but_their_subscription_counts() {
        let snap = snapshot(MODEL);
        let mut s = SotwStream::default();
        let (_, first) = s.on_request(request(LDS, &["echo.default:50051"], "", ""), &snap);
        let first = first.unwrap();
        let (event, reply) = s.on_request(request(LDS, &["echo.default:8080"], "", "999"), &snap);
        assert_eq!(
            event,
            Some(Event::Stale {
                type_url: TypeUrl::Listener
            })
        );
        assert!(reply.is_none());
        // The next valid request (ACK of the first) sees the recorded change.
        let (_, reply) = s.on_request(
            request(
                LDS,
                &["echo.default:8080", "echo.default:50051"],
                &first.version_info,
                &first.nonce,
            ),
            &snap,
        );
        assert_eq!(
            reply.unwrap().resources.len(),
            2,
            "a grown subscription is answered"
        );
    }

    #[test]
    fn pushes_follow_make_before_break_order() {
        let snap = snapshot(MODEL);
        let mut s = SotwStream::default();
        for t in [LDS, CDS] {
            let (_, reply) = s.on_request(request(t, &[], "", ""), &snap);
            let reply = reply.unwrap();
            s.on_request(request(t, &[], &reply.version_info, &reply.nonce), &snap);
        }
        let changed = snapshot(
            &MODEL
                .replace("weight: 80", "weight: 70")
                .replace("weight: 20", "weight: 30")
                .replace(
                    "echo-v2, namespace: default, labels: {app: echo, version: v2}",
                    "echo-v2, namespace: default, labels: {app: echo, version: v2, extra: x}",
                ),
        );
        let order: Vec<String> = s
            .on_snapshot(&changed)
            .into_iter()
            .map(|r| r.type_url)
            .collect();
        // Weights live in RDS (not subscribed here), so nothing moves for
        // LDS/CDS; labels do not change clusters either.
        assert!(order.is_empty(), "{order:?}");
        let with_new_port = snapshot(&MODEL.replace(
            "{name: http, port: 8080, protocol: http}",
            "{name: http, port: 8080, protocol: http}, {name: admin, port: 9090, protocol: http}",
        ));
        let order: Vec<String> = s
            .on_snapshot(&with_new_port)
            .into_iter()
            .map(|r| r.type_url)
            .collect();
        assert_eq!(
            order,
            vec![CDS.to_string(), LDS.to_string()],
            "clusters before listeners"
        );
    }

    #[test]
    fn eds_pushes_carry_only_what_changed() {
        const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let names = [
            "outbound|50051|version=v1|echo.default",
            "outbound|50051|version=v2|echo.default",
        ];
        let snap = snapshot(MODEL);
        let mut s = SotwStream::default();
        let (_, first) = s.on_request(request(EDS, &names, "", ""), &snap);
        let first = first.unwrap();
        assert_eq!(first.resources.len(), 2);
        s.on_request(
            request(EDS, &names, &first.version_info, &first.nonce),
            &snap,
        );
        let pushed = s.on_snapshot(&snapshot(&MODEL.replace("50062", "50063")));
        assert_eq!(pushed.len(), 1);
        assert_eq!(
            pushed[0].resources.len(),
            1,
            "only the v2 assignment changed"
        );
        assert_ne!(pushed[0].version_info, first.version_info);
        // A newly subscribed name is sent even though it did not change.
        let all = [
            "outbound|50051|version=v1|echo.default",
            "outbound|50051|version=v2|echo.default",
            "outbound|50051||echo.default",
        ];
        let (_, grown) = s.on_request(
            request(EDS, &all, &pushed[0].version_info, &pushed[0].nonce),
            &snapshot(&MODEL.replace("50062", "50063")),
        );
        assert_eq!(grown.unwrap().resources.len(), 1, "just the new one");
    }
}
