#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, Redis and SoftHSM2 (installed and started
# by prepare-machine.sh when missing). The binaries are built first: the end-to-end tests start
# the real `shomei-api` and `shomei-worker` processes. Then the fuzz targets run for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prepare-machine.sh

echo "==> building"
cargo build --workspace --bins --locked
echo "==> lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> the API contract's checkers (schemathesis, openapi-spec-validator; pinned, from PyPI)"
scripts/schemathesis.sh install >/dev/null
echo "==> tests"
# Among them the fault-injection suite in its bounded form (testkit/tests/faults/: 240
# documents through killed workers and outages of every backing service; its full form is
# scripts/faults.sh).
cargo test --workspace --locked
# Bounded fuzzing of PDF intake and signing (fuzz/README.md); SHOMEI_FUZZ_SECONDS=0 skips it.
if [ "${SHOMEI_FUZZ_SECONDS:-45}" != 0 ]; then
    echo "==> fuzzing"
    SHOMEI_FUZZ_TARGET_DIR=${SHOMEI_FUZZ_TARGET_DIR:-$HOME/.cache/shomei/fuzz-target} \
        scripts/fuzz.sh "${SHOMEI_FUZZ_SECONDS:-45}"
fi
