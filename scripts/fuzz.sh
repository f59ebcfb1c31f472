#!/usr/bin/env bash
# Runs each cargo-fuzz target of fuzz/ for a bounded time and prints libFuzzer's figures for
# it: executions, executions per second, corpus size, coverage, peak memory.
#
#   scripts/fuzz.sh [seconds-per-target, default 60] [target ...]
#
# Exits non-zero if any target crashed (a panic, an out-of-memory, a timeout, a sanitizer
# report); the input is kept under fuzz/artifacts/<target>/ and printed in base64 when small,
# so a CI log is enough to reproduce it:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer, sanitizer coverage); the only
# toolchain here is stable, which accepts them with RUSTC_BOOTSTRAP=1.
# SHOMEI_FUZZ_SANITIZER=none|address (default address) chooses the sanitizer.
# SHOMEI_FUZZ_TARGET_DIR, if set, is where the fuzz build goes instead of fuzz/target: a
# directory outside the clone lets later runs (CI on the same machine) reuse the dependencies,
# which are most of the build (several minutes in release mode on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(pdf_intake pdf_sign_prepare)
fi
sanitizer=${SHOMEI_FUZZ_SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    started=$(date +%s)
    cargo install cargo-fuzz --locked
    echo "cargo-fuzz installed in $(($(date +%s) - started)) s"
fi
cargo fuzz --version

export RUSTC_BOOTSTRAP=1
flags=(--sanitizer "$sanitizer" --release --debug-assertions)
if [ -n "${SHOMEI_FUZZ_TARGET_DIR:-}" ]; then
    flags+=(--target-dir "$SHOMEI_FUZZ_TARGET_DIR")
fi

echo "==> building the fuzz targets (sanitizer: $sanitizer)"
started=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "built in $(($(date +%s) - started)) s"

# Memory: a document may take a few hundred MiB within the limits (64 MiB per stream); more
# is a finding. Inputs are kept small: what matters is structure, not size.
libfuzzer_options=(
    -max_total_time="$seconds"
    -rss_limit_mb=2048
    -malloc_limit_mb=1024
    -max_len=65536
    -timeout=30
    -print_final_stats=1
)

failed=()
for target in "${targets[@]}"; do
    echo "==> fuzzing $target for $seconds s"
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log=$(mktemp)
    status=0
    cargo fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" -- \
        "${libfuzzer_options[@]}" >"$log" 2>&1 || status=$?
    # libFuzzer's last status line ("#N DONE cov: .. corp: N/size ..") and its final stats.
    grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true
    grep -E '^(stat::|Done [0-9]+ runs)' "$log" || true
    runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log")
    rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$log")
    rss=$(sed -nE 's/^stat::peak_rss_mb: *([0-9]+)/\1/p' "$log")
    corpus=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n 1 | cut -d' ' -f2)
    if [ "$status" -eq 0 ]; then
        echo "$target: ${runs:-?} executions, ${rate:-?} exec/s, corpus ${corpus:-?}, peak RSS ${rss:-?} MB, no crash"
    else
        echo "$target: CRASHED (exit $status) after ${runs:-?} executions; libFuzzer said:"
        grep -E 'ERROR|panicked|SUMMARY|Test unit written|out-of-memory|timeout' "$log" | head -n 20 || true
        for artifact in "fuzz/artifacts/$target"/*; do
            [ -f "$artifact" ] || continue
            echo "artifact $artifact ($(stat -c %s "$artifact") bytes)"
            if [ "$(stat -c %s "$artifact")" -le 16384 ]; then
                base64 -w 0 "$artifact"
                echo
            fi
        done
        failed+=("$target")
    fi
    rm -f "$log"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets, $seconds s each, no crash"
