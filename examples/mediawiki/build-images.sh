#!/usr/bin/env bash
# Builds the images of the MediaWiki example stack locally, from Debian packages, with no registry:
#
#   w2l-db:bookworm     MariaDB (root by unix socket; creates $MARIADB_DATABASE/$MARIADB_USER at first start)
#   w2l-cache:bookworm  memcached
#   w2l-web:1, w2l-web:2  MediaWiki 1.39 (Debian's `mediawiki`) + apache2 + mod_php; version 2 enables
#                       an extension with its own tables, so moving a database from 1 to 2 needs
#                       maintenance/update.php (the release's `migrate` step)
#
# How: debootstrap a minimal bookworm rootfs once (tarball cached in $CACHE_DIR), install each
# image's packages into a copy of it in a chroot (tarballs cached too), `docker import` those, then
# add the small files of images/NAME with images/NAME/setup.sh run in a container and committed
# (nothing is pulled). The apt mirror is the one this machine uses (/etc/apt/sources.list*), or MIRROR=.
#
# Idempotent: cached tarballs and imported images are reused, an image is rebuilt only when its
# files in images/NAME changed, so a second run takes seconds. REBUILD_ROOTFS=1 redoes the tarballs.
# Prints the time of each stage.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE=bookworm
CACHE_DIR="${CACHE_DIR:-/var/cache/switchyard-images}"
START=$(date +%s)

