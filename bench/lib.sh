# Shared by bench/run.sh and bench/soak.sh (sourced, not run): a test-host topology in two
# network namespaces (node 198.18.0.1, db 198.18.0.2), a protected cgroup whose processes are
# redirected into the airlock daemon, a sibling cgroup for everything that must not be
# intercepted (PostgreSQL, peers, direct clients), the real daemon, a real PostgreSQL, and
# helpers to measure them. Everything started here is stopped by PID (or by killing our own
# cgroups) on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AIRLOCK=${AIRLOCK_BIN:-$ROOT/target/release/airlock}
NETBENCH=$ROOT/target/release/netbench
RESULTS=$ROOT/bench/results
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ID=bench$$
NODE=al${ID}node; DB=al${ID}db
CGROOT=$(grep ' - cgroup2 ' /proc/self/mountinfo | awk '{print $5; exit}')
CG=$CGROOT/airlock-$ID            # protected (the daemon attaches here); daemon in $CG/daemon
PEERS=$CGROOT/airlock-$ID-peers   # not protected: PostgreSQL, pgbouncer, haproxy, direct clients
BPFFS=/sys/fs/bpf/airlock-$ID
WORK=$ROOT/bench/work/$ID
PGDIR=/tmp/airlock-$ID-pg         # readable by the postgres user
DATE=$(date -u +%Y-%m-%d)
STAMP=$(date -u +%Y-%m-%dT%H:%M:%SZ)
MACHINE="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r)"
PG_USER=gw; PG_PASSWORD=gw-secret; PG_DB=app
PG_ADDR=198.18.0.2; PG_PORT=5432
mkdir -p "$WORK" "$RESULTS"

# Ten thousand idle connections need ~2 fds each in the daemon; children inherit this.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true

lib_cleanup() {
  set +e
  [ -n "${DAEMON:-}" ] && kill -9 "$DAEMON" 2>/dev/null
  for p in ${EXTRA_PIDS:-}; do kill -9 "$p" 2>/dev/null; done
  "$AIRLOCK" uninstall --bpffs "$BPFFS" >/dev/null 2>&1
  for cg in "$CG" "$PEERS"; do
    [ -d "$cg" ] && { echo 1 > "$cg/cgroup.kill"; sleep 0.3; find "$cg" -depth -type d -exec rmdir {} \; ; }
  done
  for ns in $NODE $DB; do ip netns pids $ns 2>/dev/null | xargs -r kill -9; ip netns del $ns 2>/dev/null; done
  rm -rf "$WORK" "$PGDIR" "/tmp/airlock-$ID-mariadb"
}
trap lib_cleanup EXIT

in_node() { nsenter --net=/run/netns/$NODE "$@"; }
# A command as a process of the protected cgroup, in the node namespace (intercepted).
in_protected() { sh -c "echo \$\$ > $CG/clients/cgroup.procs && exec nsenter --net=/run/netns/$NODE \"\$@\"" sh "$@"; }
# A command in the unprotected peers cgroup, in the node namespace (not intercepted).
in_peer() { sh -c "echo \$\$ > $PEERS/cgroup.procs && exec nsenter --net=/run/netns/$NODE \"\$@\"" sh "$@"; }
# A command in the peers cgroup, in the db namespace (the test host).
in_db() { sh -c "echo \$\$ > $PEERS/cgroup.procs && exec nsenter --net=/run/netns/$DB \"\$@\"" sh "$@"; }

setup_topology() {
  ip netns add $NODE; ip netns add $DB
  ip -n $NODE link set lo up; ip -n $DB link set lo up
  ip link add b${ID: -4}0 netns $NODE type veth peer name b${ID: -4}1 netns $DB
  ip -n $NODE addr add 198.18.0.1/24 dev b${ID: -4}0; ip -n $NODE link set b${ID: -4}0 up
  ip -n $DB addr add 198.18.0.2/24 dev b${ID: -4}1; ip -n $DB link set b${ID: -4}1 up
  mkdir -p "$CG/daemon" "$CG/clients" "$PEERS"
}

