//! The tutorial's steps, run from another shell against a running demo.
//! Policy steps are ordinary mesh resources applied through the admin API
//! (and printed, so they can be applied by hand with `meshctl apply`);
//! `kill` and `revive` act on the backend apps' processes.

use std::time::Duration;

use anyhow::{Context, bail};
use rampart_api::admin::{DeleteResourcesRequest, ResourceRef};

use super::supervisor::apply;
use super::{Step, VERSIONS, app, data_dir, model, running};
use crate::client::Target;

pub async fn step(target: &Target, step: Step) -> anyhow::Result<()> {
    if let Step::App { app: which } = step {
        return app(which).await;
    }
    let dir = data_dir(target.data_dir.as_deref());
    let Some(state) = running(&dir) else {
        bail!(
            "no demo is running on {}: start one with `meshctl demo` (add --data-dir {} if it is not the default)",
            dir.display(),
            dir.display()
        );
    };
    let target = Target {
        data_dir: Some(dir.clone()),
        control_plane: None,
        credentials: None,
    };
    match step {
        Step::Split { weights } => {
            let weights = model::parse_weights(&weights)?;
            let yaml = model::backend_policy(Some(&weights));
            apply(&mut target.admin().await?, &[("split", yaml.clone())]).await?;
            println!("applied:\n{yaml}");
        }
        Step::Deny => {
            apply(
                &mut target.admin().await?,
                &[("deny", model::DENY.to_owned())],
            )
            .await?;
            println!("applied:\n{}", model::DENY);
        }
        Step::Allow => {
            delete_deny(&target).await?;
            println!("deleted authorizationpolicy/{} -n demo", model::DENY_NAME);
        }
        Step::Kill { version } => {
            let name = backend(&version)?;
            let pid = state
                .apps
                .get(&name)
                .map(|a| a.pid)
                .with_context(|| format!("the demo has no {name}"))?;
            if !super::alive(pid) {
                bail!("{name} is not running; `meshctl demo revive {version}` starts it");
            }
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !killed {
                bail!("could not kill {name} (pid {pid})");
            }
            println!(
                "killed {name}'s app (pid {pid}); its sidecar stays up, so calls to it now fail until outlier detection ejects it"
            );
        }
        Step::Revive { version } => {
            let name = backend(&version)?;
            revive(&dir, &name).await?;
            println!("{name} is running again");
        }
        Step::Reset => {
            apply(
                &mut target.admin().await?,
                &[("reset", model::backend_policy(None))],
            )
            .await?;
            // Absent is fine (the control plane reports it as not found, not an error).
            delete_deny(&target).await?;
            for version in VERSIONS {
                let name = format!("backend-{version}");
                let down = running(&dir)
                    .and_then(|s| s.apps.get(&name).map(|a| !super::alive(a.pid)))
                    .unwrap_or(false);
                if down {
                    revive(&dir, &name).await?;
                }
            }
            println!("reset: no split, no deny policy, every backend running");
        }
        Step::App { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn backend(version: &str) -> anyhow::Result<String> {
    if !VERSIONS.contains(&version) {
        bail!(
            "{version:?}: the demo backend has versions {}",
            VERSIONS.join(" and ")
        );
    }
    Ok(format!("backend-{version}"))
}

async fn delete_deny(target: &Target) -> anyhow::Result<()> {
    target
        .admin()
        .await?
        .delete_resources(DeleteResourcesRequest {
            refs: vec![ResourceRef {
                kind: "AuthorizationPolicy".to_owned(),
                namespace: model::NAMESPACE.to_owned(),
                name: model::DENY_NAME.to_owned(),
            }],
        })
        .await
        .map_err(crate::client::rpc_error)?;
    Ok(())
}

/// Asks the running demo to restart `name` and waits until it has.
async fn revive(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let before = running(dir).and_then(|s| s.apps.get(name).map(|a| a.pid));
    std::fs::write(dir.join(format!("revive-{name}")), b"")
        .context("asking the demo to revive the app")?;
    eprint!("starting {name} again ");
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = running(dir).and_then(|s| s.apps.get(name).map(|a| a.pid));
        if now.is_some_and(|pid| Some(pid) != before && super::alive(pid)) {
            eprintln!("done");
            return Ok(());
        }
        eprint!(".");
    }
    eprintln!();
    bail!(
        "the demo did not restart {name} within 10 s; see its logs in {}/logs",
        dir.display()
    )
}
