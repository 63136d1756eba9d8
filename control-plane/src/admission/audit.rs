//! The audit trail of `/validate`: every pod reviewed with violations is
//! counted in `rampart_admission_policy_violations_total`, and, in a
//! cluster, the violations an `audit` policy let through become a Warning
//! Event in the pod's namespace (`kubectl get events` shows them). Events
//! are written in the background: a slow API server never slows a review.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use rampart_api::policy::{EnforcementAction, Report};

use super::review::truncate;
use crate::metrics::{Metrics, ViolationLabels};

/// An Event note is at most 1 kB.
const NOTE_BYTES: usize = 1000;

/// Where the audit trail goes.
#[derive(Clone)]
pub struct AuditTrail {
    metrics: Arc<Metrics>,
    events: Option<Recorder>,
}

impl AuditTrail {
    /// Metrics only (standalone), or metrics and Events through `client`.
    pub fn new(metrics: Arc<Metrics>, client: Option<kube::Client>, replica: &str) -> Self {
        let events = client.map(|client| {
            Recorder::new(
                client,
                Reporter {
                    controller: "rampart-control".into(),
                    instance: Some(replica.to_owned()),
                },
            )
        });
        Self { metrics, events }
    }

    /// Records what `report` found on pod `name` in `namespace`.
    pub fn record(&self, namespace: &str, name: &str, report: &Report) {
        for finding in &report.findings {
            self.metrics
                .policy_violations
                .get_or_create(&ViolationLabels {
                    policy: finding.source.clone(),
                    action: finding.action.as_str(),
                })
                .inc();
        }
        let audited = report.lines(EnforcementAction::Audit);
        if audited.is_empty() {
            return;
        }
        tracing::info!(
            namespace,
            pod = name,
            violations = audited.len(),
            "admitted with security policy violations (audit)"
        );
        let Some(recorder) = self.events.clone() else {
            return;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "PolicyViolation".into(),
            note: Some(truncate(&audited.join("\n"), NOTE_BYTES)),
            action: "Admit".into(),
            secondary: None,
        };
        // The pod may not exist yet (this is its CREATE): the reference
        // names it so `kubectl get events --field-selector
        // regarding.name=<pod>` finds the Event.
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..Default::default()
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &pod).await {
                tracing::warn!(error = %e, "recording a policy violation Event failed");
            }
        });
    }
}
