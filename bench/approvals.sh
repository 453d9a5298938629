#!/usr/bin/env bash
# Approval latency: from the approve API call to the held UPDATE running on the server (the
# server's clock, stamped by a trigger), on one instance (SQLite store, and PostgreSQL store)
# and across two instances sharing a PostgreSQL store (LISTEN/NOTIFY). Real PostgreSQL 15
# servers (target and store) on loopback, real psql as the held client.
#
#   bench/approvals.sh            # 50 approvals per setup
#   AIRLOCK_BENCH_N=200 bench/approvals.sh
#   PROFILE=--release bench/approvals.sh
#
# Writes bench/results/approvals-<date>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
OUT=bench/results/approvals-$(date -u +%Y-%m-%d).txt
cargo test -p airlock ${PROFILE:-} --features bench-harness --test approvals -- --exact bench_approval_latency --nocapture 2>&1 \
  | grep '^approve → server' | tee "$OUT"
