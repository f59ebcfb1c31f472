# Sourced by the scripts that run pinned Python tools (schemathesis.sh, s3-server.sh):
#   venv_install VENV REQUIREMENTS WHAT
# makes VENV from the pins in REQUIREMENTS, once: parallel callers (tests) wait for one install
# instead of racing pip, and a virtualenv already made from these very pins (a copy is kept in
# it) is left as it is.
venv_install() {
    local venv=$1 requirements=$2 what=$3
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if ! cmp -s "$requirements" "$venv/requirements.txt"; then
        echo "==> installing $what into $venv ($(basename "$requirements"))" >&2
        python3 -m venv --clear "$venv" >&2 ||
            { echo "python3 -m venv failed: run scripts/prepare-machine.sh (python3-venv)" >&2; exit 1; }
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
            -r "$requirements" >&2
        cp "$requirements" "$venv/requirements.txt"
    fi
    flock -u 9
    exec 9>&-
}
