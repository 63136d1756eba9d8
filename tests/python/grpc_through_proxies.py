"""gRPC (PyPI grpcio) through two rampart-proxy sidecars.

Usage: grpc_through_proxies.py CONFIG_JSON

CONFIG_JSON names: app_port (where to serve), outbound (host:port of the
caller's sidecar outbound listener for the service), ready_file (written once
the server is up).

Checks, one line each, exit 1 on the first failure: unary, server streaming,
client streaming and bidirectional streaming RPCs all arrive whole and in
order, metadata reaches the server, a status the server returns
(NOT_FOUND, with its message) reaches the client unchanged, and a unary call
the server fails once with UNAVAILABLE succeeds, retried by the caller's
sidecar with the same request (the route retries on `unavailable`).
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

from checks import check


def serve(port):
    def say(request, context):
        peer = dict(context.invocation_metadata()).get("x-forwarded-client-cert", "")
        return b"hello " + request + b" from " + peer.encode()

    def count(request, context):
        for i in range(int(request)):
            yield str(i).encode()

    def total(requests, context):
        return str(sum(int(r) for r in requests)).encode()

    def chat(requests, context):
        for r in requests:
            yield b"echo:" + r

    def missing(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    tries = {}
    lock = threading.Lock()

    def flaky(request, context):
        with lock:
            tries[request] = tries.get(request, 0) + 1
            n = tries[request]
        if n == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        return b"ok " + request + b" on try " + str(n).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler("test.Mesh", {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Total": grpc.stream_unary_rpc_method_handler(total),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
    })
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def main():
    config = json.load(open(sys.argv[1]))
    server = serve(config["app_port"])
    channel = grpc.insecure_channel(config["outbound"])
    say = channel.unary_unary("/test.Mesh/Say")
    deadline = time.time() + 30
    while True:
        try:
            reply = say(b"mesh", timeout=5)
            break
        except grpc.RpcError as e:
            if time.time() > deadline:
                check(False, f"unary RPC through the sidecars ({e.code()}: {e.details()})")
            time.sleep(0.2)
    check(reply.startswith(b"hello mesh from ") and b"URI=spiffe://cluster.local/ns/default/sa/frontend" in reply,
          f"unary RPC, the server sees the caller's SPIFFE ID ({reply!r})")

    counted = [m.decode() for m in channel.unary_stream("/test.Mesh/Count")(b"500", timeout=10)]
    check(counted == [str(i) for i in range(500)], f"server streaming: 500 messages in order ({len(counted)})")

    total = channel.stream_unary("/test.Mesh/Total")(iter(str(i).encode() for i in range(1000)), timeout=10)
    check(total == str(sum(range(1000))).encode(), f"client streaming: 1000 messages summed ({total!r})")

    sent = [f"m{i}".encode() for i in range(200)]
    echoed = list(channel.stream_stream("/test.Mesh/Chat")(iter(sent), timeout=10))
    check(echoed == [b"echo:" + m for m in sent], f"bidirectional streaming: 200 round trips in order ({len(echoed)})")

    try:
        channel.unary_unary("/test.Mesh/Missing")(b"x", timeout=5)
        check(False, "the server's NOT_FOUND reaches the client")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "no such thing: x",
              f"the server's status reaches the client ({e.code()}: {e.details()})")

    flaky = channel.unary_unary("/test.Mesh/Flaky")
    for i in range(5):
        request = f"r{i}".encode()
        try:
            reply = flaky(request, timeout=5)
        except grpc.RpcError as e:
            reply = f"{e.code()}: {e.details()}".encode()
        check(reply == b"ok " + request + b" on try 2",
              f"a unary call failed once with UNAVAILABLE is retried whole ({reply!r})")
    server.stop(0)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
