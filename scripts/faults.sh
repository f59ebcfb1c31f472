#!/usr/bin/env bash
# The fault-injection suite in its full form (R-OPS-5, issue 9): a whole deployment on loopback
# (API, three workers, TSA, its own PostgreSQL and Redis, an SMTP server, a webhook receiver, the
# TSA's HSM behind p11-kit, the workers' behind the fault-injection module shomei-hsm-fault)
# signs DOCUMENTS documents while workers are SIGKILLed and every backing service goes down once;
# then it checks and prints what was lost, duplicated or stuck and how long recovery took after
# each fault (testkit/tests/faults/).
#
#   scripts/faults.sh [DOCUMENTS]        # default 3000, release binaries
#
# Knobs (environment): SHOMEI_FAULTS_OUTAGE_SECS (6), SHOMEI_FAULTS_KILL_EVERY_SECS (4),
# SHOMEI_FAULTS_REPORT (JSON report; default var/faults/<time>.json). The bounded form (240
# documents, debug binaries) runs in `cargo test` and so in scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/prepare-machine.sh

echo "==> building release binaries"
cargo build --release --locked --bins -p shomei-api -p shomei-workers -p shomei-tsa -q
# The workers' PKCS#11 module in the suite (a library: not among --bins).
cargo build --release --locked -p shomei-hsm-fault -q
echo "==> building the suite"
cargo test --locked -p shomei-testkit --test faults --no-run -q

mkdir -p var/faults
export SHOMEI_BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
export SHOMEI_FAULTS_DOCUMENTS=${1:-3000}
export SHOMEI_FAULTS_REPORT=${SHOMEI_FAULTS_REPORT:-$ROOT/var/faults/$(date +%Y%m%d-%H%M%S).json}
echo "==> $SHOMEI_FAULTS_DOCUMENTS documents through the faults ($(nproc) CPUs)"
cargo test --locked -p shomei-testkit --test faults -q -- --nocapture
