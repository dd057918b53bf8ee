#!/usr/bin/env python3
"""Turns a bench/compare.sh run directory (raw.tsv + meta.env) into a markdown report of
medians and ratios against fastwebsockets. Usage: report.py RUN_DIR"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

SERVERS = ["duplex", "fastwebsockets", "tungstenite"]
TITLES = {"duplex": "duplex", "fastwebsockets": "fastwebsockets", "tungstenite": "tokio-tungstenite"}
SCENARIO_ORDER = ["100x20B", "100x1KiB", "10x64KiB", "1000x20B"]


def load(run: Path):
    values = defaultdict(list)
    for line in (run / "raw.tsv").read_text().splitlines():
        if not line.strip():
            continue
        server, scenario, metric, _rep, value = line.split("\t")
        try:
            values[(server, scenario, metric)].append(float(value))
        except ValueError:
            pass
    meta = {}
    for line in (run / "meta.env").read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key] = value
    return values, meta


def median(values, key):
    got = values.get(key)
    return statistics.median(got) if got else None


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def main():
    run = Path(sys.argv[1])
    values, meta = load(run)
    servers = [s for s in SERVERS if any(k[0] == s for k in values)]
    scenarios = [s for s in SCENARIO_ORDER if any(k[1] == s for k in values)]
    instr = meta.get("instr", "?")
    out = []
    w = out.append

    w("# duplex vs fastwebsockets vs tokio-tungstenite")
    w("")
    mode = {
        "perf": "hardware counters (`perf stat -e instructions,instructions:u,cycles -p PID`): "
        "total and user-space instructions",
        "callgrind": "**callgrind** (hardware counters not available here): user-space "
        "instructions only; total (user + kernel) instructions are n/a. glibc's `rep movsb`/"
        "`rep stosb` paths are turned off under callgrind (GLIBC_TUNABLES), which would count "
        "them per byte where hardware counters count one instruction: copies and fills count "
        "as vector loops, shown separately as \"of which libc memcpy/memmove/memset\"",
        "none": "not measured (neither perf counters nor valgrind available)",
    }.get(instr, instr)
    w(f"- Command: `{meta.get('command', 'bench/compare.sh')}`; "
      f"{meta.get('reps')} repetition(s), medians shown; wall time "
      f"{int(meta.get('elapsed', 0)) // 60} min {int(meta.get('elapsed', 0)) % 60} s "
      f"(of which builds {meta.get('build_secs')} s).")
    w(f"- Machine: {meta.get('cpu')}, {meta.get('kernel')}, load average before the run "
      f"{meta.get('loadavg_start')}; server pinned to CPU 0, generator (`duplex bench`, one "
      f"thread) to CPU 1; 127.0.0.1.")
    w(f"- Versions: duplex {meta.get('duplex_rev')}, fastwebsockets {meta.get('fastwebsockets')}, "
      f"tokio-tungstenite {meta.get('tokio_tungstenite')}.")
    threads = ", ".join(
        f"{TITLES[s]} {fmt(median(values, (s, 'all', 'threads')))}" for s in servers
    )
    w(f"- Server threads: {threads}"
      + ("" if meta.get("duplex_serve_threads_flag") == "yes"
         else " (this `duplex serve` has no `--threads`: its multi-thread runtime ran pinned "
         "to one core)") + ".")
    w(f"- Instructions: {mode}; exact windows of {meta.get('instr_msgs')} echoes "
      f"(small/64 KiB) and {meta.get('instr_hs')} handshakes, after warm-up.")
    w(f"- Messages: {meta.get('payload')}; throughput windows {meta.get('duration')} s after "
      f"{meta.get('warmup')} s warm-up; idle test {meta.get('idle')} connections.")
    w("")

    def row(label, metric_key, digits=0, target=None, scale=1.0):
        cells = [median(values, (s, *metric_key[0:1], metric_key[1])) for s in servers]
        cells = [None if c is None else c * scale for c in cells]
        d = cells[servers.index("duplex")] if "duplex" in servers else None
        f = cells[servers.index("fastwebsockets")] if "fastwebsockets" in servers else None
        r = ratio(d, f)
        line = f"| {label} | " + " | ".join(fmt(c, digits) for c in cells)
        line += f" | {fmt(r, 2)}"
        if target is not None:
            verdict = "n/a" if r is None else ("met" if r <= target else "**not met**")
            line += f" | <= {target} | {verdict} |"
        else:
            line += " | | |"
        return line

    head = "| | " + " | ".join(TITLES[s] for s in servers) + " | duplex / fws | target | |"
    sep = "|---" * (len(servers) + 4) + "|"

    w("## Work per echoed message (server side)")
    w("")
    w(head)
    w(sep)
    for sc in scenarios:
        w(row(f"{sc}: user-space instructions / msg", (sc, "instr_user"), target=0.5))
        if any(k[1] == sc and k[2] == "instr_mem" for k in values):
            w(row(f"{sc}: ... of which libc memcpy/memmove/memset", (sc, "instr_mem")))
        w(row(f"{sc}: total instructions / msg", (sc, "instr_total"), target=0.95))
        w(row(f"{sc}: server CPU ns / msg (user+sys)", (sc, "cpu_ns_per_msg")))
        w(row(f"{sc}: server page faults / msg", (sc, "minflt_per_msg"), digits=2))
    w("")
    w("Server CPU ns/msg is the server's utime+stime (`/proc/PID/stat`, all threads) over the "
      "non-instrumented throughput window divided by the echoes in it: a total-cost proxy "
      "that needs no counters, at 10 ms tick resolution. Page faults are the server's minor faults "
      "over the same window (memory given back to the kernel and faulted in again).")
    w("")

    w("## Throughput and latency (not a target; no instrumentation)")
    w("")
    w(head)
    w(sep)
    for sc in scenarios:
        w(row(f"{sc}: msgs/s", (sc, "msgs_per_sec")))
        w(row(f"{sc}: round trip p50 us", (sc, "p50_us"), digits=1))
        w(row(f"{sc}: round trip p99 us", (sc, "p99_us"), digits=1))
        w(row(f"{sc}: server CPU busy %", (sc, "cpu_pct")))
        w(row(f"{sc}: CPU 0 softirq %", (sc, "cpu0_softirq_pct")))
        w(row(f"{sc}: CPU 0 busy with anything else %", (sc, "cpu0_other_pct")))
    w("")

    w("msgs/s is what one generator core gets through one server core: below ~95% server "
      "CPU busy, the generator (or the round trips) set the pace, not the server. CPU 0 softirq "
      "is the kernel's network work on the server's core (not charged to the process). \"CPU 0 "
      "busy with anything else\" is interference (other processes on the server's core): the "
      "throughput figures are only as good as it is small.")
    w("")
    w("## Connections")
    w("")
    w(head)
    w(sep)
    w(row("idle memory, KiB per upgraded connection", ("idle", "kib_per_conn"), digits=2))
    w(row("user-space instructions per handshake", ("handshake", "instr_user")))
    if any(k[1] == "handshake" and k[2] == "instr_mem" for k in values):
        w(row("... of which libc memcpy/memmove/memset", ("handshake", "instr_mem")))
    w(row("total instructions per handshake", ("handshake", "instr_total")))
    w(row("handshakes/s (sequential: connect, upgrade, close)", ("handshake", "per_sec")))
    w("")
    w("Targets from the issue: idle memory <= 1 KiB per connection (absolute); instructions per "
      "handshake <= fastwebsockets' (total instructions in the issue; user-space here when only "
      "callgrind is available).")
    idle = median(values, ("duplex", "idle", "kib_per_conn"))
    hs = ratio(median(values, ("duplex", "handshake", "instr_total")) or median(values, ("duplex", "handshake", "instr_user")),
               median(values, ("fastwebsockets", "handshake", "instr_total")) or median(values, ("fastwebsockets", "handshake", "instr_user")))
    w("")
    w(f"- idle memory: {fmt(idle, 2)} KiB/connection: "
      + ("n/a" if idle is None else ("met" if idle <= 1.0 else "**not met**")))
    w(f"- instructions per handshake vs fastwebsockets: {fmt(hs, 2)}x: "
      + ("n/a" if hs is None else ("met" if hs <= 1.0 else "**not met**")))
    failed = sum(v for (s, sc, m), vs in values.items() if m == "failed" for v in vs)
    if failed:
        w(f"- {failed:.0f} idle connections failed to open (see the run's logs).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
