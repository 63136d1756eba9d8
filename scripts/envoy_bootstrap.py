"""The bootstrap of an Envoy sidecar in a Rampart mesh.

A sidecar Envoy gets its certificate (`default`) and the trust bundle
(`ROOTCA`) from a local rampart-proxy (`--sds-socket`, the cluster
`sds-grpc`, as istio-agent does), and everything else from rampart-control
over ADS, on a connection authenticated with that same certificate. An Envoy
without an agent uses the files of `meshctl certificate issue` instead.
Used by scripts/demo.sh and the interop tests.

CLI: envoy_bootstrap.py NODE_ID ADMIN_PORT SDS_SOCKET CONTROL_PLANE [KEY=VALUE ...]
prints the bootstrap as JSON; KEY=VALUE pairs become node metadata.
"""

import json
import os
import sys

CONTROL_PLANE_ID = "spiffe://cluster.local/ns/rampart-system/sa/rampart-control"

HTTP2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}},
}}


def sds(name):
    return {"name": name, "sds_config": {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
            "set_node_on_first_message_only": True,
        },
    }}


def bootstrap(node_id, metadata, admin_port, control_plane, sds_socket=None, cert_dir=None,
              control_plane_id=CONTROL_PLANE_ID):
    """Exactly one of sds_socket (a rampart-proxy agent) and cert_dir (files)."""
    host, port = control_plane.rsplit(":", 1)
    san = {"match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": control_plane_id}}]}
    if sds_socket is not None:
        tls = {
            "tls_certificate_sds_secret_configs": [sds("default")],
            "combined_validation_context": {
                "default_validation_context": san,
                "validation_context_sds_secret_config": sds("ROOTCA"),
            },
        }
    else:
        tls = {
            "tls_certificates": [{
                "certificate_chain": {"filename": os.path.join(cert_dir, "cert-chain.pem")},
                "private_key": {"filename": os.path.join(cert_dir, "key.pem")},
            }],
            "validation_context": {"trusted_ca": {"filename": os.path.join(cert_dir, "bundle.pem")}, **san},
        }
    agent = [] if sds_socket is None else [{
        "name": "sds-grpc",
        "type": "STATIC",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": HTTP2,
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": sds_socket}}}}]}]},
    }]
    return {
        "node": {"id": node_id, "cluster": "rampart", "metadata": metadata},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC", "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "rampart-control"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": agent + [{
            # The control plane, over mTLS, checking its SPIFFE ID.
            "name": "rampart-control",
            "type": "STATIC",
            "connect_timeout": "2s",
            "typed_extension_protocol_options": HTTP2,
            "load_assignment": {"cluster_name": "rampart-control", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}]}]},
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {
                        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3",
                                       "tls_maximum_protocol_version": "TLSv1_3"},
                        "alpn_protocols": ["h2"],
                        **tls,
                    },
                },
            },
        }]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
    }


if __name__ == "__main__":
    node_id, admin_port, sds_socket, control_plane = sys.argv[1:5]
    metadata = dict(pair.split("=", 1) for pair in sys.argv[5:])
    print(json.dumps(bootstrap(node_id, metadata, int(admin_port), control_plane, sds_socket=sds_socket), indent=1))
