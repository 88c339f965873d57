#!/usr/bin/env bash
# run.sh — the whole benchmark in one command, from the project root:
#   benches/run.sh            # cargo build --release, proxy-compare (haproxy, nginx, switchyard),
#                             # then benches/floor.py (direct, haproxy, a zero-work relay,
#                             # switchyard) and benches/load.sh; reports go to stdout and
#                             # target/bench-results/
# Knobs: ROUNDS=2 DURATION=7 (proxy-compare), FLOOR_ROUNDS=4 FLOOR_DURATION=5 (floor.py),
#        LOAD_DURATION=10 (load.sh), SKIP_BUILD=1,
#        CARGO_TARGET_DIR (where the release binary is), plus those of both scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release
BIN=$(readlink -f "$TARGET/release/switchyard")
OUT=target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
{
  echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), $(uname -sr)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"
COMPARE=../shared/bench/proxy-compare.sh
if [[ -x $COMPARE ]]; then
  CANDIDATE_CMD="$PWD/../shared/bench/switchyard-candidate.sh $BIN" \
    ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-7} "$COMPARE" | tee "$OUT/proxy-compare.md"
else
  echo "($COMPARE not found: skipping the side-by-side comparison)" >&2
fi
ROUNDS=${FLOOR_ROUNDS:-4} DURATION=${FLOOR_DURATION:-5} benches/floor.py "$BIN" | tee "$OUT/floor.md"
DURATION=${LOAD_DURATION:-10} benches/load.sh "$BIN" | tee "$OUT/load.md"
echo "reports in $OUT/" >&2
