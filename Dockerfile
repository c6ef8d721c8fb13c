# syntax=docker/dockerfile:1
# portcullis as a container image, built in stages:
#   build    compile the release binary (Rust >= Cargo.toml's rust-version; bookworm, like runtime)
#   init     one-shot helper of the compose demo: secrets, keys, certificates (openssl + portcullis)
#   runtime  the image to run: Debian slim, CA certificates, the binary, a non-root user (default)
#
#   docker build -t portcullis .
#   docker run --rm -v "$PWD/config:/etc/portcullis:ro" -p 9100:9100 -p 9101:9101 portcullis
# The compose demo (examples/compose) builds both `init` and `runtime` from this file.

FROM rust:1.88-bookworm AS build
WORKDIR /src
# Everything .dockerignore lets through: Cargo.toml names all targets, so they must be there.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portcullis \
    && install -D -m 0755 target/release/portcullis /out/portcullis

FROM debian:bookworm-slim AS init
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/portcullis /usr/local/bin/portcullis
COPY examples/compose/init.sh /usr/local/bin/portcullis-compose-init
ENTRYPOINT ["/bin/sh", "/usr/local/bin/portcullis-compose-init"]
CMD ["/out"]

FROM debian:bookworm-slim AS runtime
# ca-certificates: the system CA bundle for HTTPS clients in the image (portcullis itself
# also carries the webpki roots).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 portcullis \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin portcullis
COPY --from=build /out/portcullis /usr/local/bin/portcullis
USER 10001:10001
# ext_authz gRPC, HTTP service, standalone JWKS (as in examples/compose/portcullis.yaml).
EXPOSE 9100 9101 9102
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "-c", "/etc/portcullis/portcullis.yaml"]
