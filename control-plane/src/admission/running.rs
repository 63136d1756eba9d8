//! Continuous evaluation: the pods already in the cluster are judged again
//! whenever what they are judged by changes (a SecurityPolicy, a
//! namespace's Pod Security labels, the pods themselves) and every
//! `recheck` period besides, as signatures and vulnerability reports change
//! in the registries without telling anyone. A pod admitted before a policy
//! existed, while the webhook was down under `failurePolicy: Ignore`, or
//! whose image has since been found vulnerable is reported, not tolerated
//! in silence: `rampart_policy_violating_pods`, a log line when a pod starts
//! violating, and the report `meshctl policy report` prints.
//!
//! Nothing is evicted: stopping a running workload is the operator's call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use rampart_api::policy::Report;
use tokio::sync::watch;

use super::validate::{PolicyInputs, judge};
use crate::metrics::{Metrics, ViolationLabels};
use crate::store::MeshStore;

/// Changes seen within this long are judged together.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// The namespaces the webhooks never see (the install's namespaceSelector
/// spares them, so the control plane can always start), besides the
/// control plane's own.
const UNJUDGED_NAMESPACES: [&str; 1] = ["kube-system"];

/// One pod with violations (or exemptions used).
#[derive(Debug, Clone)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub report: Report,
}

/// The last evaluation of every running pod.
#[derive(Debug, Clone, Default)]
pub struct RunningReport {
    /// When it was made; None before the first evaluation.
    pub evaluated_at: Option<SystemTime>,
    /// Pods judged, by namespace.
    pub checked: BTreeMap<String, usize>,
    /// Pods with violations or exemptions, by namespace then name.
    pub pods: Vec<PodReport>,
    /// Why the last evaluation could not be made, if it could not (the
    /// report is then the one before).
    pub error: Option<String>,
}

impl RunningReport {
    /// Pods judged in all.
    pub fn pods_checked(&self) -> usize {
        self.checked.values().sum()
    }
}

/// Where the evaluation takes its pods from.
pub struct PodSource {
    pub pods: Box<dyn Fn() -> Vec<Arc<Pod>> + Send + Sync>,
    /// Changes whenever a pod does.
    pub revision: watch::Receiver<u64>,
}

/// Starts the evaluation loop; the receiver always holds the latest report.
pub fn spawn(
    inputs: PolicyInputs,
    source: PodSource,
    metrics: Arc<Metrics>,
    recheck: Duration,
) -> watch::Receiver<Arc<RunningReport>> {
    let (tx, rx) = watch::channel(Arc::new(RunningReport::default()));
    tokio::spawn(async move {
        let mut pods = source.revision.clone();
        let mut policies = inputs.mesh.revision();
        let mut labels = match &inputs.namespaces {
            Some(n) => n.revision(),
            None => watch::channel(0).1,
        };
        loop {
            let previous = tx.borrow().clone();
            let report = evaluate(&inputs, &(source.pods)(), &previous).await;
            publish(&metrics, &report);
            tx.send_replace(Arc::new(report));
            // Wait for a change or the recheck period, then let the burst
            // that change starts (a rollout, a re-list) settle.
            tokio::select! {
                _ = pods.changed() => {}
                _ = policies.changed() => {}
                _ = labels.changed() => {}
                _ = tokio::time::sleep(recheck) => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
            pods.mark_unchanged();
            policies.mark_unchanged();
            labels.mark_unchanged();
        }
    });
    rx
}

/// Judges every pod that runs or will (not finished, not being deleted)
/// outside the unjudged namespaces.
async fn evaluate(
    inputs: &PolicyInputs,
    pods: &[Arc<Pod>],
    previous: &RunningReport,
) -> RunningReport {
    let before: BTreeMap<(&str, &str), &Report> = previous
        .pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), &p.report))
        .collect();
    let mut report = RunningReport {
        evaluated_at: Some(SystemTime::now()),
        ..Default::default()
    };
    for pod in pods {
        let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            continue;
        };
        if !judged(inputs, namespace, pod) {
            continue;
        }
        let value = match serde_json::to_value(pod.as_ref()) {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(namespace, name, error = %e, "a watched pod does not serialize");
                continue;
            }
        };
        let judged = match judge(inputs, namespace, &value).await {
            Ok(judged) => judged,
            Err(e) => {
                tracing::error!(error = %e, "reading the SecurityPolicies for the running pods");
                return RunningReport {
                    error: Some(format!("reading the security policies: {e}")),
                    ..previous.clone()
                };
            }
        };
        *report.checked.entry(namespace.clone()).or_default() += 1;
        if judged.findings.is_empty() && judged.exemptions.is_empty() {
            continue;
        }
        if !judged.findings.is_empty()
            && before
                .get(&(namespace.as_str(), name.as_str()))
                .map(|r| &r.findings)
                != Some(&judged.findings)
        {
            let policies: Vec<&str> = judged.findings.iter().map(|f| f.source.as_str()).collect();
            tracing::warn!(
                namespace,
                name,
                policies = policies.join(", "),
                "a running pod violates the security policy (meshctl policy report shows how)"
            );
        }
        report.pods.push(PodReport {
            namespace: namespace.clone(),
            name: name.clone(),
            report: judged,
        });
    }
    report
        .pods
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    report
}