# start_daemon CONFIG [ENV=VALUE...]: (re)starts the daemon in its cgroup and waits until
# it listens on $WAIT_PORT (default 15101).
start_daemon() {
  local config=$1; shift
  stop_daemon
  sh -c "echo \$\$ > $CG/daemon/cgroup.procs && exec env AIRLOCK_LOG=${AIRLOCK_LOG:-warn} $* nsenter --net=/run/netns/$NODE $AIRLOCK run --config $config" >> "$WORK/daemon.log" 2>&1 &
  DAEMON=$!
  local port=${WAIT_PORT:-15101}
  for _ in $(seq 150); do in_node sh -c "ss -ltnp | grep ':$port ' | grep -q pid=$DAEMON" && return; sleep 0.1; done
  echo "daemon did not come up" >&2; tail -50 "$WORK/daemon.log" >&2; exit 1
}
stop_daemon() {
  if [ -n "${DAEMON:-}" ]; then kill -9 "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; DAEMON=; fi
}

# The daemon's `daemon:` section; targets are appended by the caller. DAEMON_EXTRA: more
# lines of it (indented two spaces), e.g. the soak's metrics and approvals API addresses.
daemon_section() {
  cat <<YAML
daemon:
  cgroup: $CG
  bpffs: $BPFFS
  state_dir: $WORK/state
  accept_unintercepted: true
YAML
  [ -z "${DAEMON_EXTRA:-}" ] || printf '%s\n' "$DAEMON_EXTRA"
}

# A real PostgreSQL 15 in the db namespace on 198.18.0.2:5432 (initdb into $PGDIR), with the
# gateway role and a pgbench database; MAX_CONNECTIONS (default 1100) allows the scale runs.
start_postgres() {
  mkdir -p "$PGDIR"; chown postgres:postgres "$PGDIR"
  setpriv --reuid=postgres --regid=postgres --init-groups "$PG_BIN/initdb" -D "$PGDIR/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
  cat >> "$PGDIR/data/postgresql.conf" <<CONF
listen_addresses = '$PG_ADDR'
port = $PG_PORT
unix_socket_directories = '$PGDIR'
max_connections = ${MAX_CONNECTIONS:-1100}
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
  cat > "$PGDIR/data/pg_hba.conf" <<HBA
local all postgres trust
host all postgres 198.18.0.0/24 trust
host all all 198.18.0.0/24 scram-sha-256
HBA
  in_db setpriv --reuid=postgres --regid=postgres --init-groups "$PG_BIN/postgres" -D "$PGDIR/data" > "$WORK/postgres.log" 2>&1 &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  for _ in $(seq 100); do "$PG_BIN/pg_isready" -q -h "$PGDIR" -p $PG_PORT -U postgres && break; sleep 0.2; done
  pg_admin "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'"
  pg_admin "CREATE DATABASE $PG_DB OWNER $PG_USER"
  echo "postgres: pgbench -i -s ${BENCH_SCALE:-10}" >&2
  PGPASSWORD=$PG_PASSWORD in_peer pgbench -h $PG_ADDR -p $PG_PORT -U $PG_USER -i -q -s "${BENCH_SCALE:-10}" $PG_DB > "$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log" >&2; exit 1; }
}
# pg_admin SQL [DB]: as the superuser over the unix socket.
pg_admin() { psql -X -q -At -h "$PGDIR" -p $PG_PORT -U postgres -d "${2:-postgres}" -c "$1"; }

# The tcp targets' entries under `targets:`: the netbench service through the eBPF redirect
# (`bench`, listener 15100) and through iptables REDIRECT (`bench-iptables`, listener 15101,
# which dials the same service).
tcp_targets() {
  cat <<YAML
  - name: bench
    protocol: tcp
    addresses: ["198.18.0.2/32"]
    ports: [7000]
    listen_port: 15100
  - name: bench-iptables
    protocol: tcp
    addresses: ["198.18.0.9/32"]
    ports: [9]
    listen_port: 15101
    upstream: "198.18.0.2:7000"
YAML
}

# The `postgres:` section a PostgreSQL target uses: the gateway holds the credentials.
pg_credentials() {
  cat <<YAML
    postgres:
      user: $PG_USER
      password: "$PG_PASSWORD"
      database: $PG_DB
YAML
}

