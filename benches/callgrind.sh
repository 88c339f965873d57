#!/usr/bin/env bash
# callgrind.sh — user-space instructions per request of the real binary, the repeatable instrument
# for one change (callgrind counts instructions, not seconds: the same binary and load give the
# same total whatever else the machine does).
#
# Usage: benches/callgrind.sh [PATH-TO-switchyard]     (default target/dist/switchyard)
#
# One nginx (1 worker, 1 KiB body at /) as the backend, switchyard under
# `valgrind --tool=callgrind` in front of it, and for each route a warm-up batch, then
# `callgrind_control -z` (counters to zero), N requests with h2load, `--dump` (just those):
#   h1      h2load --h1 -c8 http://         (the HTTP/1.1 fast path)
#   https   h2load --h1 -c8 https://        (ALPN http/1.1: TLS + the fast path)
#   h2      h2load -c8 -m10 https://        (hyper's h2 server)
#   h2post  h2load -c8 -m10 -d 1KiB https:// (HTTP/2 with a request body: the streamed path)
# Prints "route instructions/request" lines (Ir of every thread, summed) and a Markdown row.
# Knobs: N=3000 (measured requests per route), WARM=500, ROUTES="h1 https h2 h2post", KEEP_TMP=1,
# ACCESS_LOG=off (switchyard without its access log; by default it logs to a file),
# PROXY=haproxy (measure haproxy instead, same upstream and loads, configured by compare.py: the
# reference for what a request costs elsewhere), PROXY=floor (measure examples/h2_floor.rs, the
# least an HTTP/2 proxy on switchyard's crates does, given as the path: h2 routes only).
# All traffic on 127.0.0.1.
set -uo pipefail

BIN=$(readlink -f "${1:-target/dist/switchyard}")
N=${N:-3000}
WARM=${WARM:-500}
ROUTES=${ROUTES:-"h1 https h2 h2post"}
L=127.0.0.1
UP=19280 HTTP=19281 HTTPS=19282

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
for b in nginx h2load valgrind callgrind_control openssl ss; do
  command -v "$b" >/dev/null || die "missing $b (apt-get install -y nginx nghttp2-client valgrind openssl)"
done
PROXY=${PROXY:-switchyard}
case $PROXY in
  switchyard) [[ -x $BIN ]] || die "no binary at $BIN (cargo build --profile dist)" ;;
  haproxy) command -v haproxy >/dev/null || die "missing haproxy (apt-get install -y haproxy)" ;;
  floor) [[ -x $BIN ]] || die "no floor at $BIN (cargo build --profile dist --example h2_floor)"
    [[ $ROUTES == *h1* || $ROUTES == *https* ]] && die "the floor serves HTTP/2 only: ROUTES=\"h2 h2post\"" ;;
  *) die "PROXY is switchyard, haproxy or floor" ;;
esac

TMP=$(mktemp -d /tmp/switchyard-callgrind.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() { # wait_port PORT PID SECONDS
  local i
  for i in $(seq 1 $(($3 * 10))); do listening "$1" && return 0; kill -0 "$2" 2>/dev/null || return 1; sleep 0.1; done
  return 1
}
for p in $UP $HTTP $HTTPS; do listening $p && die "port $p is in use"; done

mkdir -p "$TMP/up" "$TMP/certs"
chmod a+rx "$TMP" "$TMP/up"
body=$(head -c 1024 /dev/zero | tr '\0' 'o')
cat >"$TMP/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/up/cbt; proxy_temp_path $TMP/up/pt; fastcgi_temp_path $TMP/up/ft;
  uwsgi_temp_path $TMP/up/ut; scgi_temp_path $TMP/up/st;
  keepalive_requests 10000000;
  server {
    listen $L:$UP;
    location / { default_type text/plain; return 200 "$body"; }
  }
}
EOF
nginx -c "$TMP/up/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)
wait_port $UP $! 10 || die "nginx did not start"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/certs/localhost.key" -out "$TMP/certs/localhost.crt" >/dev/null 2>&1 || die "openssl"
# The access log to a file, as in use; ACCESS_LOG=off to see what it costs.
if [[ ${ACCESS_LOG:-file} == off ]]; then ALOG=off; else ALOG="$TMP/access.log"; fi
cat >"$TMP/switchyard.toml" <<TOML
[proxy]
http = "$L:$HTTP"
https = "$L:$HTTPS"
certs = "$TMP/certs"
control = "$TMP/control.sock"
state = "$TMP/state.json"
access_log = "$ALOG"

