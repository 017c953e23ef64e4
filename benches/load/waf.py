#!/usr/bin/env python3
"""What the WAF (ModSecurity + OWASP CRS 3.3.4 at paranoia level 1, block mode) costs per
request in gatehouse, against nginx with its ModSecurity module and the same rules.

One proxy at a time on core 0 with one worker (gatehouse `threads: 1`, nginx
`worker_processes 1`), an nginx backend and wrk (8 connections) on core 1. Each proxy has a
route with the WAF (`/on/...`) and one without (`/off/...`); both load the same directives:
gatehouse's base configuration (repeated below for nginx), Debian's `crs-setup.conf` and
rules, and the removal of rule 901321. Four request shapes: a plain GET, a GET with 30
cookies, a 4 KiB JSON POST, and an attack (SQL injection in the query, answered 403).
Reported: the proxy's CPU per request (us; utime + stime of the process, nginx's master and
worker) and the ratio gatehouse / nginx+ModSecurity for each shape.

Usage: benches/load/waf.py [--duration 5] [--repeat 3]     (BUILD=0 reuses target/release)
Needs: nginx with libnginx-mod-http-modsecurity, modsecurity-crs, wrk, a release build.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import re
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import CLK_TCK, children_ticks, cpu_ticks, free_port, release_gatehouse, start_backend, stop_all, wait_port  # noqa: E402

CRS_SETUP = "/etc/modsecurity/crs/crs-setup.conf"
CRS_RULES = "/usr/share/modsecurity-crs/rules"
MODULE = "/usr/lib/nginx/modules/ngx_http_modsecurity_module.so"

# what plugins/src/waf/mod.rs loads before the user's rules (block mode, 64 KiB, PL1)
BASE = r'''SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit 65536
SecRequestBodyNoFilesLimit 65536
SecRequestBodyLimitAction ProcessPartial
SecResponseBodyAccess Off
SecAuditEngine Off
SecArgumentSeparator &
SecCookieFormat 0
SecRule REQUEST_HEADERS:Content-Type "@rx (?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQBODY_ERROR "!@eq 0" "id:200002,phase:2,t:none,log,deny,status:400,msg:'Failed to parse request body.',logdata:'%{reqbody_error_msg}',severity:2"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:200003,phase:2,t:none,log,deny,status:400,msg:'Multipart request body failed strict validation'"
SecAction "id:8990001,phase:1,pass,nolog,t:none,setvar:tx.paranoia_level=1"
'''

NGINX_WAF = """
load_module {module};
worker_processes 1;
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log crit;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /on/ {{
      modsecurity on;
      modsecurity_rules_file {dir}/modsec.conf;
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
    location /off/ {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
}}
"""

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
  - {{ id: plain, match: {{ path_prefix: /off/ }}, upstream: backend }}
  - id: waf
    match: {{ path_prefix: /on/ }}
    upstream: backend
    plugins:
      - waf: {{ rules: ["{setup}", "{rules}/*.conf"] }}
"""


def shapes(tmp):
    cookies = "; ".join(f"c{i}=value{i}" for i in range(30))
    records = ",".join(
        f'{{"id":{i},"name":"customer {i}","email":"user{i}@example.com","tags":["a","b"],"active":true,"balance":{i}.5}}'
        for i in range(40))
    body = f"[{records}]"
    assert len(body) >= 4096
    with open(f"{tmp}/post.json", "w") as f:
        f.write(body)
    post = f"{tmp}/post.lua"
    with open(post, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = [=[{body}]=]\n")
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
    return [
        ("plain GET", "/api/users/42", [], None, 200),
        ("GET, 30 cookies", "/api/me", [f"Cookie: {cookies}"], None, 200),
        ("4 KiB JSON POST", "/api/customers/import", [], post, 200),
        ("attack (SQLi)", "/api/items?id=1%27%20OR%20%271%27=%271", [], None, 403),
    ]


def wrk(port, path, headers, script, duration):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c8", f"-d{duration}s", "-H", "Host: api.test",
           "-H", "User-Agent: bench", "-H", "Accept: */*"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return reqs, int(non2xx.group(1)) if non2xx else 0


def check_status(port, path, headers, script, want):
    """One request of the shape: the status it gets (the attack must be refused)."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: api.test",
           "-H", "User-Agent: bench", "-H", "Accept: */*"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@" + script.replace(".lua", ".json")]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    if got != str(want):
        sys.exit(f"{path} on port {port}: {got}, expected {want}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for need in ["wrk", "curl", MODULE, CRS_SETUP]:
        if not (shutil.which(need) or os.path.exists(need)):
            sys.exit(f"{need} is needed (apt-get install wrk curl libnginx-mod-http-modsecurity modsecurity-crs)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    binary = release_gatehouse()
    tmp = tempfile.mkdtemp(prefix="gatehouse-waf-")
    procs = []
    try:
        backend = start_backend(nginx, tmp, procs)
        with open(f"{tmp}/modsec.conf", "w") as f:
            f.write(BASE + f"Include {CRS_SETUP}\nInclude {CRS_RULES}/*.conf\nSecRuleRemoveById 901321\n")
        ngx_port, gh_port, admin = free_port(), free_port(), free_port()
        with open(f"{tmp}/proxy.conf", "w") as f:
            f.write(NGINX_WAF.format(module=MODULE, dir=tmp, backend=backend, port=ngx_port))
        with open(f"{tmp}/gh.yaml", "w") as f:
            f.write(GATEHOUSE.format(port=gh_port, admin=admin, backend=backend, setup=CRS_SETUP, rules=CRS_RULES))
        ngx = subprocess.Popen(["taskset", "-c", "0", nginx, "-c", f"{tmp}/proxy.conf", "-p", tmp],
                               stderr=subprocess.DEVNULL)
        procs.append(ngx)
        gh = subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", f"{tmp}/gh.yaml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gh)
        wait_port(ngx_port)
        wait_port(gh_port)
        time.sleep(1.0)
        proxies = [("gatehouse", gh_port, lambda: cpu_ticks(gh.pid)),
                   ("nginx", ngx_port, lambda: children_ticks(ngx.pid))]
        cases = shapes(tmp)
        for _, port, _ in proxies:
            for name, path, headers, script, want in cases:
                check_status(port, "/on" + path, headers, script, want)
                check_status(port, "/off" + path, headers, script, 200)
                wrk(port, "/on" + path, headers, script, 1)  # warm-up
        results = {}
        for _ in range(args.repeat):
            for name, path, headers, script, want in cases:
                for proxy, port, ticks in proxies:
                    for waf in ["on", "off"]:
                        t0 = ticks()
                        reqs, non2xx = wrk(port, f"/{waf}{path}", headers, script, args.duration)
                        t1 = ticks()
                        us = (t1 - t0) / CLK_TCK * 1e6 / reqs
                        results.setdefault((name, proxy, waf), []).append((us, reqs / args.duration, non2xx))
        print(f"\n{args.repeat} interleaved runs of {args.duration} s, 8 connections, medians; "
              "CPU per request of the proxy in us\n")
        print("| shape | gatehouse off | gatehouse WAF | nginx off | nginx ModSecurity | WAF added: gatehouse | WAF added: nginx | gatehouse WAF / nginx ModSecurity |")
        print("|---|---|---|---|---|---|---|---|")
        for name, *_ in cases:
            med = {k[1:]: statistics.median(r[0] for r in v) for k, v in results.items() if k[0] == name}
            g_on, g_off = med[("gatehouse", "on")], med[("gatehouse", "off")]
            n_on, n_off = med[("nginx", "on")], med[("nginx", "off")]
            print(f"| {name} | {g_off:.1f} | {g_on:.1f} | {n_off:.1f} | {n_on:.1f} | "
                  f"{g_on - g_off:.1f} | {n_on - n_off:.1f} | {g_on / n_on:.2f}x |")
        print("\nrequests/s (medians):")
        for (name, proxy, waf), v in sorted(results.items()):
            print(f"  {name:18} {proxy:9} {waf:3} {statistics.median(r[1] for r in v):9,.0f}  "
                  f"non-2xx {max(r[2] for r in v)}")
    finally:
        stop_all(procs, nginx, tmp)


if __name__ == "__main__":
    main()