/// Whether `pod` is one the webhook would have judged and still matters.
fn judged(inputs: &PolicyInputs, namespace: &str, pod: &Pod) -> bool {
    if namespace == inputs.root_namespace || UNJUDGED_NAMESPACES.contains(&namespace) {
        return false;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// `rampart_policy_violating_pods` and `rampart_policy_evaluated_pods`.
fn publish(metrics: &Metrics, report: &RunningReport) {
    let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    for pod in &report.pods {
        for finding in &pod.report.findings {
            *counts
                .entry((finding.source.clone(), finding.action.as_str()))
                .or_default() += 1;
        }
    }
    // Policies no pod violates any more (or deleted ones) drop out.
    metrics.violating_pods.clear();
    for ((policy, action), count) in counts {
        metrics
            .violating_pods
            .get_or_create(&ViolationLabels { policy, action })
            .set(count);
    }
    metrics.evaluated_pods.set(report.pods_checked() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_store::Mesh;
    use rampart_api::mesh::parse_documents;
    use serde_json::json;

    fn pod(namespace: &str, name: &str, uid: i64, phase: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "app", "image": "app:1",
                    "securityContext": {"runAsUser": uid, "runAsNonRoot": uid != 0}}]},
                "status": {"phase": phase},
            }))
            .unwrap(),
        )
    }

    async fn inputs(policy: &str) -> (PolicyInputs, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mesh = Mesh::Embedded(store.mesh().unwrap());
        mesh.apply(&parse_documents("policy.yaml", policy).unwrap(), false)
            .await
            .unwrap();
        let registry = rampart_api::oci::Registry::new(Vec::new(), Duration::from_secs(1)).unwrap();
        (
            PolicyInputs {
                mesh,
                namespaces: None,
                root_namespace: "rampart-system".into(),
                signatures: Arc::new(rampart_api::image_verifier::ImageVerifier::new(registry)),
            },
            dir,
        )
    }

    #[tokio::test]
    async fn running_pods_that_break_a_policy_are_reported_and_counted() {
        let (inputs, _dir) = inputs(
            "apiVersion: rampart.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: nonroot, namespace: shop}\nspec:\n  enforcementAction: audit\n  containers: {requireRunAsNonRoot: true}\n",
        )
        .await;
        let pods = [
            pod("shop", "root", 0, "Running"),
            pod("shop", "fine", 1000, "Running"),
            pod("shop", "done", 0, "Succeeded"),
            pod("other", "root", 0, "Running"),
            pod("kube-system", "root", 0, "Running"),
        ];
        let report = evaluate(&inputs, &pods, &RunningReport::default()).await;
        assert_eq!(report.pods_checked(), 3, "shop/root, shop/fine, other/root");
        assert_eq!(report.checked["shop"], 2);
        assert_eq!(report.pods.len(), 1, "{report:?}");
        assert_eq!(
            (
                report.pods[0].namespace.as_str(),
                report.pods[0].name.as_str()
            ),
            ("shop", "root")
        );
        let finding = &report.pods[0].report.findings[0];
        assert_eq!(finding.source, "SecurityPolicy shop/nonroot");
        assert!(
            finding
                .violations
                .iter()
                .any(|v| v.path == "spec.containers[0].securityContext.runAsUser"),
            "{finding:?}"
        );

        let metrics = Metrics::new();
        publish(&metrics, &report);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"rampart_policy_violating_pods{policy="SecurityPolicy shop/nonroot",action="audit"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("rampart_policy_evaluated_pods 3"), "{text}");
        // Once compliant, the series is gone rather than stuck at its last value.
        publish(&metrics, &RunningReport::default());
        assert!(!metrics.render().contains("rampart_policy_violating_pods{"));
    }
}
