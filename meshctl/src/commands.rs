//! The commands: each talks to the admin API and prints for people.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rampart_api::admin::{CreateJoinTokenRequest, GetTrustBundleRequest, IssueCertificateRequest};
use rampart_certs::{KeyAndCsr, der_to_pem, key_to_pem};

use crate::client::{Target, rpc_error};

/// `meshctl token create`: prints only the token, for `$(...)`.
pub async fn token_create(
    target: &Target,
    namespace: &str,
    service_account: &str,
    ttl: Option<Duration>,
) -> anyhow::Result<()> {
    let response = target
        .admin()
        .await?
        .create_join_token(CreateJoinTokenRequest {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            ttl_seconds: ttl.map_or(0, |d| d.as_secs() as i64),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", response.token);
    Ok(())
}

/// `meshctl ca bundle`
pub async fn ca_bundle(target: &Target) -> anyhow::Result<()> {
    let response = target
        .admin()
        .await?
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    for root in response.roots_der {
        print!("{}", der_to_pem(&root));
    }
    Ok(())
}

/// `meshctl certificate issue`: the key is generated here and never sent.
pub async fn certificate_issue(
    target: &Target,
    namespace: &str,
    service_account: &str,
    ttl: Option<Duration>,
    out: &Path,
) -> anyhow::Result<()> {
    let request = KeyAndCsr::generate().context("generating a key")?;
    let response = target
        .admin()
        .await?
        .issue_certificate(IssueCertificateRequest {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            csr_der: request.csr_der.clone(),
            ttl_seconds: ttl.map_or(0, |d| d.as_secs() as i64),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    write_private_files(
        out,
        &[
            ("key.pem", key_to_pem(&request.key)),
            (
                "cert-chain.pem",
                response
                    .cert_chain_der
                    .iter()
                    .map(|c| der_to_pem(c))
                    .collect(),
            ),
            (
                "bundle.pem",
                response
                    .trust_bundle_der
                    .iter()
                    .map(|c| der_to_pem(c))
                    .collect(),
            ),
        ],
    )?;
    eprintln!(
        "wrote {} (key.pem, cert-chain.pem, bundle.pem) for {}",
        out.display(),
        response.spiffe_id
    );
    Ok(())
}

fn write_private_files(dir: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    for (name, contents) in files {
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
