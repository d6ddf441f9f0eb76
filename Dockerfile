# syntax=docker/dockerfile:1
#
# gateway container image: build with the Rust toolchain, run on a slim Debian.
#
#   docker build -t gateway:local .
#   docker run --rm -p 8080:8080 --ulimit nofile=1048576:1048576 \
#     -e GATEWAY_AUTH_HS_SECRET="$(openssl rand -hex 32)" gateway:local
#
# Configuration is by environment (GATEWAY_<SECTION>_<KEY>, see gateway.toml)
# or by mounting a file at /etc/gateway/gateway.toml (the working directory,
# where `gateway serve` looks for ./gateway.toml). The image holds no key
# material: without GATEWAY_AUTH_HS_SECRET (or a key file) the gateway refuses
# to start and says how to provide one.
#
# Linted by hadolint in .ci/deploy-checks.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------- build stage
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src

# Dependency layer: the workspace manifests, the lock file and empty targets
# are enough to compile every dependency. This layer is rebuilt only when
# Cargo.toml, loadtest/Cargo.toml or Cargo.lock change, not on every source
# edit. (loadtest/ is a workspace member: its manifest is needed for --locked
# to resolve, but it is never built here.) The registry cache mount keeps
# downloaded crates across builds without putting them in a layer.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    mkdir -p src loadtest/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > loadtest/src/main.rs \
    && touch loadtest/src/lib.rs \
    && cargo build --release --locked --package gateway --lib

# Real sources. `touch` makes cargo rebuild the crate itself: COPY keeps the
# files' original mtimes, which can be older than the dummy build above.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    touch src/main.rs src/lib.rs \
    && cargo build --release --locked --package gateway --bin gateway \
    && install -D -m 0755 target/release/gateway /out/gateway

# -------------------------------------------------------------- runtime stage
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# curl serves only the HEALTHCHECK below (no shell tricks, clear errors).
# Kubernetes ignores HEALTHCHECK and uses the probes in deploy/k8s/, so an
# image for Kubernetes only could drop it (or use gcr.io/distroless/cc).
# Versions are not pinned: the slim base is rebuilt with Debian's security
# updates, and pinned Debian versions disappear from the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway

COPY --from=build /out/gateway /usr/local/bin/gateway

# Numeric user, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /etc/gateway

ENV GATEWAY_SERVER_LISTEN=0.0.0.0:8080 \
    GATEWAY_LOG_FORMAT=json

EXPOSE 8080

# Liveness only: /healthz says the process answers. /readyz (not ready while
# draining, at capacity or without its broker) is for load balancers, not for
# restarting a container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--max-time", "2", "--output", "/dev/null", "http://127.0.0.1:8080/healthz"]

# Drain vs grace period. On SIGTERM the gateway reports not ready at once,
# stops accepting, closes its sockets with 1012 spread over
# server.drain_seconds (default 10) so clients reconnect elsewhere gradually,
# flushes, and exits 0. The orchestrator's grace period must be LONGER than
# the drain plus a few seconds of flush, or the process is SIGKILLed mid-drain
# and the remaining clients all reconnect at once:
#   docker stop --time 30 / compose stop_grace_period: 30s (docker's default
#   of 10 s equals the default drain: too short);
#   Kubernetes terminationGracePeriodSeconds > preStop sleep + drain_seconds + 10
#   (see deploy/k8s/base/deployment.yaml; .ci/deploy-checks verifies it).
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["serve"]
