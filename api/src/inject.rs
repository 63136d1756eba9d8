//! The sidecar a pod gets: one engine for the mutating webhook (`/inject`)
//! and for `meshctl inject` on manifests, so what CI renders offline is what
//! the cluster admits.
//!
//! A pod gets:
//! * `rampart-init`, an init container that installs the iptables capture
//!   (`rampart-proxy init`; it needs NET_ADMIN and NET_RAW, so namespaces
//!   that forbid them need a CNI-based capture instead, or
//!   `rampart.dev/capture: none`);
//! * `rampart-proxy`, as a native sidecar (an init container with
//!   `restartPolicy: Always`, Kubernetes 1.29+: it starts before the app and
//!   stops after it) or, on older clusters, as the first container with a
//!   postStart hook (`rampart-proxy wait`) that holds the app back until
//!   the proxy is ready;
//! * the projected ServiceAccount token it proves its identity with
//!   (audience `rampart-ca`), the mesh's root bundle (ConfigMap
//!   `rampart-root-ca`), and the SPIFFE Workload API socket, which the app
//!   containers get too (`SPIFFE_ENDPOINT_SOCKET`).
//!
//! The sidecar itself passes the `restricted` Pod Security level: non-root,
//! read-only root filesystem, no privilege escalation, every capability
//! dropped, RuntimeDefault seccomp.
//!
//! The engine works on the pod as JSON, not on a typed Pod: fields this
//! version of the API types does not know are kept, and the patch only adds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PodSpec, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};

/// The sidecar container's name; a pod that has one is already injected.
pub const PROXY_CONTAINER: &str = "rampart-proxy";
/// The init container that installs the traffic capture.
pub const INIT_CONTAINER: &str = "rampart-init";
/// Pod label or annotation: `disabled` opts a pod out (`enabled` opts it in
/// where the webhook selects pods by label).
pub const INJECT_KEY: &str = "rampart.dev/inject";
/// Pod annotation: `none` skips the iptables capture (no init container).
pub const CAPTURE_KEY: &str = "rampart.dev/capture";
/// Pod annotation: the mesh service the pod serves (default: its
/// `app.kubernetes.io/name` or `app` label).
pub const SERVICE_KEY: &str = "rampart.dev/service";
/// Pod annotation written on injection.
pub const STATUS_KEY: &str = "rampart.dev/status";
/// The audience of the projected token (what the CA asks TokenReview for).
pub const TOKEN_AUDIENCE: &str = "rampart-ca";
/// The ConfigMap holding the mesh's root bundle (`bundle.pem`).
pub const ROOT_CA_CONFIGMAP: &str = "rampart-root-ca";

/// The proxy's UID: `rampart-init` leaves its traffic alone.
const PROXY_UID: i64 = 1337;
const TOKEN_DIR: &str = "/var/run/secrets/rampart";
const BUNDLE_DIR: &str = "/var/run/rampart/bundle";
const WORKLOAD_DIR: &str = "/var/run/rampart/workload";
const ADMIN_PORT: u16 = 15000;

/// What every injected sidecar is configured with.
#[derive(Debug, Clone)]
pub struct Template {
    /// The image with `rampart-proxy` on its PATH.
    pub image: String,
    /// Where the proxy reaches the control plane (host:port).
    pub control_plane: String,
    /// Native sidecar (Kubernetes 1.29+) or a regular first container.
    pub native_sidecar: bool,
}

/// What injection did to one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pod with the sidecar.
    Injected(Value),
    /// Left as it was, and why.
    Skipped(String),
}

/// Why a pod cannot be injected: a malformed object, said precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InjectError(String);

