#!/usr/bin/env bash
# Connect latency of two daemon builds side by side: AIRLOCK_OLD (e.g. main's
# target/release/airlock, copied aside) against this tree's target/release/airlock, in
# interleaved rounds in one topology (each round restarts the daemon with each build and runs
# direct and redirected connects back to back), plus the CPU time per redirected connection
# of the protected cgroup (daemon and client), which a busy machine disturbs less than
# latency. Prints medians and per-round new/old ratios with the load average.
#
#   AIRLOCK_OLD=/tmp/main/airlock ROUNDS=8 CONNS=1000 [AUDIT=off] bench/interception_ab.sh
# (after `cargo build --release -p airlock -p airlock-bench`; run as root.)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
NEW=$ROOT/target/release/airlock
OLD=${AIRLOCK_OLD:?set AIRLOCK_OLD to the daemon binary to compare against}
# Whatever build ran last, clean up with this tree's, whose uninstall knows every map layout.
trap 'AIRLOCK=$NEW; lib_cleanup' EXIT
setup_topology
start_netbench_server
# AUDIT=off compares the interception path alone (no audit log in either build).
[ "${AUDIT:-on}" = off ] && DAEMON_EXTRA="  audit: { enabled: false }"
{ daemon_section; echo "targets:"; tcp_targets; cat <<YAML; } > "$WORK/tcp.yaml"
rules:
  # Every connection to the benchmark service is allowed (a rule with no what block, so
  # builds from before tcp asked the gate read it too).
  - name: bench-connect
    action: allow
YAML
# Each build keeps its own state directory: an older build refuses an audit log a newer one
# wrote in a later format.
for which in old new; do
  sed "s|^  state_dir: .*|  state_dir: $WORK/state-$which|" "$WORK/tcp.yaml" > "$WORK/tcp-$which.yaml"
done
ROUNDS=${ROUNDS:-8}; CONNS=${CONNS:-1000}
cpu_usec() { awk '$1 == "usage_usec" {print $2}' "$CG/cpu.stat"; }
echo "load start: $(loadavg)"
for r in $(seq "$ROUNDS"); do
  for which in old new; do
    if [ "$which" = old ]; then AIRLOCK=$OLD; else AIRLOCK=$NEW; fi
    start_daemon "$WORK/tcp-$which.yaml"
    in_peer "$NETBENCH" connect 198.18.0.2:7000 "$CONNS" >> "$WORK/direct-$which"
    c0=$(cpu_usec)
    in_protected "$NETBENCH" connect 198.18.0.2:7000 "$CONNS" >> "$WORK/ebpf-$which"
    echo $(( ($(cpu_usec) - c0) * 1000 / CONNS )) >> "$WORK/cpu-$which"
  done
  echo "round $r load $(loadavg)"
done
stop_daemon
echo "load end: $(loadavg)"
python3 - "$WORK" <<'PY'
import json, statistics, sys
w = sys.argv[1]
def runs(name): return [json.loads(l) for l in open(f"{w}/{name}") if l.strip()]
def nums(name): return [int(l) for l in open(f"{w}/{name}") if l.strip()]
med = statistics.median
for which in ("old", "new"):
    d, e, c = runs(f"direct-{which}"), runs(f"ebpf-{which}"), nums(f"cpu-{which}")
    print(f"{which}: direct p50 {med(x['p50_us'] for x in d):.1f} us, redirected p50 "
          f"{med(x['p50_us'] for x in e):.1f} us, p99 {med(x['p99_us'] for x in e):.1f} us, "
          f"redirected/direct {med(b['p50_us'] / a['p50_us'] for a, b in zip(d, e)):.3f}, "
          f"cpu {med(c) / 1000:.1f} us per connection")
o, n = runs("ebpf-old"), runs("ebpf-new")
p50 = [b["p50_us"] / a["p50_us"] for a, b in zip(o, n)]
cpu = [b / a for a, b in zip(nums("cpu-old"), nums("cpu-new"))]
print("new/old redirected p50 per round", [round(x, 3) for x in p50], "median", round(med(p50), 3))
print("new/old cpu per connection per round", [round(x, 3) for x in cpu], "median", round(med(cpu), 3))
PY
