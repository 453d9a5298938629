# Sourced by run.sh after lib.sh and setup_topology. Interception: connection setup
# (connect -> first byte from the service) and rate for direct, eBPF redirect to the airlock
# proxy and iptables REDIRECT to the same proxy; relay throughput, direct vs through the proxy.
# Writes results/interception-$DATE.json.
CONNS=${BENCH_CONNS:-3000}
BYTES=${BENCH_BYTES:-1073741824}

start_netbench_server

{ daemon_section; cat <<YAML; } > "$WORK/tcp.yaml"
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
start_daemon "$WORK/tcp.yaml"
# iptables REDIRECT of 198.18.0.2:7001 to the same proxy (its `bench-iptables` listener).
in_node iptables -t nat -A OUTPUT -p tcp -d 198.18.0.2 --dport 7001 -j REDIRECT --to-ports 15101

echo "interception: $CONNS sequential connections per path, ${BYTES} bytes relayed" >&2
load0=$(loadavg)
direct=$(in_peer "$NETBENCH" connect 198.18.0.2:7000 "$CONNS")
ebpf=$(in_protected "$NETBENCH" connect 198.18.0.2:7000 "$CONNS")
ipt=$(in_peer "$NETBENCH" connect 198.18.0.2:7001 "$CONNS")
tp_direct=$(in_peer "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES")
tp_proxy=$(in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES")
start_daemon "$WORK/tcp.yaml" AIRLOCK_TCP_RELAY=copy
tp_copy=$(in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES")
stop_daemon
in_node iptables -t nat -F OUTPUT

cat > "$RESULTS/interception-$DATE.json" <<JSON
{"date": "$STAMP", "machine": "$MACHINE", "loadavg": {"start": "$load0", "end": "$(loadavg)"},
 "connect": {"direct": $direct, "ebpf_redirect": $ebpf, "iptables_redirect": $ipt},
 "throughput": {"direct": $tp_direct, "proxy_splice": $tp_proxy, "proxy_copy": $tp_copy}}
JSON
