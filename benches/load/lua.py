#!/usr/bin/env python3
"""What the `lua` plugin costs per proxied request.

One gatehouse on core 0 with one worker (`threads: 1`), an nginx backend and wrk
(8 connections) on core 1. Four routes of the same gatehouse, interleaved run by run:
no plugin (the baseline), the compiled `headers` plugin setting one request header (for
reference), a one-line `access` script reading a header and setting one, and the
three-phase script of the README (access with ctx, header_filter, log). Reported: the
proxy's CPU per request (us; utime + stime) and its ratio to the route without a plugin.

Usage: benches/load/lua.py [--duration 5] [--repeat 3]     (BUILD=0 reuses target/release)
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
upstreams:
  backend: {{ backends: ["127.0.0.1:{backend}"] }}
routes:
  - {{ id: none, match: {{ path_prefix: /none/ }}, upstream: backend }}
  - id: headers
    match: {{ path_prefix: /headers/ }}
    upstream: backend
    plugins:
      - headers: {{ request: {{ set: {{ X-Tenant: acme }} }} }}
  - id: one
    match: {{ path_prefix: /one/ }}
    upstream: backend
    plugins:
      - lua:
          access: gatehouse.service.request.set_header("x-tenant", gatehouse.request.get_header("accept"))
  - id: three
    match: {{ path_prefix: /three/ }}
    upstream: backend
    plugins:
      - lua:
          config: {{ default_tenant: acme }}
          access: |
            local t = gatehouse.request.get_header("x-tenant") or conf.default_tenant
            ctx.tenant = t
            gatehouse.service.request.set_header("x-tenant", t)
          header_filter: |
            gatehouse.response.set_header("x-tenant", ctx.tenant)
          log: |
            gatehouse.log.debug("tenant ", ctx.tenant, " status ", gatehouse.response.get_status())
"""

ROWS = [
    ("no plugin", "/none/api"),
    ("headers plugin (compiled), one set", "/headers/api"),
    ("lua: one-line access (header read + set)", "/one/api"),
    ("lua: access + header_filter + log, ctx", "/three/api"),
]


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
    tmp = tempfile.mkdtemp(prefix="gatehouse-lua-")
    procs = []
    try:
        backend = start_backend(nginx, tmp, procs)
        port, admin = free_port(), free_port()
        with open(f"{tmp}/gh.yaml", "w") as f:
            f.write(GATEHOUSE.format(port=port, admin=admin, backend=backend))
        gh = subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", f"{tmp}/gh.yaml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gh)
        wait_port(port)
        time.sleep(1.0)
        for _, path in ROWS:
            got = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                  f"http://127.0.0.1:{port}{path}"],
                                 capture_output=True, text=True, timeout=10).stdout
            if got != "200":
                sys.exit(f"{path}: {got}")
            wrk_path(port, path, 1)  # warm-up
        results = {}
        for _ in range(args.repeat):
            for name, path in ROWS:
                t0 = cpu_ticks(gh.pid)
                reqs, non2xx = wrk_path(port, path, args.duration)
                t1 = cpu_ticks(gh.pid)
                us = (t1 - t0) / CLK_TCK * 1e6 / reqs
                results.setdefault(name, []).append((us, reqs / args.duration, non2xx))
        print(f"\n{args.repeat} interleaved runs of {args.duration} s, 8 connections, medians\n")
        print("| route | CPU us/req | vs no plugin | req/s | non-2xx |")
        print("|---|---|---|---|---|")
        base = statistics.median(r[0] for r in results[ROWS[0][0]])
        for name, _ in ROWS:
            v = results[name]
            us = statistics.median(r[0] for r in v)
            rps = statistics.median(r[1] for r in v)
            print(f"| {name} | {us:.1f} | {us / base:.3f}x | {rps:,.0f} | {max(r[2] for r in v)} |")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
