//! Rebuilds the snapshot when the mesh model changes: changes are debounced
//! (a burst of applies becomes one rebuild) but never delayed past a bound,
//! and a rebuild that produces the same resources wakes nobody.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use rampart_api::mesh::Resource;

use super::sidecar::SidecarInputs;
use super::snapshot::Snapshot;
use super::translate::{MeshConfig, Model, translate};
use crate::discovery::Registrations;
use crate::k8s::discovery::Discovery;
use crate::store::MeshStore;

/// A translation as published to the streams: the shared snapshot, what
/// per-node views are built from, its generation and when the change that
/// produced it was accepted (for convergence timing).
#[derive(Debug, Default)]
pub struct Published {
    pub snapshot: Arc<Snapshot>,
    pub sidecars: Arc<SidecarInputs>,
    pub generation: u64,
    pub accepted_at: Option<Instant>,
}

impl Published {
    /// Whether `config` would publish exactly what this holds.
    fn holds(&self, config: &MeshConfig) -> bool {
        *self.snapshot == config.snapshot && *self.sidecars == config.sidecars
    }

    /// The publication that replaces this one with `config`. Whatever did
    /// not change keeps this one's `Arc`s, so streams settle an untouched
    /// type in O(1) and node views rebuild nothing inbound; the names that
    /// changed are recorded for delta streams.
    fn next(&self, mut config: MeshConfig, generation: u64, accepted_at: Instant) -> Published {
        config.snapshot.reuse_unchanged(&self.snapshot);
        config.snapshot.record_changes(&self.snapshot);
        let sidecars = if *self.sidecars == config.sidecars {
            self.sidecars.clone()
        } else {
            config.sidecars.reuse_unchanged(&self.sidecars);
            Arc::new(config.sidecars)
        };
        Published {
            snapshot: Arc::new(config.snapshot),
            sidecars,
            generation,
            accepted_at: Some(accepted_at),
        }
    }
}

/// What the snapshot is built from besides the store.
#[derive(Clone)]
pub struct Sources {
    pub registrations: Registrations,
    pub trust_domain: String,
    /// The trust bundle served as `ROOTCA` (PEM); it changes during a root
    /// rotation.
    pub roots: watch::Receiver<String>,
    /// Services and endpoints from the Kubernetes API server.
    pub kubernetes: Option<Discovery>,
}

/// A burst of changes never delays a rebuild longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

fn build(store: &impl MeshStore, sources: &Sources) -> Option<MeshConfig> {
    match store.list(None, None, None) {
        Ok(mut resources) => {
            let mut registered = sources.registrations.entries();
            if let Some(cluster) = &sources.kubernetes {
                let (services, endpoints) = cluster.resources();
                // A mesh Service of the same name says more than the
                // Kubernetes Service it describes: it wins.
                let declared: std::collections::BTreeSet<_> =
                    resources.iter().map(Resource::key).collect();
                resources.extend(
                    services
                        .into_iter()
                        .map(Resource::Service)
                        .filter(|s| !declared.contains(&s.key())),
                );
                registered.extend(endpoints);
            }
            let roots = sources.roots.borrow().clone();
            let model =
                Model::new(resources, &sources.trust_domain, &roots).with_registered(registered);
            Some(translate(&model))
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the mesh model failed; keeping the last snapshot");
            None
        }
    }
}

/// Builds the first snapshot now and keeps it current in the background.
pub fn spawn_snapshot_builder<S: MeshStore + 'static>(
    store: S,
    sources: Sources,
    debounce: Duration,
) -> watch::Receiver<Arc<Published>> {
    let first = build(&store, &sources).unwrap_or_default();
    let first = Published {
        snapshot: Arc::new(first.snapshot),
        sidecars: Arc::new(first.sidecars),
        generation: 0,
        accepted_at: None,
    };
    let (tx, rx) = watch::channel(Arc::new(first));
    let mut revisions = store.revision();
    let mut registered = sources.registrations.revision();
    // Without Kubernetes, a revision that never changes (its sender lives
    // as long as the task, so it never reads as closed either).
    let (idle_sender, idle) = watch::channel(0);
    let mut cluster = sources
        .kubernetes
        .as_ref()
        .map_or(idle, Discovery::revision);
    let mut roots = sources.roots.clone();
    tokio::spawn(async move {
        let _idle_sender = idle_sender;
        let mut generation = 0;
        // A change to the model, to the registered endpoints or in the cluster.
        let mut changed = async || {
            tokio::select! {
                r = revisions.changed() => r.is_ok(),
                r = registered.changed() => r.is_ok(),
                r = cluster.changed() => r.is_ok(),
                r = roots.changed() => r.is_ok(),
            }
        };
        while changed().await {
            let accepted_at = Instant::now();
            let deadline = accepted_at + MAX_DEBOUNCE;
            // Wait until the model has been quiet for `debounce` (or the bound).
            while let Ok(true) =
                tokio::time::timeout_at(deadline.min(Instant::now() + debounce), changed()).await
            {
            }
            let Some(config) = build(&store, &sources) else {
                continue;
            };
            tx.send_if_modified(|current| {
                if current.holds(&config) {
                    return false;
                }
                generation += 1;
                *current = Arc::new(current.next(config, generation, accepted_at));
                true
            });
        }
    });
    rx
}
