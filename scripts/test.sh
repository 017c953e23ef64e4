#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need when it is missing (cmake for
# Pingora's zlib-ng, Debian's chromium for the browser CORS test, prometheus for promtool
# and a real scrape), runs every unit and
# integration test, then checks every shipped config with `gatehouse check`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v chromium >/dev/null 2>&1 || need+=(chromium)       # tests/browser.rs
command -v promtool >/dev/null 2>&1 || need+=(prometheus)     # tests/observability.rs
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${need[*]}; install them (apt-get install -y ${need[*]}) or run as root" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --workspace

cargo build --bin gatehouse
for f in $(find conf -name '*.yaml' -o -name '*.yml' | sort); do
  ./target/debug/gatehouse check -c "$f"
done
