#!/usr/bin/env bash
# The Kubernetes API through airlock against direct (issue 22), side by side in one run, on the
# test API server of tests/kube.rs (tests/support/kube_api.py behind TLS as api.test on the db
# test host 198.18.0.2:443; exec really runs the command in a directory per pod):
#  - `kubectl get pods` (kubectl 1.37, namespace default, discovery cached) wall time, p50/p99
#    over KUBE_BENCH_GETS runs per arm and round;
#  - list throughput: the python `kubernetes` client listing KUBE_BENCH_PODS pods and
#    KUBE_BENCH_SECRETS secrets (namespace bench, ~1.8 KiB a pod) on KUBE_BENCH_LIST_THREADS
#    keep-alive threads for KUBE_BENCH_LIST_SECONDS: requests/s, MiB/s, per-request p50/p99,
#    and the daemon's CPU per request (through airlock the secrets' values are masked);
#  - exec stream throughput: KUBE_BENCH_MIB (default 1024) MiB of text (base64 of random
#    bytes) through `kubectl exec -i web -- cat` (stdin in, stdout out, compared byte for
#    byte), over WebSocket v5 (kubectl 1.37), SPDY/3.1 (kubectl 1.20) and SPDY/3.1 from
#    kubectl 1.37 with the server's WebSocket switched off (its fallback); through airlock
#    every exec stream is recorded whole (asciicast, input and output masked by the
#    detectors; audit.recording_max_bytes is raised to fit, since a stream is cut at the
#    limit): that is part of the cost measured. Each run's recording is removed after its
#    size is noted.
#    The daemon's and the API server's CPU seconds per run are recorded beside.
# Direct = the same client in the unprotected cgroup straight to the server (the cluster's CA,
# tls-server-name api.test, the gateway's token); airlock = the client in the protected cgroup,
# intercepted transparently (airlock's CA, its own token, which the gateway replaces). Policy:
# get/list/watch and exec of `cat` allowed (no review), the tests' masking rules (secret
# values, email detector), audit and recording on. Arms interleave; the arm that goes first
# alternates per round; per round the load average, any cargo/rustc running and the share of
# the machine's CPU used outside the benchmark's cgroups (interference) are recorded.
#
#   KUBE_BENCH_MIB=1024 KUBE_BENCH_ROUNDS=3 bench/kube.sh
#   (after `cargo build --release -p airlock`; AIRLOCK_BIN=path picks another build; the
#   clients are the ones `cargo xtask setup` installs: /opt/airlock-kube, /opt/airlock-kubectl-1.20)
# Other settings: KUBE_BENCH_GETS (20), KUBE_BENCH_PODS (500), KUBE_BENCH_SECRETS (200),
# KUBE_BENCH_LIST_SECONDS (10), KUBE_BENCH_LIST_THREADS (4), KUBE_BENCH_EXEC ("ws-1.37
# spdy-1.20 spdy-1.37"), KUBE_BENCH_ONLY ("get list exec"), KUBE_BENCH_EXEC_TIMEOUT (s, per exec).
# A failed or hung exec is recorded (with its logs kept under /tmp/airlock-bench<pid>-kube-failed)
# and the run goes on.
# Writes results/kube-$DATE.json (and prints a summary, kept as results/kube-$DATE.txt);
# KUBE_BENCH_NAME=other writes results/other.json and .txt instead.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
MIB=${KUBE_BENCH_MIB:-1024}; ROUNDS=${KUBE_BENCH_ROUNDS:-3}; GETS=${KUBE_BENCH_GETS:-20}
PODS=${KUBE_BENCH_PODS:-500}; SECRETS=${KUBE_BENCH_SECRETS:-200}
LIST_SECS=${KUBE_BENCH_LIST_SECONDS:-10}; LIST_THREADS=${KUBE_BENCH_LIST_THREADS:-4}
EXEC_MODES=${KUBE_BENCH_EXEC:-ws-1.37 spdy-1.20 spdy-1.37}
ONLY=${KUBE_BENCH_ONLY:-get list exec}
# An exec that has not finished by then (at 10 MiB/s, plus a minute) is stopped and recorded as
# hung (one SPDY run through airlock once stalled with ~57 KiB of stdin left unsent).
EXEC_TIMEOUT=${KUBE_BENCH_EXEC_TIMEOUT:-$((60 + MIB / 10))}
KUBECTL=/opt/airlock-kube/bin/kubectl
KUBECTL_120=/opt/airlock-kubectl-1.20/usr/bin/kubectl
KUBE_PYTHON=/opt/airlock-kube/bin/python3
CONTROL=8090; LISTEN=15300
GW_TOKEN=gw-kube-bench-token; CLIENT_TOKEN=client-own-kube-token
BIG_IN=/dev/shm/airlock-$ID-kube-in; BIG_OUT=/dev/shm/airlock-$ID-kube-out
trap 'rm -f "$BIG_IN" "$BIG_OUT"; lib_cleanup' EXIT
for f in "$AIRLOCK" "$KUBECTL" "$KUBECTL_120" "$KUBE_PYTHON"; do
  [ -x "$f" ] || { echo "kube bench: $f is missing (cargo build --release -p airlock; cargo xtask setup)" >&2; exit 1; }
