#!/usr/bin/env bash
# Cancel latency (issue 25): a client cancels its own `SELECT pg_sleep(10)` once the server
# runs it; the time from the cancel call (libpq's PQcancel, through psycopg) to the client's
# 57014 error, direct, through haproxy (TCP) and through airlock (full policy, audit on), in
# interleaved rounds with the order rotated. Budget: airlock's p99 within 2 ms of direct.
# Two settings, LOADS (default "0 8"): an idle path, and one that carries a pgbench -S load of
# N clients at LOAD_RATE transactions/s in all (default 2000, a busy proxy on these two cores
# that still leaves CPU: unthrottled, pgbench alone saturates both and every path waits on the
# scheduler) while its cancels run. (In the soak a cancel took p50 223 ms, with no direct
# figure beside it.)
#
#   ROUNDS=5 CANCELS=40 bench/cancel.sh     (after `cargo build --release -p airlock -p airlock-bench`)
# The client is Debian's python3-psycopg (/usr/bin/python3), as installed by `cargo xtask setup`.
# Writes results/cancel-$DATE.json.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ROUNDS=${ROUNDS:-5}; CANCELS=${CANCELS:-40}; LOADS=${LOADS:-0 8}; LOAD_RATE=${LOAD_RATE:-2000}
setup_topology
start_postgres
start_peers
write_airlock_configs
start_daemon "$WORK/full.yaml"
MONITOR="host=$PGDIR port=$PG_PORT user=postgres dbname=postgres"
cancel_run() {
  local path=$1 clients=$2 runner=in_peer host=$PG_ADDR port=$PG_PORT
  case $path in
    direct) ;;
    haproxy) host=198.18.0.1; port=6543 ;;
    airlock) runner=in_protected ;;
  esac
  local load_pid= rc=0
  if [ "$clients" -gt 0 ]; then
    PGPASSWORD=$PG_PASSWORD $runner pgbench -n -S -c "$clients" -j 2 -R "$LOAD_RATE" -T 600 -h $host -p $port -U $PG_USER $PG_DB > /dev/null 2>&1 &
    load_pid=$!
    sleep 1
  fi
  $runner /usr/bin/python3 "$ROOT/bench/cancel.py" "$host" "$port" "$MONITOR" "$CANCELS" || rc=$?
  # $runner is a function, so the background job is a subshell whose child is pgbench:
  # stop the child too (killing the subshell alone left pgbench running, and the loads piled up).
  [ -z "$load_pid" ] || { pkill -P "$load_pid" 2>/dev/null; kill "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null || true; }
  return $rc
}
load0=$(loadavg); echo "load start: $load0" >&2
paths="direct haproxy airlock"
for l in $LOADS; do
  for r in $(seq "$ROUNDS"); do
    for p in $paths; do
      cancel_run "$p" "$l" > "$WORK/cancel-$l-$p-$r.json" || { echo "cancel run failed: $p" >&2; tail -20 "$WORK/daemon.log" >&2; exit 1; }
    done
    echo "pgbench load $l, round $r ($paths): load average $(loadavg)" >&2
    paths="${paths#* } ${paths%% *}"
  done
done
echo "load end: $(loadavg)" >&2
python3 - "$WORK" "$RESULTS/cancel-$DATE.json" "$ROUNDS" "$load0" "$(loadavg)" "$LOAD_RATE" $LOADS <<'PY'
import json, sys
work, out, rounds, load0, load1, loads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[7:]
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
result = {"cancels_per_round": None, "rounds": rounds, "load_rate_tps": int(sys.argv[6]), "loadavg_start": load0, "loadavg_end": load1, "runs": []}
for l in loads:
    rows = {}
    for p in ("direct", "haproxy", "airlock"):
        xs = [s for r in range(1, rounds + 1)
              for s in json.load(open(f"{work}/cancel-{l}-{p}-{r}.json"))["samples_ms"]]
        rows[p] = {"n": len(xs), "p50_ms": round(pct(xs, 50), 3), "p90_ms": round(pct(xs, 90), 3),
                   "p99_ms": round(pct(xs, 99), 3), "max_ms": round(max(xs), 3)}
    gap = rows["airlock"]["p99_ms"] - rows["direct"]["p99_ms"]
    print(f"pgbench -S load of {l} clients on the path" + (f" ({sys.argv[6]} TPS in all)" if l != "0" else "") + ":")
    for p, row in rows.items():
        print(f"  {p:8} n={row['n']} p50 {row['p50_ms']} ms p90 {row['p90_ms']} ms p99 {row['p99_ms']} ms max {row['max_ms']} ms")
    print(f"  airlock p99 - direct p99 = {gap:.3f} ms (budget 2 ms: {'met' if gap <= 2 else 'MISSED'})")
    result["runs"].append({"load_clients": int(l), "paths": rows, "p99_gap_ms": round(gap, 3)})
result["cancels_per_round"] = rows["direct"]["n"] // rounds
json.dump(result, open(out, "w"), indent=1)
PY
