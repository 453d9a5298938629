# Sourced by run.sh after lib.sh and setup_topology (issue 3). A real PostgreSQL on
# 198.18.0.2:5432; pgbench -S (simple and prepared) and the default TPC-B-like script at 8 and
# 32 clients, each path side by side for every workload: direct; airlock with an allow-all
# policy; airlock with the full policy (classification, identity, rules, masking), with the
# session log on (as deployed) and off (the cost of classification alone); pgbouncer in
# session mode; haproxy in TCP mode; and the bare copy relay (netbench copy-relay), the floor
# for any proxy that reads each message in user space. pgbench reaches airlock transparently
# (protected cgroup -> eBPF redirect) and the peers directly (unprotected cgroup). Writes results/postgres-$DATE.json.
SECS=${BENCH_SECONDS:-20}
CLIENTS=${BENCH_PG_CLIENTS:-8 32}
WORKLOADS=${BENCH_PG_WORKLOADS:-select-simple select-prepared tpcb}
PATHS=${BENCH_PG_PATHS:-direct airlock-allow airlock-full airlock-full-noaudit pgbouncer haproxy bare-relay}

[ -n "$(pg_admin 'select 1' 2>/dev/null)" ] || start_postgres
start_peers
write_airlock_configs

echo "postgres: $WORKLOADS × clients $CLIENTS × paths $PATHS, ${SECS}s each" >&2
load0=$(loadavg)
{
  echo "{\"date\": \"$STAMP\", \"machine\": \"$MACHINE\", \"seconds\": $SECS, \"scale\": ${BENCH_SCALE:-10},"
  echo " \"loadavg_start\": \"$load0\", \"runs\": ["
  first=1
  for w in $WORKLOADS; do for c in $CLIENTS; do for p in $PATHS; do
    echo "  $p $w -c $c" >&2
    run_pgbench "$p" "$w" "$c" "$SECS" "pg-$p-$w-$c" > "$WORK/run.json"; r=$(cat "$WORK/run.json")
    [ $first = 1 ] || echo ","; first=0
    echo "  {\"path\": \"$p\", \"workload\": \"$w\", \"clients\": $c, \"result\": $r}"
  done; done; done
  echo "], \"loadavg_end\": \"$(loadavg)\"}"
} > "$RESULTS/postgres-$DATE.json"
stop_daemon
