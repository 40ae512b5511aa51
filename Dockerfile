# syntax=docker/dockerfile:1
#
# The shop's one image. Its entrypoint is the `shop` binary, so every role runs from it:
#
#   docker build -t shop .
#   docker run --rm -e SHOP_LISTEN_ADDR=0.0.0.0:8090 ... shop role saga
#
# docker-compose.yml (profile `shop`) and deploy/k8s/ run it this way; deploy/README.md says how.
#
# No container engine runs on this project's machines, so this file is never built here: it is
# kept honest by hadolint in `cargo xtask lint`, and the environment the manifests give each role
# is checked against the code by tests/manifests.rs.
#
# Four stages: `chef` is the Rust image with cargo-chef installed; `planner` turns the manifests
# and Cargo.lock into a recipe; `builder` compiles the dependencies from the recipe alone (a layer
# that stays cached while only sources change), then the shop; `runtime` is a slim image with the
# binary alone, run as a user without privileges.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
# cargo-chef, pinned; the build image already has what librdkafka's build needs (a C compiler,
# make, perl, zlib's headers).
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependency layer: rebuilt only when a manifest or Cargo.lock changes. Both builds select
# the same package, so features unify the same way and the second reuses every dependency.
RUN cargo chef cook --release --locked -p shop --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p shop --bin shop

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# The binary links only libc, libm, libgcc_s and zlib, all in the slim image already.
RUN groupadd --system --gid 10001 shop \
    && useradd --system --uid 10001 --gid shop --no-create-home --shell /usr/sbin/nologin shop
COPY --from=builder /src/target/release/shop /usr/local/bin/shop
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# The roles' documented ports: gateway 8080, saga 8090, inventory to orders 8091 to 8094.
EXPOSE 8080 8090 8091 8092 8093 8094 8095
ENTRYPOINT ["/usr/local/bin/shop"]
