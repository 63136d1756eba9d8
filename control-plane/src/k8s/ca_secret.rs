//! The CA's root in a Kubernetes Secret, so every control plane replica
//! signs with the same key and the mesh has one trust bundle. The first
//! replica to start generates the root and creates the Secret; one that
//! loses that race reads the winner's. The key never touches the disk and
//! is never logged.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rampart_certs::{CertificateAuthority, TrustDomain};

const CERT: &str = "root-cert.pem";
const KEY: &str = "root-key.pem";

/// The root (certificate and key PEM) in Secret `namespace/name`, created
/// with a new root if there is none.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &TrustDomain,
) -> anyhow::Result<(String, String)> {
    let api = Api::<Secret>::namespaced(client, namespace);
    if let Some(secret) = api.get_opt(name).await? {
        return pems(&secret, namespace, name);
    }
    let root = CertificateAuthority::generate_root(trust_domain)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "rampart".to_owned())].into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [
                (
                    CERT.to_owned(),
                    ByteString(root.cert_pem.clone().into_bytes()),
                ),
                (
                    KEY.to_owned(),
                    ByteString(root.key_pem.clone().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated the mesh root CA into a Secret");
            Ok((root.cert_pem, root.key_pem))
        }
        // Another replica created it first: use its root, not ours.
        Err(kube::Error::Api(s)) if s.code == 409 => pems(&api.get(name).await?, namespace, name),
        Err(e) => Err(e.into()),
    }
}

fn pems(secret: &Secret, namespace: &str, name: &str) -> anyhow::Result<(String, String)> {
    let field = |key: &str| -> anyhow::Result<String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} has no {key}"))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| anyhow::anyhow!("Secret {namespace}/{name}: {key} is not PEM text"))
    };
    Ok((field(CERT)?, field(KEY)?))
}
