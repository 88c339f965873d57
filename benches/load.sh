#!/usr/bin/env bash
# load.sh — load benchmark of the real switchyard binary against a local nginx backend.
#
# Usage: benches/load.sh [PATH-TO-switchyard]     (default target/dist/switchyard)
#
# Starts one nginx (1 worker) as two backends, blue on :19080 and green on :19081 (1 KiB body at /,
# a 100 MiB file at /big, /upload swallows a body), and switchyard on :19181 (http) / :19443
# (https) in front of them, then measures, one after the other:
#   h1         wrk   -t2 -c64 keep-alive, http://
#   h1-tls     wrk   -t2 -c64 keep-alive, https://
#   h2-tls     h2load -t2 -c32 -m10 (many streams per connection)
#   handshakes wrk   -t2 -c64 'Connection: close' over https: one TLS handshake per request
#   100 MiB    curl download and upload of a 100 MiB body through the proxy (time, MiB/s)
#   switching  one long wrk h1 run in which windows of 10 switches/s on the control socket alternate
#              with quiet windows; each switching window's rate (the proxy's own request counter)
#              against its two quiet neighbours (benches/switch-interleave.py), plus a control run
#              with no switches at all
#   memory     (first, on the fresh process) idle RSS, then RSS per idle keep-alive connection
#              with 10 000 plain and then 10 000 TLS connections (benches/idle_conns.py)
# plus h1 direct to the backend as the reference. Prints a Markdown table on stdout, progress on
# stderr. All traffic on 127.0.0.1; every process it starts is tracked by PID and stopped on exit.
#
# Knobs: DURATION=10 (seconds per test), CONNS=64, H2_CONNS=32, H2_STREAMS=10, THREADS=2,
#        ACCESS_LOG=file|off (default file: the access log on, written to a file in the temp dir),
#        SWITCH_RATE=10 (switches per second), SWITCH_WINDOW=2 (seconds), SWITCH_PAIRS=20,
#        SWITCH_CONTROL=1 (also the run without switches), SWITCHER_NICE=19 (the switcher's own
#        priority: on two shared cores any extra runnable process costs the traffic far more than
#        its CPU time, so by default it runs niced; 0 shows what the client itself costs), STATE_DIR=dir (state file and audit log;
#        default the temp dir, on disk), KEY_TYPE=ec|rsa, KEEP_TMP=1,
#        TESTS="memory h1 h1-tls h2-tls handshakes body switching" (subset), IDLE_CONNS=10000.
set -uo pipefail

BIN=${1:-target/dist/switchyard}
BIN=$(readlink -f "$BIN")
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-32}
H2_STREAMS=${H2_STREAMS:-10}
THREADS=${THREADS:-2}
ACCESS_LOG=${ACCESS_LOG:-file}
SWITCH_RATE=${SWITCH_RATE:-10}
SWITCH_WINDOW=${SWITCH_WINDOW:-2}
SWITCH_PAIRS=${SWITCH_PAIRS:-20}
SWITCH_CONTROL=${SWITCH_CONTROL:-1}
SWITCHER_NICE=${SWITCHER_NICE:-19}
KEY_TYPE=${KEY_TYPE:-ec}
TESTS=${TESTS:-"memory h1 h1-tls h2-tls handshakes body switching"}
IDLE_CONNS=${IDLE_CONNS:-10000}
HERE=$(cd "$(dirname "$0")" && pwd)
L=127.0.0.1
BLUE=19080 GREEN=19081 HTTP=19181 HTTPS=19443 METRICS=19901

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
for b in nginx wrk h2load curl openssl python3 ss setsid timeout; do
  command -v "$b" >/dev/null || die "missing $b (apt-get install -y nginx wrk nghttp2-client curl openssl python3)"
done
[[ -x $BIN ]] || die "no binary at $BIN (cargo build --profile dist)"
ulimit -n 65536 2>/dev/null || true

