//! Rebuilds the snapshot when the mesh model changes: changes are debounced
//! (a burst of applies becomes one rebuild) but never delayed past a bound,
//! and a rebuild that produces the same resources wakes nobody.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::snapshot::Snapshot;
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
) -> watch::Receiver<Arc<Snapshot>> {
    let (tx, rx) = watch::channel(Arc::new(build(&store).unwrap_or_default()));
    let mut revisions = store.revision();
    tokio::spawn(async move {
        while revisions.changed().await.is_ok() {
            let deadline = Instant::now() + MAX_DEBOUNCE;
            // Wait until the model has been quiet for `debounce` (or the bound).
            while let Ok(Ok(())) = tokio::time::timeout_at(
                deadline.min(Instant::now() + debounce),
                revisions.changed(),
            )
            .await
            {}
            let Some(snapshot) = build(&store) else {
                continue;
            };
            tx.send_if_modified(|current| {
                if **current == snapshot {
                    false
                } else {
                    *current = Arc::new(snapshot);
                    true
                }
            });
        }
    });
    rx
}
