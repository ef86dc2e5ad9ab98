# syntax=docker/dockerfile:1
# pgpulse container image: `docker build -t pgpulse .`, or `docker compose up --build` for the
# whole demo stack (deploy/README.md). Checked by `hadolint Dockerfile` (tests/it/docker.rs).

# Build stage. The crate is edition 2024 (Rust >= 1.90); `1-bookworm` is the newest 1.x on the
# same Debian release as the runtime stage, so the binary links against the same glibc.
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the compiled dependencies between builds; the binary is
# copied out of the cached target directory because cache mounts are not part of the layer.
# The `dist` profile (fat LTO, one codegen unit) makes the small binary the image ships.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked \
    && install -m 0755 target/dist/pgpulse /usr/local/bin/pgpulse

# Runtime stage: Debian slim plus curl for the HEALTHCHECK (pgpulse has no health subcommand).
FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pgpulse" \
      org.opencontainers.image.description="Prometheus exporter and monitoring schema for the PostgreSQL database of a trading engine" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/pgpulse/pgpulse"
# DL3008: the base image tag pins the Debian release; pinning package point versions would
# break the build at every Debian security update without making it more reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgpulse \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pgpulse
COPY --from=builder /usr/local/bin/pgpulse /usr/local/bin/pgpulse
COPY queries.yaml /etc/pgpulse/queries.yaml
# Listen on all interfaces inside the container (the binary's default is loopback only), so
# protect /metrics: mount a web config file (TLS, basic auth; deploy/web-config.example.yml) and
# set PGPULSE_WEB__CONFIG_FILE. /health and /ready stay open for the health check and probes.
# TLS to PostgreSQL: PGPULSE_DATABASE__SSLMODE=verify-full and PGPULSE_DATABASE__SSLROOTCERT
# (docs/operations.md, "TLS to PostgreSQL"); secrets from files: PGPULSE_DATABASE__PASSWORD_FILE.
ENV PGPULSE_QUERIES_FILE=/etc/pgpulse/queries.yaml \
    PGPULSE_WEB__LISTEN_ADDRESS=0.0.0.0:9864 \
    PGPULSE_WEB__OPEN_HEALTH=true
USER 10001:10001
EXPOSE 9864
# /health is liveness only: it answers while the database is down (pg_up tells that). Over
# HTTPS when a web config enables TLS (-k: the loopback probe does not check the name).
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "curl -fsS -o /dev/null http://127.0.0.1:9864/health || curl -fsSk -o /dev/null https://127.0.0.1:9864/health"]
ENTRYPOINT ["pgpulse"]
CMD ["serve"]
