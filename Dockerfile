# syntax=docker/dockerfile:1
# Accord in a container: `docker build -t accord .` (see deploy/README.md).
# Stage 1 builds the release binary; stage 2 is a small runtime image with no compiler, no
# shell and no package manager, running as a non-root user.

FROM rust:1.94-slim-bookworm AS build
WORKDIR /src
# ring (the TLS crypto provider) needs only the C compiler the rust image already has.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY proto proto
COPY tests tests
RUN cargo build --release --locked -p accord-cli \
 && install -D -m 0755 target/release/accord /out/accord

# distroless/cc: glibc, libgcc, CA certificates and a `nonroot` user (uid 65532); nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/accord /usr/local/bin/accord
USER nonroot:nonroot
# The room's data (room.key, agreements, audit logs) lives here: mount a volume.
VOLUME ["/var/lib/accord"]
EXPOSE 7700 7701
ENTRYPOINT ["/usr/local/bin/accord"]
CMD ["room", "serve", "--config", "/etc/accord/room.toml"]
