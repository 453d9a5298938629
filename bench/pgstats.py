#!/usr/bin/env python3
"""Summarises one pgbench run as JSON: TPS from its output, latency percentiles from its
per-transaction logs (-l --log-prefix; the third field is the latency in microseconds)."""
import argparse, glob, json, re

ap = argparse.ArgumentParser()
ap.add_argument("stdout")
ap.add_argument("log_prefix")
ap.add_argument("--load", default="")
ap.add_argument("--tree-cpu-us", type=int, default=0)
ap.add_argument("--proxy-cpu-us", type=int, default=0)
ap.add_argument("--proxy-rss-kb", type=int, default=0)
a = ap.parse_args()

out = open(a.stdout).read()
def num(pattern, default=0.0):
    m = re.search(pattern, out)
    return float(m.group(1)) if m else default
tps = num(r"tps = ([0-9.]+)")
tx = int(num(r"number of transactions actually processed: (\d+)"))
failed = int(num(r"number of failed transactions: (\d+)"))
lat = []
for f in glob.glob(a.log_prefix + ".*"):
    with open(f) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                lat.append(int(parts[2]))
lat.sort()
def pct(p):
    return round(lat[min(len(lat) - 1, int(p * (len(lat) - 1)))] / 1000.0, 3) if lat else None
print(json.dumps({
    "tps": tps, "transactions": tx, "failed": failed,
    "latency_avg_ms": num(r"latency average = ([0-9.]+) ms", None),
    "p50_ms": pct(0.50), "p99_ms": pct(0.99), "sampled": len(lat),
    "cpu_us_per_tx": round(a.tree_cpu_us / tx, 1) if tx else None,
    "proxy_cpu_us_per_tx": round(a.proxy_cpu_us / tx, 1) if tx else None,
    "proxy_rss_kb": a.proxy_rss_kb, "loadavg": a.load,
}))
