#!/usr/bin/env bash
# io_uring against epoll (issue 25): the same release daemon with the full policy and the audit
# log on, `daemon.io_engine: epoll` (A) and `io_uring` (B), beside haproxy (TCP mode) and the
# bare copy relay (the floor), in interleaved rounds whose order rotates, on one topology and
# one PostgreSQL. Then, per engine, one pgbench -S simple run with `perf stat` on the daemon
# (syscalls and context switches per transaction), and the 1 GiB opaque relay through a tcp
# target (splice(2) on epoll, IORING_OP_SPLICE on the ring) in interleaved rounds.
#
#   ROUNDS=3 BENCH_SECONDS=15 bench/uring_ab.sh
#   AB_WORKLOADS="select-simple:8 select-prepared:8 select-simple:32 select-prepared:32 tpcb:32"
# (after `cargo build --release -p airlock -p airlock-bench`; run as root.)
# Writes results/${AB_NAME:-uring-ab}-$DATE.json and prints every row as ratios to haproxy and
# the relay.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
trap lib_cleanup EXIT
ab_start
WORKLOADS=${AB_WORKLOADS:-select-simple:8 select-prepared:8 select-simple:32 select-prepared:32 tpcb:32}
BYTES=${BENCH_BYTES:-1073741824}
start_peers
start_netbench_server
write_airlock_configs
sed "s|^  accept_unintercepted: true|&\n  io_engine: io_uring|" "$WORK/full.yaml" > "$WORK/full-uring.yaml"
# io_uring-immediate: the ring with each operation submitted at once instead of once per
# scheduler pass (AIRLOCK_URING_SUBMIT=immediate). Also available: epoll-1worker and
# io_uring-1worker (TOKIO_WORKER_THREADS=1). AB_NAME names the results file (uring-ab).
PATHS=${AB_PATHS:-epoll io_uring io_uring-immediate haproxy bare-relay}

# start_engine PATH: the daemon for one of the airlock paths.
start_engine() {
  case $1 in
    epoll) start_daemon "$WORK/full.yaml" ;;
    io_uring) start_daemon "$WORK/full-uring.yaml" ;;
    io_uring-immediate) start_daemon "$WORK/full-uring.yaml" AIRLOCK_URING_SUBMIT=immediate ;;
    # One tokio worker: the thread that submits is always the one that waits on epoll.
    epoll-1worker) start_daemon "$WORK/full.yaml" TOKIO_WORKER_THREADS=1 ;;
    io_uring-1worker) start_daemon "$WORK/full-uring.yaml" TOKIO_WORKER_THREADS=1 ;;
  esac
}
ENGINES=$(for p in $PATHS; do case $p in haproxy|bare-relay) ;; *) echo "$p" ;; esac; done)

run_path() { # PATH WORKLOAD CLIENTS NAME
  case $1 in
    haproxy|bare-relay) run_pgbench "$1" "$2" "$3" "$SECS" "$4" ;;
    *) start_engine "$1"; run_pgbench airlock-custom "$2" "$3" "$SECS" "$4"; stop_daemon ;;
  esac
}

