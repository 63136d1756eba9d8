//! A real OCI registry on loopback (Debian's `docker-registry`, the CNCF
//! distribution server), images built with `umoci` and pushed with
//! `skopeo`, and a real `cosign` (built from the Go module proxy by
//! scripts/test.sh) for format compatibility. A missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A running registry; killed when dropped.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    child: Child,
    config: PathBuf,
    /// `user:password` when it asks for a login.
    login: Option<String>,
    /// Then, a Docker config.json with that login (`--registry-auth`).
    pub auth_file: Option<PathBuf>,
}

impl Registry {
    /// Starts a registry storing under `dir`.
    pub async fn start(dir: &Path) -> Registry {
        Self::start_with(dir, None).await
    }

    /// Starts one that wants HTTP Basic `user`/`password` for everything
    /// (an htpasswd file made with `htpasswd -B`, Debian apache2-utils).
    pub async fn start_with_login(dir: &Path, user: &str, password: &str) -> Registry {
        Self::start_with(dir, Some((user, password))).await
    }

    async fn start_with(dir: &Path, login: Option<(&str, &str)>) -> Registry {
        let port = crate::free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        let mut yaml = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        let mut auth_file = None;
        if let Some((user, password)) = login {
            let file = dir.join("auth.json");
            let auths =
                serde_json::json!({"auths": {&addr: {"username": user, "password": password}}});
            std::fs::write(&file, auths.to_string()).unwrap();
            auth_file = Some(file);
            let htpasswd = dir.join("htpasswd");
            let out = run("htpasswd", &["-Bbn", user, password]);
            std::fs::write(&htpasswd, &out.stdout).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: rampart-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let mut registry = Registry {
            child: spawn(&config),
            addr,
            config,
            login: login.map(|(user, password)| format!("{user}:{password}")),
            auth_file,
        };
        registry.wait_ready().await;
        registry
    }

    async fn wait_ready(&mut self) {
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status}");
            }
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("docker-registry did not listen on {}", self.addr);
    }

    /// Stops it (the port then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and storage.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.config);
        self.wait_ready().await;
    }

    /// Builds an image whose content is unique to `content` (its command)
    /// and pushes it as `repository:tag`; returns its digest.
    pub fn push(&self, work: &Path, repository: &str, tag: &str, content: &str) -> String {
        let layout = work.join(format!("layout-{}", crate::free_port()));
        let layout = layout.to_str().unwrap();
        run("umoci", &["init", "--layout", layout]);
        let image = format!("{layout}:{tag}");
        run("umoci", &["new", "--image", &image]);
        run(
            "umoci",
            &["config", "--image", &image, "--config.cmd", content],
        );
        let target = format!("docker://{}/{repository}:{tag}", self.addr);
        let creds = |flag: &str| self.login.as_ref().map(|l| format!("--{flag}={l}"));
        let mut copy = vec![
            "copy".to_owned(),
            "-q".into(),
            "--dest-tls-verify=false".into(),
        ];
        copy.extend(creds("dest-creds"));
        copy.extend([format!("oci:{image}"), target.clone()]);
        run(
            "skopeo",
            &copy.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let mut inspect = vec!["inspect".to_owned(), "--tls-verify=false".into()];
        inspect.extend(creds("creds"));
        inspect.extend(["--format".into(), "{{.Digest}}".into(), target]);
        let digest = run(
            "skopeo",
            &inspect.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        String::from_utf8(digest.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(config: &Path) -> Child {
    Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting docker-registry (Debian package docker-registry; scripts/test.sh installs it)")
}

impl Registry {
    /// `meshctl image keygen --key KEY`: the key pair for [`Registry::sign`].
    pub fn keygen(key: &str) {
        run(
            crate::bin("meshctl").to_str().unwrap(),
            &["image", "keygen", "--key", key],
        );
    }

    /// `meshctl image sign` of `image` (in this registry) with `key`;
    /// returns the signed reference, pinned to its digest.
    pub fn sign(&self, key: &str, image: &str) -> String {
        let meshctl = crate::bin("meshctl");
        let mut args = vec!["image", "sign", "--key", key, "--plain-http", &self.addr];
        if let Some(file) = &self.auth_file {
            args.extend(["--registry-auth", file.to_str().unwrap()]);
        }
        args.push(image);
        let out = run(meshctl.to_str().unwrap(), &args);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn run(tool: &str, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool} (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The cosign binary: $RAMPART_COSIGN, else the one scripts/test.sh builds.
pub fn cosign() -> PathBuf {
    let path = std::env::var_os("RAMPART_COSIGN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/rampart/cosign-v2.6.5/cosign")
        });
    assert!(
        path.exists(),
        "cosign not found at {} (scripts/test.sh builds it from the Go module proxy)",
        path.display()
    );
    path
}
