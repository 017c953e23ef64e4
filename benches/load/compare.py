#!/usr/bin/env python3
"""Side-by-side load comparison: nginx as a reverse proxy vs gatehouse (no plugins, full
chain, cache hits), all in front of the same nginx backend, on this machine.

Layout (2 cores): the proxy under test is pinned to core 0 with one worker; the nginx backend
and wrk share core 1. Runs are interleaved (A B C D A B C D ...) and repeated; the table shows
medians. CPU time per request is the proxy process's utime+stime from /proc/PID/stat before and
after a run, divided by the requests served: far steadier than req/s on a shared machine.

Usage: benches/load/compare.py [--duration 5] [--repeat 3] [--connections 64] [--idle 1000]
                               [--baseline PATH]
Needs: nginx and wrk (Debian packages), a release build of gatehouse (built if missing).
--baseline adds the three gatehouse rows again for another gatehouse binary (e.g. a release
build of the previous commit), measured in the same interleaved runs: a change is judged
against its own baseline on this noisy machine, not against an old table.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECRET = "bench-secret-bench-secret-bench-secret"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime are fields 14 and 15 (1-based); after the ")" split they are 12, 13
    return int(fields[11]) + int(fields[12])


def with_children(pid):
    """`pid` and its direct children (nginx master + worker)."""
    try:
        return [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return [pid]


def children_ticks(pid):
    """CPU ticks of `pid` and its direct children."""
    return sum(cpu_ticks(p) for p in with_children(pid))


def rss_hwm_kb(pid):
    total = 0
    for p in with_children(pid):
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def stop_all(procs, nginx, tmp):
    """Stops every process a run started (nginx with a graceful quit, which takes its workers
    along; the others with SIGKILL) and removes the run's directory."""
    for p in procs:
        try:
            p.send_signal(signal.SIGQUIT if nginx in p.args else signal.SIGKILL)
        except OSError:
            pass
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def release_gatehouse():
    """The release binary's path, built first unless BUILD=0 and it exists."""
    binary = os.path.join(ROOT, "target/release/gatehouse")
    if not os.path.exists(binary) or os.environ.get("BUILD", "1") == "1":
        subprocess.run(["cargo", "build", "--release", "--bin", "gatehouse"], cwd=ROOT, check=True)
    return binary


def start_backend(nginx, tmp, procs):
    """The nginx backend on core 1 (added to `procs`); its port once it listens."""
    port = free_port()
    with open(f"{tmp}/backend.conf", "w") as f:
        f.write(NGINX_BACKEND.format(dir=tmp, port=port))
    procs.append(subprocess.Popen(["taskset", "-c", "1", nginx, "-c", f"{tmp}/backend.conf", "-p", tmp],
                                  stderr=subprocess.DEVNULL))
    wait_port(port)
    return port


def jwt():
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400}).encode())
    sig = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


NGINX_BACKEND = """
worker_processes 1;
daemon off;
pid {dir}/backend.pid;
error_log {dir}/backend-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ add_header Cache-Control "public, max-age=3600"; return 200 "hello from the backend\\n"; }}
  }}
}}
"""

NGINX_PROXY = """
worker_processes 1;
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


NGINX_PROXY_CACHE = """
worker_processes 1;
daemon off;
pid {dir}/proxy-cache.pid;
error_log {dir}/proxy-cache-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  proxy_cache_path {dir}/nginx-cache levels=1:2 keys_zone=bench:10m max_size=100m;
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

HAPROXY = """
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend bench
  bind 127.0.0.1:{port} backlog 4096
  default_backend backend
backend backend
  http-reuse always
  server b1 127.0.0.1:{backend}
"""


# `server.limits` for the answers rows: a 429 measured without the pause that follows it
NO_PAUSE = ", pause_after_429: 0s"


def answer_rows(tmp):
    """ANSWERS as (name, path, headers, wrk script file or None), the scripts written to `tmp`."""
    rows = []
    for i, (name, path, headers, script) in enumerate(ANSWERS):
        if script:
            with open(f"{tmp}/answer-{i}.lua", "w") as f:
                f.write(script)
            script = f"{tmp}/answer-{i}.lua"
        rows.append((name, path, headers, script))
    return rows


def gatehouse_head(port, admin, backend, access_log="off", limits=""):
    """The benchmarks' gatehouse config up to `routes:` (one worker, one upstream `backend`);
    `limits`: more `server.limits` fields (", name: value")."""
    return f"""server:
  listen: ["127.0.0.1:{port}"]
  threads: 1
  grace_period: 1s
  access_log: {access_log}
  watch_config: false
  log_level: warn
  limits: {{ max_connections: 100000{limits} }}
admin:
  listen: "127.0.0.1:{admin}"
upstreams:
  backend:
    backends: ["127.0.0.1:{backend}"]
    pool: {{ max_idle: 256 }}
routes:
"""


