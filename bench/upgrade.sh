# Sourced by run.sh after lib.sh and setup_topology. Upgrades under load: intercepted clients
# make connection attempts one after another (netbench attempts, BENCH_UPGRADE_WORKERS in
# parallel, BENCH_UPGRADE_SECONDS each) while, halfway through, the daemon is
#   steady    left alone (the baseline),
#   upgrade   upgraded in place (`airlock upgrade`: the new daemon takes the sockets over),
#   restart   stopped and started again, as a plain `systemctl restart` would (SIGTERM drain,
#             then a fresh start; interception stays pinned, so attempts meanwhile are refused),
# and, as the peer doing the same job, haproxy in TCP mode before the same service is reloaded
# seamlessly (`-x` takes the listeners over the stats socket, `-sf` drains the old process).
# Reports attempts per second, failures by kind, and the worst 100 ms around the event as a
# fraction of the median 100 ms. Writes results/upgrade-$DATE.json.
SECS=${BENCH_UPGRADE_SECONDS:-10}
WORKERS=${BENCH_UPGRADE_WORKERS:-4}

start_netbench_server
{ daemon_section; echo "targets:"; tcp_targets; cat <<YAML; } > "$WORK/upgrade.yaml"
rules:
  # Every connection to the benchmark service is allowed (tcp connections are decided by
  # policy, default deny).
  - name: bench-connect
    action: allow
YAML

# attempts NAME RUNNER ADDR EVENT: WORKERS attempt loops; EVENT (a function) runs halfway.
attempts() {
  local name=$1 runner=$2 addr=$3 event=$4 pids=() i
  for i in $(seq "$WORKERS"); do
    $runner "$NETBENCH" attempts "$addr" "$SECS" > "$WORK/att-$name-$i" 2>&1 &
    pids+=($!)
  done
  sleep "$(python3 -c "print($SECS / 2)")"
  local t0; t0=$(date +%s.%N)
  $event
  local took; took=$(python3 -c "print(round($(date +%s.%N) - $t0, 3))")
  for p in "${pids[@]}"; do wait "$p"; done
  python3 - "$name" "$SECS" "$took" "$WORK"/att-"$name"-* <<'PY'
import json, statistics, sys
name, secs, took, files = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
runs = [json.loads(open(f).read()) for f in files]
bins = [sum(b) for b in zip(*(r["ok_per_100ms"] for r in runs))]
mid = len(bins) // 2
window = bins[max(0, mid - 10):mid + 30]          # 1 s before the event to 3 s after
median = statistics.median(bins[2:-2]) or 1
out = {
    "attempts_per_s": round(sum(r["ok"] for r in runs) / secs, 1),
    "failed": {k: sum(r[k] for r in runs) for k in ("refused", "reset", "timeout", "other")},
    "worst_100ms_vs_median": round(min(window) / median, 2),
    "event_s": took,
    "first_error": next((r["first_error"] for r in runs if r["first_error"]), None),
}
print(json.dumps({name: out}))
PY
}

no_event() { :; }
upgrade_event() {
  local out; out=$("$AIRLOCK" upgrade --config "$WORK/upgrade.yaml")
  NEW_DAEMON=$(echo "$out" | sed -n 's/.*pid \([0-9]*\).*/\1/p')
  EXTRA_PIDS="${EXTRA_PIDS:-} $NEW_DAEMON"
}
restart_event() {
  kill -TERM "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=
  start_daemon "$WORK/upgrade.yaml"
}

# haproxy, reloadable: the stats socket hands its listeners to the next process.
cat > "$WORK/reload-haproxy.cfg" <<CFG
global
  maxconn 4000
  stats socket $WORK/haproxy.sock mode 600 expose-fd listeners level admin
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen relay
  bind 198.18.0.1:7201
  server netbench 198.18.0.2:7000
CFG
# The listening socket's owner names the haproxy process itself (a backgrounded shell
# function's $! does not).
in_peer haproxy -f "$WORK/reload-haproxy.cfg" -db > "$WORK/reload-haproxy.out" 2>&1 &
EXTRA_PIDS="${EXTRA_PIDS:-} $!"
for _ in $(seq 50); do HAPROXY_OLD=$(listener_pid 7201); [ -n "$HAPROXY_OLD" ] && break; sleep 0.1; done
EXTRA_PIDS="$EXTRA_PIDS $HAPROXY_OLD"
haproxy_reload_event() {
  in_peer haproxy -f "$WORK/reload-haproxy.cfg" -db -x "$WORK/haproxy.sock" -sf "$HAPROXY_OLD" > "$WORK/reload-haproxy2.out" 2>&1 &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  # Done once another process holds the listener and the old one has let it go.
  local owners=
  for _ in $(seq 200); do
    owners=$(in_node ss -ltnpH "sport = :7201" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' ')
    if [ -n "$owners" ] && ! echo " $owners" | grep -q " $HAPROXY_OLD "; then break; fi
    sleep 0.02
  done
  EXTRA_PIDS="$EXTRA_PIDS $owners"
}

echo "upgrade: $WORKERS workers x ${SECS}s of connection attempts per path; the event at $((SECS / 2))s" >&2
load0=$(loadavg)
: > "$WORK/upgrade-results"
start_daemon "$WORK/upgrade.yaml"
attempts steady in_protected 198.18.0.2:7000 no_event >> "$WORK/upgrade-results"
attempts upgrade in_protected 198.18.0.2:7000 upgrade_event >> "$WORK/upgrade-results"
# The upgraded daemon is the one to stop now.
kill -9 "$NEW_DAEMON" 2>/dev/null || true
start_daemon "$WORK/upgrade.yaml"
attempts restart in_protected 198.18.0.2:7000 restart_event >> "$WORK/upgrade-results"
stop_daemon
attempts haproxy_steady in_peer 198.18.0.1:7201 no_event >> "$WORK/upgrade-results"
attempts haproxy_reload in_peer 198.18.0.1:7201 haproxy_reload_event >> "$WORK/upgrade-results"

python3 - "$WORK/upgrade-results" "$STAMP" "$MACHINE" "$load0" "$(loadavg)" "$WORKERS" "$SECS" > "$RESULTS/upgrade-$DATE.json" <<'PY'
import json, sys
path, stamp, machine, load0, load1, workers, secs = sys.argv[1:]
runs = {}
for line in open(path):
    if line.strip():
        runs.update(json.loads(line))
print(json.dumps({"date": stamp, "machine": machine, "loadavg": {"start": load0, "end": load1},
                  "workers": int(workers), "seconds": float(secs), "runs": runs}, indent=1))
PY
cat "$RESULTS/upgrade-$DATE.json" >&2
