//! The Pod Security Standards (the `latest` version, 1.37), every control of
//! `baseline` and `restricted`, as Kubernetes' Pod Security Admission
//! checks them: on `containers`, `initContainers` and `ephemeralContainers`,
//! with the pod-level defaults, the Windows and user-namespace exemptions,
//! and both the `appArmorProfile` field and the legacy annotation.
//! Conformance: `../shared/testdata/pss` (Kubernetes' own fixtures).
//!
//! The pod is read as JSON so that fields this version of the API types does
//! not know are still seen, and a pod the typed API would refuse (API
//! validation runs after admission) is still judged.

use serde_json::Value;

use super::{Container, Level, Violation, containers};

/// Every violation of `level` in `pod` (a Pod, or a pod template: anything
/// with `metadata` and `spec`).
pub fn check(pod: &Value, level: Level) -> Vec<Violation> {
    let mut found = Checks {
        pod,
        spec: &pod["spec"],
        level,
        out: Vec::new(),
    };
    if level == Level::Privileged {
        return found.out;
    }
    found.baseline();
    if level == Level::Restricted {
        found.restricted();
    }
    found.out
}

const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Namespaced sysctls that cannot reach other pods (1.37's list).
const SAFE_SYSCTLS: [&str; 14] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

const RESTRICTED_VOLUMES: [&str; 9] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

struct Checks<'a> {
    pod: &'a Value,
    spec: &'a Value,
    level: Level,
    out: Vec<Violation>,
}

