//! What one stream serves: the shared snapshot as is, or a view of it for a
//! node that named its outbound listeners or is a sidecar. A view replaces
//! the listeners with the node's own (outbound and inbound), gives a sidecar
//! the mTLS flavour of the clusters plus its inbound clusters, and narrows
//! everything to the node's dependencies when it lists them.
//!
//! The view is built once per snapshot (not on every request), and every
//! map that did not change keeps its `Arc`, so a stream still settles an
//! untouched type in O(1).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use rampart_certs::SpiffeId;

use super::node_listeners::listeners;
use super::sidecar::{Sidecar, SidecarError, SidecarInputs};
use super::snapshot::{Resources, Snapshot, TypeUrl};
use super::snapshot_builder::Published;
use rampart_api::xds::{OutboundListener, SidecarMetadata};

/// One node's view of the snapshots.
#[derive(Debug, Default)]
pub struct NodeView {
    outbound: Option<Vec<OutboundListener>>,
    sidecar: Option<Sidecar>,
    /// The snapshot the last view was built from, and that view.
    last: Option<(Arc<Snapshot>, Arc<Snapshot>)>,
    /// Per type: the map last used for the view (reused when equal), and for
    /// a filtered type, the source it was filtered from.
    kept: std::collections::BTreeMap<TypeUrl, Kept>,
    /// The (empty) shared listener map under the node's own listeners.
    no_listeners: Arc<Resources>,
    /// The sidecar inputs the inbound side was last built from, and it
    /// (listeners, clusters): most snapshots (an endpoint change) share
    /// them, and then nothing inbound is rebuilt.
    inbound: Option<(Arc<SidecarInputs>, Resources, Resources)>,
}

#[derive(Debug, Default)]
struct Kept {
    source: Option<Arc<Resources>>,
    shared: Option<Arc<Resources>>,
    own: Option<Arc<Resources>>,
}

/// `new` if it equals `previous` (keeping the shared `Arc`), else `new`.
fn keep(previous: &mut Option<Arc<Resources>>, new: Resources) -> Arc<Resources> {
    match previous {
        Some(p) if **p == new => p.clone(),
        _ => {
            let new = Arc::new(new);
            *previous = Some(new.clone());
            new
        }
    }
}

impl NodeView {
    /// The view for the node of a stream's first request, made by `peer`.
    pub fn new(node: Option<&Node>, peer: &SpiffeId) -> Result<Self, SidecarError> {
        let Some(node) = node else {
            return Ok(Self::default());
        };
        let metadata =
            SidecarMetadata::from_node(node).map_err(|e| SidecarError::Invalid(e.to_string()))?;
        let sidecar = Sidecar::from_metadata(&node.id, &metadata, peer)?;
        let outbound = metadata.outbound;
        Ok(Self {
            outbound,
            sidecar,
            ..Default::default()
        })
    }

    /// The sidecar this node is, if it is one.
    pub fn sidecar(&self) -> Option<&Sidecar> {
        self.sidecar.as_ref()
    }

    /// What this node is served from `published`.
    pub fn of(&mut self, published: &Published) -> Arc<Snapshot> {
        let (snapshot, inputs) = (&published.snapshot, &published.sidecars);
        if self.outbound.is_none() && self.sidecar.is_none() {
            return snapshot.clone();
        }
        if let Some((base, view)) = &self.last
            && Arc::ptr_eq(base, snapshot)
        {
            return view.clone();
        }
        let mut view = (**snapshot).clone();
        let mut own_listeners = match &self.outbound {
            Some(requested) => listeners(requested, snapshot, inputs),
            None => Resources::new(),
        };
        if let Some(sidecar) = &self.sidecar {
            if !matches!(&self.inbound, Some((built_from, ..)) if Arc::ptr_eq(built_from, inputs)) {
                let (listeners, clusters) = sidecar.inbound(inputs);
                self.inbound = Some((inputs.clone(), listeners, clusters));
            }
            let (_, inbound_listeners, inbound_clusters) =
                self.inbound.as_ref().expect("built just above");
            own_listeners.extend(
                inbound_listeners
                    .iter()
                    .map(|(n, e)| (n.clone(), e.clone())),
            );
            let inbound_clusters = inbound_clusters.clone();
            let clusters = self.narrowed(TypeUrl::Cluster, &inputs.clusters, inputs);
            let own = self.own(TypeUrl::Cluster, inbound_clusters);
            view = view.with_layer(TypeUrl::Cluster, clusters, own);
            for t in [TypeUrl::Endpoint, TypeUrl::Route] {
                let narrowed = self.narrowed(t, &snapshot.shared(t), inputs);
                view = view.with_layer(t, narrowed, None);
            }
        }
        let own = self.own(TypeUrl::Listener, own_listeners);
        view = view.with_layer(TypeUrl::Listener, self.no_listeners.clone(), own);
        let view = Arc::new(view);
        self.last = Some((snapshot.clone(), view.clone()));
        view
    }

    /// `source` narrowed to the sidecar's dependencies (the same `Arc` while
    /// `source` is the same map; picked by name, not by scanning `source`).
    fn narrowed(
        &mut self,
        type_url: TypeUrl,
        source: &Arc<Resources>,
        inputs: &SidecarInputs,
    ) -> Arc<Resources> {
        let kept = self.kept.entry(type_url).or_default();
        if let (Some(s), Some(shared)) = (&kept.source, &kept.shared)
            && Arc::ptr_eq(s, source)
        {
            return shared.clone();
        }
        let names = self
            .sidecar
            .as_ref()
            .and_then(|s| s.dependency_names(inputs, type_url));
        let narrowed = match names {
            None => source.clone(),
            Some(names) => {
                let picked: Resources = names
                    .filter_map(|n| source.get_key_value(n))
                    .map(|(n, e)| (n.clone(), e.clone()))
                    .collect();
                // An unchanged selection keeps its map, so the type settles in O(1).
                match &kept.shared {
                    Some(previous) if **previous == picked => previous.clone(),
                    _ => Arc::new(picked),
                }
            }
        };
        kept.source = Some(source.clone());
        kept.shared = Some(narrowed.clone());
        narrowed
    }

    fn own(&mut self, type_url: TypeUrl, resources: Resources) -> Option<Arc<Resources>> {
        if resources.is_empty() {
            return None;
        }
        Some(keep(
            &mut self.kept.entry(type_url).or_default().own,
            resources,
        ))
    }
}