def answers_config(port, admin, backend, limits=""):
    """One gatehouse whose routes answer by themselves: /jwt without a token (401), /limited
    past its limit (429), /cors preflights (204), any other path (404); /bench proxies.
    `limits`: more `server.limits` fields (", name: value")."""
    return gatehouse_head(port, admin, backend, limits=limits) + f"""  - id: bench
    match: {{ path_prefix: /bench }}
    upstream: backend
  - id: jwt
    match: {{ path_prefix: /jwt }}
    upstream: backend
    plugins:
      - jwt: {{ keys: [{{ algorithm: HS256, secret: "{SECRET}" }}] }}
  - id: limited
    match: {{ path_prefix: /limited }}
    upstream: backend
    plugins:
      - rate_limit: {{ key: client_ip, requests: 1, per: 1h }}
  - id: cors
    match: {{ path_prefix: /cors }}
    upstream: backend
    plugins:
      - cors: {{ allow_origins: ["https://app.example.com"], allow_methods: [GET, POST] }}
"""


# the rows answered by gatehouse itself: (name, path, headers, wrk script)
ANSWERS = [
    ("401 from jwt (no token)", "/jwt", [], None),
    ("429 from rate_limit", "/limited", [], None),
    ("CORS preflight (204)", "/cors", ["Origin: https://app.example.com",
                                       "Access-Control-Request-Method: POST"], 'wrk.method = "OPTIONS"\n'),
    ("404 (no route)", "/nothing", [], None),
]


def gatehouse_config(port, admin, backend, chain, access_log):
    plugins = ""
    if chain == "full":
        plugins = f"""    plugins:
      - cors: {{ allow_origins: ["https://app.example.com"], allow_credentials: true }}
      - jwt: {{ keys: [{{ algorithm: HS256, secret: "{SECRET}" }}] }}
      - rate_limit: {{ key: client_ip, requests: 100000000, per: 1s }}
      - headers: {{ request: {{ set: {{ X-Env: bench }} }}, response: {{ set: {{ X-Served-By: gatehouse }} }} }}
"""
    elif chain == "cache":
        plugins = """    plugins:
      - cache: { default_ttl: 3600s }
"""
    return gatehouse_head(port, admin, backend, access_log) + f"""  - id: bench
    upstream: backend
{plugins}"""


def run_wrk(port, duration, conns, headers, path="/bench", script=None):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def lat(label):
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1000, "s": 1e6}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_err = re.search(r"Socket errors: (.*)", out)
    return {"requests": reqs, "rps": rps, "p50": lat("50"), "p99": lat("99"),
            "non2xx": int(errors.group(1)) if errors else 0, "socket_errors": socket_err.group(1) if socket_err else ""}