# The pid of the process listening on PORT in the node namespace.
listener_pid() { in_node ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true; }
# Resident set of a process, KiB.
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
# Open file descriptors of a process.
fd_count() { ls "/proc/$1/fd" | wc -l; }
# CPU time of a process (user+system), microseconds.
proc_cpu_us() { awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); print int(($12 + $13) * 1000000 / hz)}' "/proc/$1/stat"; }
# CPU time of everything this benchmark started (both cgroup trees), microseconds.
tree_cpu_us() { cat "$CG/cpu.stat" "$PEERS/cpu.stat" | awk '$1 == "usage_usec" {s += $2} END {print s}'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# The netbench service (tcp targets) on 198.18.0.2:7000, once.
start_netbench_server() {
  [ -n "${NETBENCH_SERVER:-}" ] && return
  in_db "$NETBENCH" serve 7000 > "$WORK/server.out" 2>&1 &
  NETBENCH_SERVER=$!; EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  for _ in $(seq 50); do grep -q ready "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done
}

# pgbouncer (session mode, port 6432), haproxy (TCP mode, port 6543) and the bare copy relay
# (netbench copy-relay, port 6544: the floor) in the node namespace, dialled directly by
# unprotected clients; each logs in / connects to the real PostgreSQL.
start_peers() {
  [ -n "${PGBOUNCER:-}" ] && return
  mkdir -p "$PGDIR/peers"
  cat > "$PGDIR/peers/pgbouncer.ini" <<INI
[databases]
$PG_DB = host=$PG_ADDR port=$PG_PORT dbname=$PG_DB user=$PG_USER password=$PG_PASSWORD
[pgbouncer]
listen_addr = 198.18.0.1
listen_port = 6432
unix_socket_dir =
auth_type = trust
auth_file = $PGDIR/peers/users.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 1050
max_db_connections = 1050
server_idle_timeout = 5
logfile = $PGDIR/peers/pgbouncer.log
INI
  echo "\"$PG_USER\" \"$PG_PASSWORD\"" > "$PGDIR/peers/users.txt"
  cat > "$PGDIR/peers/haproxy.cfg" <<CFG
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
listen pg
  bind 198.18.0.1:6543
  server pg $PG_ADDR:$PG_PORT
CFG
  chown -R postgres:postgres "$PGDIR/peers"
  in_peer setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer "$PGDIR/peers/pgbouncer.ini" > "$WORK/pgbouncer.out" 2>&1 &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  in_peer haproxy -f "$PGDIR/peers/haproxy.cfg" -db > "$WORK/haproxy.out" 2>&1 &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  in_peer "$NETBENCH" copy-relay 198.18.0.1:6544 $PG_ADDR:$PG_PORT > "$WORK/copy-relay.out" 2>&1 &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  for _ in $(seq 50); do
    PGBOUNCER=$(listener_pid 6432); HAPROXY=$(listener_pid 6543); BARE_RELAY=$(listener_pid 6544)
    [ -n "$PGBOUNCER" ] && [ -n "$HAPROXY" ] && [ -n "$BARE_RELAY" ] && return; sleep 0.1
  done
  echo "pgbouncer/haproxy/bare relay did not come up" >&2; cat "$WORK/pgbouncer.out" "$WORK/haproxy.out" "$WORK/copy-relay.out" >&2; exit 1
}

# allow.yaml: an allow-all policy; full.yaml: the full policy (workload identity, ordered
# rules over classes, masking rules) that allows the benchmark's reads and writes for callers
# in the protected cgroup. Both have the PostgreSQL target and the tcp targets.
# The soak adds to full.yaml: RULES_EXTRA (rules, indented two spaces, matched after the
# deny of DDL/DCL/admin and before the allows), MASKING_EXTRA (masking rules) and MASKS (the
# masking rules the allow rules apply; default customer-email and filler).
write_airlock_configs() {
  local targets
  targets=$(cat <<YAML
targets:
  - name: bench-db
    protocol: postgres
    addresses: ["$PG_ADDR/32"]
    ports: [$PG_PORT]
    listen_port: 15432
$(pg_credentials)
$(tcp_targets)
YAML
)
  { daemon_section; echo "$targets"; echo "rules: []"; echo "default: allow"; } > "$WORK/allow.yaml"
  { daemon_section; echo "$targets"; cat <<YAML; } > "$WORK/full.yaml"
identities:
  - name: bench-clients
    workload:
      cgroups: ["/airlock-bench*/clients"]
    groups: [bench]
rules:
  - name: bench-deny-admin
    targets: [bench-db]
    classes: [ddl, dcl, admin, unknown]
    action: deny
    reason: "the benchmark callers may not run DDL, DCL, admin or unparseable commands"
${RULES_EXTRA:-}
  - name: bench-read
    targets: [bench-db]
    subjects: ["unix:root"]
    identities: [bench-clients]
    classes: [read, session, transaction]
    action: allow
    mask: [${MASKS:-customer-email, filler}]
  - name: bench-write
    targets: [bench-db]
    subjects: ["unix:root"]
    identities: [bench-clients]
    classes: [read, session, transaction, write]
    action: allow
    mask: [${MASKS:-customer-email, filler}]
  - name: bench-tcp
    targets: [bench, bench-iptables]
    action: allow
default: deny
masking:
  - name: customer-email
    columns: ["*.customers.email"]
    style: partial
  - name: filler
    columns: ["*.pgbench_history.filler"]
    style: partial
${MASKING_EXTRA:-}
YAML
  # The same policy with the session log off: what classification and policy cost without
  # the audit writer's per-command work.
  sed "s|^  accept_unintercepted: true|&\n  audit: { enabled: false }|" "$WORK/full.yaml" > "$WORK/full-noaudit.yaml"
}

# The fraction of transactions pgbench logs one by one (the latency percentiles).
SAMPLING=${BENCH_SAMPLING:-0.2}
# run_pgbench PATH WORKLOAD CLIENTS SECS OUTNAME: one pgbench run on one path; prints JSON.
# It (re)starts the daemon, so call it in this shell (redirect its output), not in $(...).
run_pgbench() {
  local path=$1 workload=$2 clients=$3 secs=$4 name=$5 host=$PG_ADDR port=$PG_PORT runner=in_peer pid=
  local args=(-n -c "$clients" -j 2 -T "$secs" -l --sampling-rate "$SAMPLING" --log-prefix "$WORK/log/$name")
  case $workload in
    select-simple) args+=(-S -M simple) ;;
    select-prepared) args+=(-S -M prepared) ;;
    tpcb) args+=(-M simple) ;;
  esac
  case $path in
    direct) ;;
    airlock-allow) runner=in_protected; start_daemon "$WORK/allow.yaml"; pid=$DAEMON ;;
    airlock-full) runner=in_protected; start_daemon "$WORK/full.yaml"; pid=$DAEMON ;;
    airlock-full-noaudit) runner=in_protected; start_daemon "$WORK/full-noaudit.yaml"; pid=$DAEMON ;;
    # A daemon the caller started (bench/pg_ab.sh runs two builds in turn).
    airlock-custom) runner=in_protected; pid=$DAEMON ;;
    pgbouncer) host=198.18.0.1; port=6432; pid=$PGBOUNCER ;;
    haproxy) host=198.18.0.1; port=6543; pid=$HAPROXY ;;
    bare-relay) host=198.18.0.1; port=6544; pid=$BARE_RELAY ;;
  esac
  mkdir -p "$WORK/log"; rm -f "$WORK/log/$name".*
  local load cpu0 pcpu0 rss
  load=$(loadavg); cpu0=$(tree_cpu_us); pcpu0=${pid:+$(proc_cpu_us "$pid")}
  if ! PGPASSWORD=$PG_PASSWORD $runner pgbench -h $host -p $port -U $PG_USER "${args[@]}" $PG_DB > "$WORK/$name.out" 2> "$WORK/$name.err"; then
    echo "pgbench failed: $path $workload -c $clients" >&2; tail -5 "$WORK/$name.err" >&2
  fi
  local cpu=$(( $(tree_cpu_us) - cpu0 )) pcpu=0
  [ -n "$pid" ] && pcpu=$(( $(proc_cpu_us "$pid") - pcpu0 )) && rss=$(rss_kb "$pid")
  python3 "$ROOT/bench/pgstats.py" "$WORK/$name.out" "$WORK/log/$name" \
    --load "$load" --tree-cpu-us "$cpu" --proxy-cpu-us "$pcpu" --proxy-rss-kb "${rss:-0}"
}


