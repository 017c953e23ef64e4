#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 20), starting from the seeds in
# fuzz/corpus/<target> (new inputs go to a temporary corpus; the seeds stay as they are).
# A crash (a panic or a failed assertion) fails the run; libFuzzer writes the input to
# fuzz/artifacts/<target>/crash-*.
#
# The targets are built with libFuzzer's coverage instrumentation on the machine's own
# (stable) toolchain, the flags cargo-fuzz passes, without a sanitizer: what they look for is
# panics and broken invariants in safe Rust. With FUZZ_ASAN=1 they are built by cargo-fuzz
# with AddressSanitizer instead (needs the nightly toolchain and cargo-fuzz).
#
#   scripts/fuzz.sh            # 20 s each
#   scripts/fuzz.sh 600        # 10 minutes each
#   scripts/fuzz.sh 60 router  # one target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
host=$(rustc -vV | sed -n 's/^host: //p')
if [ "${FUZZ_ASAN:-0}" = 1 ]; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
  (cd fuzz && cargo +nightly fuzz build -O)
  bin=fuzz/target/$host/release
else
  # --target keeps the instrumentation out of build scripts and proc macros
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  CARGO_PROFILE_RELEASE_DEBUG=0 \
    cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" \
    --target-dir fuzz/target/stable --bins
  bin=fuzz/target/stable/$host/release
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^gatehouse-fuzz$')
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p fuzz/artifacts
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  if ! "$bin/$t" "$work/$t" "fuzz/corpus/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$work/$t.log" 2>&1; then
    tail -40 "$work/$t.log"
    echo "fuzz target $t failed (input under fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  echo "$t: ${seconds}s, $(grep -E '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}') runs, peak RSS $(grep -E '^stat::peak_rss_mb' "$work/$t.log" | awk '{print $2}') MiB"
done
