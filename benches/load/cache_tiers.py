#!/usr/bin/env python3
"""Cache hits by tier: gatehouse's memory tier, gatehouse's disk tier and nginx's proxy_cache
(which keeps every object in a file), for objects of 4 KiB, 64 KiB and 1 MiB, in front of the
same nginx backend serving static files.

The disk row is a gatehouse whose memory tier takes objects of at most 1 KiB, so every hit
is read from its file (lookup, header check, body read and checked chunk by chunk; the files
sit in the page cache, as nginx's do). One worker each on core 0, backend and wrk on core 1,
interleaved runs, medians: req/s and CPU time per hit (the proxy's utime+stime over the hits
served), as ratios. First, on the fresh processes, the memory held while a 512 MiB object
streams from each disk row to a client reading at 200 MB/s (the proxy's RSS sampled every
20 ms, the peak minus the RSS before).

Usage: benches/load/cache_tiers.py [--duration 5] [--repeat 3] [--connections 16]
Needs: nginx, wrk and curl (Debian packages), a release build of gatehouse (built if missing).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (CLK_TCK, children_ticks, free_port, gatehouse_head,  # noqa: E402
                     release_gatehouse, run_wrk, stop_all, wait_port)

SIZES = [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)]
HUGE = 512 << 20

NGINX_FILES = """
worker_processes 1;
daemon off;
pid {dir}/files.pid;
error_log {dir}/files-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {dir}/www;
    location / {{ add_header Cache-Control "public, max-age=3600"; }}
  }}
}}
"""

NGINX_CACHE = """
worker_processes 1;
daemon off;
pid {dir}/cache.pid;
error_log {dir}/cache-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  proxy_cache_path {dir}/nginx-cache levels=1:2 keys_zone=bench:10m max_size=2g;
  proxy_max_temp_file_size 0;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      add_header Cache-Status $upstream_cache_status;
    }}
  }}
}}
"""


def gatehouse_config(port, admin, backend, tmp, tier):
    head = gatehouse_head(port, admin, backend)
    cache = {
        "memory": "  cache: { max_size: 1GiB, max_object_size: 8MiB }\n",
        "disk": f"  cache:\n    max_size: 64MiB\n    max_object_size: 1KiB\n"
                f"    disk: {{ path: {tmp}/gatehouse-disk, max_size: 2GiB, max_object_size: 1GiB }}\n",
    }[tier]
    head = head.replace("  log_level: warn\n", "  log_level: warn\n" + cache)
    return head + """  - id: bench
    upstream: backend
    plugins:
      - cache: { max_object_size: 1GiB }
"""


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def total_rss_kb(pid):
    return rss_kb(pid) + sum(rss_kb(c) for c in children(pid))


def get_status(port, path):
    """GET `path` (body discarded): the cache status header of the answer."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
        while r.read(1 << 20):
            pass
        return r.headers.get("Cache-Status", "")


