#!/usr/bin/env bash
# README's first command: builds Rampart and runs `meshctl demo`, the whole
# mesh on the embedded default, all on loopback: rampart-control on its sled
# store in .rampart/ (kept across runs), a frontend calling two versions of a
# backend over HTTP and gRPC, a client calling the frontend, each behind its
# own rampart-proxy with its own SPIFFE identity, and a live view of the
# traffic. Ctrl-C stops everything it started. docs/getting-started.md walks
# through what to do next. Extra arguments go to `meshctl demo` (e.g. --rate 50).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --workspace --bins
exec target/debug/meshctl --data-dir "${RAMPART_DEMO_DIR:-$PWD/.rampart}" demo "$@"