# The start every pgbench A/B script shares: ROUNDS, SECS (BENCH_SECONDS) and WORKLOADS
# (AB_WORKLOADS) with their defaults, the topology and PostgreSQL.
ab_start() {
  ROUNDS=${ROUNDS:-5}; SECS=${BENCH_SECONDS:-20}
  WORKLOADS=${AB_WORKLOADS:-select-simple:8 select-prepared:8}
  setup_topology
  start_postgres
}

# ab_configs NAME CONFIG_A CONFIG_B LABEL: two arms, each a daemon build and a configuration
# (the build is $AB_BIN_A / $AB_BIN_B, by default $AIRLOCK for both), pgbench through each in
# interleaved rounds ($ROUNDS, $SECS, $WORKLOADS), the arm that goes first alternating so a
# drift within a round hits both alike. Prints per workload the median B/A ratio of TPS and of
# the daemon's CPU per transaction, and writes results/NAME-ab-$DATE.json.
ab_configs() {
  local name=$1 cfg_a=$2 cfg_b=$3 label=$4 r wc w c order which cfg
  local bin=$AIRLOCK bin_a=${AB_BIN_A:-$AIRLOCK} bin_b=${AB_BIN_B:-$AIRLOCK}
  echo "load start: $(loadavg)" >&2
  for r in $(seq "$ROUNDS"); do
    for wc in $WORKLOADS; do
      w=${wc%%:*}; c=${wc##*:}
      order="a b"; [ $((r % 2)) -eq 0 ] && order="b a"
      for which in $order; do
        if [ "$which" = a ]; then cfg=$cfg_a AIRLOCK=$bin_a; else cfg=$cfg_b AIRLOCK=$bin_b; fi
        start_daemon "$cfg"
        run_pgbench airlock-custom "$w" "$c" "$SECS" "$name-$which-$w-$c-$r" >> "$WORK/$name-$which-$w-$c"
        stop_daemon
      done
    done
    echo "round $r load $(loadavg)" >&2
  done
  AIRLOCK=$bin
  echo "load end: $(loadavg)" >&2
  python3 - "$WORK" "$RESULTS/$name-ab-$DATE.json" "$name" "$label" $WORKLOADS <<'PY'
import json, statistics, sys
work, out, name, label, workloads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
med = statistics.median
rows = []
for wc in workloads:
    w, c = wc.split(":")
    a = [json.loads(l) for l in open(f"{work}/{name}-a-{w}-{c}") if l.strip()]
    b = [json.loads(l) for l in open(f"{work}/{name}-b-{w}-{c}") if l.strip()]
    tps = [y["tps"] / x["tps"] for x, y in zip(a, b)]
    cpu = [y["proxy_cpu_us_per_tx"] / x["proxy_cpu_us_per_tx"] for x, y in zip(a, b)]
    row = {"workload": w, "clients": int(c),
           "a_tps": [x["tps"] for x in a], "b_tps": [y["tps"] for y in b],
           "tps_ratio_per_round": [round(x, 3) for x in tps], "tps_ratio_median": round(med(tps), 3),
           "cpu_ratio_per_round": [round(x, 3) for x in cpu], "cpu_ratio_median": round(med(cpu), 3),
           "load": [y["loadavg"] for y in b]}
    rows.append(row)
    print(f"{w} -c {c}: {label} TPS per round {row['tps_ratio_per_round']} median "
          f"{row['tps_ratio_median']}; proxy CPU per tx {row['cpu_ratio_per_round']} median "
          f"{row['cpu_ratio_median']}")
json.dump({"runs": rows}, open(out, "w"), indent=1)
PY
}
