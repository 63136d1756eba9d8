//! `meshctl policy check`: the admission webhook's security policy engine
//! (`rampart_api::policy`) on manifests, offline, for CI pipelines. Every
//! pod and pod template (Deployments, StatefulSets, Jobs, CronJobs, ...) is
//! checked against `--pod-security`, the SecurityPolicies given with
//! `--policy`, and the `pod-security.kubernetes.io/*` labels of Namespace
//! documents among the inputs. Exit 0: all admitted; 1: something denied
//! (reasons printed); 2: unreadable or invalid input, where nothing is judged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use rampart_api::image_verifier::ImageVerifier;
use rampart_api::inject::pod_template_pointer;
use rampart_api::mesh::{Resource, parse_documents};
use rampart_api::policy::{
    self, EnforcementAction, Level, Named, SecurityPolicySpec, SuppliedReport,
};
use serde_json::Value;

use crate::mesh::read_sources;

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check Pods and workload manifests against the admission policy.
    Check(CheckArgs),
    /// The pods in the cluster that violate a policy now (the control
    /// plane judges them again whenever a policy, a namespace or a pod changes).
    Report(crate::policy_report::ReportArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A Pod Security Standards level every pod must meet (enforced).
    #[arg(long, value_parser = parse_level)]
    pod_security: Option<Level>,
    /// A file (or directory) of SecurityPolicy resources, and of
    /// VulnerabilityReports for the vulnerability budget; repeatable.
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// The namespace of pods whose manifest names none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The control plane's namespace: its SecurityPolicies apply to every namespace.
    #[arg(long, default_value = policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// Manifest files, directories or - for stdin.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// How registries are reached when a policy needs image signatures
    /// (`images.signedBy`); without such a policy nothing leaves the machine.
    #[command(flatten)]
    registry: crate::image::RegistryArgs,
}

fn parse_level(s: &str) -> Result<Level, String> {
    Level::parse(s).ok_or_else(|| format!("{s:?} is not privileged, baseline or restricted"))
}

/// A pod to judge, and where it came from.
struct Subject {
    what: String,
    namespace: String,
    pod: Value,
}

pub async fn check(args: &CheckArgs) -> ExitCode {
    let Read {
        policies,
        reports,
        subjects,
        namespaces,
    } = match read(args) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let flag_policy = args.pod_security.map(|level| SecurityPolicySpec {
        pod_security: Some(level),
        ..Default::default()
    });
    let mut denied = 0;
    // Made on first need: without signature rules nothing leaves the machine.
    let mut registry: Option<ImageVerifier> = None;
    for subject in &subjects {
        let mut applicable: Vec<Named<'_>> = policies
            .iter()
            .filter(|p| policy::applies(&p.namespace, &subject.namespace, &args.root_namespace))
            .map(|p| Named {
                source: p.source.clone(),
                spec: &p.spec,
            })
            .collect();
        if let (Some(spec), Some(level)) = (&flag_policy, args.pod_security) {
            applicable.push(Named {
                source: format!("--pod-security {level}"),
                spec,
            });
        }
        let mut lookups = policy::registry_lookups(&subject.pod, &applicable);
        lookups.supplied = reports.clone();
        if !lookups.images.is_empty() && registry.is_none() {
            match args.registry.client() {
                Ok(client) => registry = Some(ImageVerifier::new(client)),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
        let (signatures, vulnerabilities) = match &registry {
            Some(verifier) => verifier.check(&lookups).await,
            None => Default::default(),
        };
        let context = policy::Context {
            namespace: &subject.namespace,
            namespace_labels: namespaces
                .get(&subject.namespace)
                .cloned()
                .unwrap_or_default(),
            signatures,
            vulnerabilities,
        };
        let report = policy::evaluate(&subject.pod, &context, &applicable);
        for exemption in &report.exemptions {
            println!("{}: exempt: {exemption}", subject.what);
        }
        for (action, label) in [
            (EnforcementAction::Warn, "warning"),
            (EnforcementAction::Audit, "audit"),
        ] {
            for line in report.lines(action) {
                println!("{}: {label}: {line}", subject.what);
            }
        }
        if report.denied() {
            denied += 1;
            println!("{}: denied", subject.what);
            for line in report.lines(EnforcementAction::Enforce) {
                println!("  {line}");
            }
        } else {
            println!("{}: admitted", subject.what);
        }
    }
    if denied > 0 {
        println!("{denied} of {} denied", subjects.len());
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// A SecurityPolicy read from a file.
struct Policy {
    namespace: String,
    source: String,
    spec: SecurityPolicySpec,
}

/// What `policy check` reads before judging anything.
struct Read {
    policies: Vec<Policy>,
    /// VulnerabilityReports among the `--policy` inputs.
    reports: Vec<SuppliedReport>,
    subjects: Vec<Subject>,
    /// Labels of the Namespace documents among the inputs.
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// Everything is read and checked before anything is judged.
fn read(args: &CheckArgs) -> anyhow::Result<Read> {
    let mut policies = Vec::new();
    let mut reports = Vec::new();
    if !args.policies.is_empty() {
        for source in read_sources(&args.policies)? {
            let resources = parse_documents(&source.source, &source.text)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for resource in resources {
                let p = match resource {
                    Resource::SecurityPolicy(p) => p,
                    Resource::VulnerabilityReport(r) => {
                        reports.extend(SuppliedReport::new(&r.metadata.name, &r.spec));
                        continue;
                    }
                    other => bail!(
                        "{}: {} is not a SecurityPolicy or a VulnerabilityReport",
                        source.source,
                        other.key()
                    ),
                };
                policies.push(Policy {
                    source: format!(
                        "SecurityPolicy {}/{}",
                        p.metadata.namespace, p.metadata.name
                    ),
                    namespace: p.metadata.namespace,
                    spec: p.spec,
                });
            }
        }
    }
    if policies.is_empty() && args.pod_security.is_none() {
        bail!("nothing to check against: give --pod-security and/or --policy");
    }
    let mut subjects = Vec::new();
    let mut namespaces = BTreeMap::new();
    for source in read_sources(&args.files)? {
        let documents: Vec<Value> = serde_saphyr::from_multiple(&source.text)
            .with_context(|| format!("{}: not valid YAML", source.source))?;
        for (i, document) in documents.into_iter().enumerate() {
            if document.is_null() {
                continue;
            }
            let kind = document["kind"].as_str().unwrap_or_default();
            let name = document["metadata"]["name"].as_str().unwrap_or("?");
            let what = format!("{}: {kind} {name}", source.source);
            if kind == "Namespace" {
                let labels: Option<BTreeMap<String, String>> =
                    serde_json::from_value(document["metadata"]["labels"].clone())
                        .with_context(|| format!("{what}: metadata.labels"))?;
                namespaces.insert(name.to_owned(), labels.unwrap_or_default());
                continue;
            }
            let Some(pointer) = pod_template_pointer(kind) else {
                if kind.is_empty() {
                    bail!("{}: document {} has no kind", source.source, i + 1);
                }
                continue;
            };
            let Some(pod) = document.pointer(pointer).filter(|p| p["spec"].is_object()) else {
                bail!("{what}: no pod spec at {}", pointer.replace('/', "."));
            };
            subjects.push(Subject {
                namespace: document["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(&args.namespace)
                    .to_owned(),
                what,
                pod: pod.clone(),
            });
        }
    }
    if subjects.is_empty() {
        bail!("no Pods or workloads with a pod template in the input");
    }
    Ok(Read {
        policies,
        reports,
        subjects,
        namespaces,
    })
}
