#!/usr/bin/env bash
# Approval integrity (issue 18): does the dry run cost statements that are not held? pgbench -S
# through one daemon build with the full policy plus a review rule for every write ahead of the
# reads' rule, in interleaved rounds: A with `dry_run: false`, B with `dry_run: true`. pgbench
# -S never writes, so neither holds anything: any difference is what the dry-run machinery
# costs the path of a command that is not held. Prints the median B/A ratio of TPS and of the
# daemon's CPU per transaction, with the load average; writes results/dry-run-ab-$DATE.json.
#
#   ROUNDS=5 BENCH_SECONDS=20 AB_WORKLOADS="select-simple:8 select-prepared:8" bench/dry_run_ab.sh
# (after `cargo build --release -p airlock -p airlock-bench`; run as root.)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
trap 'lib_cleanup' EXIT
ROUNDS=${ROUNDS:-5}; SECS=${BENCH_SECONDS:-20}
WORKLOADS=${AB_WORKLOADS:-select-simple:8 select-prepared:8}
setup_topology
start_postgres
held_writes() {
  printf '  - name: bench-held-writes\n    targets: [bench-db]\n    classes: [write]\n    action: review\n    review: { approvers: [dba], timeout: 60s, dry_run: %s }' "$1"
}
RULES_EXTRA=$(held_writes false) write_airlock_configs
cp "$WORK/full.yaml" "$WORK/full-plain.yaml"
RULES_EXTRA=$(held_writes true) write_airlock_configs
cp "$WORK/full.yaml" "$WORK/full-dryrun.yaml"
grep -q "dry_run: true" "$WORK/full-dryrun.yaml" || { echo "B has no dry-run rule" >&2; exit 1; }
echo "load start: $(loadavg)" >&2
for r in $(seq "$ROUNDS"); do
  for wc in $WORKLOADS; do
    w=${wc%%:*}; c=${wc##*:}
    # Alternate which arm goes first, so a drift within a round hits both alike.
    order="a b"; [ $((r % 2)) -eq 0 ] && order="b a"
    for which in $order; do
      if [ "$which" = a ]; then cfg=full-plain; else cfg=full-dryrun; fi
      start_daemon "$WORK/$cfg.yaml"
      run_pgbench airlock-custom "$w" "$c" "$SECS" "dryrun-$which-$w-$c-$r" >> "$WORK/dryrun-$which-$w-$c"
      stop_daemon
    done
  done
  echo "round $r load $(loadavg)" >&2
done
echo "load end: $(loadavg)" >&2
python3 - "$WORK" "$RESULTS/dry-run-ab-$DATE.json" $WORKLOADS <<'PY'
import json, statistics, sys
work, out, workloads = sys.argv[1], sys.argv[2], sys.argv[3:]
med = statistics.median
rows = []
for wc in workloads:
    w, c = wc.split(":")
    a = [json.loads(l) for l in open(f"{work}/dryrun-a-{w}-{c}") if l.strip()]
    b = [json.loads(l) for l in open(f"{work}/dryrun-b-{w}-{c}") if l.strip()]
    tps = [y["tps"] / x["tps"] for x, y in zip(a, b)]
    cpu = [y["proxy_cpu_us_per_tx"] / x["proxy_cpu_us_per_tx"] for x, y in zip(a, b)]
    row = {"workload": w, "clients": int(c),
           "a_tps": [x["tps"] for x in a], "b_tps": [y["tps"] for y in b],
           "tps_ratio_per_round": [round(x, 3) for x in tps], "tps_ratio_median": round(med(tps), 3),
           "cpu_ratio_per_round": [round(x, 3) for x in cpu], "cpu_ratio_median": round(med(cpu), 3),
           "load": [y["loadavg"] for y in b]}
    rows.append(row)
    print(f"{w} -c {c}: dry-run rule/plain TPS per round {row['tps_ratio_per_round']} median "
          f"{row['tps_ratio_median']}; proxy CPU per tx {row['cpu_ratio_per_round']} median "
          f"{row['cpu_ratio_median']}")
json.dump({"runs": rows}, open(out, "w"), indent=1)
PY
