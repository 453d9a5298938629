#!/usr/bin/env bash
# SELECT-heavy pgbench through the airlock PostgreSQL gateway with masking vs without.
#
# A real PostgreSQL (initdb in a temp dir, random loopback port), 10 000 realistic customer
# rows (emails, cards, SSNs, phones, IBANs, IPs, AWS keys, JWTs, free text), and a custom
# pgbench script reading 10 rows per transaction. "masked": a caller in group `agents`, whose
# rule masks every column (hash, partial, null, redact) and runs every detector; "unmasked":
# the same proxy, query and catalog, for a caller in `except_groups`. Budget: masked >= 85%.
#
# Writes bench/results/pg-masking-<date>.json and prints a markdown table.
# BENCH_SECS (default 10) per run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATE=$(date -u +%Y-%m-%d)
mkdir -p bench/results
OUT=$(BENCH_SECS=${BENCH_SECS:-10} cargo test --release -q -p airlock --features bench-harness --test masking -- \
  --exact bench_masking_select_heavy --nocapture --test-threads=1 2>&1)
echo "| mode | direct tps | unmasked tps | masked tps | masked/unmasked |"
echo "|---|---|---|---|---|"
grep '^| ' <<<"$OUT"
JSON=$(grep '^BENCH_JSON ' <<<"$OUT" | sed 's/^BENCH_JSON //')
[ -n "$JSON" ] || { echo "$OUT" >&2; exit 1; }
echo "$JSON" > "bench/results/pg-masking-$DATE.json"
echo "$JSON"
