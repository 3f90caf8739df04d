#!/usr/bin/env bash
# End-to-end benchmark (BENCHMARKS.md): the gateway beside the ceilings of its own broker and
# InfluxDB, in one run on this machine. Needs the servers the tests use (mosquitto, influxd:
# `.ci/run` installs them) and about 10 minutes; run it on an otherwise idle machine.
#
#   scripts/bench-e2e.sh                      # everything, the figures of BENCHMARKS.md
#   scripts/bench-e2e.sh --phases latency     # one phase (broker, gateway, latency, backlog)
#   scripts/bench-e2e.sh --backlog 100000 --step-secs 5   # quicker, less precise
#
# Options are those at the top of benches/e2e/main.rs. The report (Markdown) is printed and
# kept in target/bench-e2e/. HEARTGUARD_BENCH_GATEWAY=PATH benchmarks another gateway binary
# (e.g. `cargo build --profile profiling` for perf; BENCHMARKS.md, "Profiling").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for bin in mosquitto influxd; do
    if ! command -v "$bin" >/dev/null && [ ! -x "/usr/sbin/$bin" ]; then
        echo "bench-e2e: $bin not found; install the test servers first (sudo bash .ci/run does)" >&2
        exit 1
    fi
done

mkdir -p target/bench-e2e
out="target/bench-e2e/report-$(date -u +%Y%m%dT%H%M%SZ).md"
cargo bench --locked -j2 --bench e2e -- --out "$out" "$@"