/// Injects the sidecar into a pod (or a pod template: `metadata` and `spec`).
pub fn inject_pod(pod: &Value, template: &Template) -> Result<Outcome, InjectError> {
    let spec_value = pod
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| InjectError("the pod has no spec object".into()))?;
    let spec: PodSpec = serde_path_to_error::deserialize(spec_value)
        .map_err(|e| InjectError(format!("spec.{}: {}", e.path(), e.inner())))?;
    if spec.containers.is_empty() {
        return Err(InjectError("spec.containers is empty".into()));
    }
    let metadata = pod.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let labels = string_map(&metadata, "labels")?;
    let annotations = string_map(&metadata, "annotations")?;
    if let Some(reason) = skip_reason(&spec, &labels, &annotations) {
        return Ok(Outcome::Skipped(reason));
    }
    let capture = annotations.get(CAPTURE_KEY).map(String::as_str) != Some("none");
    let service = annotations
        .get(SERVICE_KEY)
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .or_else(|| labels.get("app"));
    let proxy = proxy_container(template, &spec, &labels, service, capture);

    let mut pod = pod.clone();
    let spec = pod["spec"].as_object_mut().expect("checked above");
    // The app containers reach the Workload API through the shared socket.
    for container in array(spec, "containers")?.iter_mut() {
        add_workload_socket(container)?;
    }
    let mut init = Vec::new();
    if capture {
        init.push(to_value(init_container(template)));
    }
    if template.native_sidecar {
        init.push(to_value(Container {
            restart_policy: Some("Always".into()),
            ..proxy
        }));
    } else {
        // The kubelet starts containers in order and the next one only after
        // this one's postStart hook returns: the app waits for the proxy.
        let mut proxy = to_value(proxy);
        proxy["lifecycle"] = json!({"postStart": {"exec": {"command": ["rampart-proxy", "wait"]}}});
        array(spec, "containers")?.insert(0, proxy);
    }
    // First, so the capture is in place and the proxy up before any other
    // init container (or the app) opens a connection.
    let inits = array(spec, "initContainers")?;
    for (i, c) in init.into_iter().enumerate() {
        inits.insert(i, c);
    }
    array(spec, "volumes")?.extend(volumes().into_iter().map(to_value));

    let metadata = pod
        .as_object_mut()
        .expect("a pod with a spec is an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let annotations = metadata
        .as_object_mut()
        .ok_or_else(|| InjectError("metadata is not an object".into()))?
        .entry("annotations")
        .or_insert_with(|| json!({}));
    annotations
        .as_object_mut()
        .ok_or_else(|| InjectError("metadata.annotations is not an object".into()))?
        .insert(STATUS_KEY.into(), json!("injected"));
    Ok(Outcome::Injected(pod))
}

/// The JSON Patch that turns `original` into `injected`.
pub fn patch(original: &Value, injected: &Value) -> json_patch::Patch {
    json_patch::diff(original, injected)
}

/// Why a pod is left alone, if it is.
fn skip_reason(
    spec: &PodSpec,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<String> {
    let opted_out = |m: &BTreeMap<String, String>| {
        m.get(INJECT_KEY)
            .is_some_and(|v| matches!(v.as_str(), "disabled" | "false"))
    };
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    if all.clone().any(|c| c.name == PROXY_CONTAINER) {
        return Some("already injected".into());
    }
    if opted_out(labels) || opted_out(annotations) {
        return Some(format!("the pod opts out ({INJECT_KEY}: disabled)"));
    }
    if spec.host_network == Some(true) {
        return Some("the pod uses the host network; capturing it would capture the node".into());
    }
    None
}

fn proxy_container(
    template: &Template,
    spec: &PodSpec,
    labels: &BTreeMap<String, String>,
    service: Option<&String>,
    capture: bool,
) -> Container {
    let mut args = vec![
        format!("--control-plane={}", template.control_plane),
        format!("--trust-anchor={BUNDLE_DIR}/bundle.pem"),
        format!("--token-file={TOKEN_DIR}/token"),
        format!("--workload-api-socket={WORKLOAD_DIR}/socket"),
        format!("--admin-addr=127.0.0.1:{ADMIN_PORT}"),
        // Expanded by the kubelet from the env below.
        "--node-id=$(POD_NAME)".to_owned(),
        "--address=$(POD_IP)".to_owned(),
        "--threads=2".to_owned(),
    ];
    if capture {
        args.push("--capture".into());
    }
    if let Some(service) = service {
        args.push(format!("--service={service}"));
        // Named container ports are the service's ports; captured traffic
        // arrives on the port it was sent to and goes to the app on loopback.
        for port in spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        {
            if let Some(name) = &port.name {
                args.push(format!("--port={name}={}", port.container_port));
                args.push(format!("--app-port={name}={}", port.container_port));
            }
        }
    }
    for (k, v) in labels {
        // Controller bookkeeping, not workload identity.
        if k != "pod-template-hash" && k != "controller-revision-hash" {
            args.push(format!("--label={k}={v}"));
        }
    }
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(template.image.clone()),
        command: Some(vec!["rampart-proxy".into()]),
        args: Some(args),
        env: Some(vec![
            field("POD_NAME", "metadata.name"),
            field("POD_NAMESPACE", "metadata.namespace"),
            field("POD_IP", "status.podIP"),
        ]),
        resources: Some(resources(("100m", "64Mi"), Some("256Mi"))),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            ..restricted()
        }),
        volume_mounts: Some(vec![
            mount("rampart-token", TOKEN_DIR),
            mount("rampart-root-ca", BUNDLE_DIR),
            VolumeMount {
                read_only: Some(false),
                ..mount("rampart-workload", WORKLOAD_DIR)
            },
        ]),
        ..Default::default()
    }
}

