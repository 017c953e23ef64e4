#!/usr/bin/env python3
"""TLS comparison: nginx vs gatehouse terminating TLS (same ECDSA P-256 certificate, TLS 1.3,
one worker on core 0) in front of the same nginx backend (core 1, with the load tools).

"bare Pingora" (examples/bare_pingora.rs with a certificate: Pingora's own TLS listener, h2 by
ALPN, nothing but upstream_peer) tells Pingora's cost from gatehouse's.

Measured per proxy, interleaved and repeated (medians):
  - full handshakes:    openssl s_time -new  (no request; handshakes per CPU-second)
  - resumed handshakes: openssl s_time -reuse -tls1_2 (session-id resumption; s_time reads no
                        TLS 1.3 ticket, so its TLS 1.3 "reuse" runs are full handshakes)
  - HTTPS HTTP/1.1 keep-alive requests: h2load --h1
  - HTTP/2 multiplexed requests: h2load -m 10
  - RSS with 1,000 idle TLS connections (handshake done, no request)
CPU is the proxy's utime+stime from /proc before and after each run, divided by the work done.

Usage: benches/load/tls.py [--duration 5] [--repeat 3] [--idle 1000] [--baseline PATH]
Needs: nginx, openssl, h2load (Debian: nginx nghttp2-client), a release build of gatehouse.
"""
import argparse
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import CLK_TCK, NGINX_BACKEND, ROOT, children_ticks, free_port, stop_all, wait_port  # noqa: E402

NGINX_TLS = """
worker_processes 1;
daemon off;
pid {dir}/tls.pid;
error_log {dir}/tls-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl http2 backlog=4096;
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def gatehouse_config(port, admin, backend, d):
    return f"""server:
  listen:
    - addr: "127.0.0.1:{port}"
      tls:
        certificates: [{{ cert: "{d}/cert.pem", key: "{d}/key.pem" }}]
        default_certificate: 0
  threads: 1
  grace_period: 1s
  access_log: off
  watch_config: false
  log_level: warn
  limits: {{ max_connections: 100000 }}
admin:
  listen: "127.0.0.1:{admin}"
upstreams:
  backend:
    backends: ["127.0.0.1:{backend}"]
    pool: {{ max_idle: 256 }}
routes:
  - id: bench
    upstream: backend
