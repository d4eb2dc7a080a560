#!/usr/bin/env bash
# Every benchmark table in docs/benchmarks*.md, in the order they were measured: sessions
# (sets A, B, C, the unloaded baseline and the parallelism sweep), fleet (1,000, 10,000 and
# 19,500 modems against a private Mosquitto), jobs (1,000 and 10,000 modems), firmware
# campaigns (1,000 modems at 50 and 200 in flight, 10,000 at 500; needs `curl`). Builds the
# release binaries first. Everything stays on 127.0.0.0/8; every wait is bounded.
#
#   tests/bench/all.sh
#
# Environment: CARGO_TARGET_DIR (default target), BENCH_OUT (default
# $CARGO_TARGET_DIR/bench-results: the text and JSON output, and progress.txt with the load
# before each step), BENCH_CACHE (default $CARGO_TARGET_DIR/bench-cache: enrolled modems,
# kept between invocations).
set -uo pipefail
cd "$(dirname "$0")/../.."
T="${CARGO_TARGET_DIR:-target}"
cargo build --release -p callhome -p callhome-bench || exit 1
B="$T/release/callhome-bench"
O="${BENCH_OUT:-$T/bench-results}"
C="${BENCH_CACHE:-$T/bench-cache}"
mkdir -p "$O" "$C"
log() { echo "== $(date -u +%H:%M:%S) $* ; load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$O"/progress.txt; }
log sessions A
$B sessions --json "$O"/sessions-a.json > "$O"/sessions-a.txt 2>&1
log sessions B
$B sessions --json "$O"/sessions-b.json > "$O"/sessions-b.txt 2>&1
log sessions C
$B sessions --json "$O"/sessions-c.json > "$O"/sessions-c.txt 2>&1
log sessions parallel 1
$B sessions --sessions 300 --parallel 1 --phases rendezvous,direct --json "$O"/sessions-p1.json > "$O"/sessions-p1.txt 2>&1
for p in 2 5 10 25 50 100; do
  m=50; [ $p -gt 50 ] && m=$p
  log sessions sweep $p
  $B sessions --sessions 1000 --parallel $p --modems $m --runs 1 --phases rendezvous,direct --json "$O"/sweep-$p.json > "$O"/sweep-$p.txt 2>&1
done
for n in 1000 10000 19500; do
  log fleet $n
  $B fleet --modems $n --runs 3 --commands 200 --command-rate 20 --spawn-mosquitto --cache-dir "$C"/fleet --json > "$O"/fleet-$n.json 2> "$O"/fleet-$n.txt
done
log jobs 1000
$B jobs --modems 1000 --in-flight 50 --runs 3 --cache-dir "$C"/jobs1k > "$O"/jobs-1k.txt 2>&1
log jobs 10000
$B jobs --modems 10000 --in-flight 500 --runs 3 --cache-dir "$C"/jobs10k > "$O"/jobs-10k.txt 2>&1
log firmware 1000 50
$B firmware --modems 1000 --in-flight 50 --image-mib 1 --runs 3 --cache-dir "$C"/fw1k > "$O"/firmware-1k.txt 2>&1
log firmware 1000 200
$B firmware --modems 1000 --in-flight 200 --image-mib 1 --runs 3 --cache-dir "$C"/fw1k > "$O"/firmware-1k-200.txt 2>&1
log firmware 10000 500
$B firmware --modems 10000 --in-flight 500 --image-mib 1 --runs 3 --cache-dir "$C"/fw10k > "$O"/firmware-10k.txt 2>&1
log done
