//! `meshctl ca rotate-root` and `meshctl ca rotation`: the one step an
//! operator takes to rotate the root, and where the control plane is with it.

use std::time::Duration;

use rampart_api::admin::{GetRootRotationRequest, RootRotationStatus, RotateRootRequest};

use crate::client::{Target, rpc_error};

/// `meshctl ca rotate-root [--wait TIME]`
pub async fn rotate_root(target: &Target, wait: Option<Duration>) -> anyhow::Result<()> {
    let status = target
        .admin()
        .await?
        .rotate_root(RotateRootRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("root rotation started");
    print_status(&status);
    let Some(wait) = wait else {
        println!("the control plane goes on by itself; `meshctl ca rotation` shows where it is");
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut phase = status.phase;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A new connection each time: the admin credential is re-issued
        // under the new root during the rotation.
        let status = fetch(target).await?;
        if status.phase != phase {
            print_status(&status);
            phase = status.phase.clone();
        }
        if status.phase.is_empty() {
            println!("root rotation done");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            print_status(&status);
            anyhow::bail!(
                "the rotation is still in phase {} after {}s; it goes on in the control plane",
                status.phase,
                wait.as_secs()
            );
        }
    }
}

/// `meshctl ca rotation`
pub async fn rotation(target: &Target) -> anyhow::Result<()> {
    let status = fetch(target).await?;
    if !status.supported {
        println!(
            "this control plane runs a plug-in CA, rotated by changing its files; {} root(s) trusted",
            status.roots
        );
        return Ok(());
    }
    print_status(&status);
    Ok(())
}

async fn fetch(target: &Target) -> anyhow::Result<RootRotationStatus> {
    Ok(target
        .admin()
        .await?
        .get_root_rotation(GetRootRotationRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner())
}

fn print_status(status: &RootRotationStatus) {
    let phase = match status.phase.as_str() {
        "" => "none under way",
        "trust" => "trust (the new root is trusted; the old one signs)",
        "sign" => "sign (the new root signs; SVIDs of the old one are being replaced)",
        other => other,
    };
    println!(
        "phase: {phase}\nroots trusted: {}\nconnected xDS streams: {}",
        status.roots, status.streams
    );
    let list = |title: &str, who: &[String]| {
        if !who.is_empty() {
            println!("{title} ({}):", who.len());
            for w in who.iter().take(20) {
                println!("  {w}");
            }
            if who.len() > 20 {
                println!("  ... and {} more", who.len() - 20);
            }
        }
    };
    list("waiting for the new bundle", &status.without_bundle);
    list(
        "still connected with an SVID of the old root",
        &status.on_old_root,
    );
}