fn init_container(template: &Template) -> Container {
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(template.image.clone()),
        command: Some(vec!["rampart-proxy".into(), "init".into()]),
        args: Some(vec![
            format!("--proxy-uid={PROXY_UID}"),
            format!("--exclude-inbound-ports={ADMIN_PORT}"),
        ]),
        resources: Some(resources(("10m", "16Mi"), Some("64Mi"))),
        // iptables needs root with NET_ADMIN and NET_RAW in the pod's
        // network namespace, and nothing else.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..restricted()
        }),
        ..Default::default()
    }
}

/// The `restricted` Pod Security level's container settings.
fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn resources((cpu, memory): (&str, &str), memory_limit: Option<&str>) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), Quantity(cpu.into())),
                ("memory".to_owned(), Quantity(memory.into())),
            ]
            .into(),
        ),
        limits: memory_limit.map(|m| [("memory".to_owned(), Quantity(m.into()))].into()),
        ..Default::default()
    }
}

fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: "rampart-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(3600),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "rampart-root-ca".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ROOT_CA_CONFIGMAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "rampart-workload".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// Gives an app container the Workload API socket (read-only directory,
/// and the standard variable naming it).
fn add_workload_socket(container: &mut Value) -> Result<(), InjectError> {
    let container = container
        .as_object_mut()
        .ok_or_else(|| InjectError("a container is not an object".into()))?;
    array(container, "volumeMounts")?.push(to_value(mount("rampart-workload", WORKLOAD_DIR)));
    let env = array(container, "env")?;
    if !env.iter().any(|e| e["name"] == "SPIFFE_ENDPOINT_SOCKET") {
        env.push(json!({"name": "SPIFFE_ENDPOINT_SOCKET", "value": format!("unix://{WORKLOAD_DIR}/socket")}));
    }
    Ok(())
}

/// The array at `key`, created empty if absent.
fn array<'a>(
    object: &'a mut serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let value = object.entry(key).or_insert_with(|| json!([]));
    if value.is_null() {
        *value = json!([]);
    }
    value
        .as_array_mut()
        .ok_or_else(|| InjectError(format!("{key} is not a list")))
}

fn string_map(metadata: &Value, key: &str) -> Result<BTreeMap<String, String>, InjectError> {
    match metadata.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| InjectError(format!("metadata.{key}: {e}"))),
    }
}

fn to_value<T: serde::Serialize>(t: T) -> Value {
    serde_json::to_value(t).expect("API types serialize")
}

