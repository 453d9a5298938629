# Sourced by run.sh after lib.sh and setup_topology. Interception: connection setup
# (connect -> first byte from the service) and rate for direct, eBPF redirect to the airlock
# proxy and iptables REDIRECT to the same proxy; relay throughput, direct vs through the proxy,
# with haproxy (TCP mode, splice-auto) as the peer and netbench's bare splice relay as the floor
# any relay pays for the second TCP hop here.
# Writes results/interception-$DATE.json.
CONNS=${BENCH_CONNS:-1000}
BYTES=${BENCH_BYTES:-1073741824}

start_netbench_server

{ daemon_section; echo "targets:"; tcp_targets; cat <<YAML; } > "$WORK/tcp.yaml"
rules:
  # Every connection to the benchmark service is allowed (a rule with no what block, so
  # builds from before tcp asked the gate read it too).
  - name: bench-connect
    action: allow
YAML
start_daemon "$WORK/tcp.yaml"
# iptables REDIRECT of 198.18.0.2:7001 to the same proxy (its `bench-iptables` listener).
in_node iptables -t nat -A OUTPUT -p tcp -d 198.18.0.2 --dport 7001 -j REDIRECT --to-ports 15101

# Relay peers in the node namespace, dialled directly by unprotected clients.
cat > "$WORK/relay-haproxy.cfg" <<CFG
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
listen relay
  bind 127.0.0.1:7101
  option splice-auto
  server netbench 198.18.0.2:7000
CFG
in_peer haproxy -f "$WORK/relay-haproxy.cfg" -db > "$WORK/relay-haproxy.out" 2>&1 &
RELAY_HAPROXY=$!; EXTRA_PIDS="${EXTRA_PIDS:-} $!"
in_peer "$NETBENCH" splice-relay 127.0.0.1:7102 198.18.0.2:7000 > "$WORK/splice-relay.out" 2>&1 &
SPLICE_RELAY=$!; EXTRA_PIDS="${EXTRA_PIDS:-} $!"
for _ in $(seq 50); do [ -n "$(listener_pid 7101)" ] && [ -n "$(listener_pid 7102)" ] && break; sleep 0.1; done

ROUNDS=${BENCH_ROUNDS:-5}
echo "interception: $ROUNDS interleaved rounds of $CONNS sequential connections per path, ${BYTES} bytes relayed" >&2
# The machine is shared: each round runs every path back to back, and the report takes each
# path's median over the rounds, so a burst of other work hits all paths alike.
median() { python3 -c 'import json,statistics,sys
rs=[json.loads(l) for l in sys.stdin if l.strip()]
print(json.dumps({k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]} | {"rounds": len(rs)}))'; }
load0=$(loadavg)
: > "$WORK/c-direct"; : > "$WORK/c-ebpf"; : > "$WORK/c-ipt"
: > "$WORK/t-direct"; : > "$WORK/t-splice"; : > "$WORK/t-copy"; : > "$WORK/t-haproxy"; : > "$WORK/t-floor"
for _ in $(seq "$ROUNDS"); do
  in_peer "$NETBENCH" connect 198.18.0.2:7000 "$CONNS" >> "$WORK/c-direct"
  in_protected "$NETBENCH" connect 198.18.0.2:7000 "$CONNS" >> "$WORK/c-ebpf"
  in_peer "$NETBENCH" connect 198.18.0.2:7001 "$CONNS" >> "$WORK/c-ipt"
done
for _ in $(seq "$ROUNDS"); do
  in_peer "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES" >> "$WORK/t-direct"
  in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES" >> "$WORK/t-splice"
  in_peer "$NETBENCH" throughput 127.0.0.1:7101 "$BYTES" >> "$WORK/t-haproxy"
  in_peer "$NETBENCH" throughput 127.0.0.1:7102 "$BYTES" >> "$WORK/t-floor"
done
kill "$RELAY_HAPROXY" "$SPLICE_RELAY" 2>/dev/null
start_daemon "$WORK/tcp.yaml" AIRLOCK_TCP_RELAY=copy
for _ in $(seq "$ROUNDS"); do
  in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES" >> "$WORK/t-copy"
done
stop_daemon
in_node iptables -t nat -F OUTPUT
direct=$(median < "$WORK/c-direct"); ebpf=$(median < "$WORK/c-ebpf"); ipt=$(median < "$WORK/c-ipt")
tp_direct=$(median < "$WORK/t-direct"); tp_proxy=$(median < "$WORK/t-splice"); tp_copy=$(median < "$WORK/t-copy")
tp_haproxy=$(median < "$WORK/t-haproxy"); tp_floor=$(median < "$WORK/t-floor")

cat > "$RESULTS/interception-$DATE.json" <<JSON
{"date": "$STAMP", "machine": "$MACHINE", "loadavg": {"start": "$load0", "end": "$(loadavg)"},
 "connect": {"direct": $direct, "ebpf_redirect": $ebpf, "iptables_redirect": $ipt},
 "throughput": {"direct": $tp_direct, "proxy_splice": $tp_proxy, "proxy_copy": $tp_copy,
                "haproxy": $tp_haproxy, "bare_splice_relay": $tp_floor}}
JSON
