#!/usr/bin/env python3
"""Renders bench/results/latest.md from the newest results/*.json of each benchmark: every
figure with its ratio to direct, the date, the machine and the load average."""
import glob, json, os, sys

results = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")


def newest(name):
    files = sorted(glob.glob(os.path.join(results, f"{name}-*.json")))
    return json.load(open(files[-1])) if files else None


def r(x, d):
    return f"{x / d:.2f}" if x and d else "–"


out = ["# airlock benchmarks", ""]
out.append("Measured by `cargo xtask bench` (bench/run.sh) in one run; peers side by side. "
           "Client, proxy and server share the machine's cores with other work, so every figure "
           "comes with the load average it was measured under.")
out.append("")

i = newest("interception")
if i:
    c, t = i["connect"], i["throughput"]
    out += [f"## Interception ({i['date']}, {i['machine']}, load {i.get('loadavg', {}).get('start', 'not recorded')} → {i.get('loadavg', {}).get('end', 'not recorded')})", "",
            "| path | connect→first byte p50 | p99 | conn/s | p50 vs direct | conn/s vs direct |",
            "|---|---|---|---|---|---|"]
    for name, k in [("direct", "direct"), ("eBPF redirect → airlock", "ebpf_redirect"),
                    ("iptables REDIRECT → airlock", "iptables_redirect")]:
        v = c[k]
        out.append(f"| {name} | {v['p50_us']} µs | {v['p99_us']} µs | {v['per_second']} | "
                   f"{r(v['p50_us'], c['direct']['p50_us'])}× | {r(v['per_second'], c['direct']['per_second'])} |")
    rounds = c["direct"].get("rounds")
    if rounds:
        out += ["", f"Each figure is the median of {rounds} interleaved rounds (every path once per round)."]
    e, ipt = c["ebpf_redirect"], c["iptables_redirect"]
    out += ["", f"Budget (issue 2): eBPF redirect adds no more connect latency than iptables REDIRECT: "
            f"p50 {e['p50_us']} vs {ipt['p50_us']} µs, "
            f"{'met' if e['p50_us'] <= ipt['p50_us'] else 'MISSED'}; relay throughput ≥ 0.80 of direct: "
            f"{r(t['proxy_splice']['mb_per_s'], t['direct']['mb_per_s'])}, "
            f"{'met' if t['proxy_splice']['mb_per_s'] >= 0.8 * t['direct']['mb_per_s'] else 'MISSED'}."]
    mib = int(t["direct"]["bytes"]) // 1048576
    out += ["", f"| relay, {mib} MiB | MB/s | vs direct |", "|---|---|---|"]
    for name, k in [("direct", "direct"), ("airlock, splice relay (default)", "proxy_splice"),
                    ("airlock, userspace copy relay", "proxy_copy"),
                    ("haproxy, TCP mode, splice-auto (peer)", "haproxy"),
                    ("bare splice relay: two blocking threads, nothing else (floor)", "bare_splice_relay")]:
        if k not in t:
            continue
        out.append(f"| {name} | {t[k]['mb_per_s']} | {r(t[k]['mb_per_s'], t['direct']['mb_per_s'])} |")
    if "bare_splice_relay" in t:
        out += ["", "Medians of interleaved rounds. The bare splice relay does nothing but move bytes, so its "
                "ratio is what the second TCP hop alone costs with client, relay and server on these cores."]
    out.append("")