def wrk_path(port, path, duration, conns=8):
    """wrk on core 1 against `path`: (requests, non-2xx responses)."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-H", "Accept: */*",
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return reqs, int(non2xx.group(1)) if non2xx else 0


def idle_connections(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /bench HTTP/1.1\r\nHost: b\r\n\r\n")
        socks.append(s)
    time.sleep(1.0)
    for s in socks:
        try:
            s.recv(65536)
        except OSError:
            pass
    return socks


def start_proxy(procs, cmd, tmp, name):
    p = subprocess.Popen(["taskset", "-c", "0"] + cmd, env=dict(os.environ, RUST_LOG="warn"),
                         stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/{name}.err", "w"))
    procs.append(p)
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--baseline", help="another gatehouse binary to measure beside this one")
    ap.add_argument("--no-answers", action="store_true", help="leave out the rows gatehouse answers itself")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is needed (apt-get install -y nginx wrk)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    binary = os.path.join(ROOT, "target/release/gatehouse")
    bare = os.path.join(ROOT, "target/release/examples/bare_pingora")
    if not os.path.exists(binary) or os.environ.get("BUILD", "1") == "1":
        subprocess.run(["cargo", "build", "--release", "--bin", "gatehouse", "--example", "bare_pingora"], cwd=ROOT, check=True)

    tmp = tempfile.mkdtemp(prefix="gatehouse-bench-")
    # nginx's workers (not root) write the proxy_cache row's files below it
    os.chmod(tmp, 0o755)
    procs = []
    try:
        backend_port = start_backend(nginx, tmp, procs)
        # name -> (process, port, headers, path, wrk script); every row is measured in turn
        rows = {}
        port = free_port()
        with open(f"{tmp}/proxy.conf", "w") as f:
            f.write(NGINX_PROXY.format(dir=tmp, port=port, backend=backend_port))
        rows["nginx proxy"] = (start_proxy(procs, [nginx, "-c", f"{tmp}/proxy.conf", "-p", tmp], tmp, "nginx"),
                               port, [], "/bench", None)
        port = free_port()
        with open(f"{tmp}/proxy-cache.conf", "w") as f:
            f.write(NGINX_PROXY_CACHE.format(dir=tmp, port=port, backend=backend_port))
        rows["nginx proxy_cache hits"] = (
            start_proxy(procs, [nginx, "-c", f"{tmp}/proxy-cache.conf", "-p", tmp], tmp, "nginx-cache"),
            port, [], "/bench", None)
        if haproxy:
            port = free_port()
            with open(f"{tmp}/haproxy.cfg", "w") as f:
                f.write(HAPROXY.format(port=port, backend=backend_port))
            rows["HAProxy"] = (start_proxy(procs, [haproxy, "-db", "-f", f"{tmp}/haproxy.cfg"], tmp, "haproxy"),
                               port, [], "/bench", None)
        if os.path.exists(bare):
            port = free_port()
            rows["bare Pingora (reference)"] = (
                start_proxy(procs, [bare, f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}"], tmp, "bare"),
                port, [], "/bench", None)
        token = jwt()
        builds = [("gatehouse", binary)]
        if args.baseline:
            builds.append(("baseline", os.path.abspath(args.baseline)))
        for label, exe in builds:
            for what, chain, log in [("no plugins", "none", "off"),
                                     ("full chain", "full", f"{tmp}/{label}-access.log"),
                                     ("cache hits", "cache", "off")]:
                port, admin = free_port(), free_port()
                cfg = f"{tmp}/{label}-{chain}.yaml"
                with open(cfg, "w") as f:
                    f.write(gatehouse_config(port, admin, backend_port, chain, log))
                headers = []
                if chain == "full":
                    headers = [f"Authorization: Bearer {token}", "Origin: https://app.example.com"]
                rows[f"{label} ({what})"] = (start_proxy(procs, [exe, "run", "-c", cfg], tmp, f"{label}-{chain}"),
                                             port, headers, "/bench", None)
        if not args.no_answers:
            port, admin = free_port(), free_port()
            cfg = f"{tmp}/answers.yaml"
            with open(cfg, "w") as f:
                # what an answer costs, not the pause after a 429 (flood.py measures that)
                f.write(answers_config(port, admin, backend_port, NO_PAUSE))
            p = start_proxy(procs, [binary, "run", "-c", cfg], tmp, "answers")
            for name, path, headers, script in answer_rows(tmp):
                rows[f"gatehouse {name}"] = (p, port, headers, path, script)
        for _, (p, port, *_rest) in rows.items():
            wait_port(port)
        time.sleep(2.5)  # first health round, warm pools

        results = {name: [] for name in rows}
        direct = []
        for rep in range(args.repeat):
            for name, (p, port, headers, path, script) in rows.items():
                before = children_ticks(p.pid)
                r = run_wrk(port, args.duration, args.connections, headers, path, script)
                after = children_ticks(p.pid)
                r["cpu_us"] = (after - before) / CLK_TCK / max(r["requests"], 1) * 1e6
                results[name].append(r)
            direct.append(run_wrk(backend_port, args.duration, args.connections, []))

        idle = {}
        seen = set()
        for name, (p, port, *_rest) in rows.items():
            if p.pid in seen:
                continue
            seen.add(p.pid)
            socks = idle_connections(port, args.idle)
            idle[name] = rss_hwm_kb(p.pid)
            for s in socks:
                s.close()

        def med(rows, key):
            return statistics.median(r[key] for r in rows)

        base = results["nginx proxy"]
        b_cpu, b_rps, b_p99 = med(base, "cpu_us"), med(base, "rps"), med(base, "p99")
        bare_cpu = med(results["bare Pingora (reference)"], "cpu_us") if "bare Pingora (reference)" in results else None
        own_cpu = med(results["gatehouse (no plugins)"], "cpu_us")
        print(f"\n{args.repeat} interleaved runs of {args.duration}s, {args.connections} connections, medians; "
              f"proxy on core 0, backend + wrk on core 1\n")
        print(f"| proxy | req/s | p50 us | p99 us | CPU us/req | CPU vs nginx | CPU vs bare Pingora | "
              f"CPU vs gatehouse (no plugins) | req/s vs nginx | p99 vs nginx | peak RSS MiB ({args.idle} idle conns) | RSS vs nginx |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, rs in results.items():
            cpu, rps, p99 = med(rs, "cpu_us"), med(rs, "rps"), med(rs, "p99")
            bad = sum(r["non2xx"] for r in rs)
            answered = name.startswith("gatehouse ") and not name.startswith("gatehouse (")
            note = f" ({bad} non-2xx!)" if bad and not answered else ""
            vs_bare = f"{cpu / bare_cpu:.2f}x" if bare_cpu else ""
            rss = f"{idle[name] / 1024:.1f} | {idle[name] / idle['nginx proxy']:.2f}x" if name in idle else " | "
            print(f"| {name}{note} | {rps:,.0f} | {med(rs, 'p50'):.0f} | {p99:.0f} | {cpu:.1f} | {cpu / b_cpu:.2f}x | "
                  f"{vs_bare} | {cpu / own_cpu:.2f}x | {rps / b_rps:.2f}x | {p99 / b_p99:.2f}x | {rss} |")
        print(f"| backend direct (ceiling) | {med(direct, 'rps'):,.0f} | {med(direct, 'p50'):.0f} | {med(direct, 'p99'):.0f} | | | | | "
              f"{med(direct, 'rps') / b_rps:.2f}x | | | |")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
