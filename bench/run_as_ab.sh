#!/usr/bin/env bash
# Least privilege (issue 26): does `run_as` cost TPS? pgbench -S through one daemon build with
# the full policy, in interleaved rounds: A without roles, B with the target's
# `roles`/`run_as: bench_readonly` (the session switches once, at login; the reads' rule names
# the same role, so no command switches again). Prints the median B/A ratio of TPS and of the
# daemon's CPU per transaction, with the load average, and writes results/run-as-ab-$DATE.json.
#
#   ROUNDS=5 BENCH_SECONDS=20 AB_WORKLOADS="select-simple:8 select-prepared:8" bench/run_as_ab.sh
# (after `cargo build --release -p airlock -p airlock-bench`; run as root.)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
trap 'lib_cleanup' EXIT
ROUNDS=${ROUNDS:-5}; SECS=${BENCH_SECONDS:-20}
WORKLOADS=${AB_WORKLOADS:-select-simple:8 select-prepared:8}
setup_topology
start_postgres
pg_admin "CREATE ROLE bench_readonly NOLOGIN"
pg_admin "GRANT bench_readonly TO $PG_USER"
pg_admin "ALTER ROLE $PG_USER NOINHERIT"
pg_admin "GRANT SELECT ON ALL TABLES IN SCHEMA public TO bench_readonly" "$PG_DB"
write_airlock_configs
# B: the same configuration with the target's roles, and the reads' rule naming the role.
python3 - "$WORK/full.yaml" "$WORK/full-runas.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read()
text = text.replace("      database: ", "      roles: [bench_readonly]\n      run_as: bench_readonly\n      database: ", 1)
text = text.replace("  - name: bench-read\n", "  - name: bench-read\n    run_as: bench_readonly\n", 1)
open(sys.argv[2], "w").write(text)
PY
echo "load start: $(loadavg)" >&2
for r in $(seq "$ROUNDS"); do
  for wc in $WORKLOADS; do
    w=${wc%%:*}; c=${wc##*:}
    # Alternate which arm goes first, so a drift within a round hits both alike.
    order="a b"; [ $((r % 2)) -eq 0 ] && order="b a"
    for which in $order; do
      if [ "$which" = a ]; then cfg=full; else cfg=full-runas; fi
      start_daemon "$WORK/$cfg.yaml"
      run_pgbench airlock-custom "$w" "$c" "$SECS" "runas-$which-$w-$c-$r" >> "$WORK/runas-$which-$w-$c"
      stop_daemon
    done
  done
  echo "round $r load $(loadavg)" >&2
done
echo "load end: $(loadavg)" >&2
python3 - "$WORK" "$RESULTS/run-as-ab-$DATE.json" $WORKLOADS <<'PY'
import json, statistics, sys
work, out, workloads = sys.argv[1], sys.argv[2], sys.argv[3:]
med = statistics.median
rows = []
for wc in workloads:
    w, c = wc.split(":")
    a = [json.loads(l) for l in open(f"{work}/runas-a-{w}-{c}") if l.strip()]
    b = [json.loads(l) for l in open(f"{work}/runas-b-{w}-{c}") if l.strip()]
    tps = [y["tps"] / x["tps"] for x, y in zip(a, b)]
    cpu = [y["proxy_cpu_us_per_tx"] / x["proxy_cpu_us_per_tx"] for x, y in zip(a, b)]
    row = {"workload": w, "clients": int(c),
           "a_tps": [x["tps"] for x in a], "b_tps": [y["tps"] for y in b],
           "tps_ratio_per_round": [round(x, 3) for x in tps], "tps_ratio_median": round(med(tps), 3),
           "cpu_ratio_per_round": [round(x, 3) for x in cpu], "cpu_ratio_median": round(med(cpu), 3),
           "load": [y["loadavg"] for y in b]}
    rows.append(row)
    print(f"{w} -c {c}: run_as/plain TPS per round {row['tps_ratio_per_round']} median "
          f"{row['tps_ratio_median']}; proxy CPU per tx {row['cpu_ratio_per_round']} median "
          f"{row['cpu_ratio_median']}")
json.dump({"runs": rows}, open(out, "w"), indent=1)
PY
