#!/usr/bin/env bash
# A local S3-compatible server for the tests: moto's standalone server (`moto_server`), a real
# HTTP server speaking the S3 REST protocol (buckets, objects, ListObjectsV2, multipart uploads),
# keeping everything in memory. From PyPI at pinned versions, in a virtualenv under target/ (made
# on first use; nothing is installed by hand):
#
#   scripts/s3-server.sh install           make the virtualenv (idempotent), print its bin/
#   scripts/s3-server.sh run HOST PORT     run the server in the foreground (until killed)
#
# The tests start one server per test on a free loopback port (shomei_testkit::s3::S3Server),
# which runs `install` first; scripts/test.sh installs up front. moto does not check request
# signatures: it stands in for the protocol, not for S3's access control.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

REQUIREMENTS=$ROOT/scripts/s3-requirements.txt
VENV=${SHOMEI_S3_VENV:-${CARGO_TARGET_DIR:-$ROOT/target}/s3-venv}

source "$ROOT/scripts/venv.sh"
install() { venv_install "$VENV" "$REQUIREMENTS" "the local S3 server"; }

case "${1:-}" in
install)
    install
    echo "$VENV/bin"
    ;;
run)
    [ $# -eq 3 ] || { echo "usage: $0 run HOST PORT" >&2; exit 2; }
    install
    exec "$VENV/bin/moto_server" -H "$2" -p "$3"
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
