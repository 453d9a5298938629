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
ab_start
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
ab_configs run-as "$WORK/full.yaml" "$WORK/full-runas.yaml" "run_as/plain"