[[site]]
name = "bench"
hosts = ["localhost", "127.0.0.1"]
redirect_http = false
[site.pools]
blue = ["$L:$UP"]
TOML

if [[ $PROXY == haproxy ]]; then
  # haproxy configured exactly as compare.py runs it (one configuration for both benchmarks).
  cat "$TMP/certs/localhost.crt" "$TMP/certs/localhost.key" >"$TMP/combined.pem"
  HAPROXY_CMD=$(cd "$(dirname "$0")" && python3 -c 'import sys, compare; print(" ".join(compare.haproxy_cmd(*sys.argv[1:])))' \
    "$TMP" haproxy $HTTP $HTTPS $UP) || die "cannot write the haproxy configuration"
fi

head -c 1024 /dev/zero | tr '\0' 'p' >"$TMP/post.body"
run_load() { # run_load ROUTE COUNT
  local n=$2
  case $1 in
    h1) h2load --h1 -n "$n" -c8 -t1 "http://$L:$HTTP/" ;;
    https) h2load --h1 -n "$n" -c8 -t1 "https://$L:$HTTPS/" ;;
    h2) h2load -n "$n" -c8 -m10 -t1 "https://$L:$HTTPS/" ;;
    h2post) h2load -n "$n" -c8 -m10 -t1 -d "$TMP/post.body" "https://$L:$HTTPS/" ;;
    *) die "unknown route $1" ;;
  esac >"$TMP/h2load.$1.log" 2>&1
  grep -q "requests: $n total, $n started, $n done, $n succeeded" "$TMP/h2load.$1.log"
}

row=""
for route in $ROUTES; do
  if [[ $PROXY == haproxy ]]; then
    valgrind --tool=callgrind ${CG_OPTS:-} --callgrind-out-file="$TMP/cg.$route.%p" \
      $HAPROXY_CMD >"$TMP/serve.$route.log" 2>&1 &
    pid=$!
    { wait_port $HTTP $pid 60 && wait_port $HTTPS $pid 60; } || die "haproxy did not start under valgrind (see $TMP/serve.$route.log)"
  elif [[ $PROXY == floor ]]; then
    valgrind --tool=callgrind ${CG_OPTS:-} --callgrind-out-file="$TMP/cg.$route.%p" \
      "$BIN" "$L:$HTTPS" "$L:$UP" "$TMP/certs" >"$TMP/serve.$route.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q "h2_floor ready" "$TMP/serve.$route.log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    grep -q "h2_floor ready" "$TMP/serve.$route.log" || die "h2_floor did not start under valgrind (see $TMP/serve.$route.log)"
  else
    SWITCHYARD_WORKERS=2 valgrind --tool=callgrind ${CG_OPTS:-} --callgrind-out-file="$TMP/cg.$route.%p" \
      "$BIN" serve --config "$TMP/switchyard.toml" >"$TMP/serve.$route.log" 2>&1 &
    pid=$!
    # Ready once it says so (everything started, the TLS ticketer's entropy included), not once a
    # port listens: otherwise that start-up work lands in the measured window.
    for _ in $(seq 1 600); do grep -q "switchyard ready" "$TMP/serve.$route.log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    grep -q "switchyard ready" "$TMP/serve.$route.log" || die "switchyard did not start under valgrind (see $TMP/serve.$route.log)"
  fi
  run_load "$route" "$WARM" || die "warm-up of $route failed: $(tail -5 "$TMP/h2load.$route.log")"
  callgrind_control -z $pid >/dev/null
  run_load "$route" "$N" || die "$route failed: $(tail -5 "$TMP/h2load.$route.log")"
  callgrind_control --dump $pid >/dev/null
  total=$(cat "$TMP"/cg.$route.$pid.* | awk '/^summary:/ {s += $2} END {print s + 0}')
  kill -TERM $pid; wait $pid 2>/dev/null
  per=$((total / N))
  echo "$route $per instructions/request"
  row="$row | $per"
  [[ ${KEEP_TMP:-0} == 1 ]] || rm -f "$TMP"/cg.$route.$pid*
done
if [[ $PROXY == haproxy ]]; then label="haproxy $(haproxy -v | awk 'NR==1 {print $3}')"
elif [[ $PROXY == floor ]]; then label="h2_floor"
else label=$(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo build); fi
echo "| $label$row |"
