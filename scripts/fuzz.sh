#!/usr/bin/env bash
# Runs every cargo-fuzz target (tests/fuzz) for a bounded time, starting
# from its committed seeds (tests/fuzz/seeds/<target>; crashes once found
# are kept there as regression seeds). Any crash fails the run and leaves
# the input in tests/fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 30, all)
#
# Stable Rust works: without a sanitizer (-s none) cargo-fuzz needs no
# nightly flags; libFuzzer still guides by coverage.
set -euo pipefail
cd "$(dirname "$0")/../tests/fuzz"
seconds="${1:-30}"
shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
# The product's lock file: the fuzz targets build what ships.
cp ../../Cargo.lock Cargo.lock
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir .)
cargo fuzz build --fuzz-dir . -s none -O
for target in "${targets[@]}"; do
    work="$(mktemp -d)"
    cp -r "seeds/$target/." "$work/" 2>/dev/null || true
    echo "==> fuzz $target for ${seconds}s"
    status=0
    cargo fuzz run --fuzz-dir . -s none -O "$target" "$work" -- \
        -max_total_time="$seconds" >"$work.log" 2>&1 || status=$?
    grep -E "^Done [0-9]+ runs|cov: [0-9]+ .*DONE" "$work.log" | tail -2 || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$work.log" >&2
        echo "fuzz target $target failed (the input is in tests/fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    rm -rf "$work" "$work.log"
done