done
busy() { pgrep -c -x 'rustc|cargo' || true; }
# CPU time the whole machine spent busy, microseconds (user, nice, system, irq, softirq, steal).
machine_cpu_us() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {print int(($2 + $3 + $4 + $7 + $8 + $9) * 1000000 / hz)}' /proc/stat; }
# round_mark PART ROUND: the load average, cargo/rustc running, and the share of the machine's
# CPU that processes outside this benchmark's cgroups used since the last mark (0..1 of all
# cores): the interference the load average alone does not separate from our own processes.
round_mark() {
  local now m t
  now=$(date +%s%N); m=$(machine_cpu_us); t=$(tree_cpu_us)
  local other
  other=$(python3 -c "print(round(max(0, ($m - $MARK_M) - ($t - $MARK_T)) / (($now - $MARK_NS) / 1000 * $(nproc)), 3))")
  echo "{\"part\": \"$1\", \"round\": $2, \"load\": \"$(loadavg)\", \"cargo_rustc\": $(busy), \"other_cpu_share\": $other}" >> "$WORK/rounds"
  MARK_NS=$now; MARK_M=$m; MARK_T=$t
}
echo "kube: $(nproc) cores; load $(loadavg); cargo/rustc running: $(busy); $MIB MiB exec, $ROUNDS rounds" >&2

setup_topology
# The cluster's CA and the API server's certificate for api.test (as tests/kube.rs).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj '/CN=cluster bench CA' -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign -keyout "$WORK/cluster-ca.key" -out "$WORK/cluster-ca.pem" 2>/dev/null
printf 'subjectAltName=DNS:api.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$WORK/ext.cnf"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=api.test \
  -keyout "$WORK/api.key" -out "$WORK/api.csr" 2>/dev/null
openssl x509 -req -days 2 -in "$WORK/api.csr" -CA "$WORK/cluster-ca.pem" -CAkey "$WORK/cluster-ca.key" \
  -CAcreateserial -out "$WORK/api.pem" -extfile "$WORK/ext.cnf" 2>/dev/null

mkdir -p "$WORK/pods"
in_db env KUBE_POD_ROOT="$WORK/pods" /usr/bin/python3 "$ROOT/bench/kube_load.py" serve \
  198.18.0.2 "$WORK/api.pem" "$WORK/api.key" $CONTROL "$PODS" "$SECRETS" > "$WORK/api.log" 2>&1 &