impl Checks<'_> {
    fn flag(&mut self, control: &str, path: String, message: String, fix: &str) {
        self.out.push(Violation {
            rule: format!("pod-security/{}:{control}", self.level),
            path,
            message,
            fix: fix.to_owned(),
        });
    }

    fn windows(&self) -> bool {
        self.spec["os"]["name"] == "windows"
    }

    /// `hostUsers: false`: the pod runs in a user namespace, where root and
    /// /proc masks no longer reach the node.
    fn user_namespaced(&self) -> bool {
        self.spec["hostUsers"] == false
    }

    fn baseline(&mut self) {
        let spec = self.spec;
        let pod_security = &spec["securityContext"];
        let all = containers(spec);

        if pod_security["windowsOptions"]["hostProcess"] == true {
            self.flag(
                "hostProcess",
                "spec.securityContext.windowsOptions.hostProcess".into(),
                "the pod runs as a Windows HostProcess".into(),
                "remove windowsOptions.hostProcess",
            );
        }
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            if spec[field] == true {
                self.flag(
                    "hostNamespaces",
                    format!("spec.{field}"),
                    format!("the pod shares the node's namespace ({field}=true)"),
                    &format!("remove spec.{field} or set it to false"),
                );
            }
        }
        for (i, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
            if volume.get("hostPath").is_some_and(|v| !v.is_null()) {
                self.flag(
                    "hostPathVolumes",
                    format!("spec.volumes[{i}].hostPath"),
                    format!("volume {} mounts a path of the node", volume["name"]),
                    "use an emptyDir, configMap, secret or persistentVolumeClaim volume",
                );
            }
        }
        for (i, sysctl) in pod_security["sysctls"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = sysctl["name"].as_str().unwrap_or_default();
            if !SAFE_SYSCTLS.contains(&name) {
                self.flag(
                    "sysctls",
                    format!("spec.securityContext.sysctls[{i}].name"),
                    format!("sysctl {name:?} is not one of the safe, namespaced sysctls"),
                    "remove it, or set it on the node",
                );
            }
        }
        let at = "spec.securityContext";
        self.profile_type(pod_security, at, "seccompProfile", "seccomp");
        self.profile_type(pod_security, at, "appArmorProfile", "AppArmor");
        self.selinux(pod_security, at);
        self.apparmor_annotations();

        for c in &all {
            let sc = c.security();
            let at = |field: &str| format!("{}.securityContext.{field}", c.path);
            if sc["windowsOptions"]["hostProcess"] == true {
                self.flag(
                    "hostProcess",
                    at("windowsOptions.hostProcess"),
                    format!("container {:?} runs as a Windows HostProcess", c.name),
                    "remove windowsOptions.hostProcess",
                );
            }
            if sc["privileged"] == true {
                self.flag(
                    "privileged",
                    at("privileged"),
                    format!("container {:?} is privileged", c.name),
                    "remove securityContext.privileged or set it to false",
                );
            }
            for (i, cap) in sc["capabilities"]["add"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let cap = cap.as_str().unwrap_or_default();
                if !BASELINE_CAPABILITIES.contains(&cap) {
                    self.flag(
                        "capabilities",
                        at(&format!("capabilities.add[{i}]")),
                        format!("container {:?} adds capability {cap:?}", c.name),
                        "add only capabilities of the default set (NET_BIND_SERVICE, CHOWN, ...)",
                    );
                }
            }
            for (i, port) in c.value["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if port["hostPort"].as_i64().unwrap_or(0) != 0 {
                    self.flag(
                        "hostPorts",
                        format!("{}.ports[{i}].hostPort", c.path),
                        format!(
                            "container {:?} binds host port {}",
                            c.name, port["hostPort"]
                        ),
                        "remove hostPort and reach the pod through a Service",
                    );
                }
            }
            self.host_probes(c);
            let proc_mount = sc["procMount"].as_str().unwrap_or("Default");
            if proc_mount != "Default" && !self.user_namespaced() {
                self.flag(
                    "procMount",
                    at("procMount"),
                    format!("container {:?} unmasks /proc ({proc_mount})", c.name),
                    "remove procMount or set it to Default",
                );
            }
            let at = format!("{}.securityContext", c.path);
            self.profile_type(sc, &at, "seccompProfile", "seccomp");
            self.profile_type(sc, &at, "appArmorProfile", "AppArmor");
            self.selinux(sc, &at);
        }
    }

    fn host_probes(&mut self, c: &Container<'_>) {
        let handlers = [
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle.postStart",
            "lifecycle.preStop",
        ];
        for handler in handlers {
            let value = handler
                .split('.')
                .fold(c.value, |v, key| v.get(key).unwrap_or(&Value::Null));
            for kind in ["httpGet", "tcpSocket"] {
                let host = value[kind]["host"].as_str().unwrap_or_default();
                if !host.is_empty() {
                    self.flag(
                        "hostProbesAndHostLifecycle",
                        format!("{}.{handler}.{kind}.host", c.path),
                        format!("container {:?} probes another host ({host})", c.name),
                        "remove host: probes and hooks may only reach the pod itself",
                    );
                }
            }
        }
    }

    /// `seccompProfile` or `appArmorProfile`: a type other than
    /// RuntimeDefault or Localhost (Unconfined) is not allowed.
    fn profile_type(&mut self, sc: &Value, at: &str, field: &str, what: &str) {
        if let Some(kind) = sc[field]["type"].as_str()
            && !matches!(kind, "RuntimeDefault" | "Localhost")
        {
            self.flag(
                field,
                format!("{at}.{field}.type"),
                format!("{what} profile {kind:?} is not allowed"),
                &format!("set {field}.type to RuntimeDefault or Localhost"),
            );
        }
    }

    fn selinux(&mut self, sc: &Value, at: &str) {
        let options = &sc["seLinuxOptions"];
        let kind = options["type"].as_str().unwrap_or_default();
        if !SELINUX_TYPES.contains(&kind) {
            self.flag(
                "seLinuxOptions",
                format!("{at}.seLinuxOptions.type"),
                format!("SELinux type {kind:?} is not allowed"),
                "use container_t, container_init_t, container_kvm_t or container_engine_t",
            );
        }
        for field in ["user", "role"] {
            if !options[field].as_str().unwrap_or_default().is_empty() {
                self.flag(
                    "seLinuxOptions",
                    format!("{at}.seLinuxOptions.{field}"),
                    format!("a custom SELinux {field} is set"),
                    &format!("remove seLinuxOptions.{field}"),
                );
            }
        }
    }

    fn apparmor_annotations(&mut self) {
        let annotations = self.pod["metadata"]["annotations"].as_object();
        for (key, value) in annotations.into_iter().flatten() {
            let Some(container) = key.strip_prefix(APPARMOR_ANNOTATION) else {
                continue;
            };
            let value = value.as_str().unwrap_or_default();
            if !(value.is_empty() || value == "runtime/default" || value.starts_with("localhost/"))
            {
                self.flag(
                    "appArmorProfile",
                    format!("metadata.annotations[{key}]"),
                    format!("container {container:?} has AppArmor profile {value:?}"),
                    "use runtime/default or localhost/<profile>",
                );
            }
        }
    }

    fn restricted(&mut self) {
        let spec = self.spec;
        let pod_security = &spec["securityContext"];
        let all = containers(spec);

        for (i, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
            let Some(fields) = volume.as_object() else {
                continue;
            };
            for kind in fields.keys().filter(|k| *k != "name") {
                if !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
                    self.flag(
                        "restrictedVolumes",
                        format!("spec.volumes[{i}].{kind}"),
                        format!("volume {} is of type {kind}", volume["name"]),
                        "use configMap, csi, downwardAPI, emptyDir, ephemeral, image, \
                         persistentVolumeClaim, projected or secret volumes",
                    );
                }
            }
        }

        let windows = self.windows();
        let user_namespaced = self.user_namespaced();
        let pod_non_root = pod_security["runAsNonRoot"].as_bool();
        if pod_non_root == Some(false) && !user_namespaced {
            self.flag(
                "runAsNonRoot",
                "spec.securityContext.runAsNonRoot".into(),
                "the pod allows running as root (runAsNonRoot=false)".into(),
                "set spec.securityContext.runAsNonRoot=true",
            );
        }
        if pod_security["runAsUser"] == 0 && !user_namespaced {
            self.flag(
                "runAsUser",
                "spec.securityContext.runAsUser".into(),
                "the pod runs as root (runAsUser=0)".into(),
                "set runAsUser to a non-zero UID",
            );
        }
        let pod_seccomp = pod_security["seccompProfile"]["type"].as_str();
        let pod_seccomp_set = matches!(pod_seccomp, Some("RuntimeDefault" | "Localhost"));

        for c in &all {
            let sc = c.security();
            let at = |field: &str| format!("{}.securityContext.{field}", c.path);
            if sc["allowPrivilegeEscalation"] != false && !windows {
                self.flag(
                    "allowPrivilegeEscalation",
                    at("allowPrivilegeEscalation"),
                    format!("container {:?} may escalate privileges", c.name),
                    "set securityContext.allowPrivilegeEscalation=false",
                );
            }
            if !user_namespaced {
                match sc["runAsNonRoot"].as_bool() {
                    Some(true) => {}
                    Some(false) => self.flag(
                        "runAsNonRoot",
                        at("runAsNonRoot"),
                        format!("container {:?} allows running as root", c.name),
                        "set securityContext.runAsNonRoot=true",
                    ),
                    None if pod_non_root == Some(true) => {}
                    None => self.flag(
                        "runAsNonRoot",
                        at("runAsNonRoot"),
                        format!("container {:?} may run as root", c.name),
                        "set runAsNonRoot=true on the pod or the container",
                    ),
                }
                if sc["runAsUser"] == 0 {
                    self.flag(
                        "runAsUser",
                        at("runAsUser"),
                        format!("container {:?} runs as root (runAsUser=0)", c.name),
                        "set runAsUser to a non-zero UID",
                    );
                }
            }
            if !windows && sc["seccompProfile"]["type"].is_null() && !pod_seccomp_set {
                self.flag(
                    "seccompProfile",
                    at("seccompProfile.type"),
                    format!("container {:?} has no seccomp profile", c.name),
                    "set seccompProfile.type to RuntimeDefault or Localhost on the pod or container",
                );
            }
            if !windows {
                let caps = &sc["capabilities"];
                let drops_all = caps["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|c| c == "ALL"));
                if !drops_all {
                    self.flag(
                        "capabilities",
                        at("capabilities.drop"),
                        format!("container {:?} does not drop ALL capabilities", c.name),
                        "set securityContext.capabilities.drop=[\"ALL\"]",
                    );
                }
                for (i, cap) in caps["add"].as_array().into_iter().flatten().enumerate() {
                    let cap = cap.as_str().unwrap_or_default();
                    // Those outside the default set, baseline has flagged.
                    if cap != "NET_BIND_SERVICE" && BASELINE_CAPABILITIES.contains(&cap) {
                        self.flag(
                            "capabilities",
                            at(&format!("capabilities.add[{i}]")),
                            format!("container {:?} adds capability {cap:?}", c.name),
                            "add no capability but NET_BIND_SERVICE",
                        );
                    }
                }
            }
            let proc_mount = sc["procMount"].as_str().unwrap_or("Default");
            if proc_mount != "Default" && user_namespaced {
                // Without a user namespace baseline has flagged it already.
                self.flag(
                    "procMount",
                    at("procMount"),
                    format!("container {:?} unmasks /proc ({proc_mount})", c.name),
                    "remove procMount or set it to Default",
                );
            }
        }
    }
}
