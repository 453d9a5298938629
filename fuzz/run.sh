#!/usr/bin/env bash
# Runs every fuzz target for a short fixed time (CI: `cargo xtask test` calls this).
# cargo-fuzz needs -Z flags; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in $(ls fuzz_targets | sed 's/\.rs$//'); do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds" ] && seeds=(seeds)
  echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET"
done
