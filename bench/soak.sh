#!/usr/bin/env bash
# bench/soak.sh — SOAK_MINUTES (default 30) of mixed load through airlock (see soak.py):
# reads, masked selects (a column rule and the email detector; every value the client receives
# is checked for a raw email), allowed writes, writes that need review (a `review` rule in hold
# mode, approved by an automatic approver with the admin token, i.e. a second identity),
# clients that go away while held, cancels, and client disconnects mid-result. The daemon
# records every session (audit on, `fsync: batch`) and serves metrics and the approvals API.
#
# Every SOAK_SAMPLE seconds: the daemon's RSS, open fds, active sessions and pending approval
# requests. The summary compares the first sample under load (after a warm-up) with the last
# one, and with the daemon idle before and after the load; counts errors not caused on purpose;
# checks that no request is left pending (metrics, the CLI, the store); and runs
# `airlock audit verify` on the daemon's log. Writes results/soak-$DATE.json (or $SOAK_OUT,
# e.g. for a short trial run that must not replace the checked-in summary) with
# "passed": false and the reasons when any check fails (the script then exits 1).
# The audit log grows by about 130 MB a minute under this load (4 GB for 30 minutes, in
# bench/work, removed at exit).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
MINUTES=${SOAK_MINUTES:-30}
SAMPLE=${SOAK_SAMPLE:-10}
METRICS=198.18.0.1:19464
API=198.18.0.1:19470
cargo build --release -q -p airlock -p airlock-bench
setup_topology
BENCH_SCALE=${BENCH_SCALE:-10} start_postgres
start_netbench_server

# The soak's additions to the full policy: metrics, the approvals API (SQLite store, admin
# token in <state_dir>/api.token), session recording with the default batch fsync; a review
# rule for writes to soak_held; the email detector next to the customers.email column rule.
DAEMON_EXTRA="  metrics: $METRICS
  api: $API
  approvals:
    store: sqlite
  audit:
    enabled: true
    fsync: batch"
RULES_EXTRA='  - name: soak-held-write
    targets: [bench-db]
    subjects: ["unix:root"]
    identities: [bench-clients]
    classes: [write]
    tables: [soak_held]
    action: review
    review: { approvers: [dba], quorum: 1, ttl: 1m, timeout: 30s, on_timeout: deny, mode: hold }
    mask: [customer-email, email-detector, filler]'
MASKING_EXTRA='  - name: email-detector
    detectors: [email]
    style: redact'
MASKS="customer-email, email-detector, filler"
write_airlock_configs
CONFIG=$WORK/full.yaml
"$AIRLOCK" policy check "$CONFIG" >/dev/null

PGPASSWORD=$PG_PASSWORD in_peer psql -X -q -v ON_ERROR_STOP=1 -h $PG_ADDR -U $PG_USER -d $PG_DB -c \
  "CREATE TABLE customers (id int PRIMARY KEY, email text, note text);
   INSERT INTO customers SELECT g, 'user' || g || '@example.com', 'call back user' || g || '@example.com about order ' || g FROM generate_series(1, 1000) g;
   CREATE TABLE soak_held (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, at timestamptz);
   INSERT INTO soak_held (id) SELECT generate_series(1, 100)"
start_daemon "$CONFIG"

