//! `meshctl image report --trivy FILE [IMAGE]`: supplies a Trivy JSON
//! report to the control plane as a `VulnerabilityReport` (for images
//! whose reports are not attested in their registry), which the admission
//! policy's `images.vulnerabilities` budget then reads. `-o yaml` prints the
//! resource instead, for `kubectl apply` or a Git repository.

use std::path::PathBuf;

use anyhow::{Context, bail};
use rampart_api::admin::{ApplyResourcesRequest, SourceText};
use rampart_api::image::ImageRef;
use rampart_api::oci::attestation::trivy_counts;
use serde_json::{Value, json};

use crate::client::{Target, rpc_error};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The Trivy JSON report (`trivy image --format json`), or - for stdin.
    #[arg(long)]
    trivy: PathBuf,
    /// The image scanned, by digest (NAME@sha256:…); by default the
    /// report's own Metadata.RepoDigests.
    image: Option<String>,
    /// The resource's name; by default the repository's last component
    /// and the digest's first 12 hex digits.
    #[arg(long)]
    name: Option<String>,
    /// Print the VulnerabilityReport as YAML instead of applying it.
    #[arg(short = 'o', long, value_parser = ["yaml"])]
    output: Option<String>,
}

pub async fn report(target: &Target, args: &ReportArgs) -> anyhow::Result<()> {
    let text = match args.trivy.to_str() {
        Some("-") => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
        _ => std::fs::read_to_string(&args.trivy)
            .with_context(|| format!("reading {}", args.trivy.display()))?,
    };
    let resource = resource(&text, args.image.as_deref(), args.name.as_deref())
        .with_context(|| format!("{}", args.trivy.display()))?;
    let yaml = serde_saphyr::to_string(&resource)?;
    if args.output.is_some() {
        print!("{yaml}");
        return Ok(());
    }
    let response = target
        .admin()
        .await?
        .apply_resources(ApplyResourcesRequest {
            sources: vec![SourceText {
                source: args.trivy.display().to_string(),
                text: yaml,
            }],
            dry_run: false,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    for result in response.results {
        let r = result.r#ref.unwrap_or_default();
        println!("vulnerabilityreport/{} {}", r.name, result.outcome);
    }
    Ok(())
}

/// The VulnerabilityReport for the Trivy JSON `text`, of `image` (or the
/// image the report names).
fn resource(text: &str, image: Option<&str>, name: Option<&str>) -> anyhow::Result<Value> {
    let report: Value = serde_json::from_str(text).context("not JSON")?;
    let counts = trivy_counts(&report).map_err(anyhow::Error::msg)?;
    let scanned: Vec<ImageRef> = report["Metadata"]["RepoDigests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| ImageRef::parse(d.as_str()?).ok())
        .filter(|r| r.digest.is_some())
        .collect();
    let image = match image {
        Some(image) => {
            let named = ImageRef::parse(image).map_err(anyhow::Error::msg)?;
            if named.digest.is_none() {
                bail!("{image} names no digest: a report is about content, give NAME@sha256:…");
            }
            // A report of other content must not vouch for this image.
            if !scanned.is_empty() && !scanned.iter().any(|s| s.digest == named.digest) {
                let of: Vec<String> = scanned.iter().map(ToString::to_string).collect();
                bail!("the report is of {}, not of {image}", of.join(", "));
            }
            image.to_owned()
        }
        None => match scanned.as_slice() {
            [one] => one.to_string(),
            [] => bail!(
                "the report names no image digest (Metadata.RepoDigests); give the image as NAME@sha256:…"
            ),
            several => {
                let of: Vec<String> = several.iter().map(ToString::to_string).collect();
                bail!(
                    "the report names several digests ({}); give the image",
                    of.join(", ")
                )
            }
        },
    };
    let parsed = ImageRef::parse(&image).map_err(anyhow::Error::msg)?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => default_name(&parsed),
    };
    let mut scanner = "Trivy".to_owned();
    if let Some(created) = report["CreatedAt"].as_str() {
        scanner.push_str(&format!(", {created}"));
    }
    Ok(json!({
        "apiVersion": rampart_api::mesh::API_VERSION,
        "kind": "VulnerabilityReport",
        "metadata": {"name": name},
        "spec": {"image": image, "scanner": scanner, "summary": counts},
    }))
}

/// `web-3f2a9c01b7e4` for `ghcr.io/acme/web@sha256:3f2a9c01b7e4…`.
fn default_name(image: &ImageRef) -> String {
    let last = image.repository.rsplit('/').next().unwrap_or("image");
    let mut base: String = last
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    base.truncate(48);
    let hex = image
        .digest
        .as_deref()
        .and_then(|d| d.strip_prefix("sha256:"))
        .unwrap_or_default();
    format!("{}-{}", base.trim_matches('-'), &hex[..hex.len().min(12)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trivy(repo_digests: Value) -> String {
        json!({
            "SchemaVersion": 2, "ArtifactName": "reg.example/shop/web_app:1",
            "Metadata": {"RepoDigests": repo_digests},
            "Results": [{"Target": "x", "Vulnerabilities": [
                {"VulnerabilityID": "CVE-1", "Severity": "CRITICAL"},
                {"VulnerabilityID": "CVE-2", "Severity": "HIGH"},
                {"VulnerabilityID": "CVE-3", "Severity": "HIGH"}]}]
        })
        .to_string()
    }

    #[test]
    fn a_trivy_report_becomes_a_report_of_its_digest_and_no_other() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let other = format!("sha256:{}", "cd".repeat(32));
        let text = trivy(json!([format!("reg.example/shop/web_app@{digest}")]));
        let r = resource(&text, None, None).unwrap();
        assert_eq!(
            r["spec"]["image"],
            format!("reg.example/shop/web_app@{digest}")
        );
        assert_eq!(r["spec"]["summary"]["critical"], 1);
        assert_eq!(r["spec"]["summary"]["high"], 2);
        assert_eq!(r["metadata"]["name"], "web-app-abababababab");
        let e = resource(
            &text,
            Some(&format!("reg.example/shop/web_app@{other}")),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the report is of"), "{e}");
        let e = resource(&text, Some("reg.example/shop/web:1"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no digest"), "{e}");
        let e = resource(&trivy(json!([])), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("give the image"), "{e}");
        assert!(resource("{}", None, None).is_err(), "not a Trivy report");
    }
}
