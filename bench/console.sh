#!/usr/bin/env bash
# The reviewer console under load (tests/console.rs, bench-harness):
#  - inbox: server time to render `/` with 1,000 pending requests (router called in process:
#    store read, page built and rendered), p50/p90/p99 over AIRLOCK_BENCH_N renders; budget
#    300 ms;
#  - SSE: pgbench -S (8 clients, simple protocol) through the PostgreSQL gateway in interleaved
#    rounds without and with REVIEWERS (100) reviewers connected to the live inbox while an
#    approval request is created and decided every 50 ms, the arm that goes first alternating;
#    median with/without ratios of TPS and of the gateway's CPU per transaction (the test
#    process less the reviewers' client threads, which here share the two cores), the clients'
#    share of a core, load average per round.
# Real PostgreSQL 15 on loopback, real pgbench; run as root.
#
#   bench/console.sh                       # dev profile
#   PROFILE=--release ROUNDS=7 BENCH_SECONDS=15 bench/console.sh
#   REVIEWERS=0 PROFILE=--release bench/console.sh   # both arms alike: the harness's noise
#
# Writes bench/results/console-<date>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
OUT=bench/results/console-$(date -u +%Y-%m-%d).txt
{
  echo "profile: ${PROFILE:-dev}; $(nproc) cores; load at start $(cut -d' ' -f1-3 /proc/loadavg)"
  cargo test -p airlock ${PROFILE:-} --features bench-harness --test console -- \
    --exact bench_inbox_render --nocapture 2>&1 | grep '^inbox render'
  cargo test -p airlock ${PROFILE:-} --features bench-harness --test console -- \
    --exact bench_sse_reviewers_pgbench --nocapture 2>&1 | grep -E '^(load|round|pgbench)'
} | tee "$OUT"
