//! `meshctl inject -f FILE...`: the injection webhook's engine
//! (`rampart_api::inject`) on manifests, offline, like `istioctl
//! kube-inject`: Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets,
//! Jobs and CronJobs get the sidecar in their pod template; every other
//! document passes through unchanged. Multi-document files are kept in
//! order; the result goes to stdout, what was done to each to stderr.

use std::path::PathBuf;

use anyhow::{Context, bail};
use rampart_api::inject::{Outcome, Template, inject_manifest};
use serde_json::Value;

use crate::mesh::read_sources;

#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// Manifest file, directory (every .yaml/.yml/.json in it) or - for stdin; repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The image the sidecar runs.
    #[arg(long, default_value = concat!("rampart/rampart-proxy:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// The control plane address the sidecar dials.
    #[arg(long, default_value = "rampart-control.rampart-system.svc:15012")]
    control_plane: String,
    /// For clusters older than Kubernetes 1.29: the proxy as the first
    /// container instead of a native sidecar.
    #[arg(long)]
    no_native_sidecar: bool,
}

pub fn inject(args: &InjectArgs) -> anyhow::Result<()> {
    let template = Template {
        image: args.image.clone(),
        control_plane: args.control_plane.clone(),
        native_sidecar: !args.no_native_sidecar,
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for source in read_sources(&args.files)? {
        let documents: Vec<Value> = serde_saphyr::from_multiple(&source.text)
            .with_context(|| format!("{}: not valid YAML", source.source))?;
        for (i, mut document) in documents.into_iter().enumerate() {
            if document.is_null() {
                continue;
            }
            let what = format!(
                "{}: document {} ({} {})",
                source.source,
                i + 1,
                document["kind"].as_str().unwrap_or("?"),
                document["metadata"]["name"].as_str().unwrap_or("?"),
            );
            match inject_manifest(&mut document, &template) {
                Ok(Some(Outcome::Injected(_))) => eprintln!("{what}: injected"),
                Ok(Some(Outcome::Skipped(reason))) => eprintln!("{what}: not injected: {reason}"),
                Ok(None) => {}
                Err(e) => errors.push(format!("{what}: {e}")),
            }
            out.push(document);
        }
    }
    // All or nothing: a manifest set with a broken document is not half printed.
    if !errors.is_empty() {
        bail!("cannot inject:\n  {}", errors.join("\n  "));
    }
    print!(
        "{}",
        serde_saphyr::to_string_multiple(&out).context("formatting YAML")?
    );
    Ok(())
}
