#!/usr/bin/env bash
# make bench: build surge and the baseline, find or start PostgreSQL, and
# print surge's rates as ratios to baselines measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
trap deps_stop EXIT
command -v pgbench >/dev/null || apt_install postgresql-client
command -v wrk >/dev/null || apt_install wrk
command -v redis-benchmark >/dev/null || apt_install redis-tools
command -v perf >/dev/null || apt_install linux-perf # bench observe: telemetry's share of a CPU profile
mkdir -p .cache
go build -o .cache/surge ./cmd/surge
go build -o .cache/hello ./bench/hello
go run ./bench --surge .cache/surge --hello .cache/hello --pg "$SURGE_TEST_PG" "$@"
