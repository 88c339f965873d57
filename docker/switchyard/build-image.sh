#!/usr/bin/env bash
# Builds the image switchyard:local (IMAGE=...): FROM scratch + the statically linked binary.
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile dist --target x86_64-unknown-linux-gnu
# in STATIC_TARGET_DIR (default target/static; a separate target dir, so other builds are not
# blocked; ~5 min cold on 2 cores), stripped, then a classic docker build (nothing is pulled).
# Needs: a Rust toolchain (rustup's stable, the version in Cargo.toml's rust-version or newer; Debian's
# packaged rustc is too old), gcc, the Docker engine; no network beyond crates.io. About 5 minutes
# for a cold static build on 2 cores (fat LTO), seconds for the image itself. Nothing is pulled.
set -euo pipefail
command -v cargo >/dev/null || { echo "build-image: cargo not found: install a Rust toolchain (https://rustup.rs), then run this again" >&2; exit 1; }
command -v docker >/dev/null || { echo "build-image: docker not found: this builds a local image on the Docker engine" >&2; exit 1; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${IMAGE:-switchyard:local}"
TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${STATIC_TARGET_DIR:-$ROOT/target/static}"
START=$(date +%s)
log() { printf 'build-image: [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

log "cargo build --profile dist --target $TARGET (static) in $CARGO_TARGET_DIR"
(cd "$ROOT" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile dist --locked --target "$TARGET" --bin switchyard)
BIN="$CARGO_TARGET_DIR/$TARGET/dist/switchyard"
file "$BIN" 2>/dev/null | grep -q 'static' || { echo "build-image: $BIN is not statically linked" >&2; exit 1; }

CTX=$(mktemp -d); trap 'rm -rf "$CTX"' EXIT
strip -o "$CTX/switchyard" "$BIN" 2>/dev/null || cp "$BIN" "$CTX/switchyard"
cp "$ROOT/docker/switchyard/Dockerfile" "$CTX/"
log "docker build -> $IMAGE"
DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$CTX" >/dev/null 2>"$CTX/build.log" || { cat "$CTX/build.log" >&2; exit 1; }
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}'))"
