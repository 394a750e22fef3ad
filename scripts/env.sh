# Shared settings for the project's scripts (sourced, not run).
# Build output and the Python venv live outside the clone so later runs reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitvelocity/target}"
export BITVELOCITY_VENV="${BITVELOCITY_VENV:-$HOME/.cache/bitvelocity/venv}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Installs what a fresh machine lacks. Fails loudly: nothing is skipped silently.
ensure_system_deps() {
    local missing=()
    command -v initdb >/dev/null 2>&1 || [ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
    command -v pg_recvlogical >/dev/null 2>&1 || [ -x /usr/lib/postgresql/15/bin/pg_recvlogical ] || missing+=(postgresql-15)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client-15)
    # The TLS tests make a throw-away certificate authority with it.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    if ! id postgres >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "the 'postgres' system user is missing: PostgreSQL cannot run as root" >&2
        exit 1
    fi
}

ensure_nextest() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "installing cargo-nextest"
        cargo install cargo-nextest --locked
    fi
}

# The venv for interoperability tests (pyiceberg, DuckDB with its offline Iceberg extension).
ensure_venv() {
    local stamp="$BITVELOCITY_VENV/.bitvelocity-requirements"
    local want
    want="$(cat "$(dirname "${BASH_SOURCE[0]}")/../tests/python/requirements.txt")"
    if [ ! -x "$BITVELOCITY_VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "creating Python venv at $BITVELOCITY_VENV"
        python3 -m venv "$BITVELOCITY_VENV"
        "$BITVELOCITY_VENV/bin/pip" install -q --upgrade pip
        "$BITVELOCITY_VENV/bin/pip" install -q -r "$(dirname "${BASH_SOURCE[0]}")/../tests/python/requirements.txt"
        printf '%s' "$want" > "$stamp"
    fi
    export BITVELOCITY_PYTHON="$BITVELOCITY_VENV/bin/python"
}

# Keeps the reused build directory from filling the disk: every dependency or feature change
# leaves the previous test and binary executables (hundreds of MB each) and incremental
# sessions behind. Keeps the newest executable of each name and incremental state from the
# last 12 hours; nothing a build still needs goes (a removed one is relinked or recompiled).
prune_build_cache() {
    local deps="$CARGO_TARGET_DIR/release/deps" inc="$CARGO_TARGET_DIR/release/incremental"
    if [ -d "$deps" ]; then
        find "$deps" -maxdepth 1 -type f -perm -u+x -regextype posix-extended \
            -regex '.*/[A-Za-z0-9_]+-[0-9a-f]{16}' -printf '%T@ %f\n' |
            sort -rn | awk '{ name = $2; sub(/-[0-9a-f]+$/, "", name); if (seen[name]++) print $2 }' |
            while read -r f; do rm -f "$deps/$f"; done
    fi
    # Incremental state a build touched in the last 3 hours is kept; older directories are
    # never read again and had grown to tens of GB, filling the disk mid-test.
    if [ -d "$inc" ]; then
        find "$inc" -mindepth 1 -maxdepth 1 -mmin +180 -exec rm -rf {} +
    fi
}
