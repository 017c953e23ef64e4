#!/usr/bin/env python3
"""A normal HTTP/2 client's latency while an attacker runs an HTTP/2 abuse pattern against the
same gatehouse (h2c listener, one worker on core 0; backend, client and attacker on core 1),
with the connection guard's h2 control-frame budget on (the default) and off. The attacker
connects from 127.0.0.2, the normal client from 127.0.0.1 (a source that breaks the budget is
refused for `abuse_block`).

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
from compare import free_port, release_gatehouse, start_backend, stop_all, wait_port  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET_BLOCK = bytes([0x82, 0x86, 0x84, 0x41, 0x01]) + b"a"


def frame(kind, flags, stream, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream & 0x7FFFFFFF) + payload


def attack(port, kind, stop):
    """Repeats the attack on new connections until `stop` is set. The attacker shares core 1
    with the normal client and the backend: its payloads are built once and its thread runs
    at nice 19, so what the table shows is the gateway's doing, not the attacker's own CPU
    taking core 1 from the client (building the rapid-reset batch on every connection did
    exactly that in earlier runs)."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    junk = b"".join(b"\x00" + bytes([len(f"x-junk-{i}")]) + f"x-junk-{i}".encode() + b"\x64" + b"v" * 100
                    for i in range(100))
    hello = PREFACE + frame(0x4, 0, 0)
    rapid = b"".join(frame(0x1, 0x5, 1 + 2 * i, GET_BLOCK) + frame(0x3, 0, 1 + 2 * i, struct.pack(">I", 8))
                     for i in range(2000))
    continuation = frame(0x9, 0, 1, junk[:1000])
    floods = [frame(0x4, 0, 0, bytes([0, 3, 0, 0, 0, 100])) + frame(0x6, 0, 0, struct.pack(">Q", i))
              for i in range(2000)]
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=("127.0.0.2", 0))
            s.sendall(hello)
            if kind == "rapid reset":
                s.sendall(rapid)
            elif kind == "CONTINUATION flood":
                s.sendall(frame(0x1, 0x1, 1, GET_BLOCK))
                for _ in range(2000):
                    s.sendall(continuation)
            else:
                for f in floods:
                    s.sendall(f)
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
    ap.add_argument("--attacks", default="rapid reset,CONTINUATION flood,SETTINGS+PING flood",
                    help="comma-separated subset of the attacks")
    args = ap.parse_args()
    # this process (the attacker threads) stays off the gateway's core
    os.sched_setaffinity(0, {1})
    if not shutil.which("h2load"):
        sys.exit("h2load is needed (apt-get install -y nghttp2-client)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    binary = release_gatehouse()
    tmp = tempfile.mkdtemp(prefix="gatehouse-h2abuse-")
    procs = []
    try:
        backend = start_backend(nginx, tmp, procs)
        rows = []
        # the same attacks with the guard's control-frame budget on (the default) and off
        for setting, limits in [("budget 100/s", ""),
                                ("no budget", "  limits: { h2_control_frames_per_second: 0 }\n")]:
            port, admin = free_port(), free_port()
            with open(f"{tmp}/gh.yaml", "w") as f:
                f.write(f"""server:
  listen: [{{ addr: "127.0.0.1:{port}", h2c: true }}]
  threads: 1
  access_log: off
  watch_config: false
  log_level: error
{limits}admin:
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
            for kind in args.attacks.split(","):
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
                rows.append((setting, kind, med(base, 0), med(base, 1), med(loaded, 0), med(loaded, 1), rss,
                             min(x[2] for x in loaded)))
                print(rows[-1], flush=True)
            gh.kill()  # no graceful drain needed between the two settings
            gh.wait(timeout=10)
        print(f"\n{args.repeat} runs, medians; normal client h2load -c 4 -m 1, {args.requests} requests; "
              f"latency in us\n")
        print("| guard | attack | p50 alone | p99 alone | p50 under attack | p99 under attack | p99 ratio | gateway RSS MiB | requests done |")
        print("|---|---|---|---|---|---|---|---|---|")
        for setting, kind, b50, b99, l50, l99, rss, done in rows:
            print(f"| {setting} | {kind} | {b50:.0f} | {b99:.0f} | {l50:.0f} | {l99:.0f} | {l99 / b99:.2f}x | {rss / 1024:.0f} | {done} |")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
