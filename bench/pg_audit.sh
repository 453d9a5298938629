#!/usr/bin/env bash
# pgbench -S through the airlock PostgreSQL gateway with session recording off, on with
# `fsync: always` (fdatasync before each command's acknowledgement, group commit) and on with
# `fsync: batch` (acknowledged after write(2), fdatasync every batch_interval). Budget:
# recording costs < 5% TPS. Every recorded log is verified after its run.
#
# Writes bench/results/pg-audit-<date>.json and prints a markdown table.
# BENCH_SECS (default 10) per run, BENCH_CLIENTS (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
DATE=$(date -u +%Y-%m-%d)
mkdir -p bench/results
OUT=$(BENCH_SECS=${BENCH_SECS:-10} BENCH_CLIENTS=${BENCH_CLIENTS:-8} cargo test --release -q \
  -p airlock --features bench-harness --test masking -- --exact bench_audit_select_only --nocapture \
  --test-threads=1 2>&1)
echo "| mode | clients | off tps | always tps | batch tps |"
echo "|---|---|---|---|---|"
grep '^| ' <<<"$OUT"
JSON=$(grep '^BENCH_JSON ' <<<"$OUT" | sed 's/^BENCH_JSON //')
[ -n "$JSON" ] || { echo "$OUT" >&2; exit 1; }
echo "$JSON" > "bench/results/pg-audit-$DATE.json"
echo "$JSON"
