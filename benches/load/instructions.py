#!/usr/bin/env python3
"""Instructions per request under callgrind: a repeatable CPU measure for one gatehouse build
against another on a machine too noisy for wall-clock comparisons of a few percent.

Each build runs the same three configs as compare.py (no plugins, full chain, cache hits) in
front of an nginx backend, under `valgrind --tool=callgrind`; after a warm-up the counters are
zeroed, a wrk run follows, and the dumped instruction total is divided by the requests served. Counts are user-space instructions of the whole process
(every thread), the same for the same binary and inputs whatever else the machine does.

Usage: benches/load/instructions.py [--seconds 10] [--baseline PATH [--baseline-server LINE]]
Needs: valgrind, nginx and wrk (Debian packages), a release build of gatehouse.
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (NGINX_BACKEND, NO_PAUSE, ROOT, answer_rows, answers_config,  # noqa: E402
                     free_port, gatehouse_config, jwt, run_wrk, wait_port)


def callgrind_total(out_file):
    """Sum of the `summary:`/`totals:` instruction counts of a callgrind dump."""
    with open(out_file) as f:
        for line in f:
            m = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError(f"no totals in {out_file}")


def measure(cmd, port, tag, tmp, seconds, headers, path="/bench", script=None, keep=None):
    """Instructions per request of the process `cmd` (listening on `port`) under callgrind,
    over a `seconds` wrk run on `path`; with `keep`, its dump is copied there as `tag`.out
    for callgrind_annotate."""
    prefix = f"{tmp}/cg-{tag}"
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p"] + cmd,
                         env=dict(os.environ, RUST_LOG="warn"),
                         stdout=subprocess.DEVNULL, stderr=open(f"{prefix}.err", "w"))
    try:
        wait_port(port, timeout=60)
        time.sleep(3)
        run_wrk(port, 3, 8, headers, path, script)  # warm-up: pools, caches, lazily made series
        subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
        r = run_wrk(port, seconds, 8, headers, path, script)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
        dumps = glob.glob(f"{prefix}.{p.pid}.*")  # the dump made above (the main file is written at exit)
        total = sum(callgrind_total(d) for d in dumps)
        if keep:
            for i, d in enumerate(sorted(dumps)):
                shutil.copy(d, os.path.join(keep, f"{tag}.{i}.out"))
        return total / max(r["requests"], 1), r["requests"], r["non2xx"]
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()


def gatehouse_row(binary, chain, backend_port, tmp, server=""):
    """The command and port of a gatehouse with one of compare.py's configs (`server`: more
    `server:` lines, e.g. "preserve_header_case: true")."""
    port, admin = free_port(), free_port()
    cfg = f"{tmp}/{os.path.basename(binary)}-{chain}-{port}.yaml"
    if chain == "answers":
        text = answers_config(port, admin, backend_port, NO_PAUSE)
    else:
        text = gatehouse_config(port, admin, backend_port, chain,
                                f"{tmp}/access.log" if chain == "full" else "off")
    if server:
        text = text.replace("server:\n", f"server:\n  {server}\n", 1)
    with open(cfg, "w") as f:
        f.write(text)
    return [binary, "run", "-c", cfg], port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--baseline", help="another gatehouse binary to count beside this one")
    ap.add_argument("--baseline-server", default="",
                    help="a `server:` line for the baseline rows only, e.g. 'preserve_header_case: true' "
                         "(with --baseline target/release/gatehouse: one build, two settings)")
    ap.add_argument("--answers", action="store_true",
                    help="also the answers gatehouse gives itself (401, 429, preflight, 404) and bare Pingora")
    ap.add_argument("--keep", help="a directory to keep the callgrind dumps in (for callgrind_annotate)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install -y valgrind wrk nginx)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    builds = [("gatehouse", os.path.join(ROOT, "target/release/gatehouse"))]
    if args.baseline:
        builds.append(("baseline", os.path.abspath(args.baseline)))
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="gatehouse-cg-")
    backend = None
    try:
        backend_port = free_port()
        with open(f"{tmp}/backend.conf", "w") as f:
            f.write(NGINX_BACKEND.format(dir=tmp, port=backend_port))
        backend = subprocess.Popen([nginx, "-c", f"{tmp}/backend.conf", "-p", tmp], stderr=subprocess.DEVNULL)
        wait_port(backend_port)
        token = jwt()
        # (row, chain, headers, path, wrk script)
        rows = [("no plugins", "none", [], "/bench", None),
                ("full chain", "full", [f"Authorization: Bearer {token}", "Origin: https://app.example.com"], "/bench", None),
                ("cache hits", "cache", [], "/bench", None)]
        if args.answers:
            for name, path, headers, script in answer_rows(tmp):
                rows.append((name, "answers", headers, path, script))
        print(f"\ninstructions per request under callgrind ({args.seconds}s wrk run, 8 connections)\n")
        print("| config | " + " | ".join(label for label, _ in builds) + (" | change |" if args.baseline else " |"))
        print("|---|" + "---|" * (len(builds) + (1 if args.baseline else 0)))
        if args.answers:
            bare = os.path.join(ROOT, "target/release/examples/bare_pingora")
            port = free_port()
            per, _, _ = measure([bare, f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}"], port, "bare-pingora",
                                tmp, args.seconds, [], keep=args.keep)
            print(f"| bare Pingora (reference) | {per / 1000:.1f}k |" + (" | |" if args.baseline else ""))
        for what, chain, headers, path, script in rows:
            counts = []
            for label, binary in builds:
                extra = args.baseline_server if label == "baseline" else ""
                cmd, port = gatehouse_row(binary, chain, backend_port, tmp, extra)
                tag = f"{label}-{what}".replace(" ", "-").replace("(", "").replace(")", "")
                per, n, bad = measure(cmd, port, tag, tmp, args.seconds, headers, path, script, args.keep)
                if bad and chain != "answers":
                    sys.exit(f"{binary} {chain}: {bad} non-2xx responses")
                counts.append(per)
            cells = " | ".join(f"{c / 1000:.1f}k" for c in counts)
            change = f" | {counts[0] / counts[1] - 1:+.1%}" if args.baseline else ""
            print(f"| {what} | {cells}{change} |")
    finally:
        if backend:
            backend.send_signal(signal.SIGQUIT)
            backend.wait(timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
