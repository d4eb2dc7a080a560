#!/usr/bin/env bash
# The fleet benchmark as recorded in docs/benchmarks.md: builds callhome in release mode and
# runs `callhome-bench fleet` for each fleet size given (default: 1000 10000 19500), 3 runs
# each, with a private Mosquitto per run as the reference (BENCH_REFERENCE=system uses the
# broker already running on 127.0.0.1:1883 instead). Everything stays on 127.0.0.0/8.
#
#   tests/bench/fleet.sh [N ...]
#
# Environment: CARGO_TARGET_DIR (default target), BENCH_CACHE (default
# target/bench-cache: enrolled certificates and the server's data directory, kept so
# enrollment happens once), BENCH_RUNS (3), BENCH_COMMANDS (200), BENCH_RATE (20),
# BENCH_OUT (default target/bench-results: one text and one JSON file per size).
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-target}"
cache="${BENCH_CACHE:-$target/bench-cache}"
out="${BENCH_OUT:-$target/bench-results}"
runs="${BENCH_RUNS:-3}"
commands="${BENCH_COMMANDS:-200}"
rate="${BENCH_RATE:-20}"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 19500)
if [ "${BENCH_REFERENCE:-private}" = system ]; then
    reference=(--reference-broker 127.0.0.1:1883)
else
    reference=(--spawn-mosquitto)
fi

cargo build --release -p callhome -p callhome-bench
mkdir -p "$out"
for n in "${sizes[@]}"; do
    echo "== $n modems; uptime before: $(uptime)"
    "$target/release/callhome-bench" fleet --modems "$n" --runs "$runs" \
        --commands "$commands" --command-rate "$rate" \
        "${reference[@]}" --cache-dir "$cache" --json \
        >"$out/fleet-$n.json" 2> >(tee "$out/fleet-$n.txt" >&2)
    echo "== $n modems; uptime after: $(uptime)"
done