log() { printf 'build-images: [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
die() { printf 'build-images: error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "docker engine not reachable (is dockerd running?)"
[ "$(id -u)" = 0 ] || die "debootstrap and chroot need root"
mkdir -p "$CACHE_DIR"

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

ROOTS=()
cleanup() {
    local r m
    for r in "${ROOTS[@]:-}"; do
        [ -n "$r" ] && [ -d "$r" ] || continue
        for m in proc dev/pts dev; do umount -l "$r/$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$r"
    done
}
trap cleanup EXIT

BASE_TAR="$CACHE_DIR/w2l-base-$SUITE-rootfs.tar"

base_rootfs() {
    if [ -z "${REBUILD_ROOTFS:-}" ] && [ -s "$BASE_TAR" ]; then
        log "base rootfs: cached $BASE_TAR"
        return
    fi
    local mirror="${MIRROR:-$(find_mirror | grep -v security | head -n1)}"
    [ -n "$mirror" ] || die "no Debian $SUITE mirror found in /etc/apt/sources.list*; set MIRROR="
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
            || die "could not install debootstrap"
    fi
    local root; root=$(mktemp -d "$CACHE_DIR/w2l-base.XXXXXX"); ROOTS+=("$root")
    log "base rootfs: debootstrap --variant=minbase $SUITE from $mirror"
    debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$CACHE_DIR/w2l-debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE_DIR/w2l-debootstrap.log" >&2; die "debootstrap failed (log: $CACHE_DIR/w2l-debootstrap.log)"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb
    tar --numeric-owner -C "$root" -cf "$BASE_TAR.$$" . && mv "$BASE_TAR.$$" "$BASE_TAR"
    rm -rf --one-file-system "$root"
    log "base rootfs: wrote $BASE_TAR"
}

# pkg_rootfs NAME PACKAGES...: base + packages → $CACHE_DIR/w2l-NAME-$SUITE-rootfs.tar
pkg_rootfs() {
    local name=$1; shift
    local tar="$CACHE_DIR/w2l-$name-$SUITE-rootfs.tar" logf="$CACHE_DIR/w2l-$name-install.log"
    if [ -z "${REBUILD_ROOTFS:-}" ] && [ -s "$tar" ] && [ "$tar" -nt "$BASE_TAR" ]; then
        log "$name rootfs: cached $tar"
        return
    fi
    local root; root=$(mktemp -d "$CACHE_DIR/w2l-$name.XXXXXX")
    # This runs in a background subshell: its own clean-up when it is stopped half-way.
    trap 'for m in proc dev/pts dev; do umount -l "'"$root"'/$m" 2>/dev/null || true; done; rm -rf --one-file-system "'"$root"'"' EXIT
    tar -C "$root" -xf "$BASE_TAR"
    # No service may start inside the chroot while packages install.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
    log "$name rootfs: apt-get install $*"
    if ! chroot "$root" /bin/sh -c '
            set -e
            export DEBIAN_FRONTEND=noninteractive LC_ALL=C
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends "$@"
            apt-get clean' sh "$@" >"$logf" 2>&1; then
        tail -n 20 "$logf" >&2; die "$name: package install failed (log: $logf)"
    fi
    for m in dev/pts dev proc; do umount "$root/$m"; done
    rm -f "$root/usr/sbin/policy-rc.d"
    # Each image's own files (entrypoints, configs) come in its docker build, not in the tarball.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
           "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
    tar --numeric-owner -C "$root" -cf "$tar.$BASHPID" . && mv "$tar.$BASHPID" "$tar"
    rm -rf --one-file-system "$root"
    trap - EXIT
    log "$name rootfs: wrote $tar ($(du -m "$tar" | cut -f1) MB)"
}

# import NAME: the rootfs tarball as w2l-NAME-rootfs:SUITE, unless that image holds this tarball already.
import_rootfs() {
    local name=$1 tar="$CACHE_DIR/w2l-$1-$SUITE-rootfs.tar" image="w2l-$1-rootfs:$SUITE"
    local stamp; stamp="$(stat -c '%Y-%s' "$tar")"
    if [ "$(docker image inspect -f '{{index .Config.Labels "w2l.rootfs"}}' "$image" 2>/dev/null)" = "$stamp" ]; then
        log "$name: $image is up to date"
        return
    fi
    log "$name: docker import $tar -> $image"
    docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c "LABEL w2l.rootfs=$stamp" \
        -m "w2l example: debootstrap $SUITE + packages" "$tar" "$image" >/dev/null
}

# layer TAG NAME [ARG] -- COMMIT-CHANGES...: run images/NAME/setup.sh ARG in a container of
# w2l-NAME-rootfs with images/NAME at /src, and commit it as TAG. One commit per image on purpose:
# with the fuse-overlayfs storage driver every commit walks the whole rootfs (~14 s for the web
# image here), so a Dockerfile's one-commit-per-instruction costs minutes. Skipped when TAG was made
# from the same rootfs image and the same files (label w2l.inputs).
layer() {
    local tag=$1 name=$2 arg=$3; shift 4
    local dir="$HERE/images/$name" base="w2l-$name-rootfs:$SUITE" inputs c
    inputs=$( { docker image inspect -f '{{.Id}}' "$base"; echo "$arg"; \
                cd "$dir" && find . -type f | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -c1-16)
    if [ "$(docker image inspect -f '{{index .Config.Labels "w2l.inputs"}}' "$tag" 2>/dev/null)" = "$inputs" ]; then
        log "$tag is up to date"
        return
    fi
    c="w2l-build-$name$arg-$$"
    docker rm -f "$c" >/dev/null 2>&1 || true
    if ! docker run --name "$c" --network none -v "$dir:/src:ro" "$base" sh /src/setup.sh "$arg" >"$CACHE_DIR/w2l-$name$arg-setup.log" 2>&1; then
        docker rm -f "$c" >/dev/null 2>&1 || true
        tail -n 20 "$CACHE_DIR/w2l-$name$arg-setup.log" >&2; die "setup of $tag failed (log: $CACHE_DIR/w2l-$name-setup.log)"
    fi
    local changes=(-c "LABEL w2l.inputs=$inputs")
    for ch in "$@"; do changes+=(-c "$ch"); done
    docker commit "${changes[@]}" "$c" "$tag" >/dev/null || { docker rm -f "$c" >/dev/null 2>&1; die "docker commit of $tag failed"; }
    docker rm "$c" >/dev/null
    log "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

base_rootfs
# The three package installs are independent: run them side by side (downloads overlap).
pids=()
pkg_rootfs db mariadb-server mariadb-client & pids+=($!)
pkg_rootfs cache memcached & pids+=($!)
pkg_rootfs web apache2 libapache2-mod-php8.2 php8.2-cli php8.2-mysql php8.2-intl php8.2-mbstring php8.2-xml \
    mediawiki & pids+=($!)
for p in "${pids[@]}"; do wait "$p" || die "a rootfs build failed (see above)"; done
for n in db cache web; do import_rootfs "$n"; done

layer w2l-db:bookworm db "" -- 'CMD ["/usr/local/bin/entrypoint.sh"]' 'EXPOSE 3306' 'VOLUME /var/lib/mysql'
layer w2l-cache:bookworm cache "" -- 'USER memcache' 'EXPOSE 11211' \
    'CMD ["memcached", "-m", "64", "-l", "0.0.0.0", "-p", "11211", "-U", "0"]'
# The web images are also tagged w2l-web-<hash of images/web>:<v>, and that repository is printed
# last (WEB_REPO=...): the tests use it, so another work tree that rebuilds w2l-web:<v> from other
# files on the same engine does not swap the images under a running test.
WEB_REPO="w2l-web-$(cd "$HERE/images/web" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)"
pids=()
for v in 1 2; do
    if [ -z "${REBUILD_ROOTFS:-}" ] && docker image inspect "$WEB_REPO:$v" >/dev/null 2>&1; then
        docker tag "$WEB_REPO:$v" "w2l-web:$v"
        log "w2l-web:$v is $WEB_REPO:$v (up to date)"
        continue
    fi
    ( layer "w2l-web:$v" web "$v" -- 'WORKDIR /usr/share/mediawiki' 'EXPOSE 80' "LABEL w2l.version=$v" \
        'CMD ["/usr/local/bin/entrypoint.sh"]' && docker tag "w2l-web:$v" "$WEB_REPO:$v" ) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "a web image failed (see above)"; done
log "done: w2l-db:bookworm w2l-cache:bookworm w2l-web:1 w2l-web:2 ($WEB_REPO)"
echo "WEB_REPO=$WEB_REPO"
