# Sourced by run.sh after lib.sh and setup_topology. Interception: connection setup
# (connect -> first byte from the service) and rate for direct, eBPF redirect to the airlock
# proxy and iptables REDIRECT to the same proxy; relay throughput, direct vs through the proxy.
# Writes results/interception-$DATE.json.
CONNS=${BENCH_CONNS:-1000}
BYTES=${BENCH_BYTES:-1073741824}

start_netbench_server

{ daemon_section; echo "targets:"; tcp_targets; } > "$WORK/tcp.yaml"
start_daemon "$WORK/tcp.yaml"
# iptables REDIRECT of 198.18.0.2:7001 to the same proxy (its `bench-iptables` listener).
in_node iptables -t nat -A OUTPUT -p tcp -d 198.18.0.2 --dport 7001 -j REDIRECT --to-ports 15101

ROUNDS=${BENCH_ROUNDS:-5}
echo "interception: $ROUNDS interleaved rounds of $CONNS sequential connections per path, ${BYTES} bytes relayed" >&2
# The machine is shared: each round runs every path back to back, and the report takes each
# path's median over the rounds, so a burst of other work hits all paths alike.
median() { python3 -c 'import json,statistics,sys
rs=[json.loads(l) for l in sys.stdin if l.strip()]
print(json.dumps({k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]} | {"rounds": len(rs)}))'; }
load0=$(loadavg)
: > "$WORK/c-direct"; : > "$WORK/c-ebpf"; : > "$WORK/c-ipt"
: > "$WORK/t-direct"; : > "$WORK/t-splice"; : > "$WORK/t-copy"
for _ in $(seq "$ROUNDS"); do
  in_peer "$NETBENCH" connect 198.18.0.2:7000 "$CONNS" >> "$WORK/c-direct"
  in_protected "$NETBENCH" connect 198.18.0.2:7000 "$CONNS" >> "$WORK/c-ebpf"
  in_peer "$NETBENCH" connect 198.18.0.2:7001 "$CONNS" >> "$WORK/c-ipt"
done
for _ in $(seq "$ROUNDS"); do
  in_peer "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES" >> "$WORK/t-direct"
  in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES" >> "$WORK/t-splice"
done
start_daemon "$WORK/tcp.yaml" AIRLOCK_TCP_RELAY=copy
for _ in $(seq "$ROUNDS"); do
  in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES" >> "$WORK/t-copy"
done
stop_daemon
in_node iptables -t nat -F OUTPUT
direct=$(median < "$WORK/c-direct"); ebpf=$(median < "$WORK/c-ebpf"); ipt=$(median < "$WORK/c-ipt")
tp_direct=$(median < "$WORK/t-direct"); tp_proxy=$(median < "$WORK/t-splice"); tp_copy=$(median < "$WORK/t-copy")

cat > "$RESULTS/interception-$DATE.json" <<JSON
{"date": "$STAMP", "machine": "$MACHINE", "loadavg": {"start": "$load0", "end": "$(loadavg)"},
 "connect": {"direct": $direct, "ebpf_redirect": $ebpf, "iptables_redirect": $ipt},
 "throughput": {"direct": $tp_direct, "proxy_splice": $tp_proxy, "proxy_copy": $tp_copy}}
JSON
