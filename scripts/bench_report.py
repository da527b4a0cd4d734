#!/usr/bin/env python3
"""Render scripts/bench.sh results as markdown (stdout).

Input: $RESULTS, a TSV written by bench.sh with lines
  "<workload> <mode> <clients>" TAB target TAB tps TAB latency_ms TAB conn_ms TAB status TAB cpu TAB round TAB busy TAB idle TAB faults
  "connect <clients>"          TAB target TAB tps TAB latency_ms TAB conn_ms TAB status TAB cpu TAB round TAB busy TAB idle TAB faults
  "idle <target>"              TAB exit code TAB JSON from idle_clients.py
and the run's metadata in environment variables. cpu is the proxy process's
CPU time per transaction (µs), busy and idle the whole machine's (every CPU,
every process), faults the machine's page faults per transaction, "-" where
not measured.
"""

import datetime
import json
import os
import statistics

env = os.environ.get
runs, idle = {}, {}
order = []
with open(env("RESULTS")) as f:
    for line in f:
        parts = line.rstrip("\n").split("\t")
        if parts[0].startswith("idle "):
            target = parts[0].split(" ", 1)[1]
            try:
                idle[target] = json.loads(parts[2]) if parts[2] else None
            except (IndexError, json.JSONDecodeError):
                idle[target] = None
            continue
        key, target, tps, lat, conn, status, cpu, rnd, busy, idle_us, pf = parts
        if key not in runs:
            runs[key] = {}
            order.append(key)
        runs[key].setdefault(target, []).append({
            "tps": float(tps) if tps != "-" else None,
            "lat": float(lat) if lat != "-" else None,
            "conn": float(conn) if conn != "-" else None,
            "status": status,
            "cpu": int(cpu) if cpu != "-" else None,
            "busy": int(busy) if busy != "-" else None,
            "idle": int(idle_us) if idle_us != "-" else None,
            "faults": float(pf) if pf != "-" else None,
            "round": int(rnd),
        })


def median_run(rs):
    """One row for a target's runs of a case: the median of each figure over
    its runs; any failed run makes the row fail."""
    bad = [r for r in rs if r["status"] != "ok" or r["tps"] is None]
    if bad:
        return {"status": f"{bad[0]['status']} ({len(bad)}/{len(rs)})", "tps": None,
                "lat": None, "conn": None, "cpu": None, "busy": None, "idle": None, "faults": None,
                "by_round": {}}

    def med(field):
        xs = [r[field] for r in rs if r[field] is not None]
        return statistics.median(xs) if xs else None
    return {"status": "ok", "tps": med("tps"), "lat": med("lat"), "conn": med("conn"),
            "cpu": med("cpu"), "busy": med("busy"), "idle": med("idle"), "faults": med("faults"),
            "by_round": {r["round"]: r["tps"] for r in rs}}


rows = {key: {t: median_run(rs) for t, rs in targets.items()} for key, targets in runs.items()}


def spread(a, b):
    """min–max of the per-round TPS ratio a / b (runs of one round are
    adjacent in time, so they saw the same machine)."""
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return "–"
    rs = [a["by_round"][k] / b["by_round"][k] for k in a["by_round"]
          if k in b["by_round"] and b["by_round"][k]]
    if not rs:
        return "–"
    return f"{min(rs):.2f}–{max(rs):.2f}"


def tps(r):
    if r is None:
        return "n/a"
    if r["status"] != "ok" or r["tps"] is None:
        return f"**{r['status']}**"
    return f"{r['tps']:,.0f}"


def ms(r, field="lat"):
    if r is None or r["status"] != "ok" or r[field] is None:
        return "–"
    return f"{r[field]:.3f}"


def ratio(a, b):
    if not a or not b or a["status"] != "ok" or b["status"] != "ok" or not b["tps"]:
        return "–"
    return f"{a['tps'] / b['tps']:.2f}"


def faults(r):
    if r is None or r["status"] != "ok" or r["faults"] is None:
        return "–"
    return f"{r['faults']:.2f}"


def cpu(r, field="cpu"):
    if r is None or r["status"] != "ok" or r[field] is None:
        return "–"
    return f"{r[field]:.0f}"


def added(a, b):
    """Latency added by a proxy over direct, in microseconds."""
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return "–"
    if a["lat"] is None or b["lat"] is None:
        return "–"
    return f"{(a['lat'] - b['lat']) * 1000:+.0f}"


