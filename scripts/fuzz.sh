#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 20), starting from the seeds in
# fuzz/corpus/<target> (new inputs go to a temporary corpus; the seeds stay as they are).
# Needs the nightly toolchain and cargo-fuzz (installed when missing). A crash fails the run
# and libFuzzer leaves the input under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh            # 20 s each
#   scripts/fuzz.sh 600        # 10 minutes each
#   scripts/fuzz.sh 60 router  # one target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
(cd fuzz && cargo +nightly fuzz build -O)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  if ! (cd fuzz && cargo +nightly fuzz run -O "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1) >"$work/$t.log" 2>&1; then
    tail -40 "$work/$t.log"
    echo "fuzz target $t failed (input under fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  echo "$t: ${seconds}s, $(grep -E '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}') runs, peak RSS $(grep -E '^stat::peak_rss_mb' "$work/$t.log" | awk '{print $2}') MiB"
done
