#!/usr/bin/env bash
# The API contract's independent checkers, from PyPI at pinned versions, in a virtualenv under
# target/ (made on first use; nothing is installed by hand):
#
#   scripts/schemathesis.sh install             make the virtualenv (idempotent), print its bin/
#   scripts/schemathesis.sh validate FILE       openapi-spec-validator on an OpenAPI document
#   scripts/schemathesis.sh run URL KEY [ARGS]  schemathesis against a running API: its
#                                               /v1/openapi.json, the key as bearer token
#
# `run` is given a running API, e.g. the one `scripts/demo.sh` leaves on http://127.0.0.1:8080
# with a key from `shomei-api tenant create`; the pipeline test `openapi` (testkit) starts its
# own deployment, seeds it and calls this with its settings. ARGS go to `schemathesis run` after
# the defaults below (checks, examples per operation, excluded operations), so they can add to
# or override them. SCHEMATHESIS_CONFIG names a schemathesis.toml (e.g. seeded ids to draw from).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# schemathesis 4.32.5 and openapi-spec-validator 0.9.0, with every dependency pinned.
REQUIREMENTS=$ROOT/scripts/contract-requirements.txt
VENV=${SHOMEI_CONTRACT_VENV:-${CARGO_TARGET_DIR:-$ROOT/target}/contract-venv}

source "$ROOT/scripts/venv.sh"
install() { venv_install "$VENV" "$REQUIREMENTS" "the contract checkers"; }

command=${1:-}
case "$command" in
install)
    install
    echo "$VENV/bin"
    ;;
validate)
    [ $# -eq 2 ] || { echo "usage: $0 validate FILE" >&2; exit 2; }
    install
    "$VENV/bin/openapi-spec-validator" --schema 3.1.0 "$2"
    ;;
run)
    [ $# -ge 3 ] || { echo "usage: $0 run URL KEY [schemathesis options]" >&2; exit 2; }
    url=${2%/}
    key=$3
    shift 3
    install
    config=()
    [ -n "${SCHEMATHESIS_CONFIG:-}" ] && config=(--config-file "$SCHEMATHESIS_CONFIG")
    # PDF bodies: raw bytes, half of them a real contract (see the hooks file).
    export SCHEMATHESIS_HOOKS=$ROOT/scripts/schemathesis-hooks.py
    # Checks: no 5xx; every status, content type, header and body as documented; no operation
    # that takes a request without its key; a deleted resource is gone and a created one is
    # there. Left out: cancelling the contract (it schedules the deletion of everything) and
    # deleting a document (it removes the files the other operations are tested on).
    exec "$VENV/bin/schemathesis" "${config[@]}" --no-color run "$url/v1/openapi.json" \
        --url "$url" \
        --header "Authorization: Bearer $key" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,ignored_auth,use_after_free,ensure_resource_availability \
        --exclude-operation-id cancelTenant \
        --exclude-operation-id deleteDocument \
        "$@"
    ;;
*)
    sed -n '2,15p' "$0" >&2
    exit 2
    ;;
esac