TMP=$(mktemp -d /tmp/switchyard-load.XXXXXX)
STATE_DIR=${STATE_DIR:-$TMP}
PIDS=()
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_bg() { # start_bg LOG CMD... -> START_PID (own process group)
  local f=$1; shift
  setsid "$@" >"$f" 2>&1 </dev/null &
  START_PID=$!
  PIDS+=("$START_PID")
}
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() {
  local i
  for i in $(seq 1 150); do listening "$1" && return 0; kill -0 "$2" 2>/dev/null || return 1; sleep 0.1; done
  return 1
}
for p in $BLUE $GREEN $HTTP $HTTPS $METRICS; do listening $p && die "port $p is in use"; done

# ------------------------------------------------------------------ backend --
mkdir -p "$TMP/up/www" "$TMP/certs"
head -c 1023 /dev/zero | tr '\0' 'o' >"$TMP/up/www/index.html"; printf k >>"$TMP/up/www/index.html"
head -c $((100 << 20)) /dev/urandom >"$TMP/up/www/big"
chmod a+rx "$TMP" "$TMP/up" "$TMP/up/www"; chmod a+r "$TMP/up/www/"*   # nginx workers run as nobody
cat >"$TMP/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $TMP/up/cbt; proxy_temp_path $TMP/up/pt; fastcgi_temp_path $TMP/up/ft;
  uwsgi_temp_path $TMP/up/ut; scgi_temp_path $TMP/up/st;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_max_body_size 0;
  server {
    listen $L:$BLUE backlog=4096;
    listen $L:$GREEN backlog=4096;
    root $TMP/up/www;
    location = / { default_type text/plain; return 200 "$(cat "$TMP/up/www/index.html")"; }
    location = /big { default_type application/octet-stream; }
    location = /upload { client_body_buffer_size 1m; client_body_in_file_only off; proxy_request_buffering off; return 200 "ok"; }
  }
}
EOF
start_bg "$TMP/up/out.log" nginx -p "$TMP/up" -c "$TMP/up/nginx.conf"
UP=$START_PID
wait_port $BLUE $UP || die "backend nginx did not start: $(cat "$TMP/up/out.log" "$TMP/up/error.log")"

# --------------------------------------------------------------- switchyard --
if [[ $KEY_TYPE == rsa ]]; then K=(-newkey rsa:2048); else K=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1); fi
openssl req -x509 "${K[@]}" -nodes -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/certs/localhost.key" -out "$TMP/certs/localhost.crt" >/dev/null 2>&1 || die "openssl failed"
case $ACCESS_LOG in
  off) ALOG='access_log = "off"' ;;
  *) ALOG="access_log = \"$TMP/access.log\"" ;;
esac
cat >"$TMP/switchyard.toml" <<EOF
[proxy]
http = "$L:$HTTP"
https = "$L:$HTTPS"
certs = "$TMP/certs"
control = "$TMP/control.sock"
state = "$STATE_DIR/state.json"
metrics = "$L:$METRICS"
max_body_bytes = "1GiB"
$ALOG

