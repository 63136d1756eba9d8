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

/// Resolves when `source` changes; never, once its sender is gone.
async fn changes<T>(source: &mut watch::Receiver<T>) {
    if source.changed().await.is_err() {
        std::future::pending::<()>().await;
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
        // A change to the model, to the registered endpoints, in the cluster
        // or to the trust bundle. A source that goes away changes nothing
        // more; it does not stop the others from being followed.
        let mut changed = async || {
            tokio::select! {
                _ = changes(&mut revisions) => {}
                _ = changes(&mut registered) => {}
                _ = changes(&mut cluster) => {}
                _ = changes(&mut roots) => {}
            }
        };
        loop {
            changed().await;
            let accepted_at = Instant::now();
            let deadline = accepted_at + MAX_DEBOUNCE;
            // Wait until the model has been quiet for `debounce` (or the bound).
            while tokio::time::timeout_at(deadline.min(Instant::now() + debounce), changed())
                .await
                .is_ok()
            {}
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rampart_api::mesh::{Kind, ResourceKey, parse_documents};

    use super::*;
    use crate::store::{ApplyOutcome, StoreError};

    /// The model in memory, replaced whole by [`Model::set`]: the builder
    /// only lists and watches the revision. (The sled store under the same
    /// builder is tested by `tests/tests/faults.rs`'s burst of 1,000.)
    #[derive(Clone)]
    struct InMemory {
        resources: Arc<Mutex<Vec<Resource>>>,
        revision: Arc<watch::Sender<u64>>,
    }

    impl InMemory {
        fn new() -> Self {
            InMemory {
                resources: Arc::default(),
                revision: Arc::new(watch::channel(0).0),
            }
        }

        /// One Service `web` with one port: each change is a new port.
        fn set_port(&self, port: u16) {
            let yaml = format!(
                "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  ports: [{{name: http, port: {port}, protocol: http}}]\n"
            );
            *self.resources.lock().unwrap() = parse_documents("t", &yaml).unwrap();
            self.revision.send_modify(|r| *r += 1);
        }
    }

    impl MeshStore for InMemory {
        async fn apply(&self, _: &[Resource], _: bool) -> Result<Vec<ApplyOutcome>, StoreError> {
            unreachable!("the builder never writes")
        }

        fn list(
            &self,
            _: Option<Kind>,
            _: Option<&str>,
            _: Option<&str>,
        ) -> Result<Vec<Resource>, StoreError> {
            Ok(self.resources.lock().unwrap().clone())
        }

        async fn delete(&self, _: &[ResourceKey]) -> Result<Vec<bool>, StoreError> {
            unreachable!("the builder never writes")
        }

        fn revision(&self) -> watch::Receiver<u64> {
            self.revision.subscribe()
        }
    }

    /// The builder's publications, and the trust bundle's sender (the
    /// builder stops when its sources go away).
    fn builder(
        store: &InMemory,
        debounce: Duration,
    ) -> (watch::Receiver<Arc<Published>>, watch::Sender<String>) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let (roots_tx, roots) = watch::channel(String::new());
        let sources = Sources {
            registrations: Registrations::load(db.open_tree("r").unwrap(), Duration::ZERO),
            trust_domain: "cluster.local".into(),
            roots,
            kubernetes: None,
        };
        (
            spawn_snapshot_builder(store.clone(), sources, debounce),
            roots_tx,
        )
    }

    fn serves_port(published: &Published, port: u16) -> bool {
        let cluster = format!("outbound|{port}||web.default");
        published
            .snapshot
            .get(super::super::TypeUrl::Cluster, &cluster)
            .is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_rebuild_and_a_storm_waits_at_most_the_bound() {
        let store = InMemory::new();
        store.set_port(8000);
        let (published, roots) = builder(&store, Duration::from_millis(500));
        // A source that goes away does not stop the others being followed.
        drop(roots);
        assert_eq!(published.borrow().generation, 0);

        // Ten changes 100 ms apart: quiet for 500 ms only after the last.
        let first = Instant::now();
        for port in 8001..=8010 {
            store.set_port(port);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = published.borrow().clone();
        assert_eq!(now.generation, 1, "one rebuild for the burst");
        assert!(serves_port(&now, 8010), "the last change is what is served");
        // Convergence is timed from the first change of the burst.
        let accepted = now.accepted_at.expect("a change was accepted");
        assert!(
            accepted - first < Duration::from_millis(5),
            "{:?}",
            accepted - first
        );

        // Changes every 200 ms for 5 s never leave 500 ms of quiet: the
        // bound (2 s) publishes anyway, twice in those 5 s.
        for port in 9000..9025 {
            store.set_port(port);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let storm = published.borrow().generation - 1;
        assert_eq!(storm, 2, "publications during 5 s of changes");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(serves_port(&published.borrow(), 9024));
    }
}
