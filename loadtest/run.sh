#!/usr/bin/env bash
# Load test on a throw-away deployment on loopback: fresh database, queue namespace and storage,
# the API plus WORKERS worker processes, N documents signed through the REST API, then the raw
# HSM rate for comparison. Everything it started is stopped and the database dropped on exit.
#
#   loadtest/run.sh WORKERS N [CONCURRENCY]
#
# Knobs (environment): LOADTEST_SIGNATURE_LEVEL (B-T or B-B), SHOMEI_WORKER_CONCURRENCY (32), SHOMEI_HSM_POOL_SIZE (the number of CPUs),
# LOADTEST_PDF (samples/contract-160k.pdf), LOADTEST_SETTLE_SECS (heartbeat + 1), LOADTEST_WARMUP (4 × WORKERS), LOADTEST_HSM_SECONDS (5), LOADTEST_HSM_THREADS (CPUs), LOADTEST_ARGS (extra arguments for
# shomei-loadtest), LOADTEST_STORAGE_ROOT (where the run's stored PDFs go, in shomei-load-<id>:
# /dev/shm unless set), LOADTEST_KEEP_STORAGE=1 (keep them),
# LOADTEST_PG_LOG_STATEMENTS=1 (log every statement of the run's database to the PostgreSQL server log),
# LOADTEST_PG_OPTIONS (libpq parameters of the services' database connections, as a URL query;
# host=/var/run/postgresql, the Unix socket, unless set and when it lets postgres in; empty: TCP),
# LOADTEST_WORKER_NICE (the workers' nice value, default 10: the API's intake goes first, as
# the compose file's cpu_shares arrange; 0 runs them at the API's priority),
# LOADTEST_WORKER_ENV (VAR=value pairs set for the workers alone, e.g. TOKIO_WORKER_THREADS=1),
# LOADTEST_BIN (a directory holding shomei-api, shomei-worker, shomei-tsa and shomei-loadtest:
# run those as they are and build nothing, to compare two builds).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 WORKERS N [CONCURRENCY]" >&2
    exit 2
fi
WORKERS=$1
DOCUMENTS=$2
CONCURRENCY=${3:-16}

cd "$(dirname "$0")/.."
ROOT=$(pwd)

source scripts/prepare-machine.sh

if [ -n "${LOADTEST_BIN:-}" ]; then
    BIN=$(cd "$LOADTEST_BIN" && pwd)
    for binary in shomei-api shomei-worker shomei-tsa shomei-loadtest; do
        [ -x "$BIN/$binary" ] || { echo "LOADTEST_BIN: no $BIN/$binary" >&2; exit 2; }
    done
    echo "==> the binaries in $BIN, as they are"
else
    echo "==> building release binaries"
    cargo build --release --bins -p shomei-api -p shomei-workers -p shomei-tsa -p shomei-loadtest -q
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi

echo "==> dev HSM token (var/dev-hsm)"
eval "$(scripts/dev-hsm.sh "$ROOT/var/dev-hsm")"

ID=$(date +%Y%m%d%H%M%S)-$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
DB=shomei_load_${ID//-/_}
RUN=$ROOT/var/load/$ID
# The run's stored PDFs, in a new directory of their own under LOADTEST_STORAGE_ROOT: by default
# the memory file system /dev/shm, so that a run is not slowed by the files the run before it
# deleted (loadtest/README.md, "Storage").
STORAGE_ROOT=${LOADTEST_STORAGE_ROOT:-/dev/shm}
[ -d "$STORAGE_ROOT" ] && [ -w "$STORAGE_ROOT" ] || STORAGE_ROOT=$RUN
STORAGE=$STORAGE_ROOT/shomei-load-$ID
mkdir -p "$RUN" "$STORAGE"

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        local port
        while :; do
            port=$((20000 + RANDOM % 20000))
            ss -Htln "sport = :$port" | grep -q . || { echo "$port"; return; }
        done
    fi
}
PORT=$(free_port)
TSA_PORT=$(free_port)

