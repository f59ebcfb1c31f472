#!/usr/bin/env bash
# The main job, end to end on loopback: prepares the machine, creates the dev HSM token and CA,
# starts the time-stamping authority, the API and two workers, signs samples/contract.pdf
# through the REST API (PAdES B-T: signature plus time-stamp), concludes it (validation data and
# a document time-stamp: B-LTA), and prints where the PDF is and what pdfsig and openssl say.
# Then it sends a second contract round a signer as a signature request: the invitation and
# the one-time code arrive as e-mails (written to var/mail/ without an SMTP server), and the
# demo reads them and signs as the signer would.
#
#   scripts/demo.sh        run (the API and workers keep running afterwards)
#   scripts/demo.sh stop   stop the API and workers started by a previous run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/var/demo
mkdir -p "$RUN"

stop() {
    for pidfile in "$RUN"/*.pid; do
        [ -e "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}
if [ "${1:-}" = stop ]; then stop; echo "stopped"; exit 0; fi

source scripts/prepare-machine.sh
echo "==> building"
cargo build --workspace --bins --locked -q
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug

echo "==> dev HSM token and CA (var/dev-hsm)"
eval "$(scripts/dev-hsm.sh "$ROOT/var/dev-hsm")"
export SHOMEI_DATABASE_URL=${SHOMEI_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/shomei}
export SHOMEI_STORAGE_DIR=${SHOMEI_STORAGE_DIR:-$ROOT/var/storage}
export SHOMEI_API_ADDR=${SHOMEI_API_ADDR:-127.0.0.1:8080}
# Plain HTTP on loopback, said explicitly (the API refuses to start without either this or a
# certificate): the curl calls below, README's examples and dashboards/prometheus/prometheus.yml
# all use http://127.0.0.1:8080. For HTTPS, see api/README.md.
unset SHOMEI_TLS_CERT SHOMEI_TLS_KEY
export SHOMEI_API_PLAIN_HTTP=true
export SHOMEI_TSA_ADDR=${SHOMEI_TSA_ADDR:-127.0.0.1:8318}
export SHOMEI_TSA_URLS=${SHOMEI_TSA_URLS:-http://$SHOMEI_TSA_ADDR/}
export SHOMEI_TSA_TRUST_ANCHORS=${SHOMEI_TSA_TRUST_ANCHORS:-$ROOT/var/dev-hsm/ca/ca.pem}
export SHOMEI_TRUST_ANCHORS=${SHOMEI_TRUST_ANCHORS:-$ROOT/var/dev-hsm/ca/ca.pem}
export SHOMEI_MAIL_DIR=${SHOMEI_MAIL_DIR:-$ROOT/var/mail}
API=http://$SHOMEI_API_ADDR

psql -h 127.0.0.1 -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'shomei'" | grep -q 1 ||
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE shomei"
"$BIN/shomei-api" migrate

stop
# Each run makes a new tenant; e-mails of earlier runs would only confuse the reading below.
rm -f "$SHOMEI_MAIL_DIR"/*.eml
echo "==> starting the TSA, the API and two workers (logs in var/demo/)"
# One at a time: each logs in to the (SoftHSM2) token as it starts.
"$BIN/shomei-tsa" >"$RUN/tsa.log" 2>&1 & echo $! >"$RUN/tsa.pid"
for _ in $(seq 100); do curl -fs "http://$SHOMEI_TSA_ADDR/readyz" >/dev/null && break; sleep 0.2; done
"$BIN/shomei-api" serve >"$RUN/api.log" 2>&1 & echo $! >"$RUN/api.pid"
for _ in $(seq 100); do curl -fs "$API/readyz" >/dev/null && break; sleep 0.2; done
curl -fsS "$API/readyz" >/dev/null || { echo "API not ready; see var/demo/api.log"; exit 1; }
for i in 1 2; do
    "$BIN/shomei-worker" >"$RUN/worker-$i.log" 2>&1 & echo $! >"$RUN/worker-$i.pid"
    sleep 1
done

KEY=$("$BIN/shomei-api" tenant create "Demo tenant" | sed -n 's/^api_key=//p')
(umask 077; echo "$KEY" >"$RUN/api-key")

json_field() { sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p"; }
# first_field NAME: the first string field NAME in a JSON body (the top-level one).
first_field() { grep -o "\"$1\":\"[^\"]*\"" | head -1 | cut -d'"' -f4; }

echo "==> uploading samples/contract.pdf"
DOC=$(curl -fsS -X POST "$API/v1/documents?title=sample-contract" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/pdf' --data-binary @samples/contract.pdf | json_field id)
echo "    document $DOC"
JOB=$(curl -fsS -X POST "$API/v1/documents/$DOC/sign" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' \
    -d '{"signer":{"name":"Hanako Yamada","email":"hanako@example.jp"},"reason":"Contract approval","location":"Tokyo"}' |
    json_field job_id)
echo "    sign job $JOB"

# wait_job ID: polls the job until it finishes; fails the demo if it failed.
wait_job() {
    local status
    for _ in $(seq 300); do
        status=$(curl -fsS "$API/v1/jobs/$1" -H "Authorization: Bearer $KEY" | json_field status)
        case $status in succeeded|failed) break ;; esac
        sleep 0.1
    done
    echo "    job $status"
    [ "$status" = succeeded ] || { curl -sS "$API/v1/jobs/$1" -H "Authorization: Bearer $KEY"; exit 1; }
}
wait_job "$JOB"

echo "==> concluding the contract (validation data + document time-stamp)"
JOB=$(curl -fsS -X POST "$API/v1/documents/$DOC/timestamp" -H "Authorization: Bearer $KEY" | json_field job_id)
echo "    timestamp job $JOB"
wait_job "$JOB"

OUT=$RUN/contract-signed.pdf
curl -fsS "$API/v1/documents/$DOC/pdf" -H "Authorization: Bearer $KEY" -o "$OUT"
echo
echo "Signed PDF: $OUT"
echo "pdfsig says:"
# -nssdir: an NSS database that trusts the dev CA (made by dev-hsm.sh), so the chain is checked too.
VERDICT=$(pdfsig -nssdir "sql:$ROOT/var/dev-hsm/nssdb" "$OUT")
echo "$VERDICT" | sed 's/^/    /'
echo "$VERDICT" | grep -q "Signature is Valid" || { echo "NOT VALID"; exit 1; }
echo "(poppler 22.12 lists the document time-stamp but cannot verify ETSI.RFC3161 itself;"
echo " openssl checks it and the signature's time-stamp in the test suite: scripts/test.sh)"
echo
echo "Shomei's own verification report (GET /v1/documents/$DOC/verification), in brief:"
REPORT=$(curl -fsS "$API/v1/documents/$DOC/verification" -H "Authorization: Bearer $KEY")
echo "    $(echo "$REPORT" | grep -o '"valid":[a-z]*' | head -1)  $(echo "$REPORT" | grep -o '"level":"[^"]*"')"
echo
echo "==> a signature request: the contract goes to a signer by e-mail ($SHOMEI_MAIL_DIR)"
DOC2=$(curl -fsS -X POST "$API/v1/documents?title=sample-nda" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/pdf' --data-binary @samples/contract.pdf | json_field id)
REQ=$(curl -fsS -X POST "$API/v1/documents/$DOC2/requests" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' \
    -d '{"owner":{"name":"Demo Legal","email":"legal@example.com"},"locale":"ja",
         "signers":[{"name":"Taro Suzuki","email":"taro@example.com","method":"witness"}]}' |
    first_field id)
echo "    request $REQ"
# mail_text TO SUBJECT-PART: the text part of the newest e-mail to TO whose subject has SUBJECT-PART.
mail_text() {
    /usr/bin/python3 - "$SHOMEI_MAIL_DIR" "$1" "$2" <<'PY'
import email, email.policy, pathlib, sys
folder, to, subject = sys.argv[1:]
files = sorted(pathlib.Path(folder).glob("*.eml"), key=lambda p: p.stat().st_mtime, reverse=True)
for path in files:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    if to in str(msg["To"]) and subject in str(msg["Subject"]):
        print(msg.get_body(preferencelist=("plain",)).get_content())
        break
PY
}
wait_mail() {
    local text=""
    for _ in $(seq 300); do
        text=$(mail_text "$1" "$2")
        [ -n "$text" ] && break
        sleep 0.1
    done
    [ -n "$text" ] || { echo "no e-mail to $1 ($2); see var/demo/worker-*.log"; exit 1; }
    echo "$text"
}
TOKEN=$(wait_mail taro@example.com 署名のお願い | grep -o '/v1/signing/[0-9a-f]\{64\}' | head -1 | cut -d/ -f4)
echo "    invitation e-mailed to taro@example.com (link token read from the e-mail)"
curl -fsS -X POST "$API/v1/signing/$TOKEN/code" >/dev/null
CODE=$(wait_mail taro@example.com 確認コード | tr -d '\r' | grep -o '^ *[0-9]\{6\} *$' | tr -d ' ' | head -1)
echo "    one-time code e-mailed; signing with it"
JOB=$(curl -fsS -X POST "$API/v1/signing/$TOKEN/sign" -H 'Content-Type: application/json' \
    -d "{\"code\":\"$CODE\"}" | json_field job_id)
wait_job "$JOB"
for _ in $(seq 300); do
    STATUS=$(curl -fsS "$API/v1/requests/$REQ" -H "Authorization: Bearer $KEY" | first_field status)
    [ "$STATUS" = completed ] && mail_text legal@example.com 署名完了 | grep -q . && break
    sleep 0.1
done
echo "    request $STATUS; the owner was e-mailed (署名完了のお知らせ)"
OUT2=$RUN/nda-signed.pdf
curl -fsS "$API/v1/documents/$DOC2/pdf" -H "Authorization: Bearer $KEY" -o "$OUT2"
pdfsig -nssdir "sql:$ROOT/var/dev-hsm/nssdb" "$OUT2" | grep -q "Signature is Valid" || { echo "NOT VALID"; exit 1; }
echo "    $OUT2: witness signature valid per pdfsig"

cat <<TXT

The API ($API) and two workers keep running. The demo tenant's API key is in var/demo/api-key:
    curl -H "Authorization: Bearer \$(cat var/demo/api-key)" $API/v1/jobs/$JOB
Stop them with: scripts/demo.sh stop
TXT