print(f"## tierwarden vs PostgreSQL vs PgBouncer — {datetime.date.today().isoformat()}")
print()
print(f"- machine: {env('NPROC')} CPUs ({env('CPU_MODEL')}), {env('MEM_TOTAL')} RAM, "
      f"Linux {env('KERNEL')}; everything (pgbench, PostgreSQL, proxies) on this machine, "
      "over 127.0.0.1")
autogroup = {"1": "on", "0": "off"}.get(env("AUTOGROUP"), "unknown")
print(f"- scheduler autogroups: {autogroup} (pgbench and both proxies run in this script's "
      "session, PostgreSQL in its own: see docs/benchmarks.md)")
print(f"- {env('PG_VERSION')}; {env('PGB_VERSION')}; {env('PGBENCH_VERSION')}; "
      f"tierwarden {env('COMMIT')} (release build)")
print(f"- pgbench scale {env('SCALE')}, {env('ROUNDS')} rounds of {env('T')} s per target and "
      "case (target order rotated per round; each figure is the median of its runs), "
      "`-n`, `-j` = min(clients, CPUs); "
      "PostgreSQL `synchronous_commit=off`; PgBouncer session mode; tierwarden env dev, "
      "role app_runtime (level rw), no TLS, policy + metrics + audit on, "
      f"`upstream_pool_size = {env('TW_POOL')}` (the largest client count: tierwarden "
      "keeps as many warm upstream sessions between runs as PgBouncer keeps server "
      "connections)")
print(f"- run took {env('ELAPSED')} s; tierwarden counted {env('COUNTED')} statements "
      "(`tierwarden_queries_total`); load average (1/5/15 min) "
      f"{env('LOAD_BEFORE')} before, {env('LOAD_AFTER')} after")
print()
print("TPS (higher is better), mean latency in ms, ratios of TPS.")
print()
aa = any("pgbouncer-b" in r for r in rows.values())
aa_head, aa_rule = ("| PgBouncer B / PgBouncer (A/A) | A/A per round ", "--:|--:|") if aa else ("", "")
print("| workload | protocol | clients | direct TPS | direct ms "
      "| PgBouncer TPS | PgBouncer ms | PgBouncer / direct "
      "| tierwarden TPS | tierwarden ms | tierwarden / direct | tierwarden / PgBouncer "
      f"| tierwarden / PgBouncer per round {aa_head}|")
print(f"|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|{aa_rule}")
aa_ratios = []
prod = None
cases = []
for key in order:
    if key.startswith("connect"):
        continue
    workload, mode, clients = key.split(" ")
    r = rows[key]
    d, b, t = r.get("direct"), r.get("pgbouncer"), r.get("tierwarden")
    if "tierwarden-prod-tls" in r:
        prod = (key, r["tierwarden-prod-tls"])
    if d is None:
        continue
    a2 = r.get("pgbouncer-b")
    cases.append((workload, mode, clients, d, b, t, a2))
    aa_cells = f" {ratio(a2, b)} | {spread(a2, b)} |" if aa else ""
    if a2 and b and a2["status"] == "ok" and b["status"] == "ok" and b["tps"]:
        aa_ratios.append(a2["tps"] / b["tps"])
    print(f"| {workload} | {mode} | {clients} | {tps(d)} | {ms(d)} "
          f"| {tps(b)} | {ms(b)} | {ratio(b, d)} "
          f"| {tps(t)} | {ms(t)} | {ratio(t, d)} | {ratio(t, b)} | {spread(t, b)} |{aa_cells}")
if aa_ratios:
    print()
    print("A/A control: \"PgBouncer B\" is a second PgBouncer, identical to the first, "
          "in the same rotation. Its ratio to the first is what this machine reports "
          f"for two equal proxies: {min(aa_ratios):.2f}–{max(aa_ratios):.2f} over the "
          f"{len(aa_ratios)} cases (median {statistics.median(aa_ratios):.2f}). A tierwarden "
          "÷ PgBouncer ratio inside that band is not distinguishable from equal by TPS on "
          "this run; the CPU tables below are.")

print()
print("Cost of each proxy: mean latency added over direct (µs per transaction, "
      "from the table above) and the proxy process's CPU time (user + system, "
      "/proc/PID/stat) per transaction. A select-only transaction is one "
      "statement, a TPC-B-like one is seven.")
