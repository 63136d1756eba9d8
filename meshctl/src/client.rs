//! Finding and authenticating to the control plane: from a local data
//! directory (address in control-plane.json, credential in admin/), or a
//! remote address plus a credential directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rampart_api::admin::admin_service_client::AdminServiceClient;
use rampart_certs::tls::{CurrentSvid, PeerPolicy, client_config};
use rampart_certs::well_known::control_plane_id;
use rampart_certs::{Svid, TrustBundle};
use tonic::transport::Channel;

/// An error from the control plane's admin API, for people. Its message
/// says what was wrong; the code is added where it tells more (permission,
/// authentication, availability).
pub fn rpc_error(e: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    match e.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
            anyhow::anyhow!("{}", e.message())
        }
        code => anyhow::anyhow!("{code:?}: {}", e.message()),
    }
}

/// Which control plane to talk to, and as whom.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// Data directory of a local control plane (finds its address and the admin credential).
    #[arg(long, global = true, env = "RAMPART_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address (host:port) of a remote control plane; needs --credentials.
    #[arg(long, global = true, requires = "credentials")]
    pub control_plane: Option<String>,
    /// Directory with the admin credential: cert-chain.pem, key.pem, bundle.pem.
    #[arg(long, global = true)]
    pub credentials: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct Discovery {
    grpc_addr: String,
    #[serde(default)]
    metrics_addr: Option<std::net::SocketAddr>,
}

impl Target {
    fn resolve(&self) -> anyhow::Result<(String, PathBuf)> {
        match (&self.control_plane, &self.data_dir) {
            (Some(addr), _) => Ok((
                addr.clone(),
                self.credentials
                    .clone()
                    .expect("clap requires --credentials"),
            )),
            (None, Some(dir)) => {
                let path = dir.join("control-plane.json");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "reading {} (is rampart-control running with --data-dir {}?)",
                        path.display(),
                        dir.display()
                    )
                })?;
                let discovery: Discovery = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                let credentials = self
                    .credentials
                    .clone()
                    .unwrap_or_else(|| dir.join("admin"));
                Ok((discovery.grpc_addr, credentials))
            }
            (None, None) => bail!(
                "no control plane given: pass --data-dir DIR (local) or --control-plane HOST:PORT --credentials DIR"
            ),
        }
    }

    /// The metrics endpoint of a local control plane (from its data
    /// directory); `None` for a remote one.
    pub fn local_metrics_addr(&self) -> Option<std::net::SocketAddr> {
        if self.control_plane.is_some() {
            return None;
        }
        let text =
            std::fs::read_to_string(self.data_dir.as_ref()?.join("control-plane.json")).ok()?;
        serde_json::from_str::<Discovery>(&text).ok()?.metrics_addr
    }

    /// The control plane's gRPC address.
    pub fn address(&self) -> anyhow::Result<String> {
        Ok(self.resolve()?.0)
    }

    /// An authenticated admin client.
    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        let (addr, credentials) = self.resolve()?;
        let channel = connect(&addr, &credentials).await?;
        Ok(AdminServiceClient::new(channel))
    }
}

fn read(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).with_context(|| format!("reading the admin credential {}", path.display()))
}

async fn connect(addr: &str, credentials: &Path) -> anyhow::Result<Channel> {
    let bundle = TrustBundle::from_pem_detect(&read(credentials, "bundle.pem")?)?;
    let svid = Svid::from_pem(
        &read(credentials, "cert-chain.pem")?,
        &read(credentials, "key.pem")?,
    )
    .context("loading the admin credential")?;
    let server = PeerPolicy::exactly(control_plane_id(bundle.trust_domain()));
    let tls = client_config(Some(CurrentSvid::new(&svid)?), &bundle, server)?;
    rampart_api::connect(addr, tls)
        .await
        .with_context(|| format!("connecting to the control plane at {addr}"))
}
