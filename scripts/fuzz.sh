#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time. Not part of CI (it needs a nightly
# toolchain and cargo-fuzz); run it before a release or after changing a decoder.
#
#   scripts/fuzz.sh            # 60 s per target
#   FUZZ_SECS=600 scripts/fuzz.sh decode_hl7
#
# New inputs that raise coverage are added to fuzz/corpus/<target>/; commit the small
# interesting ones: `cargo test` replays the corpus on stable (tests/fuzz_corpus.rs).
# A crash leaves its input in fuzz/artifacts/<target>/: add it to the corpus once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECS:-60}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode_nonin decode_masimo decode_datex decode_hl7 decode_json mqtt_wire queue_segment)
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: no nightly toolchain (cargo +nightly); skipping. The corpus is still replayed by cargo test." >&2
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz); skipping." >&2
  exit 0
fi

for t in "${targets[@]}"; do
  echo "== $t: ${secs} s"
  mkdir -p "fuzz/corpus/$t"
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=8192
done