[[site]]
name = "bench"
hosts = ["localhost", "127.0.0.1"]
active = "blue"
redirect_http = false
[site.pools]
blue = ["$L:$BLUE"]
green = ["$L:$GREEN"]
EOF
start_sy() {
  start_bg "$TMP/switchyard.log" "$BIN" serve --config "$TMP/switchyard.toml"
  SY=$START_PID
  wait_port $HTTPS $SY || die "switchyard did not start: $(tail -5 "$TMP/switchyard.log")"
}
start_sy
got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://$L:$HTTP/")
[[ $got == "200 1024" ]] || die "sanity check failed: $got"
log "switchyard pid $SY ($BIN), access log: $ACCESS_LOG, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------ helpers --
to_ms() {
  awk -v v="$1" 'BEGIN{
    if (v ~ /us$/) { sub(/us$/,"",v); printf "%.2f", v/1000 }
    else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.2f", v }
    else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.2f", v*1000 }
    else printf "nan" }'
}
wrk_run() { # wrk_run OUT URL [ARGS...] -> "rps p50 p99 errors"
  local out=$1 url=$2; shift 2
  timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" >"$out" 2>&1
  local rps p50 p99 err
  rps=$(awk '/^Requests\/sec:/{printf "%.0f", $2}' "$out")
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$out")")
  p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$out")")
  err=$(awk '/Socket errors:|Non-2xx/{gsub(",","");for(i=1;i<=NF;i++) if($i ~ /^[0-9]+$/) s+=$i} END{print s+0}' "$out")
  echo "${rps:-nan} $p50 $p99 $err"
}
h2_run() { # h2_run OUT URL -> "rps p50 p99 errors"
  local out=$1 url=$2
  timeout $((DURATION + 30)) h2load -t"$THREADS" -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" \
    --log-file="$out.log" "$url" >"$out" 2>&1
  local rps err p50 p99
  rps=$(awk '/^finished in/{for(i=1;i<=NF;i++) if($i=="req/s,") printf "%.0f", $(i-1)}' "$out")
  err=$(awk '/^requests:/{for(i=1;i<=NF;i++){if($i~/^failed/)f=$(i-1); if($i~/^errored/)e=$(i-1)}; print f+e}' "$out")
  read -r p50 p99 < <(awk '{print $3}' "$out.log" | sort -n | awk '{a[NR]=$1} END{
      if (NR) { i=int(NR*0.5); if(i<1)i=1; j=int(NR*0.99); if(j<1)j=1; printf "%.2f %.2f\n", a[i]/1000, a[j]/1000 } else print "nan nan" }')
  rm -f "$out.log"
  echo "${rps:-nan} $p50 $p99 ${err:-0}"
}
median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
ROWS=()
row() { ROWS+=("| $1 | $2 |"); log "$1: $2"; }
fmt() { set -- $1; printf '%s rps, p50 %s ms, p99 %s ms' "$1" "$2" "$3"; [[ $4 != 0 ]] && printf ' (%s errors)' "$4"; }
want() { [[ " $TESTS " == *" $1 "* ]]; }

# -------------------------------------------------------------------- tests --
mkdir -p "$TMP/raw"
if want memory; then
  sleep 1
  row "idle RSS (after start and one request)" "$(awk '/^VmRSS:/{printf "%.1f MiB", $2/1024}' "/proc/$SY/status")"
  r=$(python3 "$HERE/idle_conns.py" "$SY" $L $HTTP "$IDLE_CONNS" 2>&1 | tail -1); row "$IDLE_CONNS idle h1 keep-alive connections" "$r"
  # a fresh process for TLS: freed memory is not returned to the OS and would hide the cost
  stop_pid "$SY"; start_sy; curl -s -o /dev/null "http://$L:$HTTP/"; sleep 1
  r=$(python3 "$HERE/idle_conns.py" "$SY" $L $HTTPS "$IDLE_CONNS" --tls 2>&1 | tail -1); row "$IDLE_CONNS idle https h1 keep-alive connections" "$r"
  sleep 2
fi
timeout 20 wrk -t"$THREADS" -c"$CONNS" -d2s "http://$L:$HTTP/" >/dev/null 2>&1   # warm-up
if want h1; then
  r=$(wrk_run "$TMP/raw/direct.txt" "http://$L:$BLUE/"); row "h1 keep-alive, direct to the backend" "$(fmt "$r")"
  d=${r%% *}
  r=$(wrk_run "$TMP/raw/h1.txt" "http://$L:$HTTP/"); row "h1 keep-alive" "$(fmt "$r")"
  row "h1 as share of direct" "$(awk -v a="${r%% *}" -v b="$d" 'BEGIN{printf "%.0f%%", 100*a/b}')"
fi
if want h1-tls; then
  r=$(wrk_run "$TMP/raw/h1tls.txt" "https://$L:$HTTPS/"); row "https h1 keep-alive" "$(fmt "$r")"
fi
if want h2-tls; then
  r=$(h2_run "$TMP/raw/h2.txt" "https://$L:$HTTPS/"); row "h2 over TLS (-c$H2_CONNS -m$H2_STREAMS)" "$(fmt "$r")"
