# Multi-stage build of the regbridge controller. The build step is the same
# command CI runs (`cargo build --release --locked`), so CI exercises it.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependency layer: build against the lockfile with placeholder sources first.
COPY Cargo.toml Cargo.lock ./
COPY providers/Cargo.toml providers/Cargo.toml
COPY tests/standin/Cargo.toml tests/standin/Cargo.toml
COPY tests/support/Cargo.toml tests/support/Cargo.toml
RUN mkdir -p src providers/src tests/standin/src tests/support/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs providers/src/lib.rs tests/standin/src/lib.rs tests/support/src/lib.rs \
 && cargo build --release --locked || true
COPY . .
RUN touch src/main.rs src/lib.rs providers/src/lib.rs && cargo build --release --locked

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/regbridge /usr/local/bin/regbridge
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/regbridge"]
CMD ["run"]
