#!/usr/bin/env python3
"""What span export costs per proxied request.

Three gatehouse processes on core 0, one worker each (`threads: 1`), identical but for
`tracing:`: off, `ratio: 0.1` and `ratio: 1.0`, exporting over OTLP/HTTP to a collector that
answers 200 (the nginx backend itself). The nginx backend and wrk (8 connections) on core 1.
Runs interleaved; reported: the process's CPU per request (us; utime + stime of every thread,
the exporter's included) and its ratio to tracing off, plus the spans each exported or
dropped (from its metrics).

Usage: benches/load/tracing.py [--duration 5] [--repeat 3]     (BUILD=0 reuses target/release)
Needs: nginx, wrk, curl, a release build.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import CLK_TCK, cpu_ticks, free_port, release_gatehouse, start_backend, stop_all, wait_port, wrk_path  # noqa: E402

GATEHOUSE = """server:
  listen: ["127.0.0.1:{port}"]
  threads: 1
  access_log: off
  watch_config: false
  log_level: error
admin:
  listen: "127.0.0.1:{admin}"
{tracing}upstreams:
  backend: {{ backends: ["127.0.0.1:{backend}"] }}
routes:
  - {{ id: api, match: {{ path_prefix: /api }}, upstream: backend }}
"""

TRACING = """tracing:
  otlp: {{ endpoint: "http://127.0.0.1:{collector}" }}
  sampling: {{ ratio: {ratio} }}
"""

ROWS = [("tracing off", None), ("tracing, ratio 0.1", 0.1), ("tracing, ratio 1.0", 1.0)]


def metric(admin, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for need in ["wrk", "curl", "taskset"]:
        if not shutil.which(need):
            sys.exit(f"{need} is needed")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    binary = release_gatehouse()
    tmp = tempfile.mkdtemp(prefix="gatehouse-tracing-")
    procs = []
    try:
        backend = start_backend(nginx, tmp, procs)
        gws = {}
        for name, ratio in ROWS:
            port, admin = free_port(), free_port()
            tracing = "" if ratio is None else TRACING.format(collector=backend, ratio=ratio)
            cfg = f"{tmp}/gh-{port}.yaml"
            with open(cfg, "w") as f:
                f.write(GATEHOUSE.format(port=port, admin=admin, backend=backend, tracing=tracing))
            p = subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", cfg],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port)
            gws[name] = (p, port, admin)
        time.sleep(1.0)
        for name, (p, port, admin) in gws.items():
            wrk_path(port, "/api/users/42", 1)  # warm-up
        results = {}
        for _ in range(args.repeat):
            for name, _ in ROWS:
                p, port, admin = gws[name]
                t0 = cpu_ticks(p.pid)
                reqs, non2xx = wrk_path(port, "/api/users/42", args.duration)
                time.sleep(0.7)  # the last batch goes out, on this row's account
                t1 = cpu_ticks(p.pid)
                results.setdefault(name, []).append(((t1 - t0) / CLK_TCK * 1e6 / reqs, reqs / args.duration, non2xx))
        print(f"\n{args.repeat} interleaved runs of {args.duration} s, 8 connections, medians\n")
        print("| row | CPU us/req | vs tracing off | req/s | spans exported | spans dropped |")
        print("|---|---|---|---|---|---|")
        base = statistics.median(r[0] for r in results[ROWS[0][0]])
        for name, _ in ROWS:
            v = results[name]
            us = statistics.median(r[0] for r in v)
            rps = statistics.median(r[1] for r in v)
            _, _, admin = gws[name]
            exported = metric(admin, "gatehouse_trace_spans_exported_total")
            dropped = metric(admin, "gatehouse_trace_spans_dropped_total")
            print(f"| {name} | {us:.1f} | {us / base:.3f}x | {rps:,.0f} | {exported:,.0f} | {dropped:,.0f} |")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
