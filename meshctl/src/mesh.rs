//! `meshctl apply`, `get` and `delete`: the mesh model as files in, tables,
//! YAML or JSON out. The control plane validates; meshctl only reads files
//! and formats answers.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rampart_api::admin::{
    ApplyResourcesRequest, DeleteResourcesRequest, GetResourcesRequest, ResourceRef, SourceText,
};
use rampart_api::mesh::{Resource, parse_documents};
use serde_json::Value;

use crate::client::{Target, rpc_error};

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

/// Reads `-` (stdin), a file, or every *.yaml/*.yml/*.json in a directory (sorted).
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceText>> {
    let mut sources = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            sources.push(SourceText {
                source: "-".into(),
                text,
            });
        } else if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{} has no .yaml, .yml or .json files", path.display());
            }
            for file in files {
                sources.push(read_file(&file)?);
            }
        } else {
            sources.push(read_file(path)?);
        }
    }
    Ok(sources)
}

fn read_file(path: &Path) -> anyhow::Result<SourceText> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(SourceText {
        source: path.display().to_string(),
        text,
    })
}

/// `meshctl apply -f ...`
pub async fn apply(target: &Target, files: &[PathBuf], dry_run: bool) -> anyhow::Result<()> {
    let sources = read_sources(files)?;
    let response = target
        .admin()
        .await?
        .apply_resources(ApplyResourcesRequest { sources, dry_run })
        .await
        .map_err(rpc_error)?
        .into_inner();
    for warning in &response.warnings {
        eprintln!("warning: {warning}");
    }
    let suffix = if dry_run { " (dry run)" } else { "" };
    for result in response.results {
        let r = result.r#ref.unwrap_or_default();
        println!("{} {}{suffix}", describe(&r), result.outcome);
    }
    Ok(())
}

fn describe(r: &ResourceRef) -> String {
    let kind = r.kind.to_ascii_lowercase();
    if r.namespace.is_empty() {
        format!("{kind}/{}", r.name)
    } else {
        format!("{kind}/{} -n {}", r.name, r.namespace)
    }
}

/// `meshctl get KIND [NAME]`
pub async fn get(
    target: &Target,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let response = target
        .admin()
        .await?
        .get_resources(GetResourcesRequest {
            kind: kind.to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let objects: Vec<Value> = response
        .resources_json
        .iter()
        .map(|json| serde_json::from_str(json))
        .collect::<Result<_, _>>()
        .context("the control plane sent a resource that is not JSON")?;
    match output {
        Output::Json => {
            let value = if name.is_some() && objects.len() == 1 {
                objects[0].clone()
            } else {
                serde_json::json!({"items": objects})
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Yaml => {
            let yaml = serde_saphyr::to_string_multiple(&objects).context("formatting YAML")?;
            print!("{yaml}");
        }
        Output::Table => print_table(&response.resources_json),
    }
    if objects.is_empty() {
        eprintln!("no resources found");
    }
    Ok(())
}

fn print_table(resources_json: &[String]) {
    let rows: Vec<Vec<String>> = resources_json
        .iter()
        .filter_map(|json| Resource::from_json(json).ok())
        .map(|r| {
            let key = r.key();
            vec![key.kind.to_string(), key.namespace, key.name, summary(&r)]
        })
        .collect();
    crate::table::print(&["KIND", "NAMESPACE", "NAME", "DETAILS"], &rows);
}

fn summary(resource: &Resource) -> String {
    match resource {
        Resource::MeshConfig(o) => format!("mtls={:?}", o.spec.mtls.mode).to_uppercase(),
        Resource::Service(o) => {
            let ports = o
                .spec
                .ports
                .iter()
                .map(|p| format!("{}:{}/{:?}", p.name, p.port, p.protocol).to_lowercase())
                .collect::<Vec<_>>()
                .join(",");
            if o.spec.addresses.is_empty() {
                ports
            } else {
                format!("{ports} addresses={}", o.spec.addresses.join(","))
            }
        }
        Resource::WorkloadEntry(o) => {
            let ports: Vec<String> = o
                .spec
                .ports
                .iter()
                .map(|(n, p)| format!("{n}={p}"))
                .collect();
            format!(
                "service={} address={} ports={} sa={}{}",
                o.spec.service,
                o.spec.address,
                ports.join(","),
                o.spec.service_account,
                if o.spec.sidecar { " sidecar" } else { "" }
            )
        }
        Resource::TrafficPolicy(o) => {
            let mut parts = vec![format!("service={}", o.spec.service)];
            if !o.spec.split.is_empty() {
                let split: Vec<String> = o
                    .spec
                    .split
                    .iter()
                    .map(|t| {
                        let labels: Vec<String> =
                            t.subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!("{}:{}%", labels.join("+"), t.weight)
                    })
                    .collect();
                parts.push(format!("split={}", split.join(",")));
            }
            if let Some(timeout) = &o.spec.timeout {
                parts.push(format!("timeout={timeout}"));
            }
            if let Some(retries) = &o.spec.retries {
                parts.push(format!("retries={}", retries.attempts));
            }
            parts.join(" ")
        }
        Resource::AuthorizationPolicy(o) => {
            let selector: Vec<String> = o
                .spec
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(
                "{:?} rules={} selector={}",
                o.spec.action,
                o.spec.rules.len(),
                selector.join(",")
            )
            .to_uppercase()
        }
        Resource::SecurityPolicy(o) => {
            let mut parts = vec![o.spec.enforcement_action.to_string()];
            if let Some(level) = o.spec.pod_security {
                parts.push(format!("podSecurity={level}"));
            }
            if !o.spec.images.allowed_registries.is_empty() {
                parts.push(format!(
                    "registries={}",
                    o.spec.images.allowed_registries.join(",")
                ));
            }
            parts.join(" ")
        }
        Resource::VulnerabilityReport(o) => format!("{} ({})", o.spec.image, o.spec.summary),
    }
}

/// `meshctl delete KIND NAME` or `meshctl delete -f FILE`.
pub async fn delete(
    target: &Target,
    kind: Option<&str>,
    names: &[String],
    namespace: Option<&str>,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let mut refs = Vec::new();
    if !files.is_empty() {
        for source in read_sources(files)? {
            let resources = parse_documents(&source.source, &source.text)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            refs.extend(resources.iter().map(|r| {
                let key = r.key();
                ResourceRef {
                    kind: key.kind.to_string(),
                    namespace: key.namespace,
                    name: key.name,
                }
            }));
        }
    } else {
        let Some(kind) = kind else {
            bail!(
                "say what to delete: meshctl delete KIND NAME... [-n NAMESPACE], or meshctl delete -f FILE"
            );
        };
        if names.is_empty() {
            bail!("meshctl delete {kind}: give at least one name");
        }
        for name in names {
            refs.push(ResourceRef {
                kind: kind.to_owned(),
                namespace: namespace.unwrap_or_default().to_owned(),
                name: name.clone(),
            });
        }
    }
    let response = target
        .admin()
        .await?
        .delete_resources(DeleteResourcesRequest { refs })
        .await
        .map_err(rpc_error)?
        .into_inner();
    for r in &response.deleted {
        println!("{} deleted", describe(r));
    }
    for r in &response.not_found {
        eprintln!("{} not found", describe(r));
    }
    if response.deleted.is_empty() && !response.not_found.is_empty() {
        bail!("nothing was deleted");
    }
    Ok(())
}
