//! A snapshot: every xDS resource the control plane currently serves, by
//! type and name, each with a content hash. Versions sent to clients are
//! hashes over exactly the resources in a response, so a response that would
//! carry the same bytes carries the same version and is not re-sent.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

pub use rampart_api::xds::TypeUrl;

/// One encoded resource and the hash of its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub any: Any,
    pub hash: u64,
}

impl Entry {
    /// Encodes a resource.
    pub fn new<M: Message + prost::Name>(resource: M) -> Entry {
        let any = envoy_types::util::pack_any(resource);
        let hash = hash_bytes(&any.value);
        Entry { any, hash }
    }
}

/// Resources of one type, by name.
pub type Resources = BTreeMap<String, Entry>;

static NONE: Resources = BTreeMap::new();

/// One type's resources: a map shared by every stream, and optionally a
/// small map of one proxy's own resources on top of it (its inbound
/// listeners and clusters). A proxy's view thus costs the size of what is
/// its own, not a copy of the mesh.
#[derive(Debug, Clone, Default, PartialEq)]
struct Layer {
    shared: Arc<Resources>,
    own: Option<Arc<Resources>>,
}

impl Layer {
    fn same_as(&self, other: &Layer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
            && match (&self.own, &other.own) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }

    fn own(&self) -> &Resources {
        self.own.as_deref().unwrap_or(&NONE)
    }

    fn get_key_value(&self, name: &str) -> Option<(&String, &Entry)> {
        self.own()
            .get_key_value(name)
            .or_else(|| self.shared.get_key_value(name))
    }

    fn iter(&self) -> Merged<'_> {
        Merged {
            shared: self.shared.iter().peekable(),
            own: self.own().iter().peekable(),
        }
    }
}

/// Both maps of a layer in name order; a proxy's own resource wins over a
/// shared one of the same name.
struct Merged<'a> {
    shared: std::iter::Peekable<std::collections::btree_map::Iter<'a, String, Entry>>,
    own: std::iter::Peekable<std::collections::btree_map::Iter<'a, String, Entry>>,
}

impl<'a> Iterator for Merged<'a> {
    type Item = (&'a String, &'a Entry);

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        let order = match (self.shared.peek(), self.own.peek()) {
            (Some(s), Some(o)) => s.0.cmp(o.0),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => self.shared.next(),
            Ordering::Equal => {
                self.shared.next();
                self.own.next()
            }
            Ordering::Greater => self.own.next(),
        }
    }
}

/// Per type, the names whose resource differs from the previous snapshot's
/// (added, changed or removed), so a delta stream that was in sync with the
/// previous snapshot looks only at them instead of every name it holds.
#[derive(Debug, Clone, Default)]
struct ChangeLog(BTreeMap<TypeUrl, Arc<Changes>>);

/// Bookkeeping, not content: two snapshots with the same resources are equal
/// whatever they changed from.
impl PartialEq for ChangeLog {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug)]
struct Changes {
    /// The map the names changed from, and the one they changed to.
    from: Arc<Resources>,
    to: Arc<Resources>,
    names: Vec<String>,
}

/// Names present in only one of two sorted maps or with different content.
fn changed_names(from: &Resources, to: &Resources) -> Vec<String> {
    use std::cmp::Ordering;
    let (mut a, mut b) = (from.iter().peekable(), to.iter().peekable());
    let mut names = Vec::new();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return names,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.0.cmp(y.0),
        };
        match order {
            Ordering::Less => names.push(a.next().unwrap().0.clone()),
            Ordering::Greater => names.push(b.next().unwrap().0.clone()),
            Ordering::Equal => {
                let (x, y) = (a.next().unwrap(), b.next().unwrap());
                if x.1.hash != y.1.hash {
                    names.push(x.0.clone());
                }
            }
        }
    }
}

