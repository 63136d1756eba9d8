//! `meshctl authz check --from ID --to SERVICE`: would this call be allowed?
//! Answered for every connected proxy serving the service, by the proxy's
//! own RBAC evaluator (rampart-proxy's library) on exactly the listener the
//! control plane serves that proxy, so the answer is what the data plane
//! does, and it names the AuthorizationPolicy that decided.

use anyhow::{Context, bail};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message;
use rampart_api::admin::{GetResourcesRequest, ProxyConfigRequest};
use rampart_certs::SpiffeId;
use rampart_plan::listener::{App, ChainPlan, listener_plan};
use rampart_plan::rbac::{Decision, Subject, explain};
use rampart_plan::route::Routes;
use serde::Serialize;

use crate::client::Target;
use crate::mesh::Output;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The caller's SPIFFE ID, e.g. spiffe://cluster.local/ns/demo/sa/frontend.
    #[arg(long)]
    from: String,
    /// The service called: NAME.NAMESPACE (or NAME, in the namespace `default`).
    #[arg(long)]
    to: String,
    /// The service port, by name or number (default: its first port).
    #[arg(long)]
    port: Option<String>,
    /// The request path (HTTP ports).
    #[arg(long, default_value = "/")]
    path: String,
    /// The request method (HTTP ports).
    #[arg(long, default_value = "GET")]
    method: String,
    /// The caller's IP address, for rules on remote IP ranges.
    #[arg(long, default_value = "127.0.0.1")]
    from_ip: std::net::IpAddr,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Debug, Serialize)]
struct Verdict {
    proxy: String,
    listener: String,
    allowed: bool,
    why: String,
}

pub async fn check(target: &Target, args: CheckArgs) -> anyhow::Result<()> {
    SpiffeId::parse(&args.from)
        .map_err(|e| anyhow::anyhow!("--from {:?} is not a SPIFFE ID: {e}", args.from))?;
    if !args.path.starts_with('/') {
        bail!("--path {:?} must start with /", args.path);
    }
    let method = args.method.to_ascii_uppercase();
    let (service, namespace) = args.to.split_once('.').unwrap_or((&args.to, "default"));
    let mut admin = target.admin().await?;
    let found = admin
        .get_resources(GetResourcesRequest {
            kind: "Service".to_owned(),
            namespace: namespace.to_owned(),
            name: service.to_owned(),
        })
        .await
        .map_err(crate::client::rpc_error)?
        .into_inner()
        .resources_json;
    let Some(json) = found.first() else {
        bail!("no Service {service} in namespace {namespace} (meshctl get services)");
    };
    let spec: serde_json::Value = serde_json::from_str(json).context("the Service as JSON")?;
    let ports = spec["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let port = match &args.port {
        None => ports.first(),
        Some(p) => ports.iter().find(|x| {
            x["name"] == p.as_str() || x["port"].as_u64().is_some_and(|n| n.to_string() == *p)
        }),
    }
    .with_context(|| {
        let known: Vec<String> = ports
            .iter()
            .map(|p| format!("{} ({})", p["name"].as_str().unwrap_or("?"), p["port"]))
            .collect();
        format!(
            "{service}.{namespace} has no port {}; its ports: {}",
            args.port.as_deref().unwrap_or("at all"),
            known.join(", ")
        )
    })?;
    let port_name = port["name"].as_str().unwrap_or_default().to_owned();
    // The inbound cluster naming of the control plane: inbound|APP|PORT-NAME|SVC.NS.
    let suffix = format!("|{port_name}|{service}.{namespace}");

    let mut verdicts = Vec::new();
    for proxy in crate::proxy_status::proxies(target).await? {
        let served = admin
            .proxy_config(ProxyConfigRequest {
                node_id: proxy.node_id.clone(),
            })
            .await
            .map_err(crate::client::rpc_error)?
            .into_inner();
        for r in served.resources.iter().filter(|r| r.r#type == "lds") {
            let listener = Listener::decode(r.value.as_slice())
                .with_context(|| format!("{}'s listener {}", proxy.node_id, r.name))?;
            let Ok(Some(plan)) = listener_plan(&listener) else {
                continue;
            };
            // The mTLS chain: the caller is a mesh identity.
            let Some(chain) = plan
                .chains
                .iter()
                .find(|c| c.terminate_mtls && serves(c, &suffix))
            else {
                continue;
            };
            let http = matches!(chain.app, App::Http(_));
            let subject = Subject {
                peer: Some(&args.from),
                remote: args.from_ip,
                local_port: plan.address.port(),
                request: http.then_some((method.as_str(), args.path.as_str())),
                headers: None,
            };
            let mut rules = chain.network_rbac.clone();
            if let App::Http(h) = &chain.app {
                rules.extend(h.rbac.iter().cloned());
            }
            let (decision, why) = explain(&rules, &subject);
            verdicts.push(Verdict {
                proxy: proxy.node_id.clone(),
                listener: plan.name.clone(),
                allowed: decision == Decision::Allow,
                why: if http {
                    why
                } else {
                    format!("{why} (TCP port: methods and paths are not seen)")
                },
            });
        }
    }
    if verdicts.is_empty() {
        bail!(
            "no connected proxy serves {service}.{namespace} port {port_name}: nothing to ask (meshctl proxy-status)"
        );
    }
    match args.output {
        Output::Table => {
            let rows: Vec<Vec<String>> = verdicts
                .iter()
                .map(|v| {
                    vec![
                        v.proxy.clone(),
                        if v.allowed { "ALLOWED" } else { "DENIED" }.to_owned(),
                        v.why.clone(),
                    ]
                })
                .collect();
            println!(
                "{method} {} from {} to {service}.{namespace} port {port_name}:",
                args.path, args.from
            );
            crate::table::print(&["PROXY", "DECISION", "WHY"], &rows);
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&verdicts)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&verdicts)?),
    }
    Ok(())
}

/// Whether the chain hands its traffic to the service port's app cluster.
fn serves(chain: &ChainPlan, suffix: &str) -> bool {
    match &chain.app {
        App::Tcp { cluster, .. } => cluster.ends_with(suffix),
        App::Http(h) => match &h.routes {
            Routes::Inline(table) => table.clusters().any(|c| c.ends_with(suffix)),
            Routes::Named(_) => false,
        },
    }
}
