//! A SecurityPolicy's own rules (beyond the Pod Security Standards): the
//! container rules and the image rules, for every container of a pod.

use std::collections::BTreeMap;

use serde_json::Value;

use super::spec::{ContainerRules, ImageRules};
use super::{Container, Context, Violation, containers};
use crate::image::{ImageRef, allowed_by};
use crate::oci::cosign::PublicKey;
use crate::oci::{ReportCheck, SignatureCheck};

/// Violations of `rules` and `images` in `pod`, skipping containers whose
/// image `exempt` says is exempt.
pub fn check(
    pod: &Value,
    rules: &ContainerRules,
    images: &ImageRules,
    exempt: &dyn Fn(&str) -> bool,
    context: &Context<'_>,
) -> Vec<Violation> {
    let spec = &pod["spec"];
    let pod_sc = &spec["securityContext"];
    let mut out = Vec::new();
    let mut flag = |rule: &str, path: String, message: String, fix: &str| {
        out.push(Violation {
            rule: rule.to_owned(),
            path,
            message,
            fix: fix.to_owned(),
        })
    };
    if rules.forbid_host_namespaces {
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            if spec[field] == true {
                flag(
                    "containers:forbidHostNamespaces",
                    format!("spec.{field}"),
                    format!("the pod shares the node's namespace ({field}=true)"),
                    &format!("remove spec.{field}"),
                );
            }
        }
    }
    for c in containers(spec) {
        let image = c.value["image"].as_str().unwrap_or_default();
        if exempt(image) {
            continue;
        }
        let sc = c.security();
        let at = |field: &str| format!("{}.securityContext.{field}", c.path);
        // A container setting inherits from the pod's securityContext.
        let effective = |field: &str| {
            let own = &sc[field];
            if own.is_null() { &pod_sc[field] } else { own }
        };
        if rules.require_run_as_non_root {
            if effective("runAsNonRoot") != true {
                flag(
                    "containers:requireRunAsNonRoot",
                    at("runAsNonRoot"),
                    format!("container {:?} may run as root", c.name),
                    "set runAsNonRoot=true on the pod or the container",
                );
            }
            if effective("runAsUser") == 0 {
                flag(
                    "containers:requireRunAsNonRoot",
                    at("runAsUser"),
                    format!("container {:?} runs as UID 0", c.name),
                    "set runAsUser to a non-zero UID",
                );
            }
        }
        if rules.require_read_only_root_filesystem && sc["readOnlyRootFilesystem"] != true {
            flag(
                "containers:requireReadOnlyRootFilesystem",
                at("readOnlyRootFilesystem"),
                format!("container {:?} can write its root filesystem", c.name),
                "set readOnlyRootFilesystem=true and mount an emptyDir where it writes",
            );
        }
        if rules.forbid_privileged {
            if sc["privileged"] == true {
                flag(
                    "containers:forbidPrivileged",
                    at("privileged"),
                    format!("container {:?} is privileged", c.name),
                    "remove privileged",
                );
            }
            if sc["allowPrivilegeEscalation"] != false {
                flag(
                    "containers:forbidPrivileged",
                    at("allowPrivilegeEscalation"),
                    format!("container {:?} may escalate privileges", c.name),
                    "set allowPrivilegeEscalation=false",
                );
            }
        }
        // A profile must be one of a list (`Localhost/*` allows any local profile).
        let mut one_of =
            |rule: &str, field: &str, what: &str, value: Option<String>, allowed: &[String]| {
                let ok = value.as_deref().is_some_and(|v| {
                    allowed.iter().any(|a| {
                        a == v
                            || a.strip_suffix('*')
                                .is_some_and(|prefix| a.ends_with("/*") && v.starts_with(prefix))
                    })
                });
                if !allowed.is_empty() && !ok {
                    let value = value.map_or("none".to_owned(), |v| format!("{v:?}"));
                    flag(
                        rule,
                        at(field),
                        format!("container {:?} has {what} {value}", c.name),
                        &format!("set {field} to one of {}", allowed.join(", ")),
                    );
                }
            };
        let seccomp = effective("seccompProfile")["type"]
            .as_str()
            .map(str::to_owned);
        one_of(
            "containers:seccompProfileTypes",
            "seccompProfile.type",
            "seccomp profile",
            seccomp,
            &rules.seccomp_profile_types,
        );
        one_of(
            "containers:appArmorProfiles",
            "appArmorProfile",
            "AppArmor profile",
            app_armor_profile(pod, &c),
            &rules.app_armor_profiles,
        );
        let selinux = effective("seLinuxOptions")["type"]
            .as_str()
            .map(str::to_owned);
        one_of(
            "containers:seLinuxTypes",
            "seLinuxOptions.type",
            "SELinux type",
            selinux,
            &rules.se_linux_types,
        );
        image_rules(&c, image, images, &mut flag);
        signature_rule(&c, image, images, &context.signatures, &mut flag);
        vulnerability_rule(&c, image, images, &context.vulnerabilities, &mut flag);
    }
    out
}

