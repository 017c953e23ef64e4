#!/usr/bin/env python3
"""Memory of gatehouse binaries (or of one binary under several environments) beside nginx,
with the CPU per request as the price of any saving, in the same interleaved runs.

For each row: RSS right after start; CPU per proxied request (wrk, 64 connections, the
proxy on core 0, backend and wrk on core 1, as in compare.py); then RSS and the peak (VmHWM)
with 1,000 keep-alive connections that each sent one request, and the growth per connection;
the split of the RSS at start into file-backed, anonymous and transparent-huge-page memory.

Usage: benches/load/memory.py [--duration 5] [--repeat 3] [--idle 1000] [--max-idle 256]
                              [--row NAME=BINARY[:ENV=VALUE,...]] ...
Without --row: the release build. A row's ENV lets one binary be measured under several
allocator settings (e.g. MIMALLOC_ARENA_EAGER_COMMIT=0).
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
import compare  # noqa: E402  (the shared helpers: backend, wrk, CPU ticks)


def smaps(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    return out


def rss_kb(pid):
    return smaps(pid)["Rss"]


def parse_row(text):
    name, rest = text.split("=", 1)
    binary, _, envs = rest.partition(":")
    env = dict(kv.split("=", 1) for kv in envs.split(",") if kv)
    return name, binary, env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--row", action="append", default=[], help="NAME=BINARY[:ENV=VALUE,...]")
    ap.add_argument("--max-idle", type=int, default=256,
                    help="gatehouse's idle upstream connections (pool.max_idle; compare.py: 256, nginx: keepalive 64)")
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    rows = [parse_row(r) for r in args.row]
    if not rows:
        binary = compare.release_gatehouse()
        rows = [("gatehouse", binary, {})]
    tmp = tempfile.mkdtemp(prefix="gatehouse-memory-")
    os.chmod(tmp, 0o755)
    procs = []
    try:
        backend = compare.start_backend(nginx, tmp, procs)
        started = {}
        port = compare.free_port()
        with open(f"{tmp}/proxy.conf", "w") as f:
            f.write(compare.NGINX_PROXY.format(dir=tmp, port=port, backend=backend))
        p = compare.start_proxy(procs, [nginx, "-c", f"{tmp}/proxy.conf", "-p", tmp], tmp, "nginx")
        compare.wait_port(port)
        time.sleep(0.5)
        started["nginx proxy"] = (p, port)
        for name, binary, env in rows:
            port, admin = compare.free_port(), compare.free_port()
            cfg = f"{tmp}/{len(started)}.yaml"
            with open(cfg, "w") as f:
                f.write(compare.gatehouse_config(port, admin, backend, "none", "off")
                        .replace("max_idle: 256", f"max_idle: {args.max_idle}"))
            p = subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", cfg],
                                 env=dict(os.environ, RUST_LOG="warn", **env),
                                 stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/{len(started)}.err", "w"))
            procs.append(p)
            compare.wait_port(port)
            time.sleep(0.5)
            started[name] = (p, port)
        at_start = {}
        for name, (p, _) in started.items():
            m = [smaps(x) for x in compare.with_children(p.pid)]
            at_start[name] = {k: sum(s.get(k, 0) for s in m) for k in ("Rss", "Anonymous", "AnonHugePages")}
        cpu = {name: [] for name in started}
        for _ in range(args.repeat):
            for name, (p, port) in started.items():
                before = compare.children_ticks(p.pid)
                r = compare.run_wrk(port, args.duration, args.connections, [])
                after = compare.children_ticks(p.pid)
                cpu[name].append((after - before) / compare.CLK_TCK / max(r["requests"], 1) * 1e6)
        idle = {}
        for name, (p, port) in started.items():
            pids = compare.with_children(p.pid)
            before = sum(rss_kb(x) for x in pids)
            socks = compare.idle_connections(port, args.idle)
            now = sum(rss_kb(x) for x in pids)
            idle[name] = (before, now, compare.rss_hwm_kb(p.pid))
            for s in socks:
                s.close()
        base_cpu = statistics.median(cpu["nginx proxy"])
        base_hwm = idle["nginx proxy"][2]
        print(f"\n{args.repeat} interleaved runs of {args.duration}s, {args.connections} connections; "
              f"then {args.idle} keep-alive connections with one request each\n")
        print("| row | RSS at start MiB | of it anonymous / THP MiB | CPU us/req | CPU vs first gatehouse row | "
              f"RSS with {args.idle} conns MiB | growth KiB/conn | peak RSS MiB | peak vs nginx |")
        print("|---|---|---|---|---|---|---|---|---|")
        first = rows[0][0]
        for name in started:
            s = at_start[name]
            c = statistics.median(cpu[name])
            before, now, hwm = idle[name]
            vs = f"{c / statistics.median(cpu[first]):.3f}x" if name != "nginx proxy" else ""
            print(f"| {name} | {s['Rss'] / 1024:.1f} | {s['Anonymous'] / 1024:.1f} / {s['AnonHugePages'] / 1024:.1f} | "
                  f"{c:.1f} | {vs} | {now / 1024:.1f} | {(now - before) / args.idle:.1f} | {hwm / 1024:.1f} | "
                  f"{hwm / base_hwm:.2f}x |")
        print(f"\n(nginx CPU per request: {base_cpu:.1f} us)")
    finally:
        compare.stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
