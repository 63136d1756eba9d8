#!/usr/bin/env bash
# A real etcd and kube-apiserver on 127.0.0.1 for the Kubernetes tests, with no
# containers and no internet: both are built from the Go module proxy (Go is only
# test infrastructure here) and cached by version, so a warm start takes seconds.
#
#   build            build the binaries, or reuse the cached ones
#   start            start etcd and kube-apiserver; writes $KUBE_TEST_DIR/env and
#                    kubeconfig and prints the env (KUBECONFIG, KUBE_TEST_*)
#   stop             stop both and delete $KUBE_TEST_DIR
#   run -- CMD...    start, run CMD with the env exported, always stop
#   restart-apiserver  restart kube-apiserver with the same flags (tests of watches resuming)
#
# Why a wrapper Go module: `go install k8s.io/kubernetes/cmd/kube-apiserver@v` is
# refused (its go.mod has replace lines) and k8s.io/kubernetes requires its staging
# modules at v0.0.0, so our module replaces each with its published v0.X.Y.
set -euo pipefail
KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${KUBE_TEST_CACHE:-$HOME/.cache/rampart/kube-test-env}"
STATE="${KUBE_TEST_DIR:-${TMPDIR:-/tmp}/rampart-kube-test-env}"
ISSUER="https://kubernetes.default.svc.cluster.local"
STAGING="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller streaming"

