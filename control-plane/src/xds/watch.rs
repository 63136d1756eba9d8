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
use crate::store::MeshStore;

/// A burst of changes never delays a rebuild longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

fn build(store: &impl MeshStore) -> Option<Snapshot> {
    match store.list(None, None, None) {
        Ok(resources) => Some(translate(&Model::new(resources))),
        Err(e) => {
            tracing::error!(error = %e, "reading the mesh model failed; keeping the last snapshot");
            None
        }
    }
}

/// Builds the first snapshot now and keeps it current in the background.
pub fn spawn_snapshot_builder<S: MeshStore + 'static>(
    store: S,
    debounce: Duration,
) -> watch::Receiver<Arc<Published>> {
    let first = Published {
        snapshot: Arc::new(build(&store).unwrap_or_default()),
        generation: 0,
        accepted_at: None,
    };
    let (tx, rx) = watch::channel(Arc::new(first));
    let mut revisions = store.revision();
    tokio::spawn(async move {
        let mut generation = 0;
        while revisions.changed().await.is_ok() {
            let accepted_at = Instant::now();
            let deadline = accepted_at + MAX_DEBOUNCE;
            // Wait until the model has been quiet for `debounce` (or the bound).
            while let Ok(Ok(())) = tokio::time::timeout_at(
                deadline.min(Instant::now() + debounce),
                revisions.changed(),
            )
            .await
            {}
            let Some(mut snapshot) = build(&store) else {
                continue;
            };
            tx.send_if_modified(|current| {
                snapshot.reuse_unchanged(&current.snapshot);
                if *current.snapshot == snapshot {
                    false
                } else {
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
