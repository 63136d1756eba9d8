//! The CA's own roots, where a root rotation stands, and where both are
//! kept: files in `<data-dir>/ca/` (standalone), or one Kubernetes Secret
//! that every replica reads (see `secret_roots.rs`). Either way the roots
//! are named by stem (`<stem>-cert.pem`, `<stem>-key.pem`) and
//! `roots.json` lists them, the signing root first; without it there is
//! one root, `root`. Each step of a rotation is one atomic write of the
//! list, so a control plane killed at any point starts again where it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rampart_certs::{CertificateAuthority, SvidLifetimes, TrustDomain};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::files::{read_private_key, read_to_string, write_private};

/// The stem of the first root, from before rotations existed.
pub const FIRST: &str = "root";
/// The name of the list, as a file or a Secret key.
pub const LIST: &str = "roots.json";

/// Which roots are trusted, which one signs, and the rotation under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roots {
    /// Stems, the signing root first, then any other still trusted.
    pub trusted: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
}

impl Roots {
    /// One root, no rotation: what there is before any rotation.
    pub fn first() -> Self {
        Self {
            trusted: vec![FIRST.to_owned()],
            rotation: None,
        }
    }

    /// Parses and checks a stored list.
    pub fn parse(bytes: &[u8], whence: &str) -> anyhow::Result<Self> {
        let roots = serde_json::from_slice::<Roots>(bytes)
            .with_context(|| format!("{whence} is not a valid root list"))?;
        if roots.trusted.is_empty() {
            bail!("{whence} lists no root");
        }
        for stem in &roots.trusted {
            if !is_stem(stem) {
                bail!("{whence} names {stem:?}, not a root stem");
            }
        }
        Ok(roots)
    }
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

/// One root's certificate and key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct RootPem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for RootPem {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPem").finish_non_exhaustive()
    }
}

/// The list and the PEM of every root it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSet {
    pub roots: Roots,
    pub pems: BTreeMap<String, RootPem>,
}

impl RootSet {
    /// A new root generated under `stem`.
    pub fn generate(trust_domain: &TrustDomain) -> anyhow::Result<RootPem> {
        let root = CertificateAuthority::generate_root(trust_domain)?;
        Ok(RootPem {
            cert: root.cert_pem,
            key: root.key_pem,
        })
    }

