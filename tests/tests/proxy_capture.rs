//! Traffic capture with iptables, in a network namespace made by the test
//! (needs root, as CI runs it): `rampart-proxy init` installs the rules,
//! then a rampart-proxy running as UID 1337 with `--capture` takes every TCP
//! connection in and out of the namespace. An app that knows nothing of the
//! mesh is reached only over mTLS (a plaintext client outside gets nothing
//! from it), sees its caller's SPIFFE ID, and its plain HTTP calls to a
//! service's endpoint are routed by the proxy while other destinations pass
//! through unchanged. IPv6 is captured too (ip6tables): plaintext over IPv6
//! does not reach the app, and a call to a service's IPv6 endpoint is
//! routed. A call to a service's virtual IP (IPv4 or IPv6, an address no
//! host has, as a Kubernetes ClusterIP) reaches the service's endpoint.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use rampart_tests::apps::{self, get_h1};
use rampart_tests::{ControlPlane, Logs, Sidecar, bin, counter, eventually, free_port, http_get};

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a veth pair to the host; deleted on drop.
struct Namespace {
    name: String,
    host_ip: String,
    ns_ip: String,
    host_ip6: String,
    ns_ip6: String,
    /// Unassigned addresses of the link, used as a service's virtual IPs.
    vip: String,
    vip6: String,
}

