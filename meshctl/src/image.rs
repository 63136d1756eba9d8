//! `meshctl image`: sign and verify images in their registry, in cosign's
//! key-based format (`rampart_api::oci`), so a pipeline signs what the
//! admission policy's `images.signedBy` then admits. `cosign verify --key`
//! accepts these signatures, and `meshctl image verify` accepts cosign's.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rampart_api::image::ImageRef;
use rampart_api::oci::cosign::{PublicKey, SigningKey};
use rampart_api::oci::{self, Registry, SignatureCheck};

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Sign IMAGE (at the digest its tag points at now) with a PKCS#8
    /// P-256 key; prints the signed reference, pinned to its digest.
    Sign {
        /// The private key (PEM `PRIVATE KEY`, e.g. from `meshctl image keygen`).
        #[arg(long)]
        key: PathBuf,
        image: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Check IMAGE's signatures: exit 0 signed by one of the keys, 1 not
    /// signed by any, 2 when the registry or a key cannot be read.
    Verify {
        /// A public key (PEM `PUBLIC KEY`, e.g. cosign.pub); repeatable: any one suffices.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        image: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Supply a Trivy JSON report of an image to the control plane (a
    /// VulnerabilityReport), for the policy's vulnerability budget.
    Report(crate::image_report::ReportArgs),
    /// Write a new P-256 key pair: KEY (private, 0600) and KEY.pub.
    Keygen {
        /// Where the private key goes.
        #[arg(long, default_value = "rampart-image.key")]
        key: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    /// Speak plain HTTP to this registry (host:port), e.g. a local test
    /// registry; repeatable.
    #[arg(long = "plain-http")]
    pub plain_http: Vec<String>,
    /// How long each registry call may take.
    #[arg(long, default_value = "10s", value_parser = rampart_api::duration::parse)]
    pub registry_timeout: Duration,
    /// Registry credentials: a Docker config.json (`docker login`,
    /// `podman login`); without it registries are asked anonymously.
    #[arg(long, env = "REGISTRY_AUTH_FILE")]
    pub registry_auth: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn client(&self) -> anyhow::Result<Registry> {
        Registry::new(self.plain_http.clone(), self.registry_timeout)
            .context("setting up the registry client")?
            .with_credentials_file(self.registry_auth.as_deref())
            .map_err(anyhow::Error::msg)
    }
}

pub async fn run(target: &crate::client::Target, command: ImageCommand) -> ExitCode {
    let result = match command {
        ImageCommand::Verify {
            keys,
            image,
            registry,
        } => return verify(&keys, &image, &registry).await,
        ImageCommand::Sign {
            key,
            image,
            registry,
        } => sign(&key, &image, &registry).await,
        ImageCommand::Keygen { key } => keygen(&key),
        ImageCommand::Report(args) => crate::image_report::report(target, &args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn sign(key: &Path, image: &str, registry: &RegistryArgs) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    let key = SigningKey::from_pem(&pem).with_context(|| format!("the key {}", key.display()))?;
    let image = ImageRef::parse(image).map_err(anyhow::Error::msg)?;
    let digest = oci::sign(&registry.client()?, &image, &key)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("signing {image}"))?;
    println!("{}", image.pinned(&digest));
    eprintln!(
        "signed by {} (tag {})",
        key.public_key().fingerprint(),
        rampart_api::oci::cosign::signature_tag(&digest)
    );
    Ok(())
}

async fn verify(keys: &[PathBuf], image: &str, registry: &RegistryArgs) -> ExitCode {
    let invalid = |e: anyhow::Error| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    };
    let mut public = Vec::new();
    for path in keys {
        let read = std::fs::read_to_string(path)
            .with_context(|| format!("reading the key {}", path.display()))
            .and_then(|pem| {
                PublicKey::from_pem(&pem).with_context(|| format!("the key {}", path.display()))
            });
        match read {
            Ok(key) => public.push(key),
            Err(e) => return invalid(e),
        }
    }
    let image = match ImageRef::parse(image) {
        Ok(image) => image,
        Err(e) => return invalid(anyhow::Error::msg(e)),
    };
    let client = match registry.client() {
        Ok(client) => client,
        Err(e) => return invalid(e),
    };
    match oci::verify(&client, &image, &public).await {
        SignatureCheck::Verified { digest, by } => {
            println!("{}", image.pinned(&digest));
            eprintln!("verified: signed by {}", by.join(", "));
            ExitCode::SUCCESS
        }
        SignatureCheck::Unsigned { digest, found } => {
            eprintln!(
                "not verified: {} has {found} signature{}, none valid by the given key{}",
                image.pinned(&digest),
                if found == 1 { "" } else { "s" },
                if keys.len() == 1 { "" } else { "s" },
            );
            ExitCode::from(1)
        }
        SignatureCheck::Failed(e) => invalid(anyhow::anyhow!("cannot check {image}: {e}")),
    }
}

fn keygen(key: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pem = SigningKey::generate_pem();
    let public = SigningKey::from_pem(&pem)
        .expect("a generated key reads back")
        .public_key();
    // create_new: never overwrite a key someone signs with.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .with_context(|| format!("creating {}", key.display()))?;
    file.write_all(pem.as_bytes())?;
    let public_path = PathBuf::from(format!("{}.pub", key.display()));
    std::fs::write(&public_path, public.to_pem())
        .with_context(|| format!("writing {}", public_path.display()))?;
    println!(
        "wrote {} and {} ({})",
        key.display(),
        public_path.display(),
        public.fingerprint()
    );
    Ok(())
}