"""


def s_time(port, duration, mode):
    extra = ["-tls1_2"] if mode == "-reuse" else []
    out = subprocess.run(
        ["taskset", "-c", "1", "openssl", "s_time", "-connect", f"127.0.0.1:{port}", mode,
         "-time", str(duration)] + extra,
        capture_output=True, text=True, timeout=duration + 30)
    m = re.search(r"(\d+) connections in ([\d.]+)s", out.stdout)
    if not m:
        raise RuntimeError(f"s_time on port {port}: {out.stdout[-300:]} {out.stderr[-500:]}")
    return int(m.group(1))


def h2load(port, n, conns, streams, h1):
    cmd = ["taskset", "-c", "1", "h2load", "-n", str(n), "-c", str(conns), "-m", str(streams), "-t", "1"]
    if h1:
        cmd.append("--h1")
    cmd.append(f"https://127.0.0.1:{port}/bench")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out).group(2))
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    proto = re.search(r"Application protocol: (\S+)", out)
    return done, rps, proto.group(1) if proto else "?"


def rss_kb(pid):
    total = 0
    pids = [pid]
    try:
        pids += [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        pass
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def idle_tls(port, n):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(ctx.wrap_socket(s, server_hostname="localhost"))
    time.sleep(1.0)
    return socks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--baseline", help="another gatehouse binary to measure beside this one")
    args = ap.parse_args()
    for tool in ("openssl", "h2load", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install -y nghttp2-client openssl)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    binary = os.path.join(ROOT, "target/release/gatehouse")
    bare = os.path.join(ROOT, "target/release/examples/bare_pingora")
    if not os.path.exists(binary) or os.environ.get("BUILD", "1") == "1":
        subprocess.run(["cargo", "build", "--release", "--bin", "gatehouse", "--example", "bare_pingora"],
                       cwd=ROOT, check=True)

    tmp = tempfile.mkdtemp(prefix="gatehouse-tls-bench-")
    procs = []
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "30", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem"],
                       check=True, capture_output=True)
        backend_port = free_port()
        with open(f"{tmp}/backend.conf", "w") as f:
            f.write(NGINX_BACKEND.format(dir=tmp, port=backend_port))
        procs.append(subprocess.Popen(["taskset", "-c", "1", nginx, "-c", f"{tmp}/backend.conf", "-p", tmp],
                                      stderr=subprocess.DEVNULL))
        wait_port(backend_port)
        proxies = {}
        port = free_port()
        with open(f"{tmp}/tls.conf", "w") as f:
            f.write(NGINX_TLS.format(dir=tmp, port=port, backend=backend_port))
        p = subprocess.Popen(["taskset", "-c", "0", nginx, "-c", f"{tmp}/tls.conf", "-p", tmp],
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        proxies["nginx"] = (p, port)
        if os.path.exists(bare):
            port = free_port()
            p = subprocess.Popen(["taskset", "-c", "0", bare, f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}",
                                  f"{tmp}/cert.pem", f"{tmp}/key.pem"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            proxies["bare Pingora (reference)"] = (p, port)
        builds = [("gatehouse", binary)]
        if args.baseline:
            builds.append(("baseline", os.path.abspath(args.baseline)))
        for name, exe in builds:
            port, admin = free_port(), free_port()
            cfg = f"{tmp}/{name}.yaml"
            with open(cfg, "w") as f:
                f.write(gatehouse_config(port, admin, backend_port, tmp))
            p = subprocess.Popen(["taskset", "-c", "0", exe, "run", "-c", cfg],
                                 env=dict(os.environ, RUST_LOG="warn"),
                                 stdout=subprocess.DEVNULL, stderr=open(f"{cfg}.err", "w"))
            procs.append(p)
            proxies[name] = (p, port)
        for _, (p, port) in proxies.items():
            wait_port(port)
        time.sleep(2.5)

        kinds = ["full handshakes", "resumed handshakes (1.2)", "HTTPS h1 keep-alive", "h2 -m 10"]
        res = {n: {k: [] for k in kinds} for n in proxies}
        for _ in range(args.repeat):
            for name, (p, port) in proxies.items():
                for kind in kinds:
                    before = children_ticks(p.pid)
                    t0 = time.time()
                    if kind == "full handshakes":
                        work, proto = s_time(port, args.duration, "-new"), "-"
                    elif kind.startswith("resumed handshakes"):
                        work, proto = s_time(port, args.duration, "-reuse"), "-"
                    elif kind == "HTTPS h1 keep-alive":
                        work, _, proto = h2load(port, args.requests, 50, 1, True)
                    else:
                        work, _, proto = h2load(port, args.requests, 10, 10, False)
                    wall = time.time() - t0
                    cpu = (children_ticks(p.pid) - before) / CLK_TCK
                    res[name][kind].append({"rate": work / wall, "cpu_us": cpu / max(work, 1) * 1e6,
                                            "per_cpu_s": work / max(cpu, 1e-9), "proto": proto})
        idle = {}
        for name, (p, port) in proxies.items():
            base = rss_kb(p.pid)
            socks = idle_tls(port, args.idle)
            idle[name] = (base, rss_kb(p.pid))
            for s in socks:
                s.close()

        med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
        print(f"\n{args.repeat} interleaved runs, medians; TLS 1.3 (resumption: 1.2), ECDSA P-256; proxy on core 0 (1 worker), "
              f"backend and clients on core 1\n")
        print("| proxy | workload | per second | CPU us each | per CPU-second | per CPU-s vs nginx | CPU vs nginx |")
        print("|---|---|---|---|---|---|---|")
        for kind in kinds:
            b = res["nginx"][kind]
            for name in proxies:
                rows = res[name][kind]
                proto = rows[0]["proto"]
                print(f"| {name} | {kind}{'' if proto == '-' else ' (' + proto + ')'} | {med(rows, 'rate'):,.0f} | "
                      f"{med(rows, 'cpu_us'):.1f} | {med(rows, 'per_cpu_s'):,.0f} | "
                      f"{med(rows, 'per_cpu_s') / med(b, 'per_cpu_s'):.2f}x | {med(rows, 'cpu_us') / med(b, 'cpu_us'):.2f}x |")
        print(f"\n| proxy | RSS before MiB | RSS with {args.idle} idle TLS conns MiB | growth MiB | growth vs nginx |")
        print("|---|---|---|---|---|")
        g0 = idle["nginx"][1] - idle["nginx"][0]
        for name, (before, after) in idle.items():
            print(f"| {name} | {before / 1024:.1f} | {after / 1024:.1f} | {(after - before) / 1024:.1f} | "
                  f"{(after - before) / max(g0, 1):.2f}x |")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
