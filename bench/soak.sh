#!/usr/bin/env bash
# bench/soak.sh — SOAK_MINUTES (default 30) of mixed load through airlock (reads, masked
# selects, allowed writes, cancels, client disconnects mid-result; see soak.py), with the
# daemon's RSS, open fds, active sessions and pending approval requests sampled every
# SOAK_SAMPLE seconds. The summary compares the first sample taken under load (after a
# warm-up) with the last one, and with the daemon idle after the load; counts errors not
# caused on purpose; and runs `airlock audit verify` on the daemon's log when the CLI has it.
# Writes results/soak-$DATE.json.
#
# TODO(approvals): writes that need review with an automatic approver. The approvals feature
# is not on main yet; when it is, add a `review` rule for a marked write and a loop that
# approves pending requests (`airlock requests --pending --json`, `airlock approve ID`).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
MINUTES=${SOAK_MINUTES:-30}
SAMPLE=${SOAK_SAMPLE:-10}
cargo build --release -q -p airlock -p airlock-bench
setup_topology
BENCH_SCALE=${BENCH_SCALE:-10} start_postgres
start_netbench_server
write_airlock_configs
# The soak's daemon also serves metrics (active sessions, pending approvals).
sed -i "s|^  accept_unintercepted: true|&\n  metrics: 198.18.0.1:19464|" "$WORK/full.yaml"
PGPASSWORD=$PG_PASSWORD in_peer psql -X -q -h $PG_ADDR -U $PG_USER -d $PG_DB -c \
  "CREATE TABLE customers (id int PRIMARY KEY, email text); INSERT INTO customers SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 1000) g"
start_daemon "$WORK/full.yaml"

metric() { in_node curl -s --max-time 2 http://198.18.0.1:19464/metrics | awk -v m="$1" '$1 ~ "^"m {s += $2; n++} END {if (n) print s; else print "null"}'; }
sample() {
  echo "{\"t\": $(date +%s), \"rss_kb\": $(rss_kb "$DAEMON"), \"fds\": $(fd_count "$DAEMON"), \"sessions_active\": $(metric airlock_sessions_active), \"pending\": $(metric airlock_approvals_pending), \"loadavg\": \"$(loadavg)\"}"
}

echo "soak: $MINUTES minutes of mixed load through airlock" >&2
idle0=$(sample)
in_protected /usr/bin/python3 "$ROOT/bench/soak.py" $PG_ADDR $PG_PORT $PG_USER $PG_DB $(python3 -c "print(int(float($MINUTES) * 60))") $((${BENCH_SCALE:-10} * 100000)) > "$WORK/soak.json" 2> "$WORK/soak.err" &
LOAD=$!; EXTRA_PIDS="$EXTRA_PIDS $LOAD"
: > "$WORK/samples.jsonl"
while kill -0 $LOAD 2>/dev/null; do sample >> "$WORK/samples.jsonl"; sleep "$SAMPLE"; done
wait $LOAD || { echo "soak load failed" >&2; cat "$WORK/soak.err" >&2; }
sleep 5
idle1=$(sample)

verify='"not run"'
if "$AIRLOCK" audit verify --help >/dev/null 2>&1; then
  if out=$("$AIRLOCK" audit verify --config "$WORK/full.yaml" 2>&1); then verify=$(python3 -c 'import json,sys; print(json.dumps("clean: " + sys.argv[1][-300:]))' "$out")
  else verify=$(python3 -c 'import json,sys; print(json.dumps("FAILED: " + sys.argv[1][-300:]))' "$out"); fi
else
  verify='"not available: the airlock binary on this branch has no `audit verify` subcommand yet"'
fi

python3 - "$WORK/soak.json" "$WORK/samples.jsonl" "$idle0" "$idle1" "$MINUTES" "$STAMP" "$MACHINE" "$verify" > "$RESULTS/soak-$DATE.json" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
samples = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
idle0, idle1 = json.loads(sys.argv[3]), json.loads(sys.argv[4])
# The first sample a minute (or a tenth of the run) into the load: sessions open, caches warm.
t0 = samples[0]["t"] + min(60, (samples[-1]["t"] - samples[0]["t"]) / 10)
start = next(s for s in samples if s["t"] >= t0)
end = samples[-1]
workers = load["workers"]
print(json.dumps({
    "date": sys.argv[6], "machine": sys.argv[7], "minutes": float(sys.argv[5]),
    "start": start, "end": end, "idle_before": idle0, "idle_after": idle1,
    "rss_growth_kb": end["rss_kb"] - start["rss_kb"], "fd_growth": end["fds"] - start["fds"],
    "operations": {w: {"ok": s["ok"], "expected_errors": s["expected_errors"]} for w, s in workers.items()},
    "masked_values": {"masked": workers.get("masked", {}).get("masked", 0), "unmasked": workers.get("masked", {}).get("unmasked", 0)},
    "unexpected_errors": sum(s["unexpected_errors"] for s in workers.values()),
    "error_messages": {w: s["messages"] for w, s in workers.items() if s["messages"]},
    "audit_verify": json.loads(sys.argv[8]),
    "approvals": "TODO: writes that need review with an automatic approver (approvals not on main yet)",
    "samples": len(samples),
}, indent=1))
PY
cat "$RESULTS/soak-$DATE.json"