p = newest("postgres")
budget_lines = []
if p:
    out += [f"## PostgreSQL: pgbench ({p['date']}, {p['machine']}, scale {p['scale']}, "
            f"{p['seconds']} s per run, load {p['loadavg_start']} → {p['loadavg_end']})", "",
            "TPS and latency as ratios to direct in the same run (TPS: higher is better; latency "
            "and CPU: lower is better). CPU/tx is everything the benchmark started (pgbench, "
            "proxy, PostgreSQL) per transaction; proxy CPU/tx is the proxy process alone. airlock-allow: `rules: []`, `default: allow` "
            "(statements are still classified, through the cache); airlock-full: workload identity, "
            "ordered rules over command classes and masking rules, allowing the benchmark's reads "
            "and writes; both record every command in the audit log (`fsync: batch`, the default). "
            "airlock-full-noaudit: the full policy with the audit log off. bare-relay: netbench "
            "copy-relay, two blocking threads per connection that only read(2) and write(2), "
            "nothing else: the floor for any proxy that reads each message in user space.", "",
            "| workload | clients | path | TPS | TPS vs direct | p50 ms | p50 vs direct | p99 ms | p99 vs direct | CPU µs/tx | CPU vs direct | proxy CPU µs/tx | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for run in p["runs"]:
        groups.setdefault((run["workload"], run["clients"]), {})[run["path"]] = run["result"]
    for (w, c), paths in groups.items():
        d = paths.get("direct", {})
        for path, v in paths.items():
            out.append(f"| {w} | {c} | {path} | {v['tps']:.0f} | {r(v['tps'], d.get('tps'))} | "
                       f"{v['p50_ms']} | {r(v['p50_ms'], d.get('p50_ms'))} | {v['p99_ms']} | "
                       f"{r(v['p99_ms'], d.get('p99_ms'))} | {v['cpu_us_per_tx']} | "
                       f"{r(v['cpu_us_per_tx'], d.get('cpu_us_per_tx'))} | "
                       f"{v['proxy_cpu_us_per_tx'] if path != 'direct' else '–'} | {v['loadavg']} |")
        full, ha, pb, na, bare = (paths.get(k, {}).get("tps") for k in
                                  ("airlock-full", "haproxy", "pgbouncer", "airlock-full-noaudit", "bare-relay"))
        if full and ha and pb:
            ok = full >= ha and full >= 1.2 * pb
            ok_na = bool(na) and na >= ha and na >= 1.2 * pb
            budget_lines.append(f"| {w} | {c} | {r(full, ha)} | {r(full, pb)} | {'met' if ok else 'MISSED'} | "
                                f"{r(na, ha) if na else '–'} | {r(na, pb) if na else '–'} | {('met' if ok_na else 'MISSED') if na else '–'} | "
                                f"{r(bare, ha) if bare else '–'} | {r(bare, pb) if bare else '–'} |")
    out.append("")
    if budget_lines:
        out += ["Budget (issue 3): airlock with the full policy at least matches haproxy and beats "
                "pgbouncer by ≥ 20% (TPS). The last two columns put the bare relay (the floor) "
                "against the same two peers.", "",
                "| workload | clients | full / haproxy | full / pgbouncer | budget | full, audit off / haproxy | … / pgbouncer | budget | bare relay / haproxy | … / pgbouncer |",
                "|---|---|---|---|---|---|---|---|---|---|"] + budget_lines + [""]

m = newest("mysql")
if m:
    out += [f"## MySQL / MariaDB: sysbench ({m['date']}, {m['machine']}, {m['seconds']} s per run, "
            f"load {m['loadavg_start']} → {m['loadavg_end']})", "",
            f"`sysbench {{oltp_read_only,oltp_read_write}} {m['sysbench']}` against MariaDB 10.11 "
            "(prepared statements: the binary protocol).", "",
            "| workload | threads | path | TPS | vs direct | vs haproxy | p95 ms | proxy CPU µs/tx | load |",
            "|---|---|---|---|---|---|---|---|---|"]
    runs = m["runs"]
    def find(path, w, t):
        for x in runs:
            if x["path"] == path and x["workload"] == w and x["threads"] == t:
                return x["result"]
        return None
    verdicts = []
    for x in runs:
        res, w, t = x["result"], x["workload"], x["threads"]
        d, h = find("direct", w, t), find("haproxy", w, t)
        cpu = res.get("proxy_cpu_us_per_tx")
        out.append(f"| {w} | {t} | {x['path']} | {res.get('tps')} | {r(res.get('tps'), d and d.get('tps'))} | "
                   f"{r(res.get('tps'), h and h.get('tps'))} | {res.get('latency_p95_ms')} | "
                   f"{f'{cpu:.1f}' if cpu else '–'} | {res.get('loadavg')} |")
    for t in sorted({x["threads"] for x in runs}):
        a, h = find("airlock-full", "oltp_read_only", t), find("haproxy", "oltp_read_only", t)
        mk = find("airlock-masked", "oltp_read_only", t)
        if a and h and a.get("tps") and h.get("tps"):
            ok = a["tps"] >= h["tps"]
            verdicts.append(f"oltp_read_only, {t} threads: airlock {a['tps']:.0f} vs haproxy {h['tps']:.0f} TPS "
                            f"({a['tps'] / h['tps']:.2f}×): {'met' if ok else 'MISSED'}")
        if a and mk and a.get("tps") and mk.get("tps"):
            q = mk["tps"] / a["tps"]
            verdicts.append(f"masked vs unmasked, {t} threads: {q:.2f}: {'met' if q >= 0.85 else 'MISSED'}")
    out += ["", "Budgets (issue 19): airlock ≥ haproxy TPS on oltp_read_only; masked vs unmasked ≥ 0.85."]
    out += [f"- {v}" for v in verdicts]
    out.append("")

s = newest("scale")
if s:
    pg, tcp = s["idle_postgres_sessions"], s["idle_tcp_connections"]
    out += [f"## Scale ({s['date']}, {s['machine']}, load {s['loadavg']['start']} → {s['loadavg']['end']})", "",
            "| measure | airlock | direct | vs direct | budget |", "|---|---|---|---|---|",
            f"| daemon memory per idle PostgreSQL session ({pg.get('connections')} sessions, RSS delta / N) | "
            f"{pg.get('kib_per_session')} KiB | – | – | < 64 KiB: {'met' if (pg.get('kib_per_session') or 1e9) < 64 else 'MISSED'} |",
            (f"| {tcp.get('connections')} concurrent idle intercepted TCP connections: daemon RSS delta / N | "
             f"{tcp.get('kib_per_session')} KiB | – | – | 10,000: "
             + ("met" if tcp.get("connections", 0) >= 10000 else
                f"not reachable here: two fds per connection, hard RLIMIT_NOFILE {s.get('fd_hard_limit', '?')} "
                "(no CAP_SYS_RESOURCE to raise it); this is the most that fits")
             + " |") if not tcp.get("error") else
            ("| ~10,000 concurrent idle intercepted TCP connections | FAILED: " + tcp.get("reason", "see the run's log")
             + " | – | – | |"),
            f"| … daemon fds with them all open (two per connection) | {tcp.get('fds_after', '–')} | – | – | |"]
    big = [k for k in s if k.startswith("pgbench_")]
    if big:
        b = s[big[0]]
        d = b.get("direct", {})
        n = big[0].split("_")[1]
        for path, v in b.items():
            out.append(f"| {n} pgbench clients (-S, prepared), {path}: TPS | {v['tps']:.0f} | {d.get('tps', 0):.0f} | {r(v['tps'], d.get('tps'))} | |")
            out.append(f"| … {path}: p99 ms | {v['p99_ms']} | {d.get('p99_ms')} | {r(v['p99_ms'], d.get('p99_ms'))} | |")
            out.append(f"| … {path}: CPU µs per query (all processes) | {v['cpu_us_per_tx']} | {d.get('cpu_us_per_tx')} | {r(v['cpu_us_per_tx'], d.get('cpu_us_per_tx'))} | |")
    out.append("")

k = newest("soak")
if k:
    verdict = ("passed" if k["passed"] else "FAILED: " + "; ".join(k.get("failures", []))) if "passed" in k else "not judged (an older run)"
    phases = [("idle before", k.get("idle_before")), ("start (under load)", k["start"]),
              ("end (under load)", k["end"]), ("idle after", k.get("idle_after"))]
    phases = [(n, v) for n, v in phases if v]
    row = lambda label, key: f"| {label} | " + " | ".join("–" if v.get(key) is None else str(v[key]) for _, v in phases) + " |"  # noqa: E731
    out += [f"## Soak ({k['date']}, {k['machine']}, {k['minutes']} minutes): {verdict}", "",
            "Mixed load through the daemon (bench/soak.sh, soak.py): reads, masked selects, writes, "
            "writes held for review and approved by an automatic approver (the admin token: a "
            "second identity), clients that go away while held, cancels, and disconnects "
            "mid-result; every session recorded. Start and end are the first sample after the "
            "warm-up and the last one under load.", "",
            "| | " + " | ".join(n for n, _ in phases) + " |", "|---" * (len(phases) + 1) + "|",
            row("daemon RSS KiB", "rss_kb"), row("daemon open fds", "fds"),
            row("active sessions", "sessions_active"), row("pending approval requests", "pending"),
            row("load average", "loadavg"), ""]
    ops = k["operations"]
    out += ["| worker | ok | expected errors (on purpose) | unexpected errors |", "|---|---|---|---|"]
    for w, v in ops.items():
        out.append(f"| {w} | {v['ok']} | {v['expected_errors']} | {v.get('unexpected_errors', '–')} |")
    out.append("")
    m = k.get("masked_values", {})
    notes = [f"RSS growth under load {k.get('rss_growth_kb')} KiB, fd growth {k.get('fd_growth')}"
             + (f"; RSS KiB at each tenth of the load: {k['rss_kb_by_tenth']}" if "rss_kb_by_tenth" in k else ""),
             f"unexpected errors: {k['unexpected_errors']}"
             + (f"; cancels repeated after 2 s: {k['cancel_repeats']}" if "cancel_repeats" in k else "")
             + (f"; first cancel → client's error: p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, max {c['max_ms']} ms"
                if (c := k.get("cancel_to_error")) else ""),
             f"masked values seen by the client: {m.get('masked')} masked, {m.get('unmasked')} raw"]
    a = k.get("approvals")
    if isinstance(a, dict):
        def lat(x):
            return f"p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms (n {x['n']})" if x else "–"
        notes.append(f"approvals: {a['approved']} approved, {a.get('withdrawn')} withdrawn (the client went "
                     f"away while held; {a.get('approve_conflicts')} approve calls came too late), "
                     f"{a['approve_errors']} approve errors; approve "
                     f"call → held command done: {lat(a.get('approve_to_done'))}; held command's whole "
                     f"wait: {lat(a.get('held_wait'))}; approval requests per held write "
                     f"{json.dumps(a.get('requests_per_held_write'))}; daemon outcomes {json.dumps(a.get('daemon_outcomes'))}")
        p_end = k.get("pending", {}).get("after_load")
        if p_end:
            notes.append(f"pending after the load (metric, CLI, store): {p_end.get('metric')}, {p_end.get('cli')}, {p_end.get('store')}")
    else:
        notes.append(f"approvals: {a or '–'}")
    notes.append(f"audit verify: {k['audit_verify']}")
    out += [f"- {n}" for n in notes]
    out += ["", "The soak runs separately (bench/soak.sh, SOAK_MINUTES, 30 by default); this summary "
            f"is from a {k['minutes']}-minute run.", ""]

u = newest("upgrade")
if u:
    runs = u["runs"]
    out += [f"## Upgrades under load ({u['date']}, {u['machine']}, load {u['loadavg']['start']} → {u['loadavg']['end']})", "",
            f"{u['workers']} intercepted clients make connection attempts one after another for {u['seconds']:g} s; "
            "halfway through the daemon is upgraded in place, or restarted; haproxy's seamless reload "
            "(`-x` stats socket, `-sf`) is the peer doing the same job for a plain TCP proxy.", "",
            "| path | attempts/s | vs steady | refused | reset | timed out | worst 100 ms vs median |",
            "|---|---|---|---|---|---|---|"]
    for name, k, base in [("airlock, steady", "steady", "steady"),
                          ("airlock, `airlock upgrade` halfway", "upgrade", "steady"),
                          ("airlock, stop + start halfway", "restart", "steady"),
                          ("haproxy, steady (peer)", "haproxy_steady", "haproxy_steady"),
                          ("haproxy, seamless reload halfway (peer)", "haproxy_reload", "haproxy_steady")]:
        if k not in runs:
            continue
        v, f = runs[k], runs[k]["failed"]
        out.append(f"| {name} | {v['attempts_per_s']} | {r(v['attempts_per_s'], runs[base]['attempts_per_s'])} | "
                   f"{f['refused']} | {f['reset']} | {f['timeout'] + f['other']} | {v['worst_100ms_vs_median']} |")
    if "upgrade" in runs:
        f = runs["upgrade"]["failed"]
        out += ["", f"Budget (issue 24): no attempt refused or reset across an upgrade: "
                f"{f['refused']} refused, {f['reset']} reset, {'met' if f['refused'] == 0 and f['reset'] == 0 else 'MISSED'}."]
    out.append("")

print("\n".join(out))