log() { echo "kube-test-env: $*" >&2; }
goenv() { env GOWORK=off GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 "$@"; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

build_kube_apiserver() {
  local bin="$CACHE/bin/kube-apiserver-$KUBE_VERSION"
  # grep without -q: with pipefail, -q can SIGPIPE the producer and turn a match into a failure.
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -x "Kubernetes $KUBE_VERSION" >/dev/null; then
    echo "$bin"; return
  fi
  local staging_version="v0.${KUBE_VERSION#v1.}" minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  local mod="$CACHE/src/kube-apiserver-$KUBE_VERSION"
  mkdir -p "$mod" "$CACHE/bin"
  if [ ! -f "$mod/go.mod" ]; then
    {
      printf 'module kube-test-env/kube-apiserver\n\ngo 1.26.0\n\ngodebug default=go1.26\n\n'
      printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$KUBE_VERSION"
      local m
      for m in $STAGING; do printf '\tk8s.io/%s => k8s.io/%s %s\n' "$m" "$m" "$staging_version"; done
      printf ')\n'
    } >"$mod/go.mod.new"
    # Cover every ./staging replace of the real k8s.io/kubernetes go.mod, in case a
    # release adds a staging module the list above lacks.
    local upstream
    upstream="$(cd "$mod" && goenv go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
      python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')"
    mv "$mod/go.mod.new" "$mod/go.mod"
    for m in $(sed -n 's#^[[:space:]]*k8s\.io/\([A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$upstream"); do
      case " $(echo $STAGING) " in
        *" $m "*) ;;
        *) log "adding replace for k8s.io/$m"
           (cd "$mod" && goenv go mod edit -replace="k8s.io/$m=k8s.io/$m@$staging_version") ;;
      esac
    done
  fi
  log "resolving k8s.io/kubernetes $KUBE_VERSION"
  (cd "$mod" && goenv go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION") >&2
  # The version stamp kube-apiserver reports (as Kubernetes' own hack/lib/version.sh sets it).
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  log "building kube-apiserver $KUBE_VERSION (cold: about 7 minutes on 2 cores)"
  (cd "$mod" && goenv go build -trimpath -ldflags "$ld" -o "$bin.tmp" k8s.io/kubernetes/cmd/kube-apiserver) >&2
  mv "$bin.tmp" "$bin"
  echo "$bin"
}

build_etcd() {
  local bin="$CACHE/bin/etcd-$ETCD_VERSION"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep "etcd Version: ${ETCD_VERSION#v}" >/dev/null; then
    echo "$bin"; return
  fi
  local mod="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod" "$CACHE/bin"
  [ -f "$mod/go.mod" ] ||
    printf 'module kube-test-env/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$mod/go.mod"
  log "building etcd $ETCD_VERSION"
  (cd "$mod" && goenv go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" &&
    goenv go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
      -o "$bin.tmp" go.etcd.io/etcd/server/v3) >&2
  mv "$bin.tmp" "$bin"
  echo "$bin"
}

# A CA, serving certificates for the apiserver and a webhook (IP SAN 127.0.0.1: Go
# ignores the CN), the ServiceAccount token key pair and a static admin token.
pki() {
  local d="$STATE/pki" n
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kube-test-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  for n in apiserver webhook; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$n" -keyout "$d/$n.key" -out "$d/$n.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/$n.ext"
    openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -CAserial "$d/ca.srl" -days 2 -extfile "$d/$n.ext" -out "$d/$n.crt" 2>/dev/null
  done
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  openssl rand -hex 32 >"$d/admin.token"
  printf '%s,kube-test-admin,kube-test-admin,system:masters\n' "$(cat "$d/admin.token")" >"$d/tokens.csv"
  chmod 600 "$d"/*.key "$d/admin.token" "$d/tokens.csv"
}

wait_for() { # PID URL [curl args...]
  local pid="$1" url="$2"
  shift 2
  for _ in $(seq 1 240); do
    kill -0 "$pid" 2>/dev/null || { log "process $pid exited"; return 1; }
    curl -fsS -o /dev/null "$@" "$url" 2>/dev/null && return 0
    sleep 0.5
  done
  log "timed out waiting for $url"
  return 1
}

stop() {
  local c pid
  for c in kube-apiserver etcd; do
    [ -f "$STATE/$c.pid" ] || continue
    pid="$(cat "$STATE/$c.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$STATE"
}

start() {
  local kas etcd etcd_port peer_port api_port token ca_b64
  kas="$(build_kube_apiserver)"
  etcd="$(build_etcd)"
  [ -e "$STATE" ] && stop
  mkdir -p "$STATE/etcd-data"
  pki
  etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
  token="$(cat "$STATE/pki/admin.token")"
  "$etcd" --name kube-test --data-dir "$STATE/etcd-data" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "kube-test=http://127.0.0.1:$peer_port" --logger=zap --log-level=warn \
    >"$STATE/etcd.log" 2>&1 &
  echo $! >"$STATE/etcd.pid"
  wait_for "$(cat "$STATE/etcd.pid")" "http://127.0.0.1:$etcd_port/health" ||
    { tail -n 50 "$STATE/etcd.log" >&2; stop; return 1; }
  # Loopback only (--advertise-address, no endpoint reconciler); RBAC; our CA; no
  # ServiceAccount admission plugin, since no controller creates `default` SAs here.
  "$kas" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 --secure-port="$api_port" \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --tls-cert-file="$STATE/pki/apiserver.crt" --tls-private-key-file="$STATE/pki/apiserver.key" \
    --client-ca-file="$STATE/pki/ca.crt" --token-auth-file="$STATE/pki/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer="$ISSUER" --service-account-key-file="$STATE/pki/sa.pub" \
    --service-account-signing-key-file="$STATE/pki/sa.key" --service-cluster-ip-range=10.0.0.0/24 \
    --enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
    --disable-admission-plugins=ServiceAccount --allow-privileged=true --v=1 \
    >"$STATE/kube-apiserver.log" 2>&1 &
  echo $! >"$STATE/kube-apiserver.pid"
  local auth=(--cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $token")
  { wait_for "$(cat "$STATE/kube-apiserver.pid")" "https://127.0.0.1:$api_port/readyz" "${auth[@]}" &&
    wait_for "$(cat "$STATE/kube-apiserver.pid")" "https://127.0.0.1:$api_port/api/v1/namespaces/default" "${auth[@]}"; } ||
    { tail -n 80 "$STATE/kube-apiserver.log" >&2; stop; return 1; }
  ca_b64="$(base64 -w0 "$STATE/pki/ca.crt")"
  cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: kube-test, cluster: {server: "https://127.0.0.1:$api_port", certificate-authority-data: "$ca_b64"}}]
users: [{name: kube-test-admin, user: {token: "$token"}}]
contexts: [{name: kube-test, context: {cluster: kube-test, user: kube-test-admin, namespace: default}}]
current-context: kube-test
EOF
  chmod 600 "$STATE/kubeconfig"
  cat >"$STATE/env" <<EOF
export KUBECONFIG='$STATE/kubeconfig'
export KUBE_TEST_SERVER='https://127.0.0.1:$api_port'
export KUBE_TEST_CA='$STATE/pki/ca.crt'
export KUBE_TEST_CA_B64='$ca_b64'
export KUBE_TEST_SA_ISSUER='$ISSUER'
export KUBE_TEST_WEBHOOK_CERT='$STATE/pki/webhook.crt'
export KUBE_TEST_WEBHOOK_KEY='$STATE/pki/webhook.key'
export KUBE_TEST_LOG='$STATE/kube-apiserver.log'
EOF
  cat "$STATE/env"
}

# Restarts kube-apiserver with the same flags (same port, same etcd), as an
# upgrade or a crash would; the tests that watch through it must resume.
restart_apiserver() {
  local pid token
  pid="$(cat "$STATE/kube-apiserver.pid")"
  local -a cmd
  mapfile -d '' cmd <"/proc/$pid/cmdline"
  kill "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  # setsid: it outlives this script, as the first one outlives `start`.
  setsid "${cmd[@]}" >>"$STATE/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$STATE/kube-apiserver.pid"
  token="$(cat "$STATE/pki/admin.token")"
  wait_for "$(cat "$STATE/kube-apiserver.pid")" "$KUBE_TEST_SERVER/readyz" \
    --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $token"
}

case "${1:-}" in
  restart-apiserver) restart_apiserver ;;
  build) build_kube_apiserver >/dev/null; build_etcd >/dev/null ;;
  start) start ;;
  stop) stop ;;
  run)
    shift
    [ "${1:-}" = "--" ] && shift
    start >/dev/null
    trap stop EXIT
    # shellcheck disable=SC1091
    . "$STATE/env"
    "$@"
    ;;
  *) echo "usage: $0 build|start|stop|restart-apiserver|run -- CMD..." >&2; exit 2 ;;
esac
