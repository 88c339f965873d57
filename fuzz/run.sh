#!/usr/bin/env bash
# run.sh: every fuzz target for a bounded time, one after the other, and a summary.
#   fuzz/run.sh                  # 300 s per target (request, response, chunked)
#   SECS=600 fuzz/run.sh chunked # one target, longer
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain the build goes through
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only -Z flags); no sanitizer (the code under
# test is safe Rust: `-s none`), debug assertions and overflow checks on.
# The working corpus grows in fuzz/corpus/TARGET (not committed), seeded from fuzz/seeds/TARGET;
# a failing input lands in fuzz/artifacts/TARGET/ and stops that target (libFuzzer's default).
# Replay one: fuzz/target/x86_64-unknown-linux-gnu/release/TARGET FILE
# Not part of `cargo test`: the fuzz crate is its own workspace.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${SECS:-300}
TARGETS=("${@:-request response chunked}")
read -r -a TARGETS <<<"${TARGETS[*]}"
export RUSTC_BOOTSTRAP=1
# The binaries are looked for in fuzz/target: a CARGO_TARGET_DIR set for the main crate would
# send the (long, instrumented) build elsewhere.
unset CARGO_TARGET_DIR
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo fuzz build -s none -a
BIN=target/x86_64-unknown-linux-gnu/release
mkdir -p logs
status=0
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="logs/$t.log"
  echo "== $t: ${SECS}s" >&2
  # -timeout: one input taking 10 s is a hang (a finding); the run is CPU-bound on one core.
  set +e
  /usr/bin/time -f "cpu %U %S" -o "logs/$t.time" \
    "$BIN/$t" "corpus/$t" "seeds/$t" -dict=http.dict -max_total_time="$SECS" -timeout=10 \
    -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
    >"$log" 2>&1
  rc=$?
  set -e
  read -r _ user sys < <(tail -1 "logs/$t.time") || true
  execs=$(awk '/stat::number_of_executed_units/{print $2}' "$log")
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  files=$(find "corpus/$t" -type f | wc -l)
  line="$t: cpu ${user}s user + ${sys}s sys, ${execs:-?} execs, corpus $files files, ${cov:-?}, exit $rc"
  [[ $rc == 0 ]] || { line+=" (FINDING: see $log, artifacts/$t/)"; status=1; }
  summary+=("$line")
  echo "$line" >&2
done
printf '%s\n' "${summary[@]}"
exit $status
