//! `meshctl install`: Rampart in a cluster. The manifests are built here,
//! from typed Kubernetes objects, and nowhere else: `deploy/rampart.yaml` is
//! their rendering with the defaults, and the Helm chart's templates are the
//! same rendering with Helm expressions in place of the values (both files
//! are checked against this code by a test).
//!
//! What is installed, in `rampart-system` by default: the mesh CRDs; a
//! ServiceAccount with least-privilege RBAC (cluster-wide: TokenReview,
//! reading Services, EndpointSlices, Pods and Namespaces, the mesh custom
//! resources, the injector's webhook configuration, the root bundle
//! ConfigMaps; in its namespace only: its Lease and its CA Secret); a
//! Deployment of replicated control planes with probes and a restricted
//! securityContext; a PodDisruptionBudget; the Service; the injection
//! webhook, the image digest pinning webhook and the security policy's
//! validating webhook, all of which leave the control plane's own namespace
//! and kube-system alone.

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use serde_json::{Value, json};

/// What `meshctl install` is told.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Print the manifests instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// The namespace of the control plane.
    #[arg(long, default_value = "rampart-system")]
    namespace: String,
    /// Control plane replicas (two or more for availability).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=100))]
    replicas: u16,
    /// The control plane image.
    #[arg(long, default_value = concat!("rampart/rampart-control:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// The image injected sidecars run.
    #[arg(long, default_value = concat!("rampart/rampart-proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// What the API server does with a pod when no control plane replica
    /// answers the security policy webhook: Fail refuses it (nothing
    /// unchecked runs), Ignore admits it unchecked.
    #[arg(long, default_value = "Fail", value_parser = ["Fail", "Ignore"])]
    policy_failure_policy: String,
    /// Wait until the control plane is available (applying only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wait: bool,
    /// How long to wait.
    #[arg(long, default_value = "5m", value_parser = rampart_api::duration::parse)]
    timeout: Duration,
}

/// The values the manifests are rendered with.
pub struct Values {
    pub namespace: String,
    pub replicas: Value,
    pub image: String,
    pub proxy_image: String,
    pub trust_domain: String,
    pub policy_failure_policy: String,
}

impl Values {
    fn of(args: &InstallArgs) -> Self {
        Self {
            namespace: args.namespace.clone(),
            replicas: json!(args.replicas),
            image: args.image.clone(),
            proxy_image: args.proxy_image.clone(),
            trust_domain: args.trust_domain.clone(),
            policy_failure_policy: args.policy_failure_policy.clone(),
        }
    }

    /// The defaults, as `deploy/rampart.yaml` has them.
    #[cfg(test)]
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: InstallArgs,
        }
        Self::of(&Defaults::parse_from(["meshctl"]).args)
    }
}

const NAME: &str = "rampart-control";
const WEBHOOK: &str = "rampart-sidecar-injector";
const POLICY_WEBHOOK: &str = "rampart-security-policy";
const PORTS: [(&str, u16); 3] = [("grpc", 15012), ("metrics", 15014), ("webhook", 15017)];

