# Sourced by run.sh after lib.sh and setup_topology (issue 19). A real MariaDB 10.11 on
# 198.18.0.2:3306; sysbench oltp_read_only and oltp_read_write at 8 and 32 threads (prepared
# statements: the binary protocol), each path side by side for every workload: direct;
# airlock with the full policy (identity, ordered rules, masking rules, the session log on);
# airlock with the same policy masking the rows sysbench reads (column rule on sbtest's `c`
# and the email detector on every string: masked vs unmasked); haproxy in TCP mode; and the
# bare copy relay (netbench copy-relay), the floor for any proxy that reads each message in
# user space. sysbench reaches airlock transparently (protected cgroup -> eBPF redirect) and
# the peers directly. Writes results/mysql-$DATE.json.
SECS=${BENCH_SECONDS:-20}
MY_THREADS=${BENCH_MY_THREADS:-8 32}
MY_WORKLOADS=${BENCH_MY_WORKLOADS:-oltp_read_only oltp_read_write}
MY_PATHS=${BENCH_MY_PATHS:-direct airlock-full airlock-masked haproxy bare-relay}
MY_ADDR=198.18.0.2; MY_PORT=3306; MY_USER=gw; MY_PASSWORD=gw-secret
MYDIR=/tmp/airlock-$ID-mariadb
SB_ARGS="--mysql-db=sbtest --tables=${BENCH_MY_TABLES:-4} --table-size=${BENCH_MY_ROWS:-10000} --db-ps-mode=auto"

my_admin() { mariadb --no-defaults --socket="$MYDIR/sock" -uroot -N -B -e "$1"; }

start_mariadb() {
  mkdir -p "$MYDIR"; chown mysql:mysql "$MYDIR"
  mariadb-install-db --no-defaults --user=mysql --datadir="$MYDIR/data" --auth-root-authentication-method=normal --skip-test-db >/dev/null
  in_db mariadbd --no-defaults --user=mysql --datadir="$MYDIR/data" --socket="$MYDIR/sock" \
    --pid-file="$MYDIR/mariadb.pid" --bind-address=$MY_ADDR --port=$MY_PORT --skip-name-resolve \
    --skip-log-bin --max-connections=500 --innodb-buffer-pool-size=256M \
    --innodb-flush-log-at-trx-commit=0 --log-error="$MYDIR/error.log" > "$WORK/mariadb.out" 2>&1 &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  for _ in $(seq 150); do mariadb-admin --no-defaults --socket="$MYDIR/sock" -uroot ping >/dev/null 2>&1 && break; sleep 0.2; done
  my_admin "CREATE DATABASE sbtest; CREATE USER '$MY_USER'@'%' IDENTIFIED BY '$MY_PASSWORD'; GRANT ALL ON sbtest.* TO '$MY_USER'@'%';"
  echo "mysql: sysbench prepare $SB_ARGS" >&2
  in_peer sysbench oltp_read_write --mysql-host=$MY_ADDR --mysql-port=$MY_PORT --mysql-user=$MY_USER \
    --mysql-password=$MY_PASSWORD $SB_ARGS prepare > "$WORK/sysbench-prepare.log" 2>&1 \
    || { cat "$WORK/sysbench-prepare.log" >&2; exit 1; }
}

# haproxy (TCP mode, 6306) and the bare copy relay (6307) in front of MariaDB.
start_mysql_peers() {
  [ -n "${MY_HAPROXY:-}" ] && return
  cat > "$WORK/haproxy-mysql.cfg" <<CFG
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
listen mysql
  bind 198.18.0.1:6306
  server my $MY_ADDR:$MY_PORT
CFG
  in_peer haproxy -f "$WORK/haproxy-mysql.cfg" -db > "$WORK/haproxy-mysql.out" 2>&1 &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  in_peer "$NETBENCH" copy-relay 198.18.0.1:6307 $MY_ADDR:$MY_PORT > "$WORK/copy-relay-mysql.out" 2>&1 &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  for _ in $(seq 50); do
    MY_HAPROXY=$(listener_pid 6306); MY_BARE=$(listener_pid 6307)
    [ -n "$MY_HAPROXY" ] && [ -n "$MY_BARE" ] && return; sleep 0.1
  done
  echo "haproxy/bare relay for mysql did not come up" >&2; exit 1
}

