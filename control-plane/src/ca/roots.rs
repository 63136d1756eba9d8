//! The self-signed roots kept in `<data-dir>/ca/`, and where a root
//! rotation stands. `roots.json` lists the roots by file stem
//! (`<stem>-cert.pem`, `<stem>-key.pem`), the signing root first; without
//! it there is one root, `root`. Each step of a rotation is one atomic
//! rewrite of that file, so a control plane killed at any point starts
//! again where it was.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rampart_certs::{CertificateAuthority, SvidLifetimes, TrustDomain};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::files::{read_private_key, read_to_string, write_private};

/// The stem of the first root, from before rotations existed.
const FIRST: &str = "root";
const STATE_FILE: &str = "roots.json";

/// Which roots are trusted, which one signs, and the rotation under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roots {
    /// File stems, the signing root first, then any other still trusted.
    pub trusted: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
}

/// A rotation in progress: its phase, and since when (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub phase: Phase,
    pub since_unix: i64,
}

/// The phases of a root rotation. Each ends when every connected proxy has
/// taken what it brought (see `rotation.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The new root is trusted beside the old one, which still signs.
    Trust,
    /// The new root signs; the old one is still trusted while SVIDs it
    /// signed are replaced.
    Sign,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Trust => "trust",
            Phase::Sign => "sign",
        }
    }
}

/// The files of the roots in one directory.
#[derive(Debug, Clone)]
pub struct RootFiles {
    dir: PathBuf,
}

impl RootFiles {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("ca"),
        }
    }

    fn cert(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}-cert.pem"))
    }

    fn key(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}-key.pem"))
    }

    /// The recorded state; one root `root` if none is recorded. A state
    /// naming roots whose files are missing is refused rather than guessed.
    pub fn load(&self) -> anyhow::Result<Roots> {
        let path = self.dir.join(STATE_FILE);
        let roots = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Roots>(&bytes)
                .with_context(|| format!("{} is not a valid root list", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Roots {
                trusted: vec![FIRST.to_owned()],
                rotation: None,
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if roots.trusted.is_empty() {
            bail!("{} lists no root", path.display());
        }
        for stem in &roots.trusted {
            if !is_stem(stem) {
                bail!("{} names {stem:?}, not a root file stem", path.display());
            }
        }
        Ok(roots)
    }

    /// Records `roots`: one atomic rename.
    pub fn save(&self, roots: &Roots) -> anyhow::Result<()> {
        write_private(
            &self.dir.join(STATE_FILE),
            &serde_json::to_vec_pretty(roots)?,
        )
    }

    /// Creates the first root unless there is one (first start).
    pub fn create_first(&self, trust_domain: &TrustDomain) -> anyhow::Result<()> {
        let (cert, key) = (self.cert(FIRST), self.key(FIRST));
        if cert.exists() || self.dir.join(STATE_FILE).exists() {
            return Ok(());
        }
        if key.exists() {
            bail!(
                "{} exists without {}; refusing to overwrite a CA key",
                key.display(),
                cert.display()
            );
        }
        self.generate(FIRST, trust_domain)?;
        tracing::info!(path = %cert.display(), "generated a new self-signed root CA");
        Ok(())
    }

    /// Generates a root under `stem` (key first, so a certificate never
    /// exists without its key).
    pub fn generate(&self, stem: &str, trust_domain: &TrustDomain) -> anyhow::Result<()> {
        let root = CertificateAuthority::generate_root(trust_domain)?;
        write_private(&self.key(stem), root.key_pem.as_bytes())?;
        write_private(&self.cert(stem), root.cert_pem.as_bytes())
    }

    /// The root certificate of `stem`.
    pub fn certificate(&self, stem: &str) -> anyhow::Result<CertificateDer<'static>> {
        let pem = read_to_string(&self.cert(stem))?;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .with_context(|| format!("{} holds no certificate", self.cert(stem).display()))
    }

    /// Deletes a root no longer trusted: its key first.
    pub fn remove(&self, stem: &str) -> anyhow::Result<()> {
        for path in [self.key(stem), self.cert(stem)] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", path.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The CA of `roots`: the first signs (directly, or through a fresh
    /// intermediate), all are trusted, the signing root first.
    pub fn authority(
        &self,
        roots: &Roots,
        trust_domain: &TrustDomain,
        intermediate: bool,
        lifetimes: SvidLifetimes,
    ) -> anyhow::Result<CertificateAuthority> {
        let signing = &roots.trusted[0];
        let cert = read_to_string(&self.cert(signing))?;
        let key = read_private_key(&self.key(signing))?;
        let td = trust_domain.clone();
        let ca = if intermediate {
            CertificateAuthority::with_generated_intermediate(td, &cert, &key, lifetimes)
        } else {
            CertificateAuthority::from_root_pem(td, &cert, &key, lifetimes)
        }
        .with_context(|| format!("loading the CA from {}", self.dir.display()))?;
        let others = roots.trusted[1..]
            .iter()
            .map(|stem| self.certificate(stem))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ca.trusting_also(&others))
    }
}

/// A stem is a plain file name part: no path, nothing hidden.
fn is_stem(stem: &str) -> bool {
    !stem.is_empty()
        && stem.len() <= 64
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        "example.org".parse().unwrap()
    }

    #[test]
    fn without_a_state_file_there_is_the_first_root() {
        let dir = tempfile::tempdir().unwrap();
        let files = RootFiles::in_data_dir(dir.path());
        files.create_first(&td()).unwrap();
        let roots = files.load().unwrap();
        assert_eq!(roots.trusted, vec!["root"]);
        let ca = files
            .authority(&roots, &td(), false, Default::default())
            .unwrap();
        assert_eq!(ca.bundle().roots().len(), 1);
    }

    #[test]
    fn the_signing_root_comes_first_and_others_are_trusted_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = RootFiles::in_data_dir(dir.path());
        files.create_first(&td()).unwrap();
        files.generate("root-2", &td()).unwrap();
        let (old, new) = (
            files.certificate("root").unwrap(),
            files.certificate("root-2").unwrap(),
        );
        for (trusted, first) in [(["root", "root-2"], &old), (["root-2", "root"], &new)] {
            let roots = Roots {
                trusted: trusted.iter().map(|s| s.to_string()).collect(),
                rotation: None,
            };
            files.save(&roots).unwrap();
            assert_eq!(files.load().unwrap(), roots);
            let ca = files
                .authority(&roots, &td(), true, Default::default())
                .unwrap();
            assert_eq!(ca.bundle().roots().len(), 2);
            assert_eq!(&ca.bundle().roots()[0], first);
        }
    }

    #[test]
    fn a_state_naming_a_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = RootFiles::in_data_dir(dir.path());
        for bad in [r#"{"trusted":[]}"#, r#"{"trusted":["../x"]}"#, "nonsense"] {
            std::fs::create_dir_all(dir.path().join("ca")).unwrap();
            std::fs::write(dir.path().join("ca/roots.json"), bad).unwrap();
            assert!(files.load().is_err(), "{bad}");
        }
    }
}
