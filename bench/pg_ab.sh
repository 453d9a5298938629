#!/usr/bin/env bash
# pgbench through two daemon builds side by side: AIRLOCK_OLD (e.g. the last landing's
# target/release/airlock, copied aside) against this tree's target/release/airlock, in
# interleaved rounds on one topology and one PostgreSQL (each round runs every workload with
# the old build, then with the new), with the full policy and the audit log on. Prints, per
# workload, the median new/old ratio of TPS and of the daemon's CPU per transaction over the
# rounds, with the load average, and writes them to results/pg-ab-$DATE.json.
#
#   AIRLOCK_OLD=/tmp/old/airlock ROUNDS=5 BENCH_SECONDS=20 bench/pg_ab.sh
#   AB_WORKLOADS="select-simple:8 select-prepared:8" AB_CONFIG=full|full-noaudit|allow
# (after `cargo build --release -p airlock -p airlock-bench`; run as root.)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
NEW=$ROOT/target/release/airlock
OLD=${AIRLOCK_OLD:?set AIRLOCK_OLD to the daemon binary to compare against}
trap 'AIRLOCK=$NEW; lib_cleanup' EXIT
ROUNDS=${ROUNDS:-5}; SECS=${BENCH_SECONDS:-20}
WORKLOADS=${AB_WORKLOADS:-select-simple:8 select-prepared:8}
CONFIG=${AB_CONFIG:-full}
setup_topology
start_postgres
write_airlock_configs
# Each build keeps its own state directory: an older build refuses an audit log a newer one
# wrote in a later format.
for which in old new; do
  sed "s|^  state_dir: .*|  state_dir: $WORK/state-$which|" "$WORK/$CONFIG.yaml" > "$WORK/$CONFIG-$which.yaml"
done
echo "load start: $(loadavg)" >&2
for r in $(seq "$ROUNDS"); do
  for wc in $WORKLOADS; do
    w=${wc%%:*}; c=${wc##*:}
    for which in old new; do
      if [ "$which" = old ]; then AIRLOCK=$OLD; else AIRLOCK=$NEW; fi
      start_daemon "$WORK/$CONFIG-$which.yaml"
      run_pgbench airlock-custom "$w" "$c" "$SECS" "ab-$which-$w-$c-$r" >> "$WORK/ab-$which-$w-$c"
      stop_daemon
    done
  done
  echo "round $r load $(loadavg)" >&2
done
echo "load end: $(loadavg)" >&2
python3 - "$WORK" "$RESULTS/pg-ab-$DATE.json" "$CONFIG" $WORKLOADS <<'PY'
import json, statistics, sys
work, out, config, workloads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
med = statistics.median
rows = []
for wc in workloads:
    w, c = wc.split(":")
    old = [json.loads(l) for l in open(f"{work}/ab-old-{w}-{c}") if l.strip()]
    new = [json.loads(l) for l in open(f"{work}/ab-new-{w}-{c}") if l.strip()]
    tps = [n["tps"] / o["tps"] for o, n in zip(old, new)]
    cpu = [n["proxy_cpu_us_per_tx"] / o["proxy_cpu_us_per_tx"] for o, n in zip(old, new)]
    row = {"workload": w, "clients": int(c), "config": config,
           "old_tps": [o["tps"] for o in old], "new_tps": [n["tps"] for n in new],
           "tps_ratio_per_round": [round(x, 3) for x in tps], "tps_ratio_median": round(med(tps), 3),
           "cpu_ratio_per_round": [round(x, 3) for x in cpu], "cpu_ratio_median": round(med(cpu), 3),
           "load": [n["loadavg"] for n in new]}
    rows.append(row)
    print(f"{w} -c {c} ({config}): new/old TPS per round {row['tps_ratio_per_round']} median "
          f"{row['tps_ratio_median']}; proxy CPU per tx {row['cpu_ratio_per_round']} median "
          f"{row['cpu_ratio_median']}")
json.dump({"runs": rows}, open(out, "w"), indent=1)
PY
