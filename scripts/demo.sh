#!/usr/bin/env bash
# Runs Rampart on the embedded default with real traffic through real
# sidecars, all on loopback: rampart-control on its sled store in .rampart/
# (kept across runs); two workloads, `frontend` and `hello`, each with a
# rampart-proxy sidecar (its SPIFFE identity from a join token, renewed every
# ~30 s; its listeners, routes and clusters from rampart-control over xDS);
# the hello sidecar registers itself as the endpoint of service demo/hello; a
# client calls hello through the frontend sidecar every 500 ms, over mTLS
# between the sidecars, and the app answers with the caller identity the
# hello sidecar verified. Ctrl-C stops everything this script started.
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

mkdir -p "$DATA"
"$BIN/rampart-control" --data-dir "$DATA" --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
    --endpoint-grace 5s 2> "$DATA/control.log" &
pids+=($!)
for _ in $(seq 100); do
    if [ -f "$DATA/control-plane.json" ] && grep -q "\"pid\": $!" "$DATA/control-plane.json"; then break; fi
    sleep 0.1
done
GRPC=$(sed -n 's/.*"grpc_addr": "\(.*\)".*/\1/p' "$DATA/control-plane.json")
METRICS=$(sed -n 's/.*"metrics_addr": "\(.*\)".*/\1/p' "$DATA/control-plane.json")
MESHCTL=("$BIN/meshctl" --data-dir "$DATA")
echo "rampart-control: gRPC (mTLS) $GRPC, metrics http://$METRICS/metrics, data $DATA"
echo
echo "meshctl apply -f docs/examples/sidecars.yaml"
"${MESHCTL[@]}" apply -f docs/examples/sidecars.yaml | sed 's/^/  /'

APP=$(free_port); INBOUND=$(free_port); OUTBOUND=$(free_port)
# The app behind the hello sidecar: says who called it (the sidecar verified it).
python3 - "$APP" <<'PY' &
import http.server, sys
class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        xfcc = self.headers.get("x-forwarded-client-cert", "")
        caller = next((p[4:] for p in xfcc.split(";") if p.startswith("URI=")), "nobody")
        body = f"hello, {caller}\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()
PY
pids+=($!)

# One workload's sidecar: a rampart-proxy with the workload's identity.
sidecar() {
    local name=$1; shift
    local token admin
    admin="127.0.0.1:$(free_port)"
    token=$("${MESHCTL[@]}" token create --namespace demo --service-account "$name" --ttl 10m)
    echo "meshctl token create --namespace demo --service-account $name  -> ${token:0:8}...  (sidecar admin http://$admin/metrics)"
    RAMPART_JOIN_TOKEN="$token" "$BIN/rampart-proxy" --control-plane "$GRPC" \
        --trust-anchor "$DATA/admin/bundle.pem" --workload-api-socket "$DATA/$name-workload.sock" \
        --node-id "$name-1" --admin-addr "$admin" --svid-ttl-seconds 60 "$@" \
        2> "$DATA/$name-proxy.log" &
    pids+=($!)
}
sidecar hello --service hello --port "http=$INBOUND" --app-port "http=$APP" --label app=hello
sidecar frontend --outbound "127.0.0.1:$OUTBOUND=hello.demo:8080"

echo
echo "traffic: client -> frontend rampart-proxy (127.0.0.1:$OUTBOUND) -> mTLS -> hello rampart-proxy (127.0.0.1:$INBOUND) -> app (127.0.0.1:$APP)"
echo "try, in another shell:"
echo "  target/debug/meshctl --data-dir $DATA proxy-status"
echo "  target/debug/meshctl --data-dir $DATA proxy-config frontend-1 --type cds -o json"
echo "  target/debug/meshctl --data-dir $DATA apply -f docs/examples/deny-frontend.yaml    # 403s appear"
echo "  target/debug/meshctl --data-dir $DATA delete -f docs/examples/deny-frontend.yaml   # and go away"
echo "  curl http://127.0.0.1:$INBOUND/   # plaintext to the sidecar: refused (STRICT mTLS)"
echo "identities renew every ~30 s (60 s SVIDs) without a failed request."
echo
python3 - "$OUTBOUND" "$METRICS" <<'PY'
import sys, time, urllib.request, urllib.error, collections
url, metrics = f"http://127.0.0.1:{sys.argv[1]}/", f"http://{sys.argv[2]}/metrics"
counts, last = collections.Counter(), ""
print("waiting for the sidecars to get their configuration ...", flush=True)
for _ in range(120):
    try:
        urllib.request.urlopen(url, timeout=2).read()
        break
    except Exception:
        time.sleep(0.25)
for i in range(1, 1_000_000):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            counts[r.status] += 1; last = r.read().decode().strip()
    except urllib.error.HTTPError as e:
        counts[e.code] += 1; last = e.read().decode().strip()[:60]
    except Exception as e:
        counts["error"] += 1; last = type(e).__name__
    if i % 10 == 0:
        try:
            issued = sum(float(l.split()[-1]) for l in urllib.request.urlopen(metrics, timeout=2).read().decode().splitlines()
                         if l.startswith("rampart_ca_certificates_total") and 'result="issued"' in l)
        except Exception:
            issued = 0
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=str))
        print(f"{time.strftime('%H:%M:%S')}  requests {i}: {summary}  SVIDs issued {issued:.0f}  last: {last}", flush=True)
    time.sleep(0.5)
PY
