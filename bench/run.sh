#!/usr/bin/env bash
# cargo xtask bench — every benchmark side by side with its peers in one run, on test hosts in
# network namespaces (198.18.0.0/15). Writes bench/results/<name>-<date>.json and
# bench/results/latest.md (every figure as a ratio to direct, with the load average).
#
#   interception.sh  connect latency and relay throughput: direct, eBPF redirect, iptables
#   postgres.sh      pgbench: direct, airlock allow-all, airlock full policy, pgbouncer, haproxy
#   scale.sh         idle-session memory, 10,000 idle connections, 1,000 pgbench clients
#   soak.sh          (separate: bench/soak.sh) long mixed load, RSS/fds flat, audit verify
#
# Environment: BENCH_ONLY="interception postgres scale" (a subset), BENCH_SECONDS (per pgbench
# run, 20), BENCH_PG_CLIENTS ("8 32"), BENCH_SCALE (pgbench -s, 10), BENCH_CONNS, BENCH_BYTES,
# SCALE_PG_IDLE (1000), SCALE_TCP_IDLE (10000), SCALE_CLIENTS (1000).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
cargo build --release -q -p airlock -p airlock-bench
setup_topology
for b in ${BENCH_ONLY:-interception postgres scale}; do
  # shellcheck source=/dev/null
  source "$ROOT/bench/$b.sh"
done
python3 "$ROOT/bench/report.py" "$RESULTS" > "$RESULTS/latest.md"
cat "$RESULTS/latest.md"
