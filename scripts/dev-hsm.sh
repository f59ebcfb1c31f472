#!/usr/bin/env bash
# Creates a throw-away SoftHSM2 token plus a dev CA for local runs and tests.
#
#   scripts/dev-hsm.sh DIR
#
# Idempotent: once DIR/.done exists the script only prints the environment.
# The user PIN lives in DIR/user-pin (mode 600) and is never echoed; the
# signing keys exist in plaintext only for the seconds between generation and
# import. The CA key stays in DIR/ca so more certificates can be issued later.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi

mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
MODULE="${SHOMEI_HSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
TOKEN_LABEL="shomei-dev"
export SOFTHSM2_CONF="$DIR/softhsm2.conf"

# Test binaries run in parallel and may all call this script at once.
exec 9>"$DIR/.lock"
flock 9

print_env() {
    cat <<ENV
export SOFTHSM2_CONF=$DIR/softhsm2.conf
export SHOMEI_HSM_MODULE=$MODULE
export SHOMEI_HSM_TOKEN_LABEL=$TOKEN_LABEL
export SHOMEI_HSM_PIN_FILE=$DIR/user-pin
export SHOMEI_LINK_KEY_FILE=$DIR/link-key
ENV
}

# An NSS database trusting the dev CA, so `pdfsig -nssdir sql:DIR/nssdb` validates the chain.
trust_store() {
    [[ -e "$DIR/nssdb/cert9.db" ]] && return
    mkdir -p "$DIR/nssdb"
    certutil -N --empty-password -d "sql:$DIR/nssdb"
    certutil -A -n shomei-dev-ca -t "C,C,C" -i "$DIR/ca/ca.pem" -d "sql:$DIR/nssdb"
}

# Bump when the script makes something new, so older dev directories are made again.
FORMAT=4
if [[ "$(cat "$DIR/.done" 2>/dev/null)" == "$FORMAT" ]]; then
    trust_store
    print_env
    exit 0
fi

# A previous run may have died half-way; start from a clean slate rather than
# guessing which steps already happened.
rm -rf "$DIR/tokens" "$DIR/ca" "$DIR/tls" "$DIR/work" "$DIR/user-pin" "$DIR/so-pin" "$DIR/link-key" "$DIR/nssdb"
mkdir -p "$DIR/tokens" "$DIR/ca" "$DIR/work"
chmod 700 "$DIR/work" "$DIR/ca"
WORK="$DIR/work"
trap 'rm -rf "$WORK"' EXIT

cat >"$SOFTHSM2_CONF" <<CONF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF

umask 077
openssl rand -hex 16 >"$DIR/user-pin"
openssl rand -hex 16 >"$DIR/so-pin"
# The key that signs download links (every API process of a deployment shares it).
openssl rand -hex 32 >"$DIR/link-key"
chmod 600 "$DIR/user-pin" "$DIR/so-pin" "$DIR/link-key"
USER_PIN="$(cat "$DIR/user-pin")"
SO_PIN="$(cat "$DIR/so-pin")"

# --- dev root CA -------------------------------------------------------------
# Kept in DIR/ca so later issues can issue certificates and CRLs with the same settings. The
# CRL distribution point is a file: URL, so every dev directory has its own and no port is
# needed; production CAs publish over HTTP, which the revocation fetcher handles the same way.
CRL_URL="file://$DIR/ca/dev-ca.crl"
cat >"$DIR/ca/ca.cnf" <<CNF
[ca]
default_ca = dev_ca
[dev_ca]
database = $DIR/ca/index.txt
crlnumber = $DIR/ca/crlnumber
certificate = $DIR/ca/ca.pem
private_key = $DIR/ca/ca.key
default_md = sha256
default_crl_days = 365
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Shomei Dev Root CA
O = Shomei Dev
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_signer]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:$CRL_URL
[v3_tsa]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = critical, timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:$CRL_URL
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$DIR/ca/ca.key" 2>/dev/null
openssl req -new -x509 -sha256 -days 3650 -key "$DIR/ca/ca.key" \
    -config "$DIR/ca/ca.cnf" -extensions v3_ca -out "$DIR/ca/ca.pem"