/// Every object, in the order they are applied.
pub fn manifests(v: &Values, with_namespace: bool) -> Vec<Value> {
    let ns = &v.namespace;
    let labels = json!({"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "rampart"});
    let meta = |name: &str| json!({"name": name, "namespace": ns, "labels": labels});
    let cluster_meta = |name: &str| json!({"name": name, "labels": labels});
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    let read = ["get", "list", "watch"];
    let mut out = Vec::new();
    if with_namespace {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}));
    }
    let crds = rampart_api::mesh::crd::crds();
    // The control plane reads and writes every mesh kind.
    let plurals: Vec<&str> = crds.iter().map(|c| c.spec.names.plural.as_str()).collect();
    let mesh_kinds = rule(
        &["rampart.dev"],
        &plurals,
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    );
    out.extend(
        crds.iter()
            .map(|c| serde_json::to_value(c).expect("CRDs serialize")),
    );
    out.push(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME)}));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": cluster_meta(NAME),
        "rules": [
            rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            rule(&[""], &["services", "pods", "namespaces"], &read),
            rule(&["discovery.k8s.io"], &["endpointslices"], &read),
            mesh_kinds,
            json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
                   "verbs": ["get", "list", "watch", "update"], "resourceNames": [WEBHOOK]}),
            json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
                   "verbs": ["get", "list", "watch", "update"], "resourceNames": [POLICY_WEBHOOK]}),
            // list/watch cannot be limited to one name; they only read.
            rule(&["admissionregistration.k8s.io"], &["mutatingwebhookconfigurations", "validatingwebhookconfigurations"], &["list", "watch"]),
            // The audit trail of the security policy.
            rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
            rule(&[""], &["configmaps"], &["get", "create", "patch"]),
        ]
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": cluster_meta(NAME),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(NAME),
        "rules": [
            rule(&["coordination.k8s.io"], &["leases"], &["get", "create", "update"]),
            // update: a root rotation rewrites the CA Secret.
            json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update"], "resourceNames": ["rampart-ca"]}),
            // create cannot be limited to a name (the object does not exist yet).
            rule(&[""], &["secrets"], &["create"]),
        ]
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(NAME),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]
    }));
    let service_host = format!("{NAME}.{ns}.svc");
    // The control plane's own namespace (it must be able to start the
    // webhooks' replicas) and kube-system are left alone by both webhooks.
    let not_system = json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [ns.as_str(), "kube-system"]});
    let env_field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    out.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(NAME),
        "spec": {
            "replicas": v.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": labels, "annotations": {"rampart.dev/inject": "disabled"}},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": NAME, "image": v.image,
                        "args": [
                            "--kubernetes", "--data-dir=/var/lib/rampart",
                            format!("--trust-domain={}", v.trust_domain),
                            "--grpc-addr=0.0.0.0:15012", "--metrics-addr=0.0.0.0:15014",
                            "--webhook-addr=0.0.0.0:15017",
                            format!("--webhook-configuration={WEBHOOK}"),
                            format!("--validating-webhook-configuration={POLICY_WEBHOOK}"),
                            "--ca-secret=rampart-ca",
                            format!("--serving-host={service_host}"),
                            format!("--sidecar-image={}", v.proxy_image),
                            format!("--sidecar-control-plane={service_host}:15012"),
                        ],
                        "env": [env_field("POD_NAME", "metadata.name"), env_field("POD_NAMESPACE", "metadata.namespace")],
                        "ports": PORTS.iter().map(|(n, p)| json!({"name": n, "containerPort": p})).collect::<Vec<_>>(),
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 6},
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/rampart"}]
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}]
                }
            }
        }
    }));
    out.push(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(NAME),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}}}
    }));
    out.push(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta(NAME),
        "spec": {
            "selector": {"app.kubernetes.io/name": NAME},
            "ports": [
                {"name": "grpc", "port": 15012, "targetPort": "grpc", "appProtocol": "grpc"},
                {"name": "metrics", "port": 15014, "targetPort": "metrics", "appProtocol": "http"},
                {"name": "https-webhook", "port": 443, "targetPort": "webhook"}
            ]
        }
    }));
    out.push(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": cluster_meta(WEBHOOK),
        "webhooks": [{
            "name": "inject.rampart.dev",
            // The caBundle is the control plane's to keep (the mesh root).
            "clientConfig": {"service": {"name": NAME, "namespace": ns, "path": "/inject", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [
                {"key": "rampart.dev/inject", "operator": "In", "values": ["enabled"]},
                not_system
            ]},
            "objectSelector": {"matchExpressions": [{"key": "rampart.dev/inject", "operator": "NotIn", "values": ["disabled"]}]},
            // A pod created while no replica answers would run without its
            // sidecar: refuse it instead (the PodDisruptionBudget and the
            // replicas keep the webhook up).
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "admissionReviewVersions": ["v1"]
        }, {
            // Signed images' tags rewritten to the verified digest
            // (images.pinDigest). Only a rewrite: /validate is the gate,
            // so a pod is not refused when this one cannot answer.
            "name": "images.rampart.dev",
            "clientConfig": {"service": {"name": NAME, "namespace": ns, "path": "/pin-images", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [not_system]},
            "failurePolicy": "Ignore",
            // Again after the injector, whose sidecar image counts too.
            "reinvocationPolicy": "IfNeeded",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "admissionReviewVersions": ["v1"]
        }]
    }));
    out.push(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": cluster_meta(POLICY_WEBHOOK),
        "webhooks": [{
            "name": "policy.rampart.dev",
            "clientConfig": {"service": {"name": NAME, "namespace": ns, "path": "/validate", "port": 443}},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods", "pods/ephemeralcontainers"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [not_system]},
            "failurePolicy": v.policy_failure_policy,
            "sideEffects": "None",
            // Answers come from memory; registry lookups are bounded below this.
            "timeoutSeconds": 5,
            "admissionReviewVersions": ["v1"]
        }]
    }));
    out
}

/// The chart's `values.yaml`: the defaults.
#[cfg(test)]
pub fn helm_values() -> String {
    let d = Values::defaults();
    let values = json!({
        "image": d.image, "proxyImage": d.proxy_image,
        "trustDomain": d.trust_domain, "replicas": d.replicas,
        "policyFailurePolicy": d.policy_failure_policy,
    });
    let header = "# Generated by meshctl (meshctl/src/install.rs); do not edit.\n";
    format!(
        "{header}{}",
        serde_saphyr::to_string(&values).expect("values serialize")
    )
}

/// The manifests as YAML.
pub fn render(v: &Values, with_namespace: bool) -> String {
    serde_saphyr::to_string_multiple(&manifests(v, with_namespace)).expect("manifests serialize")
}

