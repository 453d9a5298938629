#!/usr/bin/env bash
# bench/profile.sh — where the daemon spends its CPU on the PostgreSQL hot path: pgbench
# (PROFILE_ARGS, default -S -M simple -c 8) through airlock with the full policy, with
# `perf record` (cpu-clock; hardware counters are not available in these VMs) attached to the
# daemon for PROFILE_SECONDS. Prints the flat profile; perf.data stays in bench/work/profile.
# PROFILE_CONFIG picks another of the bench configs (full-noaudit, allow).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
SECS=${PROFILE_SECONDS:-15}
ARGS=${PROFILE_ARGS:--S -M simple -c 8 -j 2}
OUT=$ROOT/bench/work/profile; mkdir -p "$OUT"
cargo build --release -q -p airlock -p airlock-bench
setup_topology
BENCH_SCALE=${BENCH_SCALE:-2} start_postgres
write_airlock_configs
start_daemon "$WORK/${PROFILE_CONFIG:-full}.yaml"
# shellcheck disable=SC2086
PGPASSWORD=$PG_PASSWORD in_protected pgbench -h $PG_ADDR -p $PG_PORT -U $PG_USER -n $ARGS -T $((SECS + 4)) $PG_DB > "$OUT/pgbench.out" 2>&1 &
LOAD=$!
sleep 2
perf record -e cpu-clock -F 997 ${PROFILE_CALLGRAPH:+--call-graph $PROFILE_CALLGRAPH} -p "$DAEMON" -o "$OUT/perf.data" -- sleep "$SECS" 2> "$OUT/perf.err"
wait $LOAD || true
grep -E "^tps|latency average" "$OUT/pgbench.out"
perf report -i "$OUT/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | head -${PROFILE_TOP:-60}
