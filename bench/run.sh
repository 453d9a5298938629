#!/usr/bin/env bash
# cargo xtask bench — every benchmark side by side in one run, on test hosts in network
# namespaces (198.18.0.0/15). Writes bench/results/<name>-<date>.json and results/latest.md.
#
# interception: connection setup (connect -> first byte from the service) and rate for
#   direct, eBPF redirect to the airlock proxy, and iptables REDIRECT to the same proxy;
#   relay throughput of a 1 GiB transfer, direct vs through the proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
AIRLOCK=$ROOT/target/release/airlock
CONNS=${BENCH_CONNS:-3000}
BYTES=${BENCH_BYTES:-1073741824}
ID=bench$$
NODE=al${ID}node; DB=al${ID}db
CGROOT=$(grep ' - cgroup2 ' /proc/self/mountinfo | awk '{print $5; exit}')
CG=$CGROOT/airlock-$ID
BPFFS=/sys/fs/bpf/airlock-$ID
WORK=$ROOT/bench/work/$ID
DATE=$(date -u +%Y-%m-%d)
mkdir -p "$WORK" "$ROOT/bench/results"

cargo build --release -q -p airlock-bench
NETBENCH=$ROOT/target/release/netbench

cleanup() {
  set +e
  [ -n "${DAEMON:-}" ] && kill -9 "$DAEMON" 2>/dev/null
  "$AIRLOCK" uninstall --bpffs "$BPFFS" >/dev/null 2>&1
  for ns in $NODE $DB; do ip netns pids $ns 2>/dev/null | xargs -r kill -9; ip netns del $ns 2>/dev/null; done
  [ -d "$CG" ] && { echo 1 > "$CG/cgroup.kill"; sleep 0.2; find "$CG" -depth -type d -exec rmdir {} \; ; }
  rm -rf "$WORK"
}
trap cleanup EXIT

in_node() { nsenter --net=/run/netns/$NODE "$@"; }
# Runs a command as a process of the protected cgroup, in the node namespace.
in_protected() { sh -c "echo \$\$ > $CG/clients/cgroup.procs && exec nsenter --net=/run/netns/$NODE $*"; }

ip netns add $NODE; ip netns add $DB
ip -n $NODE link set lo up; ip -n $DB link set lo up
ip link add b${ID: -4}0 netns $NODE type veth peer name b${ID: -4}1 netns $DB
ip -n $NODE addr add 198.18.0.1/24 dev b${ID: -4}0; ip -n $NODE link set b${ID: -4}0 up
ip -n $DB addr add 198.18.0.2/24 dev b${ID: -4}1; ip -n $DB link set b${ID: -4}1 up
mkdir -p "$CG/daemon" "$CG/clients"

nsenter --net=/run/netns/$DB "$NETBENCH" serve 7000 > "$WORK/server.out" 2>&1 &
for _ in $(seq 50); do grep -q ready "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done

cat > "$WORK/airlock.yaml" <<YAML
daemon:
  cgroup: $CG
  bpffs: $BPFFS
  state_dir: $WORK/state
  accept_unintercepted: true
targets:
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
# start_daemon [ENV=VALUE...]: (re)starts the daemon in its cgroup, waits for its listeners.
start_daemon() {
  [ -n "${DAEMON:-}" ] && { kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; }
  sh -c "echo \$\$ > $CG/daemon/cgroup.procs && exec env AIRLOCK_LOG=warn $* nsenter --net=/run/netns/$NODE $AIRLOCK run --config $WORK/airlock.yaml" >> "$WORK/daemon.log" 2>&1 &
  DAEMON=$!
  for _ in $(seq 100); do in_node sh -c "ss -ltnp | grep ':15101 ' | grep -q pid=$DAEMON" && return; sleep 0.1; done
  echo "daemon did not come up" >&2; cat "$WORK/daemon.log" >&2; exit 1
}
start_daemon
# iptables REDIRECT of 198.18.0.2:7001 to the same proxy (its `bench-iptables` listener).
in_node iptables -t nat -A OUTPUT -p tcp -d 198.18.0.2 --dport 7001 -j REDIRECT --to-ports 15101

echo "interception: $CONNS sequential connections per path, ${BYTES} bytes relayed" >&2
direct=$(in_node "$NETBENCH" connect 198.18.0.2:7000 "$CONNS")
ebpf=$(in_protected "$NETBENCH" connect 198.18.0.2:7000 "$CONNS")
ipt=$(in_node "$NETBENCH" connect 198.18.0.2:7001 "$CONNS")
tp_direct=$(in_node "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES")
tp_proxy=$(in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES")
start_daemon AIRLOCK_TCP_RELAY=copy
tp_copy=$(in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES")

json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
MACHINE="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r)"
cat > "$ROOT/bench/results/interception-$DATE.json" <<JSON
{"date": "$DATE", "machine": "$MACHINE",
 "connect": {"direct": $direct, "ebpf_redirect": $ebpf, "iptables_redirect": $ipt},
 "throughput": {"direct": $tp_direct, "proxy_splice": $tp_proxy, "proxy_copy": $tp_copy}}
JSON
{
  echo "### Interception ($DATE, $MACHINE)"
  echo
  echo "| path | connect→first byte p50 | p99 | conn/s | vs direct (p50) |"
  echo "|---|---|---|---|---|"
  for row in "direct:$direct" "eBPF redirect → airlock:$ebpf" "iptables REDIRECT → airlock:$ipt"; do
    name=${row%%:*}; v=${row#*:}
    echo "| $name | $(json "$v" p50_us) µs | $(json "$v" p99_us) µs | $(json "$v" per_second) | $(ratio "$(json "$v" p50_us)" "$(json "$direct" p50_us)")× |"
  done
  echo
  echo "| relay, $((BYTES / 1048576)) MiB | MB/s | vs direct |"
  echo "|---|---|---|"
  echo "| direct | $(json "$tp_direct" mb_per_s) | 1.00 |"
  echo "| through airlock, splice relay (default) | $(json "$tp_proxy" mb_per_s) | $(ratio "$(json "$tp_proxy" mb_per_s)" "$(json "$tp_direct" mb_per_s)") |"
  echo "| through airlock, userspace copy relay | $(json "$tp_copy" mb_per_s) | $(ratio "$(json "$tp_copy" mb_per_s)" "$(json "$tp_direct" mb_per_s)") |"
} > "$ROOT/bench/results/interception.md"
cat "$ROOT/bench/results/interception.md"