impl Namespace {
    fn create() -> Namespace {
        assert!(
            Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout == b"0\n"),
            "this test makes a network namespace and iptables rules: run it as root (CI does)"
        );
        let n = std::process::id() % 200 + 20;
        let name = format!("rampart-cap-{n}");
        let (host_if, ns_if) = (format!("rcap{n}h"), format!("rcap{n}n"));
        let (host_ip, ns_ip) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        let (host_ip6, ns_ip6) = (format!("fd00:213:{n}::1"), format!("fd00:213:{n}::2"));
        let ns = Namespace {
            name: name.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
            host_ip6: host_ip6.clone(),
            ns_ip6: ns_ip6.clone(),
            vip: format!("10.213.{n}.100"),
            vip6: format!("fd00:213:{n}::100"),
        };
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run(&["ip", "link", "set", &ns_if, "netns", &name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &host_if,
        ]);
        // No duplicate address detection: the addresses are usable at once.
        run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{host_ip6}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        run(&["ip", "link", "set", &host_if, "up"]);
        ns.exec_ok(&["ip", "addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if]);
        ns.exec_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{ns_ip6}/64"),
            "dev",
            &ns_if,
            "nodad",
        ]);
        ns.exec_ok(&["ip", "link", "set", &ns_if, "up"]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    fn exec_ok(&self, args: &[&str]) {
        let out = self.exec(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An HTTP GET from inside the namespace (as root, so it is captured).
    fn get(&self, url: &str) -> String {
        let script = format!(
            "import urllib.request\ntry:\n    print(urllib.request.urlopen('{url}', timeout=5).read().decode())\nexcept Exception as e:\n    print('error:', e)"
        );
        let out = self.exec(&["python3", "-c", &script]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Listens on port 8080 of every address, IPv4 and IPv6.
const APP: &str = r#"
import http.server, socket
class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("inside app; xfcc=" + self.headers.get("x-forwarded-client-cert", "")).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
class DualStack(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
DualStack(("::", 8080), App).serve_forever()
"#;

fn model(ns: &Namespace, outside_port: u16, outside6_port: u16) -> String {
    let (outside_ip, outside_ip6) = (&ns.host_ip, &ns.host_ip6);
    let (vip, vip6) = (&ns.vip, &ns.vip6);
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: inside, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
  serviceAccounts: [inside]
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: outside, namespace: default}}
spec:
  # No protocol (auto): the proxy must detect the captured call as HTTP.
  ports: [{{name: http, port: 9090}}]
  # Virtual IPs that no host has: only the proxy can take a call to them.
  addresses: [{vip}, "{vip6}"]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: outside-1, namespace: default}}
spec: {{service: outside, address: {outside_ip}, ports: {{http: {outside_port}}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: outside6, namespace: default}}
spec:
  ports: [{{name: http, port: 9091}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: outside6-1, namespace: default}}
spec: {{service: outside6, address: "{outside_ip6}", ports: {{http: {outside6_port}}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_capture_sends_all_traffic_through_the_proxy() {
    let ns = Namespace::create();
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("{}:{}", ns.host_ip, free_port());
    let cp = ControlPlane::start(&dir.path().join("cp"), &["--grpc-addr", &grpc]).await;
    let outside = apps::echo_at("outside", &format!("{}:0", ns.host_ip)).await;
    let elsewhere = apps::echo_at("not-in-the-mesh", &format!("{}:0", ns.host_ip)).await;
    let outside6 = apps::echo_at("outside6", &format!("[{}]:0", ns.host_ip6)).await;
    let model_path = dir.path().join("model.yaml");
    std::fs::write(&model_path, model(&ns, outside.port, outside6.port)).unwrap();
    cp.meshctl_ok(&["apply", "-f", model_path.to_str().unwrap()]);

    // Files the proxy (UID 1337) must read or create.
    let shared = Path::new("/tmp").join(format!("rampart-capture-{}", std::process::id()));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::copy(
        cp.data_dir.join("admin/bundle.pem"),
        shared.join("bundle.pem"),
    )
    .unwrap();
    run(&["chmod", "-R", "a+rwX", shared.to_str().unwrap()]);

    let _app = Killed(ns.exec(&["python3", "-c", APP]).spawn().unwrap());
    // The rules: everything but UID 1337 and the admin port goes through the proxy.
    let proxy_bin = bin("rampart-proxy");
    let init = ns
        .exec(&[proxy_bin.to_str().unwrap(), "init", "--proxy-uid", "1337"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "rampart-proxy init: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    let token = cp.join_token("default", "inside", 0).await;
    let admin = format!("{}:15000", ns.ns_ip);
    let mut child = ns
        .exec(&[
            "setpriv",
            "--reuid",
            "1337",
            "--regid",
            "1337",
            "--clear-groups",
            proxy_bin.to_str().unwrap(),
        ])
        .args([
            "--control-plane",
            &cp.grpc_addr,
            "--admin-addr",
            &admin,
            "--capture",
        ])
        .arg("--trust-anchor")
        .arg(shared.join("bundle.pem"))
        .arg("--workload-api-socket")
        .arg(shared.join("workload.sock"))
        .args([
            "--node-id",
            "inside-1",
            "--service",
            "inside",
            "--address",
            &ns.ns_ip,
        ])
        .args(["--port", "http=8080", "--app-port", "http=8080"])
        .env("RAMPART_JOIN_TOKEN", token)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Logs::default();
    logs.capture_public(child.stderr.take().unwrap());
    let _proxy = Killed(child);

    // From the host, through a sidecar: mTLS to 10.213.n.2:8080, captured
    // into the proxy, which checks the caller and hands it to the app.
    let (frontend, out) =
        Sidecar::caller(&cp, dir.path(), "frontend", None, "inside.default:8080").await;
    let through = eventually(200, || async {
        matches!(get_h1(&out, "inside", "/").await, Ok((200, _)))
    })
    .await;
    assert!(
        through,
        "no answer through the captured sidecar: {:?}\ninside proxy:\n{}\nfrontend:\n{}",
        get_h1(&out, "inside", "/").await,
        logs.text(),
        frontend.logs.text()
    );
    let (_, body) = get_h1(&out, "inside", "/").await.unwrap();
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/default/sa/frontend"),
        "{body}"
    );

    // The app listens on port 8080 of every address, yet plaintext from
    // outside cannot reach it, over IPv4 or IPv6.
    for addr in [
        format!("{}:8080", ns.ns_ip),
        format!("[{}]:8080", ns.ns_ip6),
    ] {
        let direct = get_h1(&addr, "inside", "/").await;
        assert!(
            !matches!(direct, Ok((200, _))),
            "plaintext to {addr} reached the app past the capture: {direct:?}"
        );
    }

    // From inside, a plain call to a service's endpoint (IPv4, and IPv6
    // captured by ip6tables) is detected as HTTP and routed by the proxy; a
    // call elsewhere passes through.
    let calls = [
        (
            format!("{}:{}", ns.host_ip, outside.port),
            "outside",
            Some(9090),
        ),
        (
            format!("[{}]:{}", ns.host_ip6, outside6.port),
            "outside6",
            Some(9091),
        ),
        // The service's virtual IPs, on the service port.
        (format!("{}:9090", ns.vip), "outside", Some(9090)),
        (format!("[{}]:9090", ns.vip6), "outside", Some(9090)),
        (
            format!("{}:{}", ns.host_ip, elsewhere.port),
            "not-in-the-mesh",
            None,
        ),
    ];
    for (target, name, _) in &calls {
        let answer = ns.get(&format!("http://{target}/from-inside"));
        assert!(
            answer.contains(&format!("name={name} ")) && answer.contains("path=/from-inside"),
            "{target}: {answer}\n{}",
            logs.text()
        );
    }
    let metrics = http_get(&admin, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    for (target, name, port) in calls {
        let Some(port) = port else { continue };
        let cluster = format!("destination_service=\"outbound|{port}||{name}.default\"");
        assert!(
            counter(
                &metrics,
                "rampart_proxy_requests_total",
                &["direction=\"outbound\"", &cluster, "response_code=\"200\""]
            ) >= 1.0,
            "the captured call to {target} was not routed by the proxy:\n{metrics}"
        );
    }
    let _ = std::fs::remove_dir_all(&shared);
}