EXTRA_PIDS="${EXTRA_PIDS:-} $!"
for _ in $(seq 100); do grep -q ready "$WORK/api.log" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$WORK/api.log" || { echo "the test API server did not come up" >&2; cat "$WORK/api.log" >&2; exit 1; }
# $! is the subshell of in_db: the server is the process listening on 443 in the db namespace.
API_PID=$(nsenter --net=/run/netns/$DB ss -ltnpH 'sport = :443' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
ws() { nsenter --net=/run/netns/$DB curl -sS -X POST -d "{\"websocket\": $1}" http://127.0.0.1:$CONTROL/config > /dev/null; }
seen() { nsenter --net=/run/netns/$DB curl -sS http://127.0.0.1:$CONTROL/seen; }

echo "$GW_TOKEN" > "$WORK/gateway.token"
# A recording large enough for a whole exec (stdin and stdout, with asciicast's overhead).
DAEMON_EXTRA="  audit: { recording_max_bytes: $(( (MIB * 5 / 2 + 64) * 1048576 )) }"
{ daemon_section; cat <<YAML; } > "$WORK/kube.yaml"
targets:
  - name: cluster
    protocol: kube
    addresses: ["198.18.0.2/32"]
    ports: [443]
    listen_port: $LISTEN
    http:
      tls:
        default_name: "198.18.0.2"
        ca_file: $WORK/cluster-ca.pem
        server_name: api.test
      credential: { kind: bearer, file: $WORK/gateway.token }
rules:
  - name: cat-in-pods
    targets: [cluster]
    kube: { verbs: [exec], subresources: [exec], exec: { programs: [cat] } }
    action: allow
  - name: reads
    targets: [cluster]
    kube: { verbs: [get, list, watch] }
    action: allow
default: deny
masking:
  - name: secret-values
    json_paths: ["\$.data.*", "\$.stringData.*", "\$.items[*].data.*", "\$.items[*].stringData.*", "\$.object.data.*", "\$.object.stringData.*"]
    style: redact
  - name: pii
    detectors: [email]
    style: redact
YAML
WAIT_PORT=$LISTEN start_daemon "$WORK/kube.yaml"

# kubeconfig ARM CA TOKEN [TLS_SERVER_NAME]
kubeconfig() {
  cat > "$WORK/kc-$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: https://198.18.0.2
    certificate-authority: $2
${4:+    tls-server-name: $4}
users:
- name: agent
  user:
    token: $3
contexts:
- name: bench
  context: {cluster: bench, user: agent, namespace: default}
current-context: bench
KC
  mkdir -p "$WORK/home-$1"
}
kubeconfig direct "$WORK/cluster-ca.pem" "$GW_TOKEN" api.test
kubeconfig airlock "$WORK/state/http-ca.pem" "$CLIENT_TOKEN"
runner() { [ "$1" = airlock ] && echo in_protected || echo in_peer; }
# kc ARM CMD...: CMD with the arm's kubeconfig and HOME, in the arm's cgroup.
kc() { local arm=$1; shift; $(runner "$arm") env HOME="$WORK/home-$arm" KUBECONFIG="$WORK/kc-$arm" "$@"; }

# Sanity (and warm-up: each arm's discovery cache): both arms list pods; through airlock the
# secret's values are masked and only the gateway's token reaches the server.
for arm in direct airlock; do
  out=$(kc $arm "$KUBECTL" --request-timeout=0 get pods 2>&1 || true)
  grep -q '^web ' <<< "$out" || { echo "kube: $arm get pods failed: $out" >&2; tail -20 "$WORK/daemon.log" >&2; exit 1; }
done
out=$(kc airlock "$KUBECTL" --request-timeout=0 get secret db -o yaml 2>&1 || true)
grep -q REDACTED <<< "$out" && ! grep -q aHVudGVy <<< "$out" \
  || { echo "kube: airlock did not mask the secret: $out" >&2; tail -20 "$WORK/daemon.log" >&2; exit 1; }
out=$(seen)
if grep -q "$CLIENT_TOKEN" <<< "$out"; then echo "kube: the client's own token reached the server" >&2; exit 1; fi
[ "$(kc airlock "$KUBECTL" --request-timeout=0 exec web -- cat /etc/hostname)" = web ] \
  || { echo "kube: exec through airlock failed" >&2; tail -20 "$WORK/daemon.log" >&2; exit 1; }

LOAD0=$(loadavg); BUSY0=$(busy)
MARK_NS=$(date +%s%N); MARK_M=$(machine_cpu_us); MARK_T=$(tree_cpu_us)
: > "$WORK/rounds"
order_of() { [ $(($1 % 2)) -eq 1 ] && echo "direct airlock" || echo "airlock direct"; }

# ---- kubectl get pods latency
if [[ " $ONLY " == *" get "* ]]; then
  echo "kube: get pods, $GETS per arm x $ROUNDS rounds" >&2
  for r in $(seq "$ROUNDS"); do
    for arm in $(order_of "$r"); do
      kc $arm /usr/bin/python3 "$ROOT/bench/kube_load.py" repeat "$GETS" -- \
        "$KUBECTL" --request-timeout=0 get pods >> "$WORK/get-$arm"
    done
    round_mark get "$r"
  done
fi

# ---- list throughput (python client)
if [[ " $ONLY " == *" list "* ]]; then
  echo "kube: list pods/secrets, ${LIST_SECS}s x $LIST_THREADS threads per arm x $ROUNDS rounds" >&2
  for r in $(seq "$ROUNDS"); do
    for res in pods secrets; do
      for arm in $(order_of "$r"); do
        expect=; [ $arm = airlock ] && [ $res = secrets ] && expect='[REDACTED]'
        c0=$(proc_cpu_us "$DAEMON"); s0=$(proc_cpu_us "$API_PID")
        line=$(kc $arm "$KUBE_PYTHON" "$ROOT/bench/kube_load.py" list "$WORK/kc-$arm" $res bench \
          "$LIST_SECS" "$LIST_THREADS" ${expect:+"$expect"})
        c1=$(proc_cpu_us "$DAEMON"); s1=$(proc_cpu_us "$API_PID")
        echo "$line" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); c=int(sys.argv[1]); s=int(sys.argv[2])
d["daemon_cpu_us_per_req"]=round(c/max(d["requests"],1)); d["server_cpu_us_per_req"]=round(s/max(d["requests"],1)); d["load"]=sys.argv[3]
print(json.dumps(d))' $((c1 - c0)) $((s1 - s0)) "$(loadavg)" >> "$WORK/list-$res-$arm"
      done
    done
    round_mark list "$r"
  done
fi

# ---- exec stream throughput
REC_FILES=0; REC_MAX=0
if [[ " $ONLY " == *" exec "* ]]; then
  echo "kube: exec -i web -- cat of $MIB MiB, modes $EXEC_MODES, $ROUNDS rounds" >&2
  # (in the peers cgroup, as the cmp below: their CPU is ours, not the machine's other load)
  in_peer sh -c "head -c $((MIB * 1048576)) /dev/urandom | base64 -w 76 | head -c $((MIB * 1048576)) > '$BIG_IN'"
  for r in $(seq "$ROUNDS"); do
    for mode in $EXEC_MODES; do
      case $mode in
        ws-1.37) bin=$KUBECTL; ws true; want=ws-v5 ;;
        spdy-1.37) bin=$KUBECTL; ws false; want=spdy ;;
        spdy-1.20) bin=$KUBECTL_120; ws true; want=spdy ;;
        *) echo "unknown exec mode $mode" >&2; exit 1 ;;
      esac
      for arm in $(order_of "$r"); do
        rm -f "$BIG_OUT"
        c0=$(proc_cpu_us "$DAEMON"); s0=$(proc_cpu_us "$API_PID"); load=$(loadavg)
        t0=$(date +%s%N); rc=0
        $(runner $arm) sh -c "exec timeout $EXEC_TIMEOUT env HOME='$WORK/home-$arm' KUBECONFIG='$WORK/kc-$arm' '$bin' --request-timeout=0 exec -i web -- cat < '$BIG_IN' > '$BIG_OUT' 2> '$WORK/exec.err'" || rc=$?
        t1=$(date +%s%N)
        c1=$(proc_cpu_us "$DAEMON"); s1=$(proc_cpu_us "$API_PID")
        got=$(seen | python3 -c 'import json,sys; print([r for r in json.load(sys.stdin)["requests"] if r.startswith("EXEC-PROTO ")][-1].split()[1])')
        [ "$got" = "$want" ] || { echo "kube: exec $mode $arm used $got, not $want" >&2; exit 1; }
        error=
        if [ $rc -eq 124 ]; then error="hung: stopped after ${EXEC_TIMEOUT}s"
        elif [ $rc -ne 0 ]; then error="kubectl exited $rc: $(tail -1 "$WORK/exec.err")"
        elif ! in_peer cmp -s "$BIG_IN" "$BIG_OUT"; then error="output differs from input"; fi
        # The run's recording: its size noted, then removed (a whole exec is gigabytes).
        for f in $(find "$WORK/state/audit/recordings" -type f 2>/dev/null); do
          sz=$(stat -c %s "$f"); REC_FILES=$((REC_FILES + 1))
          [ "$sz" -gt "$REC_MAX" ] && REC_MAX=$sz
          rm -f "$f"
        done
        if [ -n "$error" ]; then
          # Recorded, not fatal: the other runs still measure; the logs are kept for a look.
          keep=/tmp/airlock-$ID-kube-failed/$mode-$arm-$r; mkdir -p "$keep"
          cp "$WORK/daemon.log" "$WORK/api.log" "$WORK/exec.err" "$keep/"
          echo "kube: exec $mode $arm round $r FAILED: $error ($(stat -c %s "$BIG_OUT") bytes out; logs in $keep)" >&2
          cat "$WORK/exec.err" >&2
        fi
        python3 -c 'import json,sys; mib,ns,c,s=int(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4])
