#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, Redis and SoftHSM2 (installed and started
# by prepare-machine.sh when missing). The binaries are built first: the end-to-end tests start
# the real `shomei-api` and `shomei-worker` processes. Then the fuzz targets run for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prepare-machine.sh

# The container set-up (docker-compose.yml, docs/compose.production.yml and Prometheus's
# config for it): no Docker daemon is needed to check them, and none is here; images are not
# built (docs/operations.md, "Containers").
echo "==> docker-compose config"
compose_check() {
    local out
    out=$(docker-compose --env-file .env.example "$@" config -q 2>&1) || { echo "$out"; return 1; }
}
compose_check -f docker-compose.yml
# The overlay's own variables, as its header lists them (the environment wins over the file).
SHOMEI_HSM_MODULE_DIR=/opt/hsm SHOMEI_HSM_MODULE=/opt/hsm/module.so SHOMEI_HSM_TOKEN_LABEL=t \
    SHOMEI_HSM_KEY_LABEL=k SHOMEI_TSA_KEY_LABEL=k SHOMEI_TSA_POLICY_OID=1.2.3 \
    SHOMEI_API_HOSTNAME=api.example compose_check -f docker-compose.yml -f docs/compose.production.yml
out=$(promtool check config dashboards/prometheus/prometheus.compose.yml 2>&1) || { echo "$out"; exit 1; }

echo "==> building"
cargo build --workspace --bins --locked
echo "==> lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The crate docs' links (a public doc linking to a private item is a broken link for readers).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "==> the API contract's checkers (schemathesis, openapi-spec-validator; pinned, from PyPI)"
scripts/schemathesis.sh install >/dev/null
echo "==> the local S3 server for the storage tests (moto, pinned, from PyPI)"
scripts/s3-server.sh install >/dev/null
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