PG=(psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq)
# LOADTEST_PG_OPTIONS: libpq parameters for the services' connections, as a URL query
# (`sslmode=disable`: no TLS on loopback; `host=/var/run/postgresql`: the Unix socket). Unless
# it is set, the services reach PostgreSQL over its Unix socket when that lets `postgres` in, as
# a deployment with PostgreSQL on the same host would (no TCP, no TLS); set it empty for loopback
# TCP.
PG_SOCKET_DIR=/var/run/postgresql
if [ -z "${LOADTEST_PG_OPTIONS+set}" ] &&
    psql -h "$PG_SOCKET_DIR" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    LOADTEST_PG_OPTIONS=host=$PG_SOCKET_DIR
fi
export SHOMEI_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB${LOADTEST_PG_OPTIONS:+?$LOADTEST_PG_OPTIONS}
export SHOMEI_QUEUE_NAMESPACE=$DB
export SHOMEI_STORAGE_DIR=$STORAGE
export SHOMEI_API_ADDR=127.0.0.1:$PORT
# Plain HTTP on loopback, said explicitly (the API refuses to start without this or a certificate).
unset SHOMEI_TLS_CERT SHOMEI_TLS_KEY
export SHOMEI_API_PLAIN_HTTP=true
export SHOMEI_WORKER_CONCURRENCY=${SHOMEI_WORKER_CONCURRENCY:-32}
export RUST_LOG=${RUST_LOG:-info}
# Signatures are B-T by default: the workers time-stamp each one with this run's own TSA.
export SHOMEI_TSA_ADDR=127.0.0.1:$TSA_PORT
export SHOMEI_TSA_URLS=http://$SHOMEI_TSA_ADDR/
export SHOMEI_TSA_TRUST_ANCHORS=$ROOT/var/dev-hsm/ca/ca.pem
API=http://$SHOMEI_API_ADDR
REDIS_URL=${SHOMEI_REDIS_URL:-redis://127.0.0.1:6379/0}

PIDS=()
cleanup() {
    local status=$?
    set +e
    echo "==> stopping the API and workers, dropping $DB"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    "${PG[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
    redis-cli -u "$REDIS_URL" --scan --pattern "*$SHOMEI_QUEUE_NAMESPACE*" |
        xargs -r redis-cli -u "$REDIS_URL" del >/dev/null
    [ "${LOADTEST_KEEP_STORAGE:-0}" = 1 ] || rm -rf "$STORAGE"
    echo "    logs and report: $RUN"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> database $DB, queue namespace $SHOMEI_QUEUE_NAMESPACE, storage $STORAGE, API on $API"
"${PG[@]}" -c "CREATE DATABASE $DB" >/dev/null
# Profiling: every statement on this database goes to the PostgreSQL server log.
[ "${LOADTEST_PG_LOG_STATEMENTS:-0}" != 1 ] ||
    "${PG[@]}" -c "ALTER DATABASE $DB SET log_statement = 'all'" >/dev/null

echo "==> starting the API and $WORKERS worker(s) (concurrency $SHOMEI_WORKER_CONCURRENCY, HSM pool ${SHOMEI_HSM_POOL_SIZE:-one session per CPU}, database ${LOADTEST_PG_OPTIONS:-over loopback TCP}; logs in $RUN)"
"$BIN/shomei-tsa" >"$RUN/tsa.log" 2>&1 &
PIDS+=($!)
"$BIN/shomei-api" serve >"$RUN/api.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 150); do curl -fs "$API/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$API/readyz" >/dev/null || { echo "API not ready; see $RUN/api.log" >&2; exit 1; }
for i in $(seq "$WORKERS"); do
    env ${LOADTEST_WORKER_ENV:-} nice -n "${LOADTEST_WORKER_NICE:-10}" "$BIN/shomei-worker" >"$RUN/worker-$i.log" 2>&1 &
    PIDS+=($!)
done
# A worker is ready once it logged its start; give each a few seconds to connect.
for i in $(seq "$WORKERS"); do
    for _ in $(seq 100); do grep -q "worker starting" "$RUN/worker-$i.log" 2>/dev/null && break; sleep 0.1; done
    grep -q "worker starting" "$RUN/worker-$i.log" || { echo "worker $i did not start; see $RUN/worker-$i.log" >&2; exit 1; }
done
# Jobs pushed in the first moments of a worker's life were seen to wait ~3 s (one heartbeat) before
# being fetched; let the workers settle so that start-up delay does not count as pipeline time.
SETTLE=${LOADTEST_SETTLE_SECS:-$(( ${SHOMEI_HEARTBEAT_SECS:-3} + 1 ))}
sleep "$SETTLE"

# CPU time per process during the measured phase: the API, the workers, the TSA, and the
# PostgreSQL and Redis servers this deployment uses (found by their listening port).
listener() { ss -Htlnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
CPU_OF=(--cpu-of "tsa=${PIDS[0]}" --cpu-of "api=${PIDS[1]}")
for i in $(seq "$WORKERS"); do CPU_OF+=(--cpu-of "worker-$i=${PIDS[$((i + 1))]}"); done
PG_PID=$(listener 5432)
REDIS_PID=$(listener "$(echo "$REDIS_URL" | sed -E 's|.*:([0-9]+)(/.*)?$|\1|')")
[ -z "$PG_PID" ] || CPU_OF+=(--cpu-of "postgres=$PG_PID")
[ -z "$REDIS_PID" ] || CPU_OF+=(--cpu-of "redis=$REDIS_PID")
# A B-T document costs two HSM signatures: its own and its time-stamp token's (our TSA signs
# with the same token).
if [ "${LOADTEST_SIGNATURE_LEVEL:-B-T}" = B-T ]; then SIGNATURES=2; else SIGNATURES=1; fi

SHOMEI_LOADTEST_KEY=$("$BIN/shomei-api" tenant create "Load test $ID" --signature-level "${LOADTEST_SIGNATURE_LEVEL:-B-T}" | sed -n 's/^api_key=//p')
export SHOMEI_LOADTEST_KEY
[ -n "$SHOMEI_LOADTEST_KEY" ] || { echo "no API key from shomei-api tenant create" >&2; exit 1; }

echo "==> load test: $DOCUMENTS documents, concurrency $CONCURRENCY, $WORKERS worker(s)"
# shellcheck disable=SC2086 # LOADTEST_ARGS is split on purpose
"$BIN/shomei-loadtest" --api "$API" --documents "$DOCUMENTS" --concurrency "$CONCURRENCY" \
    --pdf "${LOADTEST_PDF:-samples/contract-160k.pdf}" --json "$RUN/report.json" \
    --warmup "${LOADTEST_WARMUP:-$((4 * WORKERS))}" --hsm-seconds "${LOADTEST_HSM_SECONDS:-5}" \
    ${LOADTEST_HSM_THREADS:+--hsm-threads "$LOADTEST_HSM_THREADS"} \
    --signatures-per-document "$SIGNATURES" "${CPU_OF[@]}" ${LOADTEST_ARGS:-} |
    tee "$RUN/report.txt"

# Each process's metrics as the run left them (group commit sizes, HSM waits, …), for analysis.
curl -fs "$API/metrics" >"$RUN/api.metrics" || true
for i in $(seq "$WORKERS"); do
    addr=$(sed -n 's/.*metrics at \/metrics.*metrics_addr=\([0-9.:]*\).*/\1/p' "$RUN/worker-$i.log" | head -1)
    [ -z "$addr" ] || curl -fs "http://$addr/metrics" >"$RUN/worker-$i.metrics" || true
done
echo "==> group commit: mean steps per group (metrics in $RUN/*.metrics)"
for step in submit start record; do
    cat "$RUN"/*.metrics 2>/dev/null | awk -v step="$step" '
        $1 ~ "^shomei_group_commit_size_sum\\{step=\"" step "\"" { sum += $2 }
        $1 ~ "^shomei_group_commit_size_count\\{step=\"" step "\"" { count += $2 }
        END { if (count) printf "    %-17s %d steps in %d groups: %.2f per group\n", step, sum, count, sum / count }'
done

echo "==> warnings and errors in the logs"
for log in "$RUN"/api.log "$RUN"/worker-*.log; do
    count=$(grep -c -E '"level":"(WARN|ERROR)"| WARN | ERROR ' "$log" || true)
    echo "    $(basename "$log"): $count"
done
