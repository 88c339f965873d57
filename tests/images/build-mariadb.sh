#!/usr/bin/env bash
# Builds the local image sy-mariadb:bookworm without pulling anything:
# debootstrap a minimal Debian bookworm rootfs from the apt mirror this machine
# is configured with, install mariadb-server + mariadb-client into it, add a
# container entrypoint, and `docker import` it.
#
# Idempotent: does nothing when the image exists (FORCE=1 rebuilds it). The
# rootfs tarball is cached in $CACHE_DIR, so rebuilding the image after the
# engine was wiped only re-imports it (FORCE=1 REBUILD_ROOTFS=1 redoes all).
#
# The image: CMD /usr/local/bin/entrypoint.sh, which initialises
# /var/lib/mysql when it is empty (root@localhost authenticates by unix socket,
# so `docker exec C mariadb-dump --all-databases` and `docker exec -i C mariadb`
# need no password), then execs `mariadbd --user=mysql --bind-address=0.0.0.0`.
# If MARIADB_ROOT_PASSWORD is set at first start, root@'%' is created with it.
# The binary log is on in ROW format (CMD passes --log-bin --binlog-format=ROW
# --server-id=1 to mariadbd), so the online release flow (issue 18) can copy the
# database while it takes writes and catch up from its binlog; the image carries
# ENV SY_MARIADB_BINLOG=ROW, and an image without it is rebuilt.
set -euo pipefail

IMAGE="${IMAGE:-sy-mariadb:bookworm}"
SUITE=bookworm
CACHE_DIR="${CACHE_DIR:-/var/cache/switchyard-images}"
TARBALL="$CACHE_DIR/sy-mariadb-$SUITE-rootfs.tar"
START=$(date +%s)

log() { printf 'build-mariadb: %s\n' "$*"; }
die() { printf 'build-mariadb: error: %s\n' "$*" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - START ))s"; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "docker engine not reachable (is dockerd running?)"

if [ -z "${FORCE:-}" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    if docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep -qx 'SY_MARIADB_BINLOG=ROW'; then
        log "$IMAGE already exists, nothing to do (FORCE=1 to rebuild) [$(elapsed)]"
        exit 0
    fi
    log "$IMAGE has no binary log configured (built before issue 18): re-importing it"
fi

# The first Debian mirror of apt's configuration (deb822 .sources or one-line .list).
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri=""; ok=0; next }
            /^URIs:/ { uri=$2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok=1 }
            END { if (uri != "" && ok) print uri }' "$f" | head -n1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) == suite) print $i; break } }' "$f"
    done
}

if [ -n "${REBUILD_ROOTFS:-}" ] || [ ! -s "$TARBALL" ]; then
    MIRROR="${MIRROR:-$(find_mirror | grep -v security | head -n1)}"
    [ -n "$MIRROR" ] || die "no Debian $SUITE mirror found in /etc/apt/sources.list*; set MIRROR="
    log "mirror: $MIRROR"
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
            || die "could not install debootstrap"
    fi
    mkdir -p "$CACHE_DIR"
    ROOT=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    cleanup() {
        for m in proc sys dev/pts dev; do umount -l "$ROOT/$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$ROOT"
    }
    trap cleanup EXIT

    log "debootstrap --variant=minbase $SUITE (takes a few minutes) [$(elapsed)]"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE_DIR/debootstrap.log)"; }

    # No service may start inside the chroot while packages install.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod +x "$ROOT/usr/sbin/policy-rc.d"
    mount -t proc proc "$ROOT/proc"
    mount --bind /dev "$ROOT/dev"
    mount --bind /dev/pts "$ROOT/dev/pts"
    log "installing mariadb-server mariadb-client in the chroot [$(elapsed)]"
    chroot "$ROOT" /bin/sh -c '
        set -e
        export DEBIAN_FRONTEND=noninteractive LC_ALL=C
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client
        apt-get clean
    ' >"$CACHE_DIR/chroot-install.log" 2>&1 \
        || { tail -n 20 "$CACHE_DIR/chroot-install.log" >&2; die "package install failed (log: $CACHE_DIR/chroot-install.log)"; }
    for m in dev/pts dev proc; do umount "$ROOT/$m"; done

    rm -f "$ROOT/usr/sbin/policy-rc.d"
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log \
           "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
    # Each container initialises its own (volume's) data directory at first start.
    rm -rf "$ROOT"/var/lib/mysql && mkdir -p "$ROOT"/var/lib/mysql "$ROOT"/run/mysqld
    chroot "$ROOT" chown mysql:mysql /var/lib/mysql /run/mysqld

    cat >"$ROOT/usr/local/bin/entrypoint.sh" <<'ENTRY'
#!/bin/sh
# Container entrypoint of sy-mariadb: initialise the data directory when empty,
# then run mariadbd in the foreground as PID 1 (it handles SIGTERM itself).
set -e
DATADIR=/var/lib/mysql
mkdir -p /run/mysqld "$DATADIR"
chown mysql:mysql /run/mysqld "$DATADIR"
if [ ! -d "$DATADIR/mysql" ]; then
    echo "entrypoint: initialising $DATADIR" >&2
    mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db \
        --auth-root-authentication-method=socket >/dev/null
    if [ -n "${MARIADB_ROOT_PASSWORD:-}" ]; then
        pw=$(printf '%s' "$MARIADB_ROOT_PASSWORD" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g")
        printf "CREATE USER IF NOT EXISTS 'root'@'%%' IDENTIFIED BY '%s';\nGRANT ALL ON *.* TO 'root'@'%%' WITH GRANT OPTION;\n" "$pw" \
            >/run/mysqld/init.sql
        chown mysql:mysql /run/mysqld/init.sql
        set -- --init-file=/run/mysqld/init.sql "$@"
    fi
fi
exec mariadbd --user=mysql --datadir="$DATADIR" --bind-address=0.0.0.0 "$@"
ENTRY
    chmod 755 "$ROOT/usr/local/bin/entrypoint.sh"

    log "writing rootfs tarball $TARBALL [$(elapsed)]"
    tar --numeric-owner -C "$ROOT" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    cleanup
    trap - EXIT
else
    log "using cached rootfs $TARBALL"
fi

log "docker import -> $IMAGE [$(elapsed)]"
docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV SY_MARIADB_BINLOG=ROW' \
    -c 'EXPOSE 3306' \
    -c 'CMD ["/usr/local/bin/entrypoint.sh", "--log-bin=mysql-bin", "--binlog-format=ROW", "--server-id=1"]' \
    -m "switchyard test image: debootstrap $SUITE + mariadb-server" \
    "$TARBALL" "$IMAGE" >/dev/null
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')) in $(elapsed)"