fi
if want handshakes; then
  r=$(wrk_run "$TMP/raw/hs.txt" "https://$L:$HTTPS/" -H "Connection: close"); row "new TLS connection per request" "$(fmt "$r")"
fi
if want body; then
  # a fresh process, so that the peak below is the bodies' and not the idle connections' earlier
  stop_pid "$SY"; start_sy; curl -s -o /dev/null "http://$L:$HTTP/"
  for what in download upload; do
    for via in direct proxy; do
      if [[ $via == direct ]]; then base="http://$L:$BLUE"; else base="http://$L:$HTTP"; fi
      if [[ $what == download ]]; then
        m=$(curl -s -o /dev/null -w '%{http_code} %{time_total} %{size_download}' "$base/big")
      else
        m=$(curl -s -o /dev/null -w '%{http_code} %{time_total} %{size_upload}' -H 'Expect:' -T "$TMP/up/www/big" "$base/upload")
      fi
      read -r code t n <<<"$m"
      [[ $code == 200 && $n == $((100 << 20)) ]] || log "WARNING: 100 MiB $what via $via: $m"
      row "100 MiB $what, $via" "$(awk -v t="$t" -v n="$n" 'BEGIN{printf "%.3f s, %.0f MiB/s", t, n/1048576/t}')"
    done
  done
  rss=$(awk '/^VmHWM:/{print $2}' "/proc/$SY/status")
  row "switchyard peak RSS after the 100 MiB bodies" "$((rss / 1024)) MiB"
fi
if want switching; then
  # One continuous wrk run; inside it, quiet and switching windows alternate and the proxy's own
  # request counter is read at every boundary (benches/switch-interleave.py). Each switching
  # window is compared with its two neighbours, so the machine's drift cancels out. A control run
  # with the same windows and no switches shows the instrument's own spread. SWITCHER_NICE=0 shows
  # what the switching client itself costs on this machine.
  span=$(awk -v w="$SWITCH_WINDOW" -v p="$SWITCH_PAIRS" 'BEGIN{printf "%d", (2*p+1)*w + 3}')
  for rate in $SWITCH_RATE $([[ $SWITCH_CONTROL == 1 ]] && echo 0); do
    DURATION=$span wrk_run "$TMP/raw/sw.$rate.txt" "http://$L:$HTTP/" >"$TMP/raw/sw.$rate.wrk" &
    wk=$!
    sleep 1
    r=$(nice -n "$SWITCHER_NICE" python3 "$HERE/switch-interleave.py" "$L:$METRICS" "$TMP/control.sock" bench "$rate" \
          "$SWITCH_WINDOW" "$SWITCH_PAIRS" 2>"$TMP/raw/sw.$rate.windows")
    wait $wk
    w=$(cat "$TMP/raw/sw.$rate.wrk")
    [[ $(awk '{print $4}' <<<"$w") == 0 ]] || log "WARNING: errors during switching: $w"
    if [[ -z $r ]]; then
      log "WARNING: the switching measurement failed: $(tail -3 "$TMP/raw/sw.$rate.windows" | tr '\n' ' ')"
      continue
    fi
    set -- $r
    label="h1 keep-alive, windows with $rate switches/s against quiet neighbours"
    [[ $rate == 0 ]] && label="control: the same windows with no switches"
    row "$label ($SWITCH_PAIRS pairs of ${SWITCH_WINDOW} s)" \
      "$(awk -v m="$2" -v h="$4" -v d="$6" 'BEGIN{printf "%+.2f%% (95%% CI ±%.2f%%, median %+.2f%%)", 100*(m-1), 100*h, 100*(d-1)}'); ${10} switches, ${12} switch errors; wrk: $(fmt "$w")"
  done
fi

idle=$(awk '/^VmRSS:/{print $2}' "/proc/$SY/status")
echo "switchyard load benchmark — $(date -u +%FT%TZ), $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), access log $ACCESS_LOG"
echo
echo "| test | result |"
echo "|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "RSS at the end: $((idle / 1024)) MiB"
