#!/usr/bin/env bash
# online_window.sh — issue 18: the read-only window of a release against the size of the
# database, for the freeze flow and the online flow, with a write load running through the proxy.
#
# Usage: benches/online_window.sh [PATH-TO-switchyard]     (default target/debug/switchyard)
#
# Builds the MariaDB test image (tests/images/build-mariadb.sh, binlog on in ROW format), starts
# `switchyard serve` on 127.0.0.1:$PORT (plain http) with one site whose db is that image and whose
# web is a few lines of Perl in the same image (POST /w?id=N inserts row N through the `mariadb`
# client, as in tests/e2e/online.rs), `up`s version 1, then for each size (ascending) fills
# wiki.pages with rows of 1 KiB up to SIZE MiB and runs one release per flow (the colors
# alternate), while a loop of curl writes runs through the proxy the whole time. Per release it
# records the read-only window (the release's own "read-only window" line), the writable part
# (create + online copy + catch-up), the whole release, the writes answered 200 and 503, and checks
# that every write answered 200 is in the database that serves afterwards.
# No migrate command: the migration's time is not part of these windows (report it on its own).
#
# Prints a Markdown table on stdout, progress on stderr. All traffic on 127.0.0.1 and to the
# containers it made; every process it starts is tracked by PID and stopped on exit, and its
# containers, networks and volumes (label switchyard.prefix=$PREFIX) are removed.
#
# Knobs: SIZES="64 256 1024" (MiB), FLOWS="freeze online", PORT=18480, PREFIX=syb-online-$$,
#        FREEZE_BELOW=1MiB, MAX_ROUNDS=10, KEEP_TMP=1.
set -uo pipefail

BIN=${1:-target/debug/switchyard}
BIN=$(readlink -f "$BIN")
SIZES=${SIZES:-64 256 1024}
FLOWS=${FLOWS:-freeze online}
PORT=${PORT:-18480}
PREFIX=${PREFIX:-syb-online-$$}
FREEZE_BELOW=${FREEZE_BELOW:-1MiB}
MAX_ROUNDS=${MAX_ROUNDS:-10}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SITE=bench
HOST=bench.test

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$BIN" ] || die "no switchyard binary at $BIN (cargo build first)"
command -v curl >/dev/null || die "curl not found"
bash "$ROOT/tests/images/build-mariadb.sh" >&2 || die "building the MariaDB test image failed"

