//! `meshctl policy report`: the control plane's continuous evaluation of the
//! security policy, i.e. which pods in the cluster violate a policy now
//! (admitted before the policy existed, under an `audit` or `warn` policy,
//! or since found unsigned or vulnerable), with every violation's field
//! and fix.

use std::time::{SystemTime, UNIX_EPOCH};

use rampart_api::admin::{PodPolicyReport, PolicyReportRequest, PolicyReportResponse};
use serde_json::{Value, json};

use crate::client::{Target, rpc_error};
use crate::mesh::Output;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Only pods of this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

pub async fn report(target: &Target, args: &ReportArgs) -> anyhow::Result<()> {
    let response = target
        .admin()
        .await?
        .policy_report(PolicyReportRequest {
            namespace: args.namespace.clone().unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&to_json(&response))?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&to_json(&response))?),
        Output::Table => print_text(&response),
    }
    if !response.error.is_empty() {
        eprintln!(
            "warning: the last evaluation failed ({}); this is the one before it",
            response.error
        );
    }
    Ok(())
}

fn print_text(response: &PolicyReportResponse) {
    if response.evaluated_at_unix == 0 {
        println!("the pods have not been judged yet");
        return;
    }
    let violating = response
        .pods
        .iter()
        .filter(|p| !p.findings.is_empty())
        .count();
    println!(
        "{} pods judged {}; {violating} violate a policy",
        response.pods_checked,
        ago(response.evaluated_at_unix)
    );
    if response.pods.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = response
        .pods
        .iter()
        .flat_map(|pod| {
            pod.findings.iter().map(move |f| {
                vec![
                    pod.namespace.clone(),
                    pod.name.clone(),
                    f.policy.clone(),
                    f.action.clone(),
                    f.violations.len().to_string(),
                ]
            })
        })
        .collect();
    println!();
    if !rows.is_empty() {
        crate::table::print(
            &["NAMESPACE", "POD", "POLICY", "ACTION", "VIOLATIONS"],
            &rows,
        );
    }
    for pod in &response.pods {
        print_pod(pod);
    }
}

fn print_pod(pod: &PodPolicyReport) {
    println!("\n{}/{}:", pod.namespace, pod.name);
    for finding in &pod.findings {
        println!("  {} ({}):", finding.policy, finding.action);
        for v in &finding.violations {
            println!("  - {}: {} [{}]; fix: {}", v.path, v.message, v.rule, v.fix);
        }
    }
    for exemption in &pod.exemptions {
        println!("  exempt: {exemption}");
    }
}

/// "12s ago", "3m ago" (the report's age matters more than its date).
fn ago(unix: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match (now - unix).max(0) {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s => format!("{}h ago", s / 3600),
    }
}

fn to_json(r: &PolicyReportResponse) -> Value {
    json!({
        "evaluatedAtUnix": r.evaluated_at_unix,
        "podsChecked": r.pods_checked,
        "error": r.error,
        "pods": r.pods.iter().map(|p| json!({
            "namespace": p.namespace,
            "name": p.name,
            "exemptions": p.exemptions,
            "findings": p.findings.iter().map(|f| json!({
                "policy": f.policy,
                "action": f.action,
                "violations": f.violations.iter().map(|v| json!({
                    "rule": v.rule, "path": v.path, "message": v.message, "fix": v.fix,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