def stream_peak(pid, port, path):
    """Streams `path` to a client reading at 200 MB/s; the RSS growth of `pid` (KiB) at
    its peak."""
    before = total_rss_kb(pid)
    peak = [before]
    done = threading.Event()

    def sample():
        for _ in range(50_000):
            if done.is_set():
                return
            peak[0] = max(peak[0], total_rss_kb(pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--limit-rate", "200M",
                    f"http://127.0.0.1:{port}{path}"], check=True, timeout=120)
    done.set()
    t.join()
    return peak[0] - before


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not shutil.which("wrk") or not shutil.which("curl"):
        sys.exit("wrk and curl are needed (apt-get install -y wrk nginx curl)")
    binary = release_gatehouse()
    tmp = tempfile.mkdtemp(prefix="gatehouse-cache-tiers-")
    # nginx's workers (not root) read the files and write the proxy_cache below it
    os.chmod(tmp, 0o755)
    procs = []
    try:
        os.makedirs(f"{tmp}/www")
        os.makedirs(f"{tmp}/gatehouse-disk")
        for name, size in SIZES + [("huge", HUGE)]:
            with open(f"{tmp}/www/{name}", "wb") as f:
                f.write(os.urandom(size))
        backend = free_port()
        with open(f"{tmp}/files.conf", "w") as f:
            f.write(NGINX_FILES.format(dir=tmp, port=backend))
        procs.append(subprocess.Popen(["taskset", "-c", "1", nginx, "-c", f"{tmp}/files.conf", "-p", tmp],
                                      stderr=subprocess.DEVNULL))
        wait_port(backend)
        rows = {}
        port = free_port()
        with open(f"{tmp}/cache.conf", "w") as f:
            f.write(NGINX_CACHE.format(dir=tmp, port=port, backend=backend))
        procs.append(subprocess.Popen(["taskset", "-c", "0", nginx, "-c", f"{tmp}/cache.conf", "-p", tmp],
                                      stderr=subprocess.DEVNULL))
        rows["nginx proxy_cache"] = (procs[-1], port)
        for tier in ("memory", "disk"):
            port, admin = free_port(), free_port()
            cfg = f"{tmp}/gatehouse-{tier}.yaml"
            with open(cfg, "w") as f:
                f.write(gatehouse_config(port, admin, backend, tmp, tier))
            procs.append(subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", cfg],
                                          env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL,
                                          stderr=open(f"{cfg}.err", "w")))
            rows[f"gatehouse {tier} tier"] = (procs[-1], port)
        for _, (_, port) in rows.items():
            wait_port(port, timeout=30)
        time.sleep(2.5)
        # fill every cache; check the hits come from where they should
        want = {"nginx proxy_cache": "HIT", "gatehouse memory tier": "gatehouse; hit",
                "gatehouse disk tier": "gatehouse; hit; detail=disk"}
        for row, (_, port) in rows.items():
            for name, _ in SIZES:
                get_status(port, f"/{name}")
                time.sleep(0.3)
                got = get_status(port, f"/{name}")
                if got != want[row]:
                    sys.exit(f"{row} /{name}: Cache-Status {got!r}, expected {want[row]!r}")
        # first, on fresh processes: a 512 MiB object stored, then streamed from disk to a
        # slow client
        huge = {}
        for row in ("nginx proxy_cache", "gatehouse disk tier"):
            p, port = rows[row]
            get_status(port, "/huge")
            time.sleep(1.0)
            status = get_status(port, "/huge")
            if status != want[row]:
                sys.exit(f"{row} /huge: Cache-Status {status!r}, expected {want[row]!r}")
            before = total_rss_kb(p.pid)
            huge[row] = (before, stream_peak(p.pid, port, "/huge"))
        results = {(row, name): [] for row in rows for name, _ in SIZES}
        for _ in range(args.repeat):
            for name, _ in SIZES:
                for row, (p, port) in rows.items():
                    before = children_ticks(p.pid)
                    r = run_wrk(port, args.duration, args.connections, [], f"/{name}")
                    r["cpu_us"] = (children_ticks(p.pid) - before) / CLK_TCK / max(r["requests"], 1) * 1e6
                    if r["non2xx"]:
                        sys.exit(f"{row} /{name}: {r['non2xx']} non-2xx answers")
                    results[(row, name)].append(r)

        def med(row, name, key):
            return statistics.median(r[key] for r in results[(row, name)])

        print(f"\n{args.repeat} interleaved runs of {args.duration}s, {args.connections} connections, medians\n")
        print("| object | row | hits/s | CPU us/hit | disk vs memory (hits/s, CPU) | vs nginx proxy_cache (hits/s, CPU) |")
        print("|---|---|---|---|---|---|")
        for name, _ in SIZES:
            for row in rows:
                vs_mem = vs_nginx = ""
                if row == "gatehouse disk tier":
                    vs_mem = (f"{med(row, name, 'rps') / med('gatehouse memory tier', name, 'rps'):.2f}x, "
                              f"{med(row, name, 'cpu_us') / med('gatehouse memory tier', name, 'cpu_us'):.2f}x")
                if row != "nginx proxy_cache":
                    vs_nginx = (f"{med(row, name, 'rps') / med('nginx proxy_cache', name, 'rps'):.2f}x, "
                                f"{med(row, name, 'cpu_us') / med('nginx proxy_cache', name, 'cpu_us'):.2f}x")
                print(f"| {name} | {row} | {med(row, name, 'rps'):,.0f} | {med(row, name, 'cpu_us'):.1f} "
                      f"| {vs_mem} | {vs_nginx} |")
        print("\n512 MiB object streamed from disk to a client reading at 200 MB/s: proxy RSS before, "
              "and its growth at the peak\n")
        for row, (before, grew) in huge.items():
            print(f"- {row}: {before / 1024:.1f} MiB before, grew {grew / 1024:.1f} MiB")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