/// Where the pod template of a workload manifest is: the object itself for
/// a Pod, `spec.template` for Deployments, StatefulSets, DaemonSets,
/// ReplicaSets and Jobs, `spec.jobTemplate.spec.template` for CronJobs;
/// None for kinds without pods.
pub fn pod_template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects the sidecar into the pod template of a workload manifest (any
/// kind [`pod_template_pointer`] knows), in place. Ok(None): a kind without
/// pods, left as it is.
pub fn inject_manifest(
    object: &mut Value,
    template: &Template,
) -> Result<Option<Outcome>, InjectError> {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let Some(pointer) = pod_template_pointer(&kind) else {
        return Ok(None);
    };
    let pod = object.pointer_mut(pointer).ok_or_else(|| {
        InjectError(format!(
            "a {kind} needs a pod template at {}",
            pointer.replace('/', ".")
        ))
    })?;
    let outcome = inject_pod(pod, template)?;
    if let Outcome::Injected(injected) = &outcome {
        *pod = injected.clone();
    }
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            image: "registry.example/rampart-proxy:1".into(),
            control_plane: "rampart-control.rampart-system.svc:15012".into(),
            native_sidecar: true,
        }
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {
                "serviceAccountName": "web",
                "containers": [{"name": "app", "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}]}],
                "futureField": {"kept": true}
            }
        })
    }

    fn injected(pod: &Value, template: &Template) -> Value {
        match inject_pod(pod, template).unwrap() {
            Outcome::Injected(v) => v,
            Outcome::Skipped(why) => panic!("skipped: {why}"),
        }
    }

    #[test]
    fn a_pod_gets_a_native_sidecar_after_the_capture_and_keeps_what_it_had() {
        let out = injected(&pod(), &template());
        let inits = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits[0]["name"], INIT_CONTAINER);
        assert_eq!(inits[1]["name"], PROXY_CONTAINER);
        assert_eq!(inits[1]["restartPolicy"], "Always");
        let args: Vec<&str> = inits[1]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for expected in [
            "--service=web",
            "--port=http=8080",
            "--app-port=http=8080",
            "--capture",
            "--label=app=web",
            "--token-file=/var/run/secrets/rampart/token",
        ] {
            assert!(args.contains(&expected), "{expected} missing from {args:?}");
        }
        assert!(!args.iter().any(|a| a.contains("pod-template-hash")));
        assert_eq!(out["spec"]["futureField"], json!({"kept": true}));
        let app = &out["spec"]["containers"][0];
        assert_eq!(app["name"], "app");
        assert_eq!(app["env"][0]["name"], "SPIFFE_ENDPOINT_SOCKET");
        let token = out["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "rampart-token")
            .unwrap();
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            TOKEN_AUDIENCE
        );
        assert_eq!(out["metadata"]["annotations"][STATUS_KEY], "injected");
    }

    #[test]
    fn the_sidecar_passes_the_restricted_level() {
        let out = injected(&pod(), &template());
        let sc = &out["spec"]["initContainers"][1]["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert!(sc["capabilities"].get("add").is_none_or(Value::is_null));
    }

    #[test]
    fn older_clusters_get_the_proxy_as_the_first_container() {
        let out = injected(
            &pod(),
            &Template {
                native_sidecar: false,
                ..template()
            },
        );
        assert_eq!(out["spec"]["containers"][0]["name"], PROXY_CONTAINER);
        assert_eq!(
            out["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"],
            json!(["rampart-proxy", "wait"])
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "app");
        assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn injection_is_idempotent_and_honours_opt_outs() {
        let once = injected(&pod(), &template());
        assert_eq!(
            inject_pod(&once, &template()).unwrap(),
            Outcome::Skipped("already injected".into())
        );
        let mut opted_out = pod();
        opted_out["metadata"]["annotations"] = json!({INJECT_KEY: "disabled"});
        assert!(matches!(
            inject_pod(&opted_out, &template()).unwrap(),
            Outcome::Skipped(_)
        ));
        let mut host = pod();
        host["spec"]["hostNetwork"] = json!(true);
        assert!(matches!(
            inject_pod(&host, &template()).unwrap(),
            Outcome::Skipped(_)
        ));
        let mut no_capture = pod();
        no_capture["metadata"]["annotations"] = json!({CAPTURE_KEY: "none"});
        let out = injected(&no_capture, &template());
        let inits = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0]["name"], PROXY_CONTAINER);
    }

    #[test]
    fn malformed_pods_say_what_is_wrong() {
        for (pod, expected) in [
            (json!({"metadata": {}}), "no spec"),
            (
                json!({"spec": {"containers": []}}),
                "spec.containers is empty",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": "x"}]}]}}),
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                json!({"metadata": {"labels": ["a"]}, "spec": {"containers": [{"name": "a"}]}}),
                "metadata.labels",
            ),
        ] {
            let err = inject_pod(&pod, &template()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn workload_manifests_get_the_sidecar_in_their_pod_template() {
        let template_pod =
            json!({"metadata": {"labels": {"app": "web"}}, "spec": pod()["spec"].clone()});
        for (kind, wrap) in [
            ("Deployment", json!({"template": template_pod.clone()})),
            ("StatefulSet", json!({"template": template_pod.clone()})),
            ("DaemonSet", json!({"template": template_pod.clone()})),
            ("Job", json!({"template": template_pod.clone()})),
            (
                "CronJob",
                json!({"jobTemplate": {"spec": {"template": template_pod.clone()}}}),
            ),
        ] {
            let mut object = json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web"}, "spec": wrap});
            let outcome = inject_manifest(&mut object, &template()).unwrap();
            assert!(matches!(outcome, Some(Outcome::Injected(_))), "{kind}");
            let pointer = pod_template_pointer(kind).unwrap();
            let pod = object.pointer(pointer).unwrap();
            assert_eq!(
                pod["spec"]["initContainers"][1]["name"], PROXY_CONTAINER,
                "{kind}"
            );
        }
        let mut service =
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
        assert_eq!(inject_manifest(&mut service, &template()).unwrap(), None);
        let mut broken = json!({"kind": "Deployment", "spec": {}});
        let err = inject_manifest(&mut broken, &template())
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.template"), "{err}");
    }

    #[test]
    fn the_patch_only_adds_and_applies_to_the_original() {
        let original = pod();
        let out = injected(&original, &template());
        let patch = patch(&original, &out);
        for op in &patch.0 {
            assert!(
                matches!(op, json_patch::PatchOperation::Add(_)),
                "not an add: {op:?}"
            );
        }
        let mut applied = original.clone();
        json_patch::patch(&mut applied, &patch).unwrap();
        assert_eq!(applied, out);
    }
}
