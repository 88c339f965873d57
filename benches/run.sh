#!/usr/bin/env bash
# run.sh — the whole benchmark in one command, from the project root:
#   benches/run.sh            # cargo build --profile dist, then benches/compare.py (haproxy, nginx,
#                             # switchyard, interleaved rounds, ratios with 95 % intervals),
#                             # benches/floor.py (direct, haproxy, a zero-work relay, switchyard)
#                             # and benches/load.sh; reports go to stdout and target/bench-results/
#   BASE_BIN=/tmp/sy-base benches/run.sh   # compare.py also runs that build, as the reference
#                             # ("base") the new one ("new") is divided by, in the same rounds
# Knobs: ROUNDS=20 DURATION=5 (compare.py; its other knobs pass through), BASE_BIN,
#        PROXY_COMPARE=1 (also ../shared/bench/proxy-compare.sh, with PC_ROUNDS=2 PC_DURATION=7),
#        FLOOR_ROUNDS=4 FLOOR_DURATION=5 (floor.py), LOAD_DURATION=10 (load.sh), SKIP_BUILD=1,
#        CARGO_TARGET_DIR (where the dist binary is).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --profile dist
BIN=$(readlink -f "$TARGET/dist/switchyard")
OUT=target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
{
  echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), $(uname -sr)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"
SY=(--sy "new=$BIN")
[[ -n ${BASE_BIN:-} ]] && SY=(--sy "base=$(readlink -f "$BASE_BIN")" "${SY[@]}")
RESULTS_DIR=$OUT/compare ROUNDS=${ROUNDS:-20} DURATION=${DURATION:-5} \
  benches/compare.py "${SY[@]}" | tee "$OUT/compare.md"
COMPARE=../shared/bench/proxy-compare.sh
if [[ ${PROXY_COMPARE:-0} == 1 ]]; then
  if [[ -x $COMPARE ]]; then
    CANDIDATE_CMD="$PWD/../shared/bench/switchyard-candidate.sh $BIN" \
      ROUNDS=${PC_ROUNDS:-2} DURATION=${PC_DURATION:-7} "$COMPARE" | tee "$OUT/proxy-compare.md"
  else
    echo "($COMPARE not found: skipping it)" >&2
  fi
fi
ROUNDS=${FLOOR_ROUNDS:-4} DURATION=${FLOOR_DURATION:-5} benches/floor.py "$BIN" | tee "$OUT/floor.md"
DURATION=${LOAD_DURATION:-10} benches/load.sh "$BIN" | tee "$OUT/load.md"
echo "reports in $OUT/" >&2
