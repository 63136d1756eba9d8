"""Proxyless gRPC (PyPI grpcio, an xDS client nobody here wrote) against rampart-control.

Usage: proxyless_grpc.py CONFIG_JSON

CONFIG_JSON names: control_plane (host:port), cert_dir (key.pem, cert-chain.pem,
bundle.pem from `meshctl certificate issue`), backends ({"v1": port, "v2": port}),
target (e.g. "xds:///echo.default:50051"), reweigh (a command that moves all
traffic to v2) and work_dir.

Checks, one line each, exit 1 on the first failure:
  1. over mTLS to the control plane (gRFC A65 bootstrap credentials), the client
     resolves LDS -> RDS -> CDS -> EDS and its RPCs reach both backends, v1 more
     than v2 (80/20 split);
  2. CSDS shows every resource it holds as ACKED;
  3. after `reweigh` (a 0/100 split applied with meshctl) traffic moves to v2
     without a failed RPC.
"""

import json
import os
import subprocess
import sys
import time
from concurrent import futures

import grpc

from checks import check


def start_backend(name, port):
    def say(request, context):
        return name.encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def call_many(channel, n):
    say = channel.unary_unary("/test.Echo/Say")
    counts, failures = {}, 0
    for _ in range(n):
        try:
            who = say(b"hi", timeout=10).decode()
            counts[who] = counts.get(who, 0) + 1
        except grpc.RpcError as e:
            failures += 1
            print("rpc failed:", e.code(), e.details(), flush=True)
    return counts, failures


def csds_statuses():
    # The client's own view of its xDS config, as the CSDS service reports it.
    from envoy.service.status.v3 import csds_pb2
    raw = grpc._cython.cygrpc.dump_xds_configs()
    response = csds_pb2.ClientStatusResponse.FromString(raw)
    from envoy.admin.v3 import config_dump_shared_pb2
    statuses = {}
    for config in response.config:
        for generic in config.generic_xds_configs:
            status = config_dump_shared_pb2.ClientResourceStatus.Name(generic.client_status)
            error = generic.error_state.details if generic.HasField("error_state") else ""
            statuses[(generic.type_url.split(".")[-1], generic.name)] = (status, error)
    return statuses


def main():
    config = json.load(open(sys.argv[1]))
    cert = config["cert_dir"]
    bootstrap = {
        "xds_servers": [{
            "server_uri": config["control_plane"],
            "channel_creds": [{"type": "tls", "config": {
                "ca_certificate_file": os.path.join(cert, "bundle.pem"),
                "certificate_file": os.path.join(cert, "cert-chain.pem"),
                "private_key_file": os.path.join(cert, "key.pem"),
            }}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": "proxyless-test", "cluster": "test", "locality": {"zone": "z1"}},
    }
    path = os.path.join(config["work_dir"], "xds-bootstrap.json")
    with open(path, "w") as f:
        json.dump(bootstrap, f)
    os.environ["GRPC_XDS_BOOTSTRAP"] = path

    servers = [start_backend(name, port) for name, port in config["backends"].items()]
    channel = grpc.insecure_channel(config["target"])

    counts, failures = call_many(channel, 200)
    print("split 80/20 ->", counts, flush=True)
    check(failures == 0, "no failed RPCs through xDS")
    check(counts.get("v1", 0) > 0 and counts.get("v2", 0) > 0, "both backends reached")
    check(counts.get("v1", 0) > counts.get("v2", 0), "v1 gets more traffic than v2 (80/20)")

    statuses = csds_statuses()
    print("CSDS:", statuses, flush=True)
    kinds = {kind for kind, _ in statuses}
    check({"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"} <= kinds,
          "CSDS lists listener, route, clusters and endpoints")
    check(all(status == "ACKED" for status, _ in statuses.values()), "every resource ACKED")

    subprocess.run(config["reweigh"], check=True)
    deadline = time.time() + 15
    moved, total_failures = False, 0
    while time.time() < deadline and not moved:
        counts, failures = call_many(channel, 20)
        total_failures += failures
        moved = counts.get("v2", 0) == 20
    check(moved, "after the 0/100 split every RPC reaches v2")
    check(total_failures == 0, "no RPC failed while traffic moved")

    channel.close()
    for server in servers:
        server.stop(0)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
