#!/usr/bin/env bash
# pgbench through two daemon builds side by side: AIRLOCK_OLD (e.g. the last landing's
# target/release/airlock, copied aside, arm A) against this tree's target/release/airlock
# (arm B), in interleaved rounds on one topology and one PostgreSQL (lib.sh's ab_configs: the
# arm that goes first alternates), with the full policy and the audit log on. Prints, per
# workload, the median new/old ratio of TPS and of the daemon's CPU per transaction over the
# rounds, with the load average, and writes them to results/pg-ab-$DATE.json (a_tps: old,
# b_tps: new).
#
#   AIRLOCK_OLD=/tmp/old/airlock ROUNDS=5 BENCH_SECONDS=20 bench/pg_ab.sh
#   AB_WORKLOADS="select-simple:8 select-prepared:8" AB_CONFIG=full|full-noaudit|allow
# (after `cargo build --release -p airlock -p airlock-bench`; run as root.)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
NEW=$ROOT/target/release/airlock
OLD=${AIRLOCK_OLD:?set AIRLOCK_OLD to the daemon binary to compare against}
trap 'AIRLOCK=$NEW; lib_cleanup' EXIT
CONFIG=${AB_CONFIG:-full}
ab_start
write_airlock_configs
# Each build keeps its own state directory: an older build refuses an audit log a newer one
# wrote in a later format.
for which in old new; do
  sed "s|^  state_dir: .*|  state_dir: $WORK/state-$which|" "$WORK/$CONFIG.yaml" > "$WORK/$CONFIG-$which.yaml"
done
AB_BIN_A=$OLD AB_BIN_B=$NEW ab_configs pg "$WORK/$CONFIG-old.yaml" "$WORK/$CONFIG-new.yaml" "new/old ($CONFIG)"
