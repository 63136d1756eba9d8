//! `meshctl status` and `meshctl version`: the mesh at a glance, and what
//! runs where.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rampart_api::admin::{GetResourcesRequest, GetTrustBundleRequest};
use rampart_certs::inspect::describe;
use serde::Serialize;

use crate::client::Target;
use crate::http::get;
use crate::mesh::Output;
use crate::metrics;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    control_plane: String,
    control_plane_version: Option<String>,
    trust_domain: String,
    roots: Vec<Root>,
    proxies: usize,
    synced: usize,
    stale: usize,
    nacked: usize,
    resources: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Root {
    subject: String,
    not_after_unix: i64,
    days_left: i64,
}

/// rampart-control's version, from its metrics (local control planes only).
async fn control_plane_version(target: &Target) -> Option<String> {
    let (status, body) = get(target.local_metrics_addr()?, "/metrics").await.ok()?;
    (status == 200)
        .then(|| {
            metrics::label(
                &String::from_utf8_lossy(&body),
                "rampart_build_info",
                "version",
            )
        })
        .flatten()
}

pub async fn status(target: &Target, output: Output) -> anyhow::Result<()> {
    let mut admin = target.admin().await?;
    let bundle = admin
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .map_err(crate::client::rpc_error)?
        .into_inner();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let roots = bundle
        .roots_der
        .iter()
        .filter_map(|der| describe(der).ok())
        .map(|c| Root {
            subject: c.subject,
            not_after_unix: c.not_after.unix_timestamp(),
            days_left: (c.not_after.unix_timestamp() - now) / 86_400,
        })
        .collect();
    let mut resources = BTreeMap::new();
    let all = admin
        .get_resources(GetResourcesRequest::default())
        .await
        .map_err(crate::client::rpc_error)?
        .into_inner()
        .resources_json;
    for json in all {
        let v: serde_json::Value = serde_json::from_str(&json)?;
        *resources
            .entry(v["kind"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    let proxies = crate::proxy_status::proxies(target).await?;
    let count = |state: &str| {
        proxies
            .iter()
            .filter(|p| {
                let states: Vec<&str> = p.types.iter().map(|t| t.state.as_str()).collect();
                match state {
                    "SYNCED" => states.iter().all(|s| *s == "SYNCED"),
                    other => states.contains(&other),
                }
            })
            .count()
    };
    let status = Status {
        control_plane: target.address()?,
        control_plane_version: control_plane_version(target).await,
        trust_domain: bundle.trust_domain,
        roots,
        proxies: proxies.len(),
        synced: count("SYNCED"),
        stale: count("STALE"),
        nacked: count("NACKED"),
        resources,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&status)?),
        Output::Table => {
            let version = status
                .control_plane_version
                .as_deref()
                .unwrap_or("version unknown");
            let mut rows = vec![
                vec![
                    "control plane".to_owned(),
                    format!(
                        "{} (gRPC, mTLS), rampart-control {version}",
                        status.control_plane
                    ),
                ],
                vec!["trust domain".to_owned(), status.trust_domain.clone()],
            ];
            for r in &status.roots {
                rows.push(vec![
                    "trust root".to_owned(),
                    format!("{}, {} days left", r.subject, r.days_left),
                ]);
            }
            rows.push(vec![
                "proxies".to_owned(),
                format!(
                    "{} connected: {} synced, {} waiting for an ACK, {} with a NACK",
                    status.proxies, status.synced, status.stale, status.nacked
                ),
            ]);
            let kinds: Vec<String> = status
                .resources
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            rows.push(vec![
                "resources".to_owned(),
                if kinds.is_empty() {
                    "none".to_owned()
                } else {
                    kinds.join(", ")
                },
            ]);
            for row in rows {
                println!("{:<14} {}", row[0], row[1]);
            }
        }
    }
    Ok(())
}

/// `meshctl version`: this meshctl, and if a control plane is reachable,
/// its version and the versions its proxies report.
pub async fn version(target: &Target) -> anyhow::Result<()> {
    println!("meshctl {}", env!("CARGO_PKG_VERSION"));
    if target.data_dir.is_none() && target.control_plane.is_none() {
        return Ok(());
    }
    match crate::proxy_status::proxies(target).await {
        Ok(proxies) => {
            let cp = control_plane_version(target).await;
            println!(
                "rampart-control {} at {}",
                cp.as_deref().unwrap_or("(version not known remotely)"),
                target.address()?
            );
            let mut agents: BTreeMap<&str, usize> = BTreeMap::new();
            for p in &proxies {
                *agents.entry(p.user_agent.as_str()).or_insert(0) += 1;
            }
            for (agent, n) in agents {
                println!(
                    "proxies: {n} x {}",
                    if agent.is_empty() { "unknown" } else { agent }
                );
            }
        }
        Err(e) => eprintln!("control plane: not reachable ({e:#})"),
    }
    Ok(())
}