metric() { in_node curl -s --max-time 2 "http://$METRICS/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2; n++} END {if (n) print s; else print "null"}'; }
sample() {
  echo "{\"t\": $(date +%s), \"rss_kb\": $(rss_kb "$DAEMON"), \"fds\": $(fd_count "$DAEMON"), \"sessions_active\": $(metric airlock_sessions_active), \"pending\": $(metric airlock_approvals_pending), \"loadavg\": \"$(loadavg)\"}"
}
# Pending requests as the approvals CLI lists them (the store's view).
cli_pending() {
  in_node "$AIRLOCK" requests --pending --json --config "$CONFIG" 2>> "$WORK/cli.err" \
    | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>> "$WORK/cli.err" || echo null
}

echo "soak: $MINUTES minutes of mixed load through airlock" >&2
idle0=$(sample)
pending0=$(cli_pending)
in_protected env SOAK_API=$API SOAK_TOKEN_FILE="$WORK/state/api.token" /usr/bin/python3 "$ROOT/bench/soak.py" \
  $PG_ADDR $PG_PORT $PG_USER $PG_DB $(python3 -c "print(int(float($MINUTES) * 60))") $((${BENCH_SCALE:-10} * 100000)) \
  > "$WORK/soak.json" 2> "$WORK/soak.err" &
LOAD=$!; EXTRA_PIDS="$EXTRA_PIDS $LOAD"
: > "$WORK/samples.jsonl"
while kill -0 $LOAD 2>/dev/null; do sample >> "$WORK/samples.jsonl"; sleep "$SAMPLE"; done
wait $LOAD || { echo "soak load failed" >&2; cat "$WORK/soak.err" >&2; }
# Idle: sessions closed, the pending gauge refreshed from the store (every 2 s), the audit
# writer's last head signed (head_interval 1 s).
sleep 5
idle1=$(sample)
pending1=$(cli_pending)
metrics_end=$(in_node curl -s --max-time 2 "http://$METRICS/metrics" | grep -E '^airlock_(approval|approvals_pending|masked_values|sessions_active|commands_total)' || true)

verify_rc=0
in_node "$AIRLOCK" audit verify --config "$CONFIG" --json > "$WORK/verify.json" 2> "$WORK/verify.err" || verify_rc=$?
du -sb "$WORK/state/audit" | cut -f1 > "$WORK/audit.bytes"

python3 - "$WORK/soak.json" "$WORK/samples.jsonl" "$idle0" "$idle1" "$MINUTES" "$STAMP" "$MACHINE" \
  "$WORK/verify.json" "$verify_rc" "$WORK/verify.err" "$pending0" "$pending1" "$metrics_end" \
  "$WORK/state/approvals.db" "$(cat "$WORK/audit.bytes")" "$WORK/soak.err" > "$WORK/summary.json" <<'PY'
import json, sqlite3, sys
(soak_json, samples_file, idle0, idle1, minutes, stamp, machine, verify_json, verify_rc, verify_err,
 pending0, pending1, metrics_end, store, audit_bytes, soak_err) = sys.argv[1:17]
try:
    load = json.load(open(soak_json))
except ValueError:
    load = {"workers": {}, "approvals": None, "crashed": open(soak_err).read()[-2000:]}
samples = [json.loads(l) for l in open(samples_file) if l.strip()]
idle0, idle1 = json.loads(idle0), json.loads(idle1)
# The first sample a minute (or a tenth of the run) into the load: sessions open, caches warm.
t0 = samples[0]["t"] + min(60, (samples[-1]["t"] - samples[0]["t"]) / 10)
start = next(s for s in samples if s["t"] >= t0)
end = samples[-1]
workers = load["workers"]
failures = []
if load.get("crashed"):
    failures.append("the load generator crashed: " + load["crashed"][-300:])

# The approvals as the daemon counted them, and what the store holds.
def metric_sum(prefix, label=None):
    total, seen = 0.0, False
    for line in metrics_end.splitlines():
        name, _, value = line.rpartition(" ")
        if name.split("{")[0] == prefix and (label is None or label in name):
            total, seen = total + float(value), True
    return total if seen else None
outcomes = {o: int(metric_sum("airlock_approval_requests_total", f'outcome="{o}"') or 0)
            for o in ("approved", "denied", "timeout", "escalated", "granted", "cancelled")}
lat_sum, lat_n = metric_sum("airlock_approval_decision_latency_seconds_sum"), metric_sum("airlock_approval_decision_latency_seconds_count")
try:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    store_states = dict(db.execute("SELECT state, count(*) FROM approval_requests GROUP BY state").fetchall())
except sqlite3.Error as e:
    store_states = {"error": str(e)}
approvals = load.get("approvals") or {}
pending_end = {"metric": idle1.get("pending"), "cli": json.loads(pending1), "store": store_states.get("pending", 0)}
if any(v != 0 for v in pending_end.values()):
    failures.append(f"requests left pending: {pending_end}")
if not approvals.get("approved"):
    failures.append("no write was approved")

# The audit log.
try:
    report = json.load(open(verify_json))
except ValueError:
    report = None
if verify_rc == "0" and report and report["ok"] and not report["issues"]:
    audit_verify = (f"clean: {report['records']} records in {report['files']} file(s), "
                    f"{report['sessions']} sessions ({report['open_sessions']} open), "
                    f"signed head at seq {report['signed_seq']} of {report['last_seq']}")
else:
    detail = [f"{i['severity']} {i['kind']}: {i['message']}" for i in (report or {}).get("issues", [])[:5]]
    audit_verify = "FAILED: " + ("; ".join(detail) or open(verify_err).read()[-300:] or f"exit {verify_rc}")
    failures.append("audit verify: " + audit_verify)
audit = {"verify": audit_verify, "log_bytes": int(audit_bytes or 0)}
if report:
    audit.update({k: report.get(k) for k in ("records", "files", "sessions", "open_sessions", "signed_seq", "last_seq", "unsigned_tail")})
    if report.get("open_sessions"):
        failures.append(f"{report['open_sessions']} sessions without an end record with the daemon idle")

unexpected = sum(s["unexpected_errors"] for s in workers.values())
if unexpected:
    failures.append(f"{unexpected} unexpected errors")
masked = workers.get("masked", {})
if masked.get("unmasked"):
    failures.append(f"{masked['unmasked']} raw emails reached the client")
if not masked.get("masked"):
    failures.append("no masked value was seen")

print(json.dumps({
    "date": stamp, "machine": machine, "minutes": float(minutes),
    "passed": not failures, "failures": failures,
    "start": start, "end": end, "idle_before": idle0, "idle_after": idle1,
    "rss_growth_kb": end["rss_kb"] - start["rss_kb"], "fd_growth": end["fds"] - start["fds"],
    # Flat or still climbing: the daemon's RSS and fds at each tenth of the load.
    "rss_kb_by_tenth": [samples[min(len(samples) - 1, len(samples) * i // 10)]["rss_kb"] for i in range(11)],
    "fds_by_tenth": [samples[min(len(samples) - 1, len(samples) * i // 10)]["fds"] for i in range(11)],
    "pending": {"start": start.get("pending"), "end": end.get("pending"),
                "before_load_cli": json.loads(pending0), "after_load": pending_end},
    "operations": {w: {"ok": s["ok"], "expected_errors": s["expected_errors"],
                       "unexpected_errors": s["unexpected_errors"]} for w, s in sorted(workers.items())},
    "masked_values": {"masked": masked.get("masked", 0), "unmasked": masked.get("unmasked", 0)},
    # Cancels sent again because the query was still running 2 s after the last one.
    "cancel_repeats": workers.get("cancel", {}).get("repeated", 0),
    "cancel_to_error": load.get("cancel_to_error"),
    "unexpected_errors": unexpected,
    "error_messages": {w: s["messages"] for w, s in workers.items() if s["messages"]},
    "approvals": {
        "approved": approvals.get("approved", 0),
        # Held clients that went away: the requests they left withdrawn, and approve calls
        # that came too late (409, already withdrawn).
        "withdrawn": store_states.get("withdrawn", 0),
        "approve_conflicts": approvals.get("conflicts", 0),
        "approve_errors": approvals.get("errors", 0),
        "approve_to_done": approvals.get("approve_to_done"),
        "held_wait": approvals.get("held_wait"),
        "requests_per_held_write": approvals.get("requests_per_held_write"),
        "daemon_outcomes": outcomes,
        "daemon_decision_latency_mean_ms": round(lat_sum / lat_n * 1000, 2) if lat_n else None,
        "store_states": store_states,
    },
    "audit_verify": audit_verify,
    "audit": audit,
    "samples": len(samples),
}, indent=1))
PY
cat "$WORK/summary.json"
cp "$WORK/summary.json" "${SOAK_OUT:-$RESULTS/soak-$DATE.json}"
python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["passed"] else 1)' "$WORK/summary.json" \
  || { echo "soak: FAILED (see failures above)" >&2; exit 1; }
