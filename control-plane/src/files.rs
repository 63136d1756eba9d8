//! Files the control plane writes for its operators: private ones are created
//! owner-only (0600, in 0700 directories) before any secret is written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

/// Creates `dir` (and parents) readable only by the owner.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `contents` to `path` atomically (temp file + rename), mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        private_dir(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Reads a UTF-8 file, naming it in the error.
pub fn read_to_string(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a private key, refusing one that others may read or its group may
/// change: a CA key anyone on the machine can copy is a CA anyone can run.
/// (Group read is allowed: Kubernetes gives mounted Secrets to `fsGroup`.)
pub fn read_private_key(path: &Path) -> anyhow::Result<String> {
    // Follows symlinks, as Secret volumes are made of them.
    let mode = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o027 != 0 {
        bail!(
            "{} has mode {mode:03o}: a CA key must not be readable by others nor writable by its group; \
             chmod 600 it (in Kubernetes, mount its Secret with defaultMode: 0400)",
            path.display()
        );
    }
    read_to_string(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca-key.pem");
        write_private(&key, b"KEY").unwrap();
        assert_eq!(read_private_key(&key).unwrap(), "KEY");
        for mode in [0o640, 0o400] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            assert!(read_private_key(&key).is_ok(), "{mode:o}");
        }
        for mode in [0o644, 0o604, 0o660, 0o666] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let e = read_private_key(&key).unwrap_err().to_string();
            assert!(
                e.contains(&format!("mode {mode:03o}")) && e.contains("chmod 600"),
                "{e}"
            );
        }
    }
}
