# Build stage: the Rust toolchain plus cmake (Pingora's zlib-ng needs it) and libmodsecurity's
# headers (the `waf` plugin, found with pkg-config).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libmodsecurity-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin gatehouse

# Run stage: slim Debian, non-root user, the shipped configs; libmodsecurity3 and the OWASP
# Core Rule Set (/etc/modsecurity/crs, /usr/share/modsecurity-crs/rules) for the `waf` plugin.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libmodsecurity3 modsecurity-crs \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin gatehouse \
    && install -d -o gatehouse -g gatehouse /var/cache/gatehouse \
    && install -d -m 700 -o gatehouse -g gatehouse /var/lib/gatehouse/acme
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
COPY conf/ /etc/gatehouse/
USER gatehouse
# 8080: proxy listener. 9180: admin listener (/health, /ready, /metrics). The shipped config
# binds admin to 127.0.0.1; mount a config with admin.listen "0.0.0.0:9180" to reach it from
# outside the container, and set GATEHOUSE_ADMIN_TOKEN (an admin listener off loopback without
# a token is a config error unless admin.allow_unauthenticated: true).
EXPOSE 8080 9180
# The disk cache tier's directory (server.cache.disk.path in conf/examples/caching.yaml):
# mount a volume here to keep the cache across container restarts.
VOLUME /var/cache/gatehouse
# ACME state (acme.state_dir in conf/examples/acme.yaml): the account key and the issued
# certificates; keep it, or every restart orders anew (and meets the CA's rate limits).
VOLUME /var/lib/gatehouse/acme
# SIGTERM drains in-flight requests for server.grace_period, then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["run", "-c", "/etc/gatehouse/gatehouse.yaml"]