/// The Helm chart's one template: the rendering with Helm expressions for
/// the values (the namespace comes from the release).
#[cfg(test)]
pub fn helm_template() -> String {
    let values = Values {
        namespace: "{{ .Release.Namespace }}".into(),
        replicas: json!("REPLICAS"),
        image: "{{ .Values.image }}".into(),
        proxy_image: "{{ .Values.proxyImage }}".into(),
        trust_domain: "{{ .Values.trustDomain }}".into(),
        policy_failure_policy: "{{ .Values.policyFailurePolicy }}".into(),
    };
    let mut objects = manifests(&values, false);
    // CRDs go in the chart's crds/ directory (Helm installs them first).
    objects.retain(|o| o["kind"] != "CustomResourceDefinition");
    let yaml = serde_saphyr::to_string_multiple(&objects).expect("manifests serialize");
    let header = "# Generated by meshctl (meshctl/src/install.rs); do not edit.\n";
    format!(
        "{header}{}",
        yaml.replace("REPLICAS", "{{ .Values.replicas }}")
    )
}

pub async fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let values = Values::of(args);
    if args.dry_run {
        print!("{}", render(&values, true));
        return Ok(());
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG or in-cluster)")?;
    let params = PatchParams::apply("meshctl").force();
    let mut discovery = Discovery::new(client.clone()).run().await?;
    for object in manifests(&values, true) {
        let object: DynamicObject = serde_json::from_value(object)?;
        let types = object.types.clone().context("an object without a kind")?;
        let gvk = kube::api::GroupVersionKind::try_from(&types)?;
        let found = discovery.resolve_gvk(&gvk);
        let (resource, capabilities) = match found {
            Some(found) => found,
            None => {
                // The CRDs just applied are not in the discovery taken before.
                discovery = Discovery::new(client.clone()).run().await?;
                discovery
                    .resolve_gvk(&gvk)
                    .with_context(|| format!("the cluster does not serve {}", types.kind))?
            }
        };
        let name = object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(client.clone(), &args.namespace, &resource),
        };
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("applying {} {name}", types.kind))?;
        println!("{}/{name} applied", resource.plural);
        if types.kind == "CustomResourceDefinition" {
            wait_established(&client, &name).await?;
        }
    }
    if args.wait {
        wait_available(&client, &args.namespace, args.timeout).await?;
    }
    Ok(())
}

async fn wait_established(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for _ in 0..100 {
        let established = api.get(name).await?.status.is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("CRD {name} was not established within 10 s")
}

async fn wait_available(
    client: &kube::Client,
    namespace: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api = Api::<Deployment>::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let status = api.get(NAME).await?.status.unwrap_or_default();
        let (ready, wanted) = (
            status.available_replicas.unwrap_or(0),
            status.replicas.unwrap_or(0),
        );
        let line = format!("waiting for {NAME}: {ready}/{wanted} replicas available");
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if wanted > 0 && ready >= 1 {
            println!("{NAME} is available ({ready}/{wanted})");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{NAME} not available after {}s ({ready}/{wanted} replicas); see `kubectl -n {namespace} describe deployment {NAME}`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `file` (under the repository root) is `generated`, or is rewritten
    /// to it when RAMPART_UPDATE_DEPLOY is set.
    fn matches_file(file: &str, generated: &str) {
        let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("RAMPART_UPDATE_DEPLOY").is_some() {
            let path = std::path::Path::new(&path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{file} is not what meshctl generates; run `RAMPART_UPDATE_DEPLOY=1 cargo test -p meshctl install` and commit it"
        );
    }

    #[test]
    fn deploy_has_the_manifests_and_the_chart_meshctl_generates() {
        let header =
            "# Generated by `meshctl install --dry-run` (meshctl/src/install.rs); do not edit.\n";
        matches_file(
            "deploy/rampart.yaml",
            &format!("{header}{}", render(&Values::defaults(), true)),
        );
        matches_file(
            "deploy/helm/rampart/templates/rampart.yaml",
            &helm_template(),
        );
        matches_file(
            "deploy/helm/rampart/crds/rampart.dev.yaml",
            &rampart_api::mesh::crd::crds_yaml(),
        );
        matches_file("deploy/helm/rampart/values.yaml", &helm_values());
    }

    #[test]
    fn the_webhook_spares_the_control_plane_and_kube_system() {
        let objects = manifests(&Values::defaults(), true);
        let webhook = objects
            .iter()
            .find(|o| o["kind"] == "MutatingWebhookConfiguration")
            .unwrap();
        let excluded = &webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][1];
        assert_eq!(excluded["operator"], "NotIn");
        assert_eq!(excluded["values"], json!(["rampart-system", "kube-system"]));
        let pin = &webhook["webhooks"][1];
        assert_eq!(pin["clientConfig"]["service"]["path"], "/pin-images");
        assert_eq!(pin["failurePolicy"], "Ignore", "/validate is the gate");
        assert_eq!(
            pin["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["rampart-system", "kube-system"])
        );
        let policy = objects
            .iter()
            .find(|o| o["kind"] == "ValidatingWebhookConfiguration")
            .unwrap();
        let excluded = &policy["webhooks"][0]["namespaceSelector"]["matchExpressions"][0];
        assert_eq!(excluded["values"], json!(["rampart-system", "kube-system"]));
        assert_eq!(policy["webhooks"][0]["failurePolicy"], "Fail");
        let helm = helm_template();
        assert!(helm.contains("replicas: {{ .Values.replicas }}"), "{helm}");
        assert!(!helm.contains("CustomResourceDefinition"));
    }
}
