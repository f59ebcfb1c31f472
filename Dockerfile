# syntax=docker/dockerfile:1
#
# One image with the three Shomei binaries, picked by the command:
#
#   shomei-api serve | migrate | tenant create … | data-keys rotate | storage open … | log verify
#   shomei-worker
#   shomei-tsa
#
# Targets: `runtime` (the default: Debian slim, non-root, only the run-time libraries plus
# SoftHSM2 and OpenSC for the default HSM and curl for health checks) and `init` (runtime plus
# openssl and certutil, to create the development SoftHSM2 token with scripts/dev-hsm.sh; the
# compose file's one-shot `init` service). A real HSM: mount its PKCS#11 module into the
# container and set SHOMEI_HSM_MODULE to it (docs/operations.md, "A real HSM").
#
#   docker build -t shomei .                 # runtime
#   docker build --target init -t shomei-init .
#
# Nothing secret is copied in: no PIN, key, token or certificate (see .dockerignore). This file
# has not been built here (no Docker daemon on the development machines); every path and
# command in it was checked against the repository, see docs/operations.md, "Containers".

# The toolchain the test suite runs with (rustup stable on the development machines); the
# workspace's MSRV is rust-version in Cargo.toml.
ARG RUST_VERSION=1.95.0
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_SUITE} AS builder
# diesel's pq-sys links libpq; everything else is pure Rust or built by cc (ring, and aws-lc-sys
# for object_store's S3 client).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target directories are build caches (BuildKit), so the binaries are copied
# out within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin shomei-api --bin shomei-worker --bin shomei-tsa \
 && install -D -m 0755 -t /out \
        target/release/shomei-api target/release/shomei-worker target/release/shomei-tsa

FROM debian:${DEBIAN_SUITE}-slim AS base
# libpq5: what shomei-api and shomei-worker link (readelf -d: libpq.so.5 besides libc, libm and
# libgcc_s). softhsm2: the default PKCS#11 module (/usr/lib/softhsm/libsofthsm2.so, loaded at
# run time) and softhsm2-util; opensc: pkcs11-tool, for key ceremonies against any module.
# curl: the health checks. ca-certificates: outgoing TLS besides the bundled web roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates curl libpq5 softhsm2 opensc \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so files in shared volumes have one owner whichever container wrote them. The
# directories exist in the image so that a fresh named volume mounted on them starts owned by
# this user (Docker copies the mount point's ownership into an empty volume).
RUN groupadd --system --gid 10001 shomei \
 && useradd --system --uid 10001 --gid shomei --home-dir /var/lib/shomei \
        --shell /usr/sbin/nologin shomei \
 && install -d -o shomei -g shomei -m 0755 /var/lib/shomei /var/lib/shomei/pki \
 && install -d -o shomei -g shomei -m 0700 \
        /var/lib/shomei/hsm /var/lib/shomei/storage /var/lib/shomei/mail
COPY --from=builder /out/ /usr/local/bin/
# Defaults that fit the image's layout; everything else is shomei-config's default or the
# deployment's environment (docs/operations.md, "Configuration reference").
ENV SHOMEI_STORAGE_DIR=/var/lib/shomei/storage \
    SHOMEI_MAIL_DIR=/var/lib/shomei/mail \
    SHOMEI_HSM_MODULE=/usr/lib/softhsm/libsofthsm2.so \
    SOFTHSM2_CONF=/var/lib/shomei/hsm/softhsm2.conf \
    SHOMEI_LOG_JSON=1
USER shomei:shomei
WORKDIR /var/lib/shomei
# 8080 the API, 8318 the TSA, 9100 a worker's /metrics (as the compose file sets them).
EXPOSE 8080 8318 9100

FROM base AS init
USER root
# scripts/dev-hsm.sh needs openssl (CA and keys), softhsm2-util and pkcs11-tool (above),
# certutil (the NSS trust store it also makes) and flock (util-linux, in the base image).
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl libnss3-tools \
 && rm -rf /var/lib/apt/lists/*
COPY --chmod=0755 scripts/dev-hsm.sh /usr/local/bin/dev-hsm.sh
USER shomei:shomei
CMD ["shomei-api", "migrate"]

# Last, so that a plain `docker build .` makes it.
FROM base AS runtime
CMD ["shomei-api", "serve"]