d={"secs": round(ns/1e9,2), "mib_s": round(mib/(ns/1e9),1), "daemon_cpu_s": round(c/1e6,2), "server_cpu_s": round(s/1e6,2), "proto": sys.argv[5], "load": sys.argv[6]}
if sys.argv[7]: d.update(failed=sys.argv[7], bytes_out=int(sys.argv[8]), mib_s=None)
print(json.dumps(d))' \
          "$MIB" $((t1 - t0)) $((c1 - c0)) $((s1 - s0)) "$got" "$load" "$error" "$(stat -c %s "$BIG_OUT" 2>/dev/null || echo 0)" >> "$WORK/exec-$mode-$arm"
        tail -1 "$WORK/exec-$mode-$arm" | sed "s/^/kube: exec $mode $arm round $r: /" >&2
      done
    done
    round_mark exec "$r"
  done
  ws true
  rm -f "$BIG_OUT"
fi
LOAD1=$(loadavg)
REC_DIR=$WORK/state/audit/recordings
REC_FILES=$((REC_FILES + $( [ -d "$REC_DIR" ] && find "$REC_DIR" -type f | wc -l || echo 0)))
DAEMON_RSS=$(rss_kb "$DAEMON")
stop_daemon

OUTNAME=${KUBE_BENCH_NAME:-kube-$DATE}
python3 - "$WORK" "$RESULTS/$OUTNAME.json" <<PY | tee "$RESULTS/$OUTNAME.txt"
import json, os, statistics, sys
work, out = sys.argv[1], sys.argv[2]
med = statistics.median
def lines(name):
    p = os.path.join(work, name)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
