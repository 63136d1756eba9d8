"""An independent SPIFFE client (PyPI `spiffe`, py-spiffe) against rampart-proxy.

Usage: workload_api_client.py SOCKET_PATH EXPECTED_SPIFFE_ID ROTATION_WAIT_SECONDS

The client is used exactly as an application would use it: grpc-core sends the
percent-encoded socket path as :authority (grpc/grpc#38142) and the proxy must
cope with that.

Checks, printing one line per check and exiting non-zero on the first failure:
  1. fetch_x509_svid returns the expected SPIFFE ID, with a key matching the leaf;
  2. the leaf chains to the bundle from fetch_x509_bundles for its trust domain;
  3. a call without the `workload.spiffe.io` header fails with INVALID_ARGUMENT;
  4. FetchJWTSVID answers UNIMPLEMENTED (not served yet);
  5. after ROTATION_WAIT_SECONDS (the proxy runs with a short TTL) a new fetch
     sees a renewed certificate (new serial, later expiry) for the same ID,
     and a streaming X509Source saw the update too.
"""

import sys
import threading
import time

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc


def fail(message):
    print("FAIL:", message)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
    print("ok:", message)


def public_bytes(key):
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def main():
    socket_path, expected_id, rotation_wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
    address = "unix://" + socket_path
    client = WorkloadApiClient(socket_path=address)

    svid = client.fetch_x509_svid(timeout=10)
    check(str(svid.spiffe_id) == expected_id, f"SVID identity is {svid.spiffe_id}")
    check(public_bytes(svid.leaf.public_key()) == public_bytes(svid.private_key.public_key()),
          "private key matches the leaf certificate")

    bundles = client.fetch_x509_bundles(timeout=10)
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    check(bundle is not None and len(bundle.x509_authorities) >= 1, "bundle served for the trust domain")
    # The leaf (or the last intermediate) is signed by one of the bundle's roots.
    top = svid.cert_chain[-1]
    signed = False
    for root in bundle.x509_authorities:
        try:
            root.public_key().verify(top.signature, top.tbs_certificate_bytes, ec.ECDSA(top.signature_hash_algorithm))
            signed = True
        except Exception:
            pass
    check(signed, "the SVID chains to a root of the bundle")

    channel = grpc.insecure_channel(address)
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    try:
        next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=5))
        fail("a call without the security header succeeded")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"no header -> {e.code()}")
    try:
        stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), timeout=5,
                          metadata=[("workload.spiffe.io", "true")])
        fail("FetchJWTSVID answered")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNIMPLEMENTED, f"FetchJWTSVID -> {e.code()}")

    source = X509Source(socket_path=address, timeout_in_seconds=10)
    updated = threading.Event()
    source.subscribe_for_updates(updated.set)

    time.sleep(rotation_wait)
    renewed = client.fetch_x509_svid(timeout=10)
    check(str(renewed.spiffe_id) == expected_id, "renewed SVID keeps the identity")
    check(renewed.leaf.serial_number != svid.leaf.serial_number, "renewed SVID has a new serial")
    check(renewed.leaf.not_valid_after_utc > svid.leaf.not_valid_after_utc, "renewed SVID expires later")
    check(updated.wait(10), "the streaming X509Source was told about the rotation")
    streamed = source.get_x509_context().default_svid
    check(streamed.leaf.serial_number != svid.leaf.serial_number, "X509Source holds the renewed SVID")
    source.close()
    client.close()
    print("all checks passed")


if __name__ == "__main__":
    main()