/// All resources, by type then name. Each type's map is shared, so a
/// per-proxy view that swaps one type costs no copies of the others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    resources: BTreeMap<TypeUrl, Layer>,
    changes: ChangeLog,
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
        let entry = Entry::new(resource);
        debug_assert_eq!(entry.any.type_url, type_url.as_str());
        let layer = self.resources.entry(type_url).or_default();
        Arc::make_mut(&mut layer.shared).insert(name, entry);
    }

    /// Keeps `previous`'s shared map for every type whose resources did not
    /// change, so streams can tell an untouched type in O(1) ([`Snapshot::shares`]).
    pub fn reuse_unchanged(&mut self, previous: &Snapshot) {
        for (type_url, layer) in self.resources.iter_mut() {
            if let Some(old) = previous.resources.get(type_url)
                && old == layer
            {
                *layer = old.clone();
            }
        }
    }

    /// Records, per type, which names differ from `previous` (the snapshot
    /// this one replaces).
    pub fn record_changes(&mut self, previous: &Snapshot) {
        for (t, layer) in &self.resources {
            let Some(old) = previous.resources.get(t) else {
                continue;
            };
            if layer.own.is_some() || old.own.is_some() || layer.same_as(old) {
                continue;
            }
            let changes = Changes {
                from: old.shared.clone(),
                to: layer.shared.clone(),
                names: changed_names(&old.shared, &layer.shared),
            };
            self.changes.0.insert(*t, Arc::new(changes));
        }
    }

    /// The names of `type_url` that may differ between `earlier` and this
    /// snapshot, when this snapshot (or a view sharing its map) is the one
    /// right after `earlier`; None when unknown (diff everything).
    pub fn changes_since(&self, earlier: &Snapshot, type_url: TypeUrl) -> Option<&[String]> {
        let (now, then) = (
            self.resources.get(&type_url)?,
            earlier.resources.get(&type_url)?,
        );
        let changes = self.changes.0.get(&type_url)?;
        (now.own.is_none()
            && then.own.is_none()
            && Arc::ptr_eq(&changes.from, &then.shared)
            && Arc::ptr_eq(&changes.to, &now.shared))
        .then_some(changes.names.as_slice())
    }

    /// Whether both snapshots hold the very same maps for `type_url`.
    pub fn shares(&self, other: &Snapshot, type_url: TypeUrl) -> bool {
        match (
            self.resources.get(&type_url),
            other.resources.get(&type_url),
        ) {
            (Some(a), Some(b)) => a.same_as(b),
            (None, None) => true,
            _ => false,
        }
    }

    /// The shared map of a type.
    pub fn shared(&self, type_url: TypeUrl) -> Arc<Resources> {
        self.resources
            .get(&type_url)
            .map(|l| l.shared.clone())
            .unwrap_or_default()
    }

    /// The same snapshot with one type replaced by `shared` plus a proxy's
    /// `own` resources (a proxy's view).
    pub fn with_layer(
        &self,
        type_url: TypeUrl,
        shared: Arc<Resources>,
        own: Option<Arc<Resources>>,
    ) -> Snapshot {
        let mut view = self.clone();
        view.resources.insert(type_url, Layer { shared, own });
        view
    }

    /// The resources of one type, in name order.
    pub fn of(&self, type_url: TypeUrl) -> impl Iterator<Item = (&String, &Entry)> {
        self.resources
            .get(&type_url)
            .into_iter()
            .flat_map(Layer::iter)
    }

    /// One resource.
    pub fn get(&self, type_url: TypeUrl, name: &str) -> Option<&Entry> {
        self.get_key_value(type_url, name).map(|(_, e)| e)
    }

    /// One resource with its stored name.
    pub fn get_key_value(&self, type_url: TypeUrl, name: &str) -> Option<(&String, &Entry)> {
        self.resources.get(&type_url)?.get_key_value(name)
    }

    /// Number of resources of a type.
    pub fn count(&self, type_url: TypeUrl) -> usize {
        self.of(type_url).count()
    }
}