def pct(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]
res = {"date": "$STAMP", "machine": "$MACHINE", "airlock": "$AIRLOCK", "airlock_mtime": "$(date -u -r "$AIRLOCK" +%Y-%m-%dT%H:%M:%SZ)",
       "tree": "HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); sources newer than the binary: $(cd "$ROOT" && find userspace ebpf -name '*.rs' -newer "$AIRLOCK" | wc -l)",
       "loadavg": {"start": "$LOAD0", "end": "$LOAD1"}, "cargo_rustc_at_start": $BUSY0,
       "rounds": lines("rounds"),
       "settings": {"rounds": $ROUNDS, "gets_per_arm_round": $GETS, "pods": $PODS, "secrets": $SECRETS,
                    "list_seconds": $LIST_SECS, "list_threads": $LIST_THREADS, "exec_mib": $MIB,
                    "exec_modes": "$EXEC_MODES".split()},
       "recordings": {"files": int("$REC_FILES" or 0), "largest_bytes": int("$REC_MAX" or 0)},
       "daemon_rss_kb_end": int("$DAEMON_RSS" or 0)}
print(f"kube bench {res['date']}: {res['machine']}; load start {res['loadavg']['start']}, end {res['loadavg']['end']}; cargo/rustc at start {res['cargo_rustc_at_start']}")
for r in res["rounds"]:
    print(f"  {r['part']} round {r['round']}: load {r['load']}, cargo/rustc {r['cargo_rustc']}, CPU used outside the benchmark {round(100 * r['other_cpu_share'])}% of the machine")
g = {arm: [t for l in lines(f"get-{arm}") for t in l] for arm in ("direct", "airlock")}
if g["direct"]:
    d, a = g["direct"], g["airlock"]
    res["get_pods"] = {arm: {"n": len(x), "p50_ms": round(med(x), 1), "p99_ms": round(pct(x, 0.99), 1),
                             "per_round_p50": [round(med(l), 1) for l in lines(f"get-{arm}")]}
                       for arm, x in g.items()}
    gp = res["get_pods"]
    gp["p50_ratio"] = round(gp["airlock"]["p50_ms"] / gp["direct"]["p50_ms"], 3)
    gp["p99_ratio"] = round(gp["airlock"]["p99_ms"] / gp["direct"]["p99_ms"], 3)
    gp["p50_added_ms"] = round(gp["airlock"]["p50_ms"] - gp["direct"]["p50_ms"], 1)
    print(f"kubectl get pods ({gp['direct']['n']} runs per arm): direct p50 {gp['direct']['p50_ms']} ms p99 {gp['direct']['p99_ms']} ms; "
          f"airlock p50 {gp['airlock']['p50_ms']} ms p99 {gp['airlock']['p99_ms']} ms; ratio p50 {gp['p50_ratio']} p99 {gp['p99_ratio']} (+{gp['p50_added_ms']} ms at p50)")