fn image_rules(
    c: &Container<'_>,
    image: &str,
    rules: &ImageRules,
    flag: &mut impl FnMut(&str, String, String, &str),
) {
    if rules.allowed_registries.is_empty() && !rules.require_digest {
        return;
    }
    let path = format!("{}.image", c.path);
    let parsed = match ImageRef::parse(image) {
        Ok(parsed) => parsed,
        Err(e) => {
            flag("images", path, e, "use a valid image reference");
            return;
        }
    };
    if !rules.allowed_registries.is_empty()
        && !rules
            .allowed_registries
            .iter()
            .any(|entry| allowed_by(&parsed, entry))
    {
        flag(
            "images:allowedRegistries",
            path.clone(),
            format!(
                "container {:?} runs {} from a registry not allowed",
                c.name,
                parsed.name()
            ),
            &format!("use an image from {}", rules.allowed_registries.join(", ")),
        );
    }
    if rules.require_digest && parsed.digest.is_none() {
        flag(
            "images:requireDigest",
            path,
            format!("container {:?} runs {image} by tag", c.name),
            "pin the image by digest (image@sha256:...)",
        );
    }
}

/// `images.signedBy`: the image is signed by one of the policy's keys.
fn signature_rule(
    c: &Container<'_>,
    image: &str,
    rules: &ImageRules,
    signatures: &BTreeMap<String, SignatureCheck>,
    flag: &mut impl FnMut(&str, String, String, &str),
) {
    if rules.signed_by.is_empty() {
        return;
    }
    let names: Vec<&str> = rules.signed_by.iter().map(|k| k.name.as_str()).collect();
    let trusted: Vec<String> = rules
        .signed_by
        .iter()
        .filter_map(|k| PublicKey::from_pem(&k.public_key).ok())
        .map(|k| k.fingerprint())
        .collect();
    let path = format!("{}.image", c.path);
    let fix = format!(
        "sign the image with one of the keys {} (meshctl image sign --key KEY {image})",
        names.join(", ")
    );
    let problem = match signatures.get(image) {
        Some(SignatureCheck::Verified { by, .. }) if by.iter().any(|f| trusted.contains(f)) => {
            return;
        }
        Some(SignatureCheck::Verified { digest, .. }) => {
            format!(
                "{image} ({digest}) is signed, but not by {}",
                names.join(" or ")
            )
        }
        Some(SignatureCheck::Unsigned { digest, found }) => format!(
            "{image} ({digest}) has no valid signature by {} ({found} found)",
            names.join(" or ")
        ),
        Some(SignatureCheck::Failed(e)) => {
            format!("the signature of {image} cannot be checked: {e}")
        }
        None => format!("the signature of {image} was not checked"),
    };
    flag(
        "images:signedBy",
        path,
        format!("container {:?}: {problem}", c.name),
        &fix,
    );
}

/// `images.vulnerabilities`: the image's report (attested or supplied) is
/// within the budget.
fn vulnerability_rule(
    c: &Container<'_>,
    image: &str,
    rules: &ImageRules,
    reports: &BTreeMap<String, ReportCheck>,
    flag: &mut impl FnMut(&str, String, String, &str),
) {
    let Some(budget) = &rules.vulnerabilities else {
        return;
    };
    let path = format!("{}.image", c.path);
    let mut deny = |problem: String, fix: &str| {
        flag(
            "images:vulnerabilities",
            path.clone(),
            format!("container {:?}: {problem}", c.name),
            fix,
        )
    };
    let counts = match reports.get(image) {
        Some(ReportCheck::Found { counts, .. }) => counts,
        Some(ReportCheck::Missing) if !budget.require_report => return,
        Some(ReportCheck::Missing) => {
            return deny(
                format!(
                    "{image} has no vulnerability report (none attested by a trusted key, no VulnerabilityReport of its digest)"
                ),
                "scan it and attest the report (trivy image --format cosign-vuln; cosign attest --type vuln), or supply it (meshctl image report --trivy REPORT.json IMAGE@DIGEST)",
            );
        }
        Some(ReportCheck::Failed(e)) => {
            return deny(
                format!("the vulnerability report of {image} cannot be read: {e}"),
                "make the registry reachable, or check the report",
            );
        }
        None => {
            return deny(
                format!("the vulnerability report of {image} was not checked"),
                "check it where the registry can be reached",
            );
        }
    };
    let over: Vec<String> = [
        ("critical", counts.critical, budget.max_critical),
        ("high", counts.high, budget.max_high),
        ("medium", counts.medium, budget.max_medium),
        ("low", counts.low, budget.max_low),
    ]
    .into_iter()
    .filter_map(|(name, found, max)| {
        max.filter(|max| found > *max)
            .map(|max| format!("{found} {name} (at most {max})"))
    })
    .collect();
    if !over.is_empty() {
        deny(
            format!(
                "{image} is over the vulnerability budget: {}",
                over.join(", ")
            ),
            "rebuild it on patched packages and scan it again",
        );
    }
}

/// The container's AppArmor profile as `RuntimeDefault`, `Localhost/<name>`
/// or `Unconfined`: its own field, else the legacy annotation, else the
/// pod's field.
fn app_armor_profile(pod: &Value, c: &Container<'_>) -> Option<String> {
    let field = |v: &Value| -> Option<String> {
        match v["type"].as_str()? {
            "Localhost" => Some(format!(
                "Localhost/{}",
                v["localhostProfile"].as_str().unwrap_or_default()
            )),
            other => Some(other.to_owned()),
        }
    };
    let annotation = pod["metadata"]["annotations"]
        [format!("container.apparmor.security.beta.kubernetes.io/{}", c.name)]
    .as_str()
    .map(|v| match v.strip_prefix("localhost/") {
        Some(name) => format!("Localhost/{name}"),
        None if v == "runtime/default" => "RuntimeDefault".to_owned(),
        None => "Unconfined".to_owned(),
    });
    field(&c.security()["appArmorProfile"])
        .or(annotation)
        .or_else(|| field(&pod["spec"]["securityContext"]["appArmorProfile"]))
}
