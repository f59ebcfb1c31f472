#!/usr/bin/env bash
# Where the CPU goes under load: runs `loadtest/run.sh WORKERS N` and, once the sign phase is
# under way, records the whole machine with `perf record -a` for SECONDS, then one worker with
# call graphs (DWARF) for SECONDS, and prints the machine's time by process and the worker's
# by phase (`loadtest/profile.py`). The README's performance section quotes its output.
#
#   loadtest/profile.sh WORKERS N [SECONDS]
#
# N must keep the sign phase going for 2 × SECONDS + 10 s (8,000 documents on the development
# machine for SECONDS = 6). Needs perf (Debian: linux-perf) and root, or a
# kernel.perf_event_paranoid that lets this user record every CPU.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 WORKERS N [SECONDS]" >&2
    exit 2
fi
WORKERS=$1
DOCUMENTS=$2
SECONDS_EACH=${3:-6}
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "perf is needed (Debian: apt-get install linux-perf)" >&2; exit 2; }

OUT=$(mktemp -d /tmp/shomei-profile.XXXXXX)
loadtest/run.sh "$WORKERS" "$DOCUMENTS" >"$OUT/run.log" 2>&1 &
RUN=$!
# The sign phase has begun once the progress line counts submissions; the first seconds are the
# intake's, left out.
until grep -qE "submitted [1-9]" "$OUT/run.log" 2>/dev/null; do
    kill -0 "$RUN" 2>/dev/null || { cat "$OUT/run.log" >&2; exit 1; }
    sleep 0.2
done
sleep 4
echo "==> recording the machine for $SECONDS_EACH s"
perf record -a -g -F 397 -o "$OUT/machine.data" -- sleep "$SECONDS_EACH" >/dev/null 2>&1
WORKER=$(pgrep -f 'release/shomei-worker' | head -1)
echo "==> recording worker $WORKER with call graphs for $SECONDS_EACH s"
perf record -F 499 --call-graph dwarf,16384 -p "$WORKER" -o "$OUT/worker.data" \
    -- sleep "$SECONDS_EACH" >/dev/null 2>&1
wait "$RUN" || { cat "$OUT/run.log" >&2; exit 1; }
grep -E "^(throughput|raw HSM|HSM bound)" "$OUT/run.log"
python3 loadtest/profile.py machine "$OUT/machine.data"
python3 loadtest/profile.py worker "$OUT/worker.data"
echo "recordings and the load test's output: $OUT"
