#!/usr/bin/env python3
"""A normal client's latency while another client floods a rate-limited route (every flood
request answered 429), for gatehouse and, as the reference for what the machine itself does
under the same load, nginx with `limit_req` (429 past the limit).

Each proxy runs one worker on core 0; the nginx backend, the normal client and the flood
client share core 1. The normal client (`wrk -c 8` on a proxied path) runs alone and then
during the flood (`wrk -c 64` on the limited path), interleaved and repeated; the table gives
its p50/p99 (medians over the repeats), the ratio to its unloaded run, the flood's answers
per second and the proxy's CPU per flood answer.

Usage: benches/load/flood.py [--duration 5] [--repeat 3]
Needs: nginx and wrk (Debian packages), a release build of gatehouse (built if missing).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (CLK_TCK, NO_PAUSE, answers_config, children_ticks, free_port,  # noqa: E402
                     release_gatehouse, run_wrk, start_backend, stop_all, wait_port)

NGINX_LIMITED = """
worker_processes 1;
daemon off;
pid {dir}/limited.pid;
error_log {dir}/limited-error.log crit;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  limit_req_zone $binary_remote_addr zone=flood:1m rate=1r/m;
  limit_req_status 429;
  limit_req_log_level info;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /limited {{ limit_req zone=flood; proxy_pass http://backend; }}
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def measure(proc, port, duration, flood):
    """The normal client's wrk result, with the flood running beside it when `flood`; the
    flood's result and the proxy's CPU ticks over the flood."""
    out = {}

    def run_flood():
        before = children_ticks(proc.pid)
        out["flood"] = run_wrk(port, duration + 1, 64, [], "/limited")
        out["flood_ticks"] = children_ticks(proc.pid) - before

    t = None
    if flood:
        t = threading.Thread(target=run_flood)
        t.start()
        time.sleep(0.5)  # the flood is under way before the normal client starts
    normal = run_wrk(port, duration, 8, [], "/bench")
    if t:
        t.join()
    return normal, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install -y wrk nginx)")
    binary = release_gatehouse()
    tmp = tempfile.mkdtemp(prefix="gatehouse-flood-")
    procs = []
    try:
        backend = start_backend(nginx, tmp, procs)
        rows = {}
        port = free_port()
        with open(f"{tmp}/limited.conf", "w") as f:
            f.write(NGINX_LIMITED.format(dir=tmp, port=port, backend=backend))
        procs.append(subprocess.Popen(["taskset", "-c", "0", nginx, "-c", f"{tmp}/limited.conf", "-p", tmp],
                                      stderr=subprocess.DEVNULL))
        rows["nginx (limit_req)"] = (procs[-1], port)
        for name, limits in [("gatehouse (rate_limit, pause_after_429: 10ms, the default)", ""),
                             ("gatehouse (rate_limit, pause_after_429: 0s)", NO_PAUSE)]:
            port, admin = free_port(), free_port()
            cfg = f"{tmp}/gatehouse-{len(rows)}.yaml"
            with open(cfg, "w") as f:
                f.write(answers_config(port, admin, backend, limits))
            procs.append(subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", cfg],
                                          env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL,
                                          stderr=open(f"{cfg}.err", "w")))
            rows[name] = (procs[-1], port)
        for _, (_, port) in rows.items():
            wait_port(port)
        time.sleep(2.5)
        results = {name: {"alone": [], "flood": [], "answers": [], "cpu": []} for name in rows}
        for _ in range(args.repeat):
            for name, (p, port) in rows.items():
                alone, _ = measure(p, port, args.duration, False)
                during, out = measure(p, port, args.duration, True)
                f = out["flood"]
                if f["requests"] and f["non2xx"] < f["requests"] * 0.99:
                    sys.exit(f"{name}: the flood was not refused ({f['non2xx']} of {f['requests']} non-2xx)")
                if alone["non2xx"] or during["non2xx"]:
                    sys.exit(f"{name}: the normal client got non-2xx answers")
                r = results[name]
                r["alone"].append(alone)
                r["flood"].append(during)
                r["answers"].append(f["rps"])
                r["cpu"].append(out["flood_ticks"] / CLK_TCK / max(f["requests"] + during["requests"], 1) * 1e6)

        def med(rows, key):
            return statistics.median(x[key] for x in rows)

        print(f"\n{args.repeat} interleaved runs of {args.duration}s; proxy on core 0, backend + both clients on core 1\n")
        print("| proxy | normal p50 alone / flood us | normal p99 alone / flood us | p99 ratio | normal req/s alone / flood | "
              "flood answers/s | proxy CPU us per request (both clients) |")
        print("|---|---|---|---|---|---|---|")
        for name, r in results.items():
            p99a, p99f = med(r["alone"], "p99"), med(r["flood"], "p99")
            print(f"| {name} | {med(r['alone'], 'p50'):.0f} / {med(r['flood'], 'p50'):.0f} | {p99a:.0f} / {p99f:.0f} | "
                  f"{p99f / p99a:.2f}x | {med(r['alone'], 'rps'):,.0f} / {med(r['flood'], 'rps'):,.0f} | "
                  f"{statistics.median(r['answers']):,.0f} | {statistics.median(r['cpu']):.1f} |")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
