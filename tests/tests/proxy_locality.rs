//! Locality-aware routing: a sidecar that knows where it runs
//! (`--locality`) sends its calls to the endpoints nearest to it, and only
//! when none of them is up (ejected by outlier detection) to the next
//! nearest: same zone, then same region, then anywhere. A sidecar without a
//! locality spreads its calls over every endpoint.

use std::collections::BTreeMap;
use std::path::Path;

use rampart_tests::apps::{self, get_h1};
use rampart_tests::{ControlPlane, Sidecar, eventually, free_port};

/// The `loc` service with one endpoint per locality, each an app that
/// answers with its name.
fn model(near: u16, zone: u16, far: u16) -> String {
    let entry = |name: &str, port: u16, locality: &str| {
        format!(
            "---\napiVersion: rampart.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\nspec: {{service: loc, address: 127.0.0.1, ports: {{http: {port}}}, locality: {locality}}}\n"
        )
    };
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: loc, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: loc, namespace: default}}
spec:
  service: loc
  loadBalancer: ROUND_ROBIN
  retries: {{attempts: 2, retryOn: [5xx, connect-failure]}}
  outlierDetection: {{consecutive5xx: 1, baseEjectionTime: 60s, maxEjectionPercent: 100}}
{}{}{}"#,
        entry("near", near, "r1/z1"),
        entry("zone", zone, "r1/z2"),
        entry("far", far, "r2/z1"),
    )
}

fn apply(cp: &ControlPlane, dir: &Path, text: &str) {
    let file = dir.join(format!("model-{}.yaml", free_port()));
    std::fs::write(&file, text).unwrap();
    cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);
}

/// How many of `n` calls each app answered (`name=...` in the body), and
/// the failures.
async fn answers(out: &str, n: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for _ in 0..n {
        let who = match get_h1(out, "loc", "/").await {
            Ok((200, body)) => body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("name="))
                .unwrap_or("?")
                .to_owned(),
            other => format!("failed: {other:?}"),
        };
        *by.entry(who).or_default() += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_the_nearest_endpoints_that_are_up() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let (near, zone, far) = (
        apps::echo("near").await,
        apps::echo("zone").await,
        apps::echo("far").await,
    );
    apply(&cp, dir.path(), &model(near.port, zone.port, far.port));

    let entry = format!("127.0.0.1:{}", free_port());
    let args = [
        "--node-id".to_owned(),
        "here-1".to_owned(),
        "--locality".to_owned(),
        "r1/z1".to_owned(),
        "--outbound".to_owned(),
        format!("{entry}=loc.default:8080"),
    ];
    let here = Sidecar::builder(&cp, dir.path(), "here")
        .args(&args)
        .start()
        .await;
    let (anywhere, anywhere_out) =
        Sidecar::caller(&cp, dir.path(), "anywhere", None, "loc.default:8080").await;
    let up = eventually(150, || async {
        matches!(get_h1(&entry, "loc", "/").await, Ok((200, _)))
            && matches!(get_h1(&anywhere_out, "loc", "/").await, Ok((200, _)))
    })
    .await;
    assert!(up, "loc never answered\n{}", here.logs.text());

    // All of its calls stay in its zone.
    let got = answers(&entry, 20).await;
    assert_eq!(got, BTreeMap::from([("near".to_owned(), 20)]), "{got:?}");
    // Without a locality, round robin over all three.
    let got = answers(&anywhere_out, 30).await;
    assert_eq!(
        got,
        BTreeMap::from([
            ("far".to_owned(), 10),
            ("near".to_owned(), 10),
            ("zone".to_owned(), 10)
        ]),
        "{anywhere:?}",
        anywhere = anywhere.logs.text()
    );

    // The zone's endpoint fails: ejected (its failed call retried
    // elsewhere), the calls go to the same region, never farther.
    let broken = apps::echo_failing("broken").await;
    apply(&cp, dir.path(), &model(broken.port, zone.port, far.port));
    let moved = eventually(100, || async {
        answers(&entry, 1).await.contains_key("zone")
    })
    .await;
    assert!(moved, "{}", here.logs.text());
    let got = answers(&entry, 20).await;
    assert_eq!(got, BTreeMap::from([("zone".to_owned(), 20)]), "{got:?}");

    // And the region's fails too: anywhere else.
    let broken_too = apps::echo_failing("broken-too").await;
    apply(
        &cp,
        dir.path(),
        &model(broken.port, broken_too.port, far.port),
    );
    let moved = eventually(100, || async {
        answers(&entry, 1).await.contains_key("far")
    })
    .await;
    assert!(moved, "{}", here.logs.text());
    let got = answers(&entry, 20).await;
    assert_eq!(got, BTreeMap::from([("far".to_owned(), 20)]), "{got:?}");
}
