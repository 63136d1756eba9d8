//! A snapshot: every xDS resource the control plane currently serves, by
//! type and name, each with a content hash. Versions sent to clients are
//! hashes over exactly the resources in a response, so a response that would
//! carry the same bytes carries the same version and is not re-sent.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The resource types Rampart serves, in make-before-break push order:
/// clusters before their endpoints, listeners before their routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl TypeUrl {
    /// Every type, in push order.
    pub const ORDER: [TypeUrl; 4] = [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
    ];

    /// The `type.googleapis.com/...` URL.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// Parses a type URL.
    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ORDER.into_iter().find(|t| t.as_str() == url)
    }

    /// Short name for logs and metrics: `cds`, `eds`, `lds`, `rds`.
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::Endpoint => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::Route => "rds",
        }
    }

    /// Whether an empty subscription may mean "everything" (LDS and CDS).
    pub fn supports_wildcard(self) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Listener)
    }
}

/// One encoded resource and the hash of its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub any: Any,
    pub hash: u64,
}

/// All resources, by type then name. Each type's map is shared, so a
/// per-proxy view that swaps one type costs no copies of the others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    resources: BTreeMap<TypeUrl, Arc<BTreeMap<String, Entry>>>,
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: stable across runs and processes.
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

impl Snapshot {
    /// Adds a resource. Names must be unique per type (later wins).
    pub fn insert<M: Message + prost::Name>(
        &mut self,
        type_url: TypeUrl,
        name: String,
        resource: M,
    ) {
        let any = envoy_types::util::pack_any(resource);
        debug_assert_eq!(any.type_url, type_url.as_str());
        let hash = hash_bytes(&any.value);
        Arc::make_mut(self.resources.entry(type_url).or_default())
            .insert(name, Entry { any, hash });
    }

    /// Keeps `previous`'s shared map for every type whose resources did not
    /// change, so streams can tell an untouched type in O(1) ([`Snapshot::shares`]).
    pub fn reuse_unchanged(&mut self, previous: &Snapshot) {
        for (type_url, map) in self.resources.iter_mut() {
            if let Some(old) = previous.resources.get(type_url)
                && old == map
            {
                *map = old.clone();
            }
        }
    }

    /// Whether both snapshots hold the very same map for `type_url`.
    pub fn shares(&self, other: &Snapshot, type_url: TypeUrl) -> bool {
        match (
            self.resources.get(&type_url),
            other.resources.get(&type_url),
        ) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// The same snapshot with the listeners replaced (a proxy's own view).
    pub fn with_listeners(&self, listeners: Arc<BTreeMap<String, Entry>>) -> Snapshot {
        let mut view = self.clone();
        view.resources.insert(TypeUrl::Listener, listeners);
        view
    }

    /// The resources of one type.
    pub fn of(&self, type_url: TypeUrl) -> impl Iterator<Item = (&String, &Entry)> {
        self.resources
            .get(&type_url)
            .into_iter()
            .flat_map(|r| r.iter())
    }

    /// One resource.
    pub fn get(&self, type_url: TypeUrl, name: &str) -> Option<&Entry> {
        self.resources.get(&type_url)?.get(name)
    }

    /// One resource with its stored name.
    pub fn get_key_value(&self, type_url: TypeUrl, name: &str) -> Option<(&String, &Entry)> {
        self.resources.get(&type_url)?.get_key_value(name)
    }

    /// Number of resources of a type.
    pub fn count(&self, type_url: TypeUrl) -> usize {
        self.resources.get(&type_url).map_or(0, |r| r.len())
    }
}

/// The version of a response carrying `entries` (name, entry), in order.
pub fn version_of<'a>(entries: impl IntoIterator<Item = (&'a String, &'a Entry)>) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    for (name, entry) in entries {
        name.hash(&mut hasher);
        entry.hash.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// A version naming a whole set of (name, version) pairs, for logs and status.
pub fn version_of_map(versions: &BTreeMap<String, u64>) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    for (name, version) in versions {
        name.hash(&mut hasher);
        version.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}
