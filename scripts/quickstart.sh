#!/usr/bin/env bash
# Builds gatehouse and the demo backend, starts two demo backends on 127.0.0.1:9001 and
# 127.0.0.1:9002, and runs gatehouse in the foreground on conf/gatehouse.yaml.
# Try it from another terminal:  curl -s localhost:8080/users/42
# Ctrl-C stops the gateway (gracefully) and the demo backends.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pingora's zlib-ng builds with cmake, the `waf` plugin links libmodsecurity (found with
# pkg-config) and ships with the OWASP CRS in mind: installed when missing (as root), as
# scripts/test.sh does
./scripts/install-missing.sh cmake pkg-config /usr/include/modsecurity/modsecurity.h:libmodsecurity-dev /usr/share/modsecurity-crs/rules/REQUEST-901-INITIALIZATION.conf:modsecurity-crs

cargo build --release --bin gatehouse --example demo_backend

./target/release/examples/demo_backend 127.0.0.1:9001 127.0.0.1:9002 &
backend=$!
trap 'kill $backend 2>/dev/null || true' EXIT

echo "gatehouse on http://localhost:8080 (admin: http://127.0.0.1:9180/metrics); Ctrl-C to stop"
./target/release/gatehouse run -c conf/gatehouse.yaml "$@"
