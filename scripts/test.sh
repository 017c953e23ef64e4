#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need when it is missing (cmake for
# Pingora's zlib-ng, Debian's chromium for the browser CORS test, prometheus for promtool
# and a real scrape, nghttp2-client for h2load, libmodsecurity-dev and modsecurity-crs for
# the WAF, pebble for ACME), runs every unit and
# integration test, then checks every shipped config with `gatehouse check` (and the custom
# plugin example's config with that example).
set -euo pipefail
cd "$(dirname "$0")/.."

# cmake: Pingora's zlib-ng; chromium: tests/browser.rs; prometheus: promtool and a real scrape
# in tests/observability.rs; nghttp2-client: h2load in tests/tls_tools.rs (openssl and curl,
# used there too, are part of the base system); nginx: the side-by-side corpus in
# tests/hardening.rs; redis-server: the shared counters in tests/redis.rs; pkg-config,
# libmodsecurity-dev and modsecurity-crs: the `waf` plugin and tests/waf.rs; e2fsprogs
# (chattr): a read-only cache directory for root in tests/cache_disk.rs; pebble (with
# pebble-challtestsrv): the ACME CA of tests/acme.rs
./scripts/install-missing.sh cmake chattr:e2fsprogs pebble pebble-challtestsrv:pebble chromium promtool:prometheus h2load:nghttp2-client openssl curl nginx redis-server \
  pkg-config /usr/include/modsecurity/modsecurity.h:libmodsecurity-dev /usr/share/modsecurity-crs/rules/REQUEST-901-INITIALIZATION.conf:modsecurity-crs

cargo test --workspace

cargo build --bin gatehouse
for f in $(find conf -name '*.yaml' -o -name '*.yml' | sort); do
  ./target/debug/gatehouse check -c "$f"
done
# a build with a plugin of its own checks its config through the same entry point
cargo run -q --example custom_plugin -- check -c examples/custom_plugin.yaml