for resname in ("pods", "secrets"):
    d, a = lines(f"list-{resname}-direct"), lines(f"list-{resname}-airlock")
    if not d:
        continue
    row = {"direct": d, "airlock": a}
    for k in ("rps", "mib_s", "p50_ms", "p99_ms"):
        row[k + "_ratio_per_round"] = [round(y[k] / x[k], 3) for x, y in zip(d, a)]
        row[k + "_ratio_median"] = round(med(row[k + "_ratio_per_round"]), 3)
    row["median"] = {arm: {k: round(med(x[k] for x in xs), 2) for k in ("rps", "mib_s", "p50_ms", "p99_ms", "body_kib", "daemon_cpu_us_per_req", "server_cpu_us_per_req")}
                     for arm, xs in (("direct", d), ("airlock", a))}
    res[f"list_{resname}"] = row
    m = row["median"]
    print(f"list {resname} ({d[0]['items']} items, body direct {m['direct']['body_kib']} KiB, airlock {m['airlock']['body_kib']} KiB): "
          f"direct {m['direct']['rps']} req/s {m['direct']['mib_s']} MiB/s p50 {m['direct']['p50_ms']} ms; "
          f"airlock {m['airlock']['rps']} req/s {m['airlock']['mib_s']} MiB/s p50 {m['airlock']['p50_ms']} ms, daemon {m['airlock']['daemon_cpu_us_per_req']} us CPU/req; "
          f"ratio req/s {row['rps_ratio_per_round']} median {row['rps_ratio_median']}")
for mode in "$EXEC_MODES".split():
    d, a = lines(f"exec-{mode}-direct"), lines(f"exec-{mode}-airlock")
    if not d:
        continue
    ok = lambda xs: [x for x in xs if not x.get("failed")] or [{"mib_s": 0, "daemon_cpu_s": 0, "server_cpu_s": 0}]
    row = {"direct": d, "airlock": a,
           "failed": {"direct": sum(1 for x in d if x.get("failed")), "airlock": sum(1 for x in a if x.get("failed"))},
           "ratio_per_round": [round(y["mib_s"] / x["mib_s"], 3) for x, y in zip(d, a) if x["mib_s"] and y["mib_s"]]}
    row["ratio_median"] = round(med(row["ratio_per_round"]), 3) if row["ratio_per_round"] else None
    row["median_mib_s"] = {"direct": med(x["mib_s"] for x in ok(d)), "airlock": med(x["mib_s"] for x in ok(a))}
    row["median_daemon_cpu_s"] = round(med(x["daemon_cpu_s"] for x in ok(a)), 2)
    row["median_server_cpu_s"] = {"direct": round(med(x["server_cpu_s"] for x in ok(d)), 2), "airlock": round(med(x["server_cpu_s"] for x in ok(a)), 2)}
    res[f"exec_{mode}"] = row
    print(f"exec cat $MIB MiB {mode} ({a[0]['proto']}): direct {[x['mib_s'] for x in d]} MiB/s, airlock {[x['mib_s'] for x in a]} MiB/s; "
          f"ratio {row['ratio_per_round']} median {row['ratio_median']}; daemon CPU {row['median_daemon_cpu_s']} s, "
          f"server CPU direct {row['median_server_cpu_s']['direct']} s airlock {row['median_server_cpu_s']['airlock']} s; failed runs {row['failed']}")
    for x in d + a:
        if x.get("failed"):
            print(f"  FAILED {mode}: {x['failed']} ({x['bytes_out']} bytes out after {x['secs']} s)")
print(f"recordings: {res['recordings']['files']} files, largest {res['recordings']['largest_bytes']} bytes; daemon RSS at end {res['daemon_rss_kb_end']} KiB")
json.dump(res, open(out, "w"), indent=1)
PY