openssl x509 -in "$DIR/ca/ca.pem" -outform DER -out "$WORK/ca.der"
chmod 644 "$DIR/ca/ca.pem"

# --- token -------------------------------------------------------------------
softhsm2-util --init-token --free --label "$TOKEN_LABEL" \
    --so-pin "$SO_PIN" --pin "$USER_PIN" >/dev/null

p11() {
    pkcs11-tool --module "$MODULE" --token-label "$TOKEN_LABEL" \
        --login --pin "$USER_PIN" "$@" >/dev/null
}

# issue LABEL ID CN EXTENSIONS KEYGEN-ARGS...
issue() {
    local label="$1" id="$2" cn="$3" extensions="$4"
    shift 4
    openssl genpkey "$@" -out "$WORK/$label.key" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$WORK/$label.key" -out "$WORK/$label.p8"
    openssl req -new -key "$WORK/$label.key" -subj "/CN=$cn/O=Shomei Dev" -out "$WORK/$label.csr"
    openssl x509 -req -sha256 -days 825 -in "$WORK/$label.csr" \
        -CA "$DIR/ca/ca.pem" -CAkey "$DIR/ca/ca.key" -set_serial "0x$(openssl rand -hex 12)" \
        -extfile "$DIR/ca/ca.cnf" -extensions "$extensions" -out "$DIR/ca/$label.pem" 2>/dev/null
    openssl x509 -in "$DIR/ca/$label.pem" -outform DER -out "$WORK/$label.der"

    softhsm2-util --import "$WORK/$label.p8" --token "$TOKEN_LABEL" \
        --label "$label" --id "$id" --pin "$USER_PIN" >/dev/null
    p11 --write-object "$WORK/$label.der" --type cert --label "$label" --id "$id"
    # Only the HSM keeps the private key from here on.
    rm -f "$WORK/$label.key" "$WORK/$label.p8"
}

issue shomei-dev-rsa 01 "Shomei Dev Signing (RSA)" v3_signer -algorithm RSA -pkeyopt rsa_keygen_bits:2048
issue shomei-dev-ec 02 "Shomei Dev Signing (EC)" v3_signer -algorithm EC -pkeyopt ec_paramgen_curve:P-256
issue shomei-dev-tsa 03 "Shomei Dev TSA" v3_tsa -algorithm RSA -pkeyopt rsa_keygen_bits:2048
# A signer's own key (certified signatures, R-SIGN-6): in production each signer enrolls one.
issue shomei-dev-signer-1 04 "Hanako Yamada (Dev Signer)" v3_signer -algorithm EC -pkeyopt ec_paramgen_curve:P-256
p11 --write-object "$WORK/ca.der" --type cert --label shomei-dev-ca --id ca

# A TLS server certificate for localhost (the test SMTP server's STARTTLS and implicit TLS).
# Not a signing key, so it stays a file.
mkdir -p "$DIR/tls"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/tls/localhost.key" 2>/dev/null
openssl req -new -key "$DIR/tls/localhost.key" -subj "/CN=localhost/O=Shomei Dev" -out "$WORK/localhost.csr"
openssl x509 -req -sha256 -days 825 -in "$WORK/localhost.csr" \
    -CA "$DIR/ca/ca.pem" -CAkey "$DIR/ca/ca.key" -set_serial "0x$(openssl rand -hex 12)" \
    -extfile "$DIR/ca/ca.cnf" -extensions v3_server -out "$DIR/tls/localhost.pem" 2>/dev/null
chmod 644 "$DIR/tls/localhost.pem"

# The CA's (empty) CRL, in DER at the distribution point named in every certificate.
touch "$DIR/ca/index.txt"
echo 01 >"$DIR/ca/crlnumber"
openssl ca -gencrl -config "$DIR/ca/ca.cnf" -out "$WORK/dev-ca.crl.pem" 2>/dev/null
openssl crl -in "$WORK/dev-ca.crl.pem" -outform DER -out "$DIR/ca/dev-ca.crl"
chmod 644 "$DIR/ca/dev-ca.crl"

trust_store
echo "$FORMAT" >"$DIR/.done"
print_env