echo "load start: $(loadavg)" >&2
for r in $(seq "$ROUNDS"); do
  for wc in $WORKLOADS; do
    w=${wc%%:*}; c=${wc##*:}
    # Rotate the order so each path goes first in some round.
    set -- $PATHS
    for _ in $(seq $(( (r - 1) % $# ))); do set -- "${@:2}" "$1"; done
    for p in "$@"; do
      run_path "$p" "$w" "$c" "uring-$p-$w-$c-$r" >> "$WORK/uring-$p-$w-$c"
    done
  done
  echo "round $r load $(loadavg)" >&2
done

# Syscalls and context switches per transaction, from the daemon's own counters.
for engine in $ENGINES; do
  start_engine "$engine"
  # The daemon's cgroup, so every thread counts (io_uring's io-wq workers are its threads).
  perf stat -a -x, -e raw_syscalls:sys_enter,context-switches --for-each-cgroup "${CG#"$CGROOT"/}/daemon" -o "$WORK/perf-$engine" -- sleep "$((SECS + 1))" &
  perf_pid=$!
  run_pgbench airlock-custom select-simple 8 "$SECS" "uring-perf-$engine" > "$WORK/perf-$engine.json"
  wait "$perf_pid" || true
  stop_daemon
done

# The opaque relay: 1 GiB through a tcp target, per engine, interleaved.
{ daemon_section; echo "targets:"; tcp_targets; cat <<YAML; } > "$WORK/tcp.yaml"
rules:
  - name: bench-connect
    action: allow
YAML
sed "s|^  accept_unintercepted: true|&\n  io_engine: io_uring|" "$WORK/tcp.yaml" > "$WORK/tcp-uring.yaml"
: > "$WORK/t-direct"; : > "$WORK/t-epoll"; : > "$WORK/t-io_uring"
for r in $(seq "$ROUNDS"); do
  in_peer "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES" >> "$WORK/t-direct"
  order="epoll io_uring"; [ $((r % 2)) -eq 0 ] && order="io_uring epoll"
  for engine in $order; do
    cfg=$WORK/tcp.yaml; [ $engine = io_uring ] && cfg=$WORK/tcp-uring.yaml
    start_daemon "$cfg"
    in_protected "$NETBENCH" throughput 198.18.0.2:7000 "$BYTES" >> "$WORK/t-$engine"
    stop_daemon
  done
done
echo "load end: $(loadavg)" >&2

python3 - "$WORK" "$RESULTS/${AB_NAME:-uring-ab}-$DATE.json" "$MACHINE" "$PATHS" $WORKLOADS <<'PY'
import json, statistics, sys
work, out, machine, paths, workloads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5:]
med = statistics.median
rows = []
for wc in workloads:
    w, c = wc.split(":")
    runs = {p: [json.loads(l) for l in open(f"{work}/uring-{p}-{w}-{c}") if l.strip()] for p in paths}
    tps = {p: med(r["tps"] for r in runs[p]) for p in paths}
    p99 = {p: med(r["p99_ms"] for r in runs[p]) for p in paths}
    cpu = {p: med(r["proxy_cpu_us_per_tx"] for r in runs[p]) for p in paths}
    row = {"workload": w, "clients": int(c), "tps_median": tps, "p99_ms_median": p99,
           "proxy_cpu_us_per_tx_median": cpu,
           "tps_per_round": {p: [r["tps"] for r in runs[p]] for p in paths},
           "load": [r["loadavg"] for r in runs["io_uring"]]}
    engines = [p for p in paths if p not in ("haproxy", "bare-relay")]
    for p in engines:
        row[f"{p}_vs_haproxy"] = round(tps[p] / tps["haproxy"], 3)
        row[f"{p}_vs_bare_relay"] = round(tps[p] / tps["bare-relay"], 3)
        row[f"{p}_vs_epoll"] = round(tps[p] / tps["epoll"], 3)
    print(f"{w} -c {c}: TPS " + ", ".join(f"{p} {tps[p]:.0f}" for p in paths) + " | "
          + "; ".join(f"{p}: {row[p + '_vs_epoll']} of epoll, {row[p + '_vs_haproxy']} of haproxy, "
                      f"{row[p + '_vs_bare_relay']} of the relay" for p in engines)
          + f" | p99 ms {p99} | proxy CPU us/tx {cpu}")
    rows.append(row)
per_tx = {}
for engine in [p for p in paths if p not in ("haproxy", "bare-relay")]:
    run = json.loads(open(f"{work}/perf-{engine}.json").read())
    tx = run["transactions"]
    counts = {}
    for line in open(f"{work}/perf-{engine}"):
        parts = line.strip().split(",")
        if len(parts) > 2 and parts[0].isdigit():
            counts[parts[2]] = int(parts[0])
    per_tx[engine] = {k: round(v / tx, 2) for k, v in counts.items()} | {"transactions": tx}
    print(f"{engine}: per transaction (pgbench -S simple, 8 clients) {per_tx[engine]}")
relay = {}
for p in ("direct", "epoll", "io_uring"):
    mbs = [json.loads(l)["mb_per_s"] for l in open(f"{work}/t-{p}") if l.strip()]
    relay[p] = {"mb_per_s": mbs, "median": med(mbs)}
for p in ("epoll", "io_uring"):
    relay[p]["vs_direct"] = round(relay[p]["median"] / relay["direct"]["median"], 3)
print(f"1 GiB relay MB/s: direct {relay['direct']['median']:.0f}, epoll (splice) "
      f"{relay['epoll']['median']:.0f} ({relay['epoll']['vs_direct']}), io_uring (splice ops) "
      f"{relay['io_uring']['median']:.0f} ({relay['io_uring']['vs_direct']})")
json.dump({"machine": machine, "pgbench": rows, "per_transaction": per_tx, "relay_1gib": relay},
          open(out, "w"), indent=1)
PY
