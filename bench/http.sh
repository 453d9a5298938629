# Sourced by run.sh after lib.sh and setup_topology. HTTP: wrk against nginx (Debian's, on the
# db test host) directly, through airlock (intercepted by the kernel programs; full policy:
# deny, review and allow rules, the gateway's credential injected, every masking rule, audit
# log on) and through haproxy in http mode (the same credential set with http-request rules),
# in interleaved rounds: a small JSON answer, and a 1 MiB JSON answer (masked through airlock).
# Proxy CPU per request is read from /proc. Writes results/http-$DATE.json.
ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_HTTP_SECONDS:-8}
CONNS=${BENCH_HTTP_CONNS:-50}

mkdir -p "$WORK/www" "$WORK/nginx-tmp"
python3 - "$WORK/www/big.json" <<'PY'
import sys
rec = '{"id":%d,"name":"user %d","email":"user%d@example.com","card":"4111111111111111","note":"%s"}'
with open(sys.argv[1], "w") as f:
    f.write("["); n = 0; i = 0
    while n < 1 << 20:
        s = ("," if i else "") + rec % (i, i, i, "x" * 40); f.write(s); n += len(s); i += 1
    f.write("]")
PY
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx-tmp/b; proxy_temp_path $WORK/nginx-tmp/p;
  fastcgi_temp_path $WORK/nginx-tmp/f; uwsgi_temp_path $WORK/nginx-tmp/u; scgi_temp_path $WORK/nginx-tmp/s;
  types { application/json json; }
  server {
    listen 198.18.0.2:80;
    location = /small { default_type application/json; return 200 '{"id":1,"name":"alice","email":"alice@example.com"}'; }
    location = /big.json { root $WORK/www; }
  }
}
NGINX
in_db nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" > "$WORK/nginx.out" 2>&1 &
EXTRA_PIDS="${EXTRA_PIDS:-} $!"

cat > "$WORK/http-haproxy.cfg" <<CFG
global
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
listen api
  bind 198.18.0.1:8080
  http-request del-header authorization
  http-request set-header authorization "Bearer bench-token"
  server nginx 198.18.0.2:80
CFG
in_peer haproxy -f "$WORK/http-haproxy.cfg" -db > "$WORK/http-haproxy.out" 2>&1 &
HTTP_HAPROXY=$!; EXTRA_PIDS="${EXTRA_PIDS:-} $!"

{ daemon_section; cat <<YAML; } > "$WORK/http.yaml"
targets:
  - name: api
    protocol: http
    addresses: ["198.18.0.2/32"]
    ports: [80]
    listen_port: 15101
    http:
      credential: { kind: bearer, env: BENCH_HTTP_TOKEN }
rules:
  - name: no-deletes
    http: { methods: [DELETE] }
    action: deny
  - name: writes-need-review
    http: { methods: [POST, PUT, PATCH] }
    action: review
    review: { approvers: [ops] }
  - name: reads
    http: { methods: [GET, HEAD], paths: ["/*"] }
    action: allow
default: deny
masking:
  - name: emails
    json_paths: ["\$[*].email"]
    style: redact
  - name: pii
    detectors: [email, card, cloud_key]
    style: redact
YAML
start_daemon "$WORK/http.yaml" BENCH_HTTP_TOKEN=bench-token
for _ in $(seq 50); do in_peer curl -sf -o /dev/null http://198.18.0.2/small && [ -n "$(listener_pid 8080)" ] && break; sleep 0.1; done
# $! above is the subshell of the in_peer function, not haproxy: read its CPU from the listener.
HTTP_HAPROXY=$(listener_pid 8080)
# Sanity: through airlock the answer is masked.
in_protected curl -sS http://198.18.0.2/small | grep -q REDACTED || { echo "http: airlock did not mask /small" >&2; exit 1; }

# wrk_run PEER|PROTECTED URL CONNS PID: one wrk run; prints a JSON line with req/s, MB/s and
# the CPU microseconds per request of PID (the proxy; 0 for none).
wrk_run() {
  local how=$1 url=$2 conns=$3 pid=$4 cpu0 cpu1 out
  cpu0=$([ "$pid" = 0 ] && echo 0 || proc_cpu_us "$pid")
  if [ "$how" = protected ]; then
    out=$(in_protected wrk -t2 -c"$conns" -d"${SECS}s" --latency "$url")
  else
    out=$(in_peer wrk -t2 -c"$conns" -d"${SECS}s" --latency "$url")
  fi
  cpu1=$([ "$pid" = 0 ] && echo 0 || proc_cpu_us "$pid")
  python3 - "$cpu0" "$cpu1" <<PY
import re, sys, json
out = """$out"""
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
reqs = int(re.search(r"(\d+) requests in", out).group(1))
tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
mb = float(tr.group(1)) * {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}[tr.group(2)]
p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
p99ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
cpu = (int(sys.argv[2]) - int(sys.argv[1])) / max(reqs, 1)
print(json.dumps({"rps": round(rps), "mib_s": round(mb, 1), "p99_ms": round(p99ms, 2),
                  "cpu_us_per_req": round(cpu, 1), "non_2xx": int(errors.group(1)) if errors else 0}))
PY
}

echo "http: $ROUNDS interleaved rounds of wrk -t2 -c$CONNS -d${SECS}s (small) and -c8 (1 MiB)" >&2
load0=$(loadavg)
for f in s-direct s-airlock s-haproxy b-direct b-airlock b-haproxy; do : > "$WORK/$f"; done
for _ in $(seq "$ROUNDS"); do
  wrk_run peer http://198.18.0.2/small "$CONNS" 0 >> "$WORK/s-direct"
  wrk_run protected http://198.18.0.2/small "$CONNS" "$DAEMON" >> "$WORK/s-airlock"
  wrk_run peer http://198.18.0.1:8080/small "$CONNS" "$HTTP_HAPROXY" >> "$WORK/s-haproxy"
  wrk_run peer http://198.18.0.2/big.json 8 0 >> "$WORK/b-direct"
  wrk_run protected http://198.18.0.2/big.json 8 "$DAEMON" >> "$WORK/b-airlock"
  wrk_run peer http://198.18.0.1:8080/big.json 8 "$HTTP_HAPROXY" >> "$WORK/b-haproxy"
done
load1=$(loadavg)
stop_daemon
kill "$HTTP_HAPROXY" 2>/dev/null || true
median() { python3 -c 'import json,statistics,sys
rs=[json.loads(l) for l in sys.stdin if l.strip()]
print(json.dumps({k: statistics.median(r[k] for r in rs) for k in rs[0]} | {"rounds": [r["rps"] for r in rs]}))'; }
cat > "$RESULTS/http-$DATE.json" <<JSON
{"date": "$STAMP", "machine": "$MACHINE", "loadavg": {"start": "$load0", "end": "$load1"},
 "wrk": "-t2 -c$CONNS -d${SECS}s (small), -c8 (1 MiB)",
 "small": {"direct": $(median < "$WORK/s-direct"), "airlock": $(median < "$WORK/s-airlock"),
           "haproxy": $(median < "$WORK/s-haproxy")},
 "big_1mib": {"direct": $(median < "$WORK/b-direct"), "airlock_masked": $(median < "$WORK/b-airlock"),
              "haproxy": $(median < "$WORK/b-haproxy")}}
JSON
cat "$RESULTS/http-$DATE.json" >&2