TMP=$(mktemp -d /tmp/sy-online-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    docker ps -aq --filter "label=switchyard.prefix=$PREFIX" | xargs -r docker rm -f >/dev/null 2>&1
    docker network ls -q --filter "label=switchyard.prefix=$PREFIX" | xargs -r docker network rm >/dev/null 2>&1
    docker volume ls -q --filter "label=switchyard.prefix=$PREFIX" | xargs -r docker volume rm -f >/dev/null 2>&1
    if [ -n "${KEEP_TMP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$TMP/sy.toml" <<EOF
[proxy]
http = "127.0.0.1:$PORT"
control = "$TMP/control.sock"
state = "$TMP/state.json"
access_log = "off"

[[site]]
name = "$SITE"
hosts = ["$HOST"]
redirect_http = false
[site.health]
path = "/health"
interval = "500ms"
rise = 1
fall = 2
[site.release]
prefix = "$PREFIX"
backups = "$TMP/backups"
keep_backups = 1
web = "web"
web_port = 80
health_timeout = "10m"
flow = "online"
verify_restore = ["mariadb", "-N", "-e", "select count(*) from wiki.w"]
[site.release.online]
max_rounds = $MAX_ROUNDS
freeze_below = "$FREEZE_BELOW"
[[site.release.services]]
name = "db"
image = "sy-mariadb:bookworm"
env = { MARIADB_ROOT_PASSWORD = "pw" }
volumes = ["mysql:/var/lib/mysql"]
backup = ["mariadb-dump", "--all-databases", "--single-transaction"]
restore = ["mariadb"]
[[site.release.services]]
name = "web"
image = "sy-mariadb:bookworm"
env = { DB_PW = "pw" }
command = ["perl", "-e", '''
use IO::Socket::INET; \$SIG{CHLD} = 'IGNORE';
my \$s = IO::Socket::INET->new(LocalPort => 80, Listen => 128, ReuseAddr => 1) or die "listen: \$!";
while (1) {
  my \$c = \$s->accept or next;
  if (fork()) { close \$c; next }
  \$SIG{CHLD} = 'DEFAULT';
  my \$req = <\$c> // ''; my (\$m, \$path) = split / /, \$req;
  my \$len = 0;
  while (my \$h = <\$c>) { last if \$h =~ /^\r?\n\$/; \$len = \$1 if \$h =~ /^content-length:\s*(\d+)/i }
  read(\$c, my \$body, \$len) if \$len;
  my (\$code, \$out) = (404, "no\n");
  if (\$m eq 'POST' && \$path =~ m{^/w\?id=(\d+)\$}) {
    my \$rc = system('mariadb', '-h', 'db', '-uroot', "-p\$ENV{DB_PW}", '-e', "insert into wiki.w values (\$1, repeat('w', 100))");
    (\$code, \$out) = \$rc == 0 ? (200, "ok\n") : (500, "db error\n");
  } elsif (\$path =~ m{^/health}) { (\$code, \$out) = (200, "ok\n") }
  print \$c "HTTP/1.1 \$code X\r\nContent-Length: " . length(\$out) . "\r\nConnection: close\r\n\r\n\$out";
  close \$c; exit 0;
}''']
EOF

SY() { "$BIN" --config "$TMP/sy.toml" --control "$TMP/control.sock" "$@"; }

log "starting switchyard serve on 127.0.0.1:$PORT"
"$BIN" serve --config "$TMP/sy.toml" >"$TMP/serve.out" 2>"$TMP/serve.err" &
PIDS+=($!)
deadline=$((SECONDS + 30))
until grep -q "switchyard ready:" "$TMP/serve.err" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "serve did not get ready: $(tail -5 "$TMP/serve.err")"
    kill -0 "${PIDS[0]}" 2>/dev/null || die "serve exited: $(tail -5 "$TMP/serve.err")"
    sleep 0.1
done

log "up $SITE version 1"
SY up "$SITE" --version 1 >&2 || die "up failed"
color=blue
version=1
sql() { docker exec "$PREFIX-$color-db" mariadb -N -B -e "$1"; }
sql "create database wiki; create table wiki.w (id bigint primary key, body text) engine=innodb; create table wiki.pages (id int primary key, body text) engine=innodb" \
    || die "creating the tables failed"

# The write load: one curl after the other, each id once; "ID STATUS" lines in $1.
writer() {
    local out=$1 id=$2
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 -X POST -H "Host: $HOST" "http://127.0.0.1:$PORT/w?id=$id")
        echo "$id $code" >>"$out"
        id=$((id + 1))
    done
}

rows=0
run=0
echo "| database (rows of 1 KiB) | dump | flow | read-only window | writable part (create, copy, catch-up) | release | writes 200 / 503 | every 200 in the new db |"
echo "|---|---|---|---|---|---|---|---|"
for size in $SIZES; do
    want=$((size * 1024))
    while [ "$rows" -lt "$want" ]; do
        next=$((rows + 100000)); [ "$next" -gt "$want" ] && next=$want
        sql "insert into wiki.pages select seq, repeat('x', 1000) from wiki.seq_$((rows + 1))_to_$next" || die "filling wiki.pages failed"
        rows=$next
        log "wiki.pages: $rows rows"
    done
    for flow in $FLOWS; do
        run=$((run + 1))
        sed -i "s/^flow = .*/flow = \"$flow\"/" "$TMP/sy.toml"
        version=$((3 - version))
        wlog="$TMP/writes-$run.log"
        : >"$wlog"
        writer "$wlog" $((run * 10000000)) &
        wpid=$!
        PIDS+=($wpid)
        sleep 2
        log "release ($flow, $size MiB) to version $version"
        t0=$(date +%s.%N)
        SY release "$SITE" --version "$version" >"$TMP/release-$run.out" 2>&1
        rc=$?
        t1=$(date +%s.%N)
        sleep 1
        kill "$wpid" 2>/dev/null; wait "$wpid" 2>/dev/null
        [ $rc -eq 0 ] || die "release failed: $(tail -20 "$TMP/release-$run.out")"
        cat "$TMP/release-$run.out" >&2
        color=$([ "$color" = blue ] && echo green || echo blue)
        out="$TMP/release-$run.out"
        window=$(sed -n 's/.*read-only window: \([0-9.]*\)s.*/\1/p' "$out")
        dump=$(sed -n 's/.*\(online copy\|backup\) db: \([0-9.]* [KMG]iB\) in .* done.*/\2/p' "$out" | head -1)
        ro_at=$(sed -n 's/^\[ *\([0-9.]*\)s\] 2\/6 read-only …$/\1/p' "$out")
        total=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        ok=$(awk '$2 == 200' "$wlog" | wc -l)
        refused=$(awk '$2 == 503' "$wlog" | wc -l)
        awk '$2 == 200 { print $1 }' "$wlog" | sort -n >"$TMP/ok-$run"
        sql "select id from wiki.w where id >= $((run * 10000000)) and id < $(((run + 1) * 10000000))" | sort -n >"$TMP/have-$run"
        missing=$(comm -23 "$TMP/ok-$run" "$TMP/have-$run" | wc -l)
        verdict=$([ "$missing" -eq 0 ] && echo yes || echo "NO: $missing missing")
        printf '| %s MiB (%s) | %s | %s | %.2f s | %.1f s | %s s | %s / %s | %s |\n' \
            "$size" "$rows" "${dump:-?}" "$flow" "${window:-0}" "${ro_at:-0}" "$total" "$ok" "$refused" "$verdict"
    done
done
