#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, Redis and SoftHSM2 (installed and started
# by prepare-machine.sh when missing). The binaries are built first: the end-to-end tests start
# the real `shomei-api` and `shomei-worker` processes.
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
cargo test --workspace --locked
