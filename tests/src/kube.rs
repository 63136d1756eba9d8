//! The real kube-apiserver the Kubernetes tests run against, started by
//! `scripts/kube-test-env.sh run -- cargo test` (the test script does it).
//! Without it these tests fail and say how to get one; they never skip.
//! The API server has no controllers, scheduler or kubelet, so each test
//! makes what it needs (namespaces, ServiceAccounts) itself, in a namespace
//! of its own.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};

/// A client for the test API server (from `KUBECONFIG`).
pub async fn client() -> kube::Client {
    assert!(
        std::env::var_os("KUBE_TEST_SERVER").is_some(),
        "this test needs the real kube-apiserver: run it as \
         `scripts/kube-test-env.sh run -- cargo test ...` (scripts/test.sh does)"
    );
    kube::Client::try_default()
        .await
        .expect("a client for the test kube-apiserver (KUBECONFIG)")
}

/// A new namespace `<prefix>-<random>` with `labels`.
pub async fn namespace(client: &kube::Client, prefix: &str, labels: &[(&str, &str)]) -> String {
    let name = format!("{prefix}-{}", suffix());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating a namespace");
    name
}

/// Creates ServiceAccount `name` in `namespace`.
pub async fn service_account(client: &kube::Client, namespace: &str, name: &str) {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await
        .expect("creating a ServiceAccount");
}

/// A token for ServiceAccount `name` (TokenRequest, as the kubelet
/// projects it) with `audience`, optionally bound to a Pod.
pub async fn token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audience: &str,
    bound_pod: Option<(&str, &str)>,
) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            expiration_seconds: Some(600),
            bound_object_ref: bound_pod.map(|(pod, uid)| {
                k8s_openapi::api::authentication::v1::BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.to_owned()),
                    uid: Some(uid.to_owned()),
                }
            }),
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .and_then(|s| s.token)
        .expect("a TokenRequest answer has a token")
}

/// A random suffix for cluster-wide names, so tests never collide.
pub fn suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "{:08x}",
        RandomState::new().hash_one(std::time::SystemTime::now()) as u32
    )
}

/// Installs (server-side apply, idempotent) the mesh CRDs from
/// `deploy/crds/rampart.dev.yaml` and waits until the API server serves them.
pub async fn install_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/crds/rampart.dev.yaml"
    );
    let crds: Vec<CustomResourceDefinition> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("rampart-tests").force(),
            &Patch::Apply(crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
    }
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap();
        let established = crate::eventually(100, || async {
            api.get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        })
        .await;
        assert!(established, "CRD {name} never became established");
    }
}

/// A `rampart-control --kubernetes` on `dir` (CRDs installed first: its
/// mesh model is custom resources), with `extra` flags.
pub async fn control_plane(
    client: &kube::Client,
    dir: &std::path::Path,
    extra: &[&str],
) -> crate::ControlPlane {
    install_crds(client).await;
    // A Lease of its own unless the test shares one between replicas.
    let lease = format!("rampart-test-{}", suffix());
    let mut args = vec!["--kubernetes", "--namespace", "default"];
    if !extra.contains(&"--leader-lease") {
        args.extend(["--leader-lease", &lease]);
    }
    args.extend_from_slice(extra);
    crate::ControlPlane::start(dir, &args).await
}

/// Control plane replicas that share a Lease, a CA Secret and a webhook
/// configuration, all named after one test's suffix.
pub struct Replicas {
    pub client: kube::Client,
    pub lease: String,
    pub secret: String,
    pub webhooks: String,
}

impl Replicas {
    /// Names made of `prefix` and a fresh suffix.
    pub async fn new(prefix: &str) -> Self {
        let id = suffix();
        Self {
            client: client().await,
            lease: format!("rampart-{prefix}-{id}"),
            secret: format!("rampart-ca-{prefix}-{id}"),
            webhooks: format!("rampart-{prefix}-injector-{id}"),
        }
    }

    /// Starts replica `replica` on `dir` with `extra` flags.
    pub async fn start(
        &self,
        replica: &str,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> crate::ControlPlane {
        let mut flags = vec![
            "--leader-lease",
            &self.lease,
            "--replica-id",
            replica,
            "--ca-secret",
            &self.secret,
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-configuration",
            &self.webhooks,
        ];
        flags.extend_from_slice(extra);
        control_plane(&self.client, dir, &flags).await
    }
}

/// Whether MutatingWebhookConfiguration `name`'s first webhook trusts
/// exactly `bundle_pem`.
pub async fn has_ca_bundle(client: &kube::Client, name: &str, bundle_pem: &str) -> bool {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .unwrap();
    config
        .webhooks
        .unwrap_or_default()
        .first()
        .and_then(|w| w.client_config.ca_bundle.as_ref())
        .is_some_and(|b| b.0 == bundle_pem.as_bytes())
}

/// Empties the first webhook's caBundle, as a careless `kubectl apply` would.
pub async fn reset_ca_bundle(client: &kube::Client, name: &str) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube::api::{Patch, PatchParams};
    let reset = serde_json::json!([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": ""}]);
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(reset).unwrap()),
        )
        .await
        .unwrap();
}

/// Creates `pod` in `ns`, with the `default` ServiceAccount it runs as
/// (no controller makes it here).
pub async fn create_pod(client: &kube::Client, ns: &str, pod: &k8s_openapi::api::core::v1::Pod) {
    service_account(client, ns, "default").await;
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), pod)
        .await
        .unwrap();
}
