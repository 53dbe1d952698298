# One image with every postback binary; each service runs its own.
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins && \
    mkdir /out && find target/release -maxdepth 1 -type f -perm -u+x -name 'postback-*' -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 postback \
    && mkdir -p /var/lib/postback && chown postback /var/lib/postback
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/postback/
COPY tools/sandbox/sandbox.example.toml /etc/postback/
USER postback
