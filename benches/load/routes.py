#!/usr/bin/env python3
"""Routing table size: gatehouse with 10 routes against gatehouse with 10,000, both in front of
the same nginx backend. Routes are `path_prefix: /rN/` to one upstream; wrk asks for a path in
the middle of each table (`/r5/x`, `/r5000/x`). One worker each on core 0, backend and wrk on
core 1, interleaved runs, medians: req/s and CPU per request of the big table as a ratio of the
small one.

Usage: benches/load/routes.py [--duration 5] [--repeat 3] [--routes 10000]
Needs: nginx and wrk (Debian packages), a release build of gatehouse (built if missing).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (CLK_TCK, children_ticks, free_port, gatehouse_head,  # noqa: E402
                     release_gatehouse, run_wrk, start_backend, stop_all, wait_port)


def config(port, admin, backend, n):
    return gatehouse_head(port, admin, backend) + "".join(
        f"  - {{ id: r{i}, match: {{ path_prefix: /r{i}/ }}, upstream: backend }}\n" for i in range(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--routes", type=int, default=10_000)
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install -y wrk nginx)")
    binary = release_gatehouse()
    tmp = tempfile.mkdtemp(prefix="gatehouse-routes-")
    procs = []
    try:
        backend = start_backend(nginx, tmp, procs)
        rows = {}
        for n in (10, args.routes):
            port, admin = free_port(), free_port()
            cfg = f"{tmp}/routes-{n}.yaml"
            with open(cfg, "w") as f:
                f.write(config(port, admin, backend, n))
            procs.append(subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", cfg],
                                          env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL,
                                          stderr=open(f"{cfg}.err", "w")))
            rows[n] = (procs[-1], port, f"/r{n // 2}/x")
        for _, (_, port, _) in rows.items():
            wait_port(port, timeout=30)
        time.sleep(2.5)
        results = {n: [] for n in rows}
        for _ in range(args.repeat):
            for n, (p, port, path) in rows.items():
                before = children_ticks(p.pid)
                r = run_wrk(port, args.duration, 64, [], path)
                r["cpu_us"] = (children_ticks(p.pid) - before) / CLK_TCK / max(r["requests"], 1) * 1e6
                if r["non2xx"]:
                    sys.exit(f"{n} routes: {r['non2xx']} non-2xx answers")
                results[n].append(r)
        small, big = results[10], results[args.routes]

        def med(rs, key):
            return statistics.median(r[key] for r in rs)

        print(f"\n{args.repeat} interleaved runs of {args.duration}s, 64 connections, medians\n")
        print("| routes | path | req/s | CPU us/req |")
        print("|---|---|---|---|")
        for n, rs in results.items():
            print(f"| {n:,} | {rows[n][2]} | {med(rs, 'rps'):,.0f} | {med(rs, 'cpu_us'):.1f} |")
        print(f"\n{args.routes:,} vs 10 routes: req/s {med(big, 'rps') / med(small, 'rps'):.3f}x, "
              f"CPU per request {med(big, 'cpu_us') / med(small, 'cpu_us'):.3f}x")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
