//! What each replica reports of a root rotation: whether the xDS streams
//! connected to it have followed. The leader moves the rotation on only
//! when every replica's report says so. One ConfigMap, one key per
//! replica, each written by server-side apply under the replica's own
//! field manager, so replicas never overwrite each other.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use serde::{Deserialize, Serialize};

/// One replica's view of its own streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The hash of the bundle this replica serves (it has taken the roots).
    pub bundle: String,
    pub at_unix: i64,
    pub streams: usize,
    pub without_bundle: Vec<String>,
    pub on_old_root: Vec<String>,
}

/// The reports of every replica in ConfigMap `namespace/name`.
pub struct Reports {
    api: Api<ConfigMap>,
    name: String,
    replica: String,
}

impl Reports {
    pub fn new(client: kube::Client, namespace: &str, name: &str, replica: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            replica: replica.to_owned(),
        }
    }

    /// Writes this replica's report.
    pub async fn publish(&self, report: &Report) -> anyhow::Result<()> {
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(
                    [("app.kubernetes.io/part-of".to_owned(), "rampart".to_owned())].into(),
                ),
                ..Default::default()
            },
            data: Some([(self.replica.clone(), serde_json::to_string(report)?)].into()),
            ..Default::default()
        };
        let manager = format!("rampart-rotation-{}", self.replica);
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&map),
            )
            .await?;
        Ok(())
    }

    /// Every other replica's report (one that does not parse is skipped).
    pub async fn others(&self) -> anyhow::Result<Vec<(String, Report)>> {
        let Some(map) = self.api.get_opt(&self.name).await? else {
            return Ok(Vec::new());
        };
        Ok(map
            .data
            .unwrap_or_default()
            .into_iter()
            .filter(|(replica, _)| *replica != self.replica)
            .filter_map(|(replica, text)| Some((replica, serde_json::from_str(&text).ok()?)))
            .collect())
    }
}