print()
aa_cpu_head, aa_cpu_rule = ("| PgBouncer B CPU µs/tx ", "--:|") if aa else ("", "")
print("| workload | protocol | clients | PgBouncer +µs | tierwarden +µs "
      f"| PgBouncer CPU µs/tx {aa_cpu_head}| tierwarden CPU µs/tx |")
print(f"|---|---|--:|--:|--:|--:|{aa_cpu_rule}--:|")
for workload, mode, clients, d, b, t, a2 in cases:
    aa_cpu = f" {cpu(a2)} |" if aa else ""
    print(f"| {workload} | {mode} | {clients} | {added(b, d)} | {added(t, d)} "
          f"| {cpu(b)} |{aa_cpu} {cpu(t)} |")

print()
print("Whole machine: CPU time of every process on it (pgbench, PostgreSQL, the "
      "proxy, the kernel's network work; /proc/stat) per transaction, and the CPU "
      "time left idle per transaction. Busy minus direct's busy is what the proxy "
      "costs the machine, its own CPU and what it makes the others do; idle time "
      "while clients wait is throughput lost to wake-up delays. Page faults per "
      "transaction (the whole machine, /proc/vmstat): a fresh PostgreSQL backend "
      "takes one for every page of shared memory it touches first.")
print()
print("| workload | protocol | clients | direct busy µs/tx | PgBouncer busy µs/tx "
      "| tierwarden busy µs/tx | direct idle | PgBouncer idle | tierwarden idle "
      "| PgBouncer faults/tx | tierwarden faults/tx |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for workload, mode, clients, d, b, t, _ in cases:
    print(f"| {workload} | {mode} | {clients} | {cpu(d, 'busy')} | {cpu(b, 'busy')} "
          f"| {cpu(t, 'busy')} | {cpu(d, 'idle')} | {cpu(b, 'idle')} | {cpu(t, 'idle')} "
          f"| {faults(b)} | {faults(t)} |")

if prod:
    key, p = prod
    d = rows[key].get("direct")
    print()
    print(f"Production path ({key.replace(' ', ', ')} clients): tierwarden env prod, "
          "TLS `sslmode=verify-full`, every statement audited (hash-chained JSONL, "
          "fsync interval), role app_runtime → upstream tw_prod_rw, database app_prod "
          "(same size); compared with the direct run above (no TLS).")
    print()
    print("| target | TPS | ms | / direct | +µs | CPU µs/tx |")
    print("|---|--:|--:|--:|--:|--:|")
    print(f"| tierwarden prod (TLS + full audit) | {tps(p)} | {ms(p)} | {ratio(p, d)} "
          f"| {added(p, d)} | {cpu(p)} |")

conn = [k for k in order if k.startswith("connect")]
if conn:
    key = conn[0]
    r = rows[key]
    d = r.get("direct")
    print()
    print(f"Connection setup: `pgbench -C -S -M simple -c {env('CONN_C')}` (a new connection, "
          "with SCRAM authentication, for every transaction). TPS ≈ connections per second.")
    print()
    print("| target | connections/s | mean connection time ms | / direct "
          "| proxy CPU µs/connection |")
    print("|---|--:|--:|--:|--:|")
    for target, label in (("direct", "direct"), ("pgbouncer", "PgBouncer"),
                          ("tierwarden", "tierwarden")):
        x = r.get(target)
        print(f"| {label} | {tps(x)} | {ms(x, 'conn')} | {ratio(x, d)} | {cpu(x)} |")

if idle:
    print()
    print(f"Memory: resident set size of the proxy process with {env('IDLE')} idle "
          "authenticated client sessions (each with its upstream connection), from "
          "/proc/PID/status.")
    print()
    print("| proxy | sessions open | RSS before MiB | RSS with sessions MiB "
          "| peak (VmHWM) MiB | KiB per session | time to open s |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for target, label in (("tierwarden", "tierwarden"), ("pgbouncer", "PgBouncer")):
        j = idle.get(target)
        if not j:
            print(f"| {label} | **FAIL** | | | | | |")
            continue
        n = j["opened"]
        per = (j["rss_kib"] - j["rss_before_kib"]) / n if n else 0
        fail = f" ({j['failed']} failed: {j['first_error']})" if j["failed"] else ""
        print(f"| {label} | {n}{fail} | {j['rss_before_kib'] / 1024:.1f} "
              f"| {j['rss_kib'] / 1024:.1f} | {j['hwm_kib'] / 1024:.1f} | {per:.0f} "
              f"| {j['seconds']} |")
