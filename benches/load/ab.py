#!/usr/bin/env python3
"""Paired A/B of two gatehouse builds: CPU per request, no plugins and the full chain.

compare.py measures every row in the same order each round; on a shared, noisy machine a
slow minute then lands on whichever row runs in it. Here the two builds run back to back,
in alternating order, and each pair gives a ratio; the median of the ratios is the result.

    benches/load/ab.py NEW_BINARY OLD_BINARY [--repeat 8] [--duration 5]

The configs, backend, wrk and CPU accounting are compare.py's (proxy on core 0, backend and
wrk on core 1, 64 connections).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("new")
    ap.add_argument("old")
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gatehouse-ab-")
    os.chmod(tmp, 0o755)
    procs = []
    nginx = "/usr/sbin/nginx"
    try:
        backend = c.start_backend(nginx, tmp, procs)
        token = c.jwt()
        rows = {}
        for label, exe in [("new", args.new), ("old", args.old)]:
            for chain, log in [("none", "off"), ("full", f"{tmp}/{label}-access.log")]:
                port, admin = c.free_port(), c.free_port()
                cfg = f"{tmp}/{label}-{chain}.yaml"
                with open(cfg, "w") as f:
                    f.write(c.gatehouse_config(port, admin, backend, chain, log))
                headers = [f"Authorization: Bearer {token}", "Origin: https://app.example.com"] if chain == "full" else []
                p = c.start_proxy(procs, [os.path.abspath(exe), "run", "-c", cfg], tmp, f"{label}-{chain}")
                rows[(label, chain)] = (p, port, headers)
        for p, port, _ in rows.values():
            c.wait_port(port)
        time.sleep(2.5)  # first health round, warm pools
        cpu = {k: [] for k in rows}
        for rep in range(args.repeat):
            for chain in ("none", "full"):
                for label in (("new", "old") if rep % 2 == 0 else ("old", "new")):
                    p, port, headers = rows[(label, chain)]
                    before = c.children_ticks(p.pid)
                    r = c.run_wrk(port, args.duration, 64, headers)
                    after = c.children_ticks(p.pid)
                    cpu[(label, chain)].append((after - before) / c.CLK_TCK / max(r["requests"], 1) * 1e6)
        print(f"\n{args.repeat} pairs of {args.duration}s runs, alternating order\n")
        print("| config | new CPU us/req (median) | old | new/old, median of pairs | pairs |")
        print("|---|---|---|---|---|")
        for chain, name in (("none", "no plugins"), ("full", "full chain")):
            new, old = cpu[("new", chain)], cpu[("old", chain)]
            ratios = [n / o for n, o in zip(new, old)]
            print(f"| {name} | {statistics.median(new):.1f} | {statistics.median(old):.1f} | "
                  f"{statistics.median(ratios):.3f}x | {' '.join(f'{r:.2f}' for r in ratios)} |")
    finally:
        c.stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