# my-full.yaml: the full policy for callers of the protected cgroup (DDL, DCL, admin and
# unknown denied; reads, session, transactions and writes allowed with masking rules that do
# not touch sbtest); my-masked.yaml: the same with rules that mask what sysbench reads.
write_mysql_configs() {
  local masks
  for variant in full masked; do
    if [ $variant = full ]; then masks="customer-email"; else masks="sbtest-c, mail"; fi
    { daemon_section; cat <<YAML; } > "$WORK/my-$variant.yaml"
targets:
  - name: bench-mysql
    protocol: mysql
    addresses: ["$MY_ADDR/32"]
    ports: [$MY_PORT]
    listen_port: 13306
    mysql:
      user: $MY_USER
      password: "$MY_PASSWORD"
      database: sbtest
identities:
  - name: bench-clients
    workload:
      cgroups: ["/airlock-bench*/clients"]
    groups: [bench]
rules:
  - name: bench-deny-admin
    classes: [ddl, dcl, admin, unknown]
    action: deny
    reason: "the benchmark callers may not run DDL, DCL, admin or unparseable commands"
  - name: bench-read
    identities: [bench-clients]
    classes: [read, session, transaction]
    action: allow
    mask: [$masks]
  - name: bench-write
    identities: [bench-clients]
    classes: [read, session, transaction, write]
    action: allow
    mask: [$masks]
default: deny
masking:
  - name: customer-email
    columns: ["*.customers.email"]
    style: partial
  - name: sbtest-c
    columns: ["*.sbtest*.c"]
    style: partial
  - name: mail
    detectors: [email]
    style: redact
YAML
  done
}

# run_sysbench PATH TEST THREADS SECS: one run on one path; prints JSON.
run_sysbench() {
  local path=$1 test=$2 threads=$3 secs=$4 host=$MY_ADDR port=$MY_PORT runner=in_peer pid= user=$MY_USER
  case $path in
    direct) ;;
    airlock-full) runner=in_protected; user=agent; WAIT_PORT=13306 start_daemon "$WORK/my-full.yaml"; pid=$DAEMON ;;
    airlock-masked) runner=in_protected; user=agent; WAIT_PORT=13306 start_daemon "$WORK/my-masked.yaml"; pid=$DAEMON ;;
    haproxy) host=198.18.0.1; port=6306; pid=$MY_HAPROXY ;;
    bare-relay) host=198.18.0.1; port=6307; pid=$MY_BARE ;;
  esac
  local pass=$MY_PASSWORD
  [ "$user" = agent ] && pass=
  local load cpu0 pcpu0 rss name="my-$path-$test-$threads"
  load=$(loadavg); cpu0=$(tree_cpu_us); pcpu0=${pid:+$(proc_cpu_us "$pid")}
  $runner sysbench "$test" --mysql-host=$host --mysql-port=$port --mysql-user=$user \
    --mysql-password="$pass" $SB_ARGS --threads="$threads" --time="$secs" --report-interval=0 run \
    > "$WORK/$name.out" 2> "$WORK/$name.err" || { echo "sysbench failed: $name" >&2; tail -5 "$WORK/$name.out" "$WORK/$name.err" >&2; }
  local cpu=$(( $(tree_cpu_us) - cpu0 )) pcpu=0
  [ -n "$pid" ] && pcpu=$(( $(proc_cpu_us "$pid") - pcpu0 )) && rss=$(rss_kb "$pid")
  python3 - "$WORK/$name.out" "$load" "$cpu" "$pcpu" "${rss:-0}" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def num(pattern):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None
tx = num(r"transactions:\s+\d+\s+\(([\d.]+) per sec")
qps = num(r"queries:\s+\d+\s+\(([\d.]+) per sec")
n = num(r"transactions:\s+(\d+)")
print(json.dumps({
    "tps": tx, "qps": qps, "transactions": n,
    "latency_avg_ms": num(r"avg:\s+([\d.]+)"),
    "latency_p95_ms": num(r"95th percentile:\s+([\d.]+)"),
    "errors": num(r"ignored errors:\s+(\d+)"),
    "loadavg": sys.argv[2],
    "tree_cpu_us_per_tx": int(sys.argv[3]) / n if n else None,
    "proxy_cpu_us_per_tx": int(sys.argv[4]) / n if n else None,
    "proxy_rss_kb": int(sys.argv[5]),
}))
PY
}

[ -n "$(my_admin 'select 1' 2>/dev/null)" ] || start_mariadb
start_mysql_peers
write_mysql_configs

echo "mysql: $MY_WORKLOADS × threads $MY_THREADS × paths $MY_PATHS, ${SECS}s each" >&2
load0=$(loadavg)
{
  echo "{\"date\": \"$STAMP\", \"machine\": \"$MACHINE\", \"seconds\": $SECS, \"sysbench\": \"$SB_ARGS\","
  echo " \"loadavg_start\": \"$load0\", \"runs\": ["
  first=1
  for w in $MY_WORKLOADS; do for t in $MY_THREADS; do for p in $MY_PATHS; do
    # Masking is measured where rows are read.
    [ "$p" = airlock-masked ] && [ "$w" != oltp_read_only ] && continue
    echo "  $p $w --threads $t" >&2
    run_sysbench "$p" "$w" "$t" "$SECS" > "$WORK/run.json"; r=$(cat "$WORK/run.json")
    [ $first = 1 ] || echo ","; first=0
    echo "  {\"path\": \"$p\", \"workload\": \"$w\", \"threads\": $t, \"result\": $r}"
  done; done; done
  echo "], \"loadavg_end\": \"$(loadavg)\"}"
} > "$RESULTS/mysql-$DATE.json"
stop_daemon