    /// The CA of this set: the first root signs (directly, or through a
    /// fresh intermediate), all are trusted, the signing root first.
    pub fn authority(
        &self,
        trust_domain: &TrustDomain,
        intermediate: bool,
        lifetimes: SvidLifetimes,
    ) -> anyhow::Result<CertificateAuthority> {
        let pem = |stem: &String| {
            self.pems
                .get(stem)
                .with_context(|| format!("root {stem} is listed but not stored"))
        };
        let signing = pem(&self.roots.trusted[0])?;
        let td = trust_domain.clone();
        let ca = if intermediate {
            CertificateAuthority::with_generated_intermediate(
                td,
                &signing.cert,
                &signing.key,
                lifetimes,
            )
        } else {
            CertificateAuthority::from_root_pem(td, &signing.cert, &signing.key, lifetimes)
        }?;
        let others = self.roots.trusted[1..]
            .iter()
            .map(|stem| {
                CertificateDer::from_pem_slice(pem(stem)?.cert.as_bytes())
                    .with_context(|| format!("root {stem}: no certificate"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ca.trusting_also(&others))
    }
}

/// The roots as files in one directory (owner-only).
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

    fn list(&self) -> anyhow::Result<Roots> {
        let path = self.dir.join(LIST);
        match std::fs::read(&path) {
            Ok(bytes) => Roots::parse(&bytes, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Roots::first()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub(super) fn read(&self) -> anyhow::Result<RootSet> {
        let roots = self.list()?;
        let mut pems = BTreeMap::new();
        for stem in &roots.trusted {
            let pem = RootPem {
                cert: read_to_string(&self.cert(stem))?,
                key: read_private_key(&self.key(stem))?,
            };
            pems.insert(stem.clone(), pem);
        }
        Ok(RootSet { roots, pems })
    }

    /// Creates the first root unless there is one (first start).
    pub(super) fn create_first(&self, trust_domain: &TrustDomain) -> anyhow::Result<()> {
        let (cert, key) = (self.cert(FIRST), self.key(FIRST));
        if cert.exists() || self.dir.join(LIST).exists() {
            return Ok(());
        }
        if key.exists() {
            bail!(
                "{} exists without {}; refusing to overwrite a CA key",
                key.display(),
                cert.display()
            );
        }
        self.write_root(FIRST, &RootSet::generate(trust_domain)?)?;
        tracing::info!(path = %cert.display(), "generated a new self-signed root CA");
        Ok(())
    }

    /// Key first, so a certificate never exists without its key.
    fn write_root(&self, stem: &str, pem: &RootPem) -> anyhow::Result<()> {
        write_private(&self.key(stem), pem.key.as_bytes())?;
        write_private(&self.cert(stem), pem.cert.as_bytes())
    }

    pub(super) fn write(&self, set: &RootSet) -> anyhow::Result<()> {
        let before = self.list()?;
        for (stem, pem) in &set.pems {
            if !self.cert(stem).exists() {
                self.write_root(stem, pem)?;
            }
        }
        write_private(
            &self.dir.join(LIST),
            &serde_json::to_vec_pretty(&set.roots)?,
        )?;
        // Only once nothing names it any more: its key first.
        for stem in before.trusted.iter().filter(|s| !set.pems.contains_key(*s)) {
            for path in [self.key(stem), self.cert(stem)] {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("removing {}", path.display()));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// A stem is a plain name part: no path, nothing hidden.
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
    fn without_a_list_there_is_the_first_root() {
        let dir = tempfile::tempdir().unwrap();
        let files = RootFiles::in_data_dir(dir.path());
        files.create_first(&td()).unwrap();
        let set = files.read().unwrap();
        assert_eq!(set.roots, Roots::first());
        let ca = set.authority(&td(), false, Default::default()).unwrap();
        assert_eq!(ca.bundle().roots().len(), 1);
        // Opened again: the same root, not a new one.
        files.create_first(&td()).unwrap();
        assert_eq!(files.read().unwrap(), set);
    }

    #[test]
    fn the_signing_root_comes_first_and_a_dropped_root_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = RootFiles::in_data_dir(dir.path());
        files.create_first(&td()).unwrap();
        let mut set = files.read().unwrap();
        set.pems
            .insert("root-2".into(), RootSet::generate(&td()).unwrap());
        for order in [["root", "root-2"], ["root-2", "root"]] {
            set.roots.trusted = order.iter().map(|s| s.to_string()).collect();
            files.write(&set).unwrap();
            let read = files.read().unwrap();
            assert_eq!(read, set);
            let ca = read.authority(&td(), true, Default::default()).unwrap();
            assert_eq!(ca.bundle().roots().len(), 2);
            let first = CertificateDer::from_pem_slice(set.pems[order[0]].cert.as_bytes()).unwrap();
            assert_eq!(ca.bundle().roots()[0], first);
        }
        set.roots.trusted = vec!["root-2".into()];
        set.pems.remove("root");
        files.write(&set).unwrap();
        assert!(!dir.path().join("ca/root-key.pem").exists());
        assert_eq!(files.read().unwrap(), set);
        // Roots gone from under it: an error, never a new root.
        std::fs::remove_file(dir.path().join("ca/root-2-cert.pem")).unwrap();
        assert!(files.read().is_err());
    }

    #[test]
    fn a_list_naming_a_path_or_nothing_is_refused() {
        for bad in [r#"{"trusted":[]}"#, r#"{"trusted":["../x"]}"#, "nonsense"] {
            assert!(Roots::parse(bad.as_bytes(), "test").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_root_pem_never_shows_its_key() {
        let pem = RootSet::generate(&td()).unwrap();
        assert!(!format!("{pem:?}").contains("PRIVATE"));
    }
}
