#!/usr/bin/env bash
# cargo xtask bench — every benchmark side by side with its peers in one run, on test hosts in
# network namespaces (198.18.0.0/15). Writes bench/results/<name>-<date>.json and
# bench/results/latest.md (every figure as a ratio to direct, with the load average).
#
#   interception.sh  connect latency and relay throughput: direct, eBPF redirect, iptables
#   postgres.sh      pgbench: direct, airlock allow-all, airlock full policy, pgbouncer, haproxy
#   mysql.sh         sysbench OLTP: direct, airlock full policy (masked and not), haproxy, bare relay
#   scale.sh         idle-session memory, 10,000 idle connections, 1,000 pgbench clients
#   upgrade.sh       connection attempts/s across `airlock upgrade`, a restart, haproxy's reload
#   http.sh          wrk: nginx direct, airlock (full policy, masking, audit), haproxy http mode
#   soak.sh          (separate: bench/soak.sh) long mixed load, RSS/fds flat, audit verify
#   interception_ab.sh (separate) connect latency of another daemon build (AIRLOCK_OLD)
#                    against this tree's, interleaved, for regressions
#   uring_ab.sh      (separate) pgbench and the 1 GiB relay on the io_uring engine against
#                    epoll, beside haproxy and the bare relay (docs/decisions/io-uring.md)
#
# Environment: BENCH_ONLY="interception postgres mysql scale upgrade http" (a subset),
# BENCH_SECONDS (per pgbench/sysbench run, 20), BENCH_PG_CLIENTS ("8 32"), BENCH_SCALE (pgbench
# -s, 10), BENCH_MY_THREADS ("8 32"), BENCH_MY_WORKLOADS, BENCH_MY_PATHS, BENCH_MY_TABLES (4),
# BENCH_MY_ROWS (10000), BENCH_CONNS, BENCH_BYTES, SCALE_PG_IDLE (1000), SCALE_TCP_IDLE (10000),
# SCALE_CLIENTS (1000), BENCH_UPGRADE_SECONDS (10), BENCH_UPGRADE_WORKERS (4).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
cargo build --release -q -p airlock -p airlock-bench
setup_topology
for b in ${BENCH_ONLY:-interception postgres mysql scale upgrade http}; do
  # shellcheck source=/dev/null
  source "$ROOT/bench/$b.sh"
done
python3 "$ROOT/bench/report.py" "$RESULTS" > "$RESULTS/latest.md"
cat "$RESULTS/latest.md"
