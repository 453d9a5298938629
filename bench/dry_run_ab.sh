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
ab_start
held_writes() {
  printf '  - name: bench-held-writes\n    targets: [bench-db]\n    classes: [write]\n    action: review\n    review: { approvers: [dba], timeout: 60s, dry_run: %s }' "$1"
}
RULES_EXTRA=$(held_writes false) write_airlock_configs
cp "$WORK/full.yaml" "$WORK/full-plain.yaml"
RULES_EXTRA=$(held_writes true) write_airlock_configs
cp "$WORK/full.yaml" "$WORK/full-dryrun.yaml"
grep -q "dry_run: true" "$WORK/full-dryrun.yaml" || { echo "B has no dry-run rule" >&2; exit 1; }
ab_configs dry-run "$WORK/full-plain.yaml" "$WORK/full-dryrun.yaml" "dry_run true/false"
