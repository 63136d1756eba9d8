//! What every open ADS stream has been sent and has ACKed or NACKed, for
//! `meshctl proxy-status`. Streams write their summary here after each
//! exchange; readers get a copy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rampart_api::admin::{ProxyStatus, TypeStatus};

use super::server::TypeSummary;
use envoy_types::pb::envoy::config::core::v3::Node;

/// The registry of open streams.
#[derive(Clone, Default)]
pub struct StreamRegistry {
    streams: Arc<Mutex<BTreeMap<u64, ProxyStatus>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl StreamRegistry {
    /// Registers a new stream; returns its id.
    pub fn open(&self, spiffe_id: String, variant: &str) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let status = ProxyStatus {
            stream_id: id,
            spiffe_id,
            variant: variant.to_owned(),
            connected_at_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
            ..Default::default()
        };
        self.lock().insert(id, status);
        id
    }

    /// Records the stream's current protocol state.
    pub fn update(&self, id: u64, node: Option<&Node>, types: &[TypeSummary<'_>]) {
        let mut streams = self.lock();
        let Some(status) = streams.get_mut(&id) else {
            return;
        };
        // The node never changes on a stream: record it once.
        if let Some(node) =
            node.filter(|_| status.node_id.is_empty() && status.user_agent.is_empty())
        {
            status.node_id = node.id.clone();
            status.user_agent = format!("{} {}", node.user_agent_name, version_of(node))
                .trim()
                .to_owned();
        }
        status.types = types
            .iter()
            .filter_map(|(t, sent, acked, nack)| {
                let sent = (*sent)?;
                let acked = acked.cloned().unwrap_or_default();
                let nack = nack.filter(|n| n.version == sent.version);
                let label = if nack.is_some() {
                    "NACKED"
                } else if acked == sent.version {
                    "SYNCED"
                } else {
                    "STALE"
                };
                Some(TypeStatus {
                    r#type: t.short().to_owned(),
                    state: label.to_owned(),
                    sent_version: sent.version.clone(),
                    acked_version: acked,
                    nack_message: nack.map(|n| n.message.clone()).unwrap_or_default(),
                    resources: sent.resources as u32,
                })
            })
            .collect();
    }

    /// Forgets a closed stream.
    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// A copy of every stream's status, oldest first.
    pub fn list(&self) -> Vec<ProxyStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn version_of(node: &Node) -> String {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    }
}
