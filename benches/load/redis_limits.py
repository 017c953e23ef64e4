#!/usr/bin/env python3
"""What a global rate limit (`scope: global`, on Redis) costs against a local one.

One release gatehouse (core 0, one worker thread) in front of an nginx backend, one
redis-server on a unix socket (no persistence), wrk on core 1. Three routes, each limit far
above what the run sends (so every request is admitted and counted): /none (no plugin),
/local (`rate_limit`, `scope: local`), /global (`scope: global`, `sync: exact`, one atomic
Redis script per request), /hybrid (`scope: global`, `sync: 100ms`: local decisions, one
batched push per 100 ms). For each: requests/s, p50/p99 with 1 and 8 connections, gateway
CPU per request, Redis CPU per request, and Redis commands per request (INFO commandstats).
Then 10,000 distinct keys through /keys (`key: "header:X-Api-Key"`): Redis memory per key.

Usage: benches/load/redis_limits.py [--duration 8] [--repeat 3]
Needs: nginx, wrk, redis-server, a release build of gatehouse.
"""
import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import CLK_TCK, cpu_ticks, free_port, release_gatehouse, start_backend, stop_all, wait_port  # noqa: E402

HIGH = 1_000_000_000


def redis_cli(sock, *args):
    return subprocess.run(["redis-cli", "-s", sock, *args], capture_output=True, text=True, timeout=10).stdout


def evalsha_calls(sock):
    m = re.search(r"cmdstat_evalsha:calls=(\d+)", redis_cli(sock, "INFO", "commandstats"))
    return int(m.group(1)) if m else 0


def all_calls(sock):
    return sum(int(x) for x in re.findall(r"calls=(\d+)", redis_cli(sock, "INFO", "commandstats")))


def wrk(port, path, duration, conns):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
           "-H", "X-Api-Key: bench", f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))

    def lat(label):
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1000, "s": 1e6}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return reqs, reqs / duration, lat("50"), lat("99"), int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-only", action="store_true", help="only the Redis memory per key")
    args = ap.parse_args()
    for tool in ["wrk", "redis-server", "redis-cli"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    binary = release_gatehouse()
    tmp = tempfile.mkdtemp(prefix="gatehouse-redis-")
    procs = []
    try:
        sock = f"{tmp}/redis.sock"
        redis = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", "0", "--unixsocket", sock,
                                  "--save", "", "--appendonly", "no", "--dir", tmp],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        for _ in range(100):
            if "PONG" in redis_cli(sock, "PING"):
                break
            time.sleep(0.05)
        backend = start_backend(nginx, tmp, procs)
        port, admin = free_port(), free_port()
        rl = f"rate_limit: {{ key: client_ip, requests: {HIGH}, per: 60s"
        with open(f"{tmp}/gh.yaml", "w") as f:
            f.write(f"""server:
  listen: ["127.0.0.1:{port}"]
  threads: 1
  access_log: off
  watch_config: false
  log_level: error
admin:
  listen: "127.0.0.1:{admin}"
redis:
  url: "redis+unix://{sock}"
  timeout: 20ms
upstreams:
  backend: {{ backends: ["127.0.0.1:{backend}"] }}
routes:
  - {{ id: none, match: {{ path_prefix: /none }}, upstream: backend }}
  - id: local
    match: {{ path_prefix: /local }}
    upstream: backend
    plugins: [ {{ {rl} }} }} ]
  - id: global
    match: {{ path_prefix: /global }}
    upstream: backend
    plugins: [ {{ {rl}, scope: global }} }} ]
  - id: hybrid
    match: {{ path_prefix: /hybrid }}
    upstream: backend
    plugins: [ {{ {rl}, scope: global, sync: 100ms }} }} ]
  - id: keys
    match: {{ path_prefix: /keys }}
    upstream: backend
    plugins: [ {{ rate_limit: {{ key: "header:X-Api-Key", requests: {HIGH}, per: 60s, scope: global }} }} ]
""")
        gh = subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", f"{tmp}/gh.yaml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gh)
        wait_port(port)
        time.sleep(1.5)
        paths = ["/none", "/local", "/global", "/hybrid"]
        for path in ([] if args.memory_only else paths):
            wrk(port, path, 2, 8)  # warm-up
        rows = []
        for conns in ([] if args.memory_only else [1, 8]):
            # interleaved: each repeat runs every route once, so drift on the shared machine
            # falls on all of them alike
            runs = {path: [] for path in paths}
            for _ in range(args.repeat):
                for path in paths:
                    g0, r0, c0, a0 = cpu_ticks(gh.pid), cpu_ticks(redis.pid), evalsha_calls(sock), all_calls(sock)
                    reqs, rps, p50, p99, non2xx = wrk(port, path, args.duration, conns)
                    g1, r1, c1, a1 = cpu_ticks(gh.pid), cpu_ticks(redis.pid), evalsha_calls(sock), all_calls(sock)
                    runs[path].append((rps, p50, p99, (g1 - g0) / CLK_TCK * 1e6 / reqs,
                                       (r1 - r0) / CLK_TCK * 1e6 / reqs, (c1 - c0) / reqs,
                                       (a1 - a0 - 2) / reqs, non2xx))
            for path in paths:
                med = [statistics.median(r[i] for r in runs[path]) for i in range(7)]
                rows.append((conns, path, *med, max(r[7] for r in runs[path])))
                print(rows[-1], flush=True)
        # memory per key: 10,000 distinct keys
        before = int(re.search(r"used_memory:(\d+)", redis_cli(sock, "INFO", "memory")).group(1))
        c = http.client.HTTPConnection("127.0.0.1", port)
        statuses = {}
        for i in range(10_000):
            c.request("GET", "/keys", headers={"X-Api-Key": f"client-{i}"})
            r = c.getresponse()
            r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
        print(f"/keys: {statuses}; keys in Redis: {redis_cli(sock, 'DBSIZE').strip()}", flush=True)
        after = int(re.search(r"used_memory:(\d+)", redis_cli(sock, "INFO", "memory")).group(1))
        one = redis_cli(sock, "--scan", "--pattern", "gh:rl:keys:*").split()[0]
        usage = redis_cli(sock, "MEMORY", "USAGE", one).strip()
        print(f"\n{args.repeat} runs of {args.duration} s, medians; latency in us, CPU in us per request\n")
        print("| conns | route | req/s | p50 | p99 | gateway CPU | Redis CPU | EVALSHA/req | Redis cmds/req | non-2xx |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        base = {}
        for conns, path, rps, p50, p99, gcpu, rcpu, ev, cmds, non2xx in rows:
            if path == "/local":
                base[conns] = (p50, p99, gcpu)
            print(f"| {conns} | {path} | {rps:,.0f} | {p50:.0f} | {p99:.0f} | {gcpu:.1f} | {rcpu:.1f} | {ev:.3f} | {cmds:.3f} | {non2xx} |")
        for conns, path, rps, p50, p99, gcpu, rcpu, ev, cmds, non2xx in rows:
            if path in ("/global", "/hybrid"):
                b = base[conns]
                print(f"\n{path[1:]} vs local, {conns} conn(s): p50 +{p50 - b[0]:.0f} us, p99 +{p99 - b[1]:.0f} us, "
                      f"gateway CPU {gcpu / b[2]:.2f}x")
        print(f"\nRedis memory for 10,000 keys: {(after - before) / 10_000:.0f} bytes per key "
              f"(used_memory delta); MEMORY USAGE of one key: {usage} bytes")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
