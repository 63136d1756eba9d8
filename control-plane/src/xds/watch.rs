//! Rebuilds the snapshot when the mesh model changes: changes are debounced
//! (a burst of applies becomes one rebuild) but never delayed past a bound,
//! and a rebuild that produces the same resources wakes nobody.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::snapshot::Snapshot;

/// A snapshot as published to the streams: its generation and when the
/// change that produced it was accepted (for convergence timing).
#[derive(Debug, Default)]
pub struct Published {
    pub snapshot: Arc<Snapshot>,
    pub generation: u64,
    pub accepted_at: Option<Instant>,
}
use super::translate::{Model, translate};
use crate::discovery::Registrations;
use crate::store::MeshStore;

/// What the snapshot is built from besides the store.
#[derive(Clone)]
pub struct Sources {
    pub registrations: Registrations,
    pub trust_domain: String,
    /// The trust bundle served as `ROOTCA`.
    pub roots_pem: String,
}

/// A burst of changes never delays a rebuild longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

fn build(store: &impl MeshStore, sources: &Sources) -> Option<Snapshot> {
    match store.list(None, None, None) {
        Ok(resources) => {
            let model = Model::new(resources, &sources.trust_domain, &sources.roots_pem)
                .with_registered(sources.registrations.entries());
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
    let first = Published {
        snapshot: Arc::new(build(&store, &sources).unwrap_or_default()),
        generation: 0,
        accepted_at: None,
    };
    let (tx, rx) = watch::channel(Arc::new(first));
    let mut revisions = store.revision();
    let mut registered = sources.registrations.revision();
    tokio::spawn(async move {
        let mut generation = 0;
        // A change to the model or to the registered endpoints.
        let mut changed = async || {
            tokio::select! {
                r = revisions.changed() => r.is_ok(),
                r = registered.changed() => r.is_ok(),
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
            let Some(mut snapshot) = build(&store, &sources) else {
                continue;
            };
            tx.send_if_modified(|current| {
                snapshot.reuse_unchanged(&current.snapshot);
                if *current.snapshot == snapshot {
                    false
                } else {
                    snapshot.record_changes(&current.snapshot);
                    generation += 1;
                    *current = Arc::new(Published {
                        snapshot: Arc::new(snapshot),
                        generation,
                        accepted_at: Some(accepted_at),
                    });
                    true
                }
            });
        }
    });
    rx
}
