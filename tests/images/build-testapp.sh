#!/usr/bin/env bash
# Builds the static sy-testapp binary (testapp/, std only) and the local images
# sy-testapp:1 and sy-testapp:2 from it with `docker import` (nothing pulled).
#
# Each image: / holds /sy-testapp, an empty /data and /tmp, a minimal /etc;
# ENTRYPOINT ["/sy-testapp"], CMD ["web"], ENV APP_VERSION=<v>,
# LABEL switchyard.testapp.sha256=<sha256 of the binary>.
# Also tagged sy-testapp-<first 12 hex of the binary's sha256>:<v>, which the tests use: several
# work trees share one engine, and a tree that re-imports sy-testapp:<v> from its own binary must
# not swap the app under another tree's running tests. The last line printed is
# `IMAGE_REPO=sy-testapp-<sha12>`.
# Idempotent: an image whose label matches the freshly built binary is kept.
# Env: VERSIONS="1 2" (which tags), FORCE=1 (re-import regardless).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
APP="$ROOT/testapp"
TARGET=x86_64-unknown-linux-gnu
VERSIONS="${VERSIONS:-1 2}"
START=$(date +%s.%N)

log() { printf 'build-testapp: %s\n' "$*"; }
die() { printf 'build-testapp: error: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1fs", e - s }'; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found: these images need a Docker engine"
docker info >/dev/null 2>&1 || die "docker engine not reachable (is dockerd running? DOCKER_HOST=${DOCKER_HOST:-unset})"
command -v cargo >/dev/null 2>&1 || die "cargo not found"

log "cargo build --release --target $TARGET (static)"
# --target-dir: the binary is looked for there, whatever CARGO_TARGET_DIR the caller exported.
(cd "$APP" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet --target "$TARGET" --target-dir "$APP/target") \
    || die "cargo build of testapp failed"
BIN="$APP/target/$TARGET/release/sy-testapp"
[ -x "$BIN" ] || die "no binary at $BIN"
if command -v ldd >/dev/null 2>&1 && ldd "$BIN" 2>&1 | grep -q '=>'; then
    die "$BIN is dynamically linked; the images have no libc"
fi
SHA=$(sha256sum "$BIN" | cut -d' ' -f1)
log "binary $BIN sha256 ${SHA:0:16}… [$(elapsed)]"

ROOTFS=""
make_rootfs() {
    [ -n "$ROOTFS" ] && return 0
    ROOTFS=$(mktemp -d)
    trap 'rm -rf "$ROOTFS"' EXIT
    install -m 0755 "$BIN" "$ROOTFS/sy-testapp"
    mkdir -p "$ROOTFS/data" "$ROOTFS/tmp" "$ROOTFS/etc"
    chmod 1777 "$ROOTFS/tmp"
    echo 'root:x:0:0:root:/:/sy-testapp' >"$ROOTFS/etc/passwd"
    echo 'root:x:0:' >"$ROOTFS/etc/group"
    echo 'hosts: files dns' >"$ROOTFS/etc/nsswitch.conf"
}

REPO="sy-testapp-${SHA:0:12}"
for v in $VERSIONS; do
    img="sy-testapp:$v"
    if docker image inspect "$REPO:$v" >/dev/null 2>&1 && [ -z "${FORCE:-}" ]; then
        # This binary's image exists: point the plain tag at it too (cheap), keep going.
        docker tag "$REPO:$v" "$img"
        log "$REPO:$v is up to date (same binary), skipped"
        continue
    fi
    have=$(docker image inspect -f '{{index .Config.Labels "switchyard.testapp.sha256"}}' "$img" 2>/dev/null || true)
    if [ -z "${FORCE:-}" ] && [ "$have" = "$SHA" ]; then
        docker tag "$img" "$REPO:$v" || die "docker tag $REPO:$v failed"
        log "$img is up to date (same binary), skipped"
        continue
    fi
    make_rootfs
    tar --numeric-owner --owner=0 --group=0 -C "$ROOTFS" -c . | docker import \
        -c "ENV APP_VERSION=$v" \
        -c "LABEL switchyard.testapp.sha256=$SHA switchyard.testapp.version=$v" \
        -c 'EXPOSE 80 5000' \
        -c 'WORKDIR /' \
        -c 'ENTRYPOINT ["/sy-testapp"]' \
        -c 'CMD ["web"]' \
        -m "sy-testapp $v (switchyard test image)" \
        - "$img" >/dev/null || die "docker import of $img failed"
    docker tag "$img" "$REPO:$v" || die "docker tag $REPO:$v failed"
    log "imported $img${have:+ (replaced binary ${have:0:16}…)}"
done
log "done in $(elapsed): $(for v in $VERSIONS; do printf 'sy-testapp:%s ' "$v"; done)($REPO)"
echo "IMAGE_REPO=$REPO"
