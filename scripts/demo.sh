#!/usr/bin/env bash
# Runs Rampart on the embedded default and shows identities being issued:
# rampart-control on its sled store in .rampart/ (kept across runs), a join
# token from meshctl, and a rampart-proxy that gets its SPIFFE identity with
# it, renews it every ~30 s, and serves the SPIFFE Workload API; the example
# mesh model is applied and served over xDS. Ctrl-C stops
# everything this script started. (Traffic between sidecars comes with the
# data plane; this grows into `meshctl demo`.)
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${RAMPART_DEMO_DIR:-$PWD/.rampart}"
cargo build --quiet --workspace --bins
BIN="$PWD/target/debug"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo; echo "stopped; state kept in $DATA (run again to reuse it)"
}
trap cleanup EXIT
trap "exit 130" INT TERM

mkdir -p "$DATA"
"$BIN/rampart-control" --data-dir "$DATA" --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
    2> "$DATA/control.log" &
pids+=($!)
for _ in $(seq 100); do
    if [ -f "$DATA/control-plane.json" ] && grep -q "\"pid\": $!" "$DATA/control-plane.json"; then break; fi
    sleep 0.1
done
GRPC=$(sed -n 's/.*"grpc_addr": "\(.*\)".*/\1/p' "$DATA/control-plane.json")
METRICS=$(sed -n 's/.*"metrics_addr": "\(.*\)".*/\1/p' "$DATA/control-plane.json")
echo "rampart-control: gRPC (mTLS) $GRPC, metrics http://$METRICS/metrics, data $DATA"

echo "meshctl token create --namespace demo --service-account frontend"
TOKEN=$("$BIN/meshctl" --data-dir "$DATA" token create --namespace demo --service-account frontend --ttl 10m)
echo "  -> ${TOKEN:0:8}... (one-time, stored only as a hash)"

echo
echo "meshctl apply -f docs/examples/echo.yaml   (the mesh model, stored in sled, served over xDS)"
"$BIN/meshctl" --data-dir "$DATA" apply -f docs/examples/echo.yaml | sed 's/^/  /'
"$BIN/meshctl" --data-dir "$DATA" get all | sed 's/^/  /'
echo

SOCKET="$DATA/frontend-workload.sock"
RAMPART_JOIN_TOKEN="$TOKEN" "$BIN/rampart-proxy" --control-plane "$GRPC" \
    --trust-anchor "$DATA/admin/bundle.pem" --workload-api-socket "$SOCKET" \
    --svid-ttl-seconds 60 2>&1 | sed -u 's/^/[rampart-proxy frontend] /' &
pids+=($!)

sleep 2
echo
echo "SPIFFE Workload API for the frontend: unix://$SOCKET"
echo "issued so far (from http://$METRICS/metrics):"
curl -s "http://$METRICS/metrics" 2>/dev/null | grep '^rampart_ca_certificates_total' | sed 's/^/  /' \
    || echo "  (install curl to see the counters)"
echo
echo "The proxy renews its 60 s SVID at half-life; watch the log lines above. Ctrl-C to stop."
wait
