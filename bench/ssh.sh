#!/usr/bin/env bash
# The SSH gateway against direct SSH (tests/ssh.rs, bench-harness), side by side in one run:
#  - connection time of `ssh host true`, p50/p90 over SSH_BENCH_CONNECTS runs per arm and round,
#    direct and through airlock interleaved one by one (budget: <= 20 ms added at p50);
#  - throughput of one SSH_BENCH_MIB file (default 1024 MiB) by scp get, sftp get and sftp put,
#    median over SSH_BENCH_ROUNDS rounds (budget: airlock >= 0.8 of direct sftp).
# Rounds alternate which arm goes first; the load average is recorded per round. Direct = the
# same OpenSSH client outside the protected cgroup, straight to sshd (its own host key, a key
# certified by the user CA the server trusts); airlock = the intercepted path of the tests.
# Real sshd, ssh, scp, sftp on a netns test host; run as root.
#
#   bench/ssh.sh                                        # dev profile
#   PROFILE=--release SSH_BENCH_MIB=256 bench/ssh.sh    # smaller file on a loaded machine
#   SSH_BENCH_CIPHERS="aes256-gcm@openssh.com, aes128-gcm@openssh.com" PROFILE=--release bench/ssh.sh
#                       # the target lists the ciphers it offers (default: none listed, so a
#                       # client that speaks AES-GCM, as OpenSSH does, is offered only that)
#
# Writes bench/results/ssh-<date>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
OUT=bench/results/ssh-$(date -u +%Y-%m-%d).txt
{
  echo "profile: ${PROFILE:-dev}; $(nproc) cores; load at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "ciphers offered to clients: ${SSH_BENCH_CIPHERS:-the default: AES-GCM to a client that lists it (OpenSSH does), else every cipher}"
  echo "file ${SSH_BENCH_MIB:-1024} MiB; rounds ${SSH_BENCH_ROUNDS:-3}; connections ${SSH_BENCH_CONNECTS:-10} per arm and round"
  echo "other cargo/rustc processes running at start: $(pgrep -c -x 'rustc|cargo' || true)"
  cargo test -p airlock ${PROFILE:-} --features bench-harness --test ssh -- \
    --exact bench_ssh_connect_and_copy --nocapture 2>&1 | grep -E '^(load|round|summary)'
  echo "load at end $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT"
