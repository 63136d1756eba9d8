//! A real `rampart-control` for a test: started on a data directory, its
//! admin API and CA reached over mTLS, root rotations followed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rampart_api::admin::admin_service_client::AdminServiceClient;
use rampart_api::ca::certificate_service_client::CertificateServiceClient;
use rampart_api::ca::{SignRequest, SignResponse};
use rampart_certs::tls::{CurrentSvid, PeerPolicy, client_config};
use rampart_certs::well_known::control_plane_id;
use rampart_certs::{KeyAndCsr, Svid, TrustBundle};
use tonic::transport::Channel;

use crate::{Logs, bin, http_get};

/// A running `rampart-control` on ephemeral loopback ports.
pub struct ControlPlane {
    pub child: Child,
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub metrics_addr: String,
    /// Where the admission webhooks listen (with `--webhook-addr`).
    pub webhook_addr: Option<String>,
    pub logs: Logs,
}

impl ControlPlane {
    /// Starts a control plane on `data_dir` with extra flags and waits until ready.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("rampart-control"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(if extra.contains(&"--grpc-addr") {
                &[][..]
            } else {
                &["--grpc-addr", "127.0.0.1:0"][..]
            })
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting rampart-control");
        let logs = Logs::default();
        logs.capture(child.stderr.take().unwrap());
        let discovery = data_dir.join("control-plane.json");
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("rampart-control exited with {status}:\n{}", logs.text());
            }
            if let Ok(text) = std::fs::read_to_string(&discovery) {
                let d: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if d["pid"].as_u64() == Some(u64::from(child.id())) {
                    let cp = Self {
                        grpc_addr: d["grpc_addr"].as_str().unwrap().to_owned(),
                        metrics_addr: d["metrics_addr"].as_str().unwrap().to_owned(),
                        webhook_addr: d["webhook_addr"].as_str().map(str::to_owned),
                        data_dir: data_dir.to_owned(),
                        child,
                        logs,
                    };
                    if cp
                        .http_get("/readyz")
                        .await
                        .is_ok_and(|(code, _)| code == 200)
                    {
                        return cp;
                    }
                    return cp.wait_ready().await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("rampart-control did not become ready:\n{}", logs.text());
    }

    async fn wait_ready(self) -> Self {
        for _ in 0..100 {
            if self
                .http_get("/readyz")
                .await
                .is_ok_and(|(code, _)| code == 200)
            {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("/readyz never answered 200");
    }

    /// A plain HTTP/1.1 GET on the metrics port: (status, body).
    pub async fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.metrics_addr, path).await
    }

    /// The trust bundle the control plane wrote for its admin.
    pub fn bundle(&self) -> TrustBundle {
        let pem = std::fs::read(self.data_dir.join("admin/bundle.pem")).unwrap();
        TrustBundle::from_pem_detect(&pem).unwrap()
    }

    /// The admin credential.
    pub fn admin_svid(&self) -> Svid {
        let dir = self.data_dir.join("admin");
        Svid::from_pem(
            &std::fs::read(dir.join("cert-chain.pem")).unwrap(),
            &std::fs::read(dir.join("key.pem")).unwrap(),
        )
        .unwrap()
    }

    /// A gRPC channel, presenting `identity` if given.
    pub async fn channel(&self, identity: Option<&Svid>) -> Channel {
        let bundle = self.bundle();
        let server = PeerPolicy::exactly(control_plane_id(bundle.trust_domain()));
        let client = identity.map(|svid| CurrentSvid::new(svid).unwrap());
        let tls = client_config(client, &bundle, server).unwrap();
        rampart_api::connect(&self.grpc_addr, tls)
            .await
            .expect("connecting to the control plane")
    }

    /// The admin API as the admin.
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(Some(&self.admin_svid())).await)
    }

    /// Creates a join token through the admin API.
    pub async fn join_token(&self, namespace: &str, sa: &str, ttl_seconds: i64) -> String {
        self.admin()
            .await
            .create_join_token(rampart_api::admin::CreateJoinTokenRequest {
                namespace: namespace.into(),
                service_account: sa.into(),
                ttl_seconds,
            })
            .await
            .expect("creating a join token")
            .into_inner()
            .token
    }

    /// An SVID for `namespace`/`sa`, obtained with a fresh join token.
    pub async fn workload_svid(&self, namespace: &str, sa: &str) -> Svid {
        let token = self.join_token(namespace, sa, 0).await;
        let (response, key) = sign(self.channel(None).await, Some(&token), None, 0)
            .await
            .expect("signing with a fresh join token");
        svid_of(&response, &key)
    }

    /// Runs meshctl against this control plane's data directory.
    pub fn meshctl(&self, args: &[&str]) -> Output {
        Command::new(bin("meshctl"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .expect("running meshctl")
    }

    /// Runs meshctl and fails the test, with meshctl's message, unless it succeeds.
    pub fn meshctl_ok(&self, args: &[&str]) -> Output {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The meshctl command line for `args`, for scripts the tests run.
    pub fn meshctl_argv(&self, args: &[&str]) -> Vec<String> {
        [bin("meshctl").display().to_string(), "--data-dir".into()]
            .into_iter()
            .chain([self.data_dir.display().to_string()])
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect()
    }

    /// `meshctl certificate issue` for namespace `default`, into `out`.
    pub fn issue_certificate(&self, service_account: &str, out: &Path) {
        self.meshctl_ok(&[
            "certificate",
            "issue",
            "--namespace",
            "default",
            "--service-account",
            service_account,
            "--out",
            out.to_str().unwrap(),
        ]);
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A root rotation's phase ("" when none) as `cp` sees it; `None` if it
/// does not answer.
pub async fn rotation_phase(cp: &ControlPlane) -> Option<String> {
    let mut admin = cp.admin().await;
    let status = admin
        .get_root_rotation(rampart_api::admin::GetRootRotationRequest {})
        .await
        .ok()?;
    Some(status.into_inner().phase)
}

/// Waits (up to two minutes) until no control plane of `cps` has a root
/// rotation under way; the phases the first went through meanwhile (with
/// when, printed), or `Err` with `meshctl ca rotation` and the logs.
pub async fn until_rotated(cps: &[&ControlPlane]) -> Result<Vec<String>, String> {
    let started = std::time::Instant::now();
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..1200 {
        let mut phases = Vec::new();
        for cp in cps {
            phases.push(rotation_phase(cp).await);
        }
        if phases.iter().all(|p| p.as_deref() == Some("")) {
            return Ok(seen);
        }
        if let Some(Some(p)) = phases.first()
            && !p.is_empty()
            && seen.last() != Some(p)
        {
            eprintln!("phase {p} at {:.1}s", started.elapsed().as_secs_f64());
            seen.push(p.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut why = String::from_utf8_lossy(&cps[0].meshctl(&["ca", "rotation"]).stdout).into_owned();
    for cp in cps {
        why.push_str(&format!("\n--- {} ---\n{}", cp.grpc_addr, cp.logs.text()));
    }
    Err(why)
}

/// Signs a fresh CSR with the given proof; returns the response and the key.
pub async fn sign(
    channel: Channel,
    join_token: Option<&str>,
    csr_der: Option<Vec<u8>>,
    ttl_seconds: i64,
) -> Result<(SignResponse, KeyAndCsr), tonic::Status> {
    let request = KeyAndCsr::generate().unwrap();
    let mut sign = tonic::Request::new(SignRequest {
        csr_der: csr_der.unwrap_or_else(|| request.csr_der.clone()),
        ttl_seconds,
    });
    if let Some(token) = join_token {
        sign.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let response = CertificateServiceClient::new(channel)
        .sign(sign)
        .await?
        .into_inner();
    Ok((response, request))
}

/// A CSR (with a fresh key) whose only SAN is `uri`: asking for an
/// identity the caller may not have.
pub fn csr_naming(uri: &str) -> Vec<u8> {
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// The SVID from a successful sign.
pub fn svid_of(response: &SignResponse, request: &KeyAndCsr) -> Svid {
    let chain = response
        .cert_chain_der
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
        .collect();
    Svid::new(chain, request.key.clone_key()).unwrap()
}
